//! Tests of the fleet-wide rate limiter: over the in-memory store with paused time (`memory`),
//! and over a real Redis server on loopback (`redis`, feature `redis`).
#![cfg(feature = "fleet")]

mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod server;

use seawall::limit::error::RateLimited;
use seawall::limit::fleet::{Grant, Store, Take};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};
use tower::{BoxError, Service, ServiceExt};

/// A request: its key, none if empty. (A type without lifetimes, so that tasks calling a service
/// of it can be spawned.)
#[derive(Clone, Copy, Debug)]
pub struct Req(pub &'static str);

pub type KeyFn = fn(&Req) -> Option<&'static str>;

pub const KEY: KeyFn = |req| (!req.0.is_empty()).then_some(req.0);

pub async fn ok(_: Req) -> Result<(), std::io::Error> {
    Ok(())
}

/// One call through `service`: whether it was admitted. It must end within a second, admitted
/// or failed with `RateLimited`.
pub async fn admitted<S>(service: &mut S, key: &'static str) -> bool
where
    S: Service<Req, Response = (), Error = BoxError>,
{
    let call = async { service.ready().await.unwrap().call(Req(key)).await };
    match timeout(Duration::from_secs(1), call)
        .await
        .expect("a call hung")
    {
        Ok(()) => true,
        Err(e) => {
            assert!(e.is::<RateLimited>(), "unexpected error: {e}");
            false
        }
    }
}

/// Calls `key` through each instance's services, each service from its own task, waiting 5 to
/// 15 ms at random between calls, for `run`; returns how many calls each instance admitted.
/// (Callers on an exact period would keep their order after every slot the store frees, so one
/// instance would ask first, and be served, every time; no real load is like that.)
pub async fn load<S>(instances: Vec<Vec<S>>, key: &'static str, run: Duration) -> Vec<u64>
where
    S: Service<Req, Response = (), Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    let end = Instant::now() + run;
    let counts: Vec<Arc<AtomicU64>> = instances.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (services, count) in instances.into_iter().zip(&counts) {
        for mut service in services {
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    if admitted(&mut service, key).await {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    sleep(Duration::from_micros(rand::random_range(5_000..15_000))).await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// How a [`Flaky`] store behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Up = 0,
    Failing = 1,
    Hanging = 2,
}

/// A store that passes takes to another, fails them, or never answers, as told.
#[derive(Clone)]
pub struct Flaky<St> {
    pub inner: St,
    mode: Arc<AtomicU8>,
}

impl<St> Flaky<St> {
    pub fn new(inner: St) -> Self {
        Flaky {
            inner,
            mode: Arc::new(AtomicU8::new(Mode::Up as u8)),
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl<St: Store> Service<Take> for Flaky<St> {
    type Response = Grant;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Grant, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, take: Take) -> Self::Future {
        match self.mode.load(Ordering::SeqCst) {
            0 => Box::pin(self.inner.call(take)),
            1 => Box::pin(async { Err("store down".into()) }),
            _ => Box::pin(std::future::pending()),
        }
    }
}
