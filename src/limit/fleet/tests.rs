//! Races between a call's decision and the eviction of its key, made to happen at a chosen step.

use super::{FleetRateLimitLayer, Lease, MemoryStore, Point, Take};
use crate::limit::rate::gcra::TIME;
use crate::limit::rate::{Clock, Quota};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, Layer, Service, ServiceExt};

/// Something to run once, when a decision reaches its point.
type Armed = (Point, Box<dyn FnOnce() + Send>);

/// The hook a test arms: runs once, at the first decision that reaches its point.
#[derive(Default)]
pub(super) struct Hook(Mutex<Option<Armed>>);

impl Hook {
    pub(super) fn run(&self, point: Point) {
        let mut armed = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*armed, Some((at, _)) if *at == point) {
            let (_, run) = armed.take().expect("checked above");
            // Not under the lock: what runs may decide calls itself.
            drop(armed);
            run();
        }
    }

    fn arm(&self, point: Point, run: impl FnOnce() + Send + 'static) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((point, Box::new(run)));
    }
}

type Key = fn(&&'static str) -> Option<&'static str>;
type Fleet = super::Fleet<MemoryStore, crate::limit::rate::TokioClock, ()>;

/// Each key's quota: a slot every 10 ms, ten at once.
fn quota() -> Quota {
    Quota::per_second(100).burst(10)
}

/// A limiter with one bucket of eight slots.
fn layer() -> FleetRateLimitLayer<MemoryStore, Key> {
    layer_over(MemoryStore::new(), Duration::from_secs(1))
}

/// A limiter with one bucket of eight slots over `store`, which may reserve slots up to `ahead`.
fn layer_over(store: MemoryStore, ahead: Duration) -> FleetRateLimitLayer<MemoryStore, Key> {
    let key: Key = |k| Some(*k);
    FleetRateLimitLayer::builder(store, quota(), key)
        .max_keys(1)
        .reserve_ahead(ahead)
        .build()
        .unwrap()
}

/// Takes `key`'s whole burst from `store`, leaving no slot free now.
async fn drain(store: &MemoryStore, key: &str) {
    let grant = store.clone().oneshot(Take::new(key, 10, quota())).await;
    assert_eq!(grant.unwrap().granted, 10);
}

fn slot_of(fleet: &Fleet, key: &'static str) -> usize {
    fleet.entry(fleet.table.locate(&key))
}

/// Fills the table: key `a`, six keys holding a lease (whose slots are not taken while an idle
/// key's is there) and an idle key `spare`. Returns the slots of `a` and `spare`.
fn crowd(fleet: &Fleet) -> (usize, usize) {
    let a = slot_of(fleet, "a");
    for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        let index = slot_of(fleet, key);
        fleet.table.slot(index).cell.remaining.fetch_add(1, Relaxed);
    }
    let spare = slot_of(fleet, "spare");
    assert_eq!(fleet.table.keys(), 8, "eight keys in eight slots");
    (a, spare)
}

/// Arms the fleet so that, when a decision reaches `point`, key `b` takes key `a`'s slot (the
/// only idle one then) and `then` is done to `b`'s lease; `spare` is idle again afterwards, so a
/// call of `a` that starts over takes its slot (unless `b` is left idle).
fn evict_a_at(
    fleet: &Arc<Fleet>,
    point: Point,
    then: impl FnOnce(&Fleet, &Lease) + Send + 'static,
) {
    let (a, spare) = crowd(fleet);
    let weak = Arc::downgrade(fleet);
    fleet.hook.arm(point, move || {
        let fleet = weak.upgrade().expect("the fleet is alive");
        let spare = &fleet.table.slot(spare).cell.remaining;
        spare.fetch_add(1, Relaxed);
        let b = slot_of(&fleet, "b");
        assert_eq!(b, a, "b takes a's slot");
        spare.fetch_sub(1, Relaxed);
        then(&fleet, &fleet.table.slot(b).cell);
    });
}

