//! The adaptive limiter: the limit follows the algorithm, and every change is an event (its tower
//! contract is checked in tests/contract/).

use seawall::bulkhead::MAX_CONCURRENT;
use seawall::core::{Event, EventKind};
use seawall::limit::algorithm::{Aimd, Algorithm, Sample, Vegas};
use seawall::limit::AdaptiveLimitLayer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// Runs `callers` tasks that each make `calls` calls in turn.
async fn load<S>(service: &S, callers: usize, calls: u32)
where
    S: Service<u32, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                for i in 0..calls {
                    service.clone().oneshot(i).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn aimd_grows_the_limit_while_the_service_keeps_up() {
    let layer = AdaptiveLimitLayer::builder(Aimd::default())
        .queue(1_000)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.limit(), 20);
    let service = layer.layer(service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, std::io::Error>(())
    }));
    // Forty callers, twenty calls each: the limit is always in use, and every call is quick.
    load(&service, 40, 20).await;
    assert!(handle.limit() >= 40, "{}", handle.limit());
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn aimd_backs_off_on_failures_and_says_so() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let aimd = Aimd {
        initial: 50.0,
        min: 5.0,
        ..Aimd::default()
    };
    let layer = AdaptiveLimitLayer::builder(aimd)
        .observer(move |e: &Event<'_>| {
            if let EventKind::LimitChanged { from, to } = e.kind {
                sink.lock().unwrap().push((from, to));
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(|_: u32| async { Err::<(), _>("overloaded") }));
    for i in 0..5 {
        service.ready().await.unwrap().call(i).await.unwrap_err();
    }
    // 50 × 0.9⁵ = 29.5: the limit is its whole part.
    assert_eq!(handle.limit(), 29);
    assert_eq!(
        *events.lock().unwrap(),
        [(50, 45), (45, 40), (40, 36), (36, 32), (32, 29)]
    );
    for i in 0..100 {
        service.ready().await.unwrap().call(i).await.unwrap_err();
    }
    assert_eq!(handle.limit(), 5, "never below the minimum");
}

#[tokio::test(start_paused = true)]
async fn only_sampled_calls_are_timed_but_every_failure_counts() {
    let layer = AdaptiveLimitLayer::builder(Aimd {
        initial: 50.0,
        min: 5.0,
        ..Aimd::default()
    })
    .sample_every(1_000)
    .build()
    .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), _>("overloaded")
        } else {
            Ok(())
        }
    }));
    for _ in 0..3 {
        service.ready().await.unwrap().call(true).await.unwrap_err();
    }
    assert_eq!(handle.limit(), 36); // 50 × 0.9³ = 36.45
}

#[tokio::test(start_paused = true)]
async fn by_default_a_busy_limiter_times_a_share_of_its_calls_and_a_quiet_one_every_call() {
    let build = |every: Option<u64>| {
        let builder = AdaptiveLimitLayer::builder(Aimd {
            initial: 1_000.0,
            max: 1_000.0,
            ..Aimd::default()
        });
        match every {
            Some(every) => builder.sample_every(every).build().unwrap(),
            None => builder.build().unwrap(),
        }
    };
    let work = Arc::new(Mutex::new(Duration::from_millis(1)));
    let service = |layer: &AdaptiveLimitLayer<Aimd>| {
        let work = work.clone();
        layer.layer(service_fn(move |_: u32| {
            let work = *work.lock().unwrap();
            async move {
                tokio::time::sleep(work).await;
                Ok::<_, BoxError>(())
            }
        }))
    };
    let auto = build(None);
    let fixed = build(Some(1));
    assert_eq!(
        auto.handle().sample_every(),
        1,
        "every call until it knows the rate"
    );

    // 200 calls in flight that take 1 ms: 200,000 calls a second, so about one in 49 is timed.
    load(&service(&auto), 200, 20).await;
    load(&service(&fixed), 200, 20).await;
    let every = auto.handle().sample_every();
    assert!((40..=64).contains(&every), "one call in {every} timed");
    assert_eq!(fixed.handle().sample_every(), 1, "a fixed choice stays");

    // One caller whose calls take 10 ms: 100 calls a second, every one timed again once the next
    // timed call shows it.
    *work.lock().unwrap() = Duration::from_millis(10);
    load(&service(&auto), 1, 2 * every as u32).await;
    assert_eq!(auto.handle().sample_every(), 1);
}

