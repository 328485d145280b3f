//! Per-call cost of the hedge layer for a call answered before the delay (the first attempt
//! answers at its first poll), beside the bare service and tower's `hedge::Hedge`; and the cost of
//! a call that is hedged (the first attempt never answers, the hedge answers at once).
//!
//! Every call is driven by hand with a no-op waker: `poll_ready`, `call`, poll the future once
//! (twice for nothing: a call answered before the delay is ready at its first poll). The inner
//! service is always ready.
//!
//! tower's `Hedge` arms a `tokio::time::Sleep` in every `call`, which needs a runtime's timer:
//! the `in_runtime` group enters a current-thread runtime (not running: nothing is driven by it)
//! and measures bare, seawall and tower there, side by side. Entered, `tokio::time::Instant::now`
//! asks the runtime's clock, which under the `test-util` feature the dev-dependencies turn on
//! takes a lock; outside a runtime (the first group, as the other benches) it is the system clock.
//!
//! Run: `cargo bench --all-features --bench hedge`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::hedge::HedgeLayer;
use seawall::retry::budget::Budget;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

#[path = "support/mod.rs"]
mod support;

use support::{single, Noop};

/// tower's hedge policy: every request may be hedged.
#[derive(Clone, Copy)]
struct Always;

impl tower::hedge::Policy<u32> for Always {
    fn clone_request(&self, req: &u32) -> Option<u32> {
        Some(*req)
    }

    fn can_retry(&self, _: &u32) -> bool {
        true
    }
}

/// tower's `Hedge` over `Noop`, its histogram filled so that it hedges at the 95th percentile
/// (10 ms) of a 10 s window, as seawall's default does.
fn tower_hedge() -> tower::hedge::Hedge<Noop, Always> {
    tower::hedge::Hedge::new_with_mock_latencies::<u32>(
        Noop,
        Always,
        100,
        0.95,
        Duration::from_secs(10),
        &[10; 1000],
    )
}

/// `service` (a hedge layer's) once its latency window holds enough samples (of calls answered at
/// once) for a percentile delay, as in production once traffic has flowed for a while.
fn warmed<S>(mut service: S) -> S
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for i in 0..1_000 {
        support::call_once(&mut service, &mut cx, i);
    }
    service
}

/// One read of the clock: what a call that waits pays at its first poll (and, with the percentile
/// delay, again when it ends). A call answered at its first poll, as every call here, reads none.
fn clock(c: &mut Criterion) {
    c.bench_function("hedge/clock_read", |b| b.iter(tokio::time::Instant::now));
}

fn default_layer() -> HedgeLayer {
    HedgeLayer::new()
}

fn fixed(budget: Option<Budget>) -> HedgeLayer {
    let builder = HedgeLayer::builder().delay(Duration::from_millis(10));
    match budget {
        Some(budget) => builder.budget(budget),
        None => builder.no_budget(),
    }
    .build()
    .unwrap()
}

/// A request's high bit: set by the hedge layer's mark on hedges.
const HEDGE: u32 = 1 << 31;

/// Answers hedges at once and never answers first attempts: every call through a hedge layer
/// with a zero delay is hedged.
#[derive(Clone, Copy)]
struct SlowFirst;

/// Never ready for a first attempt, ready at once for a hedge.
enum MaybeReady {
    Never,
    Now(Ready<Result<u32, Infallible>>),
}

impl Future for MaybeReady {
    type Output = Result<u32, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            MaybeReady::Never => Poll::Pending,
            MaybeReady::Now(ready) => Pin::new(ready).poll(cx),
        }
    }
}

impl Service<u32> for SlowFirst {
    type Response = u32;
    type Error = Infallible;
    type Future = MaybeReady;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> MaybeReady {
        if req & HEDGE == 0 {
            MaybeReady::Never
        } else {
            MaybeReady::Now(ready(Ok(req)))
        }
    }
}

fn benches(c: &mut Criterion) {
    // Outside a runtime: the system clock, as the other benches.
    single(c, "hedge/bare", Noop);
    clock(c);
    single(c, "hedge/percentile", warmed(default_layer().layer(Noop)));
    single(
        c,
        "hedge/percentile_leaked_budget",
        warmed(
            HedgeLayer::builder()
                .budget(Budget::default().leak())
                .build()
                .unwrap()
                .layer(Noop),
        ),
    );
    single(c, "hedge/fixed", fixed(Some(Budget::default())).layer(Noop));
    single(c, "hedge/fixed_no_budget", fixed(None).layer(Noop));

    // A call that is hedged: the first attempt is still running at the first poll, the delay
    // (zero) has passed, the budget (unbounded for the bench: a token bucket refilled by every
    // win) pays, and the hedge answers at once; the first attempt is dropped. No timer is armed:
    // the hedge is due at once.
    let hedging = HedgeLayer::builder()
        .delay(Duration::ZERO)
        .budget(Budget::token_bucket(1_000, 1, 1).unwrap())
        .mark(|req: &mut u32, _attempt: u32| *req |= HEDGE)
        .build()
        .unwrap();
    single(c, "hedge/hedged_at_once", hedging.layer(SlowFirst));

    // In a runtime (not running), which tower's `Hedge` needs for the `Sleep` it arms per call.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    single(c, "hedge_in_runtime/bare", Noop);
    single(
        c,
        "hedge_in_runtime/percentile",
        warmed(default_layer().layer(Noop)),
    );
    single(c, "hedge_in_runtime/tower_hedge", tower_hedge());
}

criterion_group!(hedge, benches);
criterion_main!(hedge);