async fn call(
    service: &mut (impl Service<&'static str, Response = (), Error = tower::BoxError> + Send),
    key: &'static str,
) -> Result<(), tower::BoxError> {
    service.ready().await?.call(key).await
}

fn service(
    layer: &FleetRateLimitLayer<MemoryStore, Key>,
) -> impl Service<&'static str, Response = (), Error = tower::BoxError> + Send {
    layer.layer(service_fn(|_: &'static str| async {
        Ok::<_, Infallible>(())
    }))
}

/// Key `b` takes key `a`'s slot, and gets a lease, between the lookup of `a`'s slot and the take
/// from its lease: `a`'s call spends nothing of `b`'s lease.
#[tokio::test(start_paused = true)]
async fn a_call_racing_the_eviction_of_its_key_spends_nothing_of_the_new_keys_lease() {
    let layer = layer();
    evict_a_at(&layer.shared, Point::Found, |_, b| {
        b.remaining.fetch_add(5, Relaxed);
    });
    let mut service = service(&layer);
    let admitted = service.ready().await.unwrap().call("a");
    assert_eq!(
        layer.handle().leased(&"b"),
        5,
        "a's call spent a unit of b's lease"
    );
    assert!(
        admitted.await.is_ok(),
        "a's call goes ahead on a lease of its own"
    );
}

/// The same race once `a`'s lease was found empty, before it is looked at again.
#[tokio::test(start_paused = true)]
async fn a_call_without_a_lease_racing_the_eviction_of_its_key_spends_nothing_of_the_new_keys() {
    let layer = layer();
    evict_a_at(&layer.shared, Point::NoLease, |_, b| {
        b.remaining.fetch_add(5, Relaxed);
    });
    let mut service = service(&layer);
    let admitted = service.ready().await.unwrap().call("a");
    assert_eq!(
        layer.handle().leased(&"b"),
        5,
        "a's call spent a unit of b's lease"
    );
    assert!(
        admitted.await.is_ok(),
        "a's call goes ahead on a lease of its own"
    );
}

/// `b` takes `a`'s slot with no lease, while `a`'s call is about to ask for one: the renewal `a`
/// starts is not left marked in flight on `b`'s slot, which would keep `b` waiting for ever.
#[tokio::test(start_paused = true)]
async fn a_renewal_for_an_evicted_key_does_not_hold_up_the_new_key() {
    let layer = layer();
    evict_a_at(&layer.shared, Point::NoLease, |_, _| {});
    let mut service = service(&layer);
    assert!(call(&mut service, "a").await.is_ok());
    let b = call(&mut service, "b").await;
    assert!(b.is_ok(), "b is refused: {b:?}");
}

/// While the store is degraded: `a`'s call, decided by the local limit, is not charged to `b`,
/// which took `a`'s slot and made calls of its own there (five of its burst of ten).
#[tokio::test(start_paused = true)]
async fn a_local_decision_racing_the_eviction_of_its_key_is_not_charged_to_the_new_key() {
    let layer = layer();
    let fleet = &layer.shared;
    fleet.degraded.store(1, Relaxed); // degraded since time 0
    fleet.next_probe.store(u64::MAX, Relaxed);
    let five = fleet.clock.now() + 5 * 10_000_000;
    evict_a_at(fleet, Point::NoLease, move |_, b| {
        b.local.fetch_add(five, Relaxed);
    });
    let mut service = service(&layer);
    assert!(call(&mut service, "a").await.is_ok());
    let b = fleet
        .table
        .find(fleet.table.locate(&"b"))
        .expect("b has a slot");
    assert_eq!(
        fleet.table.slot(b).cell.local.load(Relaxed) & TIME,
        five,
        "a's call was charged to b's local limit"
    );
}

