//! An HTTP client behind the standard client stack, against a flaky server on loopback.
//!
//! ```text
//! cargo run --example http_client --features full
//! ```
//!
//! The server (axum, on 127.0.0.1) answers `/flaky` with 503 every other time and `/slow` after
//! two seconds. The client is hyper-util's, wrapped in `ClientStack::http()`: 503s are retried
//! with backoff (a GET is idempotent), an attempt is cut after 300 ms, and the whole call after one
//! second. It prints what each call got, and stops by itself.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::stack::ClientStack;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    let app = Router::new()
        .route(
            "/flaky",
            get(move || {
                let n = count.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n % 2 == 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, "try again")
                    } else {
                        (StatusCode::OK, "fine")
                    }
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let client = ClientStack::http()
        .total_timeout(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(300))
        .layer(hyper);

    for path in ["/flaky", "/flaky", "/slow"] {
        let request = http::Request::get(format!("http://{addr}{path}")).body(Empty::new())?;
        let start = Instant::now();
        let result = client.clone().oneshot(request).await;
        let took = start.elapsed();
        match result {
            Ok(response) => println!("GET {path}: {} in {took:.0?}", response.status()),
            Err(err) => {
                let kind = seawall::error::kind(&*err).map_or("other", |k| k.as_str());
                println!("GET {path}: failed ({kind}: {err}) in {took:.0?}")
            }
        }
    }
    println!(
        "the server answered /flaky {} times for 2 calls: each 503 was retried",
        served.load(Ordering::Relaxed)
    );
    Ok(())
}