/// What [`Reentrant`] runs inside its updates, one closure per update, in turn.
type Inside = Arc<Mutex<VecDeque<Box<dyn FnOnce() + Send>>>>;

/// Starts at `initial`, records every sample it is fed and takes one slot off the limit for each
/// drop; each time it is fed, it runs the next closure of `inside`, if any, while the limiter's
/// lock is held.
struct Reentrant {
    initial: f64,
    seen: Arc<Mutex<Vec<Sample>>>,
    inside: Inside,
}

impl Algorithm for Reentrant {
    fn initial(&self) -> f64 {
        self.initial
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        self.seen.lock().unwrap().push(*sample);
        let inside = self.inside.lock().unwrap().pop_front();
        if let Some(inside) = inside {
            inside();
        }
        if sample.dropped {
            limit - 1.0
        } else {
            limit
        }
    }
}

/// A limiter over [`Reentrant`] starting at `initial`, and a service whose calls fail when asked.
fn reentrant(
    initial: f64,
) -> (
    AdaptiveLimitLayer<Reentrant>,
    Arc<Mutex<Vec<Sample>>>,
    Inside,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inside: Inside = Arc::new(Mutex::new(VecDeque::new()));
    let layer = AdaptiveLimitLayer::builder(Reentrant {
        initial,
        seen: seen.clone(),
        inside: inside.clone(),
    })
    .sample_every(1)
    .build()
    .unwrap();
    (layer, seen, inside)
}

fn failing_when_asked() -> impl Service<
    bool,
    Response = (),
    Error = &'static str,
    Future = impl std::future::Future<Output = Result<(), &'static str>> + Send,
> + Clone {
    service_fn(|fail: bool| async move {
        if fail {
            Err::<(), _>("overloaded")
        } else {
            Ok(())
        }
    })
}

/// Runs `future` to its end from inside the algorithm (it must be ready at once).
fn finish<F: std::future::Future + Send + 'static>(future: F) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let mut future = tokio_test::task::spawn(future);
        assert!(future.poll().is_ready());
    })
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_finds_the_limit_being_updated_still_counts() {
    let (layer, seen, inside) = reentrant(10.0);
    let handle = layer.handle();
    let mut service = layer.layer(failing_when_asked());
    // A failing call, admitted but not yet run, ends while a success is being fed to the
    // algorithm (so while the lock is held).
    let failing = service.ready().await.unwrap().call(true);
    inside.lock().unwrap().push_back(finish(failing));
    service.ready().await.unwrap().call(false).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!seen[0].dropped && seen[1].dropped, "{seen:?}");
    assert_eq!(handle.limit(), 9);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_ends_while_missed_drops_are_applied_is_applied_before_the_holder_leaves() {
    let (layer, seen, inside) = reentrant(10.0);
    let handle = layer.handle();
    let mut service = layer.layer(failing_when_asked());
    let first = service.ready().await.unwrap().call(true);
    let second = service.ready().await.unwrap().call(true);
    // The first failure ends while a success is fed to the algorithm; the second while the first
    // is, by the same holder: after the holder took the drops it had missed, and while it still
    // holds the lock. No call follows: the holder itself must apply it.
    inside
        .lock()
        .unwrap()
        .extend([finish(first), finish(second)]);
    service.ready().await.unwrap().call(false).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].dropped && seen[2].dropped, "{seen:?}");
    assert_eq!(handle.limit(), 8);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn many_drops_missed_at_once_cost_a_bounded_number_of_updates() {
    let (layer, seen, inside) = reentrant(2_000.0);
    let handle = layer.handle();
    let mut service = layer.layer(failing_when_asked());
    let mut failing = Vec::new();
    for _ in 0..1_000 {
        failing.push(service.ready().await.unwrap().call(true));
    }
    // A thousand failures end while a success is fed to the algorithm: a thousand missed drops,
    // for the one completion that holds the lock to apply.
    inside.lock().unwrap().push_back(Box::new(move || {
        for future in failing {
            let mut future = tokio_test::task::spawn(future);
            assert!(future.poll().is_ready());
        }
    }));
    service.ready().await.unwrap().call(false).await.unwrap();
    let updates = seen.lock().unwrap().len();
    assert!(
        (2..=1 + 64).contains(&updates),
        "one completion fed the algorithm {updates} samples"
    );
    assert!(handle.limit() < 2_000, "{}", handle.limit());
    assert_eq!(handle.in_flight(), 0);
}

