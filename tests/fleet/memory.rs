//! The fleet limiter over the in-memory store, in paused time.

use super::{admitted, load, ok, Flaky, KeyFn, Mode, Req, KEY};
use seawall::core::{Event, EventKind, Observer};
use seawall::limit::error::RateLimited;
use seawall::limit::fleet::{ConfigError, FleetBuilder, FleetRateLimitLayer, MemoryStore, Store};
use seawall::limit::rate::{Quota, QuotaError, TokioClock};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{sleep, Instant};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// Three instances over one store, each with four callers about every 10 ms for 5 s, share a
/// limit of 20 a second (burst 5): the total stays within 20 × 5 + burst + the instances' largest
/// leases (4 + 1 each), comes close to it, and each instance gets a share.
#[tokio::test(start_paused = true)]
async fn instances_share_one_limit() {
    let store = MemoryStore::new();
    let mut handles = Vec::new();
    let instances = (0..3)
        .map(|_| {
            let layer =
                FleetRateLimitLayer::builder(store.clone(), Quota::per_second(20).burst(5), KEY)
                    .lease(1, 4)
                    .build()
                    .unwrap();
            handles.push(layer.handle());
            (0..4).map(|_| layer.layer(service_fn(ok))).collect()
        })
        .collect();
    let each = load(instances, "tenant", Duration::from_secs(5)).await;
    let total: u64 = each.iter().sum();
    assert!(
        total <= 20 * 5 + 5 + 3 * (4 + 1),
        "admitted {total} ({each:?})"
    );
    assert!(total >= 95, "admitted only {total} ({each:?})");
    for n in &each {
        assert!(*n >= total / 10, "an instance starved: {each:?}");
    }
    // Slots are reserved ahead, not polled for: about one store call per admission.
    let calls: u64 = handles.iter().map(|h| h.store_calls()).sum();
    assert!(
        calls <= total + 3 * 10,
        "{calls} store calls for {total} admissions"
    );
}

/// A hot key's lease grows, so the store sees far fewer calls than the limiter admits, and the
/// lease never exceeds its bound.
#[tokio::test(start_paused = true)]
async fn leases_grow_for_a_hot_key_and_spare_the_store() {
    let layer = FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(10_000), KEY)
        .lease(1, 64)
        .lease_lasts(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    let mut admitted_calls = 0u64;
    for _ in 0..2_000 {
        if admitted(&mut service, "hot").await {
            admitted_calls += 1;
        }
        assert!(handle.leased(&"hot") <= 64 + 16);
        sleep(Duration::from_micros(500)).await;
    }
    assert_eq!(admitted_calls, 2_000);
    // 2,000 calls in a second: at lease 64 about 31 store calls; growing from 1 costs a few more.
    let calls = handle.store_calls();
    assert!(
        calls <= 2_000 / 16,
        "{calls} store calls for 2,000 admissions"
    );
    assert_eq!(handle.store_failures(), 0);
}

/// Keys are limited apart, and requests without a key pass uncounted.
#[tokio::test(start_paused = true)]
async fn keys_are_isolated_and_keyless_requests_pass() {
    let layer = FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(2), KEY)
        .build()
        .unwrap();
    let mut service = layer.layer(service_fn(ok));
    async fn five<S>(service: &mut S, k: &'static str) -> u32
    where
        S: Service<Req, Response = (), Error = BoxError>,
    {
        let mut n = 0;
        for _ in 0..5 {
            n += admitted(service, k).await as u32;
        }
        n
    }
    assert_eq!(five(&mut service, "a").await, 2);
    assert_eq!(five(&mut service, "b").await, 2);
    assert_eq!(five(&mut service, "").await, 5);
    assert_eq!(five(&mut service, "a").await, 0);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(five(&mut service, "a").await, 1);
}

#[derive(Clone, Default)]
struct Health(Arc<Mutex<Vec<bool>>>);

impl Observer for Health {
    fn on_event(&self, event: &Event<'_>) {
        if let EventKind::StoreHealth { degraded } = event.kind {
            self.0.lock().unwrap().push(degraded);
        }
    }
}

type Builder<St, O = ()> = FleetBuilder<St, KeyFn, TokioClock, O>;

