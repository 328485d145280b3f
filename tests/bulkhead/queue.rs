//! The queue: order, length bound, maximum wait, exactly-once wake-ups, limit changes, and no slot
//! lost to cancellations.

use seawall::bulkhead::{error::Full, BulkheadLayer, Order};
use seawall::core::{Event, EventKind, RejectReason};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_test::{assert_ready, task};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A backend whose calls each take `duration`, logging the order in which calls start.
fn slow(
    log: Arc<Mutex<Vec<u32>>>,
    duration: Duration,
) -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<u32, BoxError>> + Send,
> + Clone
       + Send {
    service_fn(move |id: u32| {
        log.lock().unwrap().push(id);
        async move {
            tokio::time::sleep(duration).await;
            Ok::<_, BoxError>(id)
        }
    })
}

async fn served_in(order: Order) -> Vec<u32> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .order(order)
        .build()
        .unwrap();
    let service = layer.layer(slow(log.clone(), 10 * MS));
    let mut calls = Vec::new();
    for id in 0..5u32 {
        calls.push(tokio::spawn(service.clone().oneshot(id)));
        // Each caller joins the queue before the next arrives.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let order = log.lock().unwrap().clone();
    order
}

#[tokio::test(start_paused = true)]
async fn fifo_serves_the_oldest_caller_first_and_lifo_the_newest() {
    assert_eq!(served_in(Order::Fifo).await, [0, 1, 2, 3, 4]);
    // 0 runs; 1 to 4 queue; then the newest first.
    assert_eq!(served_in(Order::Lifo).await, [0, 4, 3, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_at_once() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(slow(Arc::default(), 100 * MS));
    let calls: Vec<_> = (0..3)
        .map(|id| tokio::spawn(service.clone().oneshot(id)))
        .collect();
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));
    let err = service.clone().oneshot(9).await.unwrap_err();
    let full = err.downcast_ref::<Full>().expect("Full");
    assert!(full.queue_full() && !full.at_capacity() && !full.waited_too_long());
    assert_eq!(full.to_string(), "bulkhead is full and so is its queue");
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_waits_too_long_gives_up_at_its_instant() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .max_wait(50 * MS)
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(slow(Arc::default(), 1000 * MS));
    let holder = tokio::spawn(service.clone().oneshot(0));
    tokio::task::yield_now().await;
    let mut waiting = task::spawn(());
    assert!(waiting.enter(|cx, _| service.poll_ready(cx)).is_pending());
    assert_eq!(handle.queued(), 1);
    tokio::time::advance(49 * MS).await;
    assert!(waiting.enter(|cx, _| service.poll_ready(cx)).is_pending());
    tokio::time::advance(MS).await;
    assert!(waiting.is_woken());
    // Ready at once: the rejection comes out of the call.
    assert_ready!(waiting.enter(|cx, _| service.poll_ready(cx))).unwrap();
    let err = service.call(1).await.unwrap_err();
    let full = err.downcast_ref::<Full>().unwrap();
    assert!(full.waited_too_long());
    assert_eq!(full.waited(), 50 * MS);
    assert_eq!(handle.queued(), 0, "it left the queue");
    assert!(events.lock().unwrap().contains(&EventKind::Rejected {
        reason: RejectReason::QueueTimeout
    }));
    holder.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_freed_slot_wakes_exactly_one_waiter() {
    let (mock, mut backend) = tower_test::mock::pair::<u32, u32>();
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .queue(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut holders: Vec<_> = (0..2).map(|_| layer.layer(mock.clone())).collect();
    let mut t = task::spawn(());
    for h in &mut holders {
        assert_ready!(t.enter(|cx, _| h.poll_ready(cx))).unwrap();
    }
    let mut waiters: Vec<_> = (0..5)
        .map(|_| (task::spawn(()), layer.layer(mock.clone())))
        .collect();
    for (wt, w) in &mut waiters {
        assert!(wt.enter(|cx, _| w.poll_ready(cx)).is_pending());
    }
    assert_eq!(handle.queued(), 5);
    backend.allow(10);
    holders.pop();
    let woken: Vec<_> = waiters.iter().map(|(wt, _)| wt.is_woken()).collect();
    assert_eq!(woken, [true, false, false, false, false]);
    holders.pop();
    let woken: Vec<_> = waiters.iter().map(|(wt, _)| wt.is_woken()).collect();
    assert_eq!(woken, [true, true, false, false, false]);
    assert_eq!((handle.in_flight(), handle.queued()), (2, 3));
    drop(waiters);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_serves_queued_callers_and_lowering_it_waits_for_calls_to_end() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(slow(log.clone(), 100 * MS));
    let calls: Vec<_> = (0..4)
        .map(|id| tokio::spawn(service.clone().oneshot(id)))
        .collect();
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 3));
    handle.set_limit(3);
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (3, 1));
    handle.set_limit(1);
    assert_eq!(handle.limit(), 1);
    assert_eq!(handle.in_flight(), 3, "running calls are not interrupted");
    // The three running calls end; one slot is left for the last caller.
    tokio::time::advance(100 * MS).await;
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_slot_leaks_through_ten_thousand_randomly_cancelled_calls() {
    use rand::{Rng, SeedableRng};
    let layer = BulkheadLayer::builder()
        .max_concurrent(8)
        .queue(1_000)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|spin: u32| async move {
        for _ in 0..spin {
            tokio::task::yield_now().await;
        }
        Ok::<_, std::io::Error>(spin)
    }));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let mut tasks = Vec::new();
    for _ in 0..10_000 {
        let spin = rng.random_range(0..20u32);
        let cancel_after = rng.random_range(0..20u32);
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let call = service.oneshot(spin);
            // Drop the call (waiting, queued, or running) after a random number of yields.
            tokio::select! {
                result = call => Some(result),
                _ = async {
                    for _ in 0..cancel_after {
                        tokio::task::yield_now().await;
                    }
                } => None,
            }
        }));
    }
    let mut finished = 0;
    for task in tasks {
        if let Some(result) = task.await.unwrap() {
            match result {
                Ok(_) => finished += 1,
                Err(e) => assert!(e.is::<Full>(), "{e}"),
            }
        }
    }
    assert!(finished > 0);
    assert_eq!(handle.in_flight(), 0, "every slot came back");
    assert_eq!(handle.queued(), 0, "nobody is left in the queue");
    assert_eq!(handle.limit(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lowered_limit_holds_across_threads() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let layer = BulkheadLayer::builder()
        .max_concurrent(8)
        .queue(1_000)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(move |hold: u64| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, SeqCst) + 1;
            p.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(hold)).await;
            r.fetch_sub(1, SeqCst);
            Ok::<_, std::io::Error>(())
        }
    }));
    // Eight calls hold every slot, on whichever threads run them; the limit drops to 2 meanwhile.
    let first: Vec<_> = (0..8)
        .map(|_| tokio::spawn(service.clone().oneshot(50)))
        .collect();
    while handle.in_flight() < 8 {
        tokio::task::yield_now().await;
    }
    handle.set_limit(2);
    for call in first {
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
    peak.store(0, SeqCst);
    // Slots given back on every thread must not outnumber the new limit.
    let second: Vec<_> = (0..64)
        .map(|_| tokio::spawn(service.clone().oneshot(2)))
        .collect();
    for call in second {
        call.await.unwrap().unwrap();
    }
    assert!(
        peak.load(SeqCst) <= 2,
        "{} calls ran at once",
        peak.load(SeqCst)
    );
    assert_eq!(
        (handle.in_flight(), handle.queued(), handle.limit()),
        (0, 0, 2)
    );
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::task::{Context, Poll, Waker};

    #[derive(Clone, Debug)]
    enum Op {
        Acquire,
        Release(usize),
        SetLimit(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            3 => (0usize..64).prop_map(Op::Release),
            1 => (0u64..12).prop_map(Op::SetLimit),
        ]
    }

    proptest! {
        /// Without a queue, a call is admitted exactly when fewer calls hold a slot than the limit,
        /// whatever the limit did meanwhile, and the handle counts exactly the calls holding one.
        #[test]
        fn admission_follows_the_limit(start in 1u64..12, ops in proptest::collection::vec(op(), 1..200)) {
            let layer = BulkheadLayer::builder().max_concurrent(start).build().unwrap();
            let handle = layer.handle();
            let mut limit = start;
            let mut held = Vec::new();
            let mut cx = Context::from_waker(Waker::noop());
            for op in ops {
                match op {
                    Op::Acquire => {
                        let mut service = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
                        prop_assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
                        if (held.len() as u64) < limit {
                            prop_assert_eq!(handle.in_flight(), held.len() as u64 + 1, "admitted");
                            held.push(service);
                        } else {
                            prop_assert_eq!(handle.in_flight(), held.len() as u64, "rejected");
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() {
                            held.swap_remove(i % held.len());
                        }
                    }
                    Op::SetLimit(n) => {
                        handle.set_limit(n);
                        limit = n;
                    }
                }
                prop_assert_eq!(handle.in_flight(), held.len() as u64);
            }
        }
    }
}

/// A waker that runs `f` when woken.
struct OnWake<F>(F);

impl<F: Fn() + Send + Sync + 'static> std::task::Wake for OnWake<F> {
    fn wake(self: Arc<Self>) {
        (self.0)()
    }
}

