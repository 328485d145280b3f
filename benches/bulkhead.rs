//! Per-call cost of the bulkhead, the adaptive limiter on its gate and the client-side throttle,
//! beside a bare service and tower's `ConcurrencyLimit`: one task, and two threads sharing one
//! bulkhead.
//!
//! Every call is driven by hand with a no-op waker: `poll_ready`, `call`, poll the future once. The
//! inner service is always ready and answers at once, so a slot is always free.
//!
//! Run: `cargo bench --bench bulkhead` (with `--features health` for the `registered` variants:
//! the same bulkhead watched by a health registry).
//!
//! The `deadline` variants decide in `call` (`honour_deadlines()`), over requests that carry no
//! deadline (no clock read) and that carry one (one clock read), each admitted at once: compare
//! with `bulkhead/reject_when_full` and `bulkhead/adaptive_aimd`.
//!
//! The `rejecting` variants turn every call away (a limit of zero): the path a surge takes once a
//! bulkhead is full, where each rejection is counted for `health`.

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::bulkhead::BulkheadLayer;
use seawall::core::Deadline;
use seawall::limit::algorithm::Aimd;
use seawall::limit::{AdaptiveLimitLayer, ThrottleLayer};
use std::time::Duration;
use tower::{Layer, ServiceExt};

#[path = "support/mod.rs"]
mod support;

use support::{
    carried_backend, looped, reject_once, single, two_threads, two_threads_with, Carried, Noop,
};

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
    // Deciding in `call`, where the request's deadline is read: none carried, and one an hour
    // away; every call admitted at once.
    let far = Deadline::after(Duration::from_secs(3600));
    for (name, deadline) in [
        ("bulkhead/deadline_none_carried", None),
        ("bulkhead/deadline_carried", Some(far)),
    ] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(1_000_000)
            .queue(1_000)
            .honour_deadlines()
            .build()
            .unwrap();
        single(
            c,
            name,
            layer
                .layer(carried_backend())
                .map_request(move |i: u32| Carried(i, deadline)),
        );
    }
    for (name, deadline) in [
        ("bulkhead/deadline_adaptive_aimd_none_carried", None),
        ("bulkhead/deadline_adaptive_aimd_carried", Some(far)),
    ] {
        let layer = AdaptiveLimitLayer::builder(aimd())
            .honour_deadlines()
            .build()
            .unwrap();
        single(
            c,
            name,
            layer
                .layer(carried_backend())
                .map_request(move |i: u32| Carried(i, deadline)),
        );
    }
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

    // Every call turned away: one thread, then two threads on one bulkhead.
    let closed = BulkheadLayer::new(1);
    closed.handle().set_limit(0);
    looped(
        c,
        "bulkhead/rejecting",
        &mut closed.layer(Noop),
        |service, cx, i| reject_once(service, cx, i as u32),
    );
    two_threads_with(
        c,
        "bulkhead_two_threads/rejecting",
        closed.layer(Noop),
        |service, cx, i| reject_once(service, cx, i as u32),
    );
}

criterion_group!(bulkhead, benches);
criterion_main!(bulkhead);
