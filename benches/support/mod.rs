//! Helpers shared by the benches: a no-op service, a request that carries a deadline, and the
//! ways calls are driven.
#![allow(dead_code)]

use criterion::{black_box, Criterion};
use seawall::core::{Deadline, DeadlineCarrier};
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tower::Service;

/// A service that is always ready and answers at once.
#[derive(Clone, Copy)]
pub struct Noop;

impl Service<u32> for Noop {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        ready(Ok(req))
    }
}

/// A request that carries its deadline in a field.
#[derive(Clone)]
pub struct Carried(pub u32, pub Option<Deadline>);

impl DeadlineCarrier for Carried {
    fn deadline(&self) -> Option<Deadline> {
        self.1
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.1 = Some(deadline);
    }
}

/// [`Noop`] for requests that carry a deadline.
pub fn carried_backend() -> impl Service<
    Carried,
    Response = u32,
    Error = Infallible,
    Future = std::future::Ready<Result<u32, Infallible>>,
> + Clone {
    tower::service_fn(|req: Carried| std::future::ready(Ok::<_, Infallible>(req.0)))
}

/// One call through `service`, which must be ready and answer at once.
#[inline(always)]
pub fn call_once<S, R>(service: &mut S, cx: &mut Context<'_>, req: R)
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("service not ready"),
    }
    let future = pin!(service.call(req));
    match future.poll(cx) {
        Poll::Ready(r) => {
            black_box(r.expect("call failed"));
        }
        Poll::Pending => panic!("service did not answer at once"),
    }
}

/// One call through `service`, which must be ready at once and reject the call at once.
#[inline(always)]
pub fn reject_once<S, R>(service: &mut S, cx: &mut Context<'_>, req: R)
where
    S: Service<R>,
{
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("service not ready"),
    }
    let future = pin!(service.call(req));
    match future.poll(cx) {
        Poll::Ready(Err(e)) => {
            black_box(e);
        }
        Poll::Ready(Ok(_)) => panic!("the call was let through"),
        Poll::Pending => panic!("service did not answer at once"),
    }
}

/// Calls through `service` on this thread: `name` times one call per criterion iteration, and
/// `{name}/loop` a loop of calls timed as a whole.
pub fn single<S>(c: &mut Criterion, name: &str, mut service: S)
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    // Requests count up, so that a classifier can tell them apart.
    let mut i = 0u32;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            call_once(&mut service, &mut cx, i)
        })
    });
    looped(
        c,
        &format!("{name}/loop"),
        &mut service,
        |service, cx, i| call_once(service, cx, i as u32),
    );
}

/// `call` (one call through `state`, given its index) in a loop on this thread, timed as a whole.
pub fn looped<T, F>(c: &mut Criterion, name: &str, state: &mut T, mut call: F)
where
    F: FnMut(&mut T, &mut Context<'_>, u64),
{
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                call(state, &mut cx, i);
            }
            start.elapsed()
        })
    });
}

/// Two threads, each with its own clone of `service`, calling at once. Reports wall time per call
/// per thread.
pub fn two_threads<S>(c: &mut Criterion, name: &str, service: S)
where
    S: Service<u32> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    two_threads_with(c, name, service, |service, cx, i| {
        call_once(service, cx, i as u32)
    });
}

/// Two threads, each with its own clone of `state`, running `call` (one call through its clone,
/// given its index) in a loop at once. Reports wall time per call per thread.
pub fn two_threads_with<T, F>(c: &mut Criterion, name: &str, state: T, call: F)
where
    T: Clone + Send + 'static,
    F: Fn(&mut T, &mut Context<'_>, u64) + Copy + Send + 'static,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(3));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let mut state = state.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let mut cx = Context::from_waker(Waker::noop());
                        barrier.wait();
                        for i in 0..iters {
                            call(&mut state, &mut cx, i);
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for t in threads {
                t.join().unwrap();
            }
            start.elapsed()
        })
    });
}