/// Panics on its first update, while the limiter's lock is held; then takes one slot off the
/// limit per drop.
struct PanicsOnce(Arc<AtomicBool>);

impl Algorithm for PanicsOnce {
    fn initial(&self) -> f64 {
        10.0
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        if !self.0.swap(true, SeqCst) {
            panic!("an algorithm that panics");
        }
        if sample.dropped {
            limit - 1.0
        } else {
            limit
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_algorithm_that_panicked_once_still_learns() {
    let panicked = Arc::new(AtomicBool::new(false));
    let layer = AdaptiveLimitLayer::builder(PanicsOnce(panicked.clone()))
        .sample_every(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(failing_when_asked());
    let call = service.ready().await.unwrap().call(true);
    let mut call = tokio_test::task::spawn(call);
    let poll = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.poll()));
    assert!(poll.is_err() && panicked.load(SeqCst));
    drop(call);
    assert_eq!(handle.in_flight(), 0);
    for _ in 0..2 {
        service.ready().await.unwrap().call(true).await.unwrap_err();
    }
    assert_eq!(handle.limit(), 8, "both drops after the panic count");
}

/// Jumps the limit to whatever `to` holds (past every count, or back down).
struct Jump(Arc<Mutex<f64>>);

impl Algorithm for Jump {
    fn initial(&self) -> f64 {
        *self.0.lock().unwrap()
    }

    fn update(&mut self, _: f64, _: &Sample) -> f64 {
        *self.0.lock().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn an_unbounded_algorithm_never_overflows_the_bulkhead() {
    // Aimd with no maximum, started past every count.
    let layer = AdaptiveLimitLayer::builder(Aimd {
        initial: 1e30,
        max: f64::INFINITY,
        ..Aimd::default()
    })
    .sample_every(1)
    .build()
    .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.limit(), MAX_CONCURRENT);
    let mut service = layer.layer(failing_when_asked());
    for _ in 0..3 {
        service.ready().await.unwrap().call(false).await.unwrap();
    }
    assert_eq!((handle.limit(), handle.in_flight()), (MAX_CONCURRENT, 0));

    // An algorithm that jumps to infinity and back while calls run.
    let to = Arc::new(Mutex::new(10.0));
    let layer = AdaptiveLimitLayer::builder(Jump(to.clone()))
        .sample_every(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(failing_when_asked());
    let mut running = Vec::new();
    for _ in 0..5 {
        running.push(service.ready().await.unwrap().call(false));
    }
    for limit in [f64::INFINITY, u64::MAX as f64, 1e300] {
        *to.lock().unwrap() = limit;
        service.ready().await.unwrap().call(false).await.unwrap();
        assert_eq!(handle.limit(), MAX_CONCURRENT, "after a jump to {limit}");
        assert_eq!(handle.in_flight(), 5, "after a jump to {limit}");
    }
    // Back down below the calls running, then past every count again, then not a number.
    *to.lock().unwrap() = 2.0;
    service.ready().await.unwrap().call(false).await.unwrap();
    assert_eq!((handle.limit(), handle.in_flight()), (2, 5));
    for call in running {
        call.await.unwrap();
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    for (to_limit, expected) in [(f64::INFINITY, MAX_CONCURRENT), (f64::NAN, 1)] {
        *to.lock().unwrap() = to_limit;
        service.ready().await.unwrap().call(false).await.unwrap();
        assert_eq!(handle.limit(), expected, "after a jump to {to_limit}");
        assert_eq!(handle.in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn untimed_failures_move_vegas() {
    let layer = AdaptiveLimitLayer::builder(Vegas::default())
        .sample_every(1_000)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), _>("overloaded")
        } else {
            Ok(())
        }
    }));
    // The first call of the thread is timed (it took no time: paused), the next ones are not.
    service.ready().await.unwrap().call(false).await.unwrap();
    for _ in 0..3 {
        service.ready().await.unwrap().call(true).await.unwrap_err();
    }
    assert_eq!(handle.limit(), 17, "20 less one per drop");
}

/// A keyed rate limiter outside an adaptive limiter: the inner limiter reserves a slot in
/// `poll_ready`, the keyed limiter refuses the key in `call`, and the slot goes back unused. That
/// is neither an admitted call nor a cancelled one: the adaptive limiter reports nothing for it,
/// and the call it admits next is reported once.
#[tokio::test(start_paused = true)]
async fn a_slot_given_back_unused_under_a_keyed_limiter_is_not_reported() {
    use seawall::limit::algorithm::Fixed;
    use seawall::limit::rate::{KeyedRateLimitLayer, Quota};
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let adaptive = AdaptiveLimitLayer::builder(Fixed(4))
        .name("adaptive")
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let handle = adaptive.handle();
    let keyed = KeyedRateLimitLayer::builder(Quota::per_minute(1), |key: &u32| Some(*key))
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(keyed)
        .layer(adaptive)
        .service(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    service.clone().oneshot(7).await.unwrap();
    events.lock().unwrap().clear();
    // Key 7 has used its quota: refused by the keyed limiter, on a per-request clone (as axum
    // makes them), which is dropped with the slot it reserved.
    let err = service.clone().oneshot(7).await.unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(seawall::error::ErrorKind::RateLimited)
    );
    assert_eq!(handle.in_flight(), 0, "the slot is back");
    assert_eq!(
        *events.lock().unwrap(),
        [],
        "nothing was admitted or cancelled"
    );
    // On one service: refused, then admitted in the slot still reserved.
    let mut one = service.clone();
    one.ready().await.unwrap().call(7).await.unwrap_err();
    one.ready().await.unwrap().call(8).await.unwrap();
    drop(one);
    let kinds = events.lock().unwrap().clone();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[0], EventKind::Permitted);
    assert!(matches!(kinds[1], EventKind::Finished { .. }), "{kinds:?}");
}

/// The adaptive limiter's rejections are its own, in events and metrics labels, and still
/// answered as a full bulkhead is (503, `UNAVAILABLE`).
#[tokio::test(start_paused = true)]
async fn the_adaptive_limiter_rejects_with_its_own_reason() {
    use seawall::core::RejectReason;
    use seawall::limit::algorithm::Fixed;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = AdaptiveLimitLayer::builder(Fixed(1))
        .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    }));
    let busy = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    let err = service.clone().oneshot(2).await.unwrap_err();
    busy.await.unwrap().unwrap();
    let reasons: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|kind| match kind {
            EventKind::Rejected { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["concurrency_limited"]);
    let full = err
        .downcast_ref::<seawall::bulkhead::error::Full>()
        .expect("the limiter's rejection");
    assert!(full.at_capacity());
    assert_ne!(full.reason(), RejectReason::BulkheadFull);
    assert_eq!(
        seawall::error::kind(&*err),
        Some(seawall::error::ErrorKind::BulkheadFull),
        "answered as a full bulkhead: 503, UNAVAILABLE"
    );
}

