//! The cache layer: hits, misses and readiness, single-flight, freshness, early refresh.
#![cfg(feature = "cache")]

use seawall::cache::{CacheLayer, ConfigError, Shared};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_test::mock;

#[cfg(feature = "http")]
mod http;
mod observe;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
#[path = "../fleet/server.rs"]
mod redis_server;

/// An observer that keeps every event of the layer named as given.
#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Vec<seawall::core::EventKind>>>);

impl Seen {
    fn observer(
        &self,
        layer: &'static str,
    ) -> impl Fn(&seawall::core::Event<'_>) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |event: &seawall::core::Event<'_>| {
            assert_eq!(event.layer, layer);
            seen.lock().unwrap().push(event.kind);
        }
    }

    /// The events so far, forgotten.
    fn take(&self) -> Vec<seawall::core::EventKind> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// The events so far, kept.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn all(&self) -> Vec<seawall::core::EventKind> {
        self.0.lock().unwrap().clone()
    }
}

/// A backend that counts its calls, takes `latency` per call, and answers `key * 10`, or fails
/// while `down` is set.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    latency: Duration,
}

impl Backend {
    fn new(latency: Duration) -> Self {
        Backend {
            calls: Arc::default(),
            down: Arc::default(),
            latency,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn service(
        &self,
    ) -> impl Service<u32, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |key: u32| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(this.latency).await;
                if this.down.load(Ordering::SeqCst) {
                    return Err::<u64, BoxError>("backend down".into());
                }
                Ok(u64::from(key) * 10)
            }
        })
    }
}

fn key(req: &u32) -> Option<u32> {
    (*req != 0).then_some(*req)
}