fn on_wake(f: impl Fn() + Send + Sync + 'static) -> std::task::Waker {
    Arc::new(OnWake(f)).into()
}

fn noop() -> std::task::Context<'static> {
    std::task::Context::from_waker(std::task::Waker::noop())
}

type Plain = seawall::bulkhead::BulkheadService<
    tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<(), BoxError>>>,
>;

fn plain(layer: &BulkheadLayer) -> Plain {
    fn answer(_: ()) -> std::future::Ready<Result<(), BoxError>> {
        std::future::ready(Ok(()))
    }
    layer.layer(service_fn(answer as fn(()) -> _))
}

/// A waiter is woken once the queue's lock is let go: its waker may run anything, such as a
/// caller queueing from another thread, which must not wait for the lock the wake is under.
#[test]
fn waiters_are_woken_outside_the_queue_lock() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4)
        .build()
        .unwrap();
    let mut holder = plain(&layer);
    assert!(holder.poll_ready(&mut noop()).is_ready());
    let arrival = Arc::new(Mutex::new(plain(&layer)));
    let (tx, rx) = std::sync::mpsc::channel();
    let waker = on_wake({
        let arrival = arrival.clone();
        move || {
            let arrival = arrival.clone();
            let (done, joined) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let ready = arrival.lock().unwrap().poll_ready(&mut noop()).is_ready();
                let _ = done.send(ready);
            });
            // A guard against a deadlock, not a wait: the other caller answers at once.
            let _ = tx.send(joined.recv_timeout(Duration::from_secs(10)).ok());
        }
    });
    let mut waiter = plain(&layer);
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(waiter.poll_ready(&mut cx).is_pending());
    drop(holder);
    assert_eq!(
        rx.recv().unwrap(),
        Some(false),
        "the other caller queued while the waiter was woken (None: it waited for the lock)"
    );
    assert!(waiter.poll_ready(&mut noop()).is_ready());
}

