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
//! `pool/two_threads/*` drive two threads at once, each through its own clone of one pool (tower:
//! a balancer of its own per thread), to show what sharing the endpoints' state costs;
//! `pool/seawall_refused/*` is a fail-fast pool refusing calls with every endpoint ejected.
//!
//! Run: `cargo bench --all-features --bench pool`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::pool::Pool;
use std::future::Future;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{looped, reject_once, single, two_threads, Noop};

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

type TowerP2c = tower::balance::p2c::Balance<
    tower::load::PeakEwmaDiscover<tower::discover::ServiceList<Vec<Noop>>>,
    u32,
>;

/// tower's p2c for the two-thread rows. `Balance` is not `Clone` (sharing one takes a `Buffer`:
/// a channel and a task), so each thread gets its own, over its own endpoints: nothing shared,
/// the floor a pool whose clones share their endpoints' state is compared with.
struct OwnP2c(usize, TowerP2c);

impl Clone for OwnP2c {
    fn clone(&self) -> Self {
        OwnP2c(self.0, tower_p2c(self.0))
    }
}

impl tower::Service<u32> for OwnP2c {
    type Response = u32;
    type Error = tower::BoxError;
    type Future = <TowerP2c as tower::Service<u32>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.1.poll_ready(cx)
    }

    fn call(&mut self, req: u32) -> Self::Future {
        self.1.call(req)
    }
}

/// A fail-fast pool over `n` endpoints that always fail, every one ejected (for an hour): each
/// call is refused with `NoHealthyEndpoint`.
fn refusing_pool(n: usize) -> impl tower::Service<u32, Error = tower::BoxError> {
    use std::task::{Context, Poll, Waker};
    use tower::Service;
    let failing = tower::service_fn(|_: u32| {
        std::future::ready(Err::<u32, _>(std::io::Error::other("down")))
    });
    let mut pool = Pool::builder()
        .consecutive_local_failures(1)
        .no_failure_penalty()
        .max_ejection_percent(100.0)
        .ejection_time(Duration::from_secs(3600))
        .ejection_backoff(2.0, Duration::from_secs(7200))
        .fail_fast()
        .seed(1)
        .build(vec![failing; n])
        .unwrap();
    let handle = pool.handle();
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0.. {
        if handle.ejected() == n {
            break;
        }
        assert!(i < 100 * n, "the endpoints were not all ejected");
        if let Poll::Ready(Ok(())) = pool.poll_ready(&mut cx) {
            let _ = std::pin::pin!(pool.call(0)).poll(&mut cx);
        }
    }
    pool
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
    // Two threads calling at once, each through its own clone of one pool (which share every
    // endpoint's state), beside tower's p2c with a balancer of its own per thread.
    for n in [3, 100] {
        two_threads(c, &format!("pool/two_threads/seawall/{n}"), seawall_pool(n));
        two_threads(
            c,
            &format!("pool/two_threads/tower_p2c_peak_ewma_per_thread/{n}"),
            OwnP2c(n, tower_p2c(n)),
        );
    }
    // A fail-fast pool with every endpoint ejected: a refusal costs the same for 3 and 100.
    for n in [3, 100] {
        looped(
            c,
            &format!("pool/seawall_refused/{n}/loop"),
            &mut refusing_pool(n),
            |pool, cx, i| reject_once(pool, cx, i as u32),
        );
    }
}

criterion_group!(pool, benches);
criterion_main!(pool);
