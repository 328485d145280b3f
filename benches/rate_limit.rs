//! Per-call cost of the rate limiters beside a bare service and the `governor` crate: one key and
//! one task, one key shared by two threads, and 100,000 live keys.
//!
//! Every call is driven by hand with a no-op waker. Quotas are too large for any call here to be
//! limited, so every call is admitted. `governor` has no tower layer: its check is wrapped in a
//! minimal service, so that both sides pay for a `poll_ready`, a `call` and a poll.
//!
//! Run: `cargo bench --bench rate_limit` (add `--features quanta` for the limiter on the CPU's
//! time-stamp counter, as `governor` reads it)

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::limit::rate::{KeyedRateLimitLayer, ManualClock, Quota, RateLimitLayer};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[path = "support/mod.rs"]
mod support;

use support::{single, two_threads, Noop};

const KEYS: u32 = 100_000;

/// A service that asks `check` about each request, and answers at once: how `governor`'s
/// limiters are put behind a service here.
#[derive(Clone)]
struct Checked<F>(F);

impl<F: FnMut(u32) -> bool> Service<u32> for Checked<F> {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u32) -> Self::Future {
        assert!((self.0)(req), "limited");
        ready(Ok(req))
    }
}

fn rate_limit(c: &mut Criterion) {
    let quota = Quota::per_second(1_000_000_000);
    let gov_quota = governor::Quota::per_second(NonZeroU32::MAX);
    let limit = RateLimitLayer::new(quota);
    let leaked = RateLimitLayer::builder(quota).build_static().unwrap();
    // A clock that is never moved: what the limiter costs without the clock read. Its burst
    // (over four billion calls) outlasts the bench, since no slot ever comes back.
    let manual = RateLimitLayer::builder(quota.burst(u32::MAX))
        .clock(ManualClock::new())
        .build_static()
        .unwrap();
    let direct = Arc::new(governor::RateLimiter::direct(gov_quota));
    let governor = Checked(move |_| direct.check().is_ok());

    single(c, "rate_limit/bare", Noop);
    single(c, "rate_limit/one_key", limit.layer(Noop));
    single(c, "rate_limit/one_key_static", leaked.layer(Noop));
    single(
        c,
        "rate_limit/one_key_static_manual_clock",
        manual.layer(Noop),
    );
    single(c, "rate_limit/governor_direct", governor.clone());
    #[cfg(feature = "quanta")]
    let quanta = RateLimitLayer::builder(quota)
        .clock(seawall::limit::rate::QuantaClock::new())
        .build()
        .unwrap();
    #[cfg(feature = "quanta")]
    single(c, "rate_limit/one_key_quanta_clock", quanta.layer(Noop));

    let keyed = KeyedRateLimitLayer::builder(quota, |k: &u32| Some(*k % KEYS))
        .max_keys(2 * KEYS as usize)
        .build()
        .unwrap();
    let mut warm = keyed.layer(Noop);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for i in 0..KEYS {
        support::call_once(&mut warm, &mut cx, i);
    }
    assert_eq!(keyed.handle().keys(), u64::from(KEYS));
    single(c, "rate_limit/keyed_100k", keyed.layer(Noop));
    let keyed_limiter = Arc::new(governor::RateLimiter::keyed(gov_quota));
    let gov_keyed = Checked(move |req| keyed_limiter.check_key(&(req % KEYS)).is_ok());
    let mut warm = gov_keyed.clone();
    for i in 0..KEYS {
        support::call_once(&mut warm, &mut cx, i);
    }
    single(c, "rate_limit/governor_keyed_100k", gov_keyed);

    two_threads(c, "rate_limit_two_threads/one_key", limit.layer(Noop));
    two_threads(
        c,
        "rate_limit_two_threads/one_key_static",
        leaked.layer(Noop),
    );
    #[cfg(feature = "quanta")]
    two_threads(
        c,
        "rate_limit_two_threads/one_key_quanta_clock",
        quanta.layer(Noop),
    );
    two_threads(c, "rate_limit_two_threads/governor_direct", governor);
}

criterion_group!(benches, rate_limit);
criterion_main!(benches);
