//! Each rule of the hedge layer, over a scripted backend whose n-th call (in the order they are
//! made) waits and answers as its script says.

use http::{Method, Request, Response, StatusCode};
use seawall::core::{Classify, Deadline, DeadlineCarrier, Event, EventKind, Outcome};
use seawall::hedge::{Attempt, ConfigError, HedgeLayer, MAX_ATTEMPTS};
use seawall::retry::budget::Budget;
use seawall::retry::policy::Policy;
use seawall::retry::RetryLayer;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// One call of the script: wait this many milliseconds, then answer this.
type Step = (u64, Result<u32, &'static str>);

/// A backend following a script, counting the calls made and those still running (a call
/// dropped before it answers stops running).
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Step>>,
    calls: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
}

struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Scripted {
    fn new(script: &[Step]) -> Self {
        Scripted {
            script: Arc::new(script.to_vec()),
            calls: Arc::new(AtomicUsize::new(0)),
            live: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
    fn live(&self) -> usize {
        self.live.load(SeqCst)
    }
    fn step(&self) -> (Duration, Result<u32, &'static str>, Live) {
        let n = self.calls.fetch_add(1, SeqCst);
        let (ms, result) = self.script[n.min(self.script.len() - 1)];
        self.live.fetch_add(1, SeqCst);
        (Duration::from_millis(ms), result, Live(self.live.clone()))
    }
}

impl Service<u32> for Scripted {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        let (delay, result, live) = self.step();
        Box::pin(async move {
            let _live = live;
            tokio::time::sleep(delay).await;
            result.map_err(Into::into)
        })
    }
}

fn recorder() -> (
    Arc<Mutex<Vec<EventKind>>>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &Event<'_>| {
        sink.lock().unwrap().push(e.kind)
    })
}

fn fixed(delay: u64, attempts: u32) -> seawall::hedge::Builder {
    HedgeLayer::builder()
        .delay(Duration::from_millis(delay))
        .max_attempts(attempts)
        .no_budget()
}

/// Calls `service` once, and says what it answered and how long it took.
async fn timed<S>(service: S, req: u32) -> (Result<u32, String>, Duration)
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    let start = Instant::now();
    let result = service.oneshot(req).await.map_err(|e| e.to_string());
    (result, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_hedged_after_the_delay_and_the_hedge_wins() {
    let backend = Scripted::new(&[(1000, Ok(1)), (10, Ok(2))]);
    let (events, observer) = recorder();
    let layer = fixed(50, 2).observer(observer).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!(result, Ok(2));
    assert_eq!(took, 60 * MS);
    assert_eq!(backend.calls(), 2);
    assert_eq!(
        backend.live(),
        0,
        "the loser is dropped as soon as the hedge wins"
    );
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::HedgeSent { attempt: 2 },
            EventKind::HedgeWon { attempt: 2 }
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn no_attempt_is_in_flight_once_the_call_has_returned() {
    let backend = Scripted::new(&[(1000, Ok(1)), (10, Ok(2)), (1000, Ok(3))]);
    let layer = fixed(5, 3).build().unwrap();
    let mut service = layer.layer(backend.clone());
    let mut call = tokio_test::task::spawn(service.call(0));
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(5 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(5 * MS).await;
    tokio_test::assert_pending!(call.poll());
    assert_eq!(backend.live(), 3);
    tokio::time::advance(5 * MS).await;
    // The future is still held: what it answered with, it no longer runs.
    assert_eq!(tokio_test::assert_ready!(call.poll()).unwrap(), 2);
    assert_eq!(
        backend.live(),
        0,
        "the other attempts were dropped as the call returned"
    );
}

#[tokio::test(start_paused = true)]
async fn the_delay_counts_from_the_calls_first_poll() {
    // The call reads the clock when it first waits: at its first poll, which follows `call` at
    // once in a caller that awaits it (as `timed` above does: hedged 50 ms after `call`). A
    // caller that polls later moves the hedge as late.
    let backend = Scripted::new(&[(1000, Ok(1)), (10, Ok(2))]);
    let layer = fixed(10, 2).build().unwrap();
    let mut service = layer.layer(backend.clone());
    let mut call = tokio_test::task::spawn(service.call(0));
    tokio::time::advance(4 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(7 * MS).await;
    tokio_test::assert_pending!(call.poll());
    assert_eq!(
        backend.calls(),
        1,
        "hedged 10 ms after `call`, 7 ms after the first poll"
    );
    tokio::time::advance(3 * MS).await;
    tokio_test::assert_pending!(call.poll());
    assert_eq!(backend.calls(), 2, "hedged 10 ms after the first poll");
}

#[tokio::test(start_paused = true)]
async fn a_call_answered_before_the_delay_is_not_hedged() {
    let backend = Scripted::new(&[(40, Ok(1))]);
    let layer = fixed(50, 5).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Ok(1), 40 * MS));
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn hedges_follow_each_other_by_the_delay_up_to_max_attempts() {
    let backend = Scripted::new(&[(1000, Ok(1)), (1000, Ok(2)), (1000, Ok(3)), (10, Ok(4))]);
    let layer = fixed(50, 4).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    // Hedges at 50, 100 and 150 ms; the fourth attempt answers at 160.
    assert_eq!((result, took), (Ok(4), 160 * MS));
    assert_eq!(backend.calls(), 4);
    assert_eq!(backend.live(), 0);

    let backend = Scripted::new(&[(1000, Ok(1))]);
    let layer = fixed(50, 3).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Ok(1), 1000 * MS));
    assert_eq!(backend.calls(), 3, "no more than max_attempts");
}

#[tokio::test(start_paused = true)]
async fn a_fast_error_never_beats_a_slow_success() {
    let backend = Scripted::new(&[(100, Ok(1)), (10, Err("hedge failed"))]);
    let layer = fixed(50, 2).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Ok(1), 100 * MS));
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_sends_the_next_hedge_at_once() {
    // The first attempt fails at 5 ms: the hedge goes then, not at 50 ms.
    let backend = Scripted::new(&[(5, Err("first failed")), (10, Ok(2))]);
    let layer = fixed(50, 2).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Ok(2), 15 * MS));

    // A hedge that fails at 60 ms sends the third attempt at once.
    let backend = Scripted::new(&[(1000, Ok(1)), (10, Err("hedge failed")), (10, Ok(3))]);
    let layer = fixed(50, 3).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Ok(3), 70 * MS));
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_first_attempts_result_is_returned() {
    let backend = Scripted::new(&[(100, Err("first")), (10, Err("second"))]);
    let layer = fixed(50, 2).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Err("first".to_string()), 100 * MS));
    assert_eq!(backend.live(), 0);
}

