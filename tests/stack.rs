//! The standard client stack: its parts in their order, and each part left out.
#![cfg(all(feature = "timeout", feature = "retry", feature = "circuit-breaker"))]

use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::CircuitState;
use seawall::error::{kind, ErrorKind};
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::RetryLayer;
use seawall::stack::{ClientStack, OpenIsFinal};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, ServiceExt};

/// A backend that counts its calls, and hangs (`true`) or fails (`false`).
fn backend(
    calls: Arc<AtomicU32>,
) -> impl tower::Service<bool, Response = (), Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |hang: bool| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            } else {
                Err::<(), BoxError>("refused".into())
            }
        }
    })
}

fn retry() -> RetryLayer<OpenIsFinal<seawall::core::ErrorIsFailure>> {
    RetryLayer::builder()
        .classify(OpenIsFinal(seawall::core::ErrorIsFailure))
        .backoff(Backoff::constant(Duration::from_millis(100)).jitter(Jitter::None))
        .no_budget()
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_one_by_one_and_the_total_timeout_ends_the_retries() {
    let calls = Arc::new(AtomicU32::new(0));
    let client = ClientStack::new()
        .without_deadlines()
        .total_timeout(Duration::from_millis(2500))
        .attempt_timeout(Duration::from_secs(1))
        .retry(retry())
        .without_breaker()
        .layer(backend(calls.clone()));
    let start = Instant::now();
    let err = client.oneshot(true).await.unwrap_err();
    // Attempts at 0, 1.1 s and 2.2 s, each cut at 1 s; the total timeout ends the third at 2.5 s.
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(kind(&*err), Some(ErrorKind::TimedOut));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_every_attempt_and_its_rejection_is_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(4)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let client = ClientStack::new()
        .without_deadlines()
        .retry(retry())
        .breaker(breaker)
        .layer(backend(calls.clone()));
    // One call: the first attempt and its three retries fail, and open the breaker.
    let err = client.clone().oneshot(false).await.unwrap_err();
    assert_eq!(err.to_string(), "refused");
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    assert_eq!(handle.state(), CircuitState::Open);
    // The next call is turned away at once and not retried.
    let start = Instant::now();
    let err = client.oneshot(false).await.unwrap_err();
    assert_eq!(kind(&*err), Some(ErrorKind::CircuitOpen));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn with_every_part_left_out_it_is_the_bare_service() {
    let calls = Arc::new(AtomicU32::new(0));
    let client = ClientStack::new()
        .without_deadlines()
        .without_total_timeout()
        .without_retry()
        .without_breaker()
        .without_attempt_timeout()
        .layer(backend(calls.clone()));
    let err = client.oneshot(false).await.unwrap_err();
    assert_eq!(err.to_string(), "refused");
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert!(format!("{:?}", ClientStack::new().without_retry()).contains("retry: false"));
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_http_stack_retries_a_503_of_a_get() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let client = ClientStack::http().layer(service_fn(move |_: http::Request<String>| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut response = http::Response::new(String::new());
            if n == 0 {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, BoxError>(response)
        }
    }));
    let request = http::Request::get("/").body(String::new()).unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

/// A request of the caller's own type that carries a deadline.
#[derive(Clone, Debug, Default)]
struct Query {
    deadline: Option<seawall::core::Deadline>,
}

impl seawall::core::DeadlineCarrier for Query {
    fn deadline(&self) -> Option<seawall::core::Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: seawall::core::Deadline) {
        self.deadline = Some(deadline);
    }
}

#[tokio::test(start_paused = true)]
async fn the_stack_puts_its_deadline_in_the_request_and_the_retry_stops_at_it() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let retry = RetryLayer::builder()
        .classify(OpenIsFinal(seawall::core::ErrorIsFailure))
        .policy(seawall::retry::policy::ClonedWithDeadline)
        .backoff(Backoff::constant(Duration::from_millis(100)).jitter(Jitter::None))
        .no_budget()
        .build()
        .unwrap();
    let client = ClientStack::new()
        .total_timeout(Duration::from_secs(1))
        .retry(retry)
        .layer(service_fn(move |query: Query| {
            use seawall::core::DeadlineCarrier;
            log.lock()
                .unwrap()
                .push(query.deadline().map(|d| d.remaining()));
            async move {
                tokio::time::sleep(Duration::from_millis(950)).await;
                Err::<(), BoxError>("refused".into())
            }
        }));
    let start = Instant::now();
    let err = client.oneshot(Query::default()).await.unwrap_err();
    // The attempt sees the total budget; a retry 100 ms on would end past it, so none is made and
    // the caller gets the failure when it comes, not a timeout at 1 s.
    assert_eq!(*seen.lock().unwrap(), [Some(Duration::from_secs(1))]);
    assert_eq!(err.to_string(), "refused");
    assert_eq!(start.elapsed(), Duration::from_millis(950));
}

