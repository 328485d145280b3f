//! A tonic server on loopback behind seawall layers: its clients get the mapped statuses.

use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::timeout::propagate::ReadDeadlineLayer;
use seawall::timeout::TimeoutLayer;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

#[tokio::test]
async fn clients_get_each_status_over_the_wire() {
    let breaker = CircuitBreakerLayer::new();
    let breaker_handle = breaker.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layers = ServiceBuilder::new()
        .map_result(seawall::tonic::or_status::<tonic::body::Body>)
        .layer(ReadDeadlineLayer::grpc())
        .layer(TimeoutLayer::new(Duration::from_secs(10)).propagate())
        .layer(breaker)
        .layer(RateLimitLayer::new(Quota::per_minute(2)));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layers)
            .add_service(health)
            .serve_with_incoming(tokio_stream_like::incoming(listener)),
    );
    let mut client = health_client(addr).await;
    let check = || tonic::Request::new(HealthCheckRequest::default());
    let with_timeout = |value: &'static str| {
        let mut request = check();
        let value = value.parse().unwrap();
        request.metadata_mut().insert("grpc-timeout", value);
        request
    };
    // A malformed grpc-timeout is refused by the server, before the rate limit. (A caller with no
    // time left is not tested here: tonic's channel enforces grpc-timeout itself, client-side.)
    let invalid = client.check(with_timeout("soon")).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(invalid.message(), "invalid deadline header");
    client.check(check()).await.unwrap();
    client.check(check()).await.unwrap();
    let limited = client.check(check()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let pushback = limited.metadata().get("grpc-retry-pushback-ms").unwrap();
    let ms: u64 = pushback.to_str().unwrap().parse().unwrap();
    assert!(ms > 29_000 && ms <= 30_000, "{ms}");

    breaker_handle.force_open();
    let open = client.check(check()).await.unwrap_err();
    assert_eq!(open.code(), Code::Unavailable);
    assert_eq!(open.message(), "circuit open");
    server.abort();
}

/// A health client connected to the server at `addr`.
async fn health_client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// A stream of the listener's connections, as tonic's server takes them.
pub(crate) mod tokio_stream_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::net::{TcpListener, TcpStream};

    pub struct Incoming(TcpListener);

    pub fn incoming(listener: TcpListener) -> Incoming {
        Incoming(listener)
    }

    impl futures::Stream for Incoming {
        type Item = std::io::Result<TcpStream>;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0
                .poll_accept(cx)
                .map(|r| Some(r.map(|(stream, _)| stream)))
        }
    }
}

mod every_kind {
    //! One tonic server whose requests go, by their `x-kind` metadata, through the seawall layer
    //! that makes that kind of rejection, over a service that answers, fails, hangs or is slow
    //! as that layer needs; its clients get each kind's status over the wire.

    use super::tokio_stream_like;
    use seawall::bulkhead::BulkheadLayer;
    use seawall::circuit_breaker::CircuitBreakerLayer;
    use seawall::error::ErrorKind;
    use seawall::limit::rate::{Quota, RateLimitLayer};
    use seawall::limit::{LoadShedLayer, ThrottleLayer};
    use seawall::timeout::TimeoutLayer;
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tonic::body::Body;
    use tonic::Code;
    use tonic_health::pb::HealthCheckRequest;
    use tower::util::BoxCloneSyncService;
    use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

    type Request = http::Request<Body>;
    type Response = http::Response<Body>;
    type Branch = BoxCloneSyncService<Request, Response, BoxError>;

    /// What a branch's service does under its seawall layer.
    fn fails(message: &'static str) -> Branch {
        Branch::new(service_fn(move |_: Request| async move {
            Err::<Response, BoxError>(message.into())
        }))
    }

    fn hangs() -> Branch {
        Branch::new(service_fn(|_: Request| async {
            std::future::pending::<()>().await;
            Ok::<Response, BoxError>(Response::default())
        }))
    }

    fn sleeps(for_: Duration) -> Branch {
        Branch::new(service_fn(move |_: Request| async move {
            tokio::time::sleep(for_).await;
            Ok::<Response, BoxError>(Response::default())
        }))
    }

    /// Sends each request to the branch its `x-kind` names, or to the server's own routes.
    #[derive(Clone)]
    struct ByKind {
        branches: Arc<HashMap<&'static str, Branch>>,
        routes: Branch,
    }

