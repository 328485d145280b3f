//! Deciding in `call` (`honour_deadlines()`): the service is as ready as the one beneath and
//! reserves nothing; a call that finds every slot taken waits in its response future, never past
//! the `Deadline` its request carries, and one whose deadline comes first fails with the gate's
//! usual rejection (`Full`), never a timeout.

use seawall::bulkhead::{error::Full, BulkheadLayer, Codel};
use seawall::core::{Deadline, DeadlineCarrier};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, BoxError, Layer, Service};

const MS: Duration = Duration::from_millis(1);

/// A request with the deadline its caller gave it.
#[derive(Debug)]
struct Req(Option<Deadline>);

impl DeadlineCarrier for Req {
    fn deadline(&self) -> Option<Deadline> {
        self.0
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.0 = Some(deadline);
    }
}

/// A request that must be answered within `ms` milliseconds.
fn within(ms: u32) -> Req {
    Req(Some(Deadline::after(ms * MS)))
}

/// A request with no deadline.
fn whenever() -> Req {
    Req(None)
}

/// A service that answers at once, counting the calls made on it.
#[derive(Clone, Default)]
struct Counted(Arc<AtomicU32>);

impl Counted {
    fn service(&self) -> impl Service<Req, Response = u32, Error = BoxError> + Clone {
        let made = self.0.clone();
        service_fn(move |_: Req| {
            let n = made.fetch_add(1, SeqCst) + 1;
            async move { Ok::<_, BoxError>(n) }
        })
    }

    fn made(&self) -> u32 {
        self.0.load(SeqCst)
    }
}

/// Calls `s` with `req` after a `poll_ready` that must be ready at once (it reserves nothing).
fn ready_call<S: Service<Req>>(s: &mut S, req: Req) -> S::Future
where
    S::Error: std::fmt::Debug,
{
    let mut cx = task::spawn(());
    assert_ready!(cx.enter(|cx, _| s.poll_ready(cx)), "ready at once").unwrap();
    s.call(req)
}

/// [`ready_call`], in a task of its own.
fn call<S: Service<Req>>(s: &mut S, req: Req) -> task::Spawn<S::Future>
where
    S::Error: std::fmt::Debug,
{
    task::spawn(ready_call(s, req))
}

/// The `Full` a call failed with.
fn full(result: Result<u32, BoxError>) -> Full {
    let err = result.expect_err("refused");
    err.downcast_ref::<Full>()
        .unwrap_or_else(|| panic!("a Full rejection, got {err}"))
        .clone()
}

fn one_slot(queue: usize) -> seawall::bulkhead::Builder {
    BulkheadLayer::builder().max_concurrent(1).queue(queue)
}

