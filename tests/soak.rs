//! Soak: a real axum server on loopback, behind the standard server stack and chaos layers that
//! fail, slow and stall its requests, and a hyper-util client behind the standard client stack
//! and a fallback, sending 100,000 requests from 200 tasks. Every request is accounted for once,
//! nothing hangs, every limiter is idle at the end, and memory after the run is within a small
//! bound of memory before it.
//!
//! Real time, necessarily (a socket does not follow paused time); the faults' delays are short
//! and the whole run is bounded.

use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::rt::TokioExecutor;
use seawall::axum::HandleErrorsLayer;
use seawall::chaos::{ChaosLayer, Fault};
use seawall::error::ErrorKind;
use seawall::fallback::{FallbackLayer, Select, Trigger};
use seawall::limit::algorithm::{Gradient2, Windowed};
use seawall::limit::AdaptiveLimitLayer;
use seawall::stack::{ClientStack, ServerStack};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// Counts the bytes allocated and not yet freed, over the whole process.
struct Tracking;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

const TASKS: usize = 200;
const PER_TASK: usize = 500;

/// How one request ended, from the caller's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Served,
    FailedResponse(u16),
    Fallback,
    Rejected(&'static str),
    OtherError,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_soak_through_faults_is_accounted_for() {
    // The server: a handler behind chaos (5 % errors, 5 % delayed by 20 ms; then 0.5 % stalled
    // for 3 s, past every timeout), under the server stack and seawall's error responses.
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let flaky = ChaosLayer::builder()
        .error(0.05)
        .latency(0.05, Duration::from_millis(20))
        .seed(1)
        .enabled(true)
        .build()
        .unwrap();
    let stalls = ChaosLayer::builder()
        .latency(0.005, Duration::from_secs(3))
        .seed(2)
        .enabled(true)
        .build()
        .unwrap();
    let (flaky_handle, stall_handle) = (flaky.handle(), stalls.handle());
    // Room for the 200 callers: the limiter is here to be released correctly, not to shed.
    let mut gradient = Gradient2::default();
    gradient.initial = 300.0;
    gradient.min = 300.0;
    gradient.max = 1_000.0;
    let limiter = AdaptiveLimitLayer::builder(Windowed::new(gradient))
        .build()
        .unwrap();
    let limit = limiter.handle();
    let server_stack = ServerStack::new()
        .concurrency_layer(limiter)
        .timeout(Duration::from_secs(1));
    let app = Router::new()
        .route(
            "/item",
            get(move || {
                count.fetch_add(1, Relaxed);
                async { "ok" }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorsLayer::new())
                .layer(server_stack)
                .layer(stalls)
                .layer(flaky),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The client: the standard HTTP client stack (attempts cut at one second, four in all: a
    // stall is cut, and a loaded machine is not), and a fallback for an open breaker.
    let fetch = fetch();
    let stack = ClientStack::http()
        .total_timeout(Duration::from_secs(4))
        .attempt_timeout(Duration::from_secs(1));
    let breaker = stack.breaker_layer().unwrap().handle();
    let client = ServiceBuilder::new()
        .layer(
            FallbackLayer::from_fn(|_: Trigger<'_, Response<Bytes>>| {
                let mut response = Response::new(Bytes::from_static(b"fallback"));
                response
                    .headers_mut()
                    .insert("x-fallback", "1".parse().unwrap());
                response
            })
            .when(Select::rejections([ErrorKind::CircuitOpen])),
        )
        .layer(stack)
        .service(fetch);

    let uri = format!("http://{addr}/item");
    let client = Client::new(client);
    let end_of = |result: Result<Response<Bytes>, BoxError>| match result {
        Ok(response) if response.headers().contains_key("x-fallback") => End::Fallback,
        Ok(response) if response.status() == StatusCode::OK => End::Served,
        Ok(response) => End::FailedResponse(response.status().as_u16()),
        Err(err) => match seawall::error::kind(&*err) {
            Some(kind) => End::Rejected(kind.as_str()),
            None => End::OtherError,
        },
    };

    // A warm-up with the same concurrency, so that pools and caches have their size.
    let mut warm = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (client, uri) = (client.clone(), uri.clone());
        warm.spawn(async move {
            for _ in 0..5 {
                let _ = client.send(&uri).await;
            }
        });
    }
    while warm.join_next().await.is_some() {}
    wait_until_idle(&limit).await;
    let live_before = LIVE.load(Relaxed);

    // The soak.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (client, uri) = (client.clone(), uri.clone());
        tasks.spawn(async move {
            let mut ends = BTreeMap::new();
            for _ in 0..PER_TASK {
                *ends.entry(end_of(client.send(&uri).await)).or_insert(0u64) += 1;
            }
            ends
        });
    }
    let mut ends = BTreeMap::new();
    let joined = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(task) = tasks.join_next().await {
            for (end, n) in task.expect("no task panics") {
                *ends.entry(end).or_insert(0u64) += n;
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "a task hung: {ends:?}");
    let took = started.elapsed();

    // Every request ended once, in one of the expected ways.
    let total: u64 = ends.values().sum();
    assert_eq!(total, (TASKS * PER_TASK) as u64, "{ends:?}");
    let served = ends.get(&End::Served).copied().unwrap_or(0);
    assert!(
        served >= total * 9 / 10,
        "retries hide most faults: {ends:?}"
    );
    assert!(
        served <= handled.load(Relaxed),
        "no answer without a handler call"
    );
    for end in ends.keys() {
        match end {
            End::Served | End::Fallback => {}
            End::FailedResponse(status) => assert!([500, 503, 504].contains(status), "{end:?}"),
            End::Rejected(kind) => assert!(["timed_out", "circuit_open"].contains(kind), "{end:?}"),
            End::OtherError => panic!("an error no layer accounts for: {ends:?}"),
        }
    }
    assert!(flaky_handle.injected(Fault::Error) > 1_000);
    assert!(stall_handle.injected(Fault::Latency) > 100);

    // Nothing left running or held.
    wait_until_idle(&limit).await;
    assert_eq!(limit.in_flight(), 0, "the server's limiter holds a slot");
    assert_eq!(breaker.metrics().probes_in_flight, 0);
    let live_after = LIVE.load(Relaxed);
    let grown = live_after - live_before;
    println!(
        "soak: {total} requests in {took:.1?} ({:.0}/s): {ends:?}; {} handler calls; faults: {} \
         errors, {} delays, {} stalls; live memory {live_before} -> {live_after} bytes",
        total as f64 / took.as_secs_f64(),
        handled.load(Relaxed),
        flaky_handle.injected(Fault::Error),
        flaky_handle.injected(Fault::Latency),
        stall_handle.injected(Fault::Latency),
    );
    // 100,000 requests: two megabytes is 20 bytes a request, far less than any leaked request.
    assert!(
        grown < 2 << 20,
        "live memory grew by {grown} bytes over the soak"
    );
    server.abort();
}

/// hyper-util's client, reading each answer's body whole. Its error is a concrete type, not
/// `BoxError`: with a boxed error out of an `async` block, rustc cannot prove the spawned futures
/// above it `Send` (rust-lang/rust#102211).
fn fetch() -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<Bytes>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + Sync {
    let hyper = Hyper::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    tower::service_fn(move |request: Request<Empty<Bytes>>| {
        let hyper = hyper.clone();
        async move {
            let response = hyper
                .request(request)
                .await
                .map_err(std::io::Error::other)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(Response::from_parts(parts, body.to_bytes()))
        }
    })
}

/// The client stack, boxed so that the test's tasks can share its type.
#[derive(Clone)]
struct Client(tower::util::BoxCloneSyncService<Request<Empty<Bytes>>, Response<Bytes>, BoxError>);

impl Client {
    fn new<S>(service: S) -> Self
    where
        S: tower::Service<Request<Empty<Bytes>>, Response = Response<Bytes>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Client(tower::util::BoxCloneSyncService::new(service))
    }

    async fn send(&self, uri: &str) -> Result<Response<Bytes>, BoxError> {
        let request = Request::get(uri).body(Empty::new()).unwrap();
        self.0.clone().oneshot(request).await
    }
}

/// Waits, a little at a time, until the server's limiter has no call in flight (stalled requests
/// end at the server's timeout), or five seconds have passed.
async fn wait_until_idle<A, O>(limit: &seawall::limit::AdaptiveHandle<A, O>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while limit.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backend that counts the calls it is running and takes a few milliseconds, failing now and
/// then.
#[derive(Clone)]
struct Backend {
    running: Arc<AtomicI64>,
    calls: Arc<AtomicU64>,
}

impl tower::Service<u64> for Backend {
    type Response = u64;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u64) -> Self::Future {
        let running = self.running.clone();
        let n_call = self.calls.fetch_add(1, Relaxed);
        Box::pin(async move {
            /// Decrements the running count however the call ends, dropped included.
            struct Running(Arc<AtomicI64>);
            impl Drop for Running {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Relaxed);
                }
            }
            running.fetch_add(1, Relaxed);
            let _running = Running(running);
            tokio::time::sleep(Duration::from_millis(1 + n % 7)).await;
            if n_call % 11 == 0 {
                Err("backend failed".into())
            } else {
                Ok(n)
            }
        })
    }
}

