//! The controlled-delay queue ("Fail at Scale", Maurer 2015): while the queue has been empty
//! within the interval, a caller may wait the interval; once it has not (it stands), a caller that
//! has waited past the target is turned away, at once if it already has, and never served.
//! Adaptive LIFO: FIFO while the queue has emptied within the interval, LIFO once it has not.

use seawall::bulkhead::{error::Full, BulkheadLayer, Codel, ConfigError, Order};
use std::task::Poll;
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, BoxError, Layer, Service};

const MS: Duration = Duration::from_millis(1);

type Svc = tower::util::BoxService<u32, u32, BoxError>;

/// A service over `layer` and the task it is polled in.
struct Caller {
    t: task::Spawn<()>,
    s: Svc,
}

impl Caller {
    fn new(layer: &BulkheadLayer) -> Self {
        let inner = service_fn(|id: u32| async move { Ok::<_, BoxError>(id) });
        Caller {
            t: task::spawn(()),
            s: Svc::new(layer.layer(inner)),
        }
    }

    fn poll(&mut self) -> Poll<Result<(), BoxError>> {
        let s = &mut self.s;
        self.t.enter(|cx, _| s.poll_ready(cx))
    }

    fn woken(&self) -> bool {
        self.t.is_woken()
    }

    /// The call after a ready `poll_ready`: how long it waited if the bulkhead turned it away
    /// for waiting too long, `None` if it went through.
    async fn outcome(&mut self) -> Option<Duration> {
        match self.s.call(7).await {
            Ok(_) => None,
            Err(err) => {
                let full = err.downcast_ref::<Full>().expect("a Full rejection");
                assert!(full.waited_too_long(), "{full}");
                Some(full.waited())
            }
        }
    }
}

/// With the bulkhead's only slot held throughout, callers join at `joins` (milliseconds from
/// now); returns how long each waited before it was turned away (`None`: still waiting at `until`).
async fn waits(layer: &BulkheadLayer, joins: &[u64], until: u64) -> Vec<Option<Duration>> {
    let mut holder = Caller::new(layer);
    assert_ready!(holder.poll()).unwrap();
    let mut callers: Vec<Option<Caller>> = Vec::new();
    let mut waited = vec![None; joins.len()];
    for now in 0..=until {
        // Those waiting first (a wait that ends now ends before anyone joins now)...
        for (i, slot) in callers.iter_mut().enumerate() {
            if let Some(caller) = slot {
                if let Poll::Ready(ready) = caller.poll() {
                    ready.unwrap();
                    waited[i] = caller.outcome().await;
                    assert!(waited[i].is_some(), "the only slot is held");
                    *slot = None;
                }
            }
        }
        // ...then those who join now.
        while callers.len() < joins.len() && joins[callers.len()] == now {
            let mut caller = Caller::new(layer);
            assert_pending!(caller.poll());
            callers.push(Some(caller));
        }
        tokio::time::advance(MS).await;
    }
    drop(holder);
    waited
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

#[tokio::test(start_paused = true)]
async fn a_caller_joining_a_queue_that_has_not_emptied_within_the_interval_waits_only_the_target() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel::default())
        .build()
        .unwrap();
    // 0: the queue was empty: the interval. 60: it has been busy 60 ms, but stands from just
    // after 100, when this caller has waited past the target: turned away at 101, having waited
    // 41 ms. 98: turned away once past the target, at 103. 101: busy for 101 ms (the first two
    // callers left at 100 and 101, the third is still there): the target. 161: the queue
    // emptied at 106: the interval again. 200: it stands from just after 261: 62 ms.
    let waited = waits(&layer, &[0, 60, 98, 101, 161, 200], 400).await;
    assert_eq!(waited, [ms(100), ms(41), ms(5), ms(5), ms(100), ms(62)]);
    let handle = layer.handle();
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_waits_are_the_ones_configured() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel {
            target: 2 * MS,
            interval: 20 * MS,
        })
        .build()
        .unwrap();
    // 0: empty, 20 ms. 10: until the queue stands, just after 20: 11 ms. 20: not standing yet,
    // but past the target once it does: 2 ms. 21: busy 21 ms: 2 ms.
    let waited = waits(&layer, &[0, 10, 20, 21], 100).await;
    assert_eq!(waited, [ms(20), ms(11), ms(2), ms(2)]);
}