/// Advances the paused clock by `ms` milliseconds, a millisecond at a time, polling `call` at
/// each step; returns when it finished, and how.
async fn run<F: std::future::Future>(call: &mut task::Spawn<F>, ms: u64) -> Option<F::Output> {
    for _ in 0..ms {
        if let Poll::Ready(out) = call.poll() {
            return Some(out);
        }
        tokio::time::advance(MS).await;
    }
    match call.poll() {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_caps_the_wait_in_the_queue() {
    let made = Counted::default();
    let layer = one_slot(10)
        .codel(Codel::default())
        .honour_deadlines()
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(made.service());
    let holder = call(&mut s, whenever());
    assert_eq!(handle.in_flight(), 1, "admitted in call");
    // Controlled delay would let it wait 100 ms; its deadline is 30 ms away.
    let start = Instant::now();
    let mut waiting = call(&mut s, within(30));
    assert_pending!(waiting.poll());
    assert_eq!(handle.queued(), 1);
    tokio::time::advance(29 * MS).await;
    assert_pending!(waiting.poll(), "still within its deadline");
    tokio::time::advance(MS).await;
    let refused = full(assert_ready!(waiting.poll()));
    assert!(refused.waited_too_long(), "{refused}");
    assert_eq!(refused.waited(), 30 * MS);
    assert_eq!(Instant::now() - start, 30 * MS);
    assert_eq!(handle.queued(), 0, "it left the queue");
    assert_eq!(
        made.made(),
        1,
        "the holder's only: the refused call never reached the service"
    );
    drop(holder);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_the_shortest_of_codel_max_wait_and_the_deadline() {
    // (max_wait, deadline, expected wait), with controlled delay's 100 ms after an empty queue.
    let cases = [
        (None, Some(30), 30),
        (None, Some(250), 100),
        (None, None, 100),
        (Some(20), Some(30), 20),
        (Some(50), Some(40), 40),
        (Some(50), None, 50),
    ];
    for (max_wait, deadline, expected) in cases {
        let mut builder = one_slot(10).codel(Codel::default());
        if let Some(max) = max_wait {
            builder = builder.max_wait(max * MS);
        }
        let layer = builder.honour_deadlines().build().unwrap();
        let mut s = layer.layer(Counted::default().service());
        let _holder = call(&mut s, whenever());
        let req = deadline.map_or_else(whenever, within);
        let mut waiting = call(&mut s, req);
        let out = run(&mut waiting, 300).await.expect("turned away in time");
        let refused = full(out);
        assert_eq!(
            refused.waited(),
            expected * MS,
            "max_wait {max_wait:?}, deadline {deadline:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_controlled_delay_or_max_wait_the_deadline_alone_bounds_the_wait() {
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let mut s = layer.layer(Counted::default().service());
    let _holder = call(&mut s, whenever());
    let mut bounded = call(&mut s, within(70));
    let mut unbounded = call(&mut s, whenever());
    let refused = full(run(&mut bounded, 100).await.expect("turned away at 70 ms"));
    assert_eq!(refused.waited(), 70 * MS);
    assert!(
        run(&mut unbounded, 1_000).await.is_none(),
        "no deadline: waits as long as it takes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_has_passed_is_refused_at_once_if_it_must_queue() {
    let made = Counted::default();
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(made.service());
    let passed = || Req(Some(Deadline::at(Instant::now())));
    // A free slot: it waits for nothing, so its deadline is not read, and it is made.
    let mut free = call(&mut s, passed());
    assert_eq!(made.made(), 1);
    assert_eq!(handle.in_flight(), 1);
    assert_eq!(assert_ready!(free.poll()).unwrap(), 1);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    // Every slot taken: refused at once, without a place in the queue.
    let _holder = call(&mut s, whenever());
    let mut late = call(&mut s, passed());
    assert_eq!(handle.queued(), 0);
    let refused = full(assert_ready!(late.poll()));
    assert!(refused.waited_too_long(), "{refused}");
    assert_eq!(refused.waited(), Duration::ZERO);
    assert_eq!(made.made(), 2, "the free call's and the holder's");
    // A deadline that passed a while ago.
    let old = Req(Some(Deadline::at(Instant::now())));
    tokio::time::advance(10 * MS).await;
    assert!(assert_ready!(call(&mut s, old).poll()).is_err());
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_is_made_when_a_slot_frees_before_its_deadline() {
    let made = Counted::default();
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(made.service());
    let mut holder = call(&mut s, whenever());
    let mut waiting = call(&mut s, within(50));
    assert_pending!(waiting.poll());
    tokio::time::advance(20 * MS).await;
    assert_pending!(waiting.poll());
    assert_eq!(made.made(), 1, "the holder's only: not made while it waits");
    assert_eq!(assert_ready!(holder.poll()).unwrap(), 1);
    assert!(waiting.is_woken(), "the freed slot wakes it");
    assert_eq!(handle.queued(), 0, "it has the slot");
    assert_eq!(assert_ready!(waiting.poll()).unwrap(), 2);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slot_that_comes_at_the_deadline_is_of_no_use_and_goes_to_the_next() {
    let made = Counted::default();
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(made.service());
    let mut holder = call(&mut s, whenever());
    let mut due = call(&mut s, within(30));
    let mut patient = call(&mut s, whenever());
    assert_pending!(due.poll());
    assert_pending!(patient.poll());
    tokio::time::advance(30 * MS).await;
    // The slot frees at the deadline itself: the call could only time out.
    assert!(assert_ready!(holder.poll()).is_ok());
    let refused = full(assert_ready!(due.poll()));
    assert!(refused.waited_too_long(), "{refused}");
    assert_eq!(refused.waited(), 30 * MS);
    assert!(patient.is_woken(), "the slot passed on");
    assert_eq!(assert_ready!(patient.poll()).unwrap(), 2);
    assert_eq!(made.made(), 2, "the holder's and the patient call's");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slot_freed_before_the_first_poll_is_not_lost() {
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(Counted::default().service());
    let mut holder = call(&mut s, whenever());
    // Queued in `call`, with no waker yet.
    let mut waiting = call(&mut s, within(50));
    assert_eq!(handle.queued(), 1);
    assert!(assert_ready!(holder.poll()).is_ok());
    assert_eq!(handle.in_flight(), 1, "the slot went to the queued call");
    assert!(assert_ready!(waiting.poll()).is_ok());
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_call_frees_its_place_at_once() {
    let layer = one_slot(1).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(Counted::default().service());
    let holder = call(&mut s, whenever());
    let mut first = call(&mut s, within(500));
    assert_pending!(first.poll());
    // The queue of one is full.
    let refused = full(assert_ready!(call(&mut s, within(500)).poll()));
    assert!(refused.queue_full(), "{refused}");
    drop(first);
    assert_eq!(handle.queued(), 0, "its place is free at once");
    let mut second = call(&mut s, within(500));
    assert_pending!(second.poll(), "takes the place");
    // Dropped before its first poll, too.
    drop(second);
    assert_eq!(handle.queued(), 0);
    drop(holder);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slot_given_to_a_call_dropped_before_it_was_made_goes_to_the_next() {
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut s = layer.layer(Counted::default().service());
    let mut holder = call(&mut s, whenever());
    let mut first = call(&mut s, within(500));
    let mut second = call(&mut s, within(500));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    assert!(assert_ready!(holder.poll()).is_ok());
    // The slot went to the first, which goes away before it is polled again.
    drop(first);
    assert!(second.is_woken(), "the slot passes on");
    assert!(assert_ready!(second.poll()).is_ok());
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_nothing_and_clones_share_the_bulkhead() {
    let layer = one_slot(0).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let mut a = layer.layer(Counted::default().service());
    let mut cx = task::spawn(());
    for _ in 0..3 {
        assert_ready!(cx.enter(|cx, _| a.poll_ready(cx))).unwrap();
    }
    assert_eq!(handle.in_flight(), 0, "poll_ready reserves nothing");
    let mut b = a.clone();
    let holder = call(&mut a, whenever());
    // No queue: the clone's call is refused at once, as the bulkhead's are.
    let refused = full(assert_ready!(call(&mut b, whenever()).poll()));
    assert!(refused.at_capacity(), "{refused}");
    drop(holder);
    assert!(assert_ready!(call(&mut b, whenever()).poll()).is_ok());
    assert_eq!(handle.in_flight(), 0);
}

/// The rejection is the bulkhead's, and the caller hears it before a timeout above with the same
/// deadline fires.
#[cfg(feature = "timeout")]
#[tokio::test(start_paused = true)]
async fn under_a_propagating_timeout_the_caller_gets_full_not_a_timeout() {
    use seawall::timeout::{error::Elapsed, TimeoutLayer};
    let layer = one_slot(10)
        .codel(Codel::default())
        .honour_deadlines()
        .build()
        .unwrap();
    let timeout = TimeoutLayer::new(40 * MS).propagate();
    let mut s = timeout.layer(layer.layer(Counted::default().service()));
    let _holder = call(&mut s, whenever());
    let mut waiting = call(&mut s, whenever());
    let err = run(&mut waiting, 100)
        .await
        .expect("ended by 40 ms")
        .expect_err("refused");
    assert!(!err.is::<Elapsed>(), "not a timeout: {err}");
    let refused = err.downcast_ref::<Full>().expect("Full");
    assert_eq!(refused.waited(), 40 * MS);
    assert_eq!(
        seawall::error::kind(&*err),
        Some(seawall::error::ErrorKind::BulkheadFull),
        "answered 503 with Retry-After"
    );
}

#[tokio::test(start_paused = true)]
async fn events_report_the_call_when_it_is_made_and_the_refusal_when_it_is_handed_out() {
    use seawall::core::{Event, EventKind};
    use std::sync::Mutex;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let layer = one_slot(10)
        .honour_deadlines()
        .observer(move |event: &Event<'_>| {
            let name = format!("{:?}", event.kind);
            let name = name.split([' ', '{', '(']).next().unwrap().to_owned();
            if !matches!(event.kind, EventKind::Started { .. }) {
                record.lock().unwrap().push(name);
            }
        })
        .build()
        .unwrap();
    let mut s = layer.layer(Counted::default().service());
    let names = || std::mem::take(&mut *seen.lock().unwrap());
    let mut holder = call(&mut s, whenever());
    assert_eq!(names(), ["Permitted"]);
    let mut waiting = call(&mut s, within(50));
    let mut refused = call(&mut s, within(10));
    let dropped = call(&mut s, within(50));
    assert_pending!(waiting.poll());
    assert!(names().is_empty(), "a queued call is not reported yet");
    drop(dropped);
    assert!(
        names().is_empty(),
        "a call dropped in the queue was never admitted"
    );
    tokio::time::advance(10 * MS).await;
    assert!(assert_ready!(refused.poll()).is_err());
    assert_eq!(names(), ["Rejected"]);
    assert!(assert_ready!(holder.poll()).is_ok());
    assert_eq!(names(), ["Finished"]);
    assert!(assert_ready!(waiting.poll()).is_ok());
    assert_eq!(names(), ["Permitted", "Finished"]);
}

/// The adaptive limiter sits on the same gate: its calls wait in their response future, never past
/// their deadline, and it learns from their time in service, not in the queue.
#[cfg(feature = "limit")]
mod adaptive {
    use super::*;
    use seawall::limit::algorithm::{Algorithm, Sample};
    use seawall::limit::AdaptiveLimitLayer;
    use std::sync::Mutex;

    /// A limit of one that records the round-trip times it is fed.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<Duration>>>);

    impl Algorithm for Recorded {
        fn initial(&self) -> f64 {
            1.0
        }
        fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
            self.0.lock().unwrap().push(sample.rtt);
            limit
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limiter_caps_the_wait_at_the_deadline() {
        let layer = AdaptiveLimitLayer::builder(Recorded::default())
            .queue(10)
            .codel(Codel::default())
            .honour_deadlines()
            .build()
            .unwrap();
        let handle = layer.handle();
        let made = Counted::default();
        let mut s = layer.layer(made.service());
        let holder = call(&mut s, whenever());
        assert_eq!(handle.in_flight(), 1);
        let mut waiting = call(&mut s, within(30));
        let refused = full(run(&mut waiting, 100).await.expect("turned away"));
        assert!(refused.waited_too_long(), "{refused}");
        assert_eq!(refused.waited(), 30 * MS);
        // Passed already: refused at once.
        let mut late = call(&mut s, Req(Some(Deadline::at(Instant::now()))));
        assert!(assert_ready!(late.poll()).is_err());
        assert_eq!(handle.queued(), 0);
        drop(holder);
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
        assert_eq!(made.made(), 1, "the holder's only");
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limiter_learns_from_time_in_service_not_in_the_queue() {
        let seen = Recorded::default();
        let layer = AdaptiveLimitLayer::builder(seen.clone())
            .sample_every(1)
            .queue(10)
            .honour_deadlines()
            .build()
            .unwrap();
        let handle = layer.handle();
        // Each call is served for as many milliseconds as its deadline gives it, less 100.
        let mut s = layer.layer(service_fn(|req: Req| async move {
            let left = req.0.expect("a deadline").remaining();
            tokio::time::sleep(left - 100 * MS).await;
            Ok::<_, BoxError>(0u32)
        }));
        let first = tokio::spawn(ready_call(&mut s, within(150)));
        tokio::task::yield_now().await;
        // Queued for 50 ms behind the first, then served for 10 ms.
        let second = tokio::spawn(ready_call(&mut s, within(160)));
        tokio::task::yield_now().await;
        assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(*seen.0.lock().unwrap(), [50 * MS, 10 * MS]);
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    }

    /// The limiter learns from the time the service takes to answer, not from the time its
    /// caller waited for the service beneath to be ready (a buffer, a bulkhead beneath).
    #[tokio::test(start_paused = true)]
    async fn the_sample_starts_when_the_call_is_made_not_while_the_service_beneath_readies() {
        let seen = Recorded::default();
        let layer = AdaptiveLimitLayer::builder(seen.clone())
            .sample_every(1)
            .build()
            .unwrap();
        let (mock, mut beneath) = tower_test::mock::pair::<Req, u32>();
        beneath.allow(0);
        let mut s = layer.layer(mock);
        let mut cx = task::spawn(());
        assert_pending!(cx.enter(|cx, _| s.poll_ready(cx)));
        tokio::time::advance(50 * MS).await;
        beneath.allow(1);
        assert_ready!(cx.enter(|cx, _| s.poll_ready(cx))).unwrap();
        let mut answer = task::spawn(s.call(whenever()));
        assert_pending!(answer.poll());
        let (_, send) = beneath.next_request().await.expect("the call");
        tokio::time::advance(10 * MS).await;
        send.send_response(0);
        assert_ready!(answer.poll()).unwrap();
        assert_eq!(*seen.0.lock().unwrap(), [10 * MS]);
    }

    /// Likewise deciding in `call`, for a call given its slot in the queue.
    #[tokio::test(start_paused = true)]
    async fn honouring_deadlines_the_sample_starts_when_the_call_is_made() {
        let seen = Recorded::default();
        let layer = AdaptiveLimitLayer::builder(seen.clone())
            .sample_every(1)
            .queue(10)
            .honour_deadlines()
            .build()
            .unwrap();
        let (mock, mut beneath) = tower_test::mock::pair::<Req, u32>();
        let mut s = layer.layer(mock);
        beneath.allow(2);
        let mut holder = call(&mut s, whenever());
        let mut queued = call(&mut s, whenever());
        beneath.allow(0);
        assert_pending!(queued.poll());
        assert_pending!(holder.poll());
        let (_, send) = beneath.next_request().await.expect("the holder's call");
        send.send_response(0);
        assert_ready!(holder.poll()).unwrap();
        // The queued call has the slot; the service beneath is ready 50 ms later.
        assert_pending!(queued.poll());
        tokio::time::advance(50 * MS).await;
        beneath.allow(1);
        assert!(queued.is_woken());
        assert_pending!(queued.poll(), "made");
        let (_, send) = beneath.next_request().await.expect("the queued call");
        tokio::time::advance(10 * MS).await;
        send.send_response(0);
        assert_ready!(queued.poll()).unwrap();
        assert_eq!(*seen.0.lock().unwrap(), [Duration::ZERO, 10 * MS]);
    }
}

/// A call given its slot waits for the service beneath to be ready (a buffer, a bulkhead beneath)
/// no longer than its deadline: then the slot goes to the next in the queue, and the call fails
/// with `Full`, as one that waited its time.
#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_while_the_service_beneath_readies_frees_the_slot() {
    let layer = one_slot(10).honour_deadlines().build().unwrap();
    let handle = layer.handle();
    let (mock, mut beneath) = tower_test::mock::pair::<Req, u32>();
    let mut s = layer.layer(mock);
    // Ready for the holder and for the two that queue behind it, then for nothing.
    beneath.allow(3);
    let holder = call(&mut s, whenever());
    let start = Instant::now();
    let mut timed = call(&mut s, within(30));
    let mut next = call(&mut s, whenever());
    beneath.allow(0);
    assert_pending!(timed.poll());
    assert_pending!(next.poll());
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));
    // The holder goes away at 10 ms: the slot goes to `timed`, whose service is not ready.
    tokio::time::advance(10 * MS).await;
    drop(holder);
    assert_pending!(timed.poll(), "the service beneath is not ready");
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    let refused = full(run(&mut timed, 100).await.expect("refused at its deadline"));
    assert!(refused.waited_too_long(), "{refused}");
    assert_eq!(refused.waited(), 30 * MS);
    assert_eq!(Instant::now() - start, 30 * MS);
    assert!(next.is_woken(), "the slot passes on");
    assert_pending!(next.poll(), "readying in turn");
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    drop(next);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}