/// A new caller takes a free slot only if nobody is queued: while a raised limit's slots are being
/// handed out (the queue's lock let go to wake the first waiters), one that arrives queues behind
/// the waiters, first come, first served.
#[test]
fn a_new_caller_does_not_overtake_queued_ones() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(32)
        .order(Order::Fifo)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut holder = plain(&layer);
    assert!(holder.poll_ready(&mut noop()).is_ready());
    let arrival = Arc::new(Mutex::new(plain(&layer)));
    let arrived = Arc::new(Mutex::new(None));
    let first_woken = on_wake({
        let (arrival, arrived) = (arrival.clone(), arrived.clone());
        move || {
            let ready = arrival.lock().unwrap().poll_ready(&mut noop()).is_ready();
            arrived.lock().unwrap().get_or_insert(ready);
        }
    });
    let mut waiters: Vec<Plain> = (0..12).map(|_| plain(&layer)).collect();
    let mut cx = std::task::Context::from_waker(&first_woken);
    assert!(waiters[0].poll_ready(&mut cx).is_pending());
    for waiter in &mut waiters[1..] {
        assert!(waiter.poll_ready(&mut noop()).is_pending());
    }
    // Nine more slots, for the nine oldest waiters: more than are handed out under one hold of
    // the lock, so the first is woken (and the new caller arrives) while slots remain to give.
    handle.set_limit(10);
    assert_eq!(
        *arrived.lock().unwrap(),
        Some(false),
        "the new caller queued"
    );
    let ready: Vec<bool> = waiters
        .iter_mut()
        .map(|waiter| waiter.poll_ready(&mut noop()).is_ready())
        .collect();
    assert_eq!(ready, [[true; 9].as_slice(), &[false; 3]].concat());
    assert_eq!((handle.in_flight(), handle.queued()), (10, 4));
    // The next freed slot goes to the oldest waiter, not to the new caller.
    drop(holder);
    assert!(waiters[9].poll_ready(&mut noop()).is_ready());
    assert!(arrival.lock().unwrap().poll_ready(&mut noop()).is_pending());
}

