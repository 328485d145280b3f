//! The closed breaker's call path allocates nothing: proved with a counting global allocator.

#[path = "support/mod.rs"]
mod support;

use seawall::circuit_breaker::CircuitBreakerLayer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{Layer, Service};

struct Counting;

// Per thread, so that tests running side by side do not count each other's allocations.
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    if COUNTING.with(|c| c.get()) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(|n| n.get());
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(|n| n.get()) - before
}

fn calls<S>(service: &mut S, n: u32, mut outcome: impl FnMut(u32) -> u32)
where
    S: Service<u32, Response = u32>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..n {
        assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let future = pin!(service.call(outcome(i)));
        assert!(matches!(future.poll(&mut cx), Poll::Ready(_)));
    }
}

#[test]
fn the_closed_call_path_allocates_nothing() {
    // A count window, a time window, and every rule switched on: each admitted call allocates nothing.
    let layers = [
        (
            CircuitBreakerLayer::builder()
                .count_window(100)
                .build()
                .unwrap(),
            100,
        ),
        (
            CircuitBreakerLayer::builder()
                .time_window(Duration::from_secs(60))
                .slow_call_rate_threshold(90.0, Duration::from_secs(1))
                .consecutive_failures(1_000)
                .build()
                .unwrap(),
            101_000,
        ),
        (
            CircuitBreakerLayer::builder()
                .count_window(100)
                .build_static()
                .unwrap(),
            100,
        ),
    ];
    for (layer, in_window) in layers {
        let mut service = layer.layer(support::Noop);
        calls(&mut service, 1_000, |i| i); // warm up
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "{layer:?}");
        assert_eq!(
            layer.handle().metrics().calls,
            in_window,
            "the calls were recorded"
        );
    }
}

#[test]
fn failures_below_the_threshold_allocate_nothing_either() {
    use seawall::core::Outcome;
    // One call in ten fails: the window's slots and counts change on most calls, the breaker stays
    // closed.
    let layer = CircuitBreakerLayer::builder()
        .count_window(100)
        .consecutive_failures(5)
        .build()
        .unwrap()
        .classify(|r: &Result<u32, std::convert::Infallible>| match r {
            Ok(n) if n % 10 == 0 => Outcome::Failure,
            _ => Outcome::Success,
        });
    let mut service = layer.layer(support::Noop);
    calls(&mut service, 1_000, |i| i);
    let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
    assert_eq!(allocated, 0);
    let metrics = layer.handle().metrics();
    assert_eq!((metrics.calls, metrics.failures), (100, 10));
    assert_eq!(metrics.state, seawall::core::CircuitState::Closed);
}

#[test]
fn the_counter_counts() {
    // The check above could not pass by accident: this allocation is seen.
    let n = allocations_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(n, 1);
}

#[cfg(all(feature = "timeout", feature = "http"))]
mod timeout {
    use super::allocations_during;
    use seawall::core::{Deadline, DeadlineCarrier};
    use seawall::timeout::TimeoutLayer;
    use std::future::{ready, Future, Ready};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;
    use tower::{Layer, Service};

    /// Always ready, answers at once, whatever the request.
    struct Noop;

    impl<R> Service<R> for Noop {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = Ready<Result<(), std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: R) -> Self::Future {
            ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Query {
        deadline: Option<Deadline>,
    }

    impl DeadlineCarrier for Query {
        fn deadline(&self) -> Option<Deadline> {
            self.deadline
        }
        fn set_deadline(&mut self, deadline: Deadline) {
            self.deadline = Some(deadline);
        }
    }

    /// Sends every request through `service`, which must answer each at once, and returns the
    /// allocations made while doing so (not while making the requests).
    fn allocations<S: Service<R>, R>(service: &mut S, requests: Vec<R>) -> u64
    where
        S::Error: std::fmt::Debug,
    {
        let mut requests = requests;
        let mut cx = Context::from_waker(Waker::noop());
        allocations_during(|| {
            for req in requests.drain(..) {
                assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
                let future = pin!(service.call(req));
                assert!(matches!(future.poll(&mut cx), Poll::Ready(Ok(_))));
            }
        })
    }

