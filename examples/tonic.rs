//! A tonic server and client on loopback, each behind seawall's layers.
//!
//! ```text
//! cargo run --example tonic --features tonic,limit,circuit-breaker,retry,timeout
//! ```
//!
//! The server (tonic's health service) reads the caller's `grpc-timeout` into its deadline, is rate
//! limited to 5 calls a minute, and answers its first two calls `UNAVAILABLE` (it is warming up).
//! Its rejections reach the client as statuses through `seawall::tonic::or_status`.
//!
//! The client calls it through `ClientStack::grpc()`, put between the generated client and its
//! channel by `seawall::tonic::ClientLayer`: a 2 s deadline for each call and 500 ms for each
//! attempt, what is left of them written into `grpc-timeout`; retries of `UNAVAILABLE` (the
//! request body kept for them); a circuit breaker that counts what gRPC calls failures; and its
//! errors as client-side statuses (a transport error is `UNAVAILABLE`, as gRPC clients retry it,
//! not the server mapping's `INTERNAL`). It goes through three phases and stops by itself:
//!
//! 1. the server warms up: the first call is retried until it is answered;
//! 2. the rate limit runs out: `RESOURCE_EXHAUSTED` with a 12 s pushback, which ends past the
//!    deadline, so it is returned at once rather than retried;
//! 3. the server stops: calls fail with `UNAVAILABLE`, the breaker opens, and the calls after
//!    that fail at once, without being sent.

use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::grpc::GrpcClassifier;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::stack::ClientStack;
use seawall::timeout::propagate::ReadDeadlineLayer;
use seawall::timeout::TimeoutLayer;
use seawall::tonic::ClientLayer;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::body::Body;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicU32::new(0));
    let told = Arc::new(Mutex::new(String::new()));
    let server_layers = ServiceBuilder::new()
        .map_result(seawall::tonic::or_status::<Body>)
        // What the client said it would wait, for the printout.
        .map_request({
            let told = told.clone();
            move |request: http::Request<Body>| {
                if let Some(timeout) = request.headers().get("grpc-timeout") {
                    *told.lock().unwrap() = timeout.to_str().unwrap_or("?").to_owned();
                }
                request
            }
        })
        // Honour the caller's deadline, and never take more than 10 s.
        .layer(ReadDeadlineLayer::grpc())
        .layer(TimeoutLayer::new(Duration::from_secs(10)).propagate())
        .layer(RateLimitLayer::new(Quota::per_minute(5)))
        // Warming up: the first two calls are answered UNAVAILABLE.
        .map_response({
            let calls = calls.clone();
            move |response: http::Response<Body>| {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    tonic::Status::unavailable("warming up").into_http()
                } else {
                    response
                }
            }
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(server_layers)
            .add_service(health)
            .serve_with_incoming_shutdown(Incoming(listener), async {
                stopped.await.ok();
            }),
    );

    // The client: the stack built once, at start-up. The breaker replaces the stack's default one
    // to open sooner; it keeps the gRPC classifier, without which gRPC errors would count as
    // successes.
    let breaker = CircuitBreakerLayer::builder()
        .classify(GrpcClassifier::default())
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(30))
        .build()?;
    let breaker_handle = breaker.handle();
    let stack = ClientStack::grpc()
        .total_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .breaker(breaker);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    let client = HealthClient::new(ClientLayer::new(stack).layer(channel));

    println!("1. the server warms up");
    let (answer, took) = check(&client).await;
    println!(
        "   call 1: {answer} after {} attempts, {took} ms; the last attempt told the server \
         grpc-timeout {} (what was left of its 500 ms)",
        calls.load(Ordering::Relaxed),
        told.lock().unwrap()
    );

    println!("2. the rate limit runs out");
    for n in 2..=4 {
        let (answer, took) = check(&client).await;
        println!("   call {n}: {answer}, {took} ms");
    }

    println!("3. the server stops");
    stop.send(()).ok();
    server.await??;
    for n in 5..=7 {
        let (answer, took) = check(&client).await;
        println!(
            "   call {n}: {answer}, {took} ms (breaker {:?})",
            breaker_handle.state()
        );
    }
    Ok(())
}

/// One health check: what it got, and how long it took, in milliseconds.
async fn check<T>(client: &HealthClient<T>) -> (String, u128)
where
    T: tonic::client::GrpcService<Body> + Clone,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let start = Instant::now();
    let answer = match client.clone().check(HealthCheckRequest::default()).await {
        Ok(answer) => format!("{:?}", answer.into_inner().status()),
        Err(status) => {
            let pushback = status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok())
                .map(|ms| format!(", pushback {ms} ms"))
                .unwrap_or_default();
            format!("{:?} ({}){pushback}", status.code(), status.message())
        }
    };
    (answer, start.elapsed().as_millis())
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