/// Leaving the queue is O(1): a caller that goes away leaves a tombstone that hand-outs skip.
/// Its place is free at once (the queue's bound counts waiting callers only), and the others
/// are served in the queue's order, whatever the tombstones among them.
#[test]
fn callers_who_leave_free_their_places_at_once_and_the_rest_keep_their_order() {
    for order in [Order::Fifo, Order::Lifo] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(1)
            .queue(100)
            .order(order)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut holder = plain(&layer);
        assert!(holder.poll_ready(&mut noop()).is_ready());
        let mut waiters: Vec<(u32, Plain)> = (0..100).map(|id| (id, plain(&layer))).collect();
        for (_, waiter) in &mut waiters {
            assert!(waiter.poll_ready(&mut noop()).is_pending());
        }
        // Nine in ten leave, from the middle of the queue as well as its ends.
        waiters.retain(|(id, _)| id % 10 == 0);
        assert_eq!(handle.queued(), 10, "{order:?}");
        // Their places are taken by as many newcomers, and the queue is full again.
        for id in 100..190 {
            let mut waiter = plain(&layer);
            assert!(
                waiter.poll_ready(&mut noop()).is_pending(),
                "{order:?}: {id}"
            );
            waiters.push((id, waiter));
        }
        assert_eq!(handle.queued(), 100, "{order:?}");
        let mut full = plain(&layer);
        assert!(full.poll_ready(&mut noop()).is_ready(), "{order:?}");
        let rejected = futures::executor::block_on(full.call(())).unwrap_err();
        assert!(rejected.downcast_ref::<Full>().unwrap().queue_full());
        // Each freed slot goes to the next waiting caller in the queue's order.
        let mut expected: Vec<u32> = waiters.iter().map(|(id, _)| *id).collect();
        if order == Order::Lifo {
            expected.reverse();
        }
        drop(holder);
        let mut served = Vec::new();
        while !waiters.is_empty() {
            let ready: Vec<usize> = (0..waiters.len())
                .filter(|&i| waiters[i].1.poll_ready(&mut noop()).is_ready())
                .collect();
            assert_eq!(ready.len(), 1, "{order:?}: one slot, one caller served");
            served.push(waiters.remove(ready[0]).0);
        }
        assert_eq!(served, expected, "{order:?}");
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0), "{order:?}");
    }
}