    #[test]
    fn the_timeout_call_path_allocates_nothing() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let second = Duration::from_secs(1);
        const N: usize = 10_000;

        let mut fixed = TimeoutLayer::new(second).layer(Noop);
        let _ = allocations(&mut fixed, (0..100).map(|_| ()).collect()); // warm up
        assert_eq!(allocations(&mut fixed, (0..N).map(|_| ()).collect()), 0);

        // Propagating through a request type of one's own: read, and write.
        let hour = Duration::from_secs(3600);
        let mut propagating = TimeoutLayer::new(hour).propagate().layer(Noop);
        let queries = (0..N).map(|_| Query::default()).collect();
        assert_eq!(allocations(&mut propagating, queries), 0);
        // Later than the layer's own timeout, and earlier (but never reached by this test).
        let far = Deadline::after(2 * hour);
        let near = Deadline::after(hour / 2);
        for carried in [far, near] {
            let queries = (0..N)
                .map(|_| Query {
                    deadline: Some(carried),
                })
                .collect();
            assert_eq!(allocations(&mut propagating, queries), 0);
        }

        // An `http::Request` that already carries a deadline: it is overwritten in place.
        let requests = (0..N)
            .map(|_| {
                let mut req = http::Request::new(());
                req.set_deadline(far);
                req
            })
            .collect();
        assert_eq!(allocations(&mut propagating, requests), 0);
    }
}

#[cfg(feature = "retry")]
#[test]
fn the_retry_happy_path_allocates_nothing() {
    use seawall::retry::budget::Budget;
    use seawall::retry::RetryLayer;
    let budgets = [
        None,
        Some(Budget::default()),
        Some(Budget::default().leak()),
        Some(Budget::token_bucket(500, 5, 1).unwrap()),
    ];
    for budget in budgets {
        let builder = RetryLayer::builder();
        let layer = match budget.clone() {
            Some(budget) => builder.budget(budget),
            None => builder.no_budget(),
        }
        .build()
        .unwrap();
        let mut service = layer.layer(support::Noop);
        calls(&mut service, 1_000, |i| i); // warm up
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "{budget:?}");
    }
}

#[cfg(feature = "bulkhead")]
#[test]
fn admitted_bulkhead_calls_allocate_nothing() {
    use seawall::bulkhead::BulkheadLayer;
    let layers = [
        BulkheadLayer::new(10),
        BulkheadLayer::builder()
            .max_concurrent(10)
            .queue(100)
            .build()
            .unwrap(),
        BulkheadLayer::builder()
            .max_concurrent(10)
            .build_static()
            .unwrap(),
    ];
    for layer in layers {
        let mut service = layer.layer(support::Noop);
        calls(&mut service, 1_000, |i| i); // warm up
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "{layer:?}");
        assert_eq!(layer.handle().in_flight(), 0);
    }
}

#[cfg(feature = "limit")]
#[test]
fn admitted_adaptive_limiter_calls_allocate_nothing() {
    use seawall::limit::algorithm::{Aimd, Gradient2, Vegas};
    use seawall::limit::AdaptiveLimitLayer;
    // A tokio runtime for the clock the limiter reads; nothing here waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    fn check<A: seawall::limit::algorithm::Algorithm>(layer: AdaptiveLimitLayer<A>) {
        let mut service = layer.layer(support::Noop);
        calls(&mut service, 1_000, |i| i); // warm up
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "{layer:?}");
        assert_eq!(layer.handle().in_flight(), 0);
    }
    check(
        AdaptiveLimitLayer::builder(Aimd::default())
            .build()
            .unwrap(),
    );
    check(
        AdaptiveLimitLayer::builder(Gradient2::default())
            .build()
            .unwrap(),
    );
    check(
        AdaptiveLimitLayer::builder(Vegas::default())
            .sample_every(16)
            .build()
            .unwrap(),
    );
}