/// A limiter of one slot over [`Reentrant`] with a queue, timing every call, built by `queue`.
fn queued(
    queue: impl FnOnce(
        seawall::limit::AdaptiveLimitBuilder<Reentrant>,
    ) -> seawall::limit::AdaptiveLimitBuilder<Reentrant>,
) -> (AdaptiveLimitLayer<Reentrant>, Arc<Mutex<Vec<Sample>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let builder = AdaptiveLimitLayer::builder(Reentrant {
        initial: 1.0,
        seen: seen.clone(),
        inside: Inside::default(),
    })
    .sample_every(1)
    .queue(10);
    (queue(builder).build().unwrap(), seen)
}

#[tokio::test(start_paused = true)]
async fn the_limiter_learns_from_time_in_service_not_in_the_queue() {
    use seawall::bulkhead::{Codel, Order};
    for codel in [false, true] {
        let (layer, seen) = queued(|b| {
            if codel {
                b.codel(Codel::default()).order(Order::Adaptive)
            } else {
                b
            }
        });
        let handle = layer.handle();
        // Each call is served for as many milliseconds as it asks.
        let service = layer.layer(service_fn(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(())
        }));
        let first = tokio::spawn(service.clone().oneshot(50));
        tokio::task::yield_now().await;
        // Queued for 50 ms behind the first, then served for 10 ms.
        let second = tokio::spawn(service.clone().oneshot(10));
        tokio::task::yield_now().await;
        assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let rtts: Vec<_> = seen.lock().unwrap().iter().map(|s| s.rtt).collect();
        assert_eq!(
            rtts,
            [Duration::from_millis(50), Duration::from_millis(10)],
            "codel: {codel}"
        );
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn the_limiters_queue_has_codels_waits() {
    use seawall::bulkhead::{error::Full, Codel};
    let (layer, seen) = queued(|b| b.codel(Codel::default()));
    let handle = layer.handle();
    let service = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(())
    }));
    let holder = tokio::spawn(service.clone().oneshot(1_000));
    tokio::task::yield_now().await;
    // The queue was empty: 100 ms. The second joins at 99: the queue stands from just after 100,
    // and the second is past the target at 104: 5 ms. The third joins the standing queue: 5 ms.
    let start = tokio::time::Instant::now();
    let first = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(99)).await;
    let second = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(1)).await;
    let third = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert_eq!(handle.queued(), 2, "the first gave up at 100 ms");
    for (call, waited) in [(first, 100), (second, 5), (third, 5)] {
        let err = call.await.unwrap().unwrap_err();
        let full = err.downcast_ref::<Full>().expect("Full");
        assert!(full.waited_too_long(), "{full}");
        assert_eq!(full.waited(), Duration::from_millis(waited));
    }
    assert_eq!(start.elapsed(), Duration::from_millis(106));
    holder.await.unwrap().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1, "turned away: not samples");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[test]
