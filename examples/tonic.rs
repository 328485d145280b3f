//! A tonic server and client on loopback, each behind seawall's layers.
//!
//! ```text
//! cargo run --example tonic --features full
//! ```
//!
//! The server (tonic's health service) is rate limited to 5 calls a minute; its rejections reach
//! the client as `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`, through
//! `seawall::tonic::or_status`. The client's channel has a circuit breaker and a timeout. It makes
//! eight calls, prints what each got, and stops by itself.

use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::timeout::TimeoutLayer;
use std::time::Duration;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_layers = ServiceBuilder::new()
        .map_result(seawall::tonic::or_status::<tonic::body::Body>)
        .layer(RateLimitLayer::new(Quota::per_minute(5)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(server_layers)
            .add_service(health)
            .serve_with_incoming(Incoming(listener)),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let channel = ServiceBuilder::new()
        .map_err(
            |err: tower::BoxError| match err.downcast::<tonic::Status>() {
                Ok(status) => *status,
                Err(err) => seawall::tonic::status(&*err),
            },
        )
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(channel);
    let mut client = HealthClient::new(channel);
    for n in 1..=8 {
        match client.check(HealthCheckRequest::default()).await {
            Ok(answer) => println!("call {n}: {:?}", answer.into_inner().status()),
            Err(status) => {
                let pushback = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                println!(
                    "call {n}: {:?} ({}), pushback {pushback} ms",
                    status.code(),
                    status.message()
                );
            }
        }
    }
    Ok(())
}

/// The listener's connections, as tonic's server takes them.
struct Incoming(tokio::net::TcpListener);

impl futures::Stream for Incoming {
    type Item = std::io::Result<tokio::net::TcpStream>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_accept(cx)
            .map(|r| Some(r.map(|(stream, _)| stream)))
    }
}
