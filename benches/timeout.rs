//! Per-call cost of seawall's `Timeout` beside a bare service and tower's `Timeout`, and what reading
//! and writing a deadline in the request adds.
//!
//! Every call is driven by hand with a no-op waker inside a current-thread tokio runtime (timers
//! need one): `poll_ready`, `call`, poll the future once. The inner service is always ready and
//! answers at once, so the timer is created but never registered, as in real calls that answer
//! before their first pending poll.
//!
//! Run: `cargo bench --bench timeout`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use seawall::core::{Deadline, DeadlineCarrier};
use seawall::timeout::TimeoutLayer;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{Layer, Service};

#[path = "support/mod.rs"]
mod support;

use support::call_once;

/// A service that is always ready and answers at once, whatever the request.
#[derive(Clone, Copy)]
struct Noop;

impl<R> Service<R> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        black_box(&req);
        ready(Ok(()))
    }
}

/// A request type of a user's own that carries a deadline in a field.
#[derive(Clone, Copy, Default)]
struct Query {
    deadline: Option<Deadline>,
}

impl DeadlineCarrier for Query {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

fn bench<S, R>(c: &mut Criterion, name: &str, mut service: S, request: impl Fn() -> R)
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter(|| call_once(&mut service, &mut cx, request()))
    });
}

fn timeout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let second = Duration::from_secs(1);

    bench(c, "timeout/bare", Noop, Query::default);
    bench(
        c,
        "timeout/tower",
        tower::timeout::TimeoutLayer::new(second).layer(Noop),
        Query::default,
    );
    bench(
        c,
        "timeout/seawall",
        TimeoutLayer::new(second).layer(Noop),
        Query::default,
    );
    // Propagating: reads the request's deadline (none) and writes the layer's own.
    bench(
        c,
        "timeout/seawall_propagate_write",
        TimeoutLayer::new(second).propagate().layer(Noop),
        Query::default,
    );
    // Propagating: reads the request's deadline, which is earlier and wins; nothing is written.
    // (Both far enough out that the bench never reaches them.)
    let early = Deadline::after(Duration::from_secs(3600 * 24));
    bench(
        c,
        "timeout/seawall_propagate_read",
        TimeoutLayer::new(Duration::from_secs(3600 * 24 * 365))
            .propagate()
            .layer(Noop),
        move || Query {
            deadline: Some(early),
        },
    );
    // The same with `http::Request`, whose extensions box what they hold: the first deadline put
    // in a request allocates. Each group starts with the bare service, which pays for making the
    // requests, so the layer's cost is the difference.
    bench(c, "timeout/http/bare", Noop, || http::Request::new(()));
    bench(
        c,
        "timeout/http/tower",
        tower::timeout::TimeoutLayer::new(second).layer(Noop),
        || http::Request::new(()),
    );
    bench(
        c,
        "timeout/http/seawall",
        TimeoutLayer::new(second).layer(Noop),
        || http::Request::new(()),
    );
    bench(
        c,
        "timeout/http/seawall_propagate_write",
        TimeoutLayer::new(second).propagate().layer(Noop),
        || http::Request::new(()),
    );
    // A request that already carries a (later) deadline: read, then overwritten in place.
    let far = Deadline::after(Duration::from_secs(3600 * 24 * 365 * 2));
    let with_deadline = move || {
        let mut req = http::Request::new(());
        req.set_deadline(far);
        req
    };
    bench(c, "timeout/http_with_deadline/bare", Noop, with_deadline);
    bench(
        c,
        "timeout/http_with_deadline/tower",
        tower::timeout::TimeoutLayer::new(second).layer(Noop),
        with_deadline,
    );
    bench(
        c,
        "timeout/http_with_deadline/seawall",
        TimeoutLayer::new(second).layer(Noop),
        with_deadline,
    );
    bench(
        c,
        "timeout/http_with_deadline/seawall_propagate",
        TimeoutLayer::new(second).propagate().layer(Noop),
        with_deadline,
    );
}

criterion_group!(benches, timeout);
criterion_main!(benches);