/// A retry layer built the ordinary way (the default policy, which reads no deadline) and given
/// to the stack: the stack makes it read the deadline, so no retry is started that the total
/// timeout would cut, and the caller gets the failure when it comes.
#[tokio::test(start_paused = true)]
async fn a_retry_given_to_the_stack_reads_its_deadline() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let retry = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)).jitter(Jitter::None))
        .no_budget()
        .build()
        .unwrap();
    let client = ClientStack::new()
        .total_timeout(Duration::from_secs(1))
        .retry(retry)
        .layer(service_fn(move |_: Query| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(950)).await;
                Err::<(), BoxError>("refused".into())
            }
        }));
    let start = Instant::now();
    let err = client.oneshot(Query::default()).await.unwrap_err();
    assert_eq!(err.to_string(), "refused");
    assert_eq!(start.elapsed(), Duration::from_millis(950));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

/// A retry layer given to the stack without `OpenIsFinal`: the stack adds it, so an open
/// breaker's rejection is not retried (the caller gets it at once, not after the backoffs).
#[tokio::test(start_paused = true)]
async fn a_retry_given_to_the_stack_does_not_retry_an_open_breaker() {
    let calls = Arc::new(AtomicU32::new(0));
    let retry = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)).jitter(Jitter::None))
        .no_budget()
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = breaker.handle();
    handle.force_open();
    let client = ClientStack::new()
        .without_deadlines()
        .retry(retry)
        .breaker(breaker)
        .layer(backend(calls.clone()));
    let start = Instant::now();
    let err = client.oneshot(false).await.unwrap_err();
    assert_eq!(kind(&*err), Some(ErrorKind::CircuitOpen));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

/// A 503 at 950 ms of a 1 s budget, and a 10 ms backoff: the second attempt starts with 40 ms
/// left and the deadline cuts it. The caller gets the 503 in hand, not a timeout.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_the_deadline_gives_back_the_answer_in_hand() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let retry = RetryLayer::http()
        .classify(OpenIsFinal(seawall::http::HttpClassifier::retryable()))
        .backoff(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None))
        .no_budget()
        .build()
        .unwrap();
    let client = ClientStack::http()
        .total_timeout(Duration::from_secs(1))
        .retry(retry)
        .layer(service_fn(move |_: http::Request<String>| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(950)).await;
                let response = http::Response::builder()
                    .status(http::StatusCode::SERVICE_UNAVAILABLE)
                    .body(String::new())
                    .unwrap();
                Ok::<_, BoxError>(response)
            }
        }));
    let start = Instant::now();
    let request = http::Request::get("/").body(String::new()).unwrap();
    let got = client.oneshot(request).await;
    let response = got.expect("the 503 in hand, not a timeout");
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn a_503_whose_retry_after_ends_past_the_total_timeout_is_returned_when_it_comes() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let client = ClientStack::http()
        .total_timeout(Duration::from_secs(1))
        .layer(service_fn(move |_: http::Request<String>| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(950)).await;
                let response = http::Response::builder()
                    .status(http::StatusCode::SERVICE_UNAVAILABLE)
                    .header(http::header::RETRY_AFTER, "1")
                    .body(String::new())
                    .unwrap();
                Ok::<_, BoxError>(response)
            }
        }));
    let start = Instant::now();
    let request = http::Request::get("/").body(String::new()).unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    assert_eq!(start.elapsed(), Duration::from_millis(950));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn a_deadline_header_layer_beneath_the_stack_writes_what_is_left() {
    use seawall::timeout::propagate::WriteDeadlineLayer;
    let client = tower::ServiceBuilder::new()
        .layer(ClientStack::http().total_timeout(Duration::from_secs(2)))
        .layer(WriteDeadlineLayer::grpc())
        .service(service_fn(|req: http::Request<String>| async move {
            let sent = req.headers().get("grpc-timeout").cloned();
            Ok::<_, BoxError>(http::Response::new(sent))
        }));
    let request = http::Request::get("/").body(String::new()).unwrap();
    let sent = client.oneshot(request).await.unwrap().into_body();
    // The total timeout's 2 s, tighter than the attempt's 10 s.
    assert_eq!(sent.unwrap(), "2000000u");
}

