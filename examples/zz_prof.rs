use seawall::circuit_breaker::CircuitBreakerLayer;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use tower::{Layer, Service};
#[derive(Clone, Copy)]
struct Noop;
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
#[inline(never)]
fn one<S: Service<u32>>(s: &mut S, cx: &mut Context<'_>, i: u32)
where
    S::Error: std::fmt::Debug,
{
    match s.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!(),
    }
    let f = pin!(s.call(i));
    match f.poll(cx) {
        Poll::Ready(r) => {
            std::hint::black_box(r.expect("x"));
        }
        _ => panic!(),
    }
}
fn main() {
    let n: u32 = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut s = CircuitBreakerLayer::builder()
        .count_window(100)
        .build()
        .unwrap()
        .layer(Noop);
    let mut cx = Context::from_waker(Waker::noop());
    let t = std::time::Instant::now();
    for i in 0..n {
        one(&mut s, &mut cx, i);
    }
    eprintln!("{:.2} ns/call", t.elapsed().as_nanos() as f64 / n as f64);
}
