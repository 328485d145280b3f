//! Per-call cost of the standard client and server stacks on the happy path (the first attempt
//! succeeds), beside a bare service.
//!
//! Run: `cargo bench --bench stack`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::limit::rate::Quota;
use seawall::stack::{ClientStack, ServerStack};
use tower::Layer;

#[path = "support/mod.rs"]
mod support;

use support::{single, Noop};

fn stack(c: &mut Criterion) {
    // A runtime for the timeouts' timers; the calls never wait on them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    single(c, "stack/bare", Noop);
    single(c, "stack/client_standard", ClientStack::new().layer(Noop));
    single(
        c,
        "stack/client_without_timeouts",
        ClientStack::new()
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
}

criterion_group!(benches, stack);
criterion_main!(benches);
