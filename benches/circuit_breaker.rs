//! Per-call cost of the circuit breaker beside a bare service and tower's `ConcurrencyLimit`.
//!
//! Every call is driven by hand with a no-op waker (no runtime, so `tokio::time::Instant::now` is the
//! plain system clock): `poll_ready`, `call`, poll the future once. The inner service is always ready
//! and answers at once, so what is measured is the layer.
//!
//! Run: `cargo bench --bench circuit_breaker` (with `--features health` for the `_registered`
//! variants: the same breaker watched by a health registry).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::window::{Sample, TimeWindow};
use seawall::core::Outcome;
use std::convert::Infallible;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

#[path = "support/mod.rs"]
mod support;

use support::{call_once, single, two_threads, Noop};

/// Two tasks on a two-worker tokio runtime, each with its own clone of `service`, calling through
/// `ServiceExt::ready` and `.await`. Reports wall time per call per task.
fn two_tasks<S>(c: &mut Criterion, name: &str, service: S)
where
    S: Service<u32> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    c.bench_function(name, |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let service = service.clone();
            async move {
                let start = Instant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let mut service = service.clone();
                        tokio::spawn(async move {
                            for i in 0..iters {
                                let ready = service.ready().await.unwrap();
                                black_box(ready.call(i as u32).await.unwrap());
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
        })
    });
}

fn count_window_breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .count_window(100)
        .build()
        .unwrap()
}

/// The same breaker, built with `build_static`: no reference counting per call.
fn static_breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .count_window(100)
        .build_static()
        .unwrap()
}

/// One call in ten fails (requests that are multiples of 10): the window's slots and counts change
/// on most calls, while the breaker stays closed.
fn one_in_ten_fails(r: &Result<u32, Infallible>) -> Outcome {
    match r {
        Ok(n) if n % 10 == 0 => Outcome::Failure,
        _ => Outcome::Success,
    }
}

fn benches(c: &mut Criterion) {
    let limit = tower::limit::ConcurrencyLimitLayer::new(1_000_000);

    single(c, "single/bare", Noop);
    single(c, "single/tower_concurrency_limit", limit.layer(Noop));
    single(
        c,
        "single/breaker_count_100",
        count_window_breaker().layer(Noop),
    );
    // The keyed breaker, every call for one key already in its table (compare with
    // single/breaker_count_100: the target is at most twice its cost).
    single(
        c,
        "single/keyed_breaker_count_100_existing_key",
        CircuitBreakerLayer::builder()
            .count_window(100)
            .keyed()
            .key(|_: &u32| Some(7u32))
            .build()
            .unwrap()
            .layer(Noop),
    );
    single(
        c,
        "single/breaker_count_100_static",
        static_breaker().layer(Noop),
    );
    // The same breaker watched by a health registry: registering must change nothing per call
    // (compare with single/breaker_count_100).
    #[cfg(feature = "health")]
    let registry = seawall::health::Registry::new();
    #[cfg(feature = "health")]
    {
        let registered = count_window_breaker();
        registry
            .register(
                "breaker",
                &registered.handle(),
                seawall::health::Criticality::Informational,
            )
            .unwrap();
        single(
            c,
            "single/breaker_count_100_registered",
            registered.layer(Noop),
        );
        two_threads(
            c,
            "two_threads/breaker_count_100_registered",
            registered.layer(Noop),
        );
    }
    let mixed = CircuitBreakerLayer::builder()
        .count_window(100)
        .classify(one_in_ten_fails as fn(&Result<u32, Infallible>) -> Outcome);
    single(
        c,
        "single/breaker_count_100_10pct_failures",
        mixed.clone().build().unwrap().layer(Noop),
    );
    single(
        c,
        "single/breaker_count_100_10pct_failures_static",
        mixed.clone().build_static().unwrap().layer(Noop),
    );
    two_threads(
        c,
        "two_threads/breaker_count_100_10pct_failures_static",
        mixed.build_static().unwrap().layer(Noop),
    );
    let time = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(60))
        .build()
        .unwrap();
    single(c, "single/breaker_time_60s", time.layer(Noop));

    two_threads(c, "two_threads/bare", Noop);
    two_threads(c, "two_threads/tower_concurrency_limit", limit.layer(Noop));
    two_threads(
        c,
        "two_threads/breaker_count_100",
        count_window_breaker().layer(Noop),
    );
    two_threads(
        c,
        "two_threads/breaker_count_100_static",
        static_breaker().layer(Noop),
    );

    two_tasks(c, "two_tasks/bare", Noop);
    two_tasks(c, "two_tasks/tower_concurrency_limit", limit.layer(Noop));
    two_tasks(
        c,
        "two_tasks/breaker_count_100",
        count_window_breaker().layer(Noop),
    );
    two_tasks(
        c,
        "two_tasks/breaker_count_100_static",
        static_breaker().layer(Noop),
    );

    // A 60 s time-window breaker on tokio's paused clock (so the window can be filled without waiting
    // a minute; reading the paused clock costs a little more than the system clock): empty, and with
    // every one of its 60 buckets holding calls.
    for full in [false, true] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _context = runtime.enter();
        let layer = CircuitBreakerLayer::builder()
            .time_window(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut service = layer.layer(Noop);
        let mut cx = Context::from_waker(Waker::noop());
        if full {
            for second in 0..60 {
                if second > 0 {
                    runtime.block_on(tokio::time::advance(Duration::from_secs(1)));
                }
                for i in 0..1_000 {
                    call_once(&mut service, &mut cx, i);
                }
            }
            assert_eq!(
                layer.handle().metrics().calls,
                60_000,
                "every bucket holds calls"
            );
        }
        let name = if full { "full" } else { "empty" };
        c.bench_function(&format!("paused_clock/breaker_time_60s_{name}"), |b| {
            b.iter(|| call_once(&mut service, &mut cx, black_box(7)))
        });
    }

    // The time window alone, with a synthetic clock: empty, and full (60 one-second buckets already
    // holding calls, time moving on so that buckets keep rotating as they would in service).
    let second = 1_000_000_000u64;
    c.bench_function("window/time_60s_empty", |b| {
        let window = TimeWindow::new(Duration::from_secs(60), 60);
        let mut now = 0u64;
        b.iter(|| {
            now += 1_000; // 1 µs per call: a new bucket every million calls
            black_box(window.record(now, Sample::new(now % 7 == 0, false)));
        })
    });
    c.bench_function("window/time_60s_full", |b| {
        let window = TimeWindow::new(Duration::from_secs(60), 60);
        for s in 0..60 {
            for i in 0..1_000 {
                window.record(s * second + i, Sample::new(i % 7 == 0, false));
            }
        }
        let mut now = 60 * second;
        b.iter(|| {
            now += 1_000;
            black_box(window.record(now, Sample::new(now % 7 == 0, false)));
        })
    });
}

criterion_group! {
    name = group;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(group);
