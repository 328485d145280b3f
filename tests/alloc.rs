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
