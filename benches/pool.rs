//! Per-call cost of selection and bookkeeping through seawall's endpoint pool, beside tower's
//! `balance::p2c::Balance` over `PeakEwma` endpoints (what the issue asks the pool to match),
//! for 3 and for 100 ready no-op endpoints.
//!
//! Every call is driven by hand with a no-op waker: `poll_ready` (the choice of two endpoints and
//! the chosen one's readiness), `call`, poll the future once (the answer, its time and the
//! endpoint's estimate, window and counters). Every endpoint is always ready and answers at once,
//! so what is measured is the balancer's own work. Both read the same clock
//! (`tokio::time::Instant`, outside a runtime: the system clock), seawall three times per call
//! (choice, start, end), tower's `PeakEwma` twice (start, end) plus once per load read.
//!
//! Run: `cargo bench --all-features --bench pool`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::pool::Pool;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{single, Noop};

/// tower's p2c over peak-EWMA endpoints, with linkerd's defaults (30 ms, 10 s), as
/// tests/pool/main.rs compares with. `Balance` takes its endpoints from discovery at its first
/// `poll_ready`.
fn tower_p2c(
    n: usize,
) -> tower::balance::p2c::Balance<
    tower::load::PeakEwmaDiscover<tower::discover::ServiceList<Vec<Noop>>>,
    u32,
> {
    let discover = tower::load::PeakEwmaDiscover::new(
        tower::discover::ServiceList::new(vec![Noop; n]),
        Duration::from_millis(30),
        Duration::from_secs(10),
        tower::load::CompleteOnResponse::default(),
    );
    tower::balance::p2c::Balance::new(discover)
}

/// seawall's pool with its defaults (every default ejection rule on).
fn seawall_pool(n: usize) -> Pool<usize, Noop> {
    Pool::builder().seed(1).build(vec![Noop; n]).unwrap()
}

fn benches(c: &mut Criterion) {
    single(c, "pool/bare", Noop);
    c.bench_function("pool/clock_read", |b| b.iter(tokio::time::Instant::now));
    for n in [3, 100] {
        single(c, &format!("pool/seawall/{n}"), seawall_pool(n));
        single(c, &format!("pool/tower_p2c_peak_ewma/{n}"), tower_p2c(n));
    }
}

criterion_group!(pool, benches);
criterion_main!(pool);