fn flaky_layer(store: &Flaky<MemoryStore>, health: &Health) -> Builder<Flaky<MemoryStore>, Health> {
    FleetRateLimitLayer::builder(store.clone(), Quota::per_second(100), KEY)
        .store_timeout(Duration::from_millis(50))
        .probe_every(Duration::from_millis(100))
        .observer(health.clone())
}

/// A store that fails: the limiter falls back to its local limit at once, says so once, and goes
/// back to the store by itself when it answers again.
#[tokio::test(start_paused = true)]
async fn a_failing_store_falls_back_to_the_local_limit_and_recovers() {
    let store = Flaky::new(MemoryStore::new());
    let health = Health::default();
    let layer = flaky_layer(&store, &health)
        .fail_open(Quota::per_second(3))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    assert!(admitted(&mut service, "k").await);
    store.set(Mode::Failing);
    let mut n = 0;
    for _ in 0..10 {
        n += admitted(&mut service, "k").await as u32;
    }
    assert!(handle.degraded());
    // The lease left over (at most 1, the smallest), then the local limit's burst of 3.
    assert!((3..=4).contains(&n), "admitted {n} while degraded");
    assert_eq!(*health.0.lock().unwrap(), [true]);

    store.set(Mode::Up);
    // The breaker opened after 3 failures for 1 s; probes resume after it.
    sleep(Duration::from_millis(1_200)).await;
    let mut n = 0;
    for _ in 0..20 {
        n += admitted(&mut service, "k").await as u32;
        sleep(Duration::from_millis(20)).await;
    }
    assert!(!handle.degraded(), "not recovered");
    assert_eq!(*health.0.lock().unwrap(), [true, false]);
    assert!(n >= 15, "admitted {n} of 20 after recovery (quota 100/s)");
}

/// A store that never answers: a call waiting for a lease gets the fallback's answer within
/// about the store timeout, never hangs; fail closed, it is refused.
#[tokio::test(start_paused = true)]
async fn a_hung_store_costs_at_most_the_store_timeout() {
    let store = Flaky::new(MemoryStore::new());
    let health = Health::default();
    let layer = flaky_layer(&store, &health).fail_closed().build().unwrap();
    let mut service = layer.layer(service_fn(ok));
    store.set(Mode::Hanging);
    let start = Instant::now();
    let first = service.ready().await.unwrap().call(Req("k")).await;
    let waited = start.elapsed();
    let err = first.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert!(limited.retry_after() > Duration::ZERO);
    assert!(waited <= Duration::from_millis(60), "waited {waited:?}");
    // Degraded now: the next call is refused at once, without waiting.
    let start = Instant::now();
    assert!(!admitted(&mut service, "k").await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(*health.0.lock().unwrap(), [true]);
}

/// Dropping calls that wait for a lease loses nothing: the renewal still lands, and the next
/// call spends it.
#[tokio::test(start_paused = true)]
async fn cancelled_waiters_leave_the_lease_whole() {
    let layer = FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(5), KEY)
        .lease(4, 4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    let waiting = service.ready().await.unwrap().call(Req("k"));
    drop(waiting);
    tokio::task::yield_now().await;
    assert_eq!(handle.leased(&"k"), 4);
    for _ in 0..4 {
        assert!(admitted(&mut service, "k").await);
    }
}

/// A small table: keys beyond it take idle keys' slots, and limits still hold.
#[tokio::test(start_paused = true)]
async fn a_full_table_recycles_slots() {
    let layer =
        FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(1), |k: &String| {
            Some(k.clone())
        })
        .max_keys(8)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(|_: String| async {
        Ok::<_, std::io::Error>(())
    }));
    for i in 0..100 {
        let key = format!("k{i}");
        assert!(service
            .ready()
            .await
            .unwrap()
            .call(key.clone())
            .await
            .is_ok());
        assert!(service.ready().await.unwrap().call(key).await.is_err());
    }
    assert!(handle.keys() <= 8);
}

fn build_layer() -> FleetRateLimitLayer<MemoryStore, KeyFn> {
    FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(1), KEY)
        .build()
        .unwrap()
}