/// Retries (and hedges) everything but a "bad request".
#[derive(Clone, Copy)]
struct NotBadRequests;

impl Policy<u32, u32, BoxError> for NotBadRequests {
    fn replay(&self, req: &u32) -> Option<u32> {
        Some(*req)
    }
    fn should_retry(&self, _: &u32, result: &Result<u32, BoxError>) -> bool {
        !matches!(result, Err(e) if e.to_string() == "bad request")
    }
}

#[tokio::test(start_paused = true)]
async fn a_final_answer_ends_the_call() {
    // A failure the policy would not retry.
    let backend = Scripted::new(&[(1000, Ok(1)), (10, Err("bad request"))]);
    let layer = fixed(50, 3).policy(NotBadRequests).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Err("bad request".to_string()), 60 * MS));
    assert_eq!(backend.calls(), 2, "no hedge after a final answer");
    assert_eq!(backend.live(), 0, "the attempt still running is dropped");

    // An answer the classifier ignores (a 404, say).
    let backend = Scripted::new(&[(1000, Ok(1)), (10, Ok(404))]);
    let classify = |r: &Result<u32, BoxError>| match r {
        Ok(404) => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let layer = fixed(50, 3).classify(classify).build().unwrap();
    let (result, took) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!((result, took), (Ok(404), 60 * MS));
    assert_eq!(backend.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_cancels_every_attempt() {
    let backend = Scripted::new(&[(1000, Ok(1))]);
    let (events, observer) = recorder();
    let layer = fixed(50, 3).observer(observer).build().unwrap();
    let mut service = layer.layer(backend.clone());
    let mut call = tokio_test::task::spawn(service.call(0));
    tokio_test::assert_pending!(call.poll());
    for _ in 0..2 {
        tokio::time::advance(50 * MS).await;
        tokio_test::assert_pending!(call.poll());
    }
    assert_eq!((backend.calls(), backend.live()), (3, 3));
    drop(call);
    assert_eq!(backend.live(), 0, "no attempt outlives its call");
    assert_eq!(events.lock().unwrap().last(), Some(&EventKind::Cancelled));
}

/// Polls `call`, catching a panic: `Ok(None)` while pending, `Ok(Some(answer))` once ready.
fn poll<F>(
    call: &mut tokio_test::task::Spawn<F>,
) -> std::thread::Result<Option<Result<u32, String>>>
where
    F: Future<Output = Result<u32, BoxError>>,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.poll())).map(|p| match p {
        Poll::Ready(answer) => Some(answer.map_err(|e| e.to_string())),
        Poll::Pending => None,
    })
}