/// Arms the fleet so that, when a decision or a renewal reaches `point` while key `a`'s renewal
/// mark is on (a renewal in flight, or a call moving its reservation), key `b` takes `a`'s slot
/// although the mark is on: every other slot has one too at that moment (such keys are evicted
/// last, so only then); then `then` is done to `b`'s lease. Afterwards `spare` is idle again, for
/// `a` to start over in.
fn evict_marked_a_at(fleet: &Arc<Fleet>, point: Point, then: impl FnOnce(&Lease) + Send + 'static) {
    let (a, _) = crowd(fleet);
    let weak = Arc::downgrade(fleet);
    fleet.hook.arm(point, move || {
        let fleet = weak.upgrade().expect("the fleet is alive");
        assert_ne!(
            fleet.table.slot(a).cell.renewing.load(Relaxed),
            0,
            "a's mark is on"
        );
        let others = (0..fleet.table.capacity()).filter(|&index| index != a);
        for index in others.clone() {
            fleet.table.slot(index).cell.renewing.store(1, Relaxed);
        }
        let b = slot_of(&fleet, "b");
        assert_eq!(b, a, "b takes a's slot");
        for index in others {
            fleet.table.slot(index).cell.renewing.store(0, Relaxed);
        }
        then(&fleet.table.slot(b).cell);
    });
}

/// [`evict_marked_a_at`] when a renewal has found its key in the slot and is about to credit the
/// store's grant.
fn evict_renewing_a(fleet: &Arc<Fleet>) {
    evict_marked_a_at(fleet, Point::Credit, |_| {});
}