#[cfg(feature = "http")]
mod grpc {
    use super::*;
    use http::{Request, Response};

    /// No headers besides `grpc-status`.
    const NONE: &[(&str, &str)] = &[];

    /// A trailers-only answer with gRPC status `code`, and `headers` besides.
    fn answer(code: u32, headers: &[(&'static str, &'static str)]) -> Response<String> {
        let mut response = Response::builder().header("grpc-status", code.to_string());
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(String::new()).unwrap()
    }

    /// A backend that answers `codes` in turn (then OK), and counts its calls and what it was sent.
    fn backend(
        codes: &'static [(u32, &'static [(&'static str, &'static str)])],
        calls: Arc<AtomicU32>,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<String>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        service_fn(move |request: Request<String>| {
            let n = calls.fetch_add(1, Ordering::Relaxed) as usize;
            assert_eq!(request.body(), "message", "the request is replayed whole");
            let response = match codes.get(n) {
                Some((code, headers)) => answer(*code, headers),
                None => answer(0, &[]),
            };
            async move { Ok::<_, BoxError>(response) }
        })
    }

    fn call() -> Request<String> {
        Request::post("/grpc.health.v1.Health/Check")
            .body("message".to_string())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_counts_unavailable_and_not_the_callers_mistakes() {
        use seawall::grpc::code;
        // 20 calls answered NOT_FOUND and 20 answered INVALID_ARGUMENT: the caller's mistakes, not
        // the server's trouble; the breaker stays closed.
        const MISTAKES: &[(u32, &[(&str, &str)])] = &[(code::NOT_FOUND, NONE); 20];
        let stack = ClientStack::grpc().without_retry();
        let handle = stack.breaker_layer().unwrap().handle();
        let calls = Arc::new(AtomicU32::new(0));
        let client = stack.layer(backend(MISTAKES, calls.clone()));
        for _ in 0..20 {
            let response = client.clone().oneshot(call()).await.unwrap();
            assert_eq!(response.headers()["grpc-status"], "5");
        }
        assert_eq!(handle.state(), CircuitState::Closed);

        // 20 calls answered UNAVAILABLE (trailers-only): failures, which open it.
        const DOWN: &[(u32, &[(&str, &str)])] = &[(code::UNAVAILABLE, NONE); 20];
        let stack = ClientStack::grpc().without_retry();
        let handle = stack.breaker_layer().unwrap().handle();
        let calls = Arc::new(AtomicU32::new(0));
        let client = stack.layer(backend(DOWN, calls.clone()));
        for _ in 0..20 {
            client.clone().oneshot(call()).await.unwrap();
        }
        assert_eq!(handle.state(), CircuitState::Open);
        let err = client.oneshot(call()).await.unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::CircuitOpen));
        assert_eq!(calls.load(Ordering::Relaxed), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn it_retries_unavailable_and_pushed_back_resource_exhausted_only() {
        use seawall::grpc::code;
        type Script = &'static [(u32, &'static [(&'static str, &'static str)])];
        let cases: [(Script, u32, &str); 5] = [
            (&[(code::UNAVAILABLE, NONE)], 2, "0"),
            (&[(code::INVALID_ARGUMENT, NONE)], 1, "3"),
            (&[(code::DEADLINE_EXCEEDED, NONE)], 1, "4"),
            (&[(code::RESOURCE_EXHAUSTED, NONE)], 1, "8"),
            (
                &[(
                    code::RESOURCE_EXHAUSTED,
                    &[("grpc-retry-pushback-ms", "250")],
                )],
                2,
                "0",
            ),
        ];
        for (script, attempts, status) in cases {
            let calls = Arc::new(AtomicU32::new(0));
            let client = ClientStack::grpc().layer(backend(script, calls.clone()));
            let response = client.oneshot(call()).await.unwrap();
            assert_eq!(response.headers()["grpc-status"], status, "{script:?}");
            assert_eq!(calls.load(Ordering::Relaxed), attempts, "{script:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_timeout_writer_beneath_it_sends_what_is_left() {
        use seawall::timeout::propagate::WriteDeadlineLayer;
        let client = tower::ServiceBuilder::new()
            .layer(ClientStack::grpc().total_timeout(Duration::from_secs(3)))
            .layer(WriteDeadlineLayer::grpc())
            .service(service_fn(|req: Request<String>| async move {
                let sent = req.headers().get("grpc-timeout").cloned();
                Ok::<_, BoxError>(Response::new(sent))
            }));
        let sent = client.oneshot(call()).await.unwrap().into_body();
        assert_eq!(sent.unwrap(), "3000000u");
    }
}

