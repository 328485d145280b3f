//! Review r23: tests that confirm suspected defects (expected to FAIL on 98918d9).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall::hedge::HedgeLayer;
use seawall::retry::budget::Budget;
use seawall::retry::buffered::Buffered;
use seawall::retry::RetryLayer;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A cache beneath the hedge layer: a hit (request 0) answers at its first poll and never
/// reaches the origin; a miss (request 1, and its hedges, which miss too) goes to the origin and
/// takes 20 to 40 ms.
#[derive(Clone, Default)]
struct CacheOverOrigin {
    origin: Arc<AtomicUsize>,
}

impl Service<u32> for CacheOverOrigin {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        if req == 0 {
            return Box::pin(std::future::ready(Ok(())));
        }
        let n = self.origin.fetch_add(1, SeqCst) as u64;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_micros(20_000 + (n * 7919) % 20_000)).await;
            Ok(())
        })
    }
}

/// R5 (risk, figures): calls answered at their first poll (97 % hits) set the 95th percentile
/// to the 1 ms floor and fund the budget, so every miss is hedged: the origin sees twice its
/// load, not 1.05 times.
#[tokio::test(start_paused = true)]
async fn instant_answers_do_not_double_the_load_on_what_waits() {
    let layer = HedgeLayer::new();
    let backend = CacheOverOrigin::default();
    let start = Instant::now();
    let mut misses = 0u64;
    let mut n = 0u64;
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        n += 1;
        let miss = n % 33 == 0; // 3 %
        misses += u64::from(miss);
        let service = layer.layer(backend.clone());
        tasks.push(tokio::spawn(service.oneshot(u32::from(miss))));
        tokio::time::sleep(Duration::from_micros(500)).await; // 2,000 a second
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let origin = backend.origin.load(SeqCst) as f64;
    println!(
        "delay {:?}; origin calls {origin} for {misses} misses ({:.2}x)",
        layer.delay(),
        origin / misses as f64
    );
    assert!(origin <= 1.06 * misses as f64);
}

/// First call: 503 after 10 ms; the others: 200 after a second.
#[derive(Clone, Default)]
struct FailsThenSlow(Arc<AtomicUsize>);

impl Service<Request<String>> for FailsThenSlow {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        let first = self.0.fetch_add(1, SeqCst) == 0;
        Box::pin(async move {
            let (ms, status) = if first { (10, 503) } else { (1000, 200) };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::builder().status(status).body(String::new())?)
        })
    }
}

#[cfg(feature = "timeout")]
/// R7 (risk): the same stack with retry instead of hedge answers the 503 in hand at the
/// deadline; the hedge layer lets the timeout above replace it with `Elapsed`.
#[tokio::test(start_paused = true)]
async fn at_the_deadline_the_primarys_failure_in_hand_is_the_answer() {
    use seawall::timeout::TimeoutLayer;
    let hedge = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let retry = RetryLayer::http().build().unwrap();
    let get = || Request::get("/items").body(String::new()).unwrap();
    let retried = ServiceBuilder::new()
        .layer(TimeoutLayer::new(100 * MS).propagate())
        .layer(retry)
        .service(FailsThenSlow::default())
        .oneshot(get())
        .await;
    let hedged = ServiceBuilder::new()
        .layer(TimeoutLayer::new(100 * MS).propagate())
        .layer(hedge)
        .service(FailsThenSlow::default())
        .oneshot(get())
        .await;
    println!(
        "retry: {:?}; hedge: {:?}",
        retried.as_ref().map(|r| r.status()),
        hedged.as_ref().map(|r| r.status())
    );
    assert_eq!(
        hedged.map(|r| r.status()).ok(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
}
