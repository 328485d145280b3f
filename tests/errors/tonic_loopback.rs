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
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
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

/// A stream of the listener's connections, as tonic's server takes them.
mod tokio_stream_like {
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