#[test]
fn bad_settings_are_errors() {
    let build = |f: fn(Builder<MemoryStore>) -> Builder<MemoryStore>| {
        f(FleetRateLimitLayer::builder(
            MemoryStore::new(),
            Quota::per_second(1),
            KEY,
        ))
        .build()
        .map(|_| ())
    };
    assert!(matches!(
        build(|b| b.lease(0, 4)),
        Err(ConfigError::Lease { min: 0, max: 4 })
    ));
    assert!(matches!(
        build(|b| b.lease(5, 4)),
        Err(ConfigError::Lease { .. })
    ));
    assert_eq!(build(|b| b.max_keys(0)), Err(ConfigError::MaxKeys));
    assert!(matches!(
        build(|b| b.store_timeout(Duration::ZERO)),
        Err(ConfigError::Zero(_))
    ));
    assert!(matches!(
        build(|b| b.fail_open(Quota::per_second(0))),
        Err(ConfigError::Quota(_))
    ));
    assert_eq!(
        build(|b| b.max_keys(usize::MAX)),
        Err(ConfigError::TooManyKeys)
    );
    for (f, what) in [
        (
            (|b| b.lease_lasts(Duration::MAX)) as fn(Builder<MemoryStore>) -> _,
            "lease_lasts",
        ),
        (|b| b.store_timeout(Duration::MAX), "store timeout"),
        (|b| b.probe_every(Duration::MAX), "probe interval"),
        (|b| b.reserve_ahead(Duration::MAX), "reserve_ahead"),
    ] {
        assert_eq!(build(f), Err(ConfigError::TooLong(what)));
    }
    assert_eq!(
        build(|b| b.fail_open(Quota::new(10, Duration::from_nanos(5)))),
        Err(ConfigError::Quota(QuotaError::Interval))
    );
    assert_eq!(
        build(|b| b.fail_open(Quota::new(1, Duration::MAX))),
        Err(ConfigError::Quota(QuotaError::TooLong))
    );
    let fleet =
        FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_hour(1).burst(u32::MAX), KEY);
    assert_eq!(
        fleet.build().map(|_| ()),
        Err(ConfigError::Quota(QuotaError::TooLong))
    );
    let handle = build_layer().handle();
    assert_eq!(
        handle.set_quota(Quota::new(10, Duration::from_nanos(5))),
        Err(ConfigError::Quota(QuotaError::Interval))
    );
    assert_eq!(
        ConfigError::TooLong("probe interval").to_string(),
        "the fleet rate limiter's probe interval must be at most about nine years"
    );
    assert_eq!(build(|b| b), Ok(()));
    let err = build(|b| b.lease(5, 4)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "lease bounds must satisfy 1 <= min <= max (got 5..=4)"
    );
}

#[test]
fn memory_and_test_stores_are_stores() {
    fn store<St: Store>(_: &St) {}
    store(&MemoryStore::new());
    store(&Flaky::new(MemoryStore::new()));
}

/// A store that counts what it grants.
#[derive(Clone)]
struct Counting {
    inner: MemoryStore,
    granted: Arc<std::sync::atomic::AtomicU64>,
}

impl tower::Service<seawall::limit::fleet::Take> for Counting {
    type Response = seawall::limit::fleet::Grant;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, take: seawall::limit::fleet::Take) -> Self::Future {
        let grant = self.inner.call(take).into_inner();
        if let Ok(grant) = &grant {
            self.granted.fetch_add(
                u64::from(grant.granted),
                std::sync::atomic::Ordering::SeqCst,
            );
        }
        std::future::ready(grant)
    }
}

