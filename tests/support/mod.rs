//! Helpers shared by the test binaries.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Service, ServiceExt};

/// The error of [`Backend`]: a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fail;

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("backend failed")
    }
}

impl std::error::Error for Fail {}

/// What a [`Backend`] call does: wait `delay`, then answer `result`.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub result: Result<u32, Fail>,
    pub delay: Duration,
}

impl Call {
    pub fn ok() -> Self {
        Call {
            result: Ok(1),
            delay: Duration::ZERO,
        }
    }
    pub fn fail() -> Self {
        Call {
            result: Err(Fail),
            delay: Duration::ZERO,
        }
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A backend that does what each request says (with tokio's clock, so paused time applies).
#[derive(Clone, Copy, Debug, Default)]
pub struct Backend;

impl Service<Call> for Backend {
    type Response = u32;
    type Error = Fail;
    type Future = Pin<Box<dyn Future<Output = Result<u32, Fail>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Fail>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        Box::pin(async move {
            if !call.delay.is_zero() {
                tokio::time::sleep(call.delay).await;
            }
            call.result
        })
    }
}

/// A service that is always ready and answers at once, without allocating.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Service<u32> for Noop {
    type Response = u32;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

/// A breaker that one failure opens for exactly one second (no jitter), with `probes` half-open
/// probes. Later setters override any of these.
pub fn tripping(probes: u32) -> seawall::circuit_breaker::Builder {
    seawall::circuit_breaker::CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .open_jitter(0.0)
        .half_open_probes(probes)
}

/// Sends a successful call that the breaker must reject, and returns the rejection.
pub async fn rejection<S>(service: &mut S) -> seawall::circuit_breaker::error::Open
where
    S: Service<Call, Response = u32, Error = BoxError>,
{
    let err = service
        .ready()
        .await
        .expect("ready")
        .call(Call::ok())
        .await
        .expect_err("the breaker rejects");
    match err.downcast::<seawall::circuit_breaker::error::Open>() {
        Ok(open) => *open,
        Err(other) => panic!("expected a rejection, got {other}"),
    }
}

/// How a call through a layer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Ok,
    Failed,
    Rejected,
}

/// Sends `call` through `service` and says how it ended; panics on any other error.
pub async fn send<S>(service: &mut S, call: Call) -> Ended
where
    S: Service<Call, Response = u32, Error = BoxError>,
{
    match service.ready().await.expect("ready").call(call).await {
        Ok(_) => Ended::Ok,
        Err(e) if e.is::<Fail>() => Ended::Failed,
        Err(e) if e.is::<seawall::circuit_breaker::error::Open>() => Ended::Rejected,
        Err(e) => panic!("unexpected error: {e}"),
    }
}
