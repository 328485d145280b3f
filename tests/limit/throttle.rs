//! Client-side adaptive throttling: the SRE book's rule over a sliding time window.

use seawall::core::{Event, EventKind, Outcome, RejectReason};
use seawall::limit::error::Throttled;
use seawall::limit::{ThrottleConfigError, ThrottleLayer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

type Failing = Result<(), &'static str>;

/// Sends one call; `Ok(true)` when the service accepted it, `Ok(false)` when it refused it,
/// `Err(p)` when the throttle did not send it.
async fn send<S>(service: &mut S) -> Result<bool, f64>
where
    S: Service<(), Response = (), Error = BoxError>,
{
    match service.ready().await.unwrap().call(()).await {
        Ok(()) => Ok(true),
        Err(e) => match e.downcast_ref::<Throttled>() {
            Some(t) => Err(t.probability()),
            None => Ok(false),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn a_healthy_service_is_never_throttled() {
    let layer = ThrottleLayer::builder().seed(1).build().unwrap();
    let handle = layer.handle();
    let mut client = layer.layer(service_fn(|_: ()| async { Ok::<_, &str>(()) }));
    for _ in 0..1000 {
        assert_eq!(send(&mut client).await, Ok(true));
    }
    assert_eq!((handle.requests(), handle.accepts()), (1000, 1000));
    assert_eq!(handle.probability(), 0.0);
}

/// A service that accepts every call while `healthy`, and refuses every call otherwise.
fn switchable(
    healthy: Arc<std::sync::atomic::AtomicBool>,
) -> impl Service<(), Response = (), Error = &'static str> {
    service_fn(move |_: ()| {
        let ok = healthy.load(Ordering::Relaxed);
        async move {
            if ok {
                Ok(())
            } else {
                Err("overloaded")
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn throttling_starts_when_requests_pass_k_times_accepts() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let layer = ThrottleLayer::builder().k(2.0).seed(2).build().unwrap();
    let handle = layer.handle();
    let mut client = layer.layer(switchable(healthy.clone()));
    for _ in 0..30 {
        assert_eq!(send(&mut client).await, Ok(true));
    }
    healthy.store(false, Ordering::Relaxed);
    // Up to 60 requests against 30 accepts, the probability is zero: every call is sent.
    for _ in 0..30 {
        assert_eq!(send(&mut client).await, Ok(false));
    }
    assert_eq!((handle.requests(), handle.accepts()), (60, 30));
    assert_eq!(handle.probability(), 0.0);
    // One more refusal: (61 − 2 × 30) / 62.
    assert_eq!(send(&mut client).await, Ok(false));
    assert_eq!(handle.probability(), 1.0 / 62.0);
    // From here every call, sent or not, is a request and none an accept: the probability is
    // (n − 60) / (n + 1), and each rejection reports the probability it was drawn against.
    let mut turned_away = 0;
    for _ in 0..2000 {
        let before = handle.requests() as f64;
        match send(&mut client).await {
            Ok(accepted) => assert!(!accepted),
            Err(p) => {
                assert_eq!(p, (before - 60.0) / (before + 1.0));
                turned_away += 1;
            }
        }
    }
    assert_eq!(handle.requests(), 2061);
    assert_eq!(handle.accepts(), 30);
    // The expected number sent is the sum of 1 − p over the calls: about 60 × ln(2061 / 61) ≈ 211.
    let sent = 2000 - turned_away;
    assert!((130..=300).contains(&sent), "sent {sent}");
}

/// A service that accepts `capacity` calls in each second and refuses the rest, as an overloaded
/// server does.
fn capacity_per_second(
    capacity: u64,
) -> impl Service<(), Response = (), Error = &'static str> + Clone {
    let state = Arc::new(Mutex::new((0u64, 0u64)));
    let start = tokio::time::Instant::now();
    service_fn(move |_: ()| {
        let second = start.elapsed().as_secs();
        let mut s = state.lock().unwrap();
        if s.0 != second {
            *s = (second, 0);
        }
        s.1 += 1;
        let accepted = s.1 <= capacity;
        async move {
            if accepted {
                Ok(())
            } else {
                Err("overloaded")
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_client_sends_about_k_times_what_the_service_accepts() {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let backend = capacity_per_second(100);
    let backend = tower::service_fn(move |r: ()| {
        counter.fetch_add(1, Ordering::Relaxed);
        backend.clone().oneshot(r)
    });
    let layer = ThrottleLayer::builder()
        .window(Duration::from_secs(10))
        .buckets(10)
        .seed(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut client = layer.layer(backend);
    // 1000 calls a second, ten times what the service takes, for 30 seconds.
    let mut sent_after_warmup = 0;
    for ms in 0..30_000u64 {
        if ms == 15_000 {
            sent_after_warmup = sent.load(Ordering::Relaxed);
        }
        let _ = send(&mut client).await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let per_second = (sent.load(Ordering::Relaxed) - sent_after_warmup) as f64 / 15.0;
    // k = 2: the client keeps sending about twice the 100 a second the service accepts.
    assert!(
        (170.0..=230.0).contains(&per_second),
        "{per_second} a second"
    );
    let p = handle.probability();
    assert!((0.75..=0.85).contains(&p), "probability {p}");
}

#[tokio::test(start_paused = true)]
async fn the_window_slides_and_a_recovered_service_gets_every_call() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let layer = ThrottleLayer::builder()
        .window(Duration::from_secs(10))
        .buckets(10)
        .seed(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut client = layer.layer(switchable(healthy.clone()));
    for _ in 0..1000 {
        let _ = send(&mut client).await;
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    assert!(handle.probability() > 0.99);
    // Recovered, and the failures have left the window: nothing is throttled.
    healthy.store(true, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.probability(), 0.0);
    for _ in 0..100 {
        assert_eq!(send(&mut client).await, Ok(true));
    }
}

#[tokio::test(start_paused = true)]
async fn the_probability_can_be_capped() {
    let layer = ThrottleLayer::builder()
        .max_probability(0.5)
        .seed(5)
        .build()
        .unwrap();
    let mut client = layer.layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
    let mut sent = 0;
    for _ in 0..10_000 {
        if let Ok(accepted) = send(&mut client).await {
            assert!(!accepted);
            sent += 1;
        }
    }
    assert!((4_700..=5_300).contains(&sent), "sent {sent}");
}

#[tokio::test(start_paused = true)]
async fn ignored_and_cancelled_calls_are_not_counted() {
    let layer = ThrottleLayer::builder()
        .seed(6)
        .build()
        .unwrap()
        .classify(|r: &Failing| match r {
            Ok(()) => Outcome::Success,
            Err("not found") => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        });
    let handle = layer.handle();
    let mut client = layer.layer(service_fn(|n: u32| async move {
        match n {
            0 => Ok(()),
            1 => Err("not found"),
            _ => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err("slow")
            }
        }
    }));
    client.ready().await.unwrap().call(0).await.unwrap();
    client.ready().await.unwrap().call(1).await.unwrap_err();
    let slow = client.ready().await.unwrap().call(2);
    drop(slow);
    assert_eq!((handle.requests(), handle.accepts()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn every_service_of_a_layer_shares_the_window_and_rejections_are_reported() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = ThrottleLayer::builder()
        .name("upstream")
        .seed(7)
        .observer(move |e: &Event<'_>| {
            if let EventKind::Rejected { reason } = e.kind {
                sink.lock().unwrap().push((e.layer.to_string(), reason));
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = service_fn(|_: ()| async { Err::<(), _>("down") });
    let mut a = layer.layer(service);
    let mut b = layer.clone().layer(service);
    let mut turned_away = 0;
    for _ in 0..100 {
        turned_away += send(&mut a).await.is_err() as usize;
        turned_away += send(&mut b).await.is_err() as usize;
    }
    assert_eq!(handle.requests(), 200);
    assert_eq!(handle.accepts(), 0);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), turned_away);
    assert!(turned_away > 150, "{turned_away}");
    assert!(events
        .iter()
        .all(|e| *e == ("upstream".to_string(), RejectReason::Throttled)));
}

#[test]
fn bad_settings_are_refused() {
    let err = |b: seawall::limit::ThrottleBuilder| b.build().unwrap_err();
    assert_eq!(
        err(ThrottleLayer::builder().k(0.5)),
        ThrottleConfigError::K(0.5)
    );
    assert!(matches!(
        err(ThrottleLayer::builder().k(f64::NAN)),
        ThrottleConfigError::K(_)
    ));
    assert_eq!(
        err(ThrottleLayer::builder().window(Duration::ZERO)),
        ThrottleConfigError::Window
    );
    assert_eq!(
        err(ThrottleLayer::builder().buckets(0)),
        ThrottleConfigError::Buckets(0)
    );
    assert_eq!(
        err(ThrottleLayer::builder().buckets(257)),
        ThrottleConfigError::Buckets(257)
    );
    assert_eq!(
        err(ThrottleLayer::builder().max_probability(0.0)),
        ThrottleConfigError::MaxProbability(0.0)
    );
    assert_eq!(
        ThrottleLayer::builder()
            .k(0.5)
            .build()
            .unwrap_err()
            .to_string(),
        "k must be a finite number of at least 1, got 0.5"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_says_how_much_is_throttled() {
    let mut client = ThrottleLayer::new().layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
    loop {
        let err = client.ready().await.unwrap().call(()).await.unwrap_err();
        if let Some(throttled) = err.downcast_ref::<Throttled>() {
            let percent = (throttled.probability() * 100.0).round();
            assert_eq!(
                err.to_string(),
                format!("throttled: the service accepts too few calls, {percent}% are not sent")
            );
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_polled_again_is_neither_drawn_nor_counted_again() {
    // A balancer polls readiness many times before it calls: a throttled service keeps its one
    // refusal, instead of drawing again until a draw lets the call through.
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let layer = ThrottleLayer::builder()
        .k(1.0)
        .max_probability(0.95)
        .seed(9)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut client = layer.layer(switchable(healthy));
    let mut refused = None;
    for _ in 0..200 {
        if let Err(p) = send(&mut client).await {
            refused = Some(p);
            break;
        }
    }
    assert!(refused.is_some(), "a failing service gets throttled");
    // A fresh service, polled until it is refused once, then polled a hundred times more.
    let mut polled = layer.layer(service_fn(|_: ()| async { Ok::<_, &str>(()) }));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut found = false;
    for _ in 0..1000 {
        let before = handle.requests();
        assert!(polled.poll_ready(&mut cx).is_ready());
        if handle.requests() > before {
            found = true; // the draw refused, and counted the request
            break;
        }
        // Admitted: spend the permit and try again.
        let _ = polled.call(()).await;
    }
    assert!(found, "some poll is refused");
    let requests = handle.requests();
    for _ in 0..100 {
        assert!(polled.poll_ready(&mut cx).is_ready());
    }
    assert_eq!(handle.requests(), requests, "the refusal is counted once");
    let err = polled.call(()).await.unwrap_err();
    assert!(
        err.is::<Throttled>(),
        "the call gets the refusal it was polled for"
    );
}
