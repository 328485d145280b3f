//! A gate written outside seawall, through `GateLayer`.

use crate::support::{send, Backend, Call, Ended};
use seawall::core::{Emitter, Event, EventKind, Gate, GateLayer, Observer, Record, RejectReason};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

#[derive(Debug, thiserror::Error)]
#[error("quota used up")]
struct QuotaUsedUp;

#[derive(Default)]
struct Quota {
    left: AtomicU64,
    finished: AtomicU64,
    /// Completions that came with a latency.
    timed: AtomicU64,
}

impl Gate for Quota {
    type Permit = ();
    type Rejection = QuotaUsedUp;
    type Waiter = ();

    fn poll_acquire<O: Observer>(
        &self,
        _: &mut Context<'_>,
        _: &mut (),
        _: Emitter<'_, O>,
    ) -> Poll<Result<(), QuotaUsedUp>> {
        let taken = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        Poll::Ready(taken.map(drop).map_err(|_| QuotaUsedUp))
    }

    fn complete<O: Observer>(&self, _: (), record: &Record, emit: Emitter<'_, O>) {
        assert_eq!(emit.layer(), "quota");
        if record.latency.is_some() {
            self.timed.fetch_add(1, Ordering::Relaxed);
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    fn cancel<O: Observer>(&self, _: (), _: Emitter<'_, O>) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    fn wants_latency(&self) -> bool {
        false
    }
}

fn quota(left: u64) -> Quota {
    Quota {
        left: AtomicU64::new(left),
        ..Quota::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_gate_admits_rejects_and_gets_cancellations_back() {
    // The same, counted or static.
    for layer in [
        GateLayer::new("quota", quota(2)),
        GateLayer::new_static("quota", quota(2)),
    ] {
        let mut service = layer.layer(Backend);
        assert_eq!(send_quota(&mut service).await, Ended::Ok);
        let pending = service
            .ready()
            .await
            .unwrap()
            .call(Call::ok().after(std::time::Duration::from_secs(9)));
        drop(pending); // cancelled: the gate gets its unit back
        assert_eq!(send_quota(&mut service).await, Ended::Ok);
        let err = service
            .ready()
            .await
            .unwrap()
            .call(Call::ok())
            .await
            .unwrap_err();
        assert!(err.is::<QuotaUsedUp>());
        assert_eq!(layer.gate().finished.load(Ordering::Relaxed), 2);
        assert_eq!(
            layer.gate().timed.load(Ordering::Relaxed),
            0,
            "nobody asked for timing"
        );
    }
}

async fn send_quota<S>(service: &mut S) -> Ended
where
    S: Service<Call, Response = u32, Error = tower::BoxError>,
{
    send(service, Call::ok()).await
}

#[tokio::test(start_paused = true)]
async fn a_custom_gate_reports_to_its_observer() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let layer = GateLayer::builder(quota(1))
        .name("quota")
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build();
    assert!(format!("{layer:?}").contains("quota"));
    let mut service = layer.layer(Backend);
    send_quota(&mut service).await;
    let _ = service.ready().await.unwrap().call(Call::ok()).await;
    let kinds = seen.lock().unwrap().clone();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0], EventKind::Permitted);
    assert!(matches!(kinds[1], EventKind::Finished { .. }));
    assert_eq!(
        kinds[2],
        EventKind::Rejected {
            reason: RejectReason::Other
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_static_gate_can_be_observed() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let layer = GateLayer::builder(quota(1))
        .name("quota")
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build_static();
    let mut service = layer.layer(Backend);
    send_quota(&mut service).await;
    let kinds = seen.lock().unwrap().clone();
    assert_eq!(kinds.first(), Some(&EventKind::Permitted), "{kinds:?}");
}

#[test]
fn reject_reason_defaults_to_other() {
    assert_eq!(Quota::reject_reason(&QuotaUsedUp), RejectReason::Other);
    let e = Event::new(
        "x",
        EventKind::Rejected {
            reason: RejectReason::Other,
        },
    );
    assert_eq!(e.layer, "x");
}

/// A service whose `call` panics, as one does when an inner layer's observer panics.
#[derive(Clone)]
struct PanicsInCall;

impl Service<Call> for PanicsInCall {
    type Response = u32;
    type Error = tower::BoxError;
    type Future = std::future::Ready<Result<u32, tower::BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Call) -> Self::Future {
        panic!("the inner call panics");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_gives_the_permit_back() {
    let layer = GateLayer::new("quota", quota(1));
    let mut service = layer.layer(PanicsInCall);
    service.ready().await.unwrap();
    let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(service.call(Call::ok()));
    }));
    assert!(call.is_err(), "the inner call panicked");
    drop(service);
    assert_eq!(
        layer.gate().left.load(Ordering::Relaxed),
        1,
        "the permit taken for the call comes back"
    );
    // And the gate still admits.
    let mut service = layer.layer(Backend);
    assert_eq!(send_quota(&mut service).await, Ended::Ok);
}

/// A service whose first `call` panics and whose next calls answer.
#[derive(Clone)]
struct PanicsOnce(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Service<Call> for PanicsOnce {
    type Response = u32;
    type Error = tower::BoxError;
    type Future = std::future::Ready<Result<u32, tower::BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Call) -> Self::Future {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("the first inner call panics");
        }
        std::future::ready(Ok(1))
    }
}

/// A panic of the inner call caught above (a catch-panic layer) leaves the service holding a
/// permit it was never reported to use: its next call reports it once, not twice.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_caught_above_reports_the_permit_once() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let layer = GateLayer::builder(quota(1))
        .name("quota")
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build();
    let mut service = layer.layer(PanicsOnce(Default::default()));
    service.ready().await.unwrap();
    let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(service.call(Call::ok()));
    }));
    assert!(call.is_err(), "the inner call panicked");
    service.ready().await.unwrap();
    assert_eq!(service.call(Call::ok()).await.unwrap(), 1);
    let kinds = seen.lock().unwrap().clone();
    let permitted = kinds.iter().filter(|k| **k == EventKind::Permitted).count();
    assert_eq!(permitted, 1, "{kinds:?}");
}
