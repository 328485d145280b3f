//! Per-call cost of the standard client and server stacks on the happy path (the first attempt
//! succeeds), beside a bare service.
//!
//! Run: `cargo bench --bench stack`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::bulkhead::{Codel, Order};
use seawall::core::Deadline;
use seawall::limit::algorithm::{Gradient2, Windowed};
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::limit::AdaptiveLimitLayer;
use seawall::stack::{ClientStack, ServerStack};
use seawall::timeout::TimeoutLayer;
use std::time::Duration;
use tower::{Layer, ServiceExt};

#[path = "support/mod.rs"]
mod support;

use support::{carried_backend, single, Carried, Noop};

fn stack(c: &mut Criterion) {
    // A runtime for the timeouts' timers; the calls never wait on them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    single(c, "stack/bare", Noop);
    // The default stack propagates deadlines, so its requests carry one.
    single(
        c,
        "stack/client_standard",
        ClientStack::new()
            .layer(carried_backend())
            .map_request(|i: u32| Carried(i, None)),
    );
    single(
        c,
        "stack/client_without_deadlines",
        ClientStack::new().without_deadlines().layer(Noop),
    );
    single(
        c,
        "stack/client_without_timeouts",
        ClientStack::new()
            .without_deadlines()
            .without_total_timeout()
            .without_attempt_timeout()
            .layer(Noop),
    );
    single(
        c,
        "stack/server_standard",
        ServerStack::new()
            .rate_limit(Quota::per_second(1_000_000_000))
            .layer(Noop),
    );
    // The same three layers composed by hand: what the stack's composition itself costs.
    single(
        c,
        "stack/server_parts_by_hand",
        tower::ServiceBuilder::new()
            .layer(RateLimitLayer::new(Quota::per_second(1_000_000_000)))
            .layer(
                AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
                    .queue(128)
                    .codel(Codel::new(
                        Duration::from_millis(5),
                        Duration::from_millis(150),
                    ))
                    .order(Order::Lifo)
                    .build()
                    .unwrap(),
            )
            .layer(TimeoutLayer::new(Duration::from_secs(30)))
            .service(Noop),
    );
    // The server stack whose limiter honours deadlines, beside the default one, both over
    // requests that carry a deadline (and, honouring, one that carries none: no clock read).
    let far = Deadline::after(Duration::from_secs(3600));
    single(
        c,
        "stack/server_standard_carrying_deadlines",
        ServerStack::new()
            .rate_limit(Quota::per_second(1_000_000_000))
            .layer(carried_backend())
            .map_request(move |i: u32| Carried(i, Some(far))),
    );
    for (name, deadline) in [
        ("stack/server_honouring_deadlines", Some(far)),
        ("stack/server_honouring_deadlines_none_carried", None),
    ] {
        single(
            c,
            name,
            ServerStack::new()
                .honour_deadlines()
                .rate_limit(Quota::per_second(1_000_000_000))
                .layer(carried_backend())
                .map_request(move |i: u32| Carried(i, deadline)),
        );
    }
}

criterion_group!(benches, stack);
criterion_main!(benches);