#[cfg(all(feature = "limit", feature = "axum"))]
mod server {
    use axum::body::Body;
    use axum::error_handling::HandleErrorLayer;
    use axum::routing::get;
    use axum::Router;
    use http::{Request, StatusCode};
    use seawall::limit::rate::Quota;
    use seawall::stack::ServerStack;
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt};

    fn app(stack: ServerStack) -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/work",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    "done"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(seawall::axum::handle_error))
                    .layer(stack),
            )
    }

    async fn status(app: &Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    /// `n` requests for `path` at once; how many got each status.
    async fn burst(app: &Router, path: &'static str, n: usize) -> Vec<(StatusCode, usize)> {
        let mut calls = Vec::new();
        for _ in 0..n {
            let app = app.clone();
            calls.push(tokio::spawn(async move { status(&app, path).await }));
        }
        let mut counts = std::collections::BTreeMap::new();
        for call in calls {
            *counts.entry(call.await.unwrap()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_stack_queues_a_burst_past_its_limit_rather_than_shedding_it() {
        // The limiter starts at 20 calls at once: a burst of 60 requests of 10 ms is 30 ms of
        // work, within the queue's wait (165 ms after it was empty): every one is served.
        let app = app(ServerStack::new());
        let start = tokio::time::Instant::now();
        assert_eq!(burst(&app, "/work", 60).await, [(StatusCode::OK, 60)]);
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        // A burst larger than the limit and the queue (128): the rest are shed at once.
        assert_eq!(
            burst(&app, "/work", 200).await,
            [(StatusCode::OK, 148), (StatusCode::SERVICE_UNAVAILABLE, 52)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_router_behind_the_server_stack_answers_429_503_and_504() {
        let app = app(ServerStack::new()
            .rate_limit(Quota::per_second(100).burst(30))
            .timeout(Duration::from_secs(2)));
        assert_eq!(status(&app, "/").await, StatusCode::OK);
        // The limiter starts at 20 calls at once: 25 slow requests, 5 shed with 503.
        let mut slow = Vec::new();
        for _ in 0..25 {
            let app = app.clone();
            slow.push(tokio::spawn(async move { status(&app, "/slow").await }));
        }
        let mut statuses = Vec::new();
        for call in slow {
            statuses.push(call.await.unwrap());
        }
        let count = |s: StatusCode| statuses.iter().filter(|x| **x == s).count();
        assert_eq!(count(StatusCode::SERVICE_UNAVAILABLE), 5);
        // The other 20 ran out of time.
        assert_eq!(count(StatusCode::GATEWAY_TIMEOUT), 20);
        // Two seconds on, the rate limit's burst of 30 is whole again: 40 requests at once, 30
        // pass and 10 get 429.
        let mut quick = Vec::new();
        for _ in 0..40 {
            quick.push(status(&app, "/").await);
        }
        let ok = quick.iter().filter(|s| **s == StatusCode::OK).count();
        let limited = quick
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((ok, limited), (30, 10));
    }

    /// Honouring deadlines (`ServerStack::new().honour_deadlines()`): a request whose caller's timeout (a propagating
    /// one above the stack) ends before a slot frees is turned away by the queue with 503 and
    /// `Retry-After` at its deadline, not left to the caller's timeout (504); with a slot free,
    /// the same request is made, and only the caller's timeout ends it.
    #[tokio::test(start_paused = true)]
    async fn a_request_whose_deadline_comes_before_its_slot_is_answered_503_not_504() {
        use seawall::timeout::TimeoutLayer;
        let hang = || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "late"
        };
        let app = Router::new()
            .route("/slow", get(hang))
            .route("/hurried", get(hang))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(seawall::axum::handle_error))
                    .layer(
                        TimeoutLayer::per_request(|req: &Request<Body>| {
                            (req.uri().path() == "/hurried").then_some(Duration::from_millis(40))
                        })
                        .propagate(),
                    )
                    .layer(ServerStack::new().honour_deadlines()),
            );
        // The limiter starts at 20 calls at once: 20 hanging calls take every slot.
        let hung: Vec<_> = (0..20)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { status(&app, "/slow").await })
            })
            .collect();
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let request = || Request::get("/hurried").body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(http::header::RETRY_AFTER));
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(40),
            "at its deadline"
        );
        // Slots free: the request is made, and its caller's timeout ends it.
        for call in hung {
            call.abort();
        }
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let response = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!response.headers().contains_key(http::header::RETRY_AFTER));
        assert_eq!(start.elapsed(), Duration::from_millis(40));
    }
}

