//! Rate limiting: GCRA in paused time, waiting, run-time quotas, keys and their bounded table.

use seawall::core::{Event, EventKind, RejectReason};
use seawall::limit::error::RateLimited;
use seawall::limit::rate::{
    ConfigError, KeyedRateLimitLayer, ManualClock, Quota, QuotaError, RateLimitLayer,
};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A service that answers every request at once.
#[derive(Clone, Copy)]
struct Pass;

impl<R> Service<R> for Pass {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

fn ok_service() -> Pass {
    Pass
}

/// Sends one call: `Ok(())` if let through, `Err(retry_after)` if limited.
async fn send<S, R>(service: &mut S, req: R) -> Result<(), Duration>
where
    S: Service<R, Response = (), Error = BoxError>,
{
    match service.ready().await.unwrap().call(req).await {
        Ok(()) => Ok(()),
        Err(e) => Err(e
            .downcast_ref::<RateLimited>()
            .expect("a rate limit")
            .retry_after()),
    }
}

#[tokio::test(start_paused = true)]
async fn exactly_the_burst_passes_at_once_then_one_per_interval() {
    let mut service = RateLimitLayer::new(Quota::per_second(10).burst(3)).layer(ok_service());
    for _ in 0..3 {
        assert_eq!(send(&mut service, ()).await, Ok(()));
    }
    assert_eq!(send(&mut service, ()).await, Err(100 * MS));
    tokio::time::advance(60 * MS).await;
    assert_eq!(send(&mut service, ()).await, Err(40 * MS));
    tokio::time::advance(40 * MS).await;
    assert_eq!(send(&mut service, ()).await, Ok(()));
    assert_eq!(send(&mut service, ()).await, Err(100 * MS));

    // Offered far above the rate for ten seconds: one call per 100 ms gets through.
    let mut passed = 0;
    for _ in 0..10_000 {
        tokio::time::advance(MS).await;
        passed += send(&mut service, ()).await.is_ok() as u32;
    }
    assert_eq!(passed, 100);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_spell_refills_the_burst_and_no_more() {
    let layer = RateLimitLayer::new(Quota::per_second(10).burst(3));
    let handle = layer.handle();
    let mut service = layer.layer(ok_service());
    assert_eq!(handle.available(), 3);
    for _ in 0..3 {
        send(&mut service, ()).await.unwrap();
    }
    assert_eq!(handle.available(), 0);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(handle.available(), 3);
    for _ in 0..3 {
        send(&mut service, ()).await.unwrap();
    }
    assert!(send(&mut service, ()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_waits_exactly_for_the_reserved_slot() {
    let layer = RateLimitLayer::builder(Quota::per_second(10).burst(1))
        .max_wait(Duration::from_millis(250))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    let start = Instant::now();
    send(&mut service, ()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Three callers at once: the first two get the slots 100 and 200 ms on, and wait for them;
    // the third would wait 300 ms, more than allowed, and fails at once.
    let mut handles = Vec::new();
    for _ in 0..2 {
        let mut service = service.clone();
        handles.push(tokio::spawn(async move {
            send(&mut service, ()).await.unwrap();
            start.elapsed()
        }));
    }
    tokio::task::yield_now().await;
    let at = Instant::now();
    assert_eq!(send(&mut service, ()).await, Err(300 * MS));
    assert_eq!(at.elapsed(), Duration::ZERO, "a refusal does not wait");
    let mut waited = Vec::new();
    for handle in handles {
        waited.push(handle.await.unwrap());
    }
    waited.sort();
    assert_eq!(waited, [100 * MS, 200 * MS]);
}

#[tokio::test(start_paused = true)]
async fn every_service_of_a_layer_shares_the_limit_and_the_quota_changes_at_run_time() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = RateLimitLayer::builder(Quota::per_second(2))
        .name("api")
        .observer(move |e: &Event<'_>| {
            if !matches!(e.kind, EventKind::Finished { .. }) {
                sink.lock().unwrap().push(e.kind)
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut a = layer.layer(ok_service());
    let mut b = layer.clone().layer(ok_service());
    let mut c = a.clone();
    assert!(send(&mut a, ()).await.is_ok());
    assert!(send(&mut b, ()).await.is_ok());
    assert_eq!(send(&mut c, ()).await, Err(500 * MS));
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::Permitted,
            EventKind::Permitted,
            EventKind::Rejected {
                reason: RejectReason::RateLimited
            }
        ]
    );

    assert_eq!(handle.quota(), Quota::per_second(2));
    handle.set_quota(Quota::per_second(100).burst(10)).unwrap();
    assert_eq!(handle.quota().burst_size(), 10);
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut passed = 0;
    for _ in 0..50 {
        passed += send(&mut c, ()).await.is_ok() as u32;
    }
    assert_eq!(passed, 10);
    assert_eq!(
        handle.set_quota(Quota::per_second(0)),
        Err(ConfigError::Quota(QuotaError::Count))
    );
}

#[test]
fn bad_quotas_are_refused_and_the_error_says_when_to_come_back() {
    assert_eq!(
        RateLimitLayer::builder(Quota::per_second(5).burst(0))
            .build()
            .unwrap_err(),
        ConfigError::Quota(QuotaError::Burst)
    );
    let err = KeyedRateLimitLayer::builder(Quota::per_second(5), |_: &()| Some(1))
        .max_keys(0)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::MaxKeys);
    assert_eq!(
        err.to_string(),
        "a keyed rate limiter needs room for at least one key"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_rounds_up_to_whole_seconds() {
    let mut service = RateLimitLayer::new(Quota::per_minute(1)).layer(ok_service());
    send(&mut service, ()).await.unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    let err = ServiceExt::<()>::ready(&mut service)
        .await
        .unwrap()
        .call(())
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_millis(59_500));
    assert_eq!(limited.retry_after_secs(), 60);
    assert_eq!(err.to_string(), "rate limited; retry after 59.5s");
}

/// Requests keyed by their first field; `None` is not limited.
type Keyed = (Option<u32>, ());

fn by_first(req: &Keyed) -> Option<u32> {
    req.0
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_limit_and_unkeyed_calls_pass() {
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(1), by_first)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(ok_service());
    for key in 0..100 {
        assert_eq!(send(&mut service, (Some(key), ())).await, Ok(()));
    }
    for key in 0..100 {
        assert_eq!(
            send(&mut service, (Some(key), ())).await,
            Err(Duration::from_secs(1))
        );
    }
    for _ in 0..100 {
        assert_eq!(send(&mut service, (None, ())).await, Ok(()));
    }
    assert_eq!(handle.keys(), 100);
    assert_eq!(handle.available(&7u32), 0);
    assert_eq!(handle.available(&1000u32), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send(&mut service, (Some(7), ())).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_keyed_call_can_wait_for_its_slot() {
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), by_first)
        .max_wait(Duration::from_millis(150))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    let start = Instant::now();
    send(&mut service, (Some(1), ())).await.unwrap();
    send(&mut service, (Some(1), ())).await.unwrap();
    assert_eq!(start.elapsed(), 100 * MS);
    // Another key does not wait.
    send(&mut service, (Some(2), ())).await.unwrap();
    assert_eq!(start.elapsed(), 100 * MS);
    // Key 1 now needs 100 ms, then 200: the second is more than allowed.
    let waiting = ServiceExt::<Keyed>::ready(&mut service)
        .await
        .unwrap()
        .call((Some(1), ()));
    assert_eq!(send(&mut service, (Some(1), ())).await, Err(200 * MS));
    waiting.await.unwrap();
    assert_eq!(start.elapsed(), 200 * MS);
}

#[tokio::test(start_paused = true)]
async fn keyed_events_carry_the_key() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(1), by_first)
        .name("per-client")
        .observer(move |e: &Event<'_>| {
            let key = e.key.map(|k| format!("{k:?}"));
            sink.lock()
                .unwrap()
                .push((e.layer.to_string(), e.kind, key))
        })
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    send(&mut service, (Some(1), ())).await.unwrap();
    send(&mut service, (Some(1), ())).await.unwrap_err();
    send(&mut service, (Some(2), ())).await.unwrap();
    let name = || "per-client".to_string();
    assert_eq!(
        *events.lock().unwrap(),
        [
            (name(), EventKind::Permitted, Some("1".to_string())),
            (
                name(),
                EventKind::Rejected {
                    reason: RejectReason::RateLimited
                },
                Some("1".to_string())
            ),
            (name(), EventKind::Permitted, Some("2".to_string())),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn idle_keys_make_room_first_and_an_evicted_key_starts_fresh() {
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let sink = evicted.clone();
    let layer = KeyedRateLimitLayer::builder(Quota::per_minute(1), by_first)
        .max_keys(8)
        .observer(move |e: &Event<'_>| {
            if let EventKind::KeyEvicted { idle } = e.kind {
                sink.lock().unwrap().push(idle);
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(ok_service());
    for key in 0..8 {
        send(&mut service, (Some(key), ())).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(handle.keys(), 8);
    // The table is full and no key is idle: key 8 takes the slot of the key closest to idle,
    // key 0 (first seen), which then starts afresh.
    send(&mut service, (Some(8), ())).await.unwrap();
    assert_eq!(
        send(&mut service, (Some(1), ())).await,
        Err(Duration::from_secs(53))
    );
    assert_eq!(*evicted.lock().unwrap(), [false]);
    assert_eq!(send(&mut service, (Some(0), ())).await, Ok(()));
    assert_eq!(handle.keys(), 8);
    // A minute on every key is idle: new keys take their slots and lose nothing.
    tokio::time::advance(Duration::from_secs(60)).await;
    for key in 100..104 {
        send(&mut service, (Some(key), ())).await.unwrap();
    }
    assert_eq!(evicted.lock().unwrap()[2..], [true, true, true, true]);
}

#[tokio::test(start_paused = true)]
async fn a_million_distinct_keys_stay_within_the_table() {
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(5), |k: &u64| Some(*k))
        .max_keys(10_000)
        .build()
        .unwrap();
    let handle = layer.handle();
    let memory = handle.memory();
    assert!(memory <= 10_000 * 16 + 256 * 16, "{memory}");
    let mut service = layer.layer(service_fn(|_: u64| async { Ok::<_, Infallible>(()) }));
    for key in 0..1_000_000u64 {
        // Every key is new and has its full burst.
        service.ready().await.unwrap().call(key).await.unwrap();
    }
    assert_eq!(handle.keys(), 10_000);
    assert_eq!(handle.memory(), memory);
}

#[test]
fn a_manual_clock_drives_the_limit() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.available(), 1);
    let mut service = layer.layer(ok_service());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        send(&mut service, ()).await.unwrap();
        assert!(send(&mut service, ()).await.is_err());
        clock.advance(Duration::from_secs(1));
        send(&mut service, ()).await.unwrap();
    });
}

#[tokio::test(start_paused = true)]
async fn a_slot_reserved_but_never_used_goes_back() {
    let layer = RateLimitLayer::new(Quota::per_second(1));
    let handle = layer.handle();
    // Ready, then dropped without a call: as when a layer above refuses the request, or axum
    // drops its per-request clone.
    let mut service = layer.layer(ok_service());
    ServiceExt::<()>::ready(&mut service).await.unwrap();
    assert_eq!(handle.available(), 0);
    drop(service);
    assert_eq!(handle.available(), 1);
    // A call made and then dropped still counts: it may have reached the service.
    let mut service = layer.layer(ok_service());
    let call = ServiceExt::<()>::ready(&mut service)
        .await
        .unwrap()
        .call(());
    drop(call);
    assert_eq!(handle.available(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_listening_observer_hears_calls_finish_and_drop_though_the_limiter_does_not_follow_them()
{
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = RateLimitLayer::builder(Quota::per_second(10).burst(2))
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    send(&mut service, ()).await.unwrap();
    let call = ServiceExt::<()>::ready(&mut service)
        .await
        .unwrap()
        .call(());
    drop(call);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0], EventKind::Permitted);
    assert!(matches!(events[1], EventKind::Finished { .. }));
    assert_eq!(events[2], EventKind::Permitted);
    assert_eq!(events[3], EventKind::Cancelled);
}

/// The counter clock, in real time: no sleep, so only what holds at once is checked.
#[cfg(feature = "quanta")]
#[test]
fn on_the_time_stamp_counter_the_burst_passes_then_the_next_call_is_told_when() {
    use seawall::limit::rate::{Clock, QuantaClock};

    let clock = QuantaClock::new();
    let mut last = clock.now();
    for _ in 0..10_000 {
        let now = clock.now();
        assert!(now >= last, "{now} after {last} on one thread");
        last = now;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut service = RateLimitLayer::builder(Quota::per_hour(1).burst(3))
        .clock(clock)
        .build()
        .unwrap()
        .layer(ok_service());
    runtime.block_on(async {
        for _ in 0..3 {
            send(&mut service, ()).await.unwrap();
        }
        let wait = send(&mut service, ()).await.unwrap_err();
        // One interval of the quota (an hour), less the moments since the burst began.
        assert!(wait <= Duration::from_secs(3600), "{wait:?}");
        assert!(wait > Duration::from_secs(3590), "{wait:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Callers that give up while they wait for a slot (issue 19, defect 1).

/// A service that records when each call reaches it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Instant>>>);

impl<R> Service<R> for Recorder {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        self.0.lock().unwrap().push(Instant::now());
        std::future::ready(Ok(()))
    }
}

impl Recorder {
    /// How many calls reached the service between `from` and `until`, and the most in any one
    /// second.
    fn seen(&self, from: Instant, until: Instant) -> (usize, usize) {
        let mut times: Vec<Instant> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| (from..until).contains(t))
            .collect();
        times.sort();
        let mut most = 0;
        let mut first = 0;
        for (last, t) in times.iter().enumerate() {
            while *t - times[first] >= Duration::from_secs(1) {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        (times.len(), most)
    }
}

/// Offers 400 calls a second for five seconds, each on its own clone of `service` (as axum
/// does), each caller giving up after `patience` if given. Returns how many reached `backend` in
/// those five seconds, and the most in any one second.
async fn surge<S, R>(
    service: S,
    mut request: impl FnMut() -> R,
    backend: &Recorder,
    patience: Option<Duration>,
) -> (usize, usize)
where
    S: Service<R, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    let start = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..2000 {
        let call = service.clone().oneshot(request());
        callers.push(tokio::spawn(async move {
            match patience {
                Some(patience) => drop(tokio::time::timeout(patience, call).await),
                None => drop(call.await),
            }
        }));
        tokio::time::sleep(Duration::from_micros(2500)).await;
    }
    for caller in callers {
        caller.await.unwrap();
    }
    backend.seen(start, start + Duration::from_secs(5))
}

/// 100 a second, bursts of 10, waits of up to a second: what every surge test limits to.
const SURGE_QUOTA: u32 = 100;
const SURGE_BURST: u32 = 10;

fn assert_surge_served((total, most): (usize, usize)) {
    let quota = 5 * SURGE_QUOTA as usize;
    let bound = (SURGE_QUOTA + SURGE_BURST) as usize;
    assert!(
        total * 10 >= quota * 9,
        "{total} calls in 5 s: less than 90% of the quota ({quota})"
    );
    assert!(
        total <= quota + SURGE_BURST as usize,
        "{total} calls in 5 s: more than the quota plus the burst"
    );
    assert!(
        most <= bound,
        "{most} calls in one second: more than the quota plus the burst ({bound})"
    );
}

#[tokio::test(start_paused = true)]
async fn under_a_surge_a_timeout_above_a_waiting_keyed_limit_lets_the_quota_through() {
    let backend = Recorder::default();
    let limit =
        KeyedRateLimitLayer::builder(Quota::per_second(SURGE_QUOTA).burst(SURGE_BURST), by_first)
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(200 * MS))
        .layer(limit)
        .service(backend.clone());
    assert_surge_served(surge(service, || (Some(7), ()), &backend, None).await);
}

#[tokio::test(start_paused = true)]
async fn under_a_surge_callers_that_give_up_waiting_leave_the_quota_to_others() {
    let backend = Recorder::default();
    let limit = RateLimitLayer::builder(Quota::per_second(SURGE_QUOTA).burst(SURGE_BURST))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(200 * MS))
        .layer(limit)
        .service(backend.clone());
    assert_surge_served(surge(service, || (), &backend, Some(200 * MS)).await);
}

/// A regression guard, not a test of abandoned waits: with seawall's `TimeoutLayer` above a
/// waiting global limiter, the quota still gets through a surge, and no more. That timeout passes
/// `poll_ready` through and starts its timer only in `call`, after the limiter's wait, so it
/// never cuts a wait short; callers that give up while they wait are
/// `under_a_surge_callers_that_give_up_waiting_leave_the_quota_to_others`.
#[tokio::test(start_paused = true)]
async fn under_a_surge_a_waiting_global_limit_below_a_timeout_still_lets_the_quota_through() {
    let backend = Recorder::default();
    let limit = RateLimitLayer::builder(Quota::per_second(SURGE_QUOTA).burst(SURGE_BURST))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(200 * MS))
        .layer(limit)
        .service(backend.clone());
    assert_surge_served(surge(service, || (), &backend, None).await);
}

#[tokio::test(start_paused = true)]
async fn under_a_surge_a_keyed_limit_that_honours_deadlines_refuses_at_once_what_would_come_too_late(
) {
    let backend = Recorder::default();
    let limit = KeyedRateLimitLayer::builder(
        Quota::per_second(SURGE_QUOTA).burst(SURGE_BURST),
        |_: &http::Request<()>| Some("tenant"),
    )
    .max_wait(Duration::from_secs(1))
    .honour_deadlines()
    .build()
    .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(200 * MS).propagate())
        .layer(limit)
        .service(backend.clone());
    assert_surge_served(surge(service, || http::Request::new(()), &backend, None).await);
}

#[tokio::test(start_paused = true)]
async fn a_keyed_call_is_never_given_a_slot_after_its_deadline() {
    let layer =
        KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), |_: &http::Request<()>| {
            Some(1)
        })
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let mut service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(150 * MS).propagate())
        .layer(layer)
        .service(ok_service());
    let start = Instant::now();
    send(&mut service, http::Request::new(())).await.unwrap();
    // The next slot, 100 ms on, is within the deadline: the call waits for it.
    let waiting = tokio::spawn({
        let mut service = service.clone();
        async move { send(&mut service, http::Request::new(())).await }
    });
    tokio::task::yield_now().await;
    // The one after, 200 ms on, is not: refused at once, told when to come back.
    assert_eq!(
        send(&mut service, http::Request::new(())).await,
        Err(200 * MS)
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(waiting.await.unwrap(), Ok(()));
    assert_eq!(start.elapsed(), 100 * MS);
    // A request without a deadline may still wait up to the maximum.
    let mut bare =
        KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), |_: &http::Request<()>| {
            Some(1)
        })
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap()
        .layer(ok_service());
    send(&mut bare, http::Request::new(())).await.unwrap();
    send(&mut bare, http::Request::new(())).await.unwrap();
    assert_eq!(start.elapsed(), 200 * MS);
}

