//! A tonic client's side: `seawall::tonic::client_status` and `seawall::tonic::ClientLayer` around
//! `ClientStack::grpc()`, over a fake channel (paused time) and over loopback.

use super::{every_rejection, Wrapped};
use bytes::Bytes;
use http_body_util::BodyExt;
use seawall::stack::ClientStack;
use seawall::tonic::ClientLayer;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn client_side_rejections_are_unavailable_or_deadline_exceeded() {
    for (name, err) in every_rejection().await {
        let status = seawall::tonic::client_status(err);
        let code = match name {
            "timed_out" => Code::DeadlineExceeded,
            // Refused on this side, before the call was sent: another attempt, later or elsewhere,
            // may well succeed. A local rate limit is no quota the server set.
            "circuit_open"
            | "bulkhead_full"
            | "overloaded"
            | "throttled"
            | "rate_limited"
            | "retry_budget_exhausted" => Code::Unavailable,
            other => panic!("unexpected {other}"),
        };
        assert_eq!(status.code(), code, "{name}");
        // The whole error stays reachable, for `seawall::error::find`.
        let source = std::error::Error::source(&status).expect("the error is kept");
        assert!(seawall::error::kind(source).is_some(), "{name}");
    }
}

#[test]
fn a_transport_error_is_unavailable_on_the_client_side() {
    let reset =
        || -> BoxError { Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)) };
    // The server-side mapping answers what it does not know with INTERNAL, its message hidden:
    // right for a server, wrong for a client, whose retry policies retry UNAVAILABLE.
    assert_eq!(seawall::tonic::status(&*reset()).code(), Code::Internal);
    let status = seawall::tonic::client_status(reset());
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("reset"), "{}", status.message());
    let status = seawall::tonic::client_status(Box::new(Wrapped(reset())));
    assert_eq!(status.code(), Code::Unavailable);
    // A status in the chain is the server's answer, kept as it is.
    let status = seawall::tonic::client_status(Box::new(Wrapped(Box::new(Status::not_found(
        "no such item",
    )))));
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such item");
}

/// A trailers-only answer with gRPC status `code`.
fn answer(code: &'static str) -> http::Response<Body> {
    http::Response::builder()
        .header("grpc-status", code)
        .body(Body::empty())
        .unwrap()
}

fn request() -> http::Request<Body> {
    let body = http_body_util::Full::new(Bytes::from_static(b"message"));
    http::Request::post("/grpc.health.v1.Health/Check")
        .body(Body::new(body))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_tonic_request_is_replayed_whole_with_what_is_left_in_grpc_timeout() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    // A channel that reads each request whole, and answers UNAVAILABLE once, then OK.
    let channel = service_fn(move |req: http::Request<Body>| {
        let log = log.clone();
        async move {
            let timeout = req.headers().get("grpc-timeout").cloned();
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?;
            let mut log = log.lock().unwrap();
            log.push((body.to_bytes(), timeout));
            Ok::<_, std::io::Error>(answer(if log.len() == 1 { "14" } else { "0" }))
        }
    });
    let stack = ClientStack::grpc().total_timeout(Duration::from_secs(3));
    let client = ClientLayer::new(stack).layer(channel);
    let response = client.oneshot(request()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(body, _)| body == "message"), "{seen:?}");
    let left = |i: usize| {
        seawall::grpc::parse_grpc_timeout_header(seen[i].1.as_ref().expect("grpc-timeout sent"))
            .unwrap()
    };
    assert_eq!(left(0), Duration::from_secs(3));
    // The second attempt, after a backoff of at most 100 ms, is told what is left.
    assert!(
        left(1) < left(0) && left(1) >= Duration::from_millis(2900),
        "{:?}",
        left(1)
    );
}