#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_hedge_won_leaves_the_call_ended() {
    // The first attempt fails at 10 ms (its failure is kept), the hedge sent then wins at 20 ms.
    let backend = Scripted::new(&[(10, Err("503")), (10, Ok(2))]);
    let (events, record) = recorder();
    let observer = move |e: &Event<'_>| {
        record(e);
        if let EventKind::HedgeWon { .. } = e.kind {
            panic!("the observer panics at HedgeWon");
        }
    };
    let layer = fixed(50, 2).observer(observer).build().unwrap();
    let mut service = layer.layer(backend.clone());
    let mut call = tokio_test::task::spawn(service.call(0));
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(10 * MS).await;
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(10 * MS).await;
    assert!(
        poll(&mut call).is_err(),
        "the observer's panic reaches the caller"
    );
    assert_eq!(
        backend.live(),
        0,
        "the attempts were dropped before the event"
    );
    // Polled again, the call has ended: it does not answer with the first attempt's failure.
    assert!(
        !matches!(poll(&mut call), Ok(Some(_))),
        "a call that ended answers nothing more"
    );
    drop(call);
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::HedgeSent { attempt: 2 },
            EventKind::HedgeWon { attempt: 2 }
        ],
        "the call that ended is not reported cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn each_hedge_takes_from_the_budget() {
    // Room for one hedge: a bucket of 5 tokens, 5 a hedge, no refund.
    let budget = Budget::token_bucket(5, 5, 0).unwrap();
    let backend = Scripted::new(&[(1000, Ok(1))]);
    let (events, observer) = recorder();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .max_attempts(3)
        .budget(budget.clone())
        .observer(observer)
        .build()
        .unwrap();
    let (result, _) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!(result, Ok(1));
    assert_eq!(
        backend.calls(),
        2,
        "the second hedge found the budget empty"
    );
    assert_eq!(budget.available(), 0.0);
    assert_eq!(
        *events.lock().unwrap(),
        [
            EventKind::HedgeSent { attempt: 2 },
            EventKind::HedgeBudgetExhausted { attempt: 3 }
        ]
    );
    // The next call is not hedged at all.
    let (result, _) = timed(layer.layer(backend.clone()), 0).await;
    assert_eq!(result, Ok(1));
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_bounds_hedges_to_the_extra_load() {
    // Every call slow, one at a time for 40 s: at most 5 % of 400 requests plus the floor (1 a
    // second) are hedged.
    let backend = Scripted::new(&[(100, Ok(1))]);
    let layer = HedgeLayer::builder().delay(10 * MS).build().unwrap();
    for _ in 0..400 {
        let _ = timed(layer.layer(backend.clone()), 0).await;
    }
    let hedges = backend.calls() - 400;
    assert!(hedges <= 20 + 40 + 1, "{hedges} hedges");
    assert!(hedges >= 20, "the budget is used: {hedges} hedges");
}

/// A retry layer with `budget`, to go over a hedge layer (a fixed 50 ms delay) with its
/// withdraw-only view.
fn retry_over_hedge(budget: &Budget) -> (RetryLayer, HedgeLayer) {
    let hedge = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.withdraw_only())
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .budget(budget.clone())
        .build()
        .unwrap();
    (retry, hedge)
}