/// The metrics a stack reports: every part it makes, each under its own name, to the stack's
/// observer; parts given as layers, to their own.
mod observed {
    use super::*;
    use seawall::core::Event;
    use seawall::timeout::TimeoutLayer;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    pub(super) type Events = Arc<Mutex<Vec<(String, String)>>>;

    /// An observer that keeps each event's layer and kind (`"TimedOut"`, ...).
    pub(super) fn recorder() -> (Events, impl seawall::core::Observer + Clone) {
        let events = Events::default();
        let sink = events.clone();
        let observer = move |event: &Event<'_>| {
            let kind = format!("{:?}", event.kind);
            let kind = kind
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_owned();
            sink.lock().unwrap().push((event.layer.to_owned(), kind));
        };
        (events, observer)
    }

    /// The layers that reported.
    pub(super) fn layers(events: &Events) -> BTreeSet<String> {
        events
            .lock()
            .unwrap()
            .iter()
            .map(|(l, _)| l.clone())
            .collect()
    }

    /// How many events of `kind` `layer` reported.
    pub(super) fn count(events: &Events, layer: &str, kind: &str) -> usize {
        let events = events.lock().unwrap();
        events
            .iter()
            .filter(|(l, k)| l == layer && k == kind)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_stack_observer_hears_every_part_under_its_name() {
        let (events, observer) = recorder();
        let calls = Arc::new(AtomicU32::new(0));
        let client = ClientStack::new()
            .without_deadlines()
            .total_timeout(Duration::from_millis(2500))
            .attempt_timeout(Duration::from_secs(1))
            .observer(observer)
            .layer(backend(calls.clone()));
        let err = client.oneshot(true).await.unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::TimedOut));
        let parts = [
            "client.attempt_timeout",
            "client.breaker",
            "client.retry",
            "client.total_timeout",
        ];
        assert_eq!(layers(&events), parts.map(String::from).into());
        assert_eq!(count(&events, "client.breaker", "Started"), 1);
        assert!(count(&events, "client.breaker", "Permitted") >= 2);
        assert!(count(&events, "client.retry", "AttemptStarted") >= 2);
        assert!(count(&events, "client.retry", "RetryScheduled") >= 1);
        assert!(count(&events, "client.attempt_timeout", "TimedOut") >= 1);
        assert_eq!(count(&events, "client.total_timeout", "TimedOut"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_given_built_keeps_its_own_name_and_observer() {
        let (mine, my_observer) = recorder();
        let (events, observer) = recorder();
        let breaker = CircuitBreakerLayer::builder()
            .name("mine")
            .observer(my_observer)
            .build()
            .unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let client = ClientStack::new()
            .without_deadlines()
            .breaker(breaker)
            // Built without an observer: it reports nothing, the stack's observer or not.
            .total_timeout_layer(TimeoutLayer::new(Duration::from_millis(2500)))
            .attempt_timeout(Duration::from_secs(1))
            .observer(observer)
            .layer(backend(calls.clone()));
        let err = client.oneshot(true).await.unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::TimedOut));
        assert_eq!(layers(&mine), ["mine".to_owned()].into());
        assert!(count(&mine, "mine", "Permitted") >= 2);
        assert_eq!(
            layers(&events),
            ["client.attempt_timeout", "client.retry"]
                .map(String::from)
                .into()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_stack_s_parts_are_made_once_and_shared_by_its_clones() {
        let (events, observer) = recorder();
        let calls = Arc::new(AtomicU32::new(0));
        let stack = ClientStack::new()
            .without_deadlines()
            .without_retry()
            .observer(observer)
            .name("catalog");
        // A clone of the stack, and services made apart from each: one breaker.
        let a = stack.clone().layer(backend(calls.clone()));
        let b = stack.layer(backend(calls.clone()));
        let handle = stack.breaker_layer().unwrap().handle();
        for _ in 0..10 {
            a.clone().oneshot(false).await.unwrap_err();
            b.clone().oneshot(false).await.unwrap_err();
        }
        assert_eq!(handle.metrics().calls, 20);
        assert_eq!(count(&events, "catalog.breaker", "Started"), 1);
        assert_eq!(count(&events, "catalog.breaker", "Finished"), 20);
    }
}

#[cfg(feature = "limit")]
mod observed_server {
    use super::observed::{count, layers, recorder};
    use seawall::error::{kind, ErrorKind};
    use seawall::limit::rate::Quota;
    use seawall::stack::ServerStack;
    use std::time::Duration;
    use tower::{service_fn, BoxError, Layer, ServiceExt};

    /// A handler that hangs (`true`) or answers at once.
    async fn handler(hang: bool) -> Result<(), BoxError> {
        if hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_stack_observer_hears_every_part_and_the_parts_are_shared() {
        let (events, observer) = recorder();
        let stack = ServerStack::new()
            .rate_limit(Quota::per_second(10).burst(2))
            .timeout(Duration::from_secs(1))
            .observer(observer);
        // As axum does: the stack cloned, and a service made from each clone.
        let a = stack.clone().layer(service_fn(handler));
        let b = stack.layer(service_fn(handler));
        a.clone().oneshot(false).await.unwrap();
        let hung = tokio::spawn(b.clone().oneshot(true));
        tokio::task::yield_now().await;
        // The burst of two is one for both services: the third call is turned away.
        let err = a.clone().oneshot(false).await.unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::RateLimited));
        let err = hung.await.unwrap().unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::TimedOut));
        assert_eq!(
            layers(&events),
            ["server.concurrency", "server.rate_limit", "server.timeout"]
                .map(String::from)
                .into()
        );
        assert_eq!(count(&events, "server.rate_limit", "Permitted"), 2);
        assert_eq!(count(&events, "server.rate_limit", "Rejected"), 1);
        // One limiter for both: built once.
        assert_eq!(count(&events, "server.concurrency", "Started"), 1);
        assert_eq!(count(&events, "server.concurrency", "Permitted"), 2);
        assert_eq!(count(&events, "server.timeout", "TimedOut"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_stack_named_apart_reports_apart() {
        let (events, observer) = recorder();
        let stack = ServerStack::new().observer(observer.clone()).name("admin");
        let other = ServerStack::new().name("public").observer(observer);
        stack
            .layer(service_fn(handler))
            .oneshot(false)
            .await
            .unwrap();
        other
            .layer(service_fn(handler))
            .oneshot(false)
            .await
            .unwrap();
        assert_eq!(
            layers(&events),
            ["admin.concurrency", "public.concurrency"]
                .map(String::from)
                .into()
        );
    }
}

/// The server stack whose limiter honours deadlines: under a layer that reads the caller's
/// `grpc-timeout`, a request waits in the queue no longer than its deadline.
#[cfg(all(feature = "limit", feature = "http"))]
mod server_deadlines {
    use http::Request;
    use seawall::bulkhead::error::Full;
    use seawall::error::{kind, ErrorKind};
    use seawall::stack::ServerStack;
    use seawall::timeout::propagate::ReadDeadlineLayer;
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_in_the_server_stacks_queue_no_longer_than_its_grpc_timeout() {
        let server = ServiceBuilder::new()
            .layer(ReadDeadlineLayer::grpc())
            .layer(ServerStack::new().honour_deadlines())
            .service(service_fn(|_: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, BoxError>(())
            }));
        let call = |timeout: Option<&'static str>| {
            let mut request = Request::builder();
            if let Some(timeout) = timeout {
                request = request.header("grpc-timeout", timeout);
            }
            server.clone().oneshot(request.body(()).unwrap())
        };
        // The limiter starts at 20 calls at once: 20 hanging calls take every slot.
        let hung: Vec<_> = (0..20).map(|_| tokio::spawn(call(None))).collect();
        tokio::task::yield_now().await;
        let start = Instant::now();
        let bounded = tokio::spawn(call(Some("40m")));
        let unbounded = tokio::spawn(call(None));
        for (call, waited) in [(bounded, 40), (unbounded, 165)] {
            let err = call.await.unwrap().unwrap_err();
            assert_eq!(kind(&*err), Some(ErrorKind::BulkheadFull), "503: {err}");
            let full = err.downcast_ref::<Full>().expect("the limiter's rejection");
            assert!(full.waited_too_long(), "{full}");
            assert_eq!(full.waited(), Duration::from_millis(waited));
            assert_eq!(start.elapsed(), Duration::from_millis(waited));
        }
        // A caller whose time is up is turned away at once.
        let err = call(Some("0n")).await.unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::BulkheadFull), "503: {err}");
        assert_eq!(start.elapsed(), Duration::from_millis(165));
        for call in hung {
            call.abort();
        }
    }

    /// A request that finds a slot free waits for nothing: its deadline is not read, and it is
    /// made whatever it says (even passed), as without deadlines; only a request that must queue
    /// is turned away for it.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_finds_a_slot_free_is_made_whatever_its_deadline() {
        use seawall::core::{Deadline, DeadlineCarrier};
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        use std::sync::Arc;
        use tower::Layer;
        let made = Arc::new(AtomicU32::new(0));
        let counted = made.clone();
        let server =
            ServerStack::new()
                .honour_deadlines()
                .layer(service_fn(move |req: Request<()>| {
                    counted.fetch_add(1, SeqCst);
                    async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Ok::<_, BoxError>(())
                    }
                }));
        let with = |path: &str, deadline: Option<Deadline>| {
            let mut request = Request::get(path).body(()).unwrap();
            if let Some(deadline) = deadline {
                request.set_deadline(deadline);
            }
            server.clone().oneshot(request)
        };
        let passed = Deadline::at(Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        let start = Instant::now();
        with("/", Some(passed))
            .await
            .expect("made: its deadline unread");
        with("/", Some(Deadline::after(Duration::from_secs(1))))
            .await
            .unwrap();
        with("/", None).await.unwrap();
        assert_eq!(made.load(SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::ZERO, "none waited");
        // Every slot taken (the limiter starts at 20): the same passed deadline is turned away
        // at once, never made.
        let hung: Vec<_> = (0..20).map(|_| tokio::spawn(with("/slow", None))).collect();
        tokio::task::yield_now().await;
        assert_eq!(made.load(SeqCst), 23);
        let err = with("/", Some(passed)).await.unwrap_err();
        assert_eq!(kind(&*err), Some(ErrorKind::BulkheadFull), "503: {err}");
        let full = err.downcast_ref::<Full>().expect("the limiter's rejection");
        assert_eq!(full.waited(), Duration::ZERO);
        assert_eq!(made.load(SeqCst), 23);
        assert_eq!(start.elapsed(), Duration::ZERO);
        for call in hung {
            call.abort();
        }
    }
}
