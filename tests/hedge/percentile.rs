//! The percentile delay: no hedging until the window holds enough latencies, then the
//! `1 - max_extra_load` percentile of one sample per call, from its first attempt's start:
//! successes, and calls ended otherwise (or dropped) after the delay, never fast failures.

use seawall::hedge::HedgeLayer;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
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
async fn a_hedged_call_counts_from_its_first_attempts_start() {
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
    // Every first attempt now takes a second; its hedge, sent at the delay, wins 10 ms later,
    // at about 21 ms from the first attempt's start: that is what the call records.
    *backend.first.lock().unwrap() = Some(1000 * MS);
    for _ in 0..100 {
        one(&layer, &backend).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // 100 latencies of 10 ms and 100 of about 21 ms: the 70th percentile is a hedged call's.
    let delay = layer.delay().unwrap();
    assert!(delay >= 20 * MS && delay < 24 * MS, "{delay:?}");
}

/// A backend whose every attempt takes 10 to 110 ms, uniform and independent: the median is
/// 60 ms.
#[derive(Clone)]
struct Uniform(Arc<Mutex<rand::rngs::SmallRng>>);

impl Service<()> for Uniform {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        use rand::Rng;
        let latency = Duration::from_micros(self.0.lock().unwrap().random_range(10_000..110_000));
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_percentile_does_not_drift_down_when_hedges_win() {
    use rand::SeedableRng;
    // Hedging at the median: half the calls are hedged, and many hedges win. Each call is one
    // sample, from its first attempt's start: those hedged took longer than the delay, so the
    // median stays where it is. (Timing the winning hedge from its own start, or the loser
    // from its own, adds short samples that pull the delay down, and more calls get hedged.)
    let layer = HedgeLayer::builder()
        .max_extra_load(0.5)
        .no_budget()
        .build()
        .unwrap();
    let backend = Uniform(Arc::new(Mutex::new(rand::rngs::SmallRng::seed_from_u64(3))));
    let start = tokio::time::Instant::now();
    let length = Duration::from_secs(60);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (layer, backend) = (layer.clone(), backend.clone());
        clients.push(tokio::spawn(async move {
            while start.elapsed() < length {
                layer.layer(backend.clone()).oneshot(()).await.unwrap();
            }
        }));
    }
    let mut delays = Vec::new();
    while start.elapsed() < length {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if start.elapsed() >= Duration::from_secs(15) {
            delays.push(layer.delay().expect("enough latencies"));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    let lowest = *delays.iter().min().unwrap();
    println!(
        "delays from {lowest:?} to {:?}",
        delays.iter().max().unwrap()
    );
    // The true median of a call not hedged is 60 ms; the window's, by bucket and sample, within
    // 10 % of it.
    assert!(lowest >= 54 * MS, "the delay drifted down to {lowest:?}");
}

#[tokio::test(start_paused = true)]
async fn calls_ended_without_a_success_after_the_delay_record_how_long_they_ran() {
    // A call dropped by its caller, or failed, after the delay took at least that long: it
    // counts, so that slow calls keep the percentile up. Ended before the delay, it does not.
    for failing in [false, true] {
        let layer = HedgeLayer::builder()
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
        let before = layer.delay().unwrap();
        assert!(before < 12 * MS, "{before:?}");
        let calls = |wait: Duration| {
            let calls: Vec<_> = (0..100)
                .map(|_| {
                    let service = layer.layer(backend.clone());
                    tokio::spawn(async move {
                        if failing {
                            service.oneshot(0).await.unwrap_err();
                        } else {
                            let call = tokio::time::timeout(wait, service.oneshot(0));
                            call.await.unwrap_err();
                        }
                    })
                })
                .collect();
            async move {
                for call in calls {
                    call.await.unwrap();
                }
            }
        };
        if !failing {
            // Dropped at 5 ms, before the delay: not counted.
            backend.set(1000 * MS, true);
            calls(5 * MS).await;
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(
                layer.delay(),
                Some(before),
                "calls dropped early do not count"
            );
        }
        // Dropped at 500 ms, or failed at 500 ms (the hedge at 510): both past the delay.
        backend.set(500 * MS, !failing);
        if !failing {
            backend.set(1000 * MS, true);
        }
        calls(500 * MS).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let after = layer.delay().unwrap();
        assert!(
            after >= 500 * MS,
            "{} calls after the delay count: the 95th percentile is theirs, not {after:?}",
            if failing { "failed" } else { "dropped" }
        );
    }
}

/// Answers at once (at the call's first poll), or after 10 ms once set to be slow.
#[derive(Clone, Default)]
struct AtOnceOrSlow(Arc<AtomicBool>);

impl Service<u32> for AtOnceOrSlow {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        if self.0.load(SeqCst) {
            Box::pin(async {
                tokio::time::sleep(10 * MS).await;
                Ok(1)
            })
        } else {
            Box::pin(std::future::ready(Ok(0)))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn calls_answered_at_their_first_poll_count_as_zero_latencies_of_their_time() {
    // A call whose first attempt answers at its first poll reads no clock: it is one zero
    // latency, counted in the latest second the window knows of (found out within a few such
    // calls after a quiet time). They must weigh in the percentile as many as they are, in the
    // window of their time, and leave it ten seconds later.
    let layer = HedgeLayer::builder()
        .max_extra_load(0.5)
        .min_samples(10)
        .max_attempts(1)
        .no_budget()
        .build()
        .unwrap();
    let backend = AtOnceOrSlow::default();
    let calls = |slow: bool, n: usize| {
        backend.0.store(slow, SeqCst);
        let (layer, backend) = (layer.clone(), backend.clone());
        async move {
            for _ in 0..n {
                layer.layer(backend.clone()).oneshot(0).await.unwrap();
            }
        }
    };
    let slow_median = |delay: Option<Duration>| {
        let delay = delay.expect("enough latencies");
        delay >= 10 * MS && delay < 12 * MS
    };
    calls(true, 100).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(slow_median(layer.delay()), "{:?}", layer.delay());

    // Thirty seconds later, with no clock read meanwhile: 150 calls answered at once, then 100
    // slow ones. The median is one answered at once (under the 1 ms floor).
    tokio::time::advance(Duration::from_secs(30)).await;
    calls(false, 150).await;
    calls(true, 100).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(layer.delay(), Some(MS), "the calls answered at once count");

    // Those have all left the window: 100 at once and 150 slow, and the median is slow.
    tokio::time::advance(Duration::from_secs(11)).await;
    calls(false, 100).await;
    calls(true, 150).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(slow_median(layer.delay()), "{:?}", layer.delay());

    // Only calls answered at once for ten seconds: the slow ones leave, the median is theirs.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        calls(false, 20).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(layer.delay(), Some(MS));
}

/// An origin whose calls take 20 to 40 ms, counting them.
#[derive(Clone, Default)]
struct Origin(Arc<AtomicUsize>);

impl Service<u32> for Origin {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        let n = self.0.fetch_add(1, SeqCst) as u64;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_micros(20_000 + (n * 7919) % 20_000)).await;
            Ok(())
        })
    }
}

/// A cache in front of a service: request 0 is a hit, answered at its first poll; any other
/// is a miss, sent to the service.
#[derive(Clone)]
struct Cache<S>(S);

impl<S> Service<u32> for Cache<S>
where
    S: Service<u32, Response = (), Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: u32) -> Self::Future {
        if req == 0 {
            return Box::pin(std::future::ready(Ok(())));
        }
        Box::pin(self.0.call(req))
    }
}