fn codel_settings_that_cannot_work_are_typed_errors() {
    use seawall::bulkhead::Codel;
    use seawall::limit::AdaptiveConfigError;
    let err = AdaptiveLimitLayer::builder(Aimd::default())
        .codel(Codel::default())
        .build()
        .unwrap_err();
    assert_eq!(err, AdaptiveConfigError::CodelWithoutQueue);
    let backwards = Codel::new(Duration::from_millis(200), Duration::from_millis(100));
    let err = AdaptiveLimitLayer::builder(Aimd::default())
        .queue(1)
        .codel(backwards)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        AdaptiveConfigError::Codel {
            target: backwards.target,
            interval: backwards.interval
        }
    );
}

/// A keyed rate limiter above an adaptive limiter with a queue (as `ServerStack` has): the
/// keyed limiter decides in `call`, after the adaptive limiter reserved a slot in `poll_ready`,
/// so a call over its key's quota first waits in the queue for a slot, taking the queue's place
/// from another client's call, and is refused only once it has the slot (docs/back-pressure.md,
/// "With a keyed rate limiter"). Without a queue beneath, it is refused at once.
#[tokio::test(start_paused = true)]
async fn a_call_over_its_keys_quota_waits_in_the_adaptive_queue_before_it_is_refused() {
    use seawall::error::{kind, ErrorKind};
    use seawall::limit::algorithm::Fixed;
    use seawall::limit::rate::{KeyedRateLimitLayer, Quota};
    use tokio::time::Instant;
    for queue in [1, 0] {
        let mut adaptive = AdaptiveLimitLayer::builder(Fixed(1));
        if queue > 0 {
            adaptive = adaptive.queue(queue).max_wait(Duration::from_secs(5));
        }
        let per_key =
            KeyedRateLimitLayer::builder(Quota::per_minute(1), |k: &(&'static str, u64)| Some(k.0))
                .build()
                .unwrap();
        let service = tower::ServiceBuilder::new()
            .layer(per_key)
            .layer(adaptive.build().unwrap())
            .service(service_fn(|(_, ms): (&'static str, u64)| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, BoxError>(())
            }));
        // The abuser spends its one call a minute on a slow call that holds the only slot.
        let busy = tokio::spawn(service.clone().oneshot(("abuser", 1_000)));
        tokio::task::yield_now().await;
        let start = Instant::now();
        let refused = tokio::spawn(service.clone().oneshot(("abuser", 0)));
        tokio::task::yield_now().await;
        // Another client, while the abuser's call over its quota waits (or not).
        let other = service.clone().oneshot(("alice", 0)).await;
        let refused = refused.await.unwrap().unwrap_err();
        assert_eq!(kind(&*refused), Some(ErrorKind::RateLimited), "{refused}");
        let other = other.unwrap_err();
        assert_eq!(kind(&*other), Some(ErrorKind::BulkheadFull), "{other}");
        match queue {
            // Refused only once the slow call gave its slot back; alice found the queue full.
            1 => assert_eq!(start.elapsed(), Duration::from_secs(1)),
            // Refused at once; alice was turned away by the full limiter, as she would be
            // without the abuser's second call.
            _ => assert_eq!(start.elapsed(), Duration::ZERO),
        }
        busy.await.unwrap().unwrap();
    }
}
