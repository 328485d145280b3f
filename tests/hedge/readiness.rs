//! A hedge and the service beneath it: the cheap checks come before its readiness is asked for,
//! what its readiness reserved is given back at once when the hedge is not sent, the budget
//! pays only for hedges sent, a readiness error is reported and does not end the call, and the
//! future holds room for no more attempts than it may make.

use http::{Request, Response};
use seawall::bulkhead::{BulkheadLayer, BulkheadService};
use seawall::core::{Deadline, DeadlineCarrier, Event};
use seawall::hedge::HedgeLayer;
use seawall::retry::budget::Budget;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// The names of the events an observer saw (by their `Debug` form, so that a test names an
/// event kind without the type having it).
fn recorder() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |e: &Event<'_>| {
        let debug = format!("{:?}", e.kind);
        let name = debug.split([' ', '{', '(']).next().unwrap().to_string();
        sink.lock().unwrap().push(name)
    })
}

/// An HTTP backend whose calls all answer 200 after a second.
#[derive(Clone, Default)]
struct Slow {
    calls: Arc<AtomicUsize>,
}

impl Service<Request<String>> for Slow {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(Response::new(String::new()))
        })
    }
}

fn get(deadline: Duration) -> Request<String> {
    let mut request = Request::get("/items").body(String::new()).unwrap();
    request.set_deadline(Deadline::after(deadline));
    request
}

/// A hedge layer (after 50 ms, a budget of one hedge) over a bulkhead of two slots with a
/// queue, over a slow backend; and another caller holding the second slot.
struct OverABulkhead {
    hedge: seawall::hedge::Hedge<
        BulkheadService<Slow>,
        seawall::http::HttpClassifier,
        seawall::retry::http::HttpPolicy,
        seawall::hedge::MarkAttempt,
        (),
    >,
    blocker: BulkheadService<Slow>,
    beneath: seawall::bulkhead::Handle,
    budget: Budget,
    backend: Slow,
}

