//! Per-call cost of the fallback layer on the happy path (the call succeeds), beside a bare
//! service.
//!
//! Run: `cargo bench --bench fallback`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::fallback::{AlternateLayer, FallbackLayer, StaleIfErrorLayer, Trigger};
use tower::Layer;

#[path = "support/mod.rs"]
mod support;

use support::{single, Noop};

fn fallback(c: &mut Criterion) {
    single(c, "fallback/bare", Noop);
    single(
        c,
        "fallback/from_fn",
        FallbackLayer::from_fn(|_: Trigger<'_, u32>| 0).layer(Noop),
    );
    single(c, "fallback/value", FallbackLayer::value(0u32).layer(Noop));
    single(
        c,
        "fallback/with_request",
        FallbackLayer::with_request(|req: &u32| *req, |req: u32, _: Trigger<'_, u32>| req)
            .layer(Noop),
    );
    // The alternate service is not called on the happy path; each call clones the request and a
    // reference to the layer's shared state.
    single(
        c,
        "fallback/alternate",
        AlternateLayer::builder(Noop).build().unwrap().layer(Noop),
    );
    // Stale-if-error stores every good answer: a clock read, a lock and a clone per call.
    single(
        c,
        "fallback/stale_if_error_1000_keys",
        StaleIfErrorLayer::builder(|req: &u32| Some(*req % 1_000), |_: &mut u32, _| {})
            .build()
            .unwrap()
            .layer(Noop),
    );
}

criterion_group!(benches, fallback);
criterion_main!(benches);