#[tokio::test(start_paused = true)]
async fn a_cache_above_the_hedge_layer_keeps_hedged_misses_to_the_extra_load() {
    // 97 % hits at 2,000 calls a second. Beneath the hedge layer, the hits would count as zero
    // latencies and as deposits, pulling the delay to its 1 ms floor and funding a hedge for
    // every miss (twice the origin's load); the docs put such layers above it, where the hedge
    // layer sees only the misses and hedges at most about 5 % of them.
    let layer = HedgeLayer::new();
    let origin = Origin::default();
    let service = Cache(layer.layer(origin.clone()));
    let start = Instant::now();
    let mut misses = 0u64;
    let mut n = 0u64;
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        n += 1;
        let miss = n % 33 == 0; // 3 %
        misses += u64::from(miss);
        tasks.push(tokio::spawn(service.clone().oneshot(u32::from(miss))));
        tokio::time::sleep(Duration::from_micros(500)).await; // 2,000 a second
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let origin = origin.0.load(SeqCst) as f64;
    println!(
        "delay {:?}; origin calls {origin} for {misses} misses ({:.2}x)",
        layer.delay(),
        origin / misses as f64
    );
    assert!(origin <= 1.06 * misses as f64);
    assert!(
        layer.delay() > Some(20 * MS),
        "the delay is the misses' 95th percentile, not the floor"
    );
}