/// The slot of `b`, once the renewal that a call of `a` starts has ended, `b` having taken
/// `a`'s slot between the renewal's check that `a` holds it and the credit of its grant.
async fn b_after_a_renewal_lost_at_credit(layer: &FleetRateLimitLayer<MemoryStore, Key>) -> usize {
    let fleet = &layer.shared;
    evict_renewing_a(fleet);
    let mut service = service(layer);
    let mut a = tokio_test::task::spawn(service.ready().await.unwrap().call("a"));
    tokio_test::assert_pending!(a.poll(), "a waits for its renewal");
    // The renewal wakes `a` when it ends, after the credit. `a` is not polled again: it would
    // start over in a slot of its own, and might take `b`'s if `b` were left idle.
    for _ in 0..10 {
        if a.is_woken() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(a.is_woken(), "a's renewal has ended");
    assert!(fleet.hook.0.lock().unwrap().is_none(), "the race was run");
    fleet
        .table
        .find(fleet.table.locate(&"b"))
        .expect("b keeps a's slot")
}

/// The store grants `a` a lease at once: none of it is credited to `b`.
#[tokio::test(start_paused = true)]
async fn a_grant_for_an_evicted_key_is_not_credited_to_the_new_key() {
    let layer = layer();
    let b = b_after_a_renewal_lost_at_credit(&layer).await;
    let lease = &layer.shared.table.slot(b).cell;
    assert_eq!(lease.left(), 0, "a's grant was credited to b's lease");
}

/// `b`'s lease after the store reserved `a` slots ahead and `b` took `a`'s slot just before
/// they were credited.
async fn b_after_a_reservation_lost_at_credit() -> (FleetRateLimitLayer<MemoryStore, Key>, usize) {
    let store = MemoryStore::new();
    drain(&store, "a").await;
    let layer = layer_over(store, Duration::from_secs(1));
    let b = b_after_a_renewal_lost_at_credit(&layer).await;
    (layer, b)
}

/// The store reserves `a` slots ahead: `b` is not given them.
#[tokio::test(start_paused = true)]
async fn a_reservation_for_an_evicted_key_is_not_given_to_the_new_key() {
    let (layer, b) = b_after_a_reservation_lost_at_credit().await;
    let lease = &layer.shared.table.slot(b).cell;
    assert_eq!(lease.reserved(), 0, "a's reserved slots were given to b");
}

/// The same: `b` is not given their due time, which would refuse its calls until then once it
/// has a reservation of its own.
#[tokio::test(start_paused = true)]
async fn a_reservations_due_time_for_an_evicted_key_is_not_given_to_the_new_key() {
    let (layer, b) = b_after_a_reservation_lost_at_credit().await;
    let lease = &layer.shared.table.slot(b).cell;
    assert_eq!(
        lease.due(),
        0,
        "a's reserved slots' due time was given to b"
    );
}

/// The store has no room for `a` and reserves nothing: `b` is not refused until `a`'s denial
/// ends.
#[tokio::test(start_paused = true)]
async fn a_denial_for_an_evicted_key_is_not_given_to_the_new_key() {
    let store = MemoryStore::new();
    drain(&store, "a").await;
    let layer = layer_over(store, Duration::ZERO);
    let b = b_after_a_renewal_lost_at_credit(&layer).await;
    let lease = &layer.shared.table.slot(b).cell;
    assert_eq!(lease.denied_until(), 0, "a's denial was given to b");
}

/// `a`'s reserved admissions are due: `b` takes `a`'s slot after they were taken from the
/// reservation (under `a`'s mark) and before they are added to the lease, and is given none of
/// them.
#[tokio::test(start_paused = true)]
async fn reserved_admissions_of_an_evicted_key_are_not_given_to_the_new_key() {
    let layer = layer();
    let fleet = &layer.shared;
    evict_marked_a_at(fleet, Point::Reserved, |b| {
        b.remaining.fetch_add(5, Relaxed);
    });
    let a = slot_of(fleet, "a");
    // Three admissions reserved for `a`, due now.
    fleet.table.slot(a).cell.reserved.fetch_add(3, Relaxed);
    let mut service = service(&layer);
    assert!(call(&mut service, "a").await.is_ok());
    assert!(fleet.hook.0.lock().unwrap().is_none(), "the race was run");
    assert_eq!(
        layer.handle().leased(&"b"),
        5,
        "a's reserved admissions were given to b"
    );
}

/// `a`'s renewal R1 is in flight; `b` takes `a`'s slot, then `a` takes it back (a new tenure)
/// and starts renewal R2, which marks the slot. R1 ends: its credit is refused (an old tenure's),
/// and it leaves R2's mark, which names the new tenure, in place.
#[tokio::test(start_paused = true)]
async fn an_old_tenures_renewal_leaves_the_new_tenures_mark() {
    let layer = layer();
    let fleet = &layer.shared;
    let (a, _) = crowd(fleet);
    let a_tag = fleet.table.locate(&"a").tag;
    let weak = Arc::downgrade(fleet);
    let r2 = Arc::new(Mutex::new(0));
    let mark = r2.clone();
    fleet.hook.arm(Point::Credit, move || {
        let fleet = weak.upgrade().expect("the fleet is alive");
        let others: Vec<usize> = (0..fleet.table.capacity()).filter(|&i| i != a).collect();
        for &i in &others {
            fleet.table.slot(i).cell.renewing.store(1, Relaxed);
        }
        assert_eq!(slot_of(&fleet, "b"), a, "b takes a's slot");
        assert_eq!(slot_of(&fleet, "a"), a, "a takes it back");
        for &i in &others {
            fleet.table.slot(i).cell.renewing.store(0, Relaxed);
        }
        // R2, the new tenure's renewal, in flight: its mark.
        let lease = &fleet.table.slot(a).cell;
        let r2 = Lease::mark(a_tag, lease.generation());
        assert!(lease
            .renewing
            .compare_exchange(0, r2, Relaxed, Relaxed)
            .is_ok());
        *mark.lock().unwrap() = r2;
    });
    let mut service = service(&layer);
    let mut call_a = tokio_test::task::spawn(service.ready().await.unwrap().call("a"));
    tokio_test::assert_pending!(call_a.poll());
    for _ in 0..10 {
        if call_a.is_woken() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(fleet.hook.0.lock().unwrap().is_none(), "the race was run");
    let r2 = *r2.lock().unwrap();
    assert_ne!(r2, 0);
    assert_eq!(
        fleet.table.slot(a).cell.renewing.load(Relaxed),
        r2,
        "R1 (old tenure) removed the mark of R2 (new tenure), still in flight"
    );
}

/// A call of `a` finds `a`'s reservation due; before it takes it, another call of `a` moved and
/// spent it, and the renewal that followed was given a new reservation, due 500 ms on. The first
/// call leaves the new reservation alone, and is refused until it is due.
#[tokio::test(start_paused = true)]
async fn a_call_that_found_a_reservation_due_does_not_take_the_next_one_early() {
    use super::Grant;
    let layer = layer();
    let fleet = &layer.shared;
    let a = slot_of(fleet, "a");
    fleet.table.slot(a).cell.reserved.fetch_add(3, Relaxed);
    let weak = Arc::downgrade(fleet);
    fleet.hook.arm(Point::Due, move || {
        let fleet = weak.upgrade().expect("the fleet is alive");
        let lease = &fleet.table.slot(a).cell;
        // The other call: moves the 3 due admissions and spends them.
        let _ = lease.take_reserved(lease.generation());
        // The renewal that followed: 4 admissions reserved, due 500 ms on.
        let generation = lease.generation();
        let now = fleet.clock.now();
        let grant = Grant {
            granted: 4,
            wait: Duration::from_millis(500),
        };
        lease.credit(generation, grant, 4, now, (1, 32), 100_000_000);
        assert_eq!(lease.reserved(), 4);
    });
    let mut service = service(&layer);
    let first = call(&mut service, "a").await;
    assert!(fleet.hook.0.lock().unwrap().is_none(), "the race was run");
    let lease = &fleet.table.slot(a).cell;
    assert_eq!(
        (lease.reserved(), lease.left(), first.is_ok()),
        (4, 0, false),
        "the reservation due in 500 ms was spent now (reserved, left, admitted)"
    );
}

/// A renewal task dropped before it ever runs (its runtime shut down) takes its mark off the key:
/// left there, it would keep every later renewal of the key from starting.
#[test]
fn a_renewal_dropped_before_it_runs_takes_its_mark_off() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (layer, a) = runtime.block_on(async {
        let layer = layer();
        let a = slot_of(&layer.shared, "a");
        let mut service = service(&layer);
        // The call starts a renewal for `a`, spawned, and not run before the runtime stops.
        drop(service.ready().await.unwrap().call("a"));
        (layer, a)
    });
    let lease = &layer.shared.table.slot(a).cell;
    assert_ne!(lease.renewing.load(Relaxed), 0, "a renewal was started");
    assert_eq!(layer.handle().store_calls(), 0, "and has not run");
    drop(runtime);
    assert_eq!(
        lease.renewing.load(Relaxed),
        0,
        "the renewal dropped unrun left its mark"
    );
}

/// While the store is degraded, a call that takes its key's last admission and asks the store
/// nothing (its key has slots reserved) does not spend the probe that is due: the next call that
/// needs the store, of another key, probes it.
#[tokio::test(start_paused = true)]
async fn a_probe_is_spent_only_by_a_call_that_asks_the_store() {
    let layer = layer();
    let fleet = &layer.shared;
    fleet.degraded.store(1, Relaxed); // degraded since time 0
    fleet.next_probe.store(0, Relaxed);
    let a = &fleet.table.slot(slot_of(fleet, "a")).cell;
    a.remaining.fetch_add(1, Relaxed);
    a.reserved.fetch_add(3, Relaxed);
    a.due.fetch_add(fleet.clock.now() + 1_000_000_000, Relaxed);
    let mut service = service(&layer);
    assert!(call(&mut service, "a").await.is_ok());
    assert!(call(&mut service, "b").await.is_ok());
    tokio::task::yield_now().await;
    assert_eq!(
        layer.handle().store_calls(),
        1,
        "b did not probe the store: a's call spent the probe"
    );
    assert!(!layer.handle().degraded(), "the probe found the store up");
}

/// The service beneath the limiter in the tests of calls not made: ready, never ready, or failing
/// readiness, as told (its clones with it); or ready, with a `call` that panics.
#[derive(Clone, Default)]
struct Beneath(Arc<std::sync::atomic::AtomicU8>);

const READY: u8 = 0;
const NOT_READY: u8 = 1;
const FAILING: u8 = 2;
const PANICS: u8 = 3;

impl Beneath {
    fn set(&self, state: u8) {
        self.0.store(state, Relaxed);
    }
}

impl Service<&'static str> for Beneath {
    type Response = ();
    type Error = tower::BoxError;
    type Future = std::future::Ready<Result<(), tower::BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), tower::BoxError>> {
        match self.0.load(Relaxed) {
            NOT_READY => std::task::Poll::Pending,
            FAILING => std::task::Poll::Ready(Err("not ready".into())),
            _ => std::task::Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        assert_ne!(self.0.load(Relaxed), PANICS, "the inner call panics");
        std::future::ready(Ok(()))
    }
}

