//! The closed breaker's call path allocates nothing: proved with a counting global allocator.

#[path = "support/mod.rs"]
mod support;

use seawall::circuit_breaker::CircuitBreakerLayer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{Layer, Service};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
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
fn the_counter_counts() {
    // The check above could not pass by accident: this allocation is seen.
    let n = allocations_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(n, 1);
}