#[tokio::test(start_paused = true)]
async fn max_wait_caps_both_waits() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel::default())
        .max_wait(30 * MS)
        .build()
        .unwrap();
    // One caller every 20 ms, each allowed 30 ms: the queue does not empty until 109. Until it has
    // been busy for more than the interval, each waits min(interval, max_wait) = 30 ms; the one
    // that joined at 80 is turned away as the queue stands, just after 100 (21 ms); those that
    // join the standing queue wait min(target, max_wait) = 5 ms.
    let waited = waits(&layer, &[0, 20, 40, 60, 80, 100, 104], 300).await;
    assert_eq!(
        waited,
        [ms(30), ms(30), ms(30), ms(30), ms(21), ms(5), ms(5)]
    );

    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel::default())
        .max_wait(2 * MS)
        .build()
        .unwrap();
    let waited = waits(&layer, &[0], 50).await;
    assert_eq!(waited, [ms(2)]);
}

#[tokio::test(start_paused = true)]
async fn without_codel_a_caller_waits_as_long_as_it_takes() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .build()
        .unwrap();
    assert_eq!(waits(&layer, &[0, 150], 400).await, [None, None]);
}

/// Which of `callers` were woken.
fn woken(callers: &[Caller]) -> Vec<bool> {
    callers.iter().map(Caller::woken).collect()
}

#[tokio::test(start_paused = true)]
async fn adaptive_order_is_fifo_until_the_queue_has_not_emptied_within_the_interval_then_lifo() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .order(Order::Adaptive)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut holder = Caller::new(&layer);
    assert_ready!(holder.poll()).unwrap();
    let mut queued: Vec<_> = (0..5).map(|_| Caller::new(&layer)).collect();
    for caller in &mut queued {
        assert_pending!(caller.poll());
    }
    // Busy for 50 ms: first come, first served.
    tokio::time::advance(50 * MS).await;
    drop(holder);
    assert_eq!(woken(&queued), [true, false, false, false, false]);
    assert_ready!(queued[0].poll()).unwrap();
    // Busy for 150 ms, more than the interval (100 ms by default): the newest first.
    tokio::time::advance(100 * MS).await;
    let first = queued.remove(0);
    drop(first);
    assert_eq!(woken(&queued), [false, false, false, true]);
    assert_ready!(queued[3].poll()).unwrap();
    let newest = queued.pop().unwrap();
    drop(newest);
    assert_eq!(woken(&queued), [false, false, true]);
    // Drain the queue: the last one to leave it empties it.
    while let Some(mut caller) = queued.pop() {
        assert_ready!(caller.poll()).unwrap();
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    // It emptied just now: first come, first served again.
    let mut holder = Caller::new(&layer);
    assert_ready!(holder.poll()).unwrap();
    let mut queued: Vec<_> = (0..3).map(|_| Caller::new(&layer)).collect();
    for caller in &mut queued {
        assert_pending!(caller.poll());
    }
    tokio::time::advance(10 * MS).await;
    drop(holder);
    assert_eq!(woken(&queued), [true, false, false]);
}

