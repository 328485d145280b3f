//! A cookbook service: an axum server that reads from a flaky upstream and takes writes, with the
//! layers a production service would have, each where it belongs. On loopback; it stops by itself.
//!
//! ```text
//! cargo run --example axum_service --features full
//! ```
//!
//! - **Reads** (`GET /items/{id}`) go to an upstream catalog through one client built once and
//!   kept in axum's state (a breaker and a retry budget shared by every request, which a client
//!   built per request would never have): `StaleIfErrorLayer::http` outermost, then
//!   `ClientStack::http()`, then the body collected (a stored answer must be `Clone`, and the
//!   stack's timeouts must cover the body too), over hyper. While the
//!   upstream is down, readers get the last good answer, marked by its `Age` header; a
//!   personalised answer (`GET /me`, which sets a cookie) is never stored, so it fails instead of
//!   being served to someone else.
//! - **Writes** (`POST /orders`) are limited per API key (`x-api-key`), so one client over its
//!   quota gets 429 and `Retry-After` while the others go on; an order without a key is refused
//!   (401), not limited under one key that every keyless client would share.
//! - **Every request** is limited per client address, then per API key (orders only: the key
//!   closure returns `None` for the rest), then goes through `ServerStack` (adaptive
//!   concurrency, a timeout). The keyed limits sit above the adaptive limiter, on the router and
//!   not on a route (a route's layers run beneath the router's): below it, each refusal would
//!   be a call it admitted and timed as a fast success. Above a limiter with a queue, an order
//!   over its quota still waits for a slot before it is refused, while the server is full (see
//!   docs/back-pressure.md).
//! - **Timeouts** nest: the client's (1 s in total, 300 ms an attempt) are below the server's
//!   (2 s), so a read that cannot be answered, or whose body stalls, ends with an answer of ours
//!   (the last good one, or the client's timeout), not the server's 504.
//! - **Metrics** are served at `/metrics` in the Prometheus text format: the keyed limits', the
//!   stale store's, and every part of both stacks, each stack given one observer and its parts
//!   named after it (`server.concurrency`, `catalog.retry`, `catalog.breaker`...).
//!
//! The example drives the service itself (healthy reads, a stalled body, an outage, a client over
//! its quota),
//! prints what each step got, and fails if something is not as described.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use seawall::fallback::StaleIfErrorLayer;
use seawall::limit::rate::{KeyedRateLimitLayer, Quota};
use seawall::metrics::MetricsObserver;
use seawall::stack::{ClientStack, ServerStack};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The client for the upstream catalog, as kept in the state: built once, cloned per request.
type Catalog = BoxCloneSyncService<Request<Empty<Bytes>>, Response<Bytes>, BoxError>;

#[derive(Clone)]
struct AppState {
    catalog: Catalog,
    upstream: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let (upstream, switches) = upstream().await?;

    // The catalog client: built once.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let stale = StaleIfErrorLayer::http(|req: &Request<Empty<Bytes>>| {
        // Keyed on method, host, path and query: right for a public catalog, wrong for anything
        // personal (the store refuses answers that say they are personal, but sees credentials
        // only in Authorization and Cookie: the key is still ours to get right). Never the path
        // alone: a token in the query would be dropped from it. No key for anything but a GET.
        let uri = req.uri();
        (req.method() == axum::http::Method::GET).then(|| {
            let authority = uri.authority().map_or("", |a| a.as_str());
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            format!("GET {authority}{path}")
        })
    })
    .max_age(Duration::from_secs(60))
    .name("catalog_stale")
    .observer(MetricsObserver::new())
    .build()?;
    let catalog: Catalog = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(stale)
            .layer(
                // Its parts report as catalog.total_timeout, catalog.retry, catalog.breaker
                // and catalog.attempt_timeout.
                ClientStack::http()
                    .total_timeout(Duration::from_secs(1))
                    .attempt_timeout(Duration::from_millis(300))
                    .name("catalog")
                    .observer(MetricsObserver::new()),
            )
            // The body is collected beneath the stack, inside each attempt, so the timeouts
            // cover it (a body that stalls is cut, and retried, like an answer that never
            // comes) and the breaker counts its failures; the stack's retry and the stale
            // store above both need it whole.
            .map_future(|answer| async move {
                let answer: Response<hyper::body::Incoming> = answer.await?;
                let (parts, body) = answer.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, BoxError>(Response::from_parts(parts, body))
            })
            .service(hyper),
    );

    // Writes: 5 a second per API key, bursts of 5. It sits above the server's stack with the
    // other keyed limit, so it keys only orders (`None` lets every other request through
    // uncounted), and an order without a key, which the handler refuses, is limited only per
    // client address.
    let per_key =
        KeyedRateLimitLayer::builder(Quota::per_second(5).burst(5), |req: &Request<Body>| {
            if req.method() != axum::http::Method::POST || req.uri().path() != "/orders" {
                return None;
            }
            req.headers()
                .get("x-api-key")
                .and_then(|key| key.to_str().ok())
                .map(str::to_owned)
        })
        .name("orders_per_key")
        .observer(MetricsObserver::new())
        .build()?;
    // Everything: 200 a second per client address, bursts of 100.
    let per_client =
        KeyedRateLimitLayer::builder(Quota::per_second(200).burst(100), |req: &Request<Body>| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
        })
        .name("per_client")
        .observer(MetricsObserver::new())
        .build()?;

    let app = Router::new()
        .route("/items/{id}", get(item))
        .route("/me", get(me))
        .route("/orders", post(order))
        .with_state(AppState { catalog, upstream })
        .layer(
            ServiceBuilder::new()
                .layer(seawall::axum::HandleErrorsLayer::new())
                .layer(per_client)
                .layer(per_key)
                // Its parts report as server.concurrency and server.timeout.
                .layer(
                    ServerStack::new()
                        .timeout(Duration::from_secs(2))
                        .observer(MetricsObserver::new()),
                ),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    println!("serving on http://{addr} (upstream catalog on {upstream})\n");

    drive(addr, &switches).await
}

