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

/// An upload backend: reads the body whole, then answers 503 after 5 ms.
#[derive(Clone)]
struct ReadsThenFails;

impl Service<Request<Buffered<Full<Bytes>>>> for ReadsThenFails {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Buffered<Full<Bytes>>>) -> Self::Future {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            tokio::time::sleep(5 * MS).await;
            Ok(Response::builder().status(503).body(String::new())?)
        })
    }
}

/// R3: a first attempt that fails after its body outgrew the retry buffer (it can never be
/// replayed) is returned only a delay later, with nothing in flight.
#[tokio::test(start_paused = true)]
async fn a_failure_whose_body_is_lost_is_returned_at_once() {
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let body = Buffered::new(Full::new(Bytes::from_static(&[0; 20])), 4);
    let start = Instant::now();
    let response = layer
        .layer(ReadsThenFails)
        .oneshot(Request::put("/blob").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), 5 * MS, "held until the delay passed");
}

/// A backend whose first call (per service made) takes a second and whose others take 10 ms.
#[derive(Clone, Default)]
struct SlowFirst {
    n: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Service<()> for SlowFirst {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.total.fetch_add(1, SeqCst);
        let ms = if self.n.fetch_add(1, SeqCst) == 0 {
            1000
        } else {
            10
        };
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        })
    }
}

/// R4: with a token bucket, a hedge that wins puts its whole cost back, so hedges that win are
/// free and the bucket bounds nothing: a bucket with room for two hedges pays for twenty.
#[tokio::test(start_paused = true)]
async fn a_token_bucket_bounds_hedges_that_win() {
    let budget = Budget::token_bucket(10, 5, 0).unwrap();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.clone())
        .build()
        .unwrap();
    let total = Arc::new(AtomicUsize::new(0));
    for _ in 0..20 {
        let backend = SlowFirst {
            n: Arc::default(),
            total: total.clone(),
        };
        layer.layer(backend).oneshot(()).await.unwrap();
    }
    let hedges = total.load(SeqCst) - 20;
    assert!(hedges <= 2, "{hedges} hedges from a bucket of 2");
}

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

/// A policy that copies a request once (before the first attempt) and no more.
#[derive(Clone, Default)]
struct CopiesOnce(Arc<AtomicUsize>);

impl seawall::retry::policy::Policy<(), (), BoxError> for CopiesOnce {
    fn replay(&self, _: &()) -> Option<()> {
        (self.0.fetch_add(1, SeqCst) == 0).then_some(())
    }
}

/// R6 (nit): the budget is withdrawn before the copy is made; a copy refused then costs a hedge
/// that was never sent.
#[tokio::test(start_paused = true)]
async fn a_hedge_not_sent_for_want_of_a_copy_costs_nothing() {
    let budget = Budget::token_bucket(5, 5, 0).unwrap();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.clone())
        .policy(CopiesOnce::default())
        .build()
        .unwrap();
    let backend = SlowFirst::default();
    layer.layer(backend.clone()).oneshot(()).await.unwrap();
    assert_eq!(backend.total.load(SeqCst), 1, "no hedge was sent");
    assert_eq!(budget.available(), 1.0, "and none was paid for");
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