/// 32 tasks on four threads make 16,000 calls on one key of 1,000 an hour between two instances:
/// nothing is admitted that the store did not grant, and nothing granted is lost: the calls
/// admitted and the leases left add up to the store's grants exactly, and they are the whole
/// quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_calls_spend_exactly_what_the_store_granted() {
    let granted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let store = Counting {
        inner: MemoryStore::new(),
        granted: granted.clone(),
    };
    let quota = Quota::per_hour(1_000).burst(1_000);
    let layers: Vec<_> = (0..2)
        .map(|_| {
            FleetRateLimitLayer::builder(store.clone(), quota, KEY)
                .lease(1, 16)
                .store_timeout(Duration::from_secs(5))
                .build()
                .unwrap()
        })
        .collect();
    let admitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut service = layers[i % 2].layer(service_fn(ok));
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                if admitted_call(&mut service).await {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // A renewal may still be in flight on another thread: wait (a bounded while) for it to land.
    let count = || {
        let admitted = admitted.load(std::sync::atomic::Ordering::SeqCst);
        let leased: u64 = layers.iter().map(|l| l.handle().leased(&"k")).sum();
        (
            admitted,
            leased,
            granted.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count().0 + count().1 != count().2 && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    for layer in &layers {
        assert_eq!(layer.handle().store_failures(), 0);
    }
    let (admitted, leased, granted) = count();
    assert_eq!(
        admitted + leased,
        granted,
        "admitted {admitted}, leased {leased}"
    );
    assert_eq!(granted, 1_000);
}

async fn admitted_call<S>(service: &mut S) -> bool
where
    S: Service<Req, Response = (), Error = BoxError>,
{
    admitted(service, "k").await
}

/// A healthy store that is slow: every take is answered after 90 ms, with one admission.
#[derive(Clone)]
struct Slow;

impl tower::Service<seawall::limit::fleet::Take> for Slow {
    type Response = seawall::limit::fleet::Grant;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: seawall::limit::fleet::Take) -> Self::Future {
        Box::pin(async {
            sleep(Duration::from_millis(90)).await;
            Ok(seawall::limit::fleet::Grant {
                granted: 1,
                wait: Duration::ZERO,
            })
        })
    }
}

/// Four callers wait on a key whose store is healthy but hands out one admission per 90 ms: in
/// the 200 ms they may wait (twice the store timeout), two get one; the others are refused,
/// told when to come back, rather than let through by the local limit, which is for a store
/// that is down and would let the whole fleet's quota through in this instance alone.
#[tokio::test(start_paused = true)]
async fn a_caller_that_waits_too_long_on_a_healthy_store_is_refused_not_let_through() {
    let layer = FleetRateLimitLayer::builder(Slow, Quota::per_second(100), KEY)
        .lease(1, 1)
        .store_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let start = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut service = layer.layer(service_fn(ok));
            tokio::spawn(async move {
                let result = service.ready().await.unwrap().call(Req("k")).await;
                (
                    result.map_err(|e| *e.downcast::<RateLimited>().unwrap()),
                    start.elapsed(),
                )
            })
        })
        .collect();
    let mut admitted = 0;
    for caller in callers {
        let (result, at) = caller.await.unwrap();
        match result {
            Ok(()) => admitted += 1,
            Err(limited) => {
                assert!(at >= Duration::from_millis(200), "refused after {at:?}");
                assert!(limited.retry_after() > Duration::ZERO);
            }
        }
    }
    assert!(!handle.degraded());
    assert_eq!(admitted, 2);
}

/// A store that is never ready: its `poll_ready` is pending for ever.
#[derive(Clone)]
struct NeverReady;

impl tower::Service<seawall::limit::fleet::Take> for NeverReady {
    type Response = seawall::limit::fleet::Grant;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: seawall::limit::fleet::Take) -> Self::Future {
        unreachable!("never ready, so never called")
    }
}