/// `POST /orders`: taken from clients with an API key only. An order without one is refused,
/// not limited under one key shared by every such client, where one of them could use up the
/// quota of all the others.
async fn order(headers: axum::http::HeaderMap) -> (StatusCode, &'static str) {
    match headers.contains_key("x-api-key") {
        true => (StatusCode::CREATED, "ordered"),
        false => (StatusCode::UNAUTHORIZED, "an API key is needed to order"),
    }
}

/// `GET /items/{id}`: the catalog's answer, or its last good one while it is down.
async fn item(State(state): State<AppState>, Path(id): Path<u32>) -> Response<Body> {
    let uri = format!("http://{}/items/{id}", state.upstream);
    relay(state.catalog, uri).await
}

/// `GET /me`: a personalised answer (it sets a cookie): never stored, never served stale.
async fn me(State(state): State<AppState>) -> Response<Body> {
    let uri = format!("http://{}/me", state.upstream);
    relay(state.catalog, uri).await
}

async fn relay(catalog: Catalog, uri: String) -> Response<Body> {
    let request = match Request::get(uri).body(Empty::new()) {
        Ok(request) => request,
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    };
    match catalog.oneshot(request).await {
        Ok(answer) => answer.map(Body::from),
        // seawall's errors as statuses: a breaker open, 503 and `Retry-After`; a timeout, 504.
        // Any other failure (the upstream's connection refused or reset) is no error of
        // seawall's, and is answered 500: map it yourself for a 502.
        Err(err) => seawall::axum::error_response(&*err),
    }
}

/// The upstream catalog: items, and a personalised page; it answers 503 while `down` is set.
async fn upstream() -> Result<(SocketAddr, Upstream), BoxError> {
    let switches = Upstream::default();
    let (down, stall) = (switches.down.clone(), switches.stall.clone());
    let version = Arc::new(AtomicU64::new(0));
    let (item_down, me_down) = (down.clone(), down.clone());
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<u32>| {
                let answer = if item_down.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
                } else if stall.load(Ordering::Relaxed) {
                    // The headers and a first piece, then nothing: a body that never ends.
                    let first = futures::stream::iter([Ok::<_, BoxError>(Bytes::from("item"))]);
                    Body::from_stream(first.chain(futures::stream::pending())).into_response()
                } else {
                    let v = version.fetch_add(1, Ordering::Relaxed);
                    (StatusCode::OK, format!("item {id}, version {v}")).into_response()
                };
                std::future::ready(answer)
            }),
        )
        .route(
            "/me",
            get(move || {
                let answer = if me_down.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
                } else {
                    ([("set-cookie", "session=alice")], "alice's page").into_response()
                };
                std::future::ready(answer)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, switches))
}

/// How the upstream misbehaves: it answers 503 while `down` is set, and sends item pages that
/// never end while `stall` is.
#[derive(Clone, Default)]
struct Upstream {
    down: Arc<AtomicBool>,
    stall: Arc<AtomicBool>,
}

