//! The surge demonstration: two identical backends on loopback, the same crowd of users on each,
//! one side without seawall and one with it, through a 5x surge, an outage and a slow period.
//!
//! ```text
//! cargo run --release --example surge [-- --users 1000 --surge 5 --capacity 400 --scale 1]
//! ```
//!
//! Each backend is an axum server with a fixed capacity: 8 workers that take 20 ms a request
//! (400 requests a second by default); requests beyond that wait for a worker. Users come back
//! about once a second (think times of 0.5 to 1.5 s), and give up on a request after one second
//! (`--patience`). The scenario, about 40 seconds at `--scale 1`:
//!
//! | phase  | users             | backend                                 |
//! |--------|-------------------|-----------------------------------------|
//! | steady | 200 (1000 / 5)    | healthy, half loaded                    |
//! | surge  | 1000              | 2.5 times more traffic than it can take |
//! | outage | 200               | answers 500 to everything               |
//! | slow   | 200               | each request takes five times as long   |
//!
//! with steady periods between them. Without seawall, users wait on the backend: in the surge
//! and the slow period requests queue until users give up, and the backend spends its workers on
//! requests nobody waits for any more; in the outage users get errors. With seawall, the backend
//! runs behind [`ServerStack`] (an adaptive concurrency limit that sheds what it cannot take with
//! a fast 503, and a timeout), and users call it through [`ClientStack::http`] (deadline, retries
//! on a budget, a circuit breaker, a per-attempt timeout) under a stale-if-error cache and a
//! default answer: what the backend cannot serve in time is answered, fast, with the last good
//! answer or a default, marked as degraded.
//!
//! It prints a row a second for both sides, a summary per phase, and writes an SVG plot of
//! answers per second and p99 latency over time to `target/surge.svg` (`--svg PATH`). `--check`
//! makes it exit with an error when the side with seawall did not keep its promises (what CI
//! runs).
//!
//! `--scenario tail` (with the `hedge` feature) runs another scenario instead, about 15 seconds:
//! a backend with a slow tail (2 % of requests stall for a second), called by a plain client and
//! by one behind [`HedgeLayer::http`](seawall::hedge::HedgeLayer::http), to show hedging cutting
//! the p99 for a few percent more backend calls (see the [`tail`] module).
//!
//! `--scenario cache` (with the `cache` feature) runs the read-heavy phase instead, about 15
//! seconds: 667 requests a second, mostly reads of items with a hot set, against backends taking
//! 20 to 40 ms, without a cache and behind [`CacheLayer::http`](seawall::cache::CacheLayer::http),
//! with the hit ratio and the backends' load in the table (see the [`reads`] module).
//!
//! `--scenario replicas` (with the `pool` feature) runs another, about 17 seconds: four replicas
//! of one dependency on loopback, 300 requests a second over them, one answering 503 at once for
//! 6 seconds, called round robin and through a [`Pool`](seawall::pool::Pool) with short ejection
//! times; the table shows each replica's share of the calls, the failures each side saw, and the
//! failing replica ejected and brought back (see the [`replicas`] module). The three extra
//! scenarios share one load driver and table ([`steady`]).
//!
//! The side with seawall registers its breaker and its concurrency limit in a
//! [`seawall::health::Registry`], served on a third loopback port as `/live`, `/ready` and
//! `/health` (its URL is printed): the breaker is informational, so while it is open in the
//! outage `/health` says `DEGRADED` and `/ready` stays 200.

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::{CircuitState, Classify, Event, EventKind, Outcome};
use seawall::error::ErrorKind;
use seawall::fallback::{FallbackLayer, StaleIfErrorLayer, Trigger};
use seawall::health::{Criticality, Registry, Status};
use seawall::http::HttpClassifier;
use seawall::limit::algorithm::{Gradient2, Windowed};
use seawall::limit::AdaptiveLimitLayer;
use seawall::stack::{ClientStack, ServerStack};
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt};

type Body = Empty<Bytes>;

/// How many distinct items users ask for: what the stale-if-error cache holds.
const ITEMS: u64 = 50;
/// The backend's workers; with `--capacity` they fix how long one request takes.
const WORKERS: usize = 8;
/// How much slower the backend is in the slow period.
const SLOWDOWN: u32 = 5;

struct Options {
    users: u64,
    surge: u64,
    capacity: u64,
    scale: f64,
    patience: Duration,
    svg: PathBuf,
    check: bool,
    scenario: Scenario,
}

/// What `--scenario` runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// The surge, the outage and the slow period (the default).
    Surge,
    /// The hedging demonstration (see [`tail`]).
    Tail,
    /// The read-heavy service with and without the cache (see [`reads`]).
    Cache,
    /// Replicas of one dependency, one failing for a while, with and without a pool (see
    /// [`replicas`]).
    Replicas,
}

const USAGE: &str = "usage: surge [--users N] [--surge X] [--capacity RPS] [--scale F] \
                     [--patience MS] [--svg PATH] [--check] [--scenario surge|tail|cache|replicas]";

fn options() -> Options {
    let mut options = Options {
        users: 1000,
        surge: 5,
        capacity: 400,
        scale: 1.0,
        patience: Duration::from_secs(1),
        svg: PathBuf::from("target/surge.svg"),
        check: false,
        scenario: Scenario::Surge,
    };
    let mut args = std::env::args().skip(1);
    let bad = |what: &str| -> ! {
        eprintln!("surge: bad {what}\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(flag) = args.next() {
        if flag == "--check" {
            options.check = true;
            continue;
        }
        let Some(value) = args.next() else { bad(&flag) };
        let number = |min: f64| match value.parse::<f64>() {
            Ok(v) if v >= min && v.is_finite() => v,
            _ => bad(&flag),
        };
        match flag.as_str() {
            "--users" => options.users = number(1.0) as u64,
            "--surge" => options.surge = number(1.0) as u64,
            "--capacity" => options.capacity = number(10.0) as u64,
            "--scale" => options.scale = number(0.1),
            "--patience" => options.patience = Duration::from_millis(number(10.0) as u64),
            "--svg" => options.svg = PathBuf::from(value),
            "--scenario" => {
                options.scenario = match value.as_str() {
                    "surge" => Scenario::Surge,
                    "tail" => Scenario::Tail,
                    "cache" => Scenario::Cache,
                    "replicas" => Scenario::Replicas,
                    _ => bad(&flag),
                }
            }
            _ => bad(&flag),
        }
    }
    options
}

/// What the backend is doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Health {
    Healthy,
    Down,
    Slow,
}

struct Phase {
    name: &'static str,
    seconds: f64,
    surge: bool,
    health: Health,
}

const SCENARIO: [Phase; 7] = [
    Phase::new("steady", 5.0, false, Health::Healthy),
    Phase::new("surge", 10.0, true, Health::Healthy),
    Phase::new("steady", 5.0, false, Health::Healthy),
    Phase::new("outage", 6.0, false, Health::Down),
    Phase::new("steady", 4.0, false, Health::Healthy),
    Phase::new("slow", 6.0, false, Health::Slow),
    Phase::new("steady", 4.0, false, Health::Healthy),
];

impl Phase {
    const fn new(name: &'static str, seconds: f64, surge: bool, health: Health) -> Self {
        Phase {
            name,
            seconds,
            surge,
            health,
        }
    }
}

/// The scenario in time: which phase runs at an offset from the start.
struct Timeline {
    start: Instant,
    scale: f64,
}

impl Timeline {
    fn total(&self) -> Duration {
        Duration::from_secs_f64(SCENARIO.iter().map(|p| p.seconds).sum::<f64>() * self.scale)
    }

    fn phase_at(&self, offset: Duration) -> Option<&'static Phase> {
        let mut end = 0.0;
        SCENARIO.iter().find(|p| {
            end += p.seconds * self.scale;
            offset.as_secs_f64() < end
        })
    }

    fn now(&self) -> Option<&'static Phase> {
        self.phase_at(self.start.elapsed())
    }
}

/// A backend with `WORKERS` workers: a request waits for one, then takes `work` (or
/// `SLOWDOWN` times as long in the slow period); in an outage every request fails at once.
struct Backend {
    workers: Semaphore,
    work: Duration,
    health: AtomicU8,
    served: AtomicU64,
}

async fn item(State(backend): State<Arc<Backend>>) -> (StatusCode, &'static str) {
    let health = backend.health.load(Relaxed);
    if health == Health::Down as u8 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        return (StatusCode::INTERNAL_SERVER_ERROR, "backend down");
    }
    let _worker = backend.workers.acquire().await.expect("never closed");
    let work = if health == Health::Slow as u8 {
        backend.work * SLOWDOWN
    } else {
        backend.work
    };
    tokio::time::sleep(work).await;
    backend.served.fetch_add(1, Relaxed);
    (StatusCode::OK, "item")
}

/// What happened in one second on one side.
#[derive(Default)]
struct Second {
    offered: AtomicU64,
    fresh: AtomicU64,
    degraded: AtomicU64,
    failed: AtomicU64,
    /// 503s the server stack's concurrency limit answered at once.
    shed: AtomicU64,
    /// Calls the client's open breaker turned away without a request.
    open: AtomicU64,
    /// Calls given up on: the user's patience (without seawall), a deadline (with it).
    timed_out: AtomicU64,
    /// Latencies, in microseconds, of the calls that ended in this second.
    latencies: Mutex<Vec<u32>>,
    /// Seawall's side only: the breaker's state and the concurrency limit at the second's end.
    breaker: Mutex<Option<CircuitState>>,
    limit: AtomicU64,
}

