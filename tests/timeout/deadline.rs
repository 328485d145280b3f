//! Deadlines carried in the request: set by the outermost timeout, honoured by nested ones, and an
//! expired deadline fails fast without calling the inner service.

use seawall::core::{Deadline, DeadlineCarrier, Event, EventKind, TimeoutCause};
use seawall::timeout::error::Elapsed;
use seawall::timeout::TimeoutLayer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

type Request = http::Request<Duration>;

/// A service that sleeps as long as the request's body says, counting calls and recording the
/// deadline each call saw.
#[derive(Clone, Default)]
struct Spy {
    calls: Arc<AtomicUsize>,
    deadlines: Arc<Mutex<Vec<Option<Deadline>>>>,
}

impl Spy {
    fn service(
        &self,
    ) -> impl Service<
        Request,
        Response = (),
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<(), BoxError>>,
    > + Clone {
        let spy = self.clone();
        service_fn(move |req: Request| {
            spy.calls.fetch_add(1, Ordering::SeqCst);
            spy.deadlines.lock().unwrap().push(req.deadline());
            let delay = *req.body();
            async move {
                tokio::time::sleep(delay).await;
                Ok::<_, BoxError>(())
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_deadline(&self) -> Option<Deadline> {
        *self.deadlines.lock().unwrap().last().expect("called")
    }
}

fn request(delay: Duration) -> Request {
    http::Request::new(delay)
}

fn elapsed(err: BoxError) -> Elapsed {
    *err.downcast::<Elapsed>().expect("an Elapsed error")
}

#[tokio::test(start_paused = true)]
async fn the_outermost_timeout_sets_the_deadline_the_inner_service_sees() {
    let spy = Spy::default();
    let mut service = TimeoutLayer::new(250 * MS).propagate().layer(spy.service());
    let start = Instant::now();
    service
        .ready()
        .await
        .unwrap()
        .call(request(MS))
        .await
        .unwrap();
    assert_eq!(spy.last_deadline(), Some(Deadline::at(start + 250 * MS)));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_does_not_propagate_leaves_the_request_alone() {
    let spy = Spy::default();
    let mut service = TimeoutLayer::new(250 * MS).layer(spy.service());
    let carried = Deadline::after(10 * MS);
    let mut req = request(500 * MS);
    req.set_deadline(carried);
    let call = service.ready().await.unwrap().call(req);
    // It neither honours the carried deadline nor replaces it.
    let err = call.await.unwrap_err();
    assert_eq!(elapsed(err).budget(), 250 * MS);
    assert_eq!(spy.last_deadline(), Some(carried));
}

#[tokio::test(start_paused = true)]
async fn a_nested_timeout_never_waits_past_the_outer_deadline() {
    let spy = Spy::default();
    let mut service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(100 * MS).propagate())
        .layer(TimeoutLayer::new(1000 * MS).propagate())
        .service(spy.service());
    let start = Instant::now();
    let call = service.ready().await.unwrap().call(request(5000 * MS));
    let mut call = task::spawn(call);
    assert_pending!(call.poll());
    tokio::time::advance(99 * MS).await;
    assert_pending!(call.poll());
    tokio::time::advance(MS).await;
    let err = elapsed(assert_ready!(call.poll()).unwrap_err());
    // The inner timeout, polled first, gave up on the outer deadline.
    assert_eq!(err.cause(), TimeoutCause::Deadline);
    assert_eq!(err.budget(), 100 * MS);
    // And the inner service saw the outer deadline, not the inner timeout's looser one.
    assert_eq!(spy.last_deadline(), Some(Deadline::at(start + 100 * MS)));
}

#[tokio::test(start_paused = true)]
async fn a_tighter_inner_timeout_tightens_the_deadline_beneath_it() {
    let spy = Spy::default();
    let mut service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(1000 * MS).propagate())
        .layer(TimeoutLayer::new(30 * MS).propagate())
        .service(spy.service());
    let start = Instant::now();
    let err = service
        .ready()
        .await
        .unwrap()
        .call(request(5000 * MS))
        .await
        .unwrap_err();
    let err = elapsed(err);
    assert_eq!(
        (err.cause(), err.budget()),
        (TimeoutCause::Timeout, 30 * MS)
    );
    assert_eq!(Instant::now() - start, 30 * MS);
    assert_eq!(spy.last_deadline(), Some(Deadline::at(start + 30 * MS)));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_set_by_the_caller_is_honoured_without_a_timeout_of_its_own() {
    let spy = Spy::default();
    let mut service = TimeoutLayer::from_extension(None)
        .propagate()
        .layer(spy.service());
    let mut req = request(5000 * MS);
    req.set_deadline(Deadline::after(70 * MS));
    let call = service.ready().await.unwrap().call(req);
    let mut call = task::spawn(call);
    assert_pending!(call.poll());
    tokio::time::advance(69 * MS).await;
    assert_pending!(call.poll());
    tokio::time::advance(MS).await;
    let err = elapsed(assert_ready!(call.poll()).unwrap_err());
    assert_eq!(
        (err.cause(), err.budget()),
        (TimeoutCause::Deadline, 70 * MS)
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_fails_fast_without_calling_the_inner_service() {
    let spy = Spy::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut service = TimeoutLayer::new(1000 * MS)
        .propagate()
        .name("api")
        .observer(move |event: &Event<'_>| sink.lock().unwrap().push(event.kind))
        .layer(spy.service());

    for passed_by in [Duration::ZERO, MS, 10_000 * MS] {
        let mut req = request(MS);
        req.set_deadline(Deadline::after(Duration::ZERO));
        tokio::time::advance(passed_by).await;
        let start = Instant::now();
        let err = service.ready().await.unwrap().call(req).await.unwrap_err();
        let err = elapsed(err);
        assert_eq!(err.cause(), TimeoutCause::Expired);
        assert_eq!(err.budget(), Duration::ZERO);
        assert_eq!(err.to_string(), "request deadline had already passed");
        assert_eq!(Instant::now(), start, "no waiting");
    }
    assert_eq!(spy.calls(), 0);
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            EventKind::TimedOut {
                elapsed: Duration::ZERO,
                cause: TimeoutCause::Expired
            };
            3
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_with_time_left_is_not_expired() {
    let spy = Spy::default();
    let mut service = TimeoutLayer::new(1000 * MS)
        .propagate()
        .layer(spy.service());
    let mut req = request(Duration::ZERO);
    req.set_deadline(Deadline::after(MS));
    service.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(spy.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_propagating_timeout_of_zero_fails_fast_without_calling_the_inner_service() {
    let spy = Spy::default();
    let mut service = TimeoutLayer::new(Duration::ZERO)
        .propagate()
        .layer(spy.service());
    let err = service
        .ready()
        .await
        .unwrap()
        .call(request(MS))
        .await
        .unwrap_err();
    let err = elapsed(err);
    assert_eq!(err.cause(), TimeoutCause::Expired);
    assert_eq!(err.budget(), Duration::ZERO);
    assert_eq!(spy.calls(), 0, "a budget of zero never reaches the backend");
    // A per-request timeout that leaves nothing does the same.
    let mut service = TimeoutLayer::per_request(|_: &Request| Some(Duration::ZERO))
        .propagate()
        .layer(spy.service());
    let err = service
        .ready()
        .await
        .unwrap()
        .call(request(MS))
        .await
        .unwrap_err();
    assert_eq!(elapsed(err).cause(), TimeoutCause::Expired);
    assert_eq!(spy.calls(), 0);
}
