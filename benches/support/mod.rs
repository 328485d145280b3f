//! Helpers shared by the benches: a no-op service and the ways calls are driven.
#![allow(dead_code)]

use criterion::{black_box, Criterion};
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

/// One call through `service`, which must be ready and answer at once.
#[inline(always)]
pub fn call_once<S>(service: &mut S, cx: &mut Context<'_>, req: u32)
where
    S: Service<u32>,
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
    c.bench_function(&format!("{name}/loop"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                call_once(&mut service, &mut cx, i as u32);
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
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(3));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let mut service = service.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let mut cx = Context::from_waker(Waker::noop());
                        barrier.wait();
                        for i in 0..iters {
                            call_once(&mut service, &mut cx, i as u32);
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