/// One side's record, a `Second` for each second of the run.
struct Side {
    seconds: Vec<Second>,
    start: Instant,
}

enum Answer {
    Fresh,
    Degraded,
    Failed,
}

impl Side {
    fn new(start: Instant, seconds: usize) -> Arc<Self> {
        Arc::new(Side {
            seconds: (0..seconds).map(|_| Second::default()).collect(),
            start,
        })
    }

    fn now(&self) -> &Second {
        let i = self.start.elapsed().as_secs() as usize;
        &self.seconds[i.min(self.seconds.len() - 1)]
    }

    fn ended(&self, since: Instant, answer: Answer) {
        let second = self.now();
        match answer {
            Answer::Fresh => &second.fresh,
            Answer::Degraded => &second.degraded,
            Answer::Failed => &second.failed,
        }
        .fetch_add(1, Relaxed);
        let micros = since.elapsed().as_micros().min(u32::MAX as u128) as u32;
        second.latencies.lock().unwrap().push(micros);
    }
}

/// An answer as seawall's side of the crowd gets it: cloned (stale-if-error keeps copies), and
/// marked with where it came from.
#[derive(Clone, Debug)]
struct Reply {
    status: StatusCode,
    from: From,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum From {
    Backend,
    Stale,
    Default,
}

/// The outer layers' classifier: a reply that is not a 2xx, or an error, is a failure.
#[derive(Clone, Copy)]
struct Success2xx;

impl Classify<Reply, BoxError> for Success2xx {
    fn classify(&self, result: &Result<Reply, BoxError>) -> Outcome {
        match result {
            Ok(reply) if reply.status.is_success() => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options();
    match options.scenario {
        Scenario::Surge => {}
        #[cfg(feature = "hedge")]
        Scenario::Tail => return tail::run(&options).await,
        #[cfg(feature = "cache")]
        Scenario::Cache => return reads::run(&options).await,
        #[cfg(feature = "pool")]
        Scenario::Replicas => return replicas::run(&options).await,
        #[allow(unreachable_patterns)]
        other => {
            let (name, feature) = match other {
                Scenario::Tail => ("tail", "hedge"),
                Scenario::Cache => ("cache", "cache"),
                _ => ("replicas", "pool"),
            };
            return Err(format!(
                "the {name} scenario needs the {feature} feature: cargo run --release \
                 --features {feature} --example surge -- --scenario {name}"
            )
            .into());
        }
    }
    let baseline = (options.users / options.surge).max(1);
    let work = Duration::from_secs_f64(WORKERS as f64 / options.capacity as f64);
    let start = Instant::now() + Duration::from_millis(200);
    let timeline = Arc::new(Timeline {
        start,
        scale: options.scale,
    });
    let length = (timeline.total() + options.patience).as_secs() as usize + 2;
    let (bare, guarded) = (Side::new(start, length), Side::new(start, length));

    // Two identical backends.
    let backend = || {
        Arc::new(Backend {
            workers: Semaphore::new(WORKERS),
            work,
            health: AtomicU8::new(Health::Healthy as u8),
            served: AtomicU64::new(0),
        })
    };
    let (bare_backend, guarded_backend) = (backend(), backend());
    let router = |backend: Arc<Backend>| {
        Router::new()
            .route("/item/{id}", get(item))
            .with_state(backend)
    };

    // Without seawall: the router as it is.
    let bare_addr = serve(router(bare_backend.clone())).await?;

    // With seawall: the standard server stack, with an adaptive concurrency limit that starts
    // low enough for the backend's workers, and rejections mapped to their status codes.
    let mut gradient = Gradient2::default();
    gradient.initial = WORKERS as f64 * 2.0;
    gradient.min = 2.0;
    let limiter = AdaptiveLimitLayer::builder(Windowed::new(gradient)).build()?;
    let limit = limiter.handle();
    let server_stack = ServerStack::new()
        .without_rate_limit()
        .concurrency_layer(limiter)
        .timeout(options.patience / 2);
    let guarded_addr = serve(
        router(guarded_backend.clone()).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(rejection))
                .layer(server_stack),
        ),
    )
    .await?;

    // The client with seawall: a stale-if-error cache and a default answer over the standard
    // client stack, whose breaker reports the calls it turns away.
    let breaker = {
        let side = guarded.clone();
        CircuitBreakerLayer::builder()
            .name("backend")
            // A 503 from the server stack says "full, come back later", not "broken": the
            // retry budget and the fallbacks deal with it, and the breaker does not open on it
            // and leave the backend idle.
            .classify(HttpClassifier::default().ignore(StatusCode::SERVICE_UNAVAILABLE))
            .count_window(100)
            .minimum_calls(20)
            .failure_rate_threshold(50.0)
            .open_duration(Duration::from_millis(500))
            .open_backoff(2.0, Duration::from_secs(2))
            .half_open_probes(5)
            .observer(move |event: &Event<'_>| {
                if let EventKind::Rejected { .. } = event.kind {
                    side.now().open.fetch_add(1, Relaxed);
                }
            })
            .build()?
    };
    let breaker_handle = breaker.handle();
    let client_stack = ClientStack::http()
        .total_timeout(options.patience)
        .attempt_timeout(options.patience / 2)
        .breaker(breaker);
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let fetch = {
        let (hyper, side) = (hyper.clone(), guarded.clone());
        tower::service_fn(move |request: http::Request<Body>| {
            let (hyper, side) = (hyper.clone(), side.clone());
            // A concrete error type, not `BoxError`: with a boxed error out of an `async`
            // block, rustc cannot prove the spawned future `Send` (rust-lang/rust#102211).
            async move {
                let response = hyper.request(request).await.map_err(io::Error::other)?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
                match parts.status {
                    StatusCode::SERVICE_UNAVAILABLE => side.now().shed.fetch_add(1, Relaxed),
                    StatusCode::GATEWAY_TIMEOUT => side.now().timed_out.fetch_add(1, Relaxed),
                    _ => 0,
                };
                Ok::<_, io::Error>(http::Response::from_parts(parts, body))
            }
        })
    };
    let timeouts = {
        let side = guarded.clone();
        move |event: &Event<'_>| {
            if let EventKind::FallbackUsed { trigger, .. } = event.kind {
                if trigger == seawall::core::FallbackTrigger::Rejected(ErrorKind::TimedOut) {
                    side.now().timed_out.fetch_add(1, Relaxed);
                }
            }
        }
    };
    let client = ServiceBuilder::new()
        .layer(
            FallbackLayer::from_fn(|_: Trigger<'_, Reply>| Reply {
                status: StatusCode::OK,
                from: From::Default,
            })
            .classify(Success2xx)
            .name("default")
            .observer(timeouts.clone()),
        )
        .layer(
            StaleIfErrorLayer::builder(
                // Only reads, keyed on everything that names the answer (never the path alone:
                // see `StaleIfErrorLayer`'s docs); the catalog is the same for every user.
                |request: &http::Request<Body>| {
                    (request.method() == http::Method::GET).then(|| {
                        let uri = request.uri();
                        let authority = uri.authority().map_or("", |a| a.as_str());
                        let path = uri.path_and_query().map_or("/", |p| p.as_str());
                        format!("{authority}{path}")
                    })
                },
                |reply: &mut Reply, _age| reply.from = From::Stale,
            )
            .max_age(Duration::from_secs(60))
            .classify(Success2xx)
            .name("stale")
            .observer(timeouts)
            .build()
            .expect("a valid stale-if-error configuration"),
        )
        .map_response(|response: http::Response<Bytes>| Reply {
            status: response.status(),
            from: From::Backend,
        })
        .layer(client_stack)
        .service(fetch);

    // The layers of the side with seawall, watched from one place, with probes served beside
    // the demo. Both are informational: a dependency's breaker and a limiter under load must not
    // take the instance out of its load balancer.
    let registry = Registry::new();
    registry.register(
        "backend-breaker",
        &breaker_handle,
        Criticality::Informational,
    )?;
    registry.register("server-limit", &limit, Criticality::Informational)?;
    let routes = registry.routes();
    let health_addr = serve(
        Router::new()
            .route_service("/live", routes.clone())
            .route_service("/ready", routes.clone())
            .route_service("/health", routes),
    )
    .await?;
    registry.start_serving();

    println!(
        "seawall surge: {} users ({} outside the surge), two backends of {} requests/s each on \
         loopback\nwithout seawall: http://{bare_addr}/   with seawall: http://{guarded_addr}/\n\
         health of the side with seawall: http://{health_addr}/health (and /ready, /live)\n",
        options.users, baseline, options.capacity
    );

    // The crowd: `users` users on each side; those past the phase's count wait.
    let users_now = {
        let timeline = timeline.clone();
        move || match timeline.now() {
            Some(p) if p.surge => Some(options.users),
            Some(_) => Some(baseline),
            None => None,
        }
    };
    let mut crowd = tokio::task::JoinSet::new();
    for user in 0..options.users {
        // Without seawall: the same client, waiting at most the user's patience.
        let (side, hyper, now) = (bare.clone(), hyper.clone(), users_now.clone());
        let patience = options.patience;
        crowd.spawn(user_loop(user, now, start, move |id| {
            let (side, hyper) = (side.clone(), hyper.clone());
            async move {
                side.now().offered.fetch_add(1, Relaxed);
                let since = Instant::now();
                let uri = format!("http://{bare_addr}/item/{id}");
                let request = http::Request::get(uri).body(Body::new()).unwrap();
                let call = async {
                    let response = hyper.request(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    Ok::<_, BoxError>(status)
                };
                match tokio::time::timeout(patience, call).await {
                    Ok(Ok(status)) if status.is_success() => side.ended(since, Answer::Fresh),
                    Ok(_) => side.ended(since, Answer::Failed),
                    Err(_) => {
                        side.now().timed_out.fetch_add(1, Relaxed);
                        side.ended(since, Answer::Failed)
                    }
                }
            }
        }));
        // With seawall.
        let (side, client, now) = (guarded.clone(), client.clone(), users_now.clone());
        crowd.spawn(user_loop(user, now, start, move |id| {
            let (side, client) = (side.clone(), client.clone());
            async move {
                side.now().offered.fetch_add(1, Relaxed);
                let since = Instant::now();
                let uri = format!("http://{guarded_addr}/item/{id}");
                let request = http::Request::get(uri).body(Body::new()).unwrap();
                match client.oneshot(request).await {
                    Ok(reply) if reply.from == From::Backend => side.ended(since, Answer::Fresh),
                    Ok(_) => side.ended(since, Answer::Degraded),
                    Err(_) => side.ended(since, Answer::Failed),
                }
            }
        }));
    }

    // The scenario, and a row a second.
    println!("{}", header());
    let mut s = 0;
    let (mut not_ready, mut degraded) = (0, 0);
    while let Some(phase) = timeline.phase_at(Duration::from_secs(s)) {
        // Set the backends' health for the phases that start within this second.
        let mut at = Duration::from_secs(s);
        while at < Duration::from_secs(s + 1) {
            tokio::time::sleep_until(start + at).await;
            if let Some(p) = timeline.now() {
                for backend in [&bare_backend, &guarded_backend] {
                    backend.health.store(p.health as u8, Relaxed);
                }
            }
            at += Duration::from_millis(100);
        }
        tokio::time::sleep_until(start + Duration::from_secs(s + 1)).await;
        let second = &guarded.seconds[s as usize];
        *second.breaker.lock().unwrap() = Some(breaker_handle.state());
        second.limit.store(limit.limit(), Relaxed);
        let snapshot = registry.snapshot();
        not_ready += u64::from(!snapshot.ready);
        degraded += u64::from(snapshot.status != Status::Up);
        let users = if phase.surge { options.users } else { baseline };
        println!("{}", row(s, phase, users, &bare, &guarded));
        s += 1;
    }
    while crowd.join_next().await.is_some() {}
    let seconds = s as usize;
    // Calls that ended after the last full second belong to it.
    for side in [&bare, &guarded] {
        let last = &side.seconds[seconds - 1];
        for late in &side.seconds[seconds..] {
            for (to, from) in [
                (&last.fresh, &late.fresh),
                (&last.degraded, &late.degraded),
                (&last.failed, &late.failed),
                (&last.timed_out, &late.timed_out),
            ] {
                to.fetch_add(from.load(Relaxed), Relaxed);
            }
            let mut latencies = late.latencies.lock().unwrap();
            last.latencies.lock().unwrap().append(&mut latencies);
        }
    }

    let mut summary = summary(&timeline, seconds, &bare, &guarded);
    println!("\n{}", summary.table);
    println!(
        "backend requests served: {} without seawall, {} with it",
        bare_backend.served.load(Relaxed),
        guarded_backend.served.load(Relaxed)
    );
    if let Some(dir) = options.svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &options.svg,
        svg(&timeline, seconds, &bare, &guarded, options.patience),
    )?;
    println!(
        "plot of answers per second and p99 latency: {}",
        options.svg.display()
    );

    println!(
        "health: degraded in {degraded} of {seconds} seconds, not ready in {not_ready} \
         (the breaker and the limit are informational)"
    );

    if options.check {
        println!("check passed: {}", summary.check(options.patience)?);
        check_health(health_addr, &registry, not_ready).await?;
    }
    Ok(())
}

