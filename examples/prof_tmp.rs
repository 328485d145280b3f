use seawall::circuit_breaker::CircuitBreakerLayer;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use tower::{Layer, Service};
#[derive(Clone, Copy)]
struct Noop;
impl Service<u32> for Noop {
    type Response = u32; type Error = Infallible; type Future = Ready<Result<u32, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> { Poll::Ready(Ok(())) }
    fn call(&mut self, req: u32) -> Self::Future { ready(Ok(req)) }
}
fn run<S: Service<u32>>(name: &str, mut s: S) {
    let mut cx = Context::from_waker(Waker::noop());
    let t = std::time::Instant::now();
    let n = 100_000_000u32;
    for i in 0..n {
        match s.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            _ => panic!("service not ready"),
        }
        let f = pin!(s.call(i));
        match f.poll(&mut cx) {
            Poll::Ready(r) => {
                std::hint::black_box(r.ok().expect("call failed"));
            }
            Poll::Pending => panic!("service did not answer at once"),
        }
    }
    println!("{name}: {:.2} ns/call", t.elapsed().as_nanos() as f64 / n as f64);
}
fn main() {
    for _ in 0..2 {
    run("breaker", CircuitBreakerLayer::builder().count_window(100).build().unwrap().layer(Noop));
    run("limit", tower::limit::ConcurrencyLimitLayer::new(1000000).layer(Noop));
    run("bare", Noop);
    }
}