/// A caller of `layer` on a clone of its own, in a task: when it got through, from `start`.
fn waiter<L, R>(layer: &L, req: R, start: Instant) -> tokio::task::JoinHandle<Duration>
where
    L: Layer<Pass>,
    L::Service: Service<R, Response = (), Error = BoxError> + Send + 'static,
    <L::Service as Service<R>>::Future: Send,
    R: Send + 'static,
{
    let mut service = layer.layer(ok_service());
    tokio::spawn(async move {
        send(&mut service, req).await.unwrap();
        start.elapsed()
    })
}

/// Lets the tasks spawned so far run until they wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_waiting_leaves_its_slot_to_the_next() {
    let layer = RateLimitLayer::builder(Quota::per_second(10).burst(1))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    send(&mut layer.layer(ok_service()), ()).await.unwrap();
    // Two callers wait, for the slots 100 and 200 ms on; the first gives up.
    let first = waiter(&layer, (), start);
    settle().await;
    let second = waiter(&layer, (), start);
    settle().await;
    first.abort();
    settle().await;
    // The next caller takes the slot it left, not one after the second's.
    let third = waiter(&layer, (), start);
    settle().await;
    // And no more than the quota: the one after that waits for the slot 300 ms on.
    let fourth = waiter(&layer, (), start);
    settle().await;
    assert_eq!(third.await.unwrap(), 100 * MS);
    assert_eq!(second.await.unwrap(), 200 * MS);
    assert_eq!(fourth.await.unwrap(), 300 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_keyed_caller_that_stops_waiting_leaves_its_slot_to_the_next() {
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), by_first)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    send(&mut layer.layer(ok_service()), (Some(1), ()))
        .await
        .unwrap();
    let first = waiter(&layer, (Some(1), ()), start);
    settle().await;
    let second = waiter(&layer, (Some(1), ()), start);
    settle().await;
    first.abort();
    settle().await;
    // Another key's callers cannot have it.
    let other = waiter(&layer, (Some(2), ()), start);
    let third = waiter(&layer, (Some(1), ()), start);
    settle().await;
    let fourth = waiter(&layer, (Some(1), ()), start);
    settle().await;
    assert_eq!(other.await.unwrap(), Duration::ZERO);
    assert_eq!(third.await.unwrap(), 100 * MS);
    assert_eq!(second.await.unwrap(), 200 * MS);
    assert_eq!(fourth.await.unwrap(), 300 * MS);
    // The last slot reserved goes straight back to the key when its caller leaves.
    let fifth = waiter(&layer, (Some(1), ()), start);
    settle().await;
    fifth.abort();
    settle().await;
    assert_eq!(
        waiter(&layer, (Some(1), ()), start).await.unwrap(),
        400 * MS
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_left_unused_behind_later_reservations_is_not_given_twice() {
    let layer = RateLimitLayer::builder(Quota::per_second(1).burst(1))
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = Instant::now();
    // A service made ready and kept: the slot now is its.
    let mut idle = layer.layer(ok_service());
    ServiceExt::<()>::ready(&mut idle).await.unwrap();
    let first = waiter(&layer, (), start);
    settle().await;
    let second = waiter(&layer, (), start);
    settle().await;
    // Dropped unused after two slots were reserved behind its own: giving it back by moving the
    // limit back one interval would hand the next caller the slot 2 s on, the second's.
    drop(idle);
    let third = waiter(&layer, (), start);
    settle().await;
    assert_eq!(first.await.unwrap(), Duration::from_secs(1));
    assert_eq!(second.await.unwrap(), Duration::from_secs(2));
    assert_eq!(third.await.unwrap(), Duration::from_secs(3));
}

#[test]
fn absurd_settings_are_typed_errors_never_panics() {
    use QuotaError::{Burst, Count, Interval, Period, TooLong};
    let quotas = [
        (Quota::per_second(0), Count),
        (Quota::new(1, Duration::ZERO), Period),
        (Quota::per_second(1).burst(0), Burst),
        // Ten calls in five nanoseconds: the interval would round to nothing.
        (Quota::new(10, Duration::from_nanos(5)), Interval),
        (Quota::new(1, Duration::MAX), TooLong),
        // An hour between calls, and a burst of four billion of them.
        (Quota::per_hour(1).burst(u32::MAX), TooLong),
    ];
    for (quota, error) in quotas {
        let error = Err(ConfigError::Quota(error));
        assert_eq!(RateLimitLayer::builder(quota).build().map(drop), error);
        let keyed = KeyedRateLimitLayer::builder(quota, |_: &()| Some(1));
        assert_eq!(keyed.build().map(drop), error);
        let handle = RateLimitLayer::new(Quota::per_second(1)).handle();
        assert_eq!(handle.set_quota(quota), error);
        assert!(std::panic::catch_unwind(|| RateLimitLayer::new(quota)).is_err());
    }
    let quota = Quota::per_second(1);
    assert_eq!(
        RateLimitLayer::builder(quota)
            .max_wait(Duration::MAX)
            .build()
            .map(drop),
        Err(ConfigError::MaxWait)
    );
    let keyed = || KeyedRateLimitLayer::builder(quota, |_: &()| Some(1));
    assert_eq!(
        keyed()
            .max_wait(Duration::from_secs(1 << 40))
            .build()
            .map(drop),
        Err(ConfigError::MaxWait)
    );
    assert_eq!(
        keyed().max_keys(0).build().map(drop),
        Err(ConfigError::MaxKeys)
    );
    assert_eq!(
        keyed().max_keys(usize::MAX).build().map(drop),
        Err(ConfigError::TooManyKeys)
    );
    // At the bounds, they build.
    assert!(
        RateLimitLayer::builder(Quota::new(10, Duration::from_nanos(10)))
            .max_wait(Duration::from_secs(86_400 * 365))
            .build()
            .is_ok()
    );
    assert_eq!(
        ConfigError::Quota(Interval).to_string(),
        "a quota's period must be at least one nanosecond per call"
    );
    assert_eq!(
        ConfigError::MaxWait.to_string(),
        "a rate limiter's maximum wait must be at most about nine years"
    );
}

/// An observer that panics at `Permitted` on a call that waits for its slot: the slot the call
/// reserved is given back as the panic unwinds, so the next caller goes at 100 ms, in it, not
/// at 200 ms, after it.
#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_a_keyed_wait_leaves_the_slot_to_the_next() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = armed.clone();
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), by_first)
        .max_wait(Duration::from_secs(1))
        .observer(move |e: &Event<'_>| {
            if e.kind == EventKind::Permitted && trigger.load(std::sync::atomic::Ordering::SeqCst) {
                panic!("observer panics at Permitted");
            }
        })
        .build()
        .unwrap();
    let start = Instant::now();
    send(&mut layer.layer(ok_service()), (Some(1), ()))
        .await
        .unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut service = layer.layer(ok_service());
    ServiceExt::<Keyed>::ready(&mut service).await.unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(service.call((Some(1), ())));
    }));
    assert!(panicked.is_err(), "the observer did not panic");
    armed.store(false, std::sync::atomic::Ordering::SeqCst);
    let next = waiter(&layer, (Some(1), ()), start);
    assert_eq!(next.await.unwrap(), 100 * MS);
}