#[tokio::test(start_paused = true)]
async fn a_hit_never_touches_the_inner_service_and_readiness_is_always_ready() {
    let layer = CacheLayer::builder(key).early_refresh(0.0).build().unwrap();
    let (mock, mut handle) = mock::pair::<u32, u64>();
    let mut service = layer.layer(mock);

    // The inner service is not ready: the cache is, and the miss waits inside its future.
    handle.allow(0);
    assert_ready_ok!(task::spawn(()).enter(|cx, _| service.poll_ready(cx)));
    let mut miss = task::spawn(service.call(7));
    assert_pending!(miss.poll());
    handle.allow(1);
    assert!(miss.is_woken());
    assert_pending!(miss.poll());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, 7);
    send.send_response(70);
    assert_eq!(assert_ready_ok!(miss.poll()), 70);

    // A hit: answered at once, with the inner service neither polled nor called.
    handle.allow(0);
    assert_ready_ok!(task::spawn(()).enter(|cx, _| service.poll_ready(cx)));
    let mut hit = task::spawn(service.call(7));
    assert_eq!(assert_ready_ok!(hit.poll()), 70);
    handle.allow(1);
    assert_pending!(task::spawn(handle.next_request()).poll());
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_key_passes_by_the_cache() {
    let backend = Backend::new(Duration::from_millis(1));
    let layer = CacheLayer::builder(key).build().unwrap();
    let service = layer.layer(backend.service());
    service.clone().oneshot(0).await.unwrap();
    service.clone().oneshot(0).await.unwrap();
    assert_eq!(backend.calls(), 2);
    assert!(layer.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_fresh_for_its_ttl_then_asked_again() {
    let backend = Backend::new(Duration::from_millis(10));
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .early_refresh(0.0)
        .build()
        .unwrap();
    let service = layer.layer(backend.service());
    assert_eq!(service.clone().oneshot(3).await.unwrap(), 30);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(service.clone().oneshot(3).await.unwrap(), 30);
    assert_eq!(backend.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(service.clone().oneshot(3).await.unwrap(), 30);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_misses_make_one_inner_call() {
    let backend = Backend::new(Duration::from_millis(30));
    let layer = CacheLayer::builder(key).build().unwrap();
    let service = layer.layer(backend.service());
    let calls: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(service.clone().oneshot(5)))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 50);
    }
    assert_eq!(backend.calls(), 1);
    assert_eq!(layer.stats().misses, 1000);
    assert_eq!(layer.stats().coalesced, 999);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_hands_the_call_to_a_waiter() {
    let backend = Backend::new(Duration::from_millis(30));
    let layer = CacheLayer::builder(key).build().unwrap();
    let mut service = layer.layer(backend.service());
    let mut leader = task::spawn(service.call(4));
    assert_pending!(leader.poll());
    let mut waiters: Vec<_> = (0..3).map(|_| task::spawn(service.call(4))).collect();
    for waiter in &mut waiters {
        assert_pending!(waiter.poll());
    }
    assert_eq!(backend.calls(), 1);
    drop(leader);
    assert!(waiters.iter().all(|waiter| waiter.is_woken()));
    for waiter in &mut waiters {
        assert_pending!(waiter.poll());
    }
    // One waiter took the call over: the others wait on it.
    assert_eq!(backend.calls(), 2);
    tokio::time::advance(Duration::from_millis(30)).await;
    for waiter in &mut waiters {
        assert_eq!(assert_ready_ok!(waiter.poll()), 40);
    }
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_error_is_shared_with_the_waiters_but_not_cached() {
    let backend = Backend::new(Duration::from_millis(30));
    backend.set_down(true);
    let layer = CacheLayer::builder(key).build().unwrap();
    let service = layer.layer(backend.service());
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(6)))
        .collect();
    for call in calls {
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "backend down");
    }
    assert_eq!(backend.calls(), 1);
    // Not cached: the next call asks again.
    backend.set_down(false);
    assert_eq!(service.clone().oneshot(6).await.unwrap(), 60);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn negative_caching_keeps_a_failure_for_its_own_ttl() {
    let backend = Backend::new(Duration::from_millis(1));
    backend.set_down(true);
    let layer = CacheLayer::builder(key)
        .negative_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let service = layer.layer(backend.service());
    service.clone().oneshot(8).await.unwrap_err();
    backend.set_down(false);
    let error = service.clone().oneshot(8).await.unwrap_err();
    assert!(error.is::<Shared>(), "{error:?}");
    assert_eq!(error.to_string(), "backend down");
    assert_eq!(backend.calls(), 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(service.clone().oneshot(8).await.unwrap(), 80);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let backend = Backend::new(Duration::from_millis(100));
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(30))
        .early_refresh(0.0)
        .build()
        .unwrap();
    let mut service = layer.layer(backend.service());
    service.clone().oneshot(2).await.unwrap();
    tokio::time::advance(Duration::from_secs(15)).await;
    // Stale: every call is answered at once; one refresh runs in the background.
    for _ in 0..20 {
        let mut call = task::spawn(service.call(2));
        assert_eq!(assert_ready_ok!(call.poll()), 20);
    }
    tokio::task::yield_now().await;
    assert_eq!(backend.calls(), 2);
    assert_eq!(layer.stats().refreshes, 1);
    tokio::time::advance(Duration::from_millis(150)).await;
    tokio::task::yield_now().await;
    // Refreshed: fresh again, and no more refreshes.
    let mut call = task::spawn(service.call(2));
    assert_eq!(assert_ready_ok!(call.poll()), 20);
    tokio::task::yield_now().await;
    assert_eq!(backend.calls(), 2);
    assert_eq!(layer.stats().stale_served, 20);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_stale_through_an_outage_asking_once_a_second() {
    let backend = Backend::new(Duration::from_millis(20));
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(300))
        .early_refresh(0.0)
        .build()
        .unwrap();
    let service = layer.layer(backend.service());
    service.clone().oneshot(1).await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    backend.set_down(true);
    let before = backend.calls();
    // 60 s of outage at 100 requests a second: every request answered stale.
    for _ in 0..6000 {
        assert_eq!(service.clone().oneshot(1).await.unwrap(), 10);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let revalidations = backend.calls() - before;
    assert!(
        (55..=61).contains(&revalidations),
        "{revalidations} revalidations in 60 s"
    );
    // Back up: the next revalidation refreshes the entry.
    backend.set_down(false);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 10);
    let calls = backend.calls();
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 10);
    assert_eq!(backend.calls(), calls, "fresh again");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_is_off_by_default() {
    let backend = Backend::new(Duration::from_millis(1));
    let layer = CacheLayer::builder(key).early_refresh(0.0).build().unwrap();
    let service = layer.layer(backend.service());
    service.clone().oneshot(1).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    backend.set_down(true);
    service.clone().oneshot(1).await.unwrap_err();
}

#[test]
fn bad_settings_are_typed_errors() {
    let build = |f: fn(_) -> _| {
        let builder = CacheLayer::builder(key);
        let builder: seawall::cache::CacheBuilder<_, u64> = f(builder);
        builder.build::<u32>().map(drop)
    };
    assert_eq!(build(|b| b.ttl(Duration::ZERO)), Err(ConfigError::Ttl));
    assert_eq!(build(|b| b.max_entries(0)), Err(ConfigError::MaxEntries));
    assert_eq!(
        build(|b| b.max_weight(0, |_| 1)),
        Err(ConfigError::MaxWeight)
    );
    assert_eq!(
        build(|b| b.negative_ttl(Duration::ZERO)),
        Err(ConfigError::NegativeTtl)
    );
    assert_eq!(build(|b| b.early_refresh(-1.0)), Err(ConfigError::Beta));
    assert_eq!(build(|b| b.early_refresh(f64::NAN)), Err(ConfigError::Beta));
    assert_eq!(
        build(|b| b.revalidate_interval(Duration::ZERO)),
        Err(ConfigError::RevalidateInterval)
    );
    assert_eq!(build(|b| b), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_stays_bounded_under_a_flood_of_keys() {
    let backend = Backend::new(Duration::ZERO);
    let layer = CacheLayer::builder(key).max_entries(100).build().unwrap();
    let service = layer.layer(backend.service());
    for key in 1..5000 {
        service.clone().oneshot(key).await.unwrap();
    }
    assert!(layer.len() <= 110, "{}", layer.len());
    assert!(layer.stats().evictions >= 4800);
}

/// The stampede: one hot key at 667 requests a second, each recompute 20 to 40 ms, TTL
/// 60 s, 10 minutes. Early refresh recomputes about once per TTL, in the background, so no
/// request waits on a recompute after the first.
#[tokio::test(start_paused = true)]
async fn early_refresh_keeps_a_hot_key_from_stampeding() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let backend = service_fn(move |_: u32| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            // 20 to 40 ms, varying per call.
            tokio::time::sleep(Duration::from_millis(20 + (n as u64 * 7) % 21)).await;
            Ok::<_, BoxError>(n as u64)
        }
    });
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .seed(7)
        .build()
        .unwrap();
    let mut service = layer.layer(backend);
    let period = Duration::from_micros(1_499); // about 667 a second
    let end = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut waited = 0;
    let mut first = true;
    while tokio::time::Instant::now() < end {
        let mut call = task::spawn(service.call(1));
        if call.poll().is_pending() {
            if !first {
                waited += 1;
            }
            call.await.unwrap();
        }
        first = false;
        tokio::time::advance(period).await;
    }
    let calls = calls.load(Ordering::SeqCst);
    // 10 TTL periods: at most 1.05 calls per period (the first call included).
    assert!(calls as f64 <= 1.05 * 10.0 + 1.0, "{calls} inner calls");
    assert!(calls >= 10, "{calls} inner calls: refreshed every period");
    assert_eq!(waited, 0, "requests waited on a recompute after warm-up");
}

