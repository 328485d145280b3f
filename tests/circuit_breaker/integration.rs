//! The breaker under axum (`Router::layer`, `HandleErrorLayer`) and in a plain `ServiceBuilder`.

use axum::error_handling::HandleErrorLayer;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
use seawall::core::CircuitState;
use seawall::http::HttpClassifier;
use seawall::ServiceBuilderExt;
use std::time::Duration;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// Maps the breaker's rejection to 503 with `Retry-After`, anything else to 500.
async fn handle_error(err: BoxError) -> axum::response::Response {
    match err.downcast_ref::<Open>() {
        Some(open) => {
            let wait = open.retry_after().map_or(1, |d| d.as_secs().max(1));
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", wait.to_string())],
                "circuit open",
            )
                .into_response()
        }
        None => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

fn app(breaker: CircuitBreakerLayer<HttpClassifier>) -> Router {
    Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .circuit_breaker(breaker),
        )
}

fn breaker() -> CircuitBreakerLayer<HttpClassifier> {
    CircuitBreakerLayer::builder()
        .classify(HttpClassifier::default())
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(10))
        .open_jitter(0.0)
        .half_open_probes(1)
        .build()
        .unwrap()
}

async fn get_status(app: &Router, path: &str) -> (StatusCode, Option<String>) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status(), retry)
}

#[tokio::test(start_paused = true)]
async fn one_breaker_for_every_route_under_router_layer() {
    let breaker = breaker();
    let handle = breaker.handle();
    let app = app(breaker);
    assert_eq!(get_status(&app, "/ok").await.0, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            get_status(&app, "/fail").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "failures on one route trip the one breaker"
    );
    assert_eq!(
        get_status(&app, "/ok").await,
        (StatusCode::SERVICE_UNAVAILABLE, Some("10".to_string())),
        "and the other route is rejected too"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        get_status(&app, "/ok").await.0,
        StatusCode::OK,
        "the probe passes"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn over_loopback_with_many_connections() {
    let breaker = breaker();
    let handle = breaker.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(breaker)).await.unwrap() });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0) // a new connection, so a new service clone, for every request
        .build_http::<http_body_util::Empty<bytes_like::Bytes>>();
    let fetch = |path: &'static str| {
        let client = client.clone();
        async move {
            let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
            let response = client.get(uri).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await.unwrap();
            status
        }
    };
    for _ in 0..3 {
        assert_eq!(fetch("/fail").await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(fetch("/ok").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.state(), CircuitState::Open);
    server.abort();
}

mod bytes_like {
    pub use axum::body::Bytes;
}

#[tokio::test(start_paused = true)]
async fn service_builder_with_handle_error_layer() {
    use axum::body::Body;
    use axum::response::Response;
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            if err.is::<Open>() {
                (StatusCode::SERVICE_UNAVAILABLE, "degraded")
            } else {
                (StatusCode::BAD_GATEWAY, "failed")
            }
        }))
        .circuit_breaker(breaker)
        .service(tower::service_fn(|request: Request<Body>| async move {
            if request.uri().path() == "/down" {
                Err("backend down")
            } else {
                Ok(Response::new(Body::from("fresh")))
            }
        }));
    let status = |path: &'static str| {
        let service = service.clone();
        async move {
            let request = Request::get(path).body(Body::empty()).unwrap();
            service.oneshot(request).await.unwrap().status()
        }
    };
    assert_eq!(status("/up").await, StatusCode::OK);
    assert_eq!(status("/down").await, StatusCode::BAD_GATEWAY);
    assert_eq!(status("/up").await, StatusCode::SERVICE_UNAVAILABLE);
}
