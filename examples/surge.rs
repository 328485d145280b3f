//! A live demonstration on loopback: a backend that fails for a while, clients calling it through a
//! circuit breaker, and a table of what happened each second.
//!
//! ```text
//! cargo run --release --example surge [-- --seconds 12 --clients 16]
//! ```
//!
//! The backend (axum, on 127.0.0.1) is healthy for the first quarter of the run, answers 503 after a
//! slow 40 ms during the middle half, and recovers for the last quarter. While it fails, the breaker
//! opens and turns calls away in microseconds instead of letting every client wait on a dead backend;
//! it probes now and then, and closes once the backend is back.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
use seawall::core::{CircuitState, Event, EventKind};
use seawall::http::HttpClassifier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = Empty<axum::body::Bytes>;

#[derive(Default)]
struct Second {
    passed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    backend_calls: AtomicU64,
    latency_ns: AtomicU64,
}

struct Options {
    seconds: u64,
    clients: usize,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 12,
        clients: 16,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--seconds", Some(v)) if v >= 4 => options.seconds = v,
            ("--clients", Some(v)) if v >= 1 => options.clients = v as usize,
            _ => {
                eprintln!("usage: surge [--seconds N (>= 4)] [--clients N (>= 1)]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    options
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let Options { seconds, clients } = options();

    // The backend: fails during the middle half of the run.
    let failing = Arc::new(AtomicBool::new(false));
    let backend_calls = Arc::new(AtomicU64::new(0));
    let app = {
        let (failing, calls) = (failing.clone(), backend_calls.clone());
        Router::new().route(
            "/",
            get(move || {
                let (failing, calls) = (failing.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, Relaxed);
                    if failing.load(Relaxed) {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                    } else {
                        (StatusCode::OK, "fine")
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The client stack: a breaker around a hyper client.
    let transitions = Arc::new(AtomicU64::new(0));
    let seen = transitions.clone();
    let breaker = CircuitBreakerLayer::builder()
        .name("backend")
        .classify(HttpClassifier::default())
        .count_window(50)
        .minimum_calls(20)
        .failure_rate_threshold(50.0)
        .open_duration(Duration::from_millis(800))
        .open_backoff(2.0, Duration::from_millis(1600))
        .half_open_probes(5)
        .observer(move |e: &Event<'_>| {
            if let EventKind::StateTransition { .. } = e.kind {
                seen.fetch_add(1, Relaxed);
            }
        })
        .build()?;
    let handle = breaker.handle();
    let client = ServiceBuilder::new()
        .layer(breaker)
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());

    let table: Arc<Vec<Second>> = Arc::new((0..seconds).map(|_| Second::default()).collect());
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let uri: http::Uri = format!("http://{addr}/").parse()?;

    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (mut client, table, uri) = (client.clone(), table.clone(), uri.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let sent = Instant::now();
                    let second = &table[(sent - start).as_secs().min(seconds - 1) as usize];
                    let request = http::Request::get(uri.clone()).body(Body::new()).unwrap();
                    let result = match client.ready().await {
                        Ok(ready) => ready.call(request).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.into_body().collect().await;
                            let counter = if ok { &second.passed } else { &second.failed };
                            counter.fetch_add(1, Relaxed);
                        }
                        Err(e) if e.is::<Open>() => {
                            second.rejected.fetch_add(1, Relaxed);
                        }
                        Err(_) => {
                            second.failed.fetch_add(1, Relaxed);
                        }
                    }
                    second
                        .latency_ns
                        .fetch_add(sent.elapsed().as_nanos() as u64, Relaxed);
                    // Each client paces itself: about 200 requests per second at most.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    println!("seawall surge: {clients} clients for {seconds} s against http://{addr}/");
    println!(
        "the backend fails (slow 503s) from second {} to second {}\n",
        seconds / 4,
        seconds * 3 / 4
    );
    println!(" sec | backend | sent  | passed | failed | rejected | backend calls | mean latency | breaker");
    println!("-----+---------+-------+--------+--------+----------+---------------+--------------+----------");
    let mut last_backend = 0;
    for s in 0..seconds {
        failing.store(s >= seconds / 4 && s < seconds * 3 / 4, Relaxed);
        let backend_state = if failing.load(Relaxed) {
            "failing"
        } else {
            "healthy"
        };
        tokio::time::sleep_until(start + Duration::from_secs(s + 1)).await;
        let row = &table[s as usize];
        let calls = backend_calls.load(Relaxed);
        row.backend_calls.store(calls - last_backend, Relaxed);
        last_backend = calls;
        let (p, f, r) = (
            row.passed.load(Relaxed),
            row.failed.load(Relaxed),
            row.rejected.load(Relaxed),
        );
        let sent = p + f + r;
        let mean = row.latency_ns.load(Relaxed) as f64 / sent.max(1) as f64 / 1000.0;
        let state = match handle.state() {
            CircuitState::Closed => "closed",
            CircuitState::Open => "OPEN",
            CircuitState::HalfOpen => "half-open",
            other => other.as_str(),
        };
        println!(
            "{:>4} | {backend_state:>7} | {sent:>5} | {p:>6} | {f:>6} | {r:>8} | {:>13} | {:>9.1} µs | {state}",
            s + 1,
            row.backend_calls.load(Relaxed),
            mean,
        );
    }
    for w in workers {
        w.await?;
    }

    let sum = |f: fn(&Second) -> &AtomicU64| table.iter().map(|s| f(s).load(Relaxed)).sum::<u64>();
    let (passed, failed, rejected) = (sum(|s| &s.passed), sum(|s| &s.failed), sum(|s| &s.rejected));
    println!(
        "\ntotal: {} calls, {passed} passed, {failed} failed, {rejected} rejected by the open breaker \
         without touching the backend; {} state transitions; breaker now {}",
        passed + failed + rejected,
        transitions.load(Relaxed),
        handle.state(),
    );
    Ok(())
}