/// An observer that records the kinds of event it is sent, and panics at `Permitted` if told to.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<crate::core::EventKind>>>,
    panic_at_permitted: bool,
}

impl Recorder {
    fn count(&self, kind: crate::core::EventKind) -> usize {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().filter(|seen| **seen == kind).count()
    }
}

impl crate::core::Observer for Recorder {
    fn on_event(&self, event: &crate::core::Event<'_>) {
        let kind = event.kind;
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kind);
        assert!(
            !(self.panic_at_permitted && kind == crate::core::EventKind::Permitted),
            "the observer panics at Permitted"
        );
    }
}

/// A limiter over a store of its own with one bucket of eight slots, its events sent to
/// `recorder`.
fn observed(
    recorder: &Recorder,
) -> FleetRateLimitLayer<MemoryStore, Key, crate::limit::rate::TokioClock, Recorder> {
    let key: Key = |k| Some(*k);
    FleetRateLimitLayer::builder(MemoryStore::new(), quota(), key)
        .max_keys(1)
        .observer(recorder.clone())
        .build()
        .unwrap()
}

/// Lets the renewal that `call` waits for run, until it wakes `call`.
async fn until_woken<F: std::future::Future>(call: &tokio_test::task::Spawn<F>) {
    for _ in 0..10 {
        if call.is_woken() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the call waiting for a lease was never woken");
}

/// A call of `a` over `beneath`, which waited for `a`'s first lease and took an admission of it,
/// and now waits for `beneath` (told to be `then` once the call waits) to be ready again.
async fn admitted_after_a_wait<S>(
    service: &mut S,
    beneath: &Beneath,
    then: u8,
) -> tokio_test::task::Spawn<S::Future>
where
    S: Service<&'static str, Response = (), Error = tower::BoxError>,
{
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call("a"));
    tokio_test::assert_pending!(call.poll(), "a waits for its first lease");
    beneath.set(then);
    until_woken(&call).await;
    call
}

