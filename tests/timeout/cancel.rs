//! A caller that drops the response future cancels the call: the observer hears of a cancellation,
//! never of a timeout. A call that times out is reported with its elapsed time.

use crate::support::{Backend, Call};
use seawall::core::{Event, EventKind, TimeoutCause};
use seawall::timeout::TimeoutLayer;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

type Seen = Arc<Mutex<Vec<(String, EventKind)>>>;

fn recorder() -> (Seen, impl Fn(&Event<'_>) + Clone + Send + Sync + 'static) {
    let seen = Seen::default();
    let sink = seen.clone();
    (seen, move |event: &Event<'_>| {
        sink.lock()
            .unwrap()
            .push((event.layer.to_string(), event.kind))
    })
}

/// A call of `after` through a timeout of 100 ms whose events are recorded, polled once.
async fn started(
    after: Duration,
) -> (
    Seen,
    task::Spawn<impl std::future::Future<Output = Result<u32, tower::BoxError>>>,
) {
    let (seen, observer) = recorder();
    let mut service = TimeoutLayer::new(100 * MS)
        .name("db")
        .observer(observer)
        .layer(Backend);
    let call = service.ready().await.unwrap().call(Call::ok().after(after));
    let mut call = task::spawn(call);
    assert_pending!(call.poll());
    (seen, call)
}

fn kinds(seen: &Seen) -> Vec<EventKind> {
    seen.lock().unwrap().iter().map(|(_, kind)| *kind).collect()
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_is_a_cancellation_not_a_timeout() {
    let (seen, mut call) = started(1000 * MS).await;
    tokio::time::advance(50 * MS).await;
    assert_pending!(call.poll());
    drop(call);
    tokio::time::advance(1000 * MS).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("db".to_string(), EventKind::Cancelled)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_is_reported_with_its_elapsed_time() {
    let (seen, mut call) = started(1000 * MS).await;
    tokio::time::advance(100 * MS).await;
    assert!(assert_ready!(call.poll()).is_err());
    drop(call); // after the end: not a cancellation
    assert_eq!(
        kinds(&seen),
        vec![EventKind::TimedOut {
            elapsed: 100 * MS,
            cause: TimeoutCause::Timeout
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_ends_in_time_sends_no_event_even_when_dropped_after() {
    let (seen, mut call) = started(60 * MS).await;
    tokio::time::advance(60 * MS).await;
    assert_eq!(assert_ready!(call.poll()).unwrap(), 1);
    drop(call);
    assert_eq!(kinds(&seen), vec![]);
}

#[tokio::test(start_paused = true)]
async fn calls_that_end_in_time_send_no_event() {
    let (seen, observer) = recorder();
    let mut service = TimeoutLayer::new(100 * MS)
        .name("db")
        .observer(observer)
        .layer(Backend);
    service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(10 * MS))
        .await
        .unwrap();
    service
        .ready()
        .await
        .unwrap()
        .call(Call::fail())
        .await
        .unwrap_err();
    assert_eq!(kinds(&seen), vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_its_first_poll_is_a_cancellation() {
    let (seen, observer) = recorder();
    let mut service = TimeoutLayer::per_request(|_: &Call| None)
        .name("db")
        .observer(observer)
        .layer(Backend);
    drop(service.ready().await.unwrap().call(Call::ok()));
    assert_eq!(kinds(&seen), vec![EventKind::Cancelled]);
}