/// Plays the steps against the service and checks what it got.
async fn drive(addr: SocketAddr, upstream: &Upstream) -> Result<(), BoxError> {
    let down = &upstream.down;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // Requests sent to the service (all but the scrape of /metrics).
    let sent = AtomicU64::new(0);
    let get = |path: &str| {
        let client = client.clone();
        let uri = format!("http://{addr}{path}");
        if path != "/metrics" {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            let answer = client.get(uri.parse()?).await?;
            let status = answer.status();
            let age = answer.headers().get("age").cloned();
            let body = answer.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, age, String::from_utf8_lossy(&body).into_owned()))
        }
    };

    println!("1. the upstream is healthy");
    for id in 1..=3 {
        let (status, age, body) = get(&format!("/items/{id}")).await?;
        println!("   GET /items/{id}: {status} {body:?}");
        if status != StatusCode::OK || age.is_some() {
            return Err("a healthy read was not answered fresh".into());
        }
    }
    let (status, _, body) = get("/me").await?;
    println!("   GET /me: {status} {body:?}");

    println!(
        "2. the upstream stalls half-way through a page: the client's timeouts cover the body"
    );
    upstream.stall.store(true, Ordering::Relaxed);
    let start = std::time::Instant::now();
    let (status, age, body) = get("/items/1").await?;
    let age = age.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("none");
    println!(
        "   GET /items/1: {status} {body:?} (Age: {age}) after {:?}",
        start.elapsed()
    );
    if status != StatusCode::OK || age == "none" {
        return Err("a stalled read was not answered stale by the client's timeouts".into());
    }
    upstream.stall.store(false, Ordering::Relaxed);

    println!("3. the upstream is down: reads get the last good answer, /me does not");
    down.store(true, Ordering::Relaxed);
    for id in 1..=3 {
        let (status, age, body) = get(&format!("/items/{id}")).await?;
        let age = age.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("none");
        println!("   GET /items/{id}: {status} {body:?} (Age: {age})");
        if status != StatusCode::OK || age == "none" {
            return Err("a read during the outage was not served stale".into());
        }
    }
    let (status, _, body) = get("/me").await?;
    println!("   GET /me: {status} {body:?}");
    if status == StatusCode::OK {
        return Err("a personalised answer was served stale".into());
    }
    down.store(false, Ordering::Relaxed);

    println!("4. alice sends 12 orders at once (5 a second per key), bob 3");
    let mut orders = tokio::task::JoinSet::new();
    for key in std::iter::repeat_n("alice", 12).chain(std::iter::repeat_n("bob", 3)) {
        let client = client.clone();
        let request = Request::post(format!("http://{addr}/orders"))
            .header("x-api-key", key)
            .body(Empty::new())?;
        sent.fetch_add(1, Ordering::Relaxed);
        orders.spawn(async move { (key, client.request(request).await.map(|a| a.status())) });
    }
    let (mut alice, mut bob) = ((0, 0), (0, 0));
    while let Some(order) = orders.join_next().await {
        let (key, status) = order?;
        let tally = if key == "alice" { &mut alice } else { &mut bob };
        match status? {
            StatusCode::CREATED => tally.0 += 1,
            StatusCode::TOO_MANY_REQUESTS => tally.1 += 1,
            other => return Err(format!("unexpected {other}").into()),
        }
    }
    println!(
        "   alice: {} ordered, {} told to retry later",
        alice.0, alice.1
    );
    println!("   bob:   {} ordered, {} told to retry later", bob.0, bob.1);
    if alice.1 == 0 || bob != (3, 0) {
        return Err("the per-key limit did not hold alice alone back".into());
    }

    println!("   an order without an API key:");
    let request = Request::post(format!("http://{addr}/orders")).body(Empty::new())?;
    sent.fetch_add(1, Ordering::Relaxed);
    let status = client.request(request).await?.status();
    println!("   POST /orders: {status}");
    if status != StatusCode::UNAUTHORIZED {
        return Err("an order without an API key was taken".into());
    }

    println!("\nwhat /metrics says:");
    let (_, _, text) = get("/metrics").await?;
    for line in text.lines().filter(|l| l.starts_with("seawall_")) {
        println!("   {line}");
    }
    let expect = [
        format!(
            "seawall_rejected_total{{layer=\"orders_per_key\",reason=\"rate_limited\"}} {}",
            alice.1
        ),
        "seawall_fallbacks_total{layer=\"catalog_stale\"".to_owned(),
        // The stacks' parts, each under its name.
        "seawall_concurrency_limit{layer=\"server.concurrency\"}".to_owned(),
        "seawall_permitted_total{layer=\"server.concurrency\"}".to_owned(),
        "seawall_circuit_state{layer=\"catalog.breaker\"".to_owned(),
        "seawall_permitted_total{layer=\"catalog.breaker\"}".to_owned(),
        "seawall_attempts_started_total{layer=\"catalog.retry\"}".to_owned(),
        "seawall_attempts_total{layer=\"catalog.retry\",outcome=\"failure\"}".to_owned(),
    ];
    // The orders the per-key limit refused never reached the adaptive limiter: it admitted
    // every request but those.
    let admitted = sent.load(Ordering::Relaxed) - alice.1;
    let series = "seawall_permitted_total{layer=\"server.concurrency\"}";
    let counted = text
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|n| n.trim().parse::<u64>().ok());
    if counted != Some(admitted) {
        return Err(format!(
            "the server's limiter admitted {counted:?} requests, not the {admitted} the keyed limits let through"
        )
        .into());
    }
    for series in &expect {
        if !text.lines().any(|line| line.starts_with(series.as_str())) {
            return Err(format!("missing from the scrape: {series}").into());
        }
    }
    println!("\nevery step did what it should: ok");
    Ok(())
}