#[tokio::test(start_paused = true)]
async fn a_budget_shared_with_a_retry_layer_above_takes_one_deposit_per_request() {
    let budget = Budget::ratio(0.1, 0, Duration::from_secs(10)).unwrap();
    let (retry, hedge) = retry_over_hedge(&budget);
    let service = ServiceBuilder::new()
        .layer(retry)
        .layer(hedge)
        .service(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    for _ in 0..100 {
        service.clone().oneshot(()).await.unwrap();
    }
    // 100 requests at 0.1 a request: one bound of 10 retries-or-hedges.
    assert_eq!(budget.available(), 10.0);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_wins_a_slow_call_is_paid_for_from_a_token_bucket() {
    // A bucket with room for two hedges (10 tokens, 5 a hedge, no refund for a call that
    // succeeds at once), and twenty calls whose first attempt takes a second and whose hedge
    // wins after 60 ms: a winning hedge of a slow call keeps its cost, so two are sent.
    let budget = Budget::token_bucket(10, 5, 0).unwrap();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.clone())
        .build()
        .unwrap();
    let mut total = 0;
    for _ in 0..20 {
        let backend = Scripted::new(&[(1000, Ok(1)), (10, Ok(2))]);
        layer.layer(backend.clone()).oneshot(0).await.unwrap();
        total += backend.calls();
    }
    let hedges = total - 20;
    assert!(hedges <= 2, "{hedges} hedges from a bucket of 2");
    assert_eq!(hedges, 2, "the bucket is used");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_wins_after_a_failure_gives_its_cost_back_as_a_retry() {
    // The first attempt fails at 10 ms, the hedge sent at once succeeds: it did a retry's work,
    // and a token bucket takes its cost back, as for a retry that succeeds.
    let budget = Budget::token_bucket(10, 5, 0).unwrap();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.clone())
        .build()
        .unwrap();
    let backend = Scripted::new(&[(10, Err("503")), (10, Ok(2))]);
    assert_eq!(layer.layer(backend.clone()).oneshot(0).await.unwrap(), 2);
    assert_eq!(backend.calls(), 2);
    assert_eq!(budget.available(), 2.0);
}

/// A token bucket of 100 tokens, 10 a retry or hedge, 1 back for a call that succeeds at once,
/// drawn down to 70 so that what is put back shows.
fn drawn_bucket() -> Budget {
    let budget = Budget::token_bucket(100, 10, 1).unwrap();
    for _ in 0..3 {
        assert!(budget.try_withdraw());
    }
    budget
}

#[tokio::test(start_paused = true)]
async fn a_hedge_under_a_retry_layer_that_wins_after_a_failure_puts_back_one_retrys_cost() {
    // A retry layer alone over a backend whose first call fails and second succeeds: the retry
    // takes 10 tokens and puts 10 back.
    let alone = drawn_bucket();
    let retry = RetryLayer::builder().budget(alone.clone()).build().unwrap();
    let backend = Scripted::new(&[(10, Err("503")), (10, Ok(2))]);
    assert_eq!(retry.layer(backend).oneshot(0).await.unwrap(), 2);
    assert_eq!(alone.available(), 7.0);

    // The same request with the hedge layer (the budget's withdraw-only view) under the retry
    // layer: the hedge sent at the failure does the retry's work, and takes 10 tokens. The
    // request gets back one retry's cost, not that and the refund of a call that succeeded at
    // once as well (the retry layer saw its first attempt succeed).
    let budget = drawn_bucket();
    let (retry, hedge) = retry_over_hedge(&budget);
    let backend = Scripted::new(&[(10, Err("503")), (10, Ok(2))]);
    let service = ServiceBuilder::new()
        .layer(retry)
        .layer(hedge)
        .service(backend.clone());
    assert_eq!(service.oneshot(0).await.unwrap(), 2);
    assert_eq!(
        backend.calls(),
        2,
        "the hedge, not a retry, sent the second call"
    );
    assert_eq!(budget.available(), alone.available());
}

#[tokio::test(start_paused = true)]
async fn a_retry_under_a_hedge_layer_that_succeeds_after_a_failure_puts_back_one_retrys_cost() {
    // The retry layer (the budget's withdraw-only view) under the hedge layer: its retry after
    // 1 ms succeeds before the hedge delay, and the hedge layer sees its first attempt succeed.
    let budget = drawn_bucket();
    let hedge = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.clone())
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .budget(budget.withdraw_only())
        .backoff(
            seawall::retry::backoff::Backoff::constant(MS)
                .jitter(seawall::retry::backoff::Jitter::None),
        )
        .build()
        .unwrap();
    let backend = Scripted::new(&[(10, Err("503")), (10, Ok(2))]);
    let service = ServiceBuilder::new()
        .layer(hedge)
        .layer(retry)
        .service(backend.clone());
    assert_eq!(service.oneshot(0).await.unwrap(), 2);
    assert_eq!(backend.calls(), 2, "no hedge was sent");
    assert_eq!(
        budget.available(),
        7.0,
        "the retry's 10 tokens back, no more"
    );
}

