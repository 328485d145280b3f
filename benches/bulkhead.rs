//! Per-call cost of the bulkhead, the adaptive limiter on its gate and the client-side throttle,
//! beside a bare service and tower's `ConcurrencyLimit`: one task, and two threads sharing one
//! bulkhead.
//!
//! Every call is driven by hand with a no-op waker: `poll_ready`, `call`, poll the future once. The
//! inner service is always ready and answers at once, so a slot is always free.
//!
//! Run: `cargo bench --bench bulkhead` (with `--features health` for the `registered` variants:
//! the same bulkhead watched by a health registry).

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::bulkhead::BulkheadLayer;
use seawall::limit::algorithm::Aimd;
use seawall::limit::{AdaptiveLimitLayer, ThrottleLayer};
use tower::Layer;

#[path = "support/mod.rs"]
mod support;

use support::{single, two_threads, Noop};

fn benches(c: &mut Criterion) {
    let limit = tower::limit::ConcurrencyLimitLayer::new(1_000_000);
    let bulkhead = BulkheadLayer::new(1_000_000);
    let queueing = BulkheadLayer::builder()
        .max_concurrent(1_000_000)
        .queue(1_000)
        .build()
        .unwrap();

    single(c, "bulkhead/bare", Noop);
    single(c, "bulkhead/tower_concurrency_limit", limit.layer(Noop));
    single(c, "bulkhead/reject_when_full", bulkhead.layer(Noop));
    // The same bulkhead watched by a health registry: registering must change nothing per call
    // (compare with bulkhead/reject_when_full).
    #[cfg(feature = "health")]
    let registry = seawall::health::Registry::new();
    #[cfg(feature = "health")]
    let registered = BulkheadLayer::new(1_000_000);
    #[cfg(feature = "health")]
    {
        registry
            .register(
                "bulkhead",
                &registered.handle(),
                seawall::health::Criticality::Informational,
            )
            .unwrap();
        single(c, "bulkhead/registered", registered.layer(Noop));
    }
    single(c, "bulkhead/queue_when_full", queueing.layer(Noop));
    let leaked = BulkheadLayer::builder()
        .max_concurrent(1_000_000)
        .build_static()
        .unwrap();
    single(c, "bulkhead/reject_when_full_static", leaked.layer(Noop));

    // The adaptive limiter on the same gate: as built (it times a share of the calls at this rate),
    // every call timed, or one in 16.
    let aimd = || Aimd {
        initial: 1_000_000.0,
        max: 1_000_000.0,
        ..Aimd::default()
    };
    single(
        c,
        "bulkhead/adaptive_aimd",
        AdaptiveLimitLayer::builder(aimd())
            .build()
            .unwrap()
            .layer(Noop),
    );
    single(
        c,
        "bulkhead/adaptive_aimd_every_call",
        AdaptiveLimitLayer::builder(aimd())
            .sample_every(1)
            .build()
            .unwrap()
            .layer(Noop),
    );
    single(
        c,
        "bulkhead/adaptive_aimd_sample_16",
        AdaptiveLimitLayer::builder(aimd())
            .sample_every(16)
            .build()
            .unwrap()
            .layer(Noop),
    );
    // Client-side throttling of a healthy service: one clock read as each call ends.
    single(c, "bulkhead/throttle", ThrottleLayer::new().layer(Noop));

    two_threads(
        c,
        "bulkhead_two_threads/tower_concurrency_limit",
        limit.layer(Noop),
    );
    two_threads(
        c,
        "bulkhead_two_threads/reject_when_full",
        bulkhead.layer(Noop),
    );
    #[cfg(feature = "health")]
    two_threads(c, "bulkhead_two_threads/registered", registered.layer(Noop));
    two_threads(
        c,
        "bulkhead_two_threads/queue_when_full",
        queueing.layer(Noop),
    );
    two_threads(
        c,
        "bulkhead_two_threads/reject_when_full_static",
        leaked.layer(Noop),
    );
}

criterion_group!(bulkhead, benches);
criterion_main!(bulkhead);
