//! The timeout layer and deadline propagation under axum (a `Router` with `HandleErrorLayer`) and
//! tonic (a generated client calling a generated server through both sides' stacks), in-process with
//! paused time.

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use http::Request;
use http_body_util::BodyExt;
use seawall::core::{Deadline, DeadlineCarrier, TimeoutCause};
use seawall::timeout::error::{Elapsed, InvalidTimeoutHeader};
use seawall::timeout::propagate::{ReadDeadlineLayer, WriteDeadlineLayer};
use seawall::timeout::TimeoutLayer;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

async fn handle_error(err: BoxError) -> axum::response::Response {
    if let Some(elapsed) = err.downcast_ref::<Elapsed>() {
        return (StatusCode::GATEWAY_TIMEOUT, elapsed.cause().to_string()).into_response();
    }
    if err.is::<InvalidTimeoutHeader>() {
        return (StatusCode::BAD_REQUEST, err.to_string()).into_response();
    }
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

fn app() -> Router {
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "done"
            }),
        )
        .route(
            "/budget",
            get(|Extension(deadline): Extension<Deadline>| async move {
                deadline.remaining().as_millis().to_string()
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(ReadDeadlineLayer::http())
                .layer(TimeoutLayer::new(500 * MS).propagate()),
        )
}

async fn get_with(app: &Router, path: &str, budget: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(path);
    if let Some(budget) = budget {
        req = req.header("x-request-timeout", budget);
    }
    let response = app
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn axum_answers_504_when_the_server_timeout_or_the_callers_budget_runs_out() {
    let app = app();
    let start = Instant::now();
    assert_eq!(
        get_with(&app, "/slow", None).await,
        (StatusCode::GATEWAY_TIMEOUT, "timeout".into())
    );
    assert_eq!(Instant::now() - start, 500 * MS);

    let start = Instant::now();
    assert_eq!(
        get_with(&app, "/slow", Some("50m")).await,
        (StatusCode::GATEWAY_TIMEOUT, "deadline".into())
    );
    assert_eq!(Instant::now() - start, 50 * MS);

    let start = Instant::now();
    assert_eq!(
        get_with(&app, "/slow", Some("0n")).await,
        (StatusCode::GATEWAY_TIMEOUT, "expired".into())
    );
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn axum_handlers_see_the_deadline_and_bad_headers_get_400() {
    let app = app();
    assert_eq!(
        get_with(&app, "/budget", None).await,
        (StatusCode::OK, "500".into())
    );
    assert_eq!(
        get_with(&app, "/budget", Some("120m")).await,
        (StatusCode::OK, "120".into())
    );
    let (status, body) = get_with(&app, "/budget", Some("12x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("x-request-timeout"), "{body}");
}

mod tonic_health_check {
    use super::*;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    /// What the gRPC server saw of each call: its deadline and its `grpc-timeout`.
    type Seen = Arc<Mutex<Vec<(Option<Deadline>, Option<String>)>>>;

    /// A tonic health server behind a server stack (read `grpc-timeout`, at most 10 s), which takes
    /// `delay` to answer, and a generated client over a client stack (`total` budget, written into
    /// `grpc-timeout`) that calls it in-process.
    fn client(
        delay: Duration,
        total: Duration,
        seen: Seen,
    ) -> HealthClient<
        impl tonic::client::GrpcService<
                tonic::body::Body,
                Error = BoxError,
                ResponseBody = tonic::body::Body,
                Future = impl Send,
            > + Clone,
    > {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = ServiceBuilder::new()
            .layer(ReadDeadlineLayer::grpc())
            .layer(TimeoutLayer::new(Duration::from_secs(10)).propagate())
            .service(service_fn(move |req: Request<tonic::body::Body>| {
                let header = req.headers().get("grpc-timeout");
                let header = header.map(|v| v.to_str().unwrap().to_string());
                seen.lock().unwrap().push((req.deadline(), header));
                let mut health = health.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    ServiceExt::<Request<tonic::body::Body>>::ready(&mut health)
                        .await?
                        .call(req)
                        .await
                }
            }));
        let stack = ServiceBuilder::new()
            .layer(TimeoutLayer::new(total).propagate())
            .layer(WriteDeadlineLayer::grpc())
            .service(server);
        HealthClient::new(stack)
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_budget_reaches_the_tonic_server() {
        let seen = Seen::default();
        let mut client = client(MS, 300 * MS, seen.clone());
        let start = Instant::now();
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
        let (deadline, header) = seen.lock().unwrap()[0].clone();
        assert_eq!(header.as_deref(), Some("300000u"));
        assert_eq!(deadline, Some(Deadline::at(start + 300 * MS)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_tonic_server_gives_up_when_the_caller_does() {
        let seen = Seen::default();
        let mut client = client(Duration::from_secs(2), 300 * MS, seen.clone());
        let start = Instant::now();
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(Instant::now() - start, 300 * MS);
        // The server's timeout, beneath the client's, gave up on the propagated deadline first.
        let elapsed = status
            .source()
            .and_then(|e| e.downcast_ref::<Elapsed>())
            .unwrap_or_else(|| panic!("an Elapsed error: {status:?}"));
        assert_eq!(elapsed.cause(), TimeoutCause::Deadline);
        assert_eq!(elapsed.budget(), 300 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_timeout_set_on_the_tonic_request_is_kept() {
        let seen = Seen::default();
        let mut client = client(MS, 300 * MS, seen.clone());
        let start = Instant::now();
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(40 * MS);
        client.check(request).await.unwrap();
        let (deadline, header) = seen.lock().unwrap()[0].clone();
        assert!(header.is_some());
        assert_eq!(deadline, Some(Deadline::at(start + 40 * MS)));
    }
}