#[tokio::test(start_paused = true)]
async fn its_errors_are_client_side_statuses() {
    // Transport errors: retried, then UNAVAILABLE.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let refused = service_fn(move |_: http::Request<Body>| {
        counter.fetch_add(1, Ordering::Relaxed);
        async {
            Err::<http::Response<Body>, _>(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))
        }
    });
    let client = ClientLayer::new(ClientStack::grpc()).layer(refused);
    let status = client.oneshot(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::Relaxed), 4);

    // A call that outlives the total timeout: DEADLINE_EXCEEDED, when the deadline comes.
    let hangs = service_fn(|_: http::Request<Body>| async {
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(answer("0"))
    });
    let stack = ClientStack::grpc().total_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let status = ClientLayer::new(stack)
        .layer(hangs)
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// A channel that, like tonic's, ends a call with `tonic::TimeoutExpired` when the `grpc-timeout`
/// it was sent runs out, at the very moment the stack's own deadline passes.
fn enforces_grpc_timeout() -> impl Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(|req: http::Request<Body>| async move {
        let sent = req
            .headers()
            .get("grpc-timeout")
            .expect("grpc-timeout sent");
        let left = seawall::grpc::parse_grpc_timeout_header(sent).unwrap();
        tokio::time::sleep(left).await;
        Err::<http::Response<Body>, BoxError>(Box::new(tonic::TimeoutExpired(())))
    })
}

#[tokio::test(start_paused = true)]
async fn the_channel_s_own_timeout_at_the_deadline_is_deadline_exceeded() {
    let stack = ClientStack::grpc()
        .total_timeout(Duration::from_millis(200))
        .without_retry();
    let start = Instant::now();
    let status = ClientLayer::new(stack)
        .layer(enforces_grpc_timeout())
        .oneshot(request())
        .await
        .unwrap_err();
    // Not tonic's CANCELLED: the stack's deadline passed, and the error says so.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    let source = std::error::Error::source(&status).expect("the error is kept");
    assert_eq!(
        seawall::error::kind(source),
        Some(seawall::error::ErrorKind::TimedOut)
    );
    let Some(seawall::error::Cause::TimedOut(elapsed)) = seawall::error::find(source) else {
        panic!("no timeout in {status:?}");
    };
    assert_eq!(
        elapsed.cause(),
        seawall::timeout::error::TimeoutCause::Deadline
    );
    assert_eq!(elapsed.budget(), Duration::from_millis(200));
}

/// A tonic server enforces the `grpc-timeout` it is sent too, and answers `CANCELLED` "Timeout
/// expired" (trailers only) an instant before the client's deadline: the deadline passing, as the
/// client's own timer would say an instant later.
#[tokio::test(start_paused = true)]
async fn a_tonic_server_s_own_timeout_answer_is_deadline_exceeded() {
    let server = service_fn(|req: http::Request<Body>| async move {
        let sent = req
            .headers()
            .get("grpc-timeout")
            .expect("grpc-timeout sent");
        let left = seawall::grpc::parse_grpc_timeout_header(sent).unwrap();
        tokio::time::sleep(left.saturating_sub(Duration::from_millis(1))).await;
        let answer = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "1")
            .header("grpc-message", "Timeout expired")
            .body(Body::empty())
            .unwrap();
        Ok::<_, BoxError>(answer)
    });
    let stack = ClientStack::grpc()
        .total_timeout(Duration::from_millis(200))
        .without_retry();
    let status = ClientLayer::new(stack)
        .layer(server)
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let source = std::error::Error::source(&status).expect("the error is kept");
    assert_eq!(
        seawall::error::kind(source),
        Some(seawall::error::ErrorKind::TimedOut)
    );
}

/// A server's own shorter timeout (`Server::timeout`), far from the client's deadline, is not the
/// deadline passing: its `CANCELLED` is left as it is, and not retried.
#[tokio::test(start_paused = true)]
async fn a_server_s_own_shorter_timeout_is_not_the_deadline() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let server = service_fn(move |_: http::Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let answer = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "1")
                .header("grpc-message", "Timeout expired")
                .body(Body::empty())
                .unwrap();
            Ok::<_, BoxError>(answer)
        }
    });
    let stack = ClientStack::grpc().total_timeout(Duration::from_secs(10));
    // The server's answer, as it was: tonic's client reads it as CANCELLED.
    let answer = ClientLayer::new(stack)
        .layer(server)
        .oneshot(request())
        .await
        .expect("the server's own answer");
    assert_eq!(answer.headers()["grpc-status"], "1");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
}