#[tokio::test(start_paused = true)]
async fn adaptive_order_switches_after_codels_interval() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .order(Order::Adaptive)
        .codel(Codel {
            target: 5 * MS,
            interval: 1000 * MS,
        })
        .build()
        .unwrap();
    let mut holder = Caller::new(&layer);
    assert_ready!(holder.poll()).unwrap();
    let mut queued: Vec<_> = (0..3).map(|_| Caller::new(&layer)).collect();
    for caller in &mut queued {
        assert_pending!(caller.poll());
    }
    // Busy for 150 ms, within this interval: still FIFO.
    tokio::time::advance(150 * MS).await;
    drop(holder);
    assert_eq!(woken(&queued), [true, false, false]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_frees_its_place_at_once_and_wakes_nobody() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(2)
        .order(Order::Adaptive)
        .codel(Codel::default())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut holder = Caller::new(&layer);
    assert_ready!(holder.poll()).unwrap();
    let mut a = Caller::new(&layer);
    let mut b = Caller::new(&layer);
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    // The queue is full.
    let mut c = Caller::new(&layer);
    assert_ready!(c.poll()).unwrap();
    let err = c.s.call(0).await.unwrap_err();
    assert!(err.downcast_ref::<Full>().unwrap().queue_full());
    drop(a);
    assert_eq!(handle.queued(), 1, "the place is freed at once");
    assert!(!b.woken(), "nobody is woken");
    let mut d = Caller::new(&layer);
    assert_pending!(d.poll());
    assert_eq!(handle.queued(), 2, "and taken by the next caller");
    // The dropped waiter's wait ends: nothing happens to the others.
    tokio::time::advance(50 * MS).await;
    assert!(!b.woken() && !d.woken());
    drop(holder);
    assert_eq!((b.woken(), d.woken()), (true, false));
    assert_ready!(b.poll()).unwrap();
    assert_eq!(b.outcome().await, None, "b is served");
    assert!(d.woken(), "b's slot came back to d");
    assert_ready!(d.poll()).unwrap();
    drop(d);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slot_freed_as_the_wait_ends_goes_to_the_waiter() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .order(Order::Adaptive)
        .codel(Codel::default())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut holder = Caller::new(&layer);
    assert_ready!(holder.poll()).unwrap();
    let mut a = Caller::new(&layer);
    assert_pending!(a.poll());
    tokio::time::advance(100 * MS).await;
    // The wait has ended and the slot frees before the waiter looks.
    drop(holder);
    assert!(a.woken());
    assert_ready!(a.poll()).unwrap();
    assert_eq!(a.outcome().await, None, "served, not turned away");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_woken_by_a_freed_slot_in_either_order() {
    for busy in [10, 150] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(2)
            .queue(10)
            .order(Order::Adaptive)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut holders: Vec<_> = (0..2).map(|_| Caller::new(&layer)).collect();
        for h in &mut holders {
            assert_ready!(h.poll()).unwrap();
        }
        let mut queued: Vec<_> = (0..3).map(|_| Caller::new(&layer)).collect();
        for caller in &mut queued {
            assert_pending!(caller.poll());
        }
        tokio::time::advance(busy * MS).await;
        holders.pop();
        assert_eq!(
            woken(&queued).iter().filter(|w| **w).count(),
            1,
            "one slot, one waiter woken (busy {busy} ms)"
        );
        drop(holders);
        assert_eq!(woken(&queued).iter().filter(|w| **w).count(), 2);
        for caller in queued.iter_mut().filter(|c| c.woken()) {
            assert_ready!(caller.poll()).unwrap();
        }
        assert_eq!((handle.in_flight(), handle.queued()), (2, 1));
    }
}

/// "If the queue has not been empty in the last interval, a request may wait only a short
/// time" (issue 20, after "Fail at Scale"). A caller that joined while the queue was young does
/// not keep the interval's wait once the queue has become a standing one: it is turned away as
/// soon as the queue stands and it has waited past the target.
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
        let mut holder = Caller::new(&layer);
        assert_ready!(holder.poll()).unwrap();
        let mut a = Caller::new(&layer);
        assert_pending!(a.poll()); // t = 0: the queue was empty
        tokio::time::advance(90 * MS).await;
        let mut b = Caller::new(&layer);
        assert_pending!(b.poll()); // t = 90: the queue is 90 ms old
        tokio::time::advance(11 * MS).await; // t = 101
        assert_ready!(a.poll()).unwrap();
        let err = a.s.call(1).await.unwrap_err();
        assert!(err.downcast_ref::<Full>().unwrap().waited_too_long());
        // Since t = 100 the queue has not been empty for a whole interval: it stands, and
        // B has waited 11 ms, over the 5 ms target. By t = 106 at the latest (or when a slot
        // comes, at dequeue) B must be turned away.
        tokio::time::advance(9 * MS).await; // t = 110
        assert!(
            b.poll().is_ready(),
            "{order:?}: at t = 110 ms B still waits (20 ms in a queue standing since t = 100)"
        );
        assert_eq!(b.outcome().await, Some(20 * MS), "{order:?}");
    }
}

