//! The retry layer in paused time: when it retries, how long it waits, when it gives up, what it
//! tells the observer, and how much load it adds to a failing backend.

use http::{Request, Response, StatusCode};
use seawall::core::{
    Deadline, DeadlineCarrier, Event, EventKind, GiveUpReason, Observer, Outcome, RetryReason,
};
use seawall::http::HttpClassifier;
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::budget::Budget;
use seawall::retry::policy::ClonedWithDeadline;
use seawall::retry::RetryLayer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// What tells requests apart in a [`Backend`]'s log.
trait Key {
    fn key(&self) -> String;
}

impl Key for u32 {
    fn key(&self) -> String {
        self.to_string()
    }
}

/// HTTP requests are told apart by their body.
impl Key for Request<String> {
    fn key(&self) -> String {
        self.body().clone()
    }
}

/// A backend that logs every call (its request's key and when it came) and answers what `answer`
/// says for the call's request and attempt number (1 for the first time it sees that request).
struct Backend<Req> {
    log: Arc<Mutex<Vec<(String, Duration)>>>,
    start: Instant,
    _request: std::marker::PhantomData<fn(Req)>,
}

impl<Req> Clone for Backend<Req> {
    fn clone(&self) -> Self {
        Backend {
            log: self.log.clone(),
            start: self.start,
            _request: std::marker::PhantomData,
        }
    }
}

impl<Req: Key + Send + 'static> Backend<Req> {
    fn new() -> Self {
        Backend {
            log: Arc::default(),
            start: Instant::now(),
            _request: std::marker::PhantomData,
        }
    }

    fn service<T, E, F>(
        &self,
        answer: F,
    ) -> impl Service<
        Req,
        Response = T,
        Error = E,
        Future = impl std::future::Future<Output = Result<T, E>> + Send,
    > + Clone
           + Send
    where
        F: Fn(&Req, usize) -> Result<T, E> + Clone + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let backend = self.clone();
        service_fn(move |req: Req| {
            let mut log = backend.log.lock().unwrap();
            let key = req.key();
            let attempt = 1 + log.iter().filter(|(k, _)| *k == key).count();
            log.push((key, backend.start.elapsed()));
            std::future::ready(answer(&req, attempt))
        })
    }

    fn calls(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// When each call of `req` came.
    fn times(&self, req: &Req) -> Vec<Duration> {
        let key = req.key();
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, t)| *t)
            .collect()
    }
}

type Events = Arc<Mutex<Vec<EventKind>>>;

fn recorder() -> (Events, impl Fn(&Event<'_>) + Clone + Send + Sync + 'static) {
    let events = Events::default();
    let sink = events.clone();
    (events, move |event: &Event<'_>| {
        sink.lock().unwrap().push(event.kind)
    })
}

