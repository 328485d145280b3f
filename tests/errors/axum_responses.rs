//! `seawall::axum`: a real server on loopback answers every rejection with its status, headers
//! and a body that never leaks an unknown error.

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::limit::{LoadShedLayer, ThrottleLayer};
use seawall::timeout::propagate::ReadDeadlineLayer;
use seawall::timeout::TimeoutLayer;
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, ServiceBuilder, ServiceExt};

type Inner = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

fn answering(result: fn() -> Result<(), BoxError>) -> Inner {
    Inner::new(service_fn(move |_: Request<Body>| async move {
        result().map(|()| Response::new(Body::from("fine")))
    }))
}

fn hanging() -> Inner {
    Inner::new(service_fn(|_: Request<Body>| async {
        std::future::pending::<()>().await;
        Ok(Response::new(Body::empty()))
    }))
}

/// Which of the two ways to answer errors a router uses.
#[derive(Clone, Copy)]
enum Answering {
    /// axum's `HandleErrorLayer` with `seawall::axum::handle_error`.
    HandleError,
    /// `seawall::axum::HandleErrorsLayer`.
    HandleErrors,
}

/// Mounts `layer` over `inner` at `path`, errors answered as `how` says.
fn route<L>(how: Answering, router: Router, path: &str, layer: L, inner: Inner) -> Router
where
    L: Layer<Inner>,
    L::Service: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Body>>>::Future: Send,
{
    match how {
        Answering::HandleError => router.route_service(
            path,
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(seawall::axum::handle_error))
                .service(layer.layer(inner)),
        ),
        Answering::HandleErrors => router.route_service(
            path,
            ServiceBuilder::new()
                .layer(seawall::axum::HandleErrorsLayer::new())
                .service(layer.layer(inner)),
        ),
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

#[tokio::test(start_paused = true)]
async fn a_server_answers_each_rejection_with_its_status() {
    every_rejection(Answering::HandleError).await;
}

#[tokio::test(start_paused = true)]
async fn handle_errors_layer_answers_as_handle_error_does() {
    every_rejection(Answering::HandleErrors).await;
}

async fn every_rejection(how: Answering) {
    let full = BulkheadLayer::new(1);
    let full_handle = full.handle();
    let queueing = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(1)
        .build()
        .unwrap();
    let queue_handle = queueing.handle();
    let mut app = Router::new();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_millis(1500))
        .open_jitter(0.0)
        .build()
        .unwrap();
    app = route(how, app, "/open", breaker, answering(|| Err("down".into())));
    app = route(how, app, "/full", full, hanging());
    app = route(
        how,
        app,
        "/overloaded",
        tower::layer::layer_fn(move |inner| LoadShedLayer::new().layer(queueing.layer(inner))),
        hanging(),
    );
    let throttle = ThrottleLayer::builder().seed(3).build().unwrap();
    app = route(
        how,
        app,
        "/throttled",
        throttle,
        answering(|| Err("refused".into())),
    );
    let limit = RateLimitLayer::new(Quota::per_second(1));
    app = route(how, app, "/limited", limit, answering(|| Ok(())));
    let slow = Inner::new(service_fn(|_: Request<Body>| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(Response::new(Body::empty()))
    }));
    app = route(
        how,
        app,
        "/slow",
        TimeoutLayer::new(Duration::from_millis(10)),
        slow,
    );
    // A retry layer with an empty budget over a failing service, behind the route.
    let budget = Inner::new(service_fn(|_: Request<Body>| async {
        let result = super::exhausted_retry::<()>().oneshot(()).await;
        result.map(|()| Response::new(Body::empty()))
    }));
    app = route(
        how,
        app,
        "/budget",
        tower::layer::util::Identity::new(),
        budget,
    );
    app = route(
        how,
        app,
        "/deadline",
        ReadDeadlineLayer::http(),
        answering(|| Ok(())),
    );
    app = route(
        how,
        app,
        "/boom",
        tower::layer::util::Identity::new(),
        answering(|| Err("password=hunter2".into())),
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<axum::body::Bytes>>();
    let get = |path: &'static str, timeout: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut request = Request::get(format!("http://{addr}{path}"));
            if let Some(value) = timeout {
                request = request.header("x-request-timeout", value);
            }
            let response = client
                .request(request.body(Default::default()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                retry_after,
                body: String::from_utf8(body.to_vec()).unwrap(),
            }
        }
    };

    // An unknown error: 500, and its message stays on the server.
    let boom = get("/boom", None).await;
    assert_eq!(boom.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(boom.body, "internal error");

    // The breaker: the failure trips it (500), then 503 with when it will probe, rounded up.
    assert_eq!(
        get("/open", None).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let open = get("/open", None).await;
    assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(open.retry_after.as_deref(), Some("2"));
    assert_eq!(open.body, "service unavailable: circuit open");

    // The bulkhead and the load shedder, while one call holds the only slot.
    let holding = tokio::spawn(get("/full", None));
    while full_handle.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let full = get("/full", None).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.body, "service unavailable: at capacity");
    assert_eq!(full.retry_after.as_deref(), Some("1"));
    holding.abort();
    let holding = tokio::spawn(get("/overloaded", None));
    while queue_handle.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let overloaded = get("/overloaded", None).await;
    assert_eq!(overloaded.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(overloaded.body, "service unavailable: overloaded");
    holding.abort();

    // The throttle turns calls away once the backend has refused enough of them.
    let throttled = loop {
        let answer = get("/throttled", None).await;
        if answer.status != StatusCode::INTERNAL_SERVER_ERROR {
            break answer;
        }
    };
    assert_eq!(throttled.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(throttled.body, "service unavailable: throttled");

    assert_eq!(get("/limited", None).await.status, StatusCode::OK);
    let limited = get("/limited", None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.retry_after.as_deref(), Some("1"));

    let slow = get("/slow", None).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow.body, "timed out");

    let budget = get("/budget", None).await;
    assert_eq!(budget.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(budget.body, "service unavailable: retry budget exhausted");

    assert_eq!(get("/deadline", Some("1S")).await.status, StatusCode::OK);
    let bad = get("/deadline", Some("soon")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body, "invalid deadline header");
    server.abort();
}

#[test]
fn an_error_response_from_a_handler() {
    use axum::response::IntoResponse;
    let response = seawall::axum::ErrorResponse::from(std::io::Error::other("x")).into_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A service whose `poll_ready` fails once, then works.
#[derive(Clone)]
struct FailsReadyOnce {
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<Request<Body>> for FailsReadyOnce {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        use std::sync::atomic::Ordering::SeqCst;
        std::task::Poll::Ready(if self.failed.swap(true, SeqCst) {
            Ok(())
        } else {
            Err("not ready: secret detail".into())
        })
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Body::from("fine"))))
    }
}

#[tokio::test]
async fn handle_errors_answers_a_poll_ready_error_without_calling_the_service() {
    use std::sync::atomic::Ordering::SeqCst;
    use tower::{Service, ServiceExt};
    let inner = FailsReadyOnce {
        failed: Default::default(),
        calls: Default::default(),
    };
    let calls = inner.calls.clone();
    let mut service = seawall::axum::HandleErrorsLayer::new().layer(inner);
    let request = || Request::new(Body::empty());
    // Ready (the error is kept), and the call answers it without reaching the service.
    let first = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        b"internal error",
        "the message stays on the server"
    );
    assert_eq!(calls.load(SeqCst), 0);
    // The next call goes through.
    let second = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 1);
}