#[cfg(feature = "limit")]
#[test]
fn admitted_throttle_calls_allocate_nothing() {
    use seawall::limit::ThrottleLayer;
    // A tokio runtime for the clock the throttle reads as calls end; nothing here waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let layer = ThrottleLayer::new();
    let mut service = layer.layer(support::Noop);
    calls(&mut service, 1_000, |i| i); // warm up
    let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
    assert_eq!(allocated, 0, "{layer:?}");
    assert_eq!(layer.handle().accepts(), 101_000);
}

#[cfg(feature = "limit")]
#[test]
fn rate_limited_calls_allocate_nothing_and_nor_do_new_keys() {
    use seawall::limit::rate::{KeyedRateLimitLayer, ManualClock, Quota, RateLimitLayer};
    let clock = ManualClock::new();
    // A quota no call here exhausts: every call is admitted.
    let quota = Quota::per_second(1_000_000_000);
    let layer = RateLimitLayer::builder(quota)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = layer.layer(support::Noop);
    calls(&mut service, 1_000, |i| i); // warm up
    assert_eq!(
        allocations_during(|| calls(&mut service, 100_000, |i| i)),
        0
    );

    // Deciding in `call` to honour deadlines: a call admitted at once allocates nothing either.
    struct Carried(u32, Option<seawall::core::Deadline>);
    impl seawall::core::DeadlineCarrier for Carried {
        fn deadline(&self) -> Option<seawall::core::Deadline> {
            self.1
        }
        fn set_deadline(&mut self, deadline: seawall::core::Deadline) {
            self.1 = Some(deadline);
        }
    }
    let honouring = RateLimitLayer::builder(quota)
        .clock(clock.clone())
        .max_wait(Duration::from_secs(1))
        .honour_deadlines()
        .build()
        .unwrap();
    let mut service = tower::ServiceBuilder::new()
        .map_request(|n: u32| Carried(n, None))
        .layer(honouring)
        .map_request(|c: Carried| c.0)
        .service(support::Noop);
    calls(&mut service, 1_000, |i| i); // warm up
    assert_eq!(
        allocations_during(|| calls(&mut service, 100_000, |i| i)),
        0
    );

    let keyed = KeyedRateLimitLayer::builder(quota, |k: &u32| Some(*k))
        .max_keys(10_000)
        .clock(clock)
        .build()
        .unwrap();
    let mut service = keyed.layer(support::Noop);
    calls(&mut service, 1_000, |i| i); // every key seen once
    assert_eq!(keyed.handle().keys(), 1_000);
    let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i % 1_000));
    assert_eq!(allocated, 0);
    // New keys take slots of the table made at start: no allocation either.
    let mut service = keyed.layer(support::Noop);
    let allocated = allocations_during(|| calls(&mut service, 9_000, |i| 1_000_000 + i));
    assert_eq!(allocated, 0);
}

#[cfg(feature = "fallback")]
#[test]
fn the_fallback_happy_path_allocates_nothing() {
    use seawall::fallback::{FallbackLayer, Trigger};
    let mut service = FallbackLayer::from_fn(|_: Trigger<'_, u32>| 0).layer(support::Noop);
    calls(&mut service, 1_000, |i| i);
    assert_eq!(
        allocations_during(|| calls(&mut service, 100_000, |i| i)),
        0
    );
    let mut service = FallbackLayer::value(7u32).layer(support::Noop);
    calls(&mut service, 1_000, |i| i);
    assert_eq!(
        allocations_during(|| calls(&mut service, 100_000, |i| i)),
        0
    );
}

#[cfg(feature = "hedge")]
#[test]
fn a_hedged_layer_call_answered_before_the_delay_allocates_nothing() {
    use seawall::hedge::HedgeLayer;
    use seawall::retry::budget::Budget;
    let ms = Duration::from_millis(10);
    let layers = [
        // The percentile delay: each call is recorded in the latency window.
        HedgeLayer::new(),
        HedgeLayer::builder()
            .budget(Budget::default().leak())
            .build()
            .unwrap(),
        HedgeLayer::builder().delay(ms).build().unwrap(),
        HedgeLayer::builder().delay(ms).no_budget().build().unwrap(),
        HedgeLayer::builder()
            .delay(ms)
            .budget(Budget::token_bucket(500, 5, 1).unwrap())
            .max_attempts(5)
            .build()
            .unwrap(),
    ];
    for layer in layers {
        let mut service = layer.layer(support::Noop);
        calls(&mut service, 1_000, |i| i); // warm up: the window's slot is cleared once
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "{layer:?}");
    }
}