/// Without early refresh the same load misses when the key expires: the test above can fail.
#[tokio::test(start_paused = true)]
async fn without_early_refresh_requests_wait_at_expiry() {
    let backend = Backend::new(Duration::from_millis(30));
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .early_refresh(0.0)
        .build()
        .unwrap();
    let mut service = layer.layer(backend.service());
    let mut waited = 0;
    for _ in 0..(667 * 130) {
        let mut call = task::spawn(service.call(1));
        if call.poll().is_pending() {
            waited += 1;
            call.await.unwrap();
        }
        tokio::time::advance(Duration::from_micros(1_499)).await;
    }
    assert!(waited >= 3, "{waited}");
}

/// A key stored again (a background refresh) replaces its entry: that is not an eviction, and a
/// roomy store has evicted nothing.
#[tokio::test(start_paused = true)]
async fn replacing_an_entry_is_not_an_eviction() {
    let backend = Backend::new(Duration::from_millis(1));
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(60))
        .early_refresh(0.0)
        .build()
        .unwrap();
    let service = layer.layer(backend.service());
    for _ in 0..5 {
        service.clone().oneshot(1).await.unwrap();
        // Time for the background refresh to land.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(backend.calls(), 5);
    assert_eq!(layer.stats().refreshes, 4);
    assert_eq!(layer.stats().evictions, 0);
}