/// Thousands of calls through every layer at once, each dropped at a random point (waiting in a
/// queue, in a backoff, in the backend, in an injected delay): afterwards every layer is idle
/// and the backend runs nothing.
#[tokio::test(start_paused = true)]
async fn a_cancellation_storm_leaves_every_layer_idle() {
    use seawall::bulkhead::BulkheadLayer;
    use seawall::circuit_breaker::CircuitBreakerLayer;
    use seawall::limit::rate::{Quota, RateLimitLayer};
    use seawall::limit::ThrottleLayer;
    use seawall::retry::RetryLayer;
    use seawall::timeout::TimeoutLayer;

    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(8)
        .queue(64)
        .max_wait(Duration::from_millis(30))
        .build()
        .unwrap();
    let adaptive = AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
        .queue(32)
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate_threshold(90.0)
        .build()
        .unwrap();
    let (bulkhead_handle, adaptive_handle, breaker_handle) =
        (bulkhead.handle(), adaptive.handle(), breaker.handle());
    let chaos = ChaosLayer::builder()
        .latency(0.2, Duration::from_millis(15))
        .error(0.02)
        .seed(3)
        .enabled(true)
        .build()
        .unwrap();
    let backend = Backend {
        running: Arc::new(AtomicI64::new(0)),
        calls: Arc::new(AtomicU64::new(0)),
    };
    let running = backend.running.clone();
    let chaos_handle = chaos.handle();
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::value(0u64).when(Select::rejections([ErrorKind::CircuitOpen])))
        .layer(TimeoutLayer::new(Duration::from_millis(200)))
        .layer(RetryLayer::builder().max_retries(2).build().unwrap())
        .layer(breaker)
        .layer(
            RateLimitLayer::builder(Quota::per_second(20_000).burst(500))
                .build()
                .unwrap(),
        )
        .layer(ThrottleLayer::builder().seed(5).build().unwrap())
        .layer(bulkhead)
        .layer(adaptive)
        .layer(chaos)
        .service(backend);

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..1_000u64 {
        let service = service.clone();
        tasks.spawn(async move {
            let (mut finished, mut dropped) = (0u64, 0u64);
            for call in 0..20u64 {
                // Each call gets between 0 and 40 ms before it is dropped, wherever it is.
                let patience = Duration::from_micros((task * 7_919 + call * 104_729) % 40_000);
                match tokio::time::timeout(patience, service.clone().oneshot(task + call)).await {
                    Ok(_) => finished += 1,
                    Err(_) => dropped += 1,
                }
            }
            (finished, dropped)
        });
    }
    let (mut finished, mut dropped) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (f, d) = result.expect("no task panics");
        finished += f;
        dropped += d;
    }
    assert_eq!(finished + dropped, 20_000);
    assert!(
        dropped > 2_000 && finished > 2_000,
        "{finished} finished, {dropped} dropped"
    );

    // Every layer idle, the backend running nothing: dropped calls gave everything back.
    assert_eq!(running.load(Relaxed), 0, "backend calls still running");
    assert_eq!(bulkhead_handle.in_flight(), 0);
    assert_eq!(bulkhead_handle.queued(), 0);
    assert_eq!(adaptive_handle.in_flight(), 0);
    assert_eq!(adaptive_handle.queued(), 0);
    assert_eq!(breaker_handle.metrics().probes_in_flight, 0);
    // And the stack still serves: with the chaos off, calls go through (the backend's own
    // failures are retried).
    chaos_handle.disable();
    let mut served = 0;
    for n in 0..20 {
        if service.clone().oneshot(n).await.is_ok() {
            served += 1;
        }
    }
    assert_eq!(served, 20);
    assert_eq!(bulkhead_handle.in_flight(), 0);
}