/// Never answers a first attempt (an even request); answers a hedge (marked odd) at once.
#[cfg(feature = "hedge")]
#[derive(Clone, Copy)]
struct SlowFirst;

#[cfg(feature = "hedge")]
enum FirstOrHedge {
    First,
    Hedge(u32),
}

#[cfg(feature = "hedge")]
impl Future for FirstOrHedge {
    type Output = Result<u32, std::convert::Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        match *self {
            FirstOrHedge::First => Poll::Pending,
            FirstOrHedge::Hedge(n) => Poll::Ready(Ok(n)),
        }
    }
}

#[cfg(feature = "hedge")]
impl Service<u32> for SlowFirst {
    type Response = u32;
    type Error = std::convert::Infallible;
    type Future = FirstOrHedge;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> FirstOrHedge {
        if req % 2 == 0 {
            FirstOrHedge::First
        } else {
            FirstOrHedge::Hedge(req)
        }
    }
}

#[cfg(feature = "hedge")]
#[test]
fn a_hedged_call_allocates_nothing_either() {
    use seawall::hedge::HedgeLayer;
    use seawall::retry::budget::Budget;
    // A zero delay: the hedge is due at the first poll and sent without a timer; it answers at
    // once and the first attempt (which would never answer) is dropped. A token bucket budget,
    // refilled by each win.
    let layer = HedgeLayer::builder()
        .delay(Duration::ZERO)
        .budget(Budget::token_bucket(1_000, 1, 1).unwrap())
        .mark(|req: &mut u32, _attempt: u32| *req |= 1)
        .build()
        .unwrap();
    let mut service = layer.layer(SlowFirst);
    // Even requests: first attempts, which only their hedges answer.
    calls(&mut service, 1_000, |i| i * 2);
    let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i * 2));
    assert_eq!(allocated, 0);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let future = pin!(service.call(4));
    assert!(
        matches!(future.poll(&mut cx), Poll::Ready(Ok(5))),
        "answered by the hedge"
    );
}

#[cfg(feature = "metrics")]
#[test]
fn a_metrics_observer_allocates_nothing_once_its_series_are_registered() {
    use seawall::bulkhead::BulkheadLayer;
    use seawall::metrics::MetricsObserver;
    // A recorder whose handles do nothing: what is measured is the observer's own work (a real
    // recorder's storage, such as a histogram's samples, is the recorder's business).
    metrics::with_local_recorder(&metrics::NoopRecorder, || {
        let layer = BulkheadLayer::builder()
            .name("pool")
            .observer(MetricsObserver::new())
            .build()
            .unwrap();
        let mut service = layer.layer(support::Noop);
        calls(&mut service, 1_000, |i| i); // registers the series
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0);
    });
}

/// One observer cloned into several layers (as a stack's `.observer(..)` does for its parts)
/// keeps each layer's series: no layer looks its series up, allocating, on every event.
#[cfg(feature = "metrics")]
#[test]
fn a_metrics_observer_shared_by_several_layers_allocates_nothing_once_registered() {
    use seawall::bulkhead::BulkheadLayer;
    use seawall::metrics::MetricsObserver;
    metrics::with_local_recorder(&metrics::NoopRecorder, || {
        let observer = MetricsObserver::new();
        let layer = |name: &'static str| {
            BulkheadLayer::builder()
                .name(name)
                .observer(observer.clone())
                .build()
                .unwrap()
        };
        let mut service = tower::ServiceBuilder::new()
            .layer(layer("outer"))
            .layer(layer("middle"))
            .layer(layer("inner"))
            .service(support::Noop);
        calls(&mut service, 1_000, |i| i); // registers the series
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0);
    });
}

