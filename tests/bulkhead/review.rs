//! Review of issue 20 (r20): behaviours the issue asks for that the queue does not have.

use seawall::bulkhead::{error::Full, BulkheadLayer, Codel, Order};
use std::task::Poll;
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, BoxError, Layer, Service};

const MS: Duration = Duration::from_millis(1);
type Svc = tower::util::BoxService<u32, u32, BoxError>;

fn caller(layer: &BulkheadLayer) -> (task::Spawn<()>, Svc) {
    let inner = service_fn(|id: u32| async move { Ok::<_, BoxError>(id) });
    (task::spawn(()), Svc::new(layer.layer(inner)))
}

fn poll(c: &mut (task::Spawn<()>, Svc)) -> Poll<Result<(), BoxError>> {
    let s = &mut c.1;
    c.0.enter(|cx, _| s.poll_ready(cx))
}

/// "If the queue has not been empty in the last interval, a request may wait only a short
/// time" (issue 20, after "Fail at Scale"). A caller that joined while the queue was young
/// keeps the interval's wait after the queue has become a standing one, and is even given a
/// slot after waiting 12x the target in a standing queue.
#[tokio::test(start_paused = true)]
async fn a_caller_that_joined_a_young_queue_is_held_to_the_target_once_the_queue_stands() {
    for order in [Order::Fifo, Order::Adaptive, Order::Lifo] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(1)
            .queue(10)
            .codel(Codel::default()) // 5 ms / 100 ms
            .order(order)
            .build()
            .unwrap();
        let mut holder = caller(&layer);
        assert_ready!(poll(&mut holder)).unwrap();
        let mut a = caller(&layer);
        assert_pending!(poll(&mut a)); // t = 0: the queue was empty
        tokio::time::advance(90 * MS).await;
        let mut b = caller(&layer);
        assert_pending!(poll(&mut b)); // t = 90: the queue is 90 ms old
        tokio::time::advance(11 * MS).await; // t = 101
        assert_ready!(poll(&mut a)).unwrap();
        let err = a.1.call(1).await.unwrap_err();
        assert!(err.downcast_ref::<Full>().unwrap().waited_too_long());
        // Since t = 100 the queue has not been empty for a whole interval: it stands, and
        // B has waited 11 ms, over the 5 ms target. By t = 106 at the latest (or when a slot
        // comes, at dequeue) B must be turned away.
        tokio::time::advance(9 * MS).await; // t = 110
        assert!(
            poll(&mut b).is_ready(),
            "{order:?}: at t = 110 ms B still waits (20 ms in a queue standing since t = 100)"
        );
    }
}

/// The dequeue side of the same rule: in a queue that has stood for 50 ms, FIFO hands the freed
/// slot to a caller that has waited 60 ms (12x the target) rather than turning it away.
#[tokio::test(start_paused = true)]
async fn a_slot_is_not_given_to_a_caller_past_the_target_in_a_standing_queue() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel::default())
        .order(Order::Fifo)
        .build()
        .unwrap();
    let mut holder = caller(&layer);
    assert_ready!(poll(&mut holder)).unwrap();
    let mut a = caller(&layer);
    assert_pending!(poll(&mut a));
    tokio::time::advance(90 * MS).await;
    let mut b = caller(&layer);
    assert_pending!(poll(&mut b));
    tokio::time::advance(60 * MS).await; // t = 150; A left at 100; standing since 100
    assert_ready!(poll(&mut a)).unwrap();
    drop(a.1.call(1));
    drop(holder); // the slot frees at t = 150
    let got = poll(&mut b);
    assert!(
        !matches!(got, Poll::Ready(Ok(()))) || b.1.call(2).await.is_err(),
        "B was served after 60 ms in a queue that had stood for 50 ms"
    );
}