fn over_a_bulkhead() -> OverABulkhead {
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(2)
        .queue(4)
        .build()
        .unwrap();
    let backend = Slow::default();
    let budget = Budget::token_bucket(5, 5, 0).unwrap();
    let hedge = HedgeLayer::http()
        .delay(50 * MS)
        .budget(budget.clone())
        .build()
        .unwrap()
        .layer(bulkhead.layer(backend.clone()));
    let mut blocker = bulkhead.layer(backend.clone());
    let mut cx = task::spawn(());
    assert_ready!(cx.enter(|cx, _| blocker.poll_ready(cx))).unwrap();
    OverABulkhead {
        hedge,
        blocker,
        beneath: bulkhead.handle(),
        budget,
        backend,
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_past_the_deadline_gives_back_what_it_waited_for_and_its_budget() {
    let OverABulkhead {
        mut hedge,
        blocker,
        beneath,
        budget,
        backend,
    } = over_a_bulkhead();
    let mut cx = task::spawn(());
    assert_ready!(cx.enter(|cx, _| hedge.poll_ready(cx))).unwrap();
    let mut call = task::spawn(hedge.call(get(100 * MS)));
    assert_pending!(call.poll());
    assert_eq!((beneath.in_flight(), beneath.queued()), (2, 0));
    // At 50 ms the hedge is due, and waits for a slot beneath.
    tokio::time::advance(50 * MS).await;
    assert_pending!(call.poll());
    assert_eq!(beneath.queued(), 1, "the hedge waits for a slot");
    // At the deadline it will not be sent: it leaves the queue then.
    tokio::time::advance(50 * MS).await;
    assert!(call.is_woken(), "the deadline wakes the call");
    assert_pending!(call.poll());
    assert_eq!(
        (beneath.in_flight(), beneath.queued()),
        (2, 0),
        "a hedge past the deadline leaves the queue"
    );
    // A slot frees: nobody takes it for a hedge that will not be sent.
    drop(blocker);
    assert_pending!(call.poll());
    assert_eq!(
        beneath.in_flight(),
        1,
        "only the first attempt holds a slot"
    );
    assert_eq!(
        budget.available(),
        1.0,
        "the budget pays only for hedges sent"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready!(call.poll()).unwrap();
    assert_eq!(backend.calls.load(SeqCst), 1);
    assert_eq!(beneath.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_ready_service_a_hedge_cannot_use_is_dropped_at_once() {
    let OverABulkhead {
        mut hedge,
        blocker,
        beneath,
        budget,
        backend,
    } = over_a_bulkhead();
    let mut cx = task::spawn(());
    assert_ready!(cx.enter(|cx, _| hedge.poll_ready(cx))).unwrap();
    let mut call = task::spawn(hedge.call(get(Duration::from_secs(10))));
    assert_pending!(call.poll());
    tokio::time::advance(50 * MS).await;
    assert_pending!(call.poll());
    assert_eq!(beneath.queued(), 1, "the hedge waits for a slot");
    // Meanwhile another caller spends the budget's last hedge.
    assert!(
        budget.try_withdraw(),
        "the budget is not spent on a hedge still waiting"
    );
    drop(blocker);
    assert_pending!(call.poll());
    assert_eq!(
        (beneath.in_flight(), beneath.queued()),
        (1, 0),
        "the slot the hedge could not use is given back at once"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready!(call.poll()).unwrap();
    assert_eq!(backend.calls.load(SeqCst), 1);
}

/// A service ready for its first call only: every later readiness fails.
#[derive(Clone, Default)]
struct ReadyOnce {
    calls: Arc<AtomicUsize>,
}

impl Service<u32> for ReadyOnce {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.calls.load(SeqCst) > 0 {
            return Poll::Ready(Err("connection lost".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(1)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_for_a_hedge_is_reported_and_the_first_attempt_goes_on() {
    let (events, observer) = recorder();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .max_attempts(3)
        .no_budget()
        .observer(observer)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let answer = layer.layer(ReadyOnce::default()).oneshot(0).await;
    assert_eq!(answer.unwrap(), 1, "the first attempt answers");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        *events.lock().unwrap(),
        ["HedgeReadinessFailed"],
        "the error is reported, and no other hedge is tried"
    );
}

/// A future as large as a real client's (hyper's are a few KB).
struct Big([u8; 4096]);

impl Future for Big {
    type Output = Result<u32, BoxError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(u32::from(self.0[0])))
    }
}

#[derive(Clone)]
struct BigFutures;

impl Service<u32> for BigFutures {
    type Response = u32;
    type Error = BoxError;
    type Future = Big;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Big {
        Big([7; 4096])
    }
}

#[tokio::test(start_paused = true)]
async fn the_future_holds_room_for_two_attempts_by_default() {
    let mut service = HedgeLayer::builder()
        .delay(50 * MS)
        .build()
        .unwrap()
        .layer(BigFutures);
    let future = service.ready().await.unwrap().call(0);
    let size = std::mem::size_of_val(&future);
    assert!(
        size < 3 * 4096,
        "{size} bytes: room for more attempt futures than max_attempts (2)"
    );
    assert_eq!(future.await.unwrap(), 7);
}

/// A policy that copies a request once (before the first attempt) and no more.
#[derive(Clone, Default)]
struct CopiesOnce(Arc<AtomicUsize>);

impl seawall::retry::policy::Policy<Request<String>, Response<String>, BoxError> for CopiesOnce {
    fn replay(&self, _: &Request<String>) -> Option<Request<String>> {
        (self.0.fetch_add(1, SeqCst) == 0)
            .then(|| Request::get("/items").body(String::new()).unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_not_sent_for_want_of_a_copy_costs_nothing() {
    let budget = Budget::token_bucket(5, 5, 0).unwrap();
    let layer = HedgeLayer::builder()
        .delay(50 * MS)
        .budget(budget.clone())
        .policy(CopiesOnce::default())
        .build()
        .unwrap();
    let backend = Slow::default();
    layer
        .layer(backend.clone())
        .oneshot(get(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(backend.calls.load(SeqCst), 1, "no hedge was sent");
    assert_eq!(budget.available(), 1.0, "and none was paid for");
}
