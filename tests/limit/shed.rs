//! Load shedding: a call that finds the service beneath not ready fails at once.

use seawall::core::{Event, EventKind, RejectReason};
use seawall::limit::{error::Overloaded, LoadShedLayer};
use std::sync::{Arc, Mutex};
use tokio_test::{assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

#[tokio::test]
async fn a_ready_service_is_called_and_an_unready_one_is_shed() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = LoadShedLayer::new()
        .name("api")
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push((e.layer.to_string(), e.kind)));
    let (mock, mut handle) = mock::pair::<u32, u32>();
    let mut service = layer.layer(mock);

    handle.allow(1);
    let call = service.ready().await.unwrap().call(1);
    let (req, answer) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    answer.send_response(10);
    assert_eq!(call.await.unwrap(), 10);

    // Not ready: the shedder is ready at once, and the call fails without reaching the mock.
    handle.allow(0);
    let err = service.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    assert_eq!(err.to_string(), "service overloaded");
    assert!(
        handle.poll_request().is_pending(),
        "nothing reached the mock"
    );
    assert_eq!(
        *events.lock().unwrap(),
        [(
            "api".to_string(),
            EventKind::Rejected {
                reason: RejectReason::Overloaded
            }
        )]
    );
}

#[tokio::test]
async fn clones_do_not_share_a_reservation() {
    let (mock, mut handle) = mock::pair::<u32, u32>();
    let mut first = LoadShedLayer::new().layer(mock);
    let mut t = task::spawn(());
    assert_ready!(t.enter(|cx, _| first.poll_ready(cx))).unwrap();
    // The clone was never made ready: its call is shed, and `first` keeps its own readiness.
    let mut second = first.clone();
    assert!(second.call(2).await.unwrap_err().is::<Overloaded>());
    let call = first.call(1);
    let (req, answer) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    answer.send_response(1);
    assert_eq!(call.await.unwrap(), 1);
    // Readiness is used up by the call.
    assert!(first.call(3).await.unwrap_err().is::<Overloaded>());
}

#[tokio::test]
async fn an_error_from_poll_ready_is_passed_on() {
    let (mock, mut handle) = mock::pair::<u32, u32>();
    let mut service = LoadShedLayer::new().layer(mock);
    handle.send_error("broken");
    let err = service.ready().await.unwrap_err();
    assert_eq!(err.to_string(), "broken");
}

#[cfg(feature = "bulkhead")]
#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_queue_turns_into_fast_failures() {
    use seawall::bulkhead::BulkheadLayer;
    use std::time::Duration;
    use tower::{service_fn, ServiceBuilder};
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(2)
        .queue(100)
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let service = ServiceBuilder::new()
        .layer(LoadShedLayer::new())
        .layer(bulkhead)
        .service(service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>(())
        }));
    let calls: Vec<_> = (0..10)
        .map(|i| tokio::spawn(service.clone().oneshot(i)))
        .collect();
    let mut shed = 0;
    let mut served = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => served += 1,
            Err(e) if e.is::<Overloaded>() => shed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((served, shed), (2, 8));
    assert_eq!(
        (handle.in_flight(), handle.queued()),
        (0, 0),
        "nobody queued"
    );
}