/// A call that waited for its lease, took an admission and is dropped while the service beneath
/// is made ready again: the admission goes back to the lease, and the call, reported
/// `Permitted`, is reported `Cancelled`.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_its_wait_while_the_service_beneath_gets_ready_gives_its_admission_back(
) {
    use crate::core::EventKind::{Cancelled, Permitted};
    let recorder = Recorder::default();
    let layer = observed(&recorder);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let mut call = admitted_after_a_wait(&mut service, &beneath, NOT_READY).await;
    tokio_test::assert_pending!(call.poll(), "a waits for the service beneath");
    assert_eq!(recorder.count(Permitted), 1, "a's call is admitted");
    let leased = layer.handle().leased(&"a");
    drop(call);
    assert_eq!(
        (layer.handle().leased(&"a"), recorder.count(Cancelled)),
        (leased + 1, 1),
        "the admission of a call never made was lost (leased, cancellations)"
    );
}

/// The same when the service beneath fails as it is made ready: the call fails, its admission
/// goes back to the lease, and it is reported `Cancelled`.
#[tokio::test(start_paused = true)]
async fn a_call_whose_service_beneath_fails_after_its_wait_gives_its_admission_back() {
    use crate::core::EventKind::{Cancelled, Permitted};
    let recorder = Recorder::default();
    let layer = observed(&recorder);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let mut call = admitted_after_a_wait(&mut service, &beneath, FAILING).await;
    // The poll takes one of these, and must give it back.
    let leased = layer.handle().leased(&"a");
    let failed = tokio_test::assert_ready!(call.poll());
    assert!(failed.is_err(), "the service beneath failed");
    assert_eq!(recorder.count(Permitted), 1, "a's call was admitted");
    assert_eq!(
        (layer.handle().leased(&"a"), recorder.count(Cancelled)),
        (leased, 1),
        "the admission of a call never made was lost (leased, cancellations)"
    );
}