/// A store stuck in `poll_ready` is bounded by the store timeout like one stuck in `call`: the
/// renewal fails when it runs out, the store is marked degraded, and the caller waiting for it
/// (and those after it) are decided by the local limit, not refused for ever.
#[tokio::test(start_paused = true)]
async fn a_store_never_ready_is_degraded_after_the_store_timeout() {
    let health = Health::default();
    let layer = FleetRateLimitLayer::builder(NeverReady, Quota::per_second(100), KEY)
        .store_timeout(Duration::from_millis(50))
        .probe_every(Duration::from_millis(100))
        .fail_open(Quota::per_second(3))
        .observer(health.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    let start = Instant::now();
    assert!(
        admitted(&mut service, "k").await,
        "not admitted by the local limit"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert!(handle.degraded());
    assert_eq!(*health.0.lock().unwrap(), [true]);
    assert_eq!(handle.store_failures(), 1);
    // Degraded: the rest of the local burst of 3 at once, then refusals.
    let mut n = 0;
    for _ in 0..5 {
        n += admitted(&mut service, "k").await as u32;
    }
    assert_eq!(n, 2);
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

/// An observer that panics at `StoreHealth`, sent from the background renewal that found the
/// store down, stops nothing: the key renews again, and once the store answers again the
/// limiter goes back to it.
#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_store_health_does_not_stop_the_keys_renewals() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let store = Flaky::new(MemoryStore::new());
    store.set(Mode::Failing);
    let panicked = Arc::new(AtomicBool::new(false));
    let once = panicked.clone();
    let layer = FleetRateLimitLayer::builder(store.clone(), Quota::per_second(100), KEY)
        .store_timeout(Duration::from_millis(50))
        .probe_every(Duration::from_millis(100))
        .observer(move |event: &Event<'_>| {
            if matches!(event.kind, EventKind::StoreHealth { .. }) && !once.swap(true, SeqCst) {
                panic!("the observer panics at StoreHealth");
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    // The first call waits for the first renewal, which fails: the observer panics there.
    assert!(admitted(&mut service, "k").await, "the local limit's");
    assert!(panicked.load(SeqCst) && handle.degraded());
    let calls = handle.store_calls();
    store.set(Mode::Up);
    sleep(Duration::from_millis(100)).await;
    // Degraded, the probe is due: this call's probes the store, which answers.
    assert!(admitted(&mut service, "k").await);
    tokio::task::yield_now().await;
    assert!(
        !handle.degraded() && handle.store_calls() > calls,
        "the store, answering again, was not asked again: degraded {}, store calls {} (then {calls})",
        handle.degraded(),
        handle.store_calls()
    );
}

/// A store that takes 60 ms to be ready, and as long again to answer, with one admission.
#[derive(Default)]
struct Sluggish {
    ready: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Clone for Sluggish {
    fn clone(&self) -> Self {
        Sluggish::default()
    }
}

impl tower::Service<seawall::limit::fleet::Take> for Sluggish {
    type Response = seawall::limit::fleet::Grant;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let ready = self
            .ready
            .get_or_insert_with(|| Box::pin(sleep(Duration::from_millis(60))));
        std::future::Future::poll(ready.as_mut(), cx).map(Ok)
    }

    fn call(&mut self, _: seawall::limit::fleet::Take) -> Self::Future {
        self.ready = None;
        Box::pin(async {
            sleep(Duration::from_millis(60)).await;
            Ok(seawall::limit::fleet::Grant {
                granted: 1,
                wait: Duration::ZERO,
            })
        })
    }
}

/// The store timeout bounds a renewal whole: 60 ms waiting for the store's readiness and 60 ms
/// for its answer run out a store timeout of 100 ms, and the store is marked degraded then.
#[tokio::test(start_paused = true)]
async fn the_store_timeout_bounds_readiness_and_the_call_together() {
    let layer = FleetRateLimitLayer::builder(Sluggish::default(), Quota::per_second(100), KEY)
        .store_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    let start = Instant::now();
    assert!(admitted(&mut service, "k").await, "the local limit's");
    assert!(
        handle.degraded(),
        "a renewal took 120 ms with a store timeout of 100 ms"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// A renewal wakes only as many of the calls waiting for it as it brought admissions; the others
/// wait on for the next renewal, and every call goes through in the end.
#[tokio::test(start_paused = true)]
async fn a_renewal_wakes_only_the_waiters_it_has_admissions_for() {
    let layer =
        FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(100).burst(10), KEY)
            .lease(2, 2)
            .build()
            .unwrap();
    let mut service = layer.layer(service_fn(ok));
    let mut calls = Vec::new();
    for _ in 0..5 {
        let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(Req("k")));
        tokio_test::assert_pending!(call.poll(), "waits for the first lease");
        calls.push(call);
    }
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let woken = calls.iter().filter(|call| call.is_woken()).count();
    assert_eq!(woken, 2, "a lease of two woke {woken} waiters");
    let mut done = [false; 5];
    for _ in 0..16 {
        for (call, done) in calls.iter_mut().zip(&mut done) {
            if !*done && call.is_woken() {
                if let std::task::Poll::Ready(result) = call.poll() {
                    assert!(result.is_ok());
                    *done = true;
                }
            }
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(done, [true; 5], "every waiting call went through");
}