    impl Service<Request> for ByKind {
        type Response = Response;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request) -> Self::Future {
            let kind = req
                .headers()
                .get("x-kind")
                .and_then(|v| v.to_str().ok())
                .and_then(|k| self.branches.get_key_value(k));
            let branch = match kind {
                Some((_, branch)) => branch.clone(),
                None => self.routes.clone(),
            };
            Box::pin(branch.oneshot(req))
        }
    }

    #[tokio::test]
    async fn clients_get_every_kind_over_the_wire() {
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(30))
            .build()
            .unwrap();
        let full = BulkheadLayer::new(1);
        let full_handle = full.handle();
        let queueing = BulkheadLayer::builder()
            .max_concurrent(1)
            .queue(1)
            .build()
            .unwrap();
        let queue_handle = queueing.handle();
        let mut branches: HashMap<&'static str, Branch> = HashMap::new();
        branches.insert("open", Branch::new(breaker.layer(fails("down"))));
        branches.insert("full", Branch::new(full.layer(hangs())));
        branches.insert(
            "overloaded",
            Branch::new(LoadShedLayer::new().layer(queueing.layer(hangs()))),
        );
        let throttle = ThrottleLayer::builder().seed(5).build().unwrap();
        branches.insert("throttled", Branch::new(throttle.layer(fails("refused"))));
        let limit = RateLimitLayer::new(Quota::per_minute(1));
        let timeout = TimeoutLayer::new(Duration::from_millis(50));
        branches.insert(
            "slow",
            Branch::new(timeout.layer(sleeps(Duration::from_secs(10)))),
        );
        branches.insert("secret", fails("password=hunter2"));
        branches.insert(
            "budget",
            Branch::new(service_fn(|_: Request| async {
                let result = crate::exhausted_retry::<()>().oneshot(()).await;
                result.map(|()| Response::default())
            })),
        );

        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let by_kind = tower::layer::layer_fn(move |routes: tonic::service::Routes| {
            let routes = Branch::new(ServiceExt::<Request>::map_err(routes, BoxError::from));
            // The rate limit over the server's own service, whose answers the client can read.
            let mut branches = branches.clone();
            branches.insert("limited", Branch::new(limit.layer(routes.clone())));
            ByKind {
                branches: Arc::new(branches),
                routes,
            }
        });
        let layers = ServiceBuilder::new()
            .map_result(seawall::tonic::or_status::<Body>)
            .layer(by_kind);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layers)
                .add_service(health)
                .serve_with_incoming(tokio_stream_like::incoming(listener)),
        );
        let client = super::health_client(addr).await;
        let check = |kind: &'static str| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request
                    .metadata_mut()
                    .insert("x-kind", kind.parse().unwrap());
                client.check(request).await
            }
        };
        let expect = |status: tonic::Status, code: Code, kind: ErrorKind| {
            assert_eq!(status.code(), code, "{kind:?}: {status:?}");
            assert!(status.message().contains(kind.describe()), "{status:?}");
            status
        };

        // The server's own service answers; an unknown error is INTERNAL, its message kept home.
        check("none").await.unwrap();
        let secret = check("secret").await.unwrap_err();
        assert_eq!(secret.code(), Code::Internal);
        assert!(!secret.message().contains("hunter2"), "{secret:?}");

        // The breaker: the failure trips it, then UNAVAILABLE with a pushback.
        assert_eq!(check("open").await.unwrap_err().code(), Code::Internal);
        let open = expect(
            check("open").await.unwrap_err(),
            Code::Unavailable,
            ErrorKind::CircuitOpen,
        );
        assert!(open.metadata().get("grpc-retry-pushback-ms").is_some());

        // The bulkhead and the load shedder, while one call holds the only slot.
        let holding = tokio::spawn(check("full"));
        while full_handle.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let full = check("full").await.unwrap_err();
        expect(full, Code::Unavailable, ErrorKind::BulkheadFull);
        holding.abort();
        let holding = tokio::spawn(check("overloaded"));
        while queue_handle.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let shed = check("overloaded").await.unwrap_err();
        expect(shed, Code::Unavailable, ErrorKind::Overloaded);
        holding.abort();

        // The throttle refuses some calls once the service has refused enough of them.
        let mut throttled = None;
        for _ in 0..200 {
            let status = check("throttled").await.unwrap_err();
            if status.code() != Code::Internal {
                throttled = Some(status);
                break;
            }
        }
        let throttled = throttled.expect("the throttle never refused a call");
        expect(throttled, Code::Unavailable, ErrorKind::Throttled);

        // The rate limit, with the time to come back.
        check("limited").await.unwrap();
        let limited = expect(
            check("limited").await.unwrap_err(),
            Code::ResourceExhausted,
            ErrorKind::RateLimited,
        );
        let pushback = limited.metadata().get("grpc-retry-pushback-ms").unwrap();
        let ms: u64 = pushback.to_str().unwrap().parse().unwrap();
        assert!(ms > 59_000 && ms <= 60_000, "{ms}");

        // A retry layer on the server whose budget ran out: UNAVAILABLE.
        let budget = check("budget").await.unwrap_err();
        expect(budget, Code::Unavailable, ErrorKind::RetryBudgetExhausted);

        // A timeout on the server: DEADLINE_EXCEEDED, long before the handler's 10 s.
        let start = std::time::Instant::now();
        let slow = check("slow").await.unwrap_err();
        expect(slow, Code::DeadlineExceeded, ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
        server.abort();
    }
}