/// An observer that panics at the `Permitted` of a call that waited for its lease: the call's
/// admission goes back to the lease (and no `Cancelled` is sent while the panic unwinds).
#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_permitted_after_a_wait_leaves_the_admission_in_the_lease() {
    use crate::core::EventKind::Cancelled;
    let recorder = Recorder {
        panic_at_permitted: true,
        ..Recorder::default()
    };
    let layer = observed(&recorder);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let mut call = admitted_after_a_wait(&mut service, &beneath, READY).await;
    // The poll takes one of these, and must give it back.
    let leased = layer.handle().leased(&"a");
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.poll()));
    assert!(polled.is_err(), "the observer panicked");
    drop(call);
    assert_eq!(
        (layer.handle().leased(&"a"), recorder.count(Cancelled)),
        (leased, 0),
        "the admission of a call never made was lost (leased, cancellations)"
    );
}

/// A call admitted at once on its key's lease whose inner `call` panics: the admission goes back
/// to the lease.
#[tokio::test(start_paused = true)]
async fn a_panicking_inner_call_gives_its_leased_admission_back() {
    let layer = layer();
    let a = slot_of(&layer.shared, "a");
    layer
        .shared
        .table
        .slot(a)
        .cell
        .remaining
        .fetch_add(3, Relaxed);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let ready = service.ready().await.unwrap();
    beneath.set(PANICS);
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ready.call("a")));
    assert!(called.is_err(), "the inner call panicked");
    assert_eq!(
        layer.handle().leased(&"a"),
        3,
        "the admission of a call that panicked was lost"
    );
}

/// While the store is degraded, a call admitted at once by the local limit whose inner `call`
/// panics: the local limit's slot goes back.
#[tokio::test(start_paused = true)]
async fn a_panicking_inner_call_gives_its_local_slot_back() {
    let layer = layer();
    let fleet = &layer.shared;
    fleet.degraded.store(1, Relaxed); // degraded since time 0
    fleet.next_probe.store(u64::MAX, Relaxed);
    let local = &fleet.table.slot(slot_of(fleet, "a")).cell.local;
    let before = local.load(Relaxed);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let ready = service.ready().await.unwrap();
    beneath.set(PANICS);
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ready.call("a")));
    assert!(called.is_err(), "the inner call panicked");
    assert_eq!(
        local.load(Relaxed),
        before,
        "the local slot of a call that panicked was lost"
    );
}

/// A call that waited for its lease, was decided by the local limit when the store failed, and
/// is dropped while the service beneath is made ready again: the local limit's slot goes back.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_its_wait_gives_its_local_slot_back() {
    let down = tower::service_fn(|_: Take| async {
        Err::<super::Grant, tower::BoxError>("the store is down".into())
    });
    let key: Key = |k| Some(*k);
    let layer = FleetRateLimitLayer::builder(down, quota(), key)
        .max_keys(1)
        .build()
        .unwrap();
    let fleet = &layer.shared;
    let local = &fleet
        .table
        .slot(fleet.entry(fleet.table.locate(&"a")))
        .cell
        .local;
    let before = local.load(Relaxed);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let mut call = admitted_after_a_wait(&mut service, &beneath, NOT_READY).await;
    tokio_test::assert_pending!(call.poll(), "a waits for the service beneath");
    assert!(layer.handle().degraded(), "the store failed");
    assert_ne!(
        local.load(Relaxed),
        before,
        "a was admitted by the local limit"
    );
    drop(call);
    assert_eq!(
        local.load(Relaxed),
        before,
        "the local slot of a call never made was lost"
    );
}

