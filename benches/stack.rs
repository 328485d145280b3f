//! Per-call cost of the standard client and server stacks on the happy path (the first attempt
//! succeeds), beside a bare service.
//!
//! Run: `cargo bench --bench stack`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::core::{Deadline, DeadlineCarrier};
use seawall::limit::rate::Quota;
use seawall::stack::{ClientStack, ServerStack};
use std::convert::Infallible;
use tower::{Layer, ServiceExt};

#[path = "support/mod.rs"]
mod support;

use support::{single, Noop};

/// A request that carries its deadline in a field.
#[derive(Clone)]
struct Carried(u32, Option<Deadline>);

impl DeadlineCarrier for Carried {
    fn deadline(&self) -> Option<Deadline> {
        self.1
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.1 = Some(deadline);
    }
}

fn stack(c: &mut Criterion) {
    // A runtime for the timeouts' timers; the calls never wait on them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    single(c, "stack/bare", Noop);
    // The default stack propagates deadlines, so its requests carry one.
    let backend = tower::service_fn(|req: Carried| std::future::ready(Ok::<_, Infallible>(req.0)));
    single(
        c,
        "stack/client_standard",
        ClientStack::new()
            .layer(backend)
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
}

criterion_group!(benches, stack);
criterion_main!(benches);