#[cfg(all(feature = "timeout", feature = "retry", feature = "circuit-breaker"))]
#[test]
fn the_client_stack_happy_path_allocates_nothing() {
    use seawall::core::{Deadline, DeadlineCarrier};
    use seawall::stack::ClientStack;
    use tower::ServiceExt;

    /// A request that carries its deadline in a field, as the default stack's requests must.
    #[derive(Clone)]
    struct Carried(u32, Option<Deadline>);

    impl DeadlineCarrier for Carried {
        fn deadline(&self) -> Option<Deadline> {
            self.1
        }
        fn set_deadline(&mut self, deadline: Deadline) {
            self.1 = Some(deadline);
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    // The default stack, whose timeouts put deadlines in the request.
    let backend = tower::service_fn(|req: Carried| {
        std::future::ready(Ok::<_, std::convert::Infallible>(req.0))
    });
    let mut service = ClientStack::new()
        .layer(backend)
        .map_request(|i: u32| Carried(i, None));
    calls(&mut service, 1_000, |i| i);
    assert_eq!(
        allocations_during(|| calls(&mut service, 100_000, |i| i)),
        0
    );
    // Plain timeouts, for requests that carry no deadline.
    let mut service = ClientStack::new().without_deadlines().layer(support::Noop);
    calls(&mut service, 1_000, |i| i);
    assert_eq!(
        allocations_during(|| calls(&mut service, 100_000, |i| i)),
        0
    );
}

/// A stack observed by one `MetricsObserver`: its parts share it, and no call allocates once
/// their series are registered.
#[cfg(all(feature = "metrics", feature = "limit"))]
#[test]
fn observed_stacks_allocate_nothing_once_their_series_are_registered() {
    use seawall::limit::rate::Quota;
    use seawall::metrics::MetricsObserver;
    use seawall::stack::{ClientStack, ServerStack};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    metrics::with_local_recorder(&metrics::NoopRecorder, || {
        let observer = MetricsObserver::new();
        let client = ClientStack::new()
            .without_deadlines()
            .observer(observer.clone());
        let server = ServerStack::new()
            .rate_limit(Quota::per_second(1_000_000_000))
            .observer(observer);
        let mut service = server.layer(client.layer(support::Noop));
        calls(&mut service, 1_000, |i| i); // registers the series
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0);
    });
}

/// A bulkhead, an adaptive limiter or the server stack that honours deadlines decides in `call`: a
/// call admitted at once allocates nothing either, whether or not its request carries a deadline.
#[cfg(feature = "limit")]
#[test]
fn admitted_calls_honouring_deadlines_allocate_nothing() {
    use seawall::bulkhead::{BulkheadLayer, Codel};
    use seawall::core::{Deadline, DeadlineCarrier};
    use seawall::limit::algorithm::{Gradient2, Windowed};
    use seawall::limit::AdaptiveLimitLayer;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    struct Carried(u32, Option<Deadline>);
    impl DeadlineCarrier for Carried {
        fn deadline(&self) -> Option<Deadline> {
            self.1
        }
        fn set_deadline(&mut self, deadline: Deadline) {
            self.1 = Some(deadline);
        }
    }
    let deadline = Deadline::after(Duration::from_secs(3600));
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(10)
        .queue(100)
        .codel(Codel::default())
        .honour_deadlines()
        .build()
        .unwrap();
    let adaptive = AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
        .queue(128)
        .codel(Codel::default())
        .honour_deadlines()
        .build()
        .unwrap();
    for carried in [None, Some(deadline)] {
        let mut service = tower::ServiceBuilder::new()
            .map_request(move |n: u32| Carried(n, carried))
            .layer(bulkhead.clone())
            .map_request(|c: Carried| c.0)
            .service(support::Noop);
        calls(&mut service, 1_000, |i| i); // warm up
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "bulkhead, deadline {carried:?}");
        assert_eq!(bulkhead.handle().in_flight(), 0);
        let mut service = tower::ServiceBuilder::new()
            .map_request(move |n: u32| Carried(n, carried))
            .layer(adaptive.clone())
            .map_request(|c: Carried| c.0)
            .service(support::Noop);
        calls(&mut service, 1_000, |i| i);
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "adaptive limiter, deadline {carried:?}");
        assert_eq!(adaptive.handle().in_flight(), 0);
    }
    // The server stack, its limiter honouring deadlines.
    #[cfg(feature = "timeout")]
    for carried in [None, Some(deadline)] {
        let mut service = tower::ServiceBuilder::new()
            .map_request(move |n: u32| Carried(n, carried))
            .layer(seawall::stack::ServerStack::new().honour_deadlines())
            .map_request(|c: Carried| c.0)
            .service(support::Noop);
        calls(&mut service, 1_000, |i| i);
        let allocated = allocations_during(|| calls(&mut service, 100_000, |i| i));
        assert_eq!(allocated, 0, "server stack, deadline {carried:?}");
    }
}