/// A call of `a` took an admission of `a`'s lease after its wait, and waits for the service
/// beneath; meanwhile `b` takes `a`'s slot, and is given a lease of 5. The call, dropped, gives
/// its admission back to nobody: not to `b`.
#[tokio::test(start_paused = true)]
async fn an_admission_given_back_after_its_key_lost_the_slot_goes_to_nobody() {
    let layer = layer();
    let fleet = &layer.shared;
    let (a, _) = crowd(fleet);
    let beneath = Beneath::default();
    let mut service = layer.layer(beneath.clone());
    let mut call = admitted_after_a_wait(&mut service, &beneath, NOT_READY).await;
    tokio_test::assert_pending!(call.poll(), "a waits for the service beneath");
    // Every other slot marked as renewing (such keys are evicted last): `b` takes `a`'s.
    let others = (0..fleet.table.capacity()).filter(|&index| index != a);
    for index in others.clone() {
        fleet.table.slot(index).cell.renewing.store(1, Relaxed);
    }
    let b = slot_of(fleet, "b");
    assert_eq!(b, a, "b takes a's slot");
    for index in others {
        fleet.table.slot(index).cell.renewing.store(0, Relaxed);
    }
    fleet.table.slot(b).cell.remaining.fetch_add(5, Relaxed);
    drop(call);
    assert_eq!(
        layer.handle().leased(&"b"),
        5,
        "a's admission was given back to b"
    );
}

/// How long the store has been degraded is read with whether it is: never a time from before the
/// store became degraded (before its time was stored, or from an earlier spell).
#[cfg(feature = "health")]
#[tokio::test(start_paused = true)]
async fn how_long_the_store_is_degraded_is_never_read_from_before_it_was() {
    let layer = layer();
    let fleet = &layer.shared;
    tokio::time::advance(Duration::from_secs(10)).await;
    let seen = Arc::new(Mutex::new(None));
    {
        let handle = layer.handle();
        let seen = seen.clone();
        fleet.hook.arm(Point::Degraded, move || {
            *seen.lock().unwrap() = Some(handle.degraded_for());
        });
    }
    assert!(fleet.degrade(fleet.clock.now()));
    let seen = seen.lock().unwrap().take();
    assert_eq!(seen, Some(Some(Duration::ZERO)));
}

/// Two renewals ending at once, one failing and one answered, report the store's health in the
/// order of its states: a recovery that lands between the failure's mark and its report leaves
/// no stale `degraded` report behind (the gauge would have read degraded while the store
/// answered).
#[tokio::test(start_paused = true)]
async fn health_reports_follow_the_stores_state_in_order() {
    use crate::core::EventKind::StoreHealth;
    let recorder = Recorder::default();
    let layer = observed(&recorder);
    let fleet = &layer.shared;
    let health = |recorder: &Recorder| {
        let events = recorder.events.lock().unwrap_or_else(|e| e.into_inner());
        let health: Vec<_> = events
            .iter()
            .filter(|kind| matches!(kind, StoreHealth { .. }))
            .copied()
            .collect();
        health
    };
    {
        // The answered renewal, between the failed one's mark and its report.
        let shared = layer.shared.clone();
        fleet.hook.arm(Point::Degraded, move || {
            if shared.degraded.swap(0, Relaxed) != 0 {
                shared.report_health();
            }
        });
    }
    if fleet.degrade(fleet.clock.now()) {
        fleet.report_health();
    }
    assert!(!fleet.is_degraded());
    assert_eq!(health(&recorder), [], "a change undone before its report");
    // Then a failure on its own, and a recovery: reported once each, in order.
    assert!(fleet.degrade(fleet.clock.now()));
    fleet.report_health();
    fleet.degraded.swap(0, Relaxed);
    fleet.report_health();
    fleet.report_health();
    assert_eq!(
        health(&recorder),
        [
            StoreHealth { degraded: true },
            StoreHealth { degraded: false }
        ]
    );
}
