//! Events reach the observer, in order, and a panicking observer cannot corrupt the breaker.

use crate::support::{send, tripping, Backend, Call, Ended};
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::{CircuitState, Event, EventKind, Outcome, RejectReason, TracingObserver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, Service};

type Log = Arc<Mutex<Vec<(String, EventKind)>>>;

fn recorder() -> (Log, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &Event<'_>| {
        sink.lock().unwrap().push((e.layer.to_string(), e.kind))
    })
}

#[tokio::test(start_paused = true)]
async fn every_decision_is_an_event() {
    let (events, observer) = recorder();
    let layer = tripping(1).name("db").observer(observer).build().unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    send(&mut service, Call::ok().after(Duration::from_millis(3))).await;
    send(&mut service, Call::fail()).await;
    send(&mut service, Call::ok()).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut service, Call::ok()).await;
    handle.force_open();
    // Readiness alone rejects nobody: the rejection is reported when a call receives it.
    let _ = tower::ServiceExt::ready(&mut service).await.unwrap();
    assert!(!events.lock().unwrap().iter().any(|(_, kind)| matches!(
        kind,
        EventKind::Rejected {
            reason: RejectReason::ForcedOpen
        }
    )));
    send(&mut service, Call::ok()).await;
    let events = events.lock().unwrap().clone();
    assert!(events.iter().all(|(layer, _)| layer == "db"));
    let kinds: Vec<_> = events.into_iter().map(|(_, k)| k).collect();
    let transition = |from, to| EventKind::StateTransition { from, to };
    assert_eq!(
        kinds,
        vec![
            // Built closed: the state is reported before any call.
            EventKind::Started {
                state: Some(CircuitState::Closed),
                limit: None
            },
            EventKind::Permitted,
            // The closure observer wants latency, so the clock was read.
            EventKind::Finished {
                outcome: Outcome::Success,
                latency: Some(Duration::from_millis(3))
            },
            EventKind::Permitted,
            transition(CircuitState::Closed, CircuitState::Open),
            EventKind::Finished {
                outcome: Outcome::Failure,
                latency: Some(Duration::ZERO)
            },
            EventKind::Rejected {
                reason: RejectReason::CircuitOpen
            },
            transition(CircuitState::Open, CircuitState::HalfOpen),
            EventKind::Permitted,
            transition(CircuitState::HalfOpen, CircuitState::Closed),
            EventKind::Finished {
                outcome: Outcome::Success,
                latency: Some(Duration::ZERO)
            },
            transition(CircuitState::Closed, CircuitState::ForcedOpen),
            EventKind::Rejected {
                reason: RejectReason::ForcedOpen
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancellations_are_reported_as_such() {
    let (events, observer) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .observer(observer)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    let future = tower::ServiceExt::ready(&mut service)
        .await
        .unwrap()
        .call(Call::fail().after(Duration::from_secs(1)));
    drop(future);
    let kinds: Vec<_> = events.lock().unwrap().iter().map(|(_, k)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Started {
                state: Some(CircuitState::Closed),
                limit: None
            },
            EventKind::Permitted,
            EventKind::Cancelled
        ]
    );
    assert_eq!(handle.metrics().calls, 0, "a cancelled call is not counted");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_leaves_the_breaker_consistent() {
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    let layer = tripping(1)
        .observer(move |e: &Event<'_>| {
            if trigger.load(Ordering::Relaxed)
                && matches!(e.kind, EventKind::StateTransition { .. })
            {
                panic!("observer bug");
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(Backend);
    armed.store(true, Ordering::Relaxed);
    // The failing call's trip panics inside the observer, on a task of its own.
    let mut s = service.clone();
    let panicked = tokio::spawn(async move { send(&mut s, Call::fail()).await }).await;
    assert!(panicked.unwrap_err().is_panic());
    armed.store(false, Ordering::Relaxed);
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "the transition happened before the event"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut s = service.clone();
    assert_eq!(send(&mut s, Call::ok()).await, Ended::Ok);
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn tracing_observer_logs_transitions() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let layer = CircuitBreakerLayer::builder()
        .name("inventory")
        .observer(TracingObserver)
        .consecutive_failures(1)
        .build()
        .unwrap();
    let mut service = layer.layer(Backend);
    send(&mut service, Call::fail()).await;
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("layer=\"inventory\"") || log.contains("layer=inventory"),
        "{log}"
    );
    assert!(
        log.contains("to=\"open\"") || log.contains("to=open"),
        "{log}"
    );
    assert!(
        !log.contains("permitted"),
        "TRACE events stay out at INFO: {log}"
    );
}
