//! Rate limits under axum, over loopback: one limit for every connection's clone of the service.

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use seawall::limit::error::RateLimited;
use seawall::limit::rate::{KeyedRateLimitLayer, ManualClock, Quota, RateLimitLayer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::{BoxError, ServiceBuilder};

/// 429 with `Retry-After` for a limited call, 500 for anything else.
async fn handle_error(err: BoxError) -> axum::response::Response {
    match err.downcast_ref::<RateLimited>() {
        Some(limited) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", limited.retry_after_secs().to_string())],
        )
            .into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves `app` on a loopback port; returns its address.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends `count` requests to `addr`, at most 50 at once, each on a connection of its own (so each
/// is served by a fresh clone of the router's services); returns how many got 200.
async fn burst(addr: std::net::SocketAddr, count: usize, client_key: Option<&str>) -> usize {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<http_body_util::Empty<axum::body::Bytes>>();
    let open = Arc::new(Semaphore::new(50));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let client = client.clone();
        let permit = open.clone().acquire_owned().await.unwrap();
        let mut request = http::Request::get(format!("http://{addr}/"));
        if let Some(key) = client_key {
            request = request.header("x-client", key);
        }
        let request = request.body(http_body_util::Empty::new()).unwrap();
        calls.spawn(async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let _ = response.into_body().collect().await.unwrap();
            drop(permit);
            match status {
                StatusCode::OK => true,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert!(retry_after.is_some(), "a 429 says when to come back");
                    false
                }
                other => panic!("unexpected {other}"),
            }
        });
    }
    let mut ok = 0;
    while let Some(passed) = calls.join_next().await {
        ok += passed.unwrap() as usize;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_limited_to_5_a_second_lets_through_5_a_second_whatever_the_connections() {
    // The limiter's time is moved by hand, a second per 500 requests: three seconds of traffic
    // without sleeping.
    let clock = ManualClock::new();
    let limit = RateLimitLayer::builder(Quota::per_second(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .layer(limit),
    );
    let addr = serve(app).await;
    let mut passed = 0;
    for _ in 0..3 {
        passed += burst(addr, 500, None).await;
        clock.advance(Duration::from_secs(1));
    }
    // At most 5 × 3 + the burst of 5; here exactly the burst, then 5 for each second that passed.
    assert!(passed <= 5 * 3 + 5);
    assert_eq!(passed, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_key_gets_its_own_limit_under_axum() {
    let clock = ManualClock::new();
    let limit = KeyedRateLimitLayer::builder(Quota::per_second(5), |req: &http::Request<_>| {
        req.headers().get("x-client").cloned()
    })
    .clock(clock.clone())
    .build()
    .unwrap();
    let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .layer(limit),
    );
    let addr = serve(app).await;
    assert_eq!(burst(addr, 100, Some("alpha")).await, 5);
    assert_eq!(burst(addr, 100, Some("beta")).await, 5);
    // Requests without the header are not limited.
    assert_eq!(burst(addr, 100, None).await, 100);
    clock.advance(Duration::from_secs(1));
    assert_eq!(burst(addr, 100, Some("alpha")).await, 5);
}

/// A keyed limit given to a route sits beneath every layer given to the router after it: with
/// the adaptive limiter on the router, each order the per-key limit refuses was first admitted
/// (and timed as a fast success) by the adaptive limiter. Given to the router above the adaptive
/// limiter, as examples/axum_service.rs now does, with a key only for the route, the refused
/// order never reaches it.
#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn a_per_key_limit_on_a_route_sits_beneath_the_routers_adaptive_limiter() {
    use axum::body::Body;
    use axum::routing::post;
    use http::{Method, Request};
    use seawall::core::{Event, EventKind};
    use seawall::limit::algorithm::Fixed;
    use seawall::limit::AdaptiveLimitLayer;
    use std::sync::Mutex;
    use tower::ServiceExt;
    let key = |req: &Request<Body>| {
        (req.method() == Method::POST && req.uri().path() == "/orders")
            .then(|| req.headers().get("x-api-key").cloned())
            .flatten()
    };
    for on_the_route in [true, false] {
        let permitted = Arc::new(Mutex::new(0));
        let count = permitted.clone();
        let adaptive = AdaptiveLimitLayer::builder(Fixed(10))
            .observer(move |e: &Event<'_>| {
                if e.kind == EventKind::Permitted {
                    *count.lock().unwrap() += 1;
                }
            })
            .build()
            .unwrap();
        let per_key = KeyedRateLimitLayer::builder(Quota::per_minute(1), key)
            .build()
            .unwrap();
        let order = post(|| async { (StatusCode::CREATED, "ordered") });
        let app = match on_the_route {
            true => Router::new()
                .route(
                    "/orders",
                    order.layer(
                        ServiceBuilder::new()
                            .layer(seawall::axum::HandleErrorsLayer::new())
                            .layer(per_key),
                    ),
                )
                .layer(
                    ServiceBuilder::new()
                        .layer(seawall::axum::HandleErrorsLayer::new())
                        .layer(adaptive),
                ),
            false => Router::new().route("/orders", order).layer(
                ServiceBuilder::new()
                    .layer(seawall::axum::HandleErrorsLayer::new())
                    .layer(per_key)
                    .layer(adaptive),
            ),
        };
        let order = || {
            Request::post("/orders")
                .header("x-api-key", "alice")
                .body(Body::empty())
                .unwrap()
        };
        let first = app.clone().oneshot(order()).await.unwrap().status();
        let second = app.clone().oneshot(order()).await.unwrap().status();
        assert_eq!(first, StatusCode::CREATED);
        assert_eq!(second, StatusCode::TOO_MANY_REQUESTS);
        let permitted = *permitted.lock().unwrap();
        match on_the_route {
            true => assert_eq!(permitted, 2, "the refused order went through the limiter"),
            false => assert_eq!(
                permitted, 1,
                "only the order taken went through the limiter"
            ),
        }
    }
}