/// An HTTP backend: the n-th call waits and answers with the status (and `Retry-After`) of its
/// step, and records the attempt number it was marked with.
#[derive(Clone)]
struct HttpScripted {
    script: Arc<Vec<(u64, u16, Option<&'static str>)>>,
    attempts: Arc<Mutex<Vec<(u32, Duration)>>>,
    start: Instant,
}

impl Service<Request<String>> for HttpScripted {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.len();
        attempts.push((Attempt::of(&req), self.start.elapsed()));
        let (ms, status, retry_after) = self.script[n.min(self.script.len() - 1)];
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut response = Response::builder().status(status);
            if let Some(after) = retry_after {
                response = response.header("retry-after", after);
            }
            Ok(response.body(String::new())?)
        })
    }
}

impl HttpScripted {
    fn new(script: &[(u64, u16, Option<&'static str>)]) -> Self {
        HttpScripted {
            script: Arc::new(script.to_vec()),
            attempts: Arc::default(),
            start: Instant::now(),
        }
    }
    fn attempts(&self) -> Vec<(u32, Duration)> {
        self.attempts.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn each_hedge_carries_its_attempt_number() {
    let backend = HttpScripted::new(&[(1000, 200, None), (1000, 200, None), (10, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .max_attempts(3)
        .no_budget()
        .build()
        .unwrap();
    let request = Request::get("/items").body(String::new()).unwrap();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        backend.attempts(),
        [(1, Duration::ZERO), (2, 50 * MS), (3, 100 * MS)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_hint_holds_further_hedges_back() {
    // The first attempt answers 503 with Retry-After: 1 at 10 ms: the hedge waits until 1010 ms.
    let backend = HttpScripted::new(&[(10, 503, Some("1")), (10, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let request = Request::get("/items").body(String::new()).unwrap();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.attempts(), [(1, Duration::ZERO), (2, 1010 * MS)]);
}

#[tokio::test(start_paused = true)]
async fn a_server_hint_past_max_hint_stops_hedges_and_the_first_answer_returns_at_once() {
    // The first attempt answers 503 with Retry-After: 3600 at 10 ms: past `max_hint` (60 s by
    // default, as retry's), it is not waited for, and with nothing else in flight it is the
    // answer.
    let backend = HttpScripted::new(&[(10, 503, Some("3600")), (10, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let start = Instant::now();
    let response = layer
        .layer(backend.clone())
        .oneshot(Request::get("/items").body(String::new()).unwrap())
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(
        took <= Duration::from_secs(60),
        "answered {} after {took:?}",
        response.status()
    );
    assert_eq!(
        (response.status(), took),
        (StatusCode::SERVICE_UNAVAILABLE, 10 * MS)
    );
    assert_eq!(backend.attempts(), [(1, Duration::ZERO)]);

    // A hint within `max_hint` is waited for.
    let backend = HttpScripted::new(&[(10, 503, Some("3600")), (10, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .max_hint(Duration::from_secs(3600))
        .no_budget()
        .build()
        .unwrap();
    let request = Request::get("/items").body(String::new()).unwrap();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        backend.attempts(),
        [
            (1, Duration::ZERO),
            (2, Duration::from_secs(3600) + 10 * MS)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_max_hint_from_a_hedge_lets_the_first_attempt_answer() {
    // The hedge sent at 50 ms answers 503 with Retry-After: 3600 at 60 ms: no third attempt, and
    // the first attempt, still in flight, answers (a 503 at 100 ms), rather than a third attempt
    // an hour later.
    let backend = HttpScripted::new(&[(100, 503, None), (10, 503, Some("3600"))]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .max_attempts(3)
        .no_budget()
        .build()
        .unwrap();
    let start = Instant::now();
    let request = Request::get("/items").body(String::new()).unwrap();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(
        (response.status(), start.elapsed()),
        (StatusCode::SERVICE_UNAVAILABLE, 100 * MS)
    );
    assert_eq!(backend.attempts(), [(1, Duration::ZERO), (2, 50 * MS)]);
}

#[tokio::test(start_paused = true)]
async fn only_replayable_requests_are_hedged() {
    let backend = HttpScripted::new(&[(1000, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .body(String::from("{}"))
        .unwrap();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.attempts().len(), 1, "a POST is sent once");
}

/// A GET of `/items` with a deadline `within` from now.
fn get_within(within: Duration) -> Request<String> {
    let mut request = Request::get("/items").body(String::new()).unwrap();
    request.set_deadline(Deadline::after(within));
    request
}

#[tokio::test(start_paused = true)]
async fn nothing_is_hedged_past_the_deadline() {
    // Deadline at 120 ms: hedges at 50 and 100 ms, none at 150.
    let backend = HttpScripted::new(&[(1000, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .max_attempts(MAX_ATTEMPTS)
        .no_budget()
        .build()
        .unwrap();
    let request = get_within(120 * MS);
    layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(
        backend.attempts(),
        [(1, Duration::ZERO), (2, 50 * MS), (3, 100 * MS)]
    );

    // A deadline before the delay: no hedge at all, even after a failure past it.
    let backend = HttpScripted::new(&[(60, 503, None), (10, 200, None)]);
    let request = get_within(40 * MS);
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.attempts().len(), 1);
}

#[cfg(feature = "timeout")]
#[tokio::test(start_paused = true)]
async fn at_the_deadline_the_first_attempts_failure_in_hand_is_the_answer() {
    // The first attempt fails (503) at 10 ms, the hedge sent then would take a second; the
    // deadline is at 100 ms. A retry layer answers the 503 in hand there; so does the hedge
    // layer, rather than let the timeout above answer `Elapsed`.
    use seawall::timeout::TimeoutLayer;
    let script = [(10, 503, None), (1000, 200, None)];
    let hedge = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let retry = RetryLayer::http().build().unwrap();
    let get = || Request::get("/items").body(String::new()).unwrap();
    let retried = ServiceBuilder::new()
        .layer(TimeoutLayer::new(100 * MS).propagate())
        .layer(retry)
        .service(HttpScripted::new(&script))
        .oneshot(get())
        .await;
    let backend = HttpScripted::new(&script);
    let start = Instant::now();
    let hedged = ServiceBuilder::new()
        .layer(TimeoutLayer::new(100 * MS).propagate())
        .layer(hedge)
        .service(backend.clone())
        .oneshot(get())
        .await;
    assert_eq!(
        retried.map(|r| r.status()).ok(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(
        hedged.map(|r| r.status()).ok(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(backend.attempts(), [(1, Duration::ZERO), (2, 10 * MS)]);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_alone_wakes_the_call_to_answer_the_failure_in_hand() {
    // No timeout above: the request's deadline (100 ms) is the only timer. The first attempt
    // fails at 10 ms, the hedges sent then and at 60 ms would take a second: at 100 ms the call's
    // own timer wakes it, and it answers the 503 in hand.
    let backend = HttpScripted::new(&[(10, 503, None), (1000, 200, None)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .max_attempts(3)
        .no_budget()
        .build()
        .unwrap();
    let request = get_within(100 * MS);
    let mut service = layer.layer(backend.clone());
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(request));
    tokio_test::assert_pending!(call.poll());
    for step in [10, 50] {
        tokio::time::advance(step * MS).await;
        assert!(
            call.is_woken(),
            "woken at the failure, then for the third attempt"
        );
        tokio_test::assert_pending!(call.poll());
    }
    tokio::time::advance(39 * MS).await;
    assert!(!call.is_woken(), "nothing to do before the deadline");
    tokio::time::advance(MS).await;
    assert!(call.is_woken(), "the deadline wakes the call");
    let response = tokio_test::assert_ready!(call.poll()).unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        backend.attempts(),
        [(1, Duration::ZERO), (2, 10 * MS), (3, 60 * MS)]
    );

    // The last hedge fails before the deadline: nothing is left in flight, and the first answer
    // returns then, not at the deadline the timer was set for.
    let backend = HttpScripted::new(&[(10, 503, None), (30, 503, None)]);
    let request = get_within(100 * MS);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let start = Instant::now();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    assert_eq!(
        (response.status(), start.elapsed()),
        (StatusCode::SERVICE_UNAVAILABLE, 40 * MS)
    );
}

#[test]
fn bad_configurations_are_errors() {
    let attempts = |n| HedgeLayer::builder().max_attempts(n).build().err();
    assert_eq!(
        attempts(0),
        Some(ConfigError::MaxAttempts {
            attempts: 0,
            max: 5
        })
    );
    assert_eq!(
        attempts(6),
        Some(ConfigError::MaxAttempts {
            attempts: 6,
            max: 5
        })
    );
    assert!(attempts(5).is_none());
    for load in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(matches!(
            HedgeLayer::builder().max_extra_load(load).build(),
            Err(ConfigError::MaxExtraLoad(_))
        ));
    }
    assert_eq!(
        HedgeLayer::builder().min_samples(0).build().err(),
        Some(ConfigError::MinSamples)
    );
}

// A classifier that reads hints is needed for the hint rule; this checks the closure
// classifier reads none, so the rule above is the HTTP classifier's doing.
#[test]
fn closure_classifiers_read_no_hints() {
    let classify = |_: &Result<u32, BoxError>| Outcome::Failure;
    assert_eq!(classify.retry_after(&Ok(1)), None);
}

/// A gRPC backend: the n-th call waits and answers with the `grpc-status` (and
/// `grpc-retry-pushback-ms`) of its step, its body the attempt's number; and records the attempt
/// numbers and when they were sent.
#[derive(Clone)]
struct GrpcScripted {
    script: Arc<Vec<(u64, u32, Option<&'static str>)>>,
    attempts: Arc<Mutex<Vec<(u32, Duration)>>>,
    start: Instant,
}

impl GrpcScripted {
    fn new(script: &[(u64, u32, Option<&'static str>)]) -> Self {
        GrpcScripted {
            script: Arc::new(script.to_vec()),
            attempts: Arc::default(),
            start: Instant::now(),
        }
    }
    fn attempts(&self) -> Vec<(u32, Duration)> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Service<Request<String>> for GrpcScripted {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.len();
        let attempt = Attempt::of(&req);
        attempts.push((attempt, self.start.elapsed()));
        let (ms, code, pushback) = self.script[n.min(self.script.len() - 1)];
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut response = Response::builder().header("grpc-status", code.to_string());
            if let Some(pushback) = pushback {
                response = response.header("grpc-retry-pushback-ms", pushback);
            }
            Ok(response.body(attempt.to_string())?)
        })
    }
}

async fn grpc_call(backend: &GrpcScripted) -> (Response<String>, Duration) {
    let layer = HedgeLayer::grpc()
        .delay(50 * MS)
        .max_attempts(3)
        .no_budget()
        .build()
        .unwrap();
    let request = Request::post("/pkg.Service/Get")
        .body(String::new())
        .unwrap();
    let start = Instant::now();
    let response = layer.layer(backend.clone()).oneshot(request).await.unwrap();
    (response, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_grpc_pushback_not_to_retry_stops_hedges_and_lets_the_attempts_in_flight_finish() {
    // The hedge, sent at 50 ms, answers UNAVAILABLE at 60 ms with a pushback saying not to
    // retry: no third attempt, and the first attempt still answers, at 1 s (gRPC A6).
    for (code, pushback) in [(14, Some("-1")), (8, None), (8, Some("-1"))] {
        let backend = GrpcScripted::new(&[(1000, 0, None), (10, code, pushback), (10, 0, None)]);
        let (response, took) = grpc_call(&backend).await;
        assert_eq!(
            (
                response.headers()["grpc-status"].to_str().unwrap(),
                response.body().as_str()
            ),
            ("0", "1"),
            "code {code} with pushback {pushback:?}: the first attempt answers"
        );
        assert_eq!(took, 1000 * MS);
        assert_eq!(
            backend.attempts(),
            [(1, Duration::ZERO), (2, 50 * MS)],
            "code {code} with pushback {pushback:?}: no hedge after it"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_positive_grpc_pushback_delays_the_next_hedge() {
    // The hedge answers UNAVAILABLE (or RESOURCE_EXHAUSTED) at 60 ms with a pushback of 500 ms:
    // the third attempt goes at 560 ms, not at once, and answers 10 ms later.
    for code in [14, 8] {
        let backend = GrpcScripted::new(&[(1000, 0, None), (10, code, Some("500")), (10, 0, None)]);
        let (response, took) = grpc_call(&backend).await;
        assert_eq!(response.body(), "3", "code {code}");
        assert_eq!(took, 570 * MS, "code {code}");
        assert_eq!(
            backend.attempts(),
            [(1, Duration::ZERO), (2, 50 * MS), (3, 560 * MS)],
            "code {code}"
        );
    }
}