/// An axum server on its own thread and runtime, so that stopping it drops every connection.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(addr: std::net::SocketAddr) -> (Server, std::net::SocketAddr) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().route("/item", get(|| async { "ok" }));
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task with it.
        });
        let addr = bound_rx.recv().unwrap();
        (
            Server {
                stop: Some(stop),
                thread: Some(thread),
            },
            addr,
        )
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// The backend goes away and comes back on the same port: the breaker opens, probes, and closes
/// again, and every request in between is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_opens_the_breaker_and_it_closes_again() {
    use seawall::circuit_breaker::CircuitBreakerLayer;
    use seawall::core::{CircuitState, Event, EventKind};
    use std::sync::Mutex;
    use tower::Layer;

    let (server, addr) = Server::start("127.0.0.1:0".parse().unwrap());
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let seen = transitions.clone();
    let breaker = CircuitBreakerLayer::builder()
        .classify(seawall::http::HttpClassifier::default())
        .count_window(20)
        .minimum_calls(10)
        .open_duration(Duration::from_millis(200))
        .open_jitter(0.0)
        .half_open_probes(3)
        .observer(move |event: &Event<'_>| {
            if let EventKind::StateTransition { to, .. } = event.kind {
                seen.lock().unwrap().push(to);
            }
        })
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let fetch = fetch();
    let client = Client::new(
        ClientStack::http()
            .total_timeout(Duration::from_secs(2))
            .attempt_timeout(Duration::from_millis(300))
            .breaker(breaker)
            .layer(fetch),
    );
    let uri = format!("http://{addr}/item");
    let mut ends: BTreeMap<&'static str, u64> = BTreeMap::new();
    let send = || {
        let (client, uri) = (client.clone(), uri.clone());
        async move {
            match client.send(&uri).await {
                Ok(response) if response.status() == StatusCode::OK => "served",
                Ok(_) => "failed response",
                Err(err) => match seawall::error::kind(&*err) {
                    Some(ErrorKind::CircuitOpen) => "circuit open",
                    Some(ErrorKind::TimedOut) => "timed out",
                    Some(_) => "other rejection",
                    None => "transport error",
                },
            }
        }
    };
    let mut count = |end: &'static str| {
        *ends.entry(end).or_insert(0) += 1;
        end
    };
    for _ in 0..50 {
        assert_eq!(count(send().await), "served");
    }
    server.stop();
    // Down: calls fail until the breaker opens, then it turns them away.
    let mut down = Vec::new();
    for _ in 0..50 {
        down.push(count(send().await));
    }
    assert_eq!(breaker_handle.state(), CircuitState::Open, "{down:?}");
    assert!(
        down.contains(&"transport error") && down.contains(&"circuit open"),
        "{down:?}"
    );
    // Back on the same port: within a few open periods, the probes pass and the breaker closes.
    let (server, _) = Server::start(addr);
    let started = Instant::now();
    let mut after = Vec::new();
    while breaker_handle.state() != CircuitState::Closed {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never closed: {after:?}"
        );
        after.push(count(send().await));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..50 {
        assert_eq!(count(send().await), "served");
    }
    let total: u64 = ends.values().sum();
    assert_eq!(total, 150 + after.len() as u64, "{ends:?}");
    let transitions = transitions.lock().unwrap().clone();
    assert_eq!(
        transitions.first(),
        Some(&CircuitState::Open),
        "{transitions:?}"
    );
    assert!(
        transitions.contains(&CircuitState::HalfOpen),
        "{transitions:?}"
    );
    assert_eq!(
        transitions.last(),
        Some(&CircuitState::Closed),
        "{transitions:?}"
    );
    server.stop();
}
