//! Per-call cost of the retry layer on the happy path (the first attempt succeeds), beside a bare
//! service and tower's `Retry` with a policy that never retries.
//!
//! Every call is driven by hand with a no-op waker (no runtime, so `tokio::time::Instant::now`, read
//! only by a ratio budget once per 64 requests, is the plain system clock): `poll_ready`, `call`,
//! poll the future once. The inner service is always ready and answers at once.
//!
//! Run: `cargo bench --bench retry`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::retry::budget::Budget;
use seawall::retry::RetryLayer;
use std::future::Ready;
use tower::Layer;

#[path = "support/mod.rs"]
mod support;

use support::{single, two_threads, Noop};

/// Tower's retry, never retrying: the least a retry layer can cost.
#[derive(Clone, Copy)]
struct NeverRetry;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn layer(budget: Option<Budget>) -> RetryLayer {
    let builder = RetryLayer::builder();
    match budget {
        Some(budget) => builder.budget(budget),
        None => builder.no_budget(),
    }
    .build()
    .unwrap()
}

fn benches(c: &mut Criterion) {
    single(c, "retry/bare", Noop);
    single(
        c,
        "retry/tower_never_retry",
        tower::retry::RetryLayer::new(NeverRetry).layer(Noop),
    );
    single(c, "retry/no_budget", layer(None).layer(Noop));
    single(
        c,
        "retry/ratio_budget",
        layer(Some(Budget::default())).layer(Noop),
    );
    single(
        c,
        "retry/ratio_budget_leaked",
        layer(Some(Budget::default().leak())).layer(Noop),
    );
    single(
        c,
        "retry/token_bucket",
        layer(Some(Budget::token_bucket(500, 5, 1).unwrap())).layer(Noop),
    );
    single(
        c,
        "retry/token_bucket_leaked",
        layer(Some(Budget::token_bucket(500, 5, 1).unwrap().leak())).layer(Noop),
    );

    two_threads(c, "retry_two_threads/bare", Noop);
    two_threads(c, "retry_two_threads/no_budget", layer(None).layer(Noop));
    two_threads(
        c,
        "retry_two_threads/ratio_budget",
        layer(Some(Budget::default())).layer(Noop),
    );
    two_threads(
        c,
        "retry_two_threads/ratio_budget_leaked",
        layer(Some(Budget::default().leak())).layer(Noop),
    );
    two_threads(
        c,
        "retry_two_threads/token_bucket_leaked",
        layer(Some(Budget::token_bucket(500, 5, 1).unwrap().leak())).layer(Noop),
    );
}

criterion_group!(retry, benches);
criterion_main!(retry);