#[test]
fn tonic_s_timeout_expired_is_deadline_exceeded_on_the_client_side() {
    // Left to tonic (`Status::try_from_error`) it would be CANCELLED, which no caller reads as a
    // timeout.
    let status = seawall::tonic::client_status(Box::new(tonic::TimeoutExpired(())));
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(std::error::Error::source(&status).is_some());
}

mod loopback {
    //! A real tonic server and client: the request body crosses HTTP/2 twice.

    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    /// Answers the first call UNAVAILABLE itself, and notes the `grpc-timeout` of every call.
    #[derive(Clone)]
    struct FlakyOnce<S> {
        inner: S,
        calls: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl<S> Service<http::Request<Body>> for FlakyOnce<S>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send,
        S::Future: Send + 'static,
    {
        type Response = http::Response<Body>;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let timeout = req
                .headers()
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap().to_owned());
            let mut calls = self.calls.lock().unwrap();
            calls.push(timeout);
            if calls.len() == 1 {
                return Box::pin(async { Ok(Status::unavailable("warming up").into_http()) });
            }
            Box::pin(self.inner.call(req))
        }
    }

    #[tokio::test]
    async fn a_health_check_is_retried_whole_and_carries_its_deadline() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("shop.Catalog", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let flaky = {
            let calls = calls.clone();
            tower::layer::layer_fn(move |inner| FlakyOnce {
                inner,
                calls: calls.clone(),
            })
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(flaky)
                .add_service(health)
                .serve_with_incoming(crate::tonic_loopback::tokio_stream_like::incoming(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let stack = ClientStack::grpc().total_timeout(Duration::from_secs(5));
        let mut client = HealthClient::new(ClientLayer::new(stack).layer(channel));
        let answer = client
            .check(HealthCheckRequest {
                service: "shop.Catalog".into(),
            })
            .await
            .unwrap()
            .into_inner();
        // The second attempt's body named the service: NOT_SERVING, where an empty name would
        // have been the server's own SERVING.
        assert_eq!(answer.status(), ServingStatus::NotServing);
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        for timeout in calls {
            let left = seawall::grpc::parse_grpc_timeout(&timeout.expect("grpc-timeout")).unwrap();
            assert!(
                left <= Duration::from_secs(5) && left > Duration::from_secs(4),
                "{left:?}"
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        // The channel's own error: the server-side mapping hides it as INTERNAL.
        let request = || {
            http::Request::post("/grpc.health.v1.Health/Check")
                .body(Body::empty())
                .unwrap()
        };
        let err = channel.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(seawall::tonic::status(&err).code(), Code::Internal);
        assert_eq!(
            seawall::tonic::client_status(err.into()).code(),
            Code::Unavailable
        );
        // Through the client stack: retried, then UNAVAILABLE.
        let mut client = HealthClient::new(ClientLayer::new(ClientStack::grpc()).layer(channel));
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    /// Over a real tonic `Channel`, which enforces the `grpc-timeout` it is sent with a timer of
    /// its own that ends with the stack's deadline: whichever fires first, the caller gets
    /// DEADLINE_EXCEEDED (tonic alone makes its own timer's end CANCELLED).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_past_its_deadline_over_a_real_channel_is_deadline_exceeded() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tower::ServiceBuilder::new().map_future(|f| async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    f.await
                }))
                .add_service(health)
                .serve_with_incoming(crate::tonic_loopback::tokio_stream_like::incoming(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let stack = ClientStack::grpc()
            .total_timeout(Duration::from_millis(100))
            .without_retry();
        let client = HealthClient::new(ClientLayer::new(stack).layer(channel));
        let mut codes = std::collections::BTreeMap::new();
        for _ in 0..20 {
            let status = client
                .clone()
                .check(HealthCheckRequest::default())
                .await
                .unwrap_err();
            *codes.entry(format!("{:?}", status.code())).or_insert(0) += 1;
        }
        server.abort();
        assert_eq!(
            codes.keys().collect::<Vec<_>>(),
            ["DeadlineExceeded"],
            "{codes:?}"
        );
    }
}
