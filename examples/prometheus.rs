//! Prometheus metrics from seawall's layers, served on loopback and scraped.
//!
//! ```text
//! cargo run --example prometheus --features full
//! ```
//!
//! An axum server on 127.0.0.1 rate limits `/work` to 50 requests a second and serves its metrics
//! at `/metrics` in the Prometheus text format (through `metrics-exporter-prometheus`; any exporter
//! of the `metrics` facade works). The example sends 120 requests at once, scrapes `/metrics`,
//! prints seawall's series, and checks that the traffic is there. It stops by itself.

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::metrics::MetricsObserver;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let limit = RateLimitLayer::builder(Quota::per_second(50))
        .name("work")
        .observer(MetricsObserver::new())
        .build()?;
    let app = Router::new()
        .route("/work", get(|| async { "done" }))
        .layer(
            ServiceBuilder::new()
                .layer(seawall::axum::HandleErrorsLayer::new())
                .layer(limit),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving on http://{addr} (/work, /metrics)");

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..120 {
        let client = client.clone();
        let uri = format!("http://{addr}/work").parse()?;
        calls.spawn(async move { client.get(uri).await.map(|r| r.status()) });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(status) = calls.join_next().await {
        match status?? {
            http::StatusCode::OK => ok += 1,
            http::StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => return Err(format!("unexpected {other}").into()),
        }
    }
    println!("sent 120: {ok} served, {limited} rate limited\n");

    let response = client
        .get(format!("http://{addr}/metrics").parse()?)
        .await?;
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8(body.to_vec())?;
    for line in text.lines().filter(|l| l.starts_with("seawall_")) {
        println!("{line}");
    }
    let expect = [
        format!("seawall_permitted_total{{layer=\"work\"}} {ok}"),
        format!("seawall_rejected_total{{layer=\"work\",reason=\"rate_limited\"}} {limited}"),
    ];
    for series in &expect {
        if !text.lines().any(|line| line == series) {
            return Err(format!("missing from the scrape: {series}").into());
        }
    }
    println!("\nthe scrape has the traffic: ok");
    Ok(())
}
