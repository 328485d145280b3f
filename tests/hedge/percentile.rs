//! The percentile delay: no hedging until the window holds enough latencies, then the
//! `1 - max_extra_load` percentile of successes and of losers (at the time they were dropped),
//! never of fast failures.

use seawall::hedge::HedgeLayer;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A backend whose calls wait and answer as the test sets, for every call until it changes it;
/// `first` applies to the first attempt of a call only when set (the test sends calls one by
/// one, so attempts after the first of a call are hedges).
#[derive(Clone, Default)]
struct Backend {
    each: Arc<Mutex<(Duration, bool)>>,
    first: Arc<Mutex<Option<Duration>>>,
    calls: Arc<AtomicUsize>,
    in_call: Arc<AtomicUsize>,
}

impl Backend {
    fn set(&self, latency: Duration, ok: bool) {
        *self.each.lock().unwrap() = (latency, ok);
    }
}

impl Service<u32> for Backend {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        let attempt = self.in_call.fetch_add(1, SeqCst);
        let (mut latency, ok) = *self.each.lock().unwrap();
        if attempt == 0 {
            if let Some(first) = *self.first.lock().unwrap() {
                latency = first;
            }
        }
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if ok {
                Ok(1)
            } else {
                Err("failed".into())
            }
        })
    }
}

/// Sends one call and waits for it.
async fn one(layer: &HedgeLayer, backend: &Backend) -> Result<u32, BoxError> {
    backend.in_call.store(0, SeqCst);
    layer.layer(backend.clone()).oneshot(0).await
}

#[tokio::test(start_paused = true)]
async fn no_hedging_until_the_window_holds_enough_latencies() {
    let layer = HedgeLayer::builder().no_budget().build().unwrap();
    let backend = Backend::default();
    backend.set(10 * MS, true);
    for _ in 0..50 {
        one(&layer, &backend).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(layer.delay(), None, "50 latencies are too few");
    *backend.first.lock().unwrap() = Some(1000 * MS);
    let calls = backend.calls.load(SeqCst);
    one(&layer, &backend).await.unwrap();
    assert_eq!(backend.calls.load(SeqCst), calls + 1, "not hedged");

    *backend.first.lock().unwrap() = None;
    for _ in 0..100 {
        one(&layer, &backend).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // The 95th percentile of 10 ms calls (its bucket's upper bound, 12.5 % at most above).
    let delay = layer.delay().expect("enough latencies");
    assert!(
        delay >= 10 * MS && delay <= 11300 * Duration::from_micros(1),
        "{delay:?}"
    );
    *backend.first.lock().unwrap() = Some(1000 * MS);
    let calls = backend.calls.load(SeqCst);
    let start = tokio::time::Instant::now();
    one(&layer, &backend).await.unwrap();
    assert_eq!(backend.calls.load(SeqCst), calls + 2, "hedged");
    // The timer fires at the next millisecond after the delay.
    let took = start.elapsed();
    assert!(
        took >= delay + 10 * MS && took <= delay + 11 * MS,
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_failures_are_not_recorded() {
    let layer = HedgeLayer::builder()
        .min_samples(10)
        .no_budget()
        .build()
        .unwrap();
    let backend = Backend::default();
    backend.set(MS, false);
    for _ in 0..200 {
        one(&layer, &backend).await.unwrap_err();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(layer.delay(), None);
}

#[tokio::test(start_paused = true)]
async fn losers_are_recorded_when_they_are_dropped() {
    let layer = HedgeLayer::builder()
        .max_extra_load(0.3)
        .min_samples(10)
        .no_budget()
        .build()
        .unwrap();
    let backend = Backend::default();
    backend.set(10 * MS, true);
    for _ in 0..100 {
        one(&layer, &backend).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let delay = layer.delay().unwrap();
    assert!(delay >= 10 * MS && delay < 12 * MS, "{delay:?}");
    // Every first attempt now takes a second; its hedge, sent at the delay, wins 10 ms later
    // and the first attempt is dropped then, at about 20 ms: that is what it records.
    *backend.first.lock().unwrap() = Some(1000 * MS);
    for _ in 0..100 {
        one(&layer, &backend).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // 200 latencies of 10 ms and 100 of about 21 ms: the 70th percentile is a loser's.
    let delay = layer.delay().unwrap();
    assert!(delay >= 20 * MS && delay < 24 * MS, "{delay:?}");
}
