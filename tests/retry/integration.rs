//! The retry layer with the circuit breaker in one `ServiceBuilder`, and as the client of an
//! upstream inside an axum handler.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
use seawall::core::{Event, EventKind, GiveUpReason};
use seawall::http::HttpClassifier;
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::RetryLayer;
use seawall::ServiceBuilderExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn retries_stop_at_an_open_breaker() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let gave_up = Arc::new(Mutex::new(Vec::new()));
    let sink = gave_up.clone();
    let mut service = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_retries(5)
                .backoff(Backoff::constant(Duration::from_millis(10)))
                // An open breaker will not answer differently in 10 ms: do not retry it.
                .retry_if(|_: &u32, result: &Result<u32, BoxError>| {
                    !matches!(result, Err(e) if e.is::<Open>())
                })
                .observer(move |event: &Event<'_>| {
                    if let EventKind::GaveUp { attempts, reason } = event.kind {
                        sink.lock().unwrap().push((attempts, reason));
                    }
                })
                .build()
                .unwrap(),
        )
        .circuit_breaker(
            CircuitBreakerLayer::builder()
                .consecutive_failures(3)
                .build()
                .unwrap(),
        )
        .service(service_fn(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>("backend down") }
        }));
    let err = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<Open>(), "{err}");
    // Three failures opened the breaker; the fourth attempt was rejected and not retried.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(*gave_up.lock().unwrap(), [(4, GiveUpReason::NotRetryable)]);
}

#[tokio::test(start_paused = true)]
async fn an_axum_handler_calls_a_flaky_upstream_through_the_retry_layer() {
    // The upstream answers 503 twice, then 200.
    let upstream_calls = Arc::new(AtomicU32::new(0));
    let counter = upstream_calls.clone();
    let upstream = Router::new().route(
        "/price",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "busy".to_string())
                } else {
                    (StatusCode::OK, "42".to_string())
                }
            }
        }),
    );
    // The client: retries on 5xx with the HTTP classifier; the request body is a `String`, which
    // can be replayed.
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .classify(HttpClassifier::default())
                .backoff(Backoff::exponential(Duration::from_millis(50)).jitter(Jitter::Equal))
                .build()
                .unwrap(),
        )
        .service(upstream);
    type Client = tower::util::BoxCloneSyncService<
        Request<String>,
        axum::response::Response,
        std::convert::Infallible,
    >;
    let client: Client = tower::util::BoxCloneSyncService::new(client);
    let app = Router::new()
        .route(
            "/quote",
            get(|State(client): State<Client>| async move {
                let request = Request::get("/price").body(String::new()).unwrap();
                let response = client.oneshot(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, format!("quote: {}", String::from_utf8_lossy(&body)))
            }),
        )
        .with_state(client);

    let response = app
        .oneshot(
            Request::get("/quote")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "quote: 42");
    assert_eq!(upstream_calls.load(Ordering::SeqCst), 3);
}