/// The probes over loopback: the snapshot names the layers, readiness held all along (nothing
/// registered is required), and answers 503 once the instance drains.
async fn check_health(
    addr: std::net::SocketAddr,
    registry: &Registry,
    not_ready: u64,
) -> Result<(), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let get = |path: &str| {
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(Body::new())
            .unwrap();
        let response = client.request(request);
        async move {
            let response = tokio::time::timeout(Duration::from_secs(10), response).await??;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    let (status, body) = get("/health").await?;
    if status != StatusCode::OK || !body.contains("\"backend-breaker\"") {
        return Err(format!("/health answered {status}: {body}").into());
    }
    if not_ready > 0 || get("/ready").await?.0 != StatusCode::OK {
        return Err("readiness failed while only informational components were down".into());
    }
    registry.drain();
    if get("/ready").await?.0 != StatusCode::SERVICE_UNAVAILABLE {
        return Err("/ready still answered 200 after drain".into());
    }
    println!("health check passed: /health names the layers, /ready held, and drained to 503");
    Ok(())
}

/// Serves `router` on a loopback port and returns its address.
async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The status of a server stack's rejection (`seawall::axum::HandleErrorsLayer` answers the
/// same, with bodies and `Retry-After`, under the `axum` feature).
async fn rejection(err: BoxError) -> StatusCode {
    seawall::error::kind(&*err).map_or(StatusCode::INTERNAL_SERVER_ERROR, seawall::http::status)
}

/// One user: while the scenario runs and the phase counts this user in, asks for an item, then
/// thinks for 0.5 to 1.5 s.
async fn user_loop<F, Fut>(
    user: u64,
    users_now: impl Fn() -> Option<u64>,
    start: Instant,
    mut call: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let think = || Duration::from_millis(rand::rng().random_range(500..1500));
    let first = start + think();
    tokio::time::sleep_until(first).await;
    while let Some(users) = users_now() {
        if user >= users {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let item = rand::rng().random_range(0..ITEMS);
        call(item).await;
        let pause = think();
        tokio::time::sleep(pause).await;
    }
}

/// The 50th and 99th percentiles of `latencies` (microseconds), if there are any.
fn percentiles(latencies: &mut [u32]) -> Option<(u32, u32)> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Some((at(0.50), at(0.99)))
}

fn millis(micros: Option<u32>) -> String {
    match micros {
        None => "-".into(),
        Some(us) if us >= 10_000_000 => format!("{}s", us / 1_000_000),
        Some(us) if us >= 999_500 => format!("{:.1}s", us as f64 / 1e6),
        Some(us) => format!("{}ms", (us + 500) / 1000),
    }
}

fn header() -> String {
    format!(
        "{:>3} {:<7}{:>5} | {:^32} | {:^68}\n{:>3} {:<7}{:>5} | {:>7}{:>6}{:>6}{:>6}{:>7} | \
         {:>7}{:>6}{:>6}{:>6}{:>6}{:>6}{:>5}{:>6}{:>7} {:<9}{:>5}",
        "",
        "",
        "",
        "without seawall",
        "with seawall",
        "s",
        "phase",
        "users",
        "offered",
        "ok",
        "fail",
        "p50",
        "p99",
        "offered",
        "ok",
        "degr",
        "fail",
        "shed",
        "open",
        "t/o",
        "p50",
        "p99",
        "breaker",
        "limit",
    )
}

fn row(s: u64, phase: &Phase, users: u64, bare: &Side, guarded: &Side) -> String {
    let n = |c: &AtomicU64| c.load(Relaxed);
    let (b, g) = (&bare.seconds[s as usize], &guarded.seconds[s as usize]);
    let (b50, b99) = split(percentiles(&mut b.latencies.lock().unwrap().clone()));
    let (g50, g99) = split(percentiles(&mut g.latencies.lock().unwrap().clone()));
    let breaker = match *g.breaker.lock().unwrap() {
        Some(CircuitState::Open) => "OPEN",
        Some(CircuitState::HalfOpen) => "half-open",
        Some(state) => state.as_str(),
        None => "-",
    };
    format!(
        "{:>3} {:<7}{:>5} | {:>7}{:>6}{:>6}{:>6}{:>7} | {:>7}{:>6}{:>6}{:>6}{:>6}{:>6}{:>5}{:>6}{:>7} {:<9}{:>5}",
        s + 1,
        phase.name,
        users,
        n(&b.offered),
        n(&b.fresh),
        n(&b.failed),
        millis(b50),
        millis(b99),
        n(&g.offered),
        n(&g.fresh),
        n(&g.degraded),
        n(&g.failed),
        n(&g.shed),
        n(&g.open),
        n(&g.timed_out),
        millis(g50),
        millis(g99),
        breaker,
        n(&g.limit),
    )
}

fn split(p: Option<(u32, u32)>) -> (Option<u32>, Option<u32>) {
    (p.map(|p| p.0), p.map(|p| p.1))
}

/// Totals over the seconds of one kind of phase, on one side.
#[derive(Default, Clone)]
struct Totals {
    fresh: u64,
    degraded: u64,
    failed: u64,
    latencies: Vec<u32>,
}

impl Totals {
    fn add(&mut self, second: &Second) {
        self.fresh += second.fresh.load(Relaxed);
        self.degraded += second.degraded.load(Relaxed);
        self.failed += second.failed.load(Relaxed);
        self.latencies
            .extend_from_slice(&second.latencies.lock().unwrap());
    }

    fn ended(&self) -> u64 {
        self.fresh + self.degraded + self.failed
    }

    fn percent(&self, part: u64) -> f64 {
        100.0 * part as f64 / self.ended().max(1) as f64
    }
}

struct Summary {
    table: String,
    /// Per phase kind: (name, seconds, without, with).
    phases: Vec<(&'static str, u64, Totals, Totals)>,
}

const KINDS: [&str; 4] = ["steady", "surge", "outage", "slow"];

fn summary(timeline: &Timeline, seconds: usize, bare: &Side, guarded: &Side) -> Summary {
    let mut phases: Vec<(&'static str, u64, Totals, Totals)> = KINDS
        .iter()
        .map(|k| (*k, 0, Totals::default(), Totals::default()))
        .collect();
    for s in 0..seconds {
        let Some(phase) = timeline.phase_at(Duration::from_secs(s as u64)) else {
            continue;
        };
        let entry = phases.iter_mut().find(|p| p.0 == phase.name).unwrap();
        entry.1 += 1;
        entry.2.add(&bare.seconds[s]);
        entry.3.add(&guarded.seconds[s]);
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<7}{:>4} | {:^31} | {:^49}",
        "", "", "without seawall", "with seawall"
    );
    let _ = writeln!(
        table,
        "{:<7}{:>4} | {:>6}{:>5}{:>6}{:>7}{:>7} | {:>6}{:>8}{:>6}{:>9}{:>6}{:>7}{:>7}",
        "phase",
        "s",
        "calls",
        "ok/s",
        "ok",
        "p50",
        "p99",
        "calls",
        "fresh/s",
        "fresh",
        "degraded",
        "fail",
        "p50",
        "p99"
    );
    for (name, seconds, b, g) in phases.iter_mut() {
        let (b50, b99) = split(percentiles(&mut b.latencies));
        let (g50, g99) = split(percentiles(&mut g.latencies));
        let per_second = |n: u64| n as f64 / (*seconds).max(1) as f64;
        let _ = writeln!(
            table,
            "{:<7}{:>4} | {:>6}{:>5.0}{:>5.0}%{:>7}{:>7} | {:>6}{:>8.0}{:>5.0}%{:>8.0}%{:>5.0}%{:>7}{:>7}",
            name,
            seconds,
            b.ended(),
            per_second(b.fresh),
            b.percent(b.fresh),
            millis(b50),
            millis(b99),
            g.ended(),
            per_second(g.fresh),
            g.percent(g.fresh),
            g.percent(g.degraded),
            g.percent(g.failed),
            millis(g50),
            millis(g99),
        );
    }
    let _ = write!(
        table,
        "ok: a 2xx from the backend within the users' patience; fresh: the same, with seawall; \
         degraded: the last good answer or a default,\ngiven at once when the backend could not \
         answer in time; fail: an error or no answer in time; p50, p99: as the users waited"
    );
    Summary { table, phases }
}

impl Summary {
    /// What the side with seawall promises: all but a few calls answered (fresh or degraded) in
    /// every phase; in the surge, more fresh answers than the side without it got at all, and a
    /// p99 well within the users' patience.
    fn check(&mut self, patience: Duration) -> Result<String, BoxError> {
        for (name, _, _, g) in &self.phases {
            if g.ended() == 0 {
                return Err(format!("no calls ended in the {name} phases").into());
            }
            let answered = g.percent(g.fresh + g.degraded);
            if answered < 95.0 {
                return Err(format!("with seawall, {answered:.1}% answered in {name}").into());
            }
        }
        let (_, _, bare, guarded) = &mut self.phases[1];
        if guarded.fresh <= bare.fresh {
            return Err(format!(
                "in the surge, {} fresh answers with seawall, {} without",
                guarded.fresh, bare.fresh
            )
            .into());
        }
        let p99 = percentiles(&mut guarded.latencies).map_or(0, |p| p.1);
        if Duration::from_micros(p99.into()) > patience / 2 {
            return Err(format!("with seawall, p99 {} in the surge", millis(Some(p99))).into());
        }
        Ok(format!(
            "with seawall every phase answered, and the surge got {} fresh answers (without: {}) \
             at p99 {}",
            guarded.fresh,
            bare.fresh,
            millis(Some(p99))
        ))
    }
}

/// An SVG plot: answers per second on both sides (top), p99 latency (bottom), phases shaded.
fn svg(
    timeline: &Timeline,
    seconds: usize,
    bare: &Side,
    guarded: &Side,
    patience: Duration,
) -> String {
    let (width, left, right, panel, gap, top) = (960.0, 60.0, 20.0, 200.0, 60.0, 40.0);
    let plot = width - left - right;
    let x = |s: f64| left + plot * s / seconds as f64;
    let n = |c: &AtomicU64| c.load(Relaxed) as f64;
    let mut rate_max: f64 = 1.0;
    let mut series: [Vec<f64>; 4] = Default::default(); // offered, bare ok, seawall fresh, seawall answered
    let mut p99s: [Vec<f64>; 2] = Default::default();
    for s in 0..seconds {
        let (b, g) = (&bare.seconds[s], &guarded.seconds[s]);
        let values = [
            n(&g.offered),
            n(&b.fresh),
            n(&g.fresh),
            n(&g.fresh) + n(&g.degraded),
        ];
        for (line, v) in series.iter_mut().zip(values) {
            rate_max = rate_max.max(v);
            line.push(v);
        }
        for (line, side) in p99s.iter_mut().zip([b, g]) {
            let p = percentiles(&mut side.latencies.lock().unwrap().clone()).map_or(0, |p| p.1);
            line.push(p as f64 / 1000.0);
        }
    }
    let rate_max = (rate_max / 100.0).ceil() * 100.0;
    let ms_max = patience.as_secs_f64() * 1000.0 * 1.1;
    let height = top + 2.0 * panel + gap + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // Phases.
    let mut at = 0.0;
    for (i, phase) in SCENARIO.iter().enumerate() {
        let end = at + phase.seconds * timeline.scale;
        if phase.name != "steady" {
            let _ = writeln!(
                out,
                r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                x(at),
                x(end) - x(at),
                2.0 * panel + gap,
                ["fff3d6", "fde0e0", "e3e8fb"][i % 3],
                (x(at) + x(end)) / 2.0,
                top - 8.0,
                phase.name
            );
        }
        at = end;
    }
    let panels = [
        (
            "answers per second",
            rate_max,
            top,
            &series[..],
            ["#999999", "#d62728", "#1f77b4", "#1f77b4"],
        ),
        (
            "p99 latency, ms",
            ms_max,
            top + panel + gap,
            &p99s[..],
            ["#d62728", "#1f77b4", "", ""],
        ),
    ];
    for (title, max, y0, lines, colours) in panels {
        let y = |v: f64| y0 + panel - panel * v.min(max) / max;
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{y0}" width="{plot}" height="{panel}" fill="none" stroke="#444"/><text x="{left}" y="{:.1}">{title}</text>"##,
            y0 - 22.0
        );
        for tick in 0..=4 {
            let v = max * tick as f64 / 4.0;
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text><line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                left - 6.0,
                y(v) + 4.0,
                v,
                left + plot,
                y(v),
                y(v)
            );
        }
        for (i, (line, colour)) in lines.iter().zip(colours).enumerate() {
            let dash = if lines.len() == 4 && i == 2 {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let points: Vec<String> = line
                .iter()
                .enumerate()
                .map(|(s, v)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
    }
    for s in (0..=seconds).step_by(5) {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{s}s</text>"#,
            x(s as f64),
            top + 2.0 * panel + gap + 16.0
        );
    }
    let legend = [
        ("#999999", "offered (side with seawall)"),
        ("#d62728", "without seawall: answered"),
        (
            "#1f77b4",
            "with seawall: answered (fresh or degraded); dashed: fresh",
        ),
    ];
    for (i, (colour, text)) in legend.iter().enumerate() {
        let lx = left + i as f64 * 280.0;
        let ly = height - 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{ly}">{text}</text>"#,
            lx + 20.0,
            ly - 4.0,
            ly - 4.0,
            lx + 26.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// What the scenarios after the surge share (`--scenario tail`, `cache`, `replicas`): two sides
/// given the same calls at a steady rate whatever the answers, each call on its own task, and a
/// table with a row a second.
#[cfg(any(feature = "hedge", feature = "cache", feature = "pool"))]
mod steady {
    use super::{millis, percentiles, split, Answer, Body, Options, Second, Side};
    use axum::body::Bytes;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use std::fmt::Write as _;
    use std::future::Future;
    use std::io;
    use std::ops::Range;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::BoxError;

    /// A call given up on after this long counts as failed.
    const GIVE_UP: Duration = Duration::from_secs(4);

    /// A plain hyper client, as every side without a layer calls its backend.
    pub(super) type Hyper = Client<HttpConnector, Body>;

    /// One run of a scenario: when it starts, its phases, and what each side saw, a second at a
    /// time (side 0 is the one without the layer shown).
    pub(super) struct Run {
        pub(super) start: Instant,
        /// Each phase's name and end (from the start).
        phases: Vec<(&'static str, Duration)>,
        total: Duration,
        /// The rows: the run's seconds, begun ones included.
        pub(super) seconds: usize,
        pub(super) sides: [Arc<Side>; 2],
    }

    /// The calls of some seconds on one side: how many, how many failed, p50 and p99.
    pub(super) struct Totals {
        pub(super) calls: u64,
        pub(super) failed: u64,
        pub(super) p50: Option<u32>,
        pub(super) p99: Option<u32>,
    }

    impl Run {
        /// A run of `phases` (each a name and seconds at `--scale 1`), starting shortly.
        pub(super) fn new(options: &Options, phases: &[(&'static str, f64)]) -> Self {
            let mut total = Duration::ZERO;
            let phases = phases
                .iter()
                .map(|&(name, seconds)| {
                    total += Duration::from_secs_f64(seconds * options.scale);
                    (name, total)
                })
                .collect();
            let start = Instant::now() + Duration::from_millis(200);
            let seconds = total.as_secs() as usize + 1;
            // One more second for the calls still running at the end.
            let sides = [Side::new(start, seconds + 1), Side::new(start, seconds + 1)];
            Run {
                start,
                phases,
                total,
                seconds,
                sides,
            }
        }

        /// Sends `rate` calls a second to each side until the run ends, at a steady rate whatever
        /// the answers: `calls(n)` makes the `n`th pair (from 1), each future answering whether
        /// its call got a 2xx. An error, or no answer within 4 s, is a failed call.
        pub(super) fn drive<F, A, B>(&self, rate: u64, mut calls: F) -> tokio::task::JoinHandle<()>
        where
            F: FnMut(u64) -> (A, B) + Send + 'static,
            A: Future<Output = Result<bool, BoxError>> + Send + 'static,
            B: Future<Output = Result<bool, BoxError>> + Send + 'static,
        {
            let (start, total, sides) = (self.start, self.total, self.sides.clone());
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval_at(start, Duration::from_secs(1) / rate as u32);
                let mut running = tokio::task::JoinSet::new();
                let mut n = 0u64;
                while start.elapsed() < total {
                    tick.tick().await;
                    n += 1;
                    let (a, b) = calls(n);
                    running.spawn(timed(sides[0].clone(), a));
                    running.spawn(timed(sides[1].clone(), b));
                    // Reap the finished calls as they go.
                    while running.try_join_next().is_some() {}
                }
                while running.join_next().await.is_some() {}
            })
        }

        /// Waits for the end of second `s` (from 0).
        pub(super) async fn end_of(&self, s: usize) {
            tokio::time::sleep_until(self.start + Duration::from_secs(s as u64 + 1)).await;
        }

        /// The phase second `s` (from 0) begins in.
        pub(super) fn phase(&self, s: usize) -> &'static str {
            let at = Duration::from_secs(s as u64);
            let phase = self.phases.iter().find(|p| at < p.1);
            phase.unwrap_or(&self.phases[self.phases.len() - 1]).0
        }

        /// When phase `i` starts, from the start of the run.
        pub(super) fn start_of(&self, i: usize) -> Duration {
            i.checked_sub(1)
                .map_or(Duration::ZERO, |i| self.phases[i].1)
        }

        /// The whole seconds of phase `i`; the last phase's take in the seconds after the run
        /// (the last holds the stragglers).
        pub(super) fn during(&self, i: usize) -> Range<usize> {
            let first = self.start_of(i).as_secs_f64().ceil() as usize;
            if i + 1 == self.phases.len() {
                first..self.seconds + 1
            } else {
                first..self.phases[i].1.as_secs() as usize
            }
        }

        /// What `side` saw in `seconds` (calls counted by the second they started in, latencies
        /// by the one they ended in).
        pub(super) fn totals(&self, side: usize, seconds: Range<usize>) -> Totals {
            let (mut calls, mut failed, mut latencies) = (0, 0, Vec::new());
            for second in &self.sides[side].seconds[seconds] {
                calls += second.offered.load(Relaxed);
                failed += second.failed.load(Relaxed);
                latencies.extend_from_slice(&second.latencies.lock().unwrap());
            }
            let (p50, p99) = split(percentiles(&mut latencies));
            Totals {
                calls,
                failed,
                p50,
                p99,
            }
        }
    }

    /// Counts one call on `side`, and how it ended.
    async fn timed(side: Arc<Side>, call: impl Future<Output = Result<bool, BoxError>>) {
        side.now().offered.fetch_add(1, Relaxed);
        let since = Instant::now();
        let answer = match tokio::time::timeout(GIVE_UP, call).await {
            Ok(Ok(true)) => Answer::Fresh,
            _ => Answer::Failed,
        };
        side.ended(since, answer);
    }

    /// A plain call: whether the answer is a 2xx, once its body is read.
    pub(super) async fn get(hyper: Hyper, request: http::Request<Body>) -> Result<bool, BoxError> {
        let response = hyper.request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        Ok(ok)
    }

    /// `hyper` as a tower service answering with whole bodies, to put a layer on.
    pub(super) fn collected(
        hyper: Hyper,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Bytes>,
        Error = io::Error,
        Future: Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        tower::service_fn(move |request: http::Request<Body>| {
            let hyper = hyper.clone();
            async move {
                let response = hyper.request(request).await.map_err(io::Error::other)?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
                Ok::<_, io::Error>(http::Response::<Bytes>::from_parts(parts, body))
            }
        })
    }

    /// A second's calls, p50 and p99 on one side: the first columns of every table.
    pub(super) fn cells(second: &Second) -> [String; 3] {
        let (p50, p99) = split(percentiles(&mut second.latencies.lock().unwrap().clone()));
        [
            second.offered.load(Relaxed).to_string(),
            millis(p50),
            millis(p99),
        ]
    }

    /// A table with a row a second: the second, its phase, then each side's columns (a name
    /// and a width each) under the side's title.
    pub(super) struct Table {
        pub(super) sides: [(&'static str, &'static [(&'static str, usize)]); 2],
    }

    impl Table {
        pub(super) fn header(&self) -> String {
            let mut titles = format!("{:>3} {:<7}", "", "");
            let mut names = format!("{:>3} {:<7}", "s", "phase");
            for (title, columns) in self.sides {
                let width: usize = columns.iter().map(|c| c.1).sum();
                let _ = write!(titles, " | {title:^width$}");
                names.push_str(" |");
                for (name, width) in columns {
                    let _ = write!(names, "{name:>width$}");
                }
            }
            titles + "\n" + &names
        }

        /// Second `s`'s row (`s` from 0; printed from 1).
        pub(super) fn row(&self, s: usize, phase: &str, cells: [&[String]; 2]) -> String {
            let mut row = format!("{:>3} {:<7}", s + 1, phase);
            for ((_, columns), cells) in self.sides.iter().zip(cells) {
                row.push_str(" |");
                for ((_, width), cell) in columns.iter().zip(cells) {
                    let _ = write!(row, "{cell:>width$}");
                }
            }
            row
        }
    }
}

/// `--scenario tail`: hedged requests against a backend with a slow tail.
///
/// Two identical backends on loopback answer each request in 20 to 40 ms, except 2 % of them
/// (drawn independently per request, so a hedge of a stalled request is most likely fast),
/// which stall for a second first, as a replica pausing or a packet retransmitted would. Each
/// gets 300 requests a second, arriving at a steady rate whatever the answers: one straight
/// from a hyper client, one through [`HedgeLayer::http`] with its defaults (a hedge once a
/// request has been outstanding for the 95th percentile of recent latencies, within a budget of
/// 5 % of requests plus one a second). The first seconds warm the hedge's latency window up
/// (no hedging until it holds 100 latencies and a second has passed); the summary covers the
/// seconds after. Without hedging the p99 is the stall; with it, about the 95th percentile plus
/// one more fast answer. `--check` fails the run unless the hedged p99 is under 250 ms and under
/// a third of the unhedged one, the unhedged p99 shows the stall, and the hedged backend got at
/// most 1.10 times the requests.
#[cfg(feature = "hedge")]
mod tail {
    use super::steady::{self, Run, Table};
    use super::{millis, serve, Body, Options};
    use axum::extract::State;
    use axum::routing::get;
    use axum::Router;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use rand::Rng;
    use seawall::core::{Event, EventKind};
    use seawall::hedge::HedgeLayer;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{BoxError, ServiceBuilder, ServiceExt};

    /// Requests a second on each side.
    const RATE: u64 = 300;
    /// The share of requests that stall, and for how long.
    const STALLED: f64 = 0.02;
    const STALL: Duration = Duration::from_secs(1);
    /// Seconds (at `--scale 1`) of warm-up, then measured.
    const WARM_UP: f64 = 3.0;
    const MEASURED: f64 = 10.0;

    /// A backend: 20 to 40 ms a request, after a stall for `STALLED` of them.
    #[derive(Default)]
    struct Backend {
        served: AtomicU64,
    }

    async fn item(State(backend): State<Arc<Backend>>) -> &'static str {
        backend.served.fetch_add(1, Relaxed);
        let (stall, work) = {
            let mut rng = rand::rng();
            (rng.random_bool(STALLED), rng.random_range(20..=40))
        };
        if stall {
            tokio::time::sleep(STALL).await;
        }
        tokio::time::sleep(Duration::from_millis(work)).await;
        "item"
    }

    pub(super) async fn run(options: &Options) -> Result<(), BoxError> {
        let run = Run::new(options, &[("warm-up", WARM_UP), ("tail", MEASURED)]);
        let start = run.start;
        let hedges: Arc<Vec<AtomicU64>> =
            Arc::new((0..=run.seconds).map(|_| AtomicU64::new(0)).collect());
        let won = Arc::new(AtomicU64::new(0));

        let (bare_backend, hedged_backend) = (Arc::<Backend>::default(), Arc::<Backend>::default());
        let router = |backend: Arc<Backend>| {
            Router::new()
                .route("/item/{id}", get(item))
                .with_state(backend)
        };
        let bare_addr = serve(router(bare_backend.clone())).await?;
        let hedged_addr = serve(router(hedged_backend.clone())).await?;
        let hyper = Client::builder(TokioExecutor::new()).build_http::<Body>();

        // The hedged client: `HedgeLayer::http()`'s defaults, counting the hedges it sends.
        let observer = {
            let (hedges, won) = (hedges.clone(), won.clone());
            move |event: &Event<'_>| match event.kind {
                EventKind::HedgeSent { .. } => {
                    let s = start.elapsed().as_secs() as usize;
                    hedges[s.min(hedges.len() - 1)].fetch_add(1, Relaxed);
                }
                EventKind::HedgeWon { .. } => {
                    won.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        };
        let hedge = HedgeLayer::http().name("tail").observer(observer).build()?;
        let client = ServiceBuilder::new()
            .layer(hedge)
            .service(steady::collected(hyper.clone()));

        println!(
            "seawall tail: {RATE} requests/s on each of two backends on loopback, 20-40 ms each, \
             {}% stalled for {} s first\nwithout hedging: http://{bare_addr}/   with \
             HedgeLayer::http(): http://{hedged_addr}/\n",
            STALLED * 100.0,
            STALL.as_secs_f64()
        );
        let table = Table {
            sides: [
                ("without hedging", &[("calls", 6), ("p50", 7), ("p99", 7)]),
                (
                    "with hedging",
                    &[
                        ("calls", 6),
                        ("p50", 7),
                        ("p99", 7),
                        ("hedges", 7),
                        ("served", 7),
                    ],
                ),
            ],
        };
        println!("{}", table.header());

        // The same item on both sides.
        let arrivals = run.drive(RATE, move |n| {
            let id = n % 50;
            let request = |addr| {
                http::Request::get(format!("http://{addr}/item/{id}"))
                    .body(Body::new())
                    .unwrap()
            };
            let bare = steady::get(hyper.clone(), request(bare_addr));
            let hedged = client.clone().oneshot(request(hedged_addr));
            (bare, async move { Ok(hedged.await?.status().is_success()) })
        });

        let mut served = [0u64; 2];
        for s in 0..run.seconds {
            run.end_of(s).await;
            let now = hedged_backend.served.load(Relaxed);
            let hedged = steady::cells(&run.sides[1].seconds[s]);
            let hedged = [
                &hedged[..],
                &[
                    hedges[s].load(Relaxed).to_string(),
                    (now - served[1]).to_string(),
                ],
            ]
            .concat();
            let bare = steady::cells(&run.sides[0].seconds[s]);
            println!("{}", table.row(s, run.phase(s), [&bare, &hedged]));
            served[1] = now;
        }
        arrivals.await?;
        served = [
            bare_backend.served.load(Relaxed),
            hedged_backend.served.load(Relaxed),
        ];

        // The measured seconds: calls that started after the warm-up (their latencies are
        // binned by the second they ended in; the last bin holds the stragglers).
        let b = run.totals(0, run.during(1));
        let h = run.totals(1, run.during(1));
        let sent: u64 = hedges.iter().map(|h| h.load(Relaxed)).sum();
        let calls = run.totals(1, 0..run.seconds + 1).calls;
        let load = served[1] as f64 / calls.max(1) as f64;
        println!(
            "\nafter the warm-up: without hedging {} calls ({} failed), p50 {}, p99 {}; with \
             hedging {} calls ({} failed), p50 {}, p99 {}\nhedges: {sent} sent, {} won; backend \
             requests for {calls} calls: {} without hedging, {} with it ({load:.3}x)",
            b.calls,
            b.failed,
            millis(b.p50),
            millis(b.p99),
            h.calls,
            h.failed,
            millis(h.p50),
            millis(h.p99),
            won.load(Relaxed),
            served[0],
            served[1],
        );
        if options.check {
            let (b99, h99) = (b.p99.unwrap_or(0), h.p99.unwrap_or(u32::MAX));
            let stall = STALL.as_micros() as u32;
            if b99 < stall / 2 {
                return Err(
                    format!("without hedging, p99 {}: no tail to cut", millis(Some(b99))).into(),
                );
            }
            if h99 > 250_000 || h99 > b99 / 3 {
                return Err(format!(
                    "with hedging, p99 {} (without: {})",
                    millis(Some(h99)),
                    millis(Some(b99))
                )
                .into());
            }
            if load > 1.10 {
                return Err(format!("hedging sent {load:.3}x the calls to the backend").into());
            }
            if b.failed + h.failed > 0 {
                return Err(format!("{} and {} calls failed", b.failed, h.failed).into());
            }
            println!(
                "check passed: hedging cut the p99 from {} to {} for {load:.3}x the backend requests",
                millis(Some(b99)),
                millis(Some(h99))
            );
        }
        Ok(())
    }
}

/// `--scenario cache`: the read-heavy service of issue 22, with and without [`CacheLayer::http`].
///
/// Two identical backends on loopback answer each request in 20 to 40 ms, as a database behind a
/// service would. Each gets 667 requests a second at a steady rate whatever the answers: 95 %
/// reads (`GET /item/{id}`) and 5 % writes (`POST`, which pass by the cache). Reads ask for 10,000
/// items, 80 % of them for a hot set of 100. One side calls its backend straight from a hyper
/// client; the other through [`CacheLayer::http`] keyed on the path of `GET`s (ttl 60 s,
/// stale-while-revalidate 30 s, up to 20,000 entries), so that a hit never reaches the backend.
/// The table shows, a second at a time, each side's calls, p50 and p99, the cache's hit ratio,
/// and the requests a second reaching each backend. After the warm-up, `--check` fails the run
/// unless the hit ratio is at least 70 %, the cached backend got at most 40 % of the requests
/// the uncached one got, the cached p50 is under 5 ms while the uncached one is at least 20 ms,
/// the cached p99 is no worse than 1.5 times the uncached one (misses still take 20 to 40 ms),
/// and no call failed.
///
/// [`CacheLayer::http`]: seawall::cache::CacheLayer::http
#[cfg(feature = "cache")]
mod reads {
    use super::steady::{self, Run, Table};
    use super::{millis, serve, Body, Options};
    use axum::extract::State;
    use axum::routing::get;
    use axum::Router;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use rand::Rng;
    use seawall::cache::CacheLayer;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{BoxError, ServiceBuilder, ServiceExt};

    /// Requests a second on each side (the service of the issue).
    const RATE: u64 = 667;
    /// The share of requests that are writes.
    const WRITES: f64 = 0.05;
    /// Items, the hot set, and the share of reads that ask for the hot set.
    const ITEMS: u64 = 10_000;
    const HOT: u64 = 100;
    const HOT_SHARE: f64 = 0.8;
    /// Seconds (at `--scale 1`) of warm-up, then measured.
    const WARM_UP: f64 = 3.0;
    const MEASURED: f64 = 10.0;
    /// A backend: 20 to 40 ms a request, counting what reaches it.
    #[derive(Default)]
    struct Backend {
        served: AtomicU64,
    }

    async fn work(State(backend): State<Arc<Backend>>) -> &'static str {
        backend.served.fetch_add(1, Relaxed);
        let ms = rand::rng().random_range(20..=40);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        "item"
    }

    /// The next request's method and path: a write, or a read of a hot or a cold item.
    fn next_request(addr: std::net::SocketAddr) -> (http::Method, String) {
        let mut rng = rand::rng();
        let write = rng.random_bool(WRITES);
        let id = if rng.random_bool(HOT_SHARE) {
            rng.random_range(0..HOT)
        } else {
            rng.random_range(HOT..ITEMS)
        };
        let method = if write {
            http::Method::POST
        } else {
            http::Method::GET
        };
        (method, format!("http://{addr}/item/{id}"))
    }

    pub(super) async fn run(options: &Options) -> Result<(), BoxError> {
        let run = Run::new(options, &[("warm-up", WARM_UP), ("reads", MEASURED)]);

        let (bare_backend, cached_backend) = (Arc::<Backend>::default(), Arc::<Backend>::default());
        let router = |backend: Arc<Backend>| {
            Router::new()
                .route("/item/{id}", get(work).post(work))
                .with_state(backend)
        };
        let bare_addr = serve(router(bare_backend.clone())).await?;
        let cached_addr = serve(router(cached_backend.clone())).await?;
        let hyper = Client::builder(TokioExecutor::new()).build_http::<Body>();

        // The cached client: `GET`s keyed on their path (one backend, so the path is the
        // whole of what makes an answer); anything else passes by.
        let cache = CacheLayer::http(|request: &http::Request<Body>| {
            (request.method() == http::Method::GET).then(|| request.uri().path().to_owned())
        })
        .ttl(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(30))
        .max_entries(20_000)
        .name("reads")
        .build()?;
        let handle = cache.handle();
        let client = ServiceBuilder::new()
            .layer(cache)
            .service(steady::collected(hyper.clone()));

        println!(
            "seawall cache: {RATE} requests/s on each of two backends on loopback, 20-40 ms each; \
             {}% reads of {ITEMS} items, {}% of them of {HOT} hot ones\nwithout the cache: \
             http://{bare_addr}/   with CacheLayer::http(): http://{cached_addr}/\n",
            100.0 * (1.0 - WRITES),
            100.0 * HOT_SHARE,
        );
        let table = Table {
            sides: [
                (
                    "without the cache",
                    &[("calls", 6), ("p50", 7), ("p99", 7), ("load", 7)],
                ),
                (
                    "with the cache",
                    &[
                        ("calls", 6),
                        ("p50", 7),
                        ("p99", 7),
                        ("hits", 7),
                        ("load", 7),
                    ],
                ),
            ],
        };
        println!("{}", table.header());

        // The same requests on both sides.
        let arrivals = run.drive(RATE, move |_| {
            let (method, path) = next_request(bare_addr);
            let cached_path = path.replace(&bare_addr.to_string(), &cached_addr.to_string());
            let request = |method, path| {
                http::Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::new())
                    .unwrap()
            };
            let bare = steady::get(hyper.clone(), request(method.clone(), path));
            let cached = client.clone().oneshot(request(method, cached_path));
            (bare, async move { Ok(cached.await?.status().is_success()) })
        });

        let mut served = [0u64; 2];
        let mut stats = handle.stats();
        for s in 0..run.seconds {
            run.end_of(s).await;
            let now = [
                bare_backend.served.load(Relaxed),
                cached_backend.served.load(Relaxed),
            ];
            let then = handle.stats();
            let (hits, misses) = (then.hits - stats.hits, then.misses - stats.misses);
            stats = then;
            let bare = steady::cells(&run.sides[0].seconds[s]);
            let bare = [&bare[..], &[(now[0] - served[0]).to_string()]].concat();
            let cached = steady::cells(&run.sides[1].seconds[s]);
            let hits = 100.0 * hits as f64 / (hits + misses).max(1) as f64;
            let cached = [
                &cached[..],
                &[format!("{hits:.0}%"), (now[1] - served[1]).to_string()],
            ]
            .concat();
            println!("{}", table.row(s, run.phase(s), [&bare, &cached]));
            served = now;
        }
        arrivals.await?;

        // The measured seconds: calls that ended after the warm-up, and the backend's load over
        // the same seconds (the rows' totals).
        let b = run.totals(0, run.during(1));
        let c = run.totals(1, run.during(1));
        let stats = handle.stats();
        let hit_ratio = stats.hits as f64 / (stats.hits + stats.misses).max(1) as f64;
        let served = [
            bare_backend.served.load(Relaxed),
            cached_backend.served.load(Relaxed),
        ];
        let load = served[1] as f64 / served[0].max(1) as f64;
        println!(
            "\nafter the warm-up: without the cache {} calls ({} failed), p50 {}, p99 {}; with it \
             {} calls ({} failed), p50 {}, p99 {}\ncache: {} hits, {} misses ({:.1}% hits over \
             the whole run), {} coalesced, {} refreshes; backend requests: {} without the cache, \
             {} with it ({load:.3}x)",
            b.calls,
            b.failed,
            millis(b.p50),
            millis(b.p99),
            c.calls,
            c.failed,
            millis(c.p50),
            millis(c.p99),
            stats.hits,
            stats.misses,
            100.0 * hit_ratio,
            stats.coalesced,
            stats.refreshes,
            served[0],
            served[1],
        );
        if options.check {
            let (b50, b99) = (b.p50.unwrap_or(0), b.p99.unwrap_or(0));
            let (c50, c99) = (c.p50.unwrap_or(u32::MAX), c.p99.unwrap_or(u32::MAX));
            if hit_ratio < 0.70 {
                return Err(format!("hit ratio {:.1}%, under 70%", 100.0 * hit_ratio).into());
            }
            if load > 0.40 {
                return Err(format!("the cached backend got {load:.3}x the requests").into());
            }
            if c50 >= 5_000 || b50 < 20_000 {
                return Err(format!(
                    "p50 {} with the cache, {} without",
                    millis(Some(c50)),
                    millis(Some(b50))
                )
                .into());
            }
            if c99 as f64 > 1.5 * b99 as f64 {
                return Err(format!(
                    "p99 {} with the cache, {} without",
                    millis(Some(c99)),
                    millis(Some(b99))
                )
                .into());
            }
            if b.failed + c.failed > 0 {
                return Err(format!("{} and {} calls failed", b.failed, c.failed).into());
            }
            println!(
                "check passed: {:.1}% hits, the backend's load {load:.3}x, p50 {} against {}",
                100.0 * hit_ratio,
                millis(Some(c50)),
                millis(Some(b50))
            );
        }
        Ok(())
    }
}

/// `--scenario replicas`: four replicas of one dependency, one failing for a while, called
/// through a plain round robin and through a [`Pool`](seawall::pool::Pool).
///
/// Each side has its own four axum servers on loopback, answering in 5 to 15 ms, and gets 300
/// requests a second at a steady rate whatever the answers. After 4 seconds (at `--scale 1`)
/// replica 2 of each side answers every request with a 503 at once (no `Retry-After`), for 6
/// seconds, then serves again for the last 7. One side sends its requests round robin, as a
/// client without a balancer or tower's balance without ejection would spread them over equal
/// replicas: a quarter of its calls fail while the replica does. The other calls through a
/// pool, with shorter ejection times than the defaults so that the run shows a whole cycle: 3
/// failures in a row eject (default 5), an ejection lasts 1 s, doubling per ejection in a row
/// up to 4 s (default 30 s up to 300 s; these times scale with `--scale`, as the phases do);
/// the failure penalty (a failure counts as 5 s in the replica's latency) is the default. The penalty keeps calls off the replica from its first
/// failure; it is given one call again a second later, and its third failure ejects it; the
/// probes at the end of each ejection fail until it has recovered, and the first one after
/// brings it back, to its share of the calls at once.
///
/// The table shows, a second at a time, each side's calls, failures, p50 and p99, and each
/// replica's share of the requests that reached the side's servers; on the pool's side, the
/// failing replica's state as the pool's [`PoolHandle`](seawall::pool::PoolHandle) reads it at
/// the second's end, and the ejections and returns of that second. `--check` fails the run
/// unless the failing replica took its share before the fault on both sides; the round robin
/// saw at least half a quarter of its calls fail during the fault; the pool ejected the replica
/// within 4 s of the fault; the pool's side saw at most 5 failures plus one per probe, and a
/// tenth of the round robin's at most; and the replica came back after the fault and served at
/// least a tenth of the pool's requests in the seconds after its return.
#[cfg(feature = "pool")]
mod replicas {
    use super::steady::{self, Run, Table};
    use super::{millis, serve, Body, Options};
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use rand::Rng;
    use seawall::core::{EjectReason, Event, EventKind};
    use seawall::http::HttpClassifier;
    use seawall::pool::{EndpointState, Pool};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tower::{BoxError, ServiceExt};

    /// Replicas on each side, and the one that fails.
    const REPLICAS: usize = 4;
    const FAILING: usize = 2;
    /// Requests a second on each side.
    const RATE: u64 = 300;
    /// Seconds (at `--scale 1`): healthy, the replica failing, healthy again.
    const HEALTHY: f64 = 4.0;
    const FAULT: f64 = 6.0;
    const HEALED: f64 = 7.0;
    /// The pool's settings that differ from the defaults (times in seconds at `--scale 1`).
    const CONSECUTIVE: u32 = 3;
    const EJECTION: f64 = 1.0;
    const EJECTION_MAX: f64 = 4.0;
    /// `--check`: the pool ejects within this long of the fault (seconds at `--scale 1`), and
    /// its side sees at most this many failures beyond one per probe.
    const EJECTED_WITHIN: f64 = 4.0;
    const HANDFUL: u64 = 5;

    /// One replica: 5 to 15 ms a request, or a 503 at once while failing.
    #[derive(Default)]
    struct Replica {
        served: AtomicU64,
        failing: AtomicBool,
    }

    async fn item(State(replica): State<Arc<Replica>>) -> (StatusCode, &'static str) {
        replica.served.fetch_add(1, Relaxed);
        if replica.failing.load(Relaxed) {
            return (StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
        let ms = rand::rng().random_range(5..=15);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        (StatusCode::OK, "item")
    }

    /// An ejection or a return of the failing replica, and when (from the start).
    enum Change {
        Ejected(Duration, EjectReason, Duration),
        Returned(Duration),
    }

    impl Change {
        fn at(&self) -> Duration {
            match self {
                Change::Ejected(at, ..) | Change::Returned(at) => *at,
            }
        }

        fn describe(&self) -> String {
            match self {
                Change::Ejected(_, EjectReason::ProbeFailed, time) => {
                    format!("probe failed, ejected {:.1}s", time.as_secs_f64())
                }
                Change::Ejected(_, reason, time) => {
                    format!("ejected {:.1}s ({})", time.as_secs_f64(), reason.as_str())
                }
                Change::Returned(_) => "probe ok, back".into(),
            }
        }
    }

    fn state(state: EndpointState) -> &'static str {
        match state {
            EndpointState::Available => "active",
            EndpointState::Penalised { .. } => "penalised",
            EndpointState::Held => "held",
            EndpointState::Ejected { .. } => "ejected",
            EndpointState::Probing => "probing",
            EndpointState::Removed => "removed",
            _ => "?",
        }
    }

    /// Starts `REPLICAS` servers.
    async fn replicas() -> Result<(Vec<Arc<Replica>>, Vec<SocketAddr>), BoxError> {
        let replicas: Vec<Arc<Replica>> = (0..REPLICAS).map(|_| Arc::default()).collect();
        let mut addrs = Vec::new();
        for replica in &replicas {
            let router = Router::new()
                .route("/item/{id}", get(item))
                .with_state(replica.clone());
            addrs.push(serve(router).await?);
        }
        Ok((replicas, addrs))
    }

    pub(super) async fn run(options: &Options) -> Result<(), BoxError> {
        let run = Run::new(
            options,
            &[("healthy", HEALTHY), ("fault", FAULT), ("healed", HEALED)],
        );
        let (start, fault, healed) = (run.start, run.start_of(1), run.start_of(2));
        let scaled = |seconds: f64| Duration::from_secs_f64(seconds * options.scale);
        let (ejection, ejection_max) = (scaled(EJECTION), scaled(EJECTION_MAX));
        let sides = [replicas().await?, replicas().await?];
        let hyper = Client::builder(TokioExecutor::new()).build_http::<Body>();
        // One endpoint of the pool a replica: requests sent to its address.
        let endpoint = |addr: SocketAddr| {
            let replica = steady::collected(hyper.clone());
            replica.map_request(move |mut request: http::Request<Body>| {
                *request.uri_mut() = format!("http://{addr}{}", request.uri().path())
                    .parse()
                    .unwrap();
                request
            })
        };

        // The pool, recording its ejections and returns of the failing replica.
        let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
        let observer = {
            let changes = changes.clone();
            move |event: &Event<'_>| {
                let change = match event.kind {
                    EventKind::EndpointEjected { reason, duration } => {
                        Change::Ejected(start.elapsed(), reason, duration)
                    }
                    EventKind::EndpointReturned => Change::Returned(start.elapsed()),
                    _ => return,
                };
                if event
                    .key
                    .is_some_and(|k| format!("{k:?}") == FAILING.to_string())
                {
                    changes.lock().unwrap().push(change);
                }
            }
        };
        let pool = Pool::builder()
            .name("replicas")
            .classify(HttpClassifier::default())
            .consecutive_failures(CONSECUTIVE)
            .ejection_time(ejection)
            .ejection_backoff(2.0, ejection_max)
            .observer(observer)
            .build(sides[1].1.iter().copied().map(endpoint))?;
        let handle = pool.handle();

        println!(
            "seawall replicas: {RATE} requests/s on each side, over {REPLICAS} replicas on \
             loopback answering in 5-15 ms; replica {FAILING} answers 503 at once from {:.1} s to \
             {:.1} s\nround robin: {:?}\npool: {:?}\nthe pool ejects after {CONSECUTIVE} \
             failures in a row, for {:.1} s doubling up to {:.1} s (shortened for the \
             demonstration: the defaults are 5, and 30 s up to 300 s), with the default failure \
             penalty\n",
            fault.as_secs_f64(),
            healed.as_secs_f64(),
            sides[0].1,
            sides[1].1,
            ejection.as_secs_f64(),
            ejection_max.as_secs_f64(),
        );
        const SHARES: [(&str, usize); REPLICAS] = [("r0", 5), ("r1", 5), ("r2", 5), ("r3", 5)];
        const BARE: [(&str, usize); 8] = [
            ("calls", 6),
            ("fail", 6),
            ("p50", 7),
            ("p99", 7),
            SHARES[0],
            SHARES[1],
            SHARES[2],
            SHARES[3],
        ];
        const POOLED: [(&str, usize); 9] = [
            BARE[0],
            BARE[1],
            BARE[2],
            BARE[3],
            SHARES[0],
            SHARES[1],
            SHARES[2],
            SHARES[3],
            ("  r2 state", 10),
        ];
        let table = Table {
            sides: [("round robin", &BARE), ("pool", &POOLED)],
        };
        println!("{}", table.header());

        // The fault, on both sides at once.
        let failing = [sides[0].0[FAILING].clone(), sides[1].0[FAILING].clone()];
        let fault_task = tokio::spawn(async move {
            for (at, on) in [(fault, true), (healed, false)] {
                tokio::time::sleep_until(start + at).await;
                for replica in &failing {
                    replica.failing.store(on, Relaxed);
                }
            }
        });

        // The same item on both sides; round robin takes the replicas in turn.
        let round_robin = sides[0].1.clone();
        let arrivals = run.drive(RATE, move |n| {
            let path = format!("/item/{}", n % 50);
            let addr = round_robin[n as usize % REPLICAS];
            let request = |uri: String| http::Request::get(uri).body(Body::new()).unwrap();
            let bare = steady::get(hyper.clone(), request(format!("http://{addr}{path}")));
            let pooled = pool.clone().oneshot(request(path));
            (bare, async move { Ok(pooled.await?.status().is_success()) })
        });

        // Each replica's requests, a second at a time.
        let mut served: Vec<[[u64; REPLICAS]; 2]> = Vec::with_capacity(run.seconds);
        let mut before = [[0u64; REPLICAS]; 2];
        let mut states = Vec::new();
        for s in 0..run.seconds {
            run.end_of(s).await;
            let mut cells: [Vec<String>; 2] = Default::default();
            let mut this = [[0u64; REPLICAS]; 2];
            for side in 0..2 {
                let now: [u64; REPLICAS] =
                    std::array::from_fn(|r| sides[side].0[r].served.load(Relaxed));
                this[side] = std::array::from_fn(|r| now[r] - before[side][r]);
                before[side] = now;
                let second = &run.sides[side].seconds[s];
                let [calls, p50, p99] = steady::cells(second);
                let failed = second.failed.load(Relaxed).to_string();
                cells[side] = vec![calls, failed, p50, p99];
                let total: u64 = this[side].iter().sum();
                for n in this[side] {
                    cells[side].push(format!("{:.0}%", 100.0 * n as f64 / total.max(1) as f64));
                }
            }
            served.push(this);
            let status = handle
                .endpoints()
                .into_iter()
                .find(|e| e.key == FAILING.to_string())
                .map_or(EndpointState::Removed, |e| e.state);
            states.push(status);
            cells[1].push(state(status).into());
            let changes: Vec<String> = changes
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.at().as_secs() == s as u64)
                .map(Change::describe)
                .collect();
            let row = table.row(s, run.phase(s), [&cells[0], &cells[1]]);
            println!("{}", format!("{row}  {}", changes.join("; ")).trim_end());
        }
        arrivals.await?;
        fault_task.await?;

        // The fault's whole seconds (one it starts or ends in is left out).
        let during = run.during(1);
        let b = run.totals(0, 0..run.seconds + 1);
        let p = run.totals(1, 0..run.seconds + 1);
        let (bf, pf) = (run.totals(0, during.clone()), run.totals(1, during.clone()));
        let share = |side: usize, seconds: std::ops::Range<usize>| {
            let (mut failing, mut all) = (0, 0);
            for s in &served[seconds] {
                failing += s[side][FAILING];
                all += s[side].iter().sum::<u64>();
            }
            (failing, failing as f64 / all.max(1) as f64)
        };
        let changes = changes.lock().unwrap();
        let ejected = changes
            .iter()
            .find(|c| matches!(c, Change::Ejected(..)))
            .map(Change::at);
        let returned = changes
            .iter()
            .filter(|c| matches!(c, Change::Returned(_)))
            .map(Change::at)
            .next_back();
        let ejections = changes
            .iter()
            .filter(|c| matches!(c, Change::Ejected(..)))
            .count() as u64;
        let after =
            |t: Option<Duration>| t.map_or("-".into(), |t| format!("{:.1}s", t.as_secs_f64()));
        println!(
            "\nround robin: {} calls, {} failed ({} in the fault's whole seconds, of {}), p50 {}, \
             p99 {}; replica {FAILING} got {} requests in those seconds\npool: {} calls, {} \
             failed ({} in the fault's whole seconds, of {}), p50 {}, p99 {}; replica {FAILING} \
             got {} requests in those seconds\nreplica {FAILING} in the pool: ejected at {}, {} \
             ejections (each ended by one probe), back at {}, {} at the end",
            b.calls,
            b.failed,
            bf.failed,
            bf.calls,
            millis(b.p50),
            millis(b.p99),
            share(0, during.clone()).0,
            p.calls,
            p.failed,
            pf.failed,
            pf.calls,
            millis(p.p50),
            millis(p.p99),
            share(1, during.clone()).0,
            after(ejected),
            ejections,
            after(returned),
            states.last().copied().map_or("-", state),
        );
        if options.check {
            for (side, name) in [(0, "round robin"), (1, "pool")] {
                let (_, before) = share(side, run.during(0));
                if before < 0.10 {
                    return Err(format!(
                        "{name}: replica {FAILING} took {:.1}% of the requests before its fault",
                        100.0 * before
                    )
                    .into());
                }
            }
            if (bf.failed as f64) < bf.calls as f64 / REPLICAS as f64 / 2.0 {
                return Err(format!(
                    "round robin: {} of {} calls failed during the fault",
                    bf.failed, bf.calls
                )
                .into());
            }
            match ejected {
                Some(at) if at >= fault && at <= fault + scaled(EJECTED_WITHIN) => {}
                _ => {
                    return Err(format!(
                        "the pool ejected replica {FAILING} at {} (fault at {:.1}s)",
                        after(ejected),
                        fault.as_secs_f64()
                    )
                    .into())
                }
            }
            if p.failed > HANDFUL + ejections || p.failed * 10 > b.failed {
                return Err(format!(
                    "{} calls failed through the pool ({ejections} probes), {} round robin",
                    p.failed, b.failed
                )
                .into());
            }
            let Some(back) = returned.filter(|t| *t >= healed) else {
                return Err(format!(
                    "replica {FAILING} not brought back after the fault (returned at {})",
                    after(returned)
                )
                .into());
            };
            let since = back.as_secs() as usize + 1..run.seconds;
            if since.is_empty() {
                return Err(
                    format!("replica {FAILING} back at {}, at the end", after(returned)).into(),
                );
            }
            let (requests, share_after) = share(1, since);
            if share_after < 0.10 {
                return Err(format!(
                    "replica {FAILING} back at {}, then {requests} requests ({:.1}%)",
                    after(returned),
                    100.0 * share_after
                )
                .into());
            }
            println!(
                "check passed: the pool ejected replica {FAILING} {:.1}s into its fault and brought \
                 it back {:.1}s after it ended ({:.0}% of the requests then); {} failed calls \
                 through the pool, {} round robin",
                (ejected.unwrap_or_default() - fault).as_secs_f64(),
                (back - healed).as_secs_f64(),
                100.0 * share_after,
                p.failed,
                b.failed,
            );
        }
        Ok(())
    }
}