/// The dequeue side of the same rule: in a queue that has stood for 50 ms, a freed slot is not
/// handed to a caller that has waited 60 ms (12x the target): that caller is turned away.
#[tokio::test(start_paused = true)]
async fn a_slot_is_not_given_to_a_caller_past_the_target_in_a_standing_queue() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel::default())
        .order(Order::Fifo)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut holder = Caller::new(&layer);
    assert_ready!(holder.poll()).unwrap();
    let mut a = Caller::new(&layer);
    assert_pending!(a.poll());
    tokio::time::advance(90 * MS).await;
    let mut b = Caller::new(&layer);
    assert_pending!(b.poll());
    tokio::time::advance(60 * MS).await; // t = 150; A left at 100; standing since 100
    assert_ready!(a.poll()).unwrap();
    drop(a.s.call(1));
    drop(holder); // the slot frees at t = 150
                  // B is answered now (not left waiting): turned away for its 60 ms, not served.
    assert_ready!(b.poll()).unwrap();
    assert_eq!(
        b.outcome().await,
        Some(60 * MS),
        "B was served after 60 ms in a queue that had stood for 50 ms"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

/// The same rule when the slot frees before the late caller's own timer is polled: with every
/// order, the hand-out skips (and turns away) callers of a standing queue past the target, and
/// serves the next one still within it.
#[tokio::test(start_paused = true)]
async fn a_hand_out_in_a_standing_queue_turns_away_the_late_and_serves_the_next() {
    for order in [Order::Fifo, Order::Adaptive, Order::Lifo] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(1)
            .queue(10)
            .codel(Codel::default())
            .order(order)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut holder = Caller::new(&layer);
        assert_ready!(holder.poll()).unwrap();
        // A holds the queue up from 0 to 100; B joins at 99 (past the target from 104 on); C
        // joins the standing queue at 102 (past the target from 107 on).
        let mut a = Caller::new(&layer);
        assert_pending!(a.poll());
        tokio::time::advance(99 * MS).await;
        let mut b = Caller::new(&layer);
        assert_pending!(b.poll());
        tokio::time::advance(3 * MS).await; // t = 102
        let mut c = Caller::new(&layer);
        assert_pending!(c.poll());
        drop(a);
        tokio::time::advance(4 * MS).await; // t = 106: B is 7 ms in, C 4 ms
        assert_eq!(handle.queued(), 2);
        drop(holder);
        assert!(b.woken() && c.woken(), "{order:?}");
        assert_eq!(handle.queued(), 0, "{order:?}");
        assert_ready!(b.poll()).unwrap();
        assert_eq!(b.outcome().await, Some(7 * MS), "{order:?}: B turned away");
        assert_ready!(c.poll()).unwrap();
        assert_eq!(c.outcome().await, None, "{order:?}: C served");
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    }
}

#[test]
fn codel_settings_that_cannot_work_are_typed_errors() {
    let err = BulkheadLayer::builder()
        .codel(Codel::default())
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::CodelWithoutQueue);
    let zero = Codel {
        target: Duration::ZERO,
        interval: 100 * MS,
    };
    let err = BulkheadLayer::builder()
        .queue(1)
        .codel(zero)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::Codel {
            target: Duration::ZERO,
            interval: 100 * MS
        }
    );
    let backwards = Codel {
        target: 200 * MS,
        interval: 100 * MS,
    };
    let err = BulkheadLayer::builder()
        .queue(1)
        .codel(backwards)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "codel target must be above zero and at most the interval, got target 200ms, interval 100ms"
    );
    // The defaults are the paper's, and equal waits are accepted.
    assert_eq!(Codel::default(), Codel::new(5 * MS, 100 * MS));
    assert!(BulkheadLayer::builder()
        .queue(1)
        .codel(Codel::new(MS, MS))
        .build()
        .is_ok());
}

/// The queue's wait is decided in `poll_ready`, before the request, and so its deadline, exists:
/// the deadline cannot cap the wait there. A request whose deadline passed while it waited is
/// turned away without being served by a propagating timeout beneath the bulkhead, and its slot
/// comes back at once.
#[cfg(all(feature = "timeout", feature = "http"))]
#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_passed_in_the_queue_is_not_served_by_a_timeout_beneath() {
    use seawall::core::{Deadline, DeadlineCarrier};
    use seawall::timeout::{error::Elapsed, TimeoutLayer};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10)
        .codel(Codel::default())
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(TimeoutLayer::from_extension(None).propagate())
        .service(service_fn(move |_: http::Request<()>| {
            count.fetch_add(1, SeqCst);
            async { Ok::<_, BoxError>(()) }
        }));
    let mut t = task::spawn(());
    let mut holder = service.clone();
    assert_ready!(t.enter(|cx, _| holder.poll_ready(cx))).unwrap();
    let mut waiting = service.clone();
    let mut wt = task::spawn(());
    assert_pending!(wt.enter(|cx, _| waiting.poll_ready(cx)));
    let deadline = Deadline::after(20 * MS);
    tokio::time::advance(30 * MS).await;
    drop(holder);
    assert_ready!(wt.enter(|cx, _| waiting.poll_ready(cx))).unwrap();
    let mut request = http::Request::new(());
    request.set_deadline(deadline);
    let err = waiting.call(request).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(served.load(SeqCst), 0, "not served");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}
