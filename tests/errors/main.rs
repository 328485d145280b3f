//! Every seawall rejection found in an error's chain, and answered as axum responses and gRPC
//! statuses.

mod axum_responses;
mod chain;
mod tonic_client;
mod tonic_loopback;
mod tonic_statuses;

use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::limit::{LoadShedLayer, ThrottleLayer};
use seawall::timeout::TimeoutLayer;
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A real error of each kind seawall rejects with, made by its layer; paused time.
pub async fn every_rejection() -> Vec<(&'static str, BoxError)> {
    let ok = || service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    let mut out = Vec::new();

    let mut breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_millis(1500))
        .open_jitter(0.0)
        .build()
        .unwrap()
        .layer(service_fn(|_: ()| async {
            Err::<(), BoxError>("down".into())
        }));
    let _ = breaker.ready().await.unwrap().call(()).await;
    out.push((
        "circuit_open",
        breaker.ready().await.unwrap().call(()).await.unwrap_err(),
    ));

    let mut bulkhead = BulkheadLayer::new(1).layer(service_fn(|_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    }));
    let held = bulkhead.ready().await.unwrap().call(());
    out.push((
        "bulkhead_full",
        bulkhead.ready().await.unwrap().call(()).await.unwrap_err(),
    ));
    drop(held);

    let queueing = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(1)
        .build()
        .unwrap();
    let mut held = queueing.layer(ok());
    ServiceExt::<()>::ready(&mut held).await.unwrap();
    let mut shed = LoadShedLayer::new().layer(queueing.layer(ok()));
    out.push((
        "overloaded",
        shed.ready().await.unwrap().call(()).await.unwrap_err(),
    ));
    drop(held);

    let mut throttled = ThrottleLayer::builder()
        .seed(1)
        .build()
        .unwrap()
        .layer(service_fn(|_: ()| async {
            Err::<(), BoxError>("refused".into())
        }));
    loop {
        let err = throttled.ready().await.unwrap().call(()).await.unwrap_err();
        if seawall::error::kind(&*err).is_some() {
            out.push(("throttled", err));
            break;
        }
    }

    let mut limited = RateLimitLayer::new(Quota::per_second(1)).layer(ok());
    limited.ready().await.unwrap().call(()).await.unwrap();
    out.push((
        "rate_limited",
        limited.ready().await.unwrap().call(()).await.unwrap_err(),
    ));

    let mut slow = TimeoutLayer::new(Duration::from_millis(10)).layer(service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(())
    }));
    out.push((
        "timed_out",
        slow.ready().await.unwrap().call(()).await.unwrap_err(),
    ));

    out.push((
        "retry_budget_exhausted",
        exhausted_retry()
            .ready()
            .await
            .unwrap()
            .call(())
            .await
            .unwrap_err(),
    ));
    out
}

/// A retry layer with an empty budget that reports it, over a service that always fails.
pub fn exhausted_retry<Req: Clone + Send + 'static>(
) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Send {
    use seawall::retry::budget::Budget;
    use seawall::retry::RetryLayer;
    RetryLayer::builder()
        .budget(Budget::ratio(0.0, 0, Duration::from_secs(10)).unwrap())
        .report_budget()
        .build()
        .unwrap()
        .layer(service_fn(|_: Req| async {
            Err::<(), BoxError>("down".into())
        }))
}

/// An error of an application that wraps another one, as client libraries do.
#[derive(Debug)]
pub struct Wrapped(pub BoxError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request failed")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