fn constant(delay: Duration) -> Backoff {
    Backoff::constant(delay).jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn a_flaky_call_is_retried_until_it_succeeds() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .backoff(constant(100 * MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, n| if n < 3 { Err("flaky") } else { Ok(n) }));
    assert_eq!(service.ready().await.unwrap().call(7).await, Ok(3));
    assert_eq!(backend.times(&7), [Duration::ZERO, 100 * MS, 200 * MS]);
    let scheduled = |attempt| EventKind::RetryScheduled {
        attempt,
        delay: 100 * MS,
        reason: RetryReason::Backoff,
    };
    let finished = |attempt, outcome| EventKind::AttemptFinished {
        attempt,
        outcome,
        latency: Some(Duration::ZERO),
    };
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::AttemptStarted { attempt: 1 },
            finished(1, Outcome::Failure),
            scheduled(2),
            EventKind::AttemptStarted { attempt: 2 },
            finished(2, Outcome::Failure),
            scheduled(3),
            EventKind::AttemptStarted { attempt: 3 },
            finished(3, Outcome::Success),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn it_gives_up_after_the_maximum_and_returns_the_last_error() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .max_retries(3)
        .no_budget()
        .backoff(constant(10 * MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, n| Err::<(), _>(format!("failure {n}"))));
    let err = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err, "failure 4");
    assert_eq!(backend.calls(), 4);
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&EventKind::GaveUp {
            attempts: 4,
            reason: GiveUpReason::Attempts
        })
    );

    // Zero retries: one attempt.
    let backend = Backend::new();
    let mut once = RetryLayer::builder()
        .max_retries(0)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("no")));
    assert!(once.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn successes_and_ignored_outcomes_are_not_retried() {
    let backend = Backend::new();
    let classify = |r: &Result<u32, &str>| match r {
        Ok(_) => Outcome::Success,
        Err("not found") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    };
    let mut service = RetryLayer::builder()
        .classify(classify)
        .build()
        .unwrap()
        .layer(backend.service(|req: &u32, _| match req {
            0 => Ok(0),
            _ => Err("not found"),
        }));
    assert_eq!(service.ready().await.unwrap().call(0).await, Ok(0));
    assert_eq!(
        service.ready().await.unwrap().call(1).await,
        Err("not found")
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_predicate_can_decline_a_retry() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    // Odd requests may not be retried.
    let mut service = RetryLayer::builder()
        .retry_if(|req: &u32, _: &Result<(), &str>| req % 2 == 0)
        .observer(observer)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(backend.calls(), 1);
    assert!(events.lock().unwrap().contains(&EventKind::GaveUp {
        attempts: 1,
        reason: GiveUpReason::NotRetryable
    }));
    service.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(backend.calls(), 1 + 4);
}

#[tokio::test(start_paused = true)]
async fn no_inner_capacity_is_held_during_a_backoff() {
    // A backend that takes one call at a time: while the first request waits out its backoff, a
    // second one goes through.
    let backend = Backend::new();
    let inner = ServiceBuilder::new()
        .concurrency_limit(1)
        .service(backend.service(|req: &u32, n| {
            if *req == 1 && n == 1 {
                Err("once")
            } else {
                Ok(*req)
            }
        }));
    let service = RetryLayer::builder()
        .backoff(constant(1000 * MS))
        .build()
        .unwrap()
        .layer(inner);
    let first = tokio::spawn(service.clone().oneshot(1));
    tokio::time::sleep(10 * MS).await;
    let second = service.clone().oneshot(2).await;
    assert_eq!(second.unwrap(), 2);
    assert_eq!(backend.times(&2), [10 * MS]);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(backend.times(&1), [Duration::ZERO, 1000 * MS]);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_waits_for_the_inner_service_to_be_ready() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let mut service = RetryLayer::builder()
        .backoff(constant(10 * MS))
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(1);
    let call = service.ready().await.unwrap().call(5);
    let mut call = tokio_test::task::spawn(call);
    tokio_test::assert_pending!(call.poll());
    let (req, reply) = handle.next_request().await.unwrap();
    assert_eq!(req, 5);
    reply.send_error("failed");
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(10 * MS).await;
    // The backoff is over, but the mock is not ready: no second request yet.
    tokio_test::assert_pending!(call.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    tokio_test::assert_pending!(call.poll());
    let (req, reply) = handle.next_request().await.unwrap();
    assert_eq!(req, 5);
    reply.send_response(50);
    assert_eq!(tokio_test::assert_ready!(call.poll()).unwrap(), 50);
}

fn http_backend(
    backend: &Backend<u32>,
    first: impl Fn() -> Response<()> + Clone + Send + 'static,
) -> impl Service<
    u32,
    Response = Response<()>,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<Response<()>, std::io::Error>> + Send,
> + Clone
       + Send {
    backend.service(move |_: &u32, n| Ok(if n == 1 { first() } else { Response::new(()) }))
}

fn unavailable(retry_after: &str) -> Response<()> {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("retry-after", retry_after)
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_is_never_retried_earlier() {
    for request in 0..50u32 {
        let backend = Backend::new();
        let (events, observer) = recorder();
        let mut service = RetryLayer::builder()
            .classify(HttpClassifier::default())
            .observer(observer)
            .build()
            .unwrap()
            .layer(http_backend(&backend, || unavailable("2")));
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let times = backend.times(&request);
        assert!(
            times[1] >= 2000 * MS && times[1] <= 3000 * MS,
            "retried after {:?}",
            times[1]
        );
        assert!(events.lock().unwrap().iter().any(|e| matches!(
            e,
            EventKind::RetryScheduled {
                reason: RetryReason::ServerHint,
                ..
            }
        )));
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_a_date_is_never_retried_earlier() {
    let backend = Backend::new();
    let mut service = RetryLayer::builder()
        .classify(HttpClassifier::default())
        .build()
        .unwrap()
        .layer(http_backend(&backend, || {
            // Seconds are the date's precision: between 4 and 5 s from now.
            let at = std::time::SystemTime::now() + Duration::from_secs(5);
            unavailable(&httpdate::fmt_http_date(at))
        }));
    service.ready().await.unwrap().call(1).await.unwrap();
    let waited = backend.times(&1)[1];
    assert!(waited >= 4000 * MS && waited <= 7500 * MS, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hint_longer_than_the_maximum_gives_up() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .classify(HttpClassifier::default())
        .max_hint(Duration::from_secs(60))
        .observer(observer)
        .build()
        .unwrap()
        .layer(http_backend(&backend, || unavailable("120")));
    let start = Instant::now();
    let response = service.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the last response"
    );
    assert_eq!(Instant::now(), start, "without waiting");
    assert_eq!(backend.calls(), 1);
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&EventKind::GaveUp {
            attempts: 1,
            reason: GiveUpReason::HintTooLong
        })
    );
}

fn failing_http(
    backend: &Backend<Request<String>>,
) -> impl Service<
    Request<String>,
    Response = (),
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<(), BoxError>> + Send,
> + Clone
       + Send {
    backend.service(|_: &Request<String>, _| Err::<(), BoxError>("down".into()))
}

fn req(body: &str) -> Request<String> {
    Request::new(body.to_string())
}

#[tokio::test(start_paused = true)]
async fn the_requests_deadline_stops_the_retries() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .policy(ClonedWithDeadline)
        .max_retries(10)
        .no_budget()
        .backoff(constant(100 * MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(failing_http(&backend));
    let mut request = req("a");
    request.set_deadline(Deadline::after(250 * MS));
    service
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    // 0, 100, 200; another would start at 300, past the deadline.
    assert_eq!(
        backend.times(&req("a")),
        [Duration::ZERO, 100 * MS, 200 * MS]
    );
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&EventKind::GaveUp {
            attempts: 3,
            reason: GiveUpReason::Deadline
        })
    );
}

#[cfg(feature = "timeout")]
#[tokio::test(start_paused = true)]
async fn a_deadline_set_by_an_outer_timeout_stops_the_retries() {
    use seawall::timeout::TimeoutLayer;
    let backend = Backend::new();
    let mut service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(250 * MS).propagate())
        .layer(
            RetryLayer::builder()
                .policy(ClonedWithDeadline)
                .max_retries(10)
                .no_budget()
                .backoff(constant(100 * MS))
                .build()
                .unwrap(),
        )
        .service(failing_http(&backend));
    let start = Instant::now();
    let err = service
        .ready()
        .await
        .unwrap()
        .call(req("b"))
        .await
        .unwrap_err();
    // The retry layer stopped at 200 ms with the backend's error, before the timeout fired.
    assert_eq!(err.to_string(), "down");
    assert_eq!(Instant::now() - start, 200 * MS);
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_maximum_elapsed_time_stops_the_retries() {
    let backend = Backend::new();
    let mut service = RetryLayer::builder()
        .max_retries(10)
        .no_budget()
        .max_elapsed(350 * MS)
        .backoff(constant(100 * MS))
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(backend.calls(), 4); // 0, 100, 200, 300
}

#[tokio::test(start_paused = true)]
async fn a_replayable_body_is_resent_byte_for_byte() {
    let backend = Backend::new();
    let body = "{\"order\": 42, \"items\": [\"é\", \"🦀\"]}";
    let mut service = RetryLayer::builder()
        .backoff(constant(MS))
        .build()
        .unwrap()
        .layer(backend.service(|_: &Request<String>, n| if n < 3 { Err("again") } else { Ok(()) }));
    service
        .ready()
        .await
        .unwrap()
        .call(req(body))
        .await
        .unwrap();
    let log = backend.log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|(sent, _)| sent.as_bytes() == body.as_bytes()));
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_the_retries() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    // Two retries in the bucket (10 tokens, 5 a retry), and failures refund nothing.
    let mut service = RetryLayer::builder()
        .budget(Budget::token_bucket(10, 5, 1).unwrap())
        .backoff(constant(MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(backend.times(&1).len(), 3);
    service.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(backend.times(&2).len(), 1);
    let gave_up: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, EventKind::GaveUp { .. }))
        .copied()
        .collect();
    assert_eq!(
        gave_up,
        [
            EventKind::GaveUp {
                attempts: 3,
                reason: GiveUpReason::Budget
            },
            EventKind::GaveUp {
                attempts: 1,
                reason: GiveUpReason::Budget
            }
        ]
    );
}

/// Offered load against a backend that fails every call, 100 requests a second for 10 s, each
/// allowed 3 retries: how many requests, how many calls reached the backend, and how long it took.
async fn amplification(layer: RetryLayer) -> (usize, usize, Duration) {
    let start = Instant::now();
    let backend = Backend::new();
    let service = layer.layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    let mut tasks = Vec::new();
    for id in 0..1000u32 {
        tasks.push(tokio::spawn(service.clone().oneshot(id)));
        tokio::time::sleep(10 * MS).await;
    }
    for task in tasks {
        assert!(task.await.unwrap().is_err());
    }
    (1000, backend.calls(), start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_budget_bounds_the_load_retries_add_to_a_failing_backend() {
    let layer = |budget: Option<Budget>| {
        let builder = RetryLayer::builder()
            .max_retries(3)
            .backoff(Backoff::exponential(10 * MS));
        match budget {
            Some(budget) => builder.budget(budget),
            None => builder.no_budget(),
        }
        .build()
        .unwrap()
    };
    let (offered, without, _) = amplification(layer(None)).await;
    assert_eq!(without, 4 * offered);

    let (offered, with, took) = amplification(layer(Some(Budget::default()))).await;
    // 20 % of the requests, plus the floor: 10 retries a second, in every second the run touched.
    let floor = 10 * (took.as_secs() as usize + 1);
    eprintln!(
        "{offered} requests: {without} backend calls without a budget, {with} with one ({took:?})"
    );
    assert!(
        with <= offered + offered / 5 + floor,
        "{with} backend calls for {offered} requests"
    );
    assert!(
        with > offered + offered / 10,
        "the budget did allow retries: {with}"
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_started_together_draw_their_own_delays() {
    for seeded in [false, true] {
        let backend = Backend::new();
        let builder = RetryLayer::builder()
            .max_retries(4)
            .no_budget()
            .backoff(Backoff::exponential(100 * MS));
        let layer = if seeded { builder.seed(7) } else { builder }
            .build()
            .unwrap();
        let service = layer.layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
        let calls: Vec<_> = (0..100u32)
            .map(|id| tokio::spawn(service.clone().oneshot(id)))
            .collect();
        for call in calls {
            call.await.unwrap().unwrap_err();
        }
        let sequences: Vec<Vec<Duration>> = (0..100).map(|id| backend.times(&id)).collect();
        let mut equal_pairs = 0;
        for (i, a) in sequences.iter().enumerate() {
            for b in &sequences[i + 1..] {
                equal_pairs += (a == b) as usize;
            }
        }
        // Timers fire on whole milliseconds, so single delays may meet by chance; whole sequences
        // of four must not, and the first retries must spread over their range [0, 100 ms].
        assert_eq!(equal_pairs, 0, "seeded: {seeded}");
        let firsts: std::collections::BTreeSet<_> = sequences.iter().map(|s| s[1]).collect();
        assert!(
            firsts.len() >= 50,
            "seeded: {seeded}: {} distinct",
            firsts.len()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_seeded_layer_repeats_its_delays() {
    let mut runs = HashMap::new();
    for run in 0..2 {
        let backend = Backend::new();
        let mut service = RetryLayer::builder()
            .no_budget()
            .seed(99)
            .build()
            .unwrap()
            .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
        for id in 0..3 {
            service.ready().await.unwrap().call(id).await.unwrap_err();
        }
        let times: Vec<_> = (0..3).map(|id| backend.times(&id)).collect();
        runs.insert(run, times);
    }
    assert_eq!(runs[&0], runs[&1]);
    assert_ne!(runs[&0][0], runs[&0][1]);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_during_a_backoff_is_a_cancellation() {
    let backend = Backend::new();
    let (events, observer) = recorder();
    let budget = Budget::token_bucket(100, 5, 1).unwrap();
    let mut service = RetryLayer::builder()
        .budget(budget.clone())
        .backoff(constant(1000 * MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    let call = service.ready().await.unwrap().call(1);
    let mut call = tokio_test::task::spawn(call);
    tokio_test::assert_pending!(call.poll()); // first attempt failed; waiting out the backoff
    assert_eq!(budget.available(), 19.0, "one retry was taken");
    drop(call);
    tokio::time::advance(5000 * MS).await;
    assert_eq!(backend.calls(), 1, "no attempt after the drop");
    let events = events.lock().unwrap();
    assert_eq!(events.last(), Some(&EventKind::Cancelled));
    assert!(!events.iter().any(|e| matches!(e, EventKind::GaveUp { .. })));
}

#[tokio::test(start_paused = true)]
async fn delays_beyond_the_clock_give_up_instead_of_panicking() {
    // A server hint of u64::MAX seconds, obeyed because the maximum hint is unbounded.
    let backend = Backend::new();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .classify(HttpClassifier::default())
        .max_hint(Duration::MAX)
        .observer(observer)
        .build()
        .unwrap()
        .layer(http_backend(&backend, || {
            unavailable("18446744073709551615")
        }));
    let response = service.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&EventKind::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Elapsed
        })
    );

    // A backoff whose cap is as long as a `Duration` goes, late in a long run of retries.
    let backend = Backend::new();
    let mut service = RetryLayer::builder()
        .max_retries(100)
        .no_budget()
        .backoff(
            Backoff::exponential(Duration::from_secs(1 << 40))
                .max(Duration::MAX)
                .jitter(Jitter::None),
        )
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    service.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(backend.calls() >= 1);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_after_the_deadline_even_when_readiness_came_late() {
    // The backoff ends before the deadline, but the inner service is not ready: the wait for it
    // ends at the deadline, with the last answer, and no attempt is sent.
    let (mock, mut handle) = tower_test::mock::pair::<Request<String>, u32>();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .policy(ClonedWithDeadline)
        .no_budget()
        .backoff(constant(10 * MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(1);
    let mut request = req("late");
    request.set_deadline(Deadline::after(100 * MS));
    let call = service.ready().await.unwrap().call(request);
    let mut call = tokio_test::task::spawn(call);
    tokio_test::assert_pending!(call.poll());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("first attempt failed");
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(10 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(89 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(MS).await;
    assert!(call.is_woken(), "the deadline wakes the wait for readiness");
    let err = tokio_test::assert_ready!(call.poll()).unwrap_err();
    assert_eq!(err.to_string(), "first attempt failed");
    assert!(handle.poll_request().is_pending(), "no second attempt");
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&EventKind::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Deadline
        })
    );

    // Readiness that arrives only after the deadline starts nothing either.
    let (mock, mut handle) = tower_test::mock::pair::<Request<String>, u32>();
    let mut service = RetryLayer::builder()
        .policy(ClonedWithDeadline)
        .no_budget()
        .backoff(constant(10 * MS))
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(1);
    let mut request = req("later");
    request.set_deadline(Deadline::after(100 * MS));
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(request));
    tokio_test::assert_pending!(call.poll());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("failed again");
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(150 * MS).await;
    handle.allow(1);
    let err = tokio_test::assert_ready!(call.poll()).unwrap_err();
    assert_eq!(err.to_string(), "failed again");
    assert!(
        handle.poll_request().is_pending(),
        "no attempt after the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_still_running_at_the_deadline_gives_back_the_answer_in_hand() {
    // The first attempt fails at 95 ms of 100, the retry starts at 100 - 5 ms and hangs: at the
    // deadline the caller gets the first attempt's answer (which a timeout above would otherwise
    // replace with its own), and the hung attempt is dropped.
    let (mock, mut handle) = tower_test::mock::pair::<Request<String>, u32>();
    let (events, observer) = recorder();
    let mut service = RetryLayer::builder()
        .policy(ClonedWithDeadline)
        .no_budget()
        .backoff(constant(MS))
        .observer(observer)
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(2);
    let mut request = req("cut");
    request.set_deadline(Deadline::after(100 * MS));
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(request));
    tokio_test::assert_pending!(call.poll());
    let (_, reply) = handle.next_request().await.unwrap();
    tokio::time::advance(95 * MS).await;
    reply.send_error("first attempt failed");
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(MS).await;
    tokio_test::assert_pending!(call.poll());
    let (_, hung) = handle.next_request().await.unwrap();
    tokio::time::advance(3 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(MS).await;
    assert!(call.is_woken(), "the deadline wakes the call");
    let err = tokio_test::assert_ready!(call.poll()).unwrap_err();
    assert_eq!(err.to_string(), "first attempt failed");
    // The cut attempt is reported finished (ignored: it neither failed nor succeeded), so that
    // attempts started and attempts finished agree.
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::AttemptStarted { attempt: 1 },
            EventKind::AttemptFinished {
                attempt: 1,
                outcome: Outcome::Failure,
                latency: Some(95 * MS),
            },
            EventKind::RetryScheduled {
                attempt: 2,
                delay: MS,
                reason: RetryReason::Backoff,
            },
            EventKind::AttemptStarted { attempt: 2 },
            EventKind::AttemptFinished {
                attempt: 2,
                outcome: Outcome::Ignored,
                latency: Some(4 * MS),
            },
            EventKind::GaveUp {
                attempts: 2,
                reason: GiveUpReason::Deadline
            },
        ]
    );
    drop(call);
    drop(hung);
}

/// A call through a retry layer (no budget, a 10 ms backoff, `max_elapsed` 100 ms) over a mock
/// that allows one call, whose first attempt has failed at once: its retry waits for readiness.
async fn waiting_for_readiness<O: Observer>(
    observer: O,
) -> (
    tokio_test::task::Spawn<impl std::future::Future<Output = Result<u32, BoxError>>>,
    tower_test::mock::Handle<u32, u32>,
) {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let mut service = RetryLayer::builder()
        .no_budget()
        .backoff(constant(10 * MS))
        .max_elapsed(100 * MS)
        .observer(observer)
        .build()
        .unwrap()
        .layer(mock);
    handle.allow(1);
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(1));
    tokio_test::assert_pending!(call.poll());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("failed");
    tokio_test::assert_pending!(call.poll());
    (call, handle)
}

#[tokio::test(start_paused = true)]
async fn the_maximum_elapsed_time_bounds_the_wait_for_readiness_too() {
    let (events, observer) = recorder();
    let (mut call, mut handle) = waiting_for_readiness(observer).await;
    tokio::time::advance(99 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(MS).await;
    let err = tokio_test::assert_ready!(call.poll()).unwrap_err();
    assert_eq!(err.to_string(), "failed");
    assert!(
        handle.poll_request().is_pending(),
        "no attempt after the limit"
    );
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&EventKind::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Elapsed
        })
    );
}

/// Polls `call`, catching a panic: `Err` if polling panicked, `Ok(true)` once it answered.
fn poll_caught<F: std::future::Future>(
    call: &mut tokio_test::task::Spawn<F>,
) -> std::thread::Result<bool> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.poll().is_ready()))
}

/// An observer that records every event and panics at `GaveUp`.
fn panicking_at_gave_up() -> (Events, impl Fn(&Event<'_>) + Clone + Send + Sync + 'static) {
    let (events, record) = recorder();
    (events, move |event: &Event<'_>| {
        record(event);
        if let EventKind::GaveUp { .. } = event.kind {
            panic!("the observer panics at GaveUp");
        }
    })
}

#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_gave_up_leaves_the_call_ended() {
    // The one attempt allowed fails: the retry layer gives up, and the observer panics there.
    let backend = Backend::new();
    let (events, observer) = panicking_at_gave_up();
    let mut service = RetryLayer::builder()
        .max_retries(0)
        .no_budget()
        .observer(observer)
        .build()
        .unwrap()
        .layer(backend.service(|_: &u32, _| Err::<(), _>("down")));
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(1));
    assert!(
        poll_caught(&mut call).is_err(),
        "the panic reaches the caller"
    );
    drop(call);
    let events = events.lock().unwrap();
    assert!(
        matches!(events.last(), Some(EventKind::GaveUp { .. })),
        "the call that gave up is not reported cancelled: {events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_gave_up_with_the_answer_in_hand_leaves_the_call_ended() {
    // The first attempt fails, and the retry's wait for readiness reaches the time limit: the
    // layer gives up with the first answer, and the observer panics there.
    let (events, observer) = panicking_at_gave_up();
    let (mut call, _handle) = waiting_for_readiness(observer).await;
    tokio::time::advance(100 * MS).await;
    assert!(
        poll_caught(&mut call).is_err(),
        "the panic reaches the caller"
    );
    drop(call);
    let events = events.lock().unwrap();
    assert_eq!(
        events.last(),
        Some(&EventKind::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Elapsed
        }),
        "the call that gave up is not reported cancelled"
    );
}