/// A call through the pool over ready endpoints allocates nothing: the choice, the endpoint's
/// readiness, its in-flight count, its estimate, window and counters, with 3 endpoints and with
/// 100, every default rule on and the success-rate rule too.
#[cfg(feature = "pool")]
#[test]
fn a_pool_call_over_ready_endpoints_allocates_nothing() {
    use seawall::pool::Pool;
    // A tokio runtime for the clock the pool reads, paused so that the test moves it past the
    // interval; nothing here waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _entered = runtime.enter();
    for n in [3, 100] {
        let pools = [
            Pool::builder()
                .seed(1)
                .build(std::iter::repeat_n(support::Noop, n))
                .unwrap(),
            Pool::builder()
                .success_rate(1.9, 100, 5)
                .seed(2)
                .build(std::iter::repeat_n(support::Noop, n))
                .unwrap(),
        ];
        for (k, mut pool) in pools.into_iter().enumerate() {
            let handle = pool.handle();
            calls(&mut pool, 1_000, |i| i); // warm up
            let allocated = allocations_during(|| calls(&mut pool, 100_000, |i| i));
            assert_eq!(allocated, 0, "{n} endpoints: {handle:?}");
            // Past the interval: the first call ending runs the success-rate rule over every
            // endpoint, and allocates nothing either.
            runtime.block_on(tokio::time::advance(Duration::from_secs(11)));
            let allocated = allocations_during(|| calls(&mut pool, 10, |i| i));
            assert_eq!(
                allocated, 0,
                "pool {k}, {n} endpoints, past the interval: {handle:?}"
            );
            let endpoints = handle.endpoints();
            assert_eq!(
                endpoints.iter().map(|e| e.calls).sum::<u64>(),
                101_010,
                "the calls were recorded"
            );
            assert!(endpoints.iter().all(|e| e.in_flight == 0));
        }
    }
}

#[cfg(feature = "cache")]
#[test]
fn a_cache_hit_allocates_nothing_beyond_the_values_clone() {
    use seawall::cache::CacheLayer;
    use std::sync::Arc;
    // `Arc` values: a hit's clone of the answer is a reference count, no allocation.
    let value: Arc<[u8]> = Arc::from(&b"a cached answer"[..]);
    let backend = tower::service_fn(move |_: u32| {
        std::future::ready(Ok::<_, std::convert::Infallible>(value.clone()))
    });
    let layer = CacheLayer::builder(|key: &u32| Some(*key % 100))
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut service = layer.layer(backend);
    // Called from within a multi-thread runtime, as a server's calls are: fresh hits are then
    // judged on the coarse clock. Keys taken in turn mostly go through quick_cache (a thread
    // keeps 32 near copies); one key asked again and again is answered from its copy.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |i: u32| {
        assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let future = pin!(service.call(i));
        assert!(matches!(future.poll(&mut cx), Poll::Ready(Ok(_))));
    };
    // Misses (single-flight, the store's insert) allocate: warm every key first. A thread's
    // first hit allocates its near copies and its counters (once per thread and layer): hit
    // every key once too.
    for i in 0..200 {
        call(i);
    }
    // The clock thread's first reading (it reads every 10 ms).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(allocations_during(|| (0..100_000).for_each(&mut call)), 0);
    assert_eq!(allocations_during(|| (0..100_000).for_each(|_| call(7))), 0);
    assert_eq!(layer.stats().hits, 200_100);
}