/// A keyed call whose slot would come exactly at its deadline is refused at once: at its
/// deadline it has no time left (a deadline at or before now has passed).
#[tokio::test(start_paused = true)]
async fn a_keyed_call_is_never_given_a_slot_at_its_deadline() {
    let layer =
        KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), |_: &http::Request<()>| {
            Some(1)
        })
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let mut service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(100 * MS).propagate())
        .layer(layer)
        .service(ok_service());
    let start = Instant::now();
    send(&mut service, http::Request::new(())).await.unwrap();
    // The next slot is due 100 ms on, exactly when the call's deadline passes.
    let result = service
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await;
    let err = result.expect_err("a call let through at its deadline");
    let limited = err
        .downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("not refused at once by the limit: {err}"));
    assert_eq!(limited.retry_after(), 100 * MS);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// A keyed call is reported `Permitted` when its slot is reserved; if it is dropped while it
/// waits, it is reported `Cancelled` too (with its key), so that admissions are not overcounted.
/// A call that waits to the end is not.
#[tokio::test(start_paused = true)]
async fn a_keyed_wait_dropped_before_its_slot_is_reported_cancelled() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = KeyedRateLimitLayer::builder(Quota::per_second(10).burst(1), by_first)
        .max_wait(Duration::from_secs(1))
        .observer(move |e: &Event<'_>| {
            let key = e.key.map(|k| format!("{k:?}"));
            sink.lock().unwrap().push((e.kind, key))
        })
        .build()
        .unwrap();
    let start = Instant::now();
    send(&mut layer.layer(ok_service()), (Some(1), ()))
        .await
        .unwrap();
    let abandoned = waiter(&layer, (Some(1), ()), start);
    settle().await;
    abandoned.abort();
    settle().await;
    assert_eq!(
        waiter(&layer, (Some(1), ()), start).await.unwrap(),
        100 * MS
    );
    let key = || Some("1".to_string());
    assert_eq!(
        *events.lock().unwrap(),
        [
            (EventKind::Permitted, key()),
            (EventKind::Permitted, key()),
            (EventKind::Cancelled, key()),
            (EventKind::Permitted, key()),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The global limiter that honours deadlines (issue 19, defect 1): it decides in `call`.

/// A request whose deadline is `left` from now.
fn due_in(left: Duration) -> http::Request<()> {
    use seawall::core::{Deadline, DeadlineCarrier};
    let mut req = http::Request::new(());
    req.set_deadline(Deadline::after(left));
    req
}

#[tokio::test(start_paused = true)]
async fn a_global_call_whose_deadline_comes_before_its_slot_is_refused_at_once_and_takes_nothing() {
    let backend = Recorder::default();
    // Two a second, burst 1: after one call, the next slot is 500 ms on.
    let layer = RateLimitLayer::builder(Quota::per_second(2).burst(1))
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let mut service = layer.layer(backend.clone());
    let start = Instant::now();
    send(&mut service, due_in(Duration::from_secs(1)))
        .await
        .unwrap();
    // The next slot is 500 ms on, after this call's deadline: refused at once, told when.
    assert_eq!(send(&mut service, due_in(100 * MS)).await, Err(500 * MS));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        backend.0.lock().unwrap().len(),
        1,
        "the refused call reached the service"
    );
    // It took nothing: the next caller whose deadline allows the wait goes ahead at 500 ms, in
    // the slot the refused one did not take, and reaches the service then.
    let next = waiter(&layer, due_in(600 * MS), start);
    assert_eq!(next.await.unwrap(), 500 * MS);
    send(&mut service, due_in(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        *backend.0.lock().unwrap(),
        [start, start + Duration::from_secs(1)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_global_call_waits_for_its_slot_in_its_future_and_gives_it_back_if_dropped() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = RateLimitLayer::builder(Quota::per_second(2).burst(1))
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    let start = Instant::now();
    send(&mut service, due_in(Duration::from_secs(1)))
        .await
        .unwrap();
    // Over the quota, the service is still ready at once: the call waits, in its response
    // future, for the slot 500 ms on.
    let mut cx = tokio_test::task::spawn(());
    let ready = cx.enter(|cx, _| Service::<http::Request<()>>::poll_ready(&mut service, cx));
    assert!(
        matches!(ready, std::task::Poll::Ready(Ok(()))),
        "ready at once"
    );
    let mut first = tokio_test::task::spawn(service.call(due_in(Duration::from_secs(2))));
    assert!(first.poll().is_pending());
    // A second waits for the slot after, 1 s on; then the first is dropped while it waits.
    let second = waiter(&layer, due_in(Duration::from_secs(2)), start);
    settle().await;
    drop(first);
    // The slot it left goes to the next caller that can wait until then, at 500 ms.
    let third = waiter(&layer, due_in(600 * MS), start);
    settle().await;
    assert_eq!(third.await.unwrap(), 500 * MS);
    assert_eq!(second.await.unwrap(), Duration::from_secs(1));
    // The dropped wait was reported permitted, then cancelled.
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::Permitted,
            EventKind::Permitted,
            EventKind::Permitted,
            EventKind::Cancelled,
            EventKind::Permitted,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn under_a_surge_a_global_limit_that_honours_deadlines_refuses_at_once_what_would_come_too_late(
) {
    let backend = Recorder::default();
    let limit = RateLimitLayer::builder(Quota::per_second(SURGE_QUOTA).burst(SURGE_BURST))
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(200 * MS).propagate())
        .layer(limit)
        .service(backend.clone());
    assert_surge_served(surge(service, || http::Request::new(()), &backend, None).await);
}

// ---------------------------------------------------------------------------------------------
// The limiters that decide in `call`, over a service whose readiness reserves (issue 19 review,
// finding 1), with a panicking observer (finding 6), and with requests out of time (finding 7).

/// Over a bulkhead of one, `limit` serves a sequential client (ready, call, await; again): a
/// call that waits for its slot is made on the service made ready for it, holding the
/// bulkhead's slot, and a call refused gives that slot back; between calls nothing is held.
async fn sequential_over_a_bulkhead_of_one<L, R>(
    limit: L,
    queue: usize,
    mut request: impl FnMut() -> R,
) -> Vec<Result<(), Duration>>
where
    L: Layer<seawall::bulkhead::BulkheadService<Pass>>,
    L::Service: Service<R, Response = (), Error = BoxError>,
{
    let bulkhead = seawall::bulkhead::BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(queue)
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let mut service = limit.layer(bulkhead.layer(ok_service()));
    let mut answers = Vec::new();
    for _ in 0..4 {
        let call = send(&mut service, request());
        let answer = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("every call completes");
        answers.push(answer);
        assert_eq!(
            (handle.in_flight(), handle.queued()),
            (0, 0),
            "between calls, nothing is held beneath"
        );
    }
    drop(service);
    assert_eq!(handle.in_flight(), 0);
    answers
}

#[tokio::test(start_paused = true)]
async fn a_global_limit_honouring_deadlines_makes_a_waiting_call_on_the_service_made_ready_for_it()
{
    // Two a second, burst 1: the second call waits 500 ms, the third 500 ms more; the fourth
    // can wait only 400 ms, and is refused.
    let deadlines = [1000, 1000, 1000, 400];
    for queue in [0, 4] {
        let limit = RateLimitLayer::builder(Quota::per_second(2).burst(1))
            .max_wait(Duration::from_secs(1))
            .honour_deadlines()
            .build()
            .unwrap();
        let start = Instant::now();
        let mut left = deadlines.iter();
        let answers =
            sequential_over_a_bulkhead_of_one(limit, queue, || due_in(*left.next().unwrap() * MS))
                .await;
        assert_eq!(
            answers,
            [Ok(()), Ok(()), Ok(()), Err(500 * MS)],
            "queue {queue}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_keyed_limit_makes_a_waiting_call_on_the_service_made_ready_for_it() {
    for queue in [0, 4] {
        let limit =
            KeyedRateLimitLayer::builder(Quota::per_second(2).burst(1), |_: &http::Request<()>| {
                Some(1)
            })
            .max_wait(Duration::from_millis(600))
            .build()
            .unwrap();
        let answers =
            sequential_over_a_bulkhead_of_one(limit, queue, || http::Request::new(())).await;
        // At 0, at 500 ms (waited), at 1 s (waited); then the next is 500 ms more: too far.
        assert_eq!(answers[..3], [Ok(()), Ok(()), Ok(())], "queue {queue}");
        assert!(answers[3].is_ok(), "queue {queue}: {:?}", answers[3]);
        // And refused calls give back what readiness reserved.
        let limit =
            KeyedRateLimitLayer::builder(Quota::per_second(2).burst(1), |_: &http::Request<()>| {
                Some(1)
            })
            .build()
            .unwrap();
        let answers =
            sequential_over_a_bulkhead_of_one(limit, queue, || http::Request::new(())).await;
        assert_eq!(
            answers,
            [Ok(()), Err(500 * MS), Err(500 * MS), Err(500 * MS)]
        );
    }
}

/// A service whose readiness a test switches; its clones share the switch.
#[derive(Clone)]
struct Switch(Arc<std::sync::atomic::AtomicBool>);

impl<R> Service<R> for Switch {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: R) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_once_its_slot_came_but_before_the_service_was_ready_gives_the_slot_back() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = RateLimitLayer::builder(Quota::per_second(2).burst(1))
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let mut service = layer.layer(Switch(ready.clone()));
    let start = Instant::now();
    ServiceExt::<http::Request<()>>::ready(&mut service)
        .await
        .unwrap()
        .call(due_in(Duration::from_secs(5)))
        .await
        .unwrap();
    // The next call waits for its slot, 500 ms on; by then the service beneath is not ready.
    ServiceExt::<http::Request<()>>::ready(&mut service)
        .await
        .unwrap();
    let mut waiting = tokio_test::task::spawn(service.call(due_in(Duration::from_secs(5))));
    assert!(waiting.poll().is_pending());
    ready.store(false, SeqCst);
    tokio::time::advance(500 * MS).await;
    assert!(waiting.poll().is_pending(), "waiting for the service");
    // Dropped then, the call was never made: its slot goes back, and it is reported cancelled.
    drop(waiting);
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::Permitted,
            EventKind::Permitted,
            EventKind::Cancelled
        ]
    );
    // The slot it left is the next caller's, now, not 500 ms on.
    ready.store(true, SeqCst);
    let mut next = layer.layer(Switch(ready.clone()));
    ServiceExt::<http::Request<()>>::ready(&mut next)
        .await
        .unwrap()
        .call(due_in(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 500 * MS);
}

/// An observer that panics at `Permitted`.
fn panics_at_permitted(e: &Event<'_>) {
    if matches!(e.kind, EventKind::Permitted) {
        panic!("observer panics at Permitted");
    }
}

#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_permitted_loses_no_slot_of_a_limiter_deciding_in_call() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    fn call_panics<S: Service<http::Request<()>>>(service: &mut S) {
        let call = catch_unwind(AssertUnwindSafe(|| {
            drop(service.call(due_in(Duration::from_secs(1))))
        }));
        assert!(call.is_err(), "the observer panicked");
    }
    // The global limiter, deciding in `poll_ready` and (honouring deadlines) in `call`.
    let builder = || RateLimitLayer::builder(Quota::per_second(1).burst(5));
    let layer = builder().observer(panics_at_permitted).build().unwrap();
    let mut service = layer.layer(ok_service());
    ServiceExt::<http::Request<()>>::ready(&mut service)
        .await
        .unwrap();
    call_panics(&mut service);
    drop(service);
    assert_eq!(layer.handle().available(), 5, "in poll_ready");
    let layer = builder()
        .honour_deadlines()
        .observer(panics_at_permitted)
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    ServiceExt::<http::Request<()>>::ready(&mut service)
        .await
        .unwrap();
    call_panics(&mut service);
    assert_eq!(layer.handle().available(), 5, "in call");
    // The keyed limiter.
    let layer =
        KeyedRateLimitLayer::builder(Quota::per_second(1).burst(5), |_: &http::Request<()>| {
            Some(1)
        })
        .observer(panics_at_permitted)
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    ServiceExt::<http::Request<()>>::ready(&mut service)
        .await
        .unwrap();
    call_panics(&mut service);
    assert_eq!(layer.handle().available(&1), 5, "keyed");
}

#[tokio::test(start_paused = true)]
async fn an_expired_request_is_refused_by_a_limiter_that_honours_deadlines_taking_nothing() {
    let expired = || {
        let req = due_in(Duration::ZERO);
        assert!(seawall::core::DeadlineCarrier::deadline(&req)
            .unwrap()
            .is_expired());
        req
    };
    // The global limiter, with room now: refused, told it could come back at once.
    let backend = Recorder::default();
    let layer = RateLimitLayer::builder(Quota::per_second(1).burst(5))
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let mut service = layer.layer(backend.clone());
    assert_eq!(send(&mut service, expired()).await, Err(Duration::ZERO));
    assert_eq!(layer.handle().available(), 5);
    // With no room now, and a slot given back due now that it could otherwise take.
    for _ in 0..5 {
        send(&mut service, due_in(Duration::from_secs(5)))
            .await
            .unwrap();
    }
    assert_eq!(
        send(&mut service, expired()).await,
        Err(Duration::from_secs(1))
    );
    assert_eq!(
        backend.0.lock().unwrap().len(),
        5,
        "the expired calls reached no service"
    );
    // The keyed limiter honouring deadlines: the same, and no key is added for it.
    let layer =
        KeyedRateLimitLayer::builder(Quota::per_second(1).burst(5), |_: &http::Request<()>| {
            Some(1)
        })
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let mut service = layer.layer(backend.clone());
    assert_eq!(send(&mut service, expired()).await, Err(Duration::ZERO));
    assert_eq!(layer.handle().keys(), 0);
    assert_eq!(layer.handle().available(&1), 5);
    for _ in 0..5 {
        send(&mut service, due_in(Duration::from_secs(5)))
            .await
            .unwrap();
    }
    assert_eq!(
        send(&mut service, expired()).await,
        Err(Duration::from_secs(1))
    );
    assert_eq!(backend.0.lock().unwrap().len(), 10);
}

/// A call that waits for its rate slot does not hold what its readiness reserved beneath (a
/// bulkhead's slot) through the wait: another key's call, with quota free, goes through at once
/// rather than queue behind a call that only sleeps.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_holds_nothing_beneath_so_other_keys_go_through() {
    let bulkhead = seawall::bulkhead::BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4)
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let limit =
        KeyedRateLimitLayer::builder(Quota::per_second(1).burst(1), |r: &http::Request<u8>| {
            Some(*r.body())
        })
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut a = limit.layer(bulkhead.layer(ok_service()));
    let mut b = a.clone();
    assert_eq!(send(&mut a, http::Request::new(1u8)).await, Ok(()));
    // Key 1's second call waits about a second for its slot.
    let waiting = tokio::spawn(async move { send(&mut a, http::Request::new(1u8)).await });
    tokio::time::sleep(10 * MS).await;
    assert_eq!(
        handle.in_flight(),
        0,
        "nothing is held beneath while the call waits"
    );
    let start = Instant::now();
    assert_eq!(send(&mut b, http::Request::new(2u8)).await, Ok(()));
    assert!(
        start.elapsed() < 10 * MS,
        "key 2 waited {:?} behind key 1's wait",
        start.elapsed()
    );
    // Key 1's call is made when its slot comes, on a clone made ready then.
    assert_eq!(waiting.await.unwrap(), Ok(()));
    assert_eq!(handle.in_flight(), 0);
}
