//! An axum server behind the standard server stack, under a burst of slow requests on loopback.
//!
//! ```text
//! cargo run --example axum_server --features full
//! ```
//!
//! The router's `/report` handler takes 200 ms. The server stack rate limits to 300 requests a
//! second (bursts of 100), sheds what its adaptive concurrency limit cannot take (503), and cuts
//! requests at one second (504); `seawall::axum::HandleErrorsLayer` turns each rejection into
//! its status. 400 requests arrive at once; the example prints how many got each status and the
//! limiter's limit, and stops by itself.

use axum::routing::get;
use axum::Router;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::limit::algorithm::{Gradient2, Windowed};
use seawall::limit::rate::Quota;
use seawall::limit::AdaptiveLimitLayer;
use seawall::stack::ServerStack;
use std::collections::BTreeMap;
use std::time::Duration;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limiter = AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default())).build()?;
    let limit = limiter.handle();
    let stack = ServerStack::new()
        .rate_limit(Quota::per_second(300).burst(100))
        .concurrency_layer(limiter)
        .timeout(Duration::from_secs(1));
    let app = Router::new()
        .route(
            "/report",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "report"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(seawall::axum::HandleErrorsLayer::new())
                .layer(stack),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving on http://{addr}/report; sending 400 requests at once");

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let client = client.clone();
        let uri: http::Uri = format!("http://{addr}/report").parse()?;
        calls.spawn(async move { client.get(uri).await.map(|r| r.status()) });
    }
    let mut statuses = BTreeMap::new();
    while let Some(status) = calls.join_next().await {
        *statuses.entry(status??.as_u16()).or_insert(0) += 1;
    }
    for (status, count) in &statuses {
        let what = match status {
            200 => "served",
            429 => "rate limited",
            503 => "shed by the concurrency limit",
            504 => "timed out",
            _ => "other",
        };
        println!("{status} {what}: {count}");
    }
    println!("concurrency limit now: {}", limit.limit());
    let served = statuses.get(&200).copied().unwrap_or(0);
    if served == 0 || statuses.keys().any(|s| ![200, 429, 503, 504].contains(s)) {
        return Err("unexpected answers".into());
    }
    Ok(())
}
