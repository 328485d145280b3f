//! Fleet-wide rate limits: one [`Quota`] per key (a tenant, an API key) shared by every instance
//! of a service, kept in a [`Store`] that all of them reach, and spent locally from leases so
//! that calls do not wait on the store.
//!
//! - [`MemoryStore`]: the store in this process's memory, the same GCRA as
//!   [`KeyedRateLimitLayer`](crate::limit::rate::KeyedRateLimitLayer). For tests, for one instance,
//!   and as the model a shared store follows.
//! - [`RedisStore`](redis::RedisStore) (feature `redis`): each key's GCRA state in Redis, updated
//!   in one server-side script, on Redis's own clock, so instances never overshoot together.
//!
//! # Leases
//!
//! An instance does not ask the store about every call. It takes a *lease* of a few admissions
//! for a key (one script call, taking that many slots of the key's GCRA at once) and spends it
//! locally with one atomic decrement per call. When three quarters of the lease are spent it asks
//! for the next one in the background, so a key with steady traffic never waits on the store, and
//! an instance holds at most `lease + ⌈lease / 4⌉` admissions of a key. The lease size
//! adapts to the key's rate: it doubles while leases last less than half the
//! [`lease_lasts`](FleetBuilder::lease_lasts) target and halves while they last more than twice
//! it, between the [`lease`](FleetBuilder::lease) bounds. The store sees about
//! `rate ÷ lease size` calls per second per key and instance.
//!
//! A key over its quota is not polled for: when no slot is free, the store reserves the
//! instance's next ones, up to [`reserve_ahead`](FleetBuilder::reserve_ahead) ahead (1 s by
//! default), and the instance refuses calls with the exact time to come back until they are due,
//! asking the store nothing meanwhile. Its lease halves while the key stays over quota, so
//! instances take the key's slots in small turns, in the order they ask, and the store sees at
//! most about the key's rate in calls, however many instances there are.
//!
//! What the fleet admits in any window is what the store granted in it, plus the admissions
//! leased before the window and spent in it: **at most `instances × (max + ⌈max / 4⌉)` per key
//! above the quota** (`max` the largest [`lease`](FleetBuilder::lease), 32 by default), and
//! nothing above it for a fleet that starts with no leases. Admissions leased and
//! never spent (an instance that stops, a key evicted from the local table) are lost, which errs
//! on letting fewer through. An admission taken by a call that is then not made (dropped while
//! the service beneath is made ready, that service failing, its observer or its inner `call`
//! panicking) goes back to its key's lease (a local limit's slot to the local limit), or to
//! nobody if the key lost its slot meanwhile.
//!
//! # When the store fails
//!
//! Store calls go through seawall's own [`Timeout`] and [`CircuitBreaker`], and the store
//! timeout bounds each renewal whole: waiting for the store to be ready (`poll_ready`) and the
//! call together. A renewal that fails or times out, in either, marks the store *degraded*
//! ([`EventKind::StoreHealth`]); from then on, calls without a lease are decided by the failure
//! mode, at once:
//!
//! - [`fail_open`](FleetBuilder::fail_open) (the default, with the fleet's own quota): a local
//!   limit per key, in this instance alone. Set it to the quota divided by the instances for the
//!   fleet to keep about its quota while the store is down.
//! - [`fail_closed`](FleetBuilder::fail_closed): every call without a lease fails with
//!   [`RateLimited`].
//!
//! While degraded, one call every [`probe_every`](FleetBuilder::probe_every) tries the store again
//! (the breaker lets it through once its open spell is over); the first answer ends the degraded
//! state, and leases resume.
//!
//! A call waiting for a lease waits at most twice the store timeout. If it has none by then while
//! the store is healthy (the store answers, but other callers took what it granted), it fails
//! with [`RateLimited`]: the failure mode is only for a store that is down, so that the bound
//! above holds whenever the store is up.
//!
//! # The store's clock
//!
//! [`RedisStore`](redis::RedisStore)'s script reads the time with Redis's `TIME` and then
//! writes, which Redis allows from version 5 on (scripts are replicated by their effects since
//! then): **it needs Redis 5 or later**. Every instance's slots are timed on the Redis server's
//! clock, so the instances' clocks need not agree; but that clock is the server's wall clock. If
//! it steps forward by `d`, every key's state looks `d` older: keys get their whole burst back at
//! once (up to one burst more per key than the quota allows, once), and slots reserved ahead come
//! due sooner. If it steps back by `d`, every key looks `d` busier: the fleet lets fewer through
//! (nothing at all for a key, for up to `d` beyond its burst) until the clock has caught up. A
//! failover to a replica whose clock differs does the same. Gradual corrections (NTP slewing)
//! change nothing noticeable. The in-memory store uses the process's monotonic clock.
//!
//! ```
//! use seawall::limit::fleet::{FleetRateLimitLayer, MemoryStore};
//! use seawall::limit::rate::Quota;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // Two instances sharing one store: 3 calls a second per tenant for both together.
//! let store = MemoryStore::new();
//! let tenant = |req: &&'static str| Some(*req);
//! let layer = |store: &MemoryStore| {
//!     FleetRateLimitLayer::builder(store.clone(), Quota::per_second(3), tenant)
//!         .build()
//!         .unwrap()
//! };
//! let service = service_fn(|_: &'static str| async { Ok::<_, std::io::Error>(()) });
//! let mut one = layer(&store).layer(service);
//! let mut two = layer(&store).layer(service);
//! let mut admitted = 0;
//! for _ in 0..4 {
//!     admitted += one.ready().await.unwrap().call("acme").await.is_ok() as u32;
//!     admitted += two.ready().await.unwrap().call("acme").await.is_ok() as u32;
//! }
//! assert_eq!(admitted, 3);
//! # }
//! ```

mod lease;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(test)]
mod tests;

pub use memory::MemoryStore;

use super::error::RateLimited;
use super::rate::gcra::{Decision, Rule, Slot, MAX_SPAN};
use super::rate::keyed::{
    ready_service, waiting_service, KeyedResponseFuture, Place, Table, MAX_KEYS,
};
use super::rate::wait::Turn;
use super::rate::{Clock, Quota, QuotaError, TokioClock};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::core::{Emitter, EventKind, Observer, RejectReason, Source};
use crate::sync::{nanos, Mutex, Striped};
use crate::timeout::policy::PerRequest;
use crate::timeout::{Timeout, TimeoutLayer};
use lease::{Lease, Spent, Wake};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// A store's part of a fleet-wide limit: take up to [`want`](Take::want) admissions for
/// [`key`](Take::key) from its [`quota`](Take::quota), atomically for every instance that shares
/// the store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Take {
    /// The key, as the limiter's key function's `Display` writes it.
    pub key: String,
    /// How many admissions the instance would like (at least 1).
    pub want: u32,
    /// The key's quota.
    pub quota: Quota,
    /// How far ahead the store may reserve slots when none is free now (zero: only slots free
    /// now).
    pub max_wait: Duration,
}

impl Take {
    /// A take of up to `want` admissions for `key` from `quota`, of slots free now.
    pub fn new(key: impl Into<String>, want: u32, quota: Quota) -> Self {
        Take {
            key: key.into(),
            want,
            quota,
            max_wait: Duration::ZERO,
        }
    }

    /// Lets the store reserve slots up to `max_wait` ahead.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
}

/// A store's answer to a [`Take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// How many admissions were taken for the instance: from 0 to the number wanted.
    pub granted: u32,
    /// When some were: how long until they are due (zero: now; at most the take's `max_wait`).
    /// When none were: how long until one could be taken at once.
    pub wait: Duration,
}

/// Where a fleet-wide limit is kept: a service answering [`Take`]s with [`Grant`]s, cheap to
/// clone (clones share the store). Implemented by [`MemoryStore`] and, with feature `redis`,
/// [`RedisStore`](redis::RedisStore); any service of that shape is one.
pub trait Store:
    Service<Take, Response = Grant, Error = BoxError, Future: Send> + Clone + Send + Sync + 'static
{
}

impl<T> Store for T where
    T: Service<Take, Response = Grant, Error = BoxError, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A mistake in a fleet-wide rate limiter's configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The fleet's quota or the local fallback quota lets nothing through.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// Room for no key.
    #[error("a fleet rate limiter needs room for at least one key")]
    MaxKeys,
    /// The lease bounds are not `1 ≤ min ≤ max`.
    #[error("lease bounds must satisfy 1 <= min <= max (got {min}..={max})")]
    Lease {
        /// The smallest lease.
        min: u32,
        /// The largest lease.
        max: u32,
    },
    /// A duration that must be longer than zero is zero.
    #[error("the fleet rate limiter's {0} must be longer than zero")]
    Zero(&'static str),
    /// A duration longer than the limiter keeps (about nine years).
    #[error("the fleet rate limiter's {0} must be at most about nine years")]
    TooLong(&'static str),
    /// Room for more than 2^28 keys.
    #[error("a fleet rate limiter keeps at most 2^28 keys")]
    TooManyKeys,
}

/// The store behind the limiter: the user's store under seawall's timeout and breaker, taking
/// [`Timed`] takes.
type Guarded<St> = CircuitBreaker<Timeout<Untimed<St>, PerRequest<fn(&Timed) -> Option<Duration>>>>;

/// A take, with the instant by which its renewal must be done: one store timeout from the
/// renewal's start, the wait for the store's readiness included.
struct Timed {
    take: Take,
    deadline: Instant,
}

impl Timed {
    /// What is left of the renewal's store timeout: the timeout of its call.
    fn left(&self) -> Option<Duration> {
        Some(self.deadline.saturating_duration_since(Instant::now()))
    }
}

/// The user's store, called with the take of a [`Timed`] one.
#[derive(Clone)]
struct Untimed<St>(St);

impl<St: Store> Service<Timed> for Untimed<St> {
    type Response = Grant;
    type Error = BoxError;
    type Future = St::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, timed: Timed) -> St::Future {
        self.0.call(timed.take)
    }
}

/// What a fleet limiter shares between its layers, services and background renewals.
pub(crate) struct Fleet<St, Clk, O> {
    table: Table<Lease>,
    store: Guarded<St>,
    quota: Mutex<Quota>,
    /// The local limit while the store is degraded; `None` to fail closed.
    local: Option<Rule>,
    lease_min: u64,
    lease_max: u64,
    lease_lasts: u64,
    reserve_ahead: Duration,
    probe_every: u64,
    /// The longest a renewal may take, waiting for the store's readiness included.
    store_timeout: Duration,
    wait_limit: Duration,
    clock: Clk,
    source: Source<O>,
    /// 0 while the store is healthy; while it is degraded, one more than the time on the clock
    /// when it became so: whether and since when in one word, so that no reader sees the one
    /// without the other.
    degraded: AtomicU64,
    /// Whether the last `StoreHealth` event said degraded: the store's state is read and
    /// reported under this lock, so that the events come in the order of the states they
    /// describe (two renewals ending at once cannot report a recovery before the failure it
    /// recovered from).
    reported: Mutex<bool>,
    next_probe: AtomicU64,
    store_calls: AtomicU64,
    store_failures: AtomicU64,
    /// Calls turned away (what `health` reports); written only when one is, striped by thread.
    rejected: Striped,
    /// Calls waiting for a lease (what `health` reports); written only by calls that wait.
    waiting: Striped,
    /// Run once where a test wants a race to happen (see [`Fleet::at`]).
    #[cfg(test)]
    hook: tests::Hook,
}

impl<St, Clk, O> Fleet<St, Clk, O> {
    /// Whether the store is degraded.
    #[inline]
    fn is_degraded(&self) -> bool {
        self.degraded.load(Relaxed) != 0
    }
}

/// What becomes of a call.
enum Verdict {
    /// Go ahead, on what was spent for it.
    Admit(Unit),
    Reject(RateLimited),
    /// Wait for the renewal in flight.
    Wait,
}

/// What an admitted call spent, given back if the call is not made after all.
#[derive(Clone, Copy)]
enum Unit {
    /// One of its key's leased admissions, taken while the lease had served this many keys (see
    /// [`Lease::give_back`]).
    Leased(u64),
    /// A slot of its key's local limit, while the store is degraded.
    Local(Slot),
}

/// The steps of a decision between which a test may run a race's other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// The key's slot is found, nothing taken from it yet.
    Found,
    /// The key's lease was empty; about to look at it again.
    NoLease,
    /// Reserved admissions now due were taken from the key's reservation; about to add them to
    /// its lease.
    Reserved,
    /// A renewal found its key in the slot; about to credit the store's grant.
    Credit,
    /// The key's reserved admissions were found due; about to take the key's renewal mark to
    /// move them.
    Due,
    /// The store was just marked degraded.
    Degraded,
}

/// A key's renewal mark, held by a call moving the key's due reservation to its lease: taken off
/// when dropped, however the call ends, waking the calls waiting on the lease.
struct Marked<'a> {
    lease: &'a Lease,
    mark: u64,
    wake: Wake,
}

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        self.lease.unmark(self.mark, self.wake);
    }
}

/// A renewal's mark on its key, owned by the renewal from before it is spawned: taken off when
/// dropped, however the renewal ends (done, its task panicked, or dropped before it ran when its
/// runtime shut down), waking the calls waiting on the lease. Left on, it would keep the key
/// from ever renewing again.
struct Renewing<St, Clk: 'static, O: 'static> {
    fleet: Arc<Fleet<St, Clk, O>>,
    index: usize,
    mark: u64,
    wake: Wake,
}

impl<St, Clk, O> Drop for Renewing<St, Clk, O> {
    fn drop(&mut self) {
        let lease = &self.fleet.table.slot(self.index).cell;
        lease.unmark(self.mark, self.wake);
    }
}

/// What a call admitted at once spent, given back if the call is not made after all: the
/// observer told of it, or the inner `call`, panicked.
struct Unspent<'a, St, Clk, O> {
    fleet: &'a Fleet<St, Clk, O>,
    index: usize,
    unit: Unit,
}

impl<St, Clk, O> Unspent<'_, St, Clk, O> {
    /// The call was made on it.
    #[inline(always)]
    fn used(self) {
        std::mem::forget(self);
    }
}

impl<St, Clk, O> Drop for Unspent<'_, St, Clk, O> {
    fn drop(&mut self) {
        self.fleet.give_back(self.index, self.unit);
    }
}

/// Shows a key's `Display` form where events want `Debug`.
struct Shown<'a, K: ?Sized>(&'a K);

impl<K: fmt::Display + ?Sized> fmt::Debug for Shown<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)
    }
}

impl<St, Clk, O> Fleet<St, Clk, O> {
    /// Gives back what a call admitted in the slot at `index` spent, the call not being made
    /// after all: a leased admission to the lease, if it still serves the key it was taken for
    /// (else to nobody); a local slot to the local limit, if no later slot was taken since
    /// (then it is as if the call had never been admitted; else, as in the keyed limiter, it is
    /// not given back, which errs on letting fewer through).
    #[cold]
    fn give_back(&self, index: usize, unit: Unit) {
        let lease = &self.table.slot(index).cell;
        match unit {
            Unit::Leased(generation) => {
                lease.give_back(generation);
            }
            Unit::Local(slot) => {
                Rule::undo(&lease.local, slot);
            }
        }
    }
}

impl<St: Store, Clk: Clock, O: Observer> Fleet<St, Clk, O> {
    fn emitter(&self) -> Emitter<'_, O> {
        self.source.emitter()
    }

    /// Where a test may make another thread's work happen (an eviction, say) between two steps
    /// of a decision; nothing outside the crate's own tests.
    #[cfg(test)]
    fn at(&self, point: Point) {
        self.hook.run(point);
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn at(&self, _: Point) {}

    /// The slot of `place`'s key, made if the key is new.
    fn entry(&self, place: Place) -> usize {
        self.table.entry(place, || self.clock.now(), self.emitter())
    }

    /// Starts a renewal of the lease at `index` for `place`'s key unless one is in flight (or,
    /// while the store is degraded, unless a probe is due), or the slot no longer holds the key.
    /// Returns whether one is in flight now.
    fn renew(self: &Arc<Self>, index: usize, place: Place, key: &dyn fmt::Display) -> bool {
        let slot = self.table.slot(index);
        let holds = || slot.tag.load(Acquire) == place.tag;
        // A key that lost its slot asks nothing.
        if !holds() {
            return false;
        }
        // While degraded, only a probe asks the store. The probe is spent last, just before the
        // renewal starts, so that a call that asks nothing spends none; here it is only looked at.
        if self.is_degraded() && self.clock.now() < self.next_probe.load(Relaxed) {
            return false;
        }
        let lease = &slot.cell;
        // Slots reserved and not due yet: the next lease is asked for once they are spent.
        if lease.reserved() != 0 {
            return false;
        }
        // The store said when it would have room: asking before then would only be refused
        // again, and would hand every freed slot to the instance that asks most often.
        let denied = lease.denied_until();
        if denied != 0 && denied > self.clock.now() {
            return false;
        }
        // A renewal in flight (the common case at low water): seen without a compare-and-swap.
        if lease.renewing.load(Relaxed) != 0 {
            return true;
        }
        // The keys the slot has served, read before the check that it holds this one: the grant
        // is credited only while that count stands, so never to a key that takes the slot
        // meanwhile (see `Lease::credit`). The mark names the key and this tenure of the slot,
        // so that only this renewal takes it off.
        let generation = lease.generation();
        let mark = Lease::mark(place.tag, generation);
        if lease
            .renewing
            .compare_exchange(0, mark, AcqRel, Relaxed)
            .is_err()
        {
            return true;
        }
        // From here on the mark comes off with `renewing`, on every path.
        let renewing = Renewing {
            fleet: Arc::clone(self),
            index,
            mark,
            wake: Wake::All,
        };
        // The slot may have gone to another key since it was looked at: a renewal for a key no
        // longer there would keep the new key's calls waiting for it.
        if !holds() {
            return false;
        }
        // A renewal that ended between the checks above and the mark may have left a
        // reservation or a denial: looked at again under the mark, so that no second renewal
        // starts while a reservation stands (its credit would replace it) or before the store
        // has room.
        let denied = lease.denied_until();
        if lease.reserved() != 0 || (denied != 0 && denied > self.clock.now()) {
            return false;
        }
        if self.is_degraded() && !self.probe_due(self.clock.now()) {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(renewing);
            if self.degrade(self.clock.now()) {
                self.report_health();
            }
            return false;
        };
        let want = lease.size(self.lease_min);
        runtime.spawn(Self::renewal(
            renewing,
            place.tag,
            generation,
            key.to_string(),
            want,
        ));
        true
    }

    /// Whether a probe of a degraded store is due at `now`; if so, the next is not before
    /// `probe_every` from now.
    fn probe_due(&self, now: u64) -> bool {
        let next = self.next_probe.load(Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(next, now + self.probe_every, Relaxed, Relaxed)
                .is_ok()
    }

    /// One lease renewal, holding its key's mark (`renewing`): a store call, then the grant
    /// credited to the key (if the slot still holds it: it held it when the lease had served
    /// `generation` keys), the mark taken off and the waiters woken, and last the store's health
    /// reported if it changed.
    async fn renewal(
        mut renewing: Renewing<St, Clk, O>,
        tag: u64,
        generation: u64,
        key: String,
        want: u64,
    ) {
        let fleet = Arc::clone(&renewing.fleet);
        let quota = fleet.quota();
        fleet.store_calls.fetch_add(1, Relaxed);
        let mut store = fleet.store.clone();
        let take = Take {
            key,
            want: u32::try_from(want).unwrap_or(u32::MAX),
            quota,
            max_wait: fleet.reserve_ahead,
        };
        // One store timeout for the whole renewal: a store stuck in `poll_ready` fails the
        // renewal (and degrades the store) like one stuck in `call`, instead of holding the
        // renewal, and every call waiting for it, for ever; the call gets what readiness left of
        // it. The call is timed beneath the store's breaker, so that a call that times out counts
        // there as a failure, not a cancellation.
        let deadline = Instant::now() + fleet.store_timeout;
        let ready =
            tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| store.poll_ready(cx)))
                .await;
        let result = match ready {
            Ok(Ok(())) => store.call(Timed { take, deadline }).await,
            Ok(Err(error)) => Err(error),
            Err(elapsed) => Err(elapsed.into()),
        };
        let now = fleet.clock.now();
        let slot = fleet.table.slot(renewing.index);
        // A quick look only: the key may still lose the slot before its grant is credited, which
        // the credit itself detects.
        let ours = slot.tag.load(Acquire) == tag;
        let health = match result {
            Ok(grant) => {
                let recovered = fleet.degraded.swap(0, AcqRel) != 0;
                if ours {
                    fleet.at(Point::Credit);
                    let credited = slot.cell.credit(
                        generation,
                        grant,
                        want,
                        now,
                        (fleet.lease_min, fleet.lease_max),
                        fleet.lease_lasts,
                    );
                    // Admissions to spend now: only as many waiters can proceed. A denial or a
                    // reservation refuses them all, with the time to come back.
                    if credited && grant.granted > 0 && grant.wait.is_zero() {
                        renewing.wake = Wake::Only(grant.granted.into());
                    }
                }
                recovered.then_some(false)
            }
            Err(_) => {
                fleet.store_failures.fetch_add(1, Relaxed);
                fleet.degrade(now).then_some(true)
            }
        };
        // Even if the key lost the slot meanwhile: its mark, if still there, comes off. Before
        // the event: an observer that panics there leaves nothing held.
        drop(renewing);
        if health.is_some() {
            fleet.report_health();
        }
    }

    /// Reports the store's health as it is now, if that is not what was last reported: read
    /// and reported under one lock, so that the events follow the state in order (a change
    /// undone before its report is not reported at all).
    fn report_health(&self) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let degraded = self.is_degraded();
        if *reported != degraded {
            *reported = degraded;
            self.emitter().emit(EventKind::StoreHealth { degraded });
        }
    }

    /// Marks the store degraded at `now`; whether it was not already (the caller reports it,
    /// once whatever it holds is given back).
    fn degrade(&self, now: u64) -> bool {
        self.next_probe.store(now + self.probe_every, Relaxed);
        let since = now.saturating_add(1);
        if self
            .degraded
            .compare_exchange(0, since, AcqRel, Relaxed)
            .is_err()
        {
            return false;
        }
        self.at(Point::Degraded);
        true
    }

    fn quota(&self) -> Quota {
        *self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides a call of `place`'s key, in the key's slot (given one if the key is new). Returns
    /// the slot and the verdict.
    #[inline]
    fn decide(self: &Arc<Self>, place: Place, key: &dyn fmt::Display) -> (usize, Verdict) {
        loop {
            let index = self.entry(place);
            self.at(Point::Found);
            // `None`: the key lost the slot to another before anything was decided there; it
            // starts over in a new one.
            if let Some(verdict) = self.decide_in(index, place, key) {
                return (index, verdict);
            }
        }
    }

    /// Decides a call of `place`'s key in the slot at `index`, or `None` if the slot turns out
    /// not to hold the key: nothing of the key that holds it is spent, and nobody is refused for
    /// its state.
    #[inline]
    fn decide_in(
        self: &Arc<Self>,
        index: usize,
        place: Place,
        key: &dyn fmt::Display,
    ) -> Option<Verdict> {
        let slot = self.table.slot(index);
        let lease = &slot.cell;
        match lease.take(|| slot.tag.load(Acquire) == place.tag) {
            Spent::Taken(left, generation) => {
                self.taken(index, place, key, left);
                Some(Verdict::Admit(Unit::Leased(generation)))
            }
            Spent::Lost => None,
            Spent::Empty => self.without_lease(index, place, key),
        }
    }

    /// After a call took one of the lease's admissions, leaving `left`: asks for the next lease
    /// at low water. A renewal wakes only as many waiting calls as it brought admissions (see
    /// [`Wake::Only`]), so the call that takes the last one either starts the next renewal, whose
    /// end wakes the others, or, when none can start, wakes them all to decide again.
    #[inline]
    fn taken(self: &Arc<Self>, index: usize, place: Place, key: &dyn fmt::Display, left: u64) {
        let lease = &self.table.slot(index).cell;
        if left <= lease.low_water(self.lease_min) && !self.renew(index, place, key) && left == 0 {
            lease.notify.notify_waiters();
        }
    }

    /// Moves the key's reserved admissions, found due at `now`, to its lease, holding the key's
    /// renewal mark: the renewal that would store the next reservation holds it too, so a call
    /// that found these due never takes a later reservation instead. False, moving nothing, if
    /// the mark is held (by the renewal in flight, or by a call moving them): the caller waits
    /// for it to come off.
    fn move_due(&self, lease: &Lease, place: Place, now: u64, holds: impl Fn() -> bool) -> bool {
        // As in `renew`: the keys served, read before the check that the slot holds the key.
        let generation = lease.generation();
        let mark = Lease::mark(place.tag, generation);
        if lease
            .renewing
            .compare_exchange(0, mark, AcqRel, Relaxed)
            .is_err()
        {
            return false;
        }
        let mut marked = Marked {
            lease,
            mark,
            wake: Wake::All,
        };
        // Under the mark only a clearing for another key changes the reservation, and then its
        // count of keys served too: read again, it is taken only if it is still due and still
        // this tenure's.
        if holds() && lease.reserved() != 0 && lease.due() <= now {
            let taken = lease.take_reserved(generation);
            self.at(Point::Reserved);
            lease.add_reserved(taken);
            if taken & lease::COUNT != 0 {
                marked.wake = Wake::Only(taken & lease::COUNT);
            }
        }
        true
    }

    /// Decides a call whose key had no lease left, or `None` if the slot turns out not to hold
    /// the key.
    fn without_lease(
        self: &Arc<Self>,
        index: usize,
        place: Place,
        key: &dyn fmt::Display,
    ) -> Option<Verdict> {
        let slot = self.table.slot(index);
        let holds = || slot.tag.load(Acquire) == place.tag;
        let lease = &slot.cell;
        let now = self.clock.now();
        // Twice at most: a renewal that ends between the look at the lease and the start of the
        // next one leaves a lease, a reservation or a denial to decide on again. Every decision
        // on what the slot holds is made only while the slot holds the key.
        for _ in 0..2 {
            if lease.reserved() != 0 {
                let due = lease.due();
                if due > now {
                    return holds().then(|| {
                        Verdict::Reject(RateLimited {
                            retry_after: Duration::from_nanos(due - now),
                        })
                    });
                }
                self.at(Point::Due);
                if !self.move_due(lease, place, now, holds) {
                    return holds().then_some(Verdict::Wait);
                }
            }
            self.at(Point::NoLease);
            match lease.take(holds) {
                Spent::Taken(left, generation) => {
                    self.taken(index, place, key, left);
                    return Some(Verdict::Admit(Unit::Leased(generation)));
                }
                Spent::Lost => return None,
                Spent::Empty => {}
            }
            if self.is_degraded() {
                self.renew(index, place, key);
                return self.fallback(index, place, now);
            }
            let denied = lease.denied_until();
            if denied > now {
                return holds().then(|| {
                    Verdict::Reject(RateLimited {
                        retry_after: Duration::from_nanos(denied - now),
                    })
                });
            }
            if self.renew(index, place, key) {
                return Some(Verdict::Wait);
            }
        }
        self.undecided(index, place, now)
    }

    /// The decision on a call the store's leases could not settle: the failure mode's while the
    /// store is degraded; a refusal while it is healthy, so that the local limit (by default the
    /// whole fleet's quota, in this instance alone) never adds to what the store grants. `None`
    /// if the slot at `index` does not hold `place`'s key.
    fn undecided(&self, index: usize, place: Place, now: u64) -> Option<Verdict> {
        if self.is_degraded() {
            self.fallback(index, place, now)
        } else {
            let slot = self.table.slot(index);
            let limited = self.busy(&slot.cell, now);
            (slot.tag.load(Acquire) == place.tag).then_some(Verdict::Reject(limited))
        }
    }

    /// The refusal of a call that waited as long as it may for a healthy store's lease: come
    /// back when the slots reserved for this instance are due, when the store said it would have
    /// room, or else once the renewal in flight has had its time.
    fn busy(&self, lease: &Lease, now: u64) -> RateLimited {
        let reserved = match lease.reserved() {
            0 => 0,
            _ => lease.due(),
        };
        let until = reserved.max(lease.denied_until());
        let retry_after = match until.checked_sub(now) {
            Some(left) if left > 0 => Duration::from_nanos(left),
            _ => self.wait_limit / 2,
        };
        RateLimited { retry_after }
    }

    /// The failure mode's decision for `place`'s key in the slot at `index`, while the store is
    /// degraded; `None` if the slot does not hold the key (its local limit is the new key's).
    fn fallback(&self, index: usize, place: Place, now: u64) -> Option<Verdict> {
        match &self.local {
            Some(rule) => {
                let slot = self.table.slot(index);
                let holds = || slot.tag.load(Acquire) == place.tag;
                Some(match rule.decide_keyed(&slot.cell.local, now, 0, holds)? {
                    Decision::Reject(nanos) => Verdict::Reject(RateLimited {
                        retry_after: Duration::from_nanos(nanos),
                    }),
                    // No wait is allowed: a slot is one now.
                    Decision::Admit(slot) | Decision::Wait(_, slot) => {
                        Verdict::Admit(Unit::Local(slot))
                    }
                })
            }
            None => Some(Verdict::Reject(RateLimited {
                retry_after: Duration::from_nanos(self.probe_every),
            })),
        }
    }

    /// Waits for a lease for `key`: woken by each renewal, deciding again each time, and
    /// falling back if the store takes longer than it may. Admitted, the call's [`Admission`]
    /// holds what it spent until the call is made; refused, the refusal is reported here.
    ///
    /// The call is counted among the waiting until the wait decides (or is dropped) by
    /// `waiter`, which also holds the fleet for the wait: one reference per waiting call.
    async fn wait(
        waiter: Waiter<St, Clk, O>,
        mut index: usize,
        place: Place,
        key: String,
    ) -> Result<Admission<St, Clk, O>, RateLimited> {
        let this = waiter.fleet();
        let waited = tokio::time::timeout(this.wait_limit, async {
            let mut woken = false;
            loop {
                let slot = this.table.slot(index);
                if slot.tag.load(Acquire) != place.tag {
                    // The key lost its slot to another: start over in a new one. A wake taken
                    // here may have been meant for a call of the slot's new key: passed on.
                    if woken {
                        slot.cell.notify.notify_one();
                        woken = false;
                    }
                    index = this.entry(place);
                    continue;
                }
                let notified = slot.cell.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match this.decide_in(index, place, &key) {
                    Some(Verdict::Admit(unit)) => return Ok(unit),
                    Some(Verdict::Reject(limited)) => return Err(limited),
                    Some(Verdict::Wait) => {
                        notified.await;
                        woken = true;
                    }
                    // Lost the slot: the check above finds it a new one.
                    None => {}
                }
            }
        })
        .await;
        let decided = match waited {
            Ok(decided) => decided,
            Err(_) => {
                // While the store is healthy, it answered, but not with an admission for this
                // call in time: the key is busy across the fleet, and the call is refused.
                let verdict = loop {
                    if let Some(verdict) = this.undecided(index, place, this.clock.now()) {
                        break verdict;
                    }
                    index = this.entry(place);
                };
                match verdict {
                    Verdict::Admit(unit) => Ok(unit),
                    Verdict::Reject(limited) => Err(limited),
                    // A call the leases could not settle is never told to wait again.
                    Verdict::Wait => Err(this.busy(&this.table.slot(index).cell, this.clock.now())),
                }
            }
        };
        // Counted no more (before the events), and the fleet handed on to the admission.
        let fleet = waiter.end();
        match decided {
            // Reported `Permitted` once it is held (see `Leasing`).
            Ok(unit) => Ok(Admission {
                fleet,
                index,
                unit: Some(unit),
                key,
                reported: false,
            }),
            Err(limited) => {
                fleet.rejected.increment();
                fleet.emitter().emit_keyed(
                    EventKind::Rejected {
                        reason: RejectReason::RateLimited,
                    },
                    &Shown(&key),
                );
                Err(limited)
            }
        }
    }
}

/// What a call admitted after its wait spent, held until the call is made. Dropped before then
/// (the call went away while the service beneath was made ready again, or that service failed),
/// it gives it back ([`Fleet::give_back`]), then reports the call, if it was reported
/// `Permitted`, as `Cancelled` (not while a panic unwinds: a second panic in the observer would
/// abort the process), as the keyed limiter does for a call dropped before its slot is used.
struct Admission<St, Clk: 'static, O: Observer + 'static> {
    fleet: Arc<Fleet<St, Clk, O>>,
    index: usize,
    /// `None` once the call is made.
    unit: Option<Unit>,
    key: String,
    /// Whether the call was reported `Permitted`.
    reported: bool,
}

impl<St, Clk, O: Observer> Drop for Admission<St, Clk, O> {
    fn drop(&mut self) {
        let Some(unit) = self.unit.take() else {
            return;
        };
        // State first (what was spent given back), then the event.
        self.fleet.give_back(self.index, unit);
        if self.reported && !std::thread::panicking() {
            self.fleet
                .source
                .emitter()
                .emit_keyed(EventKind::Cancelled, &Shown(&self.key));
        }
    }
}

/// A call counted among those waiting for a lease, until its wait ends ([`Waiter::end`]) or it
/// is dropped. It holds the fleet for the wait: the wait's one reference, not another beside it.
struct Waiter<St, Clk: 'static, O: Observer + 'static>(Option<Arc<Fleet<St, Clk, O>>>);

impl<St, Clk, O: Observer> Waiter<St, Clk, O> {
    fn new(fleet: Arc<Fleet<St, Clk, O>>) -> Self {
        fleet.waiting.increment();
        Waiter(Some(fleet))
    }

    /// The fleet, until [`end`](Self::end).
    fn fleet(&self) -> &Arc<Fleet<St, Clk, O>> {
        self.0
            .as_ref()
            .expect("a waiter holds the fleet until it ends")
    }

    /// The wait is over: no longer counted, and the fleet handed back.
    fn end(mut self) -> Arc<Fleet<St, Clk, O>> {
        let fleet = self.0.take().expect("a waiter ends once");
        fleet.waiting.decrement();
        fleet
    }
}

impl<St, Clk, O: Observer> Drop for Waiter<St, Clk, O> {
    fn drop(&mut self) {
        if let Some(fleet) = &self.0 {
            fleet.waiting.decrement();
        }
    }
}

pin_project! {
    /// A call's wait for a lease, then the admission it took, held until the call is made.
    struct Leasing<F, St, Clk: 'static, O: Observer> {
        // Counted as waiting until it ends (see `Waiter`).
        #[pin]
        wait: F,
        admission: Option<Admission<St, Clk, O>>,
    }
}

impl<F, St, Clk, O> Turn for Leasing<F, St, Clk, O>
where
    F: Future<Output = Result<Admission<St, Clk, O>, RateLimited>> + Send,
    St: Send + Sync,
    Clk: Send + Sync,
    O: Observer,
{
    fn poll_turn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RateLimited>> {
        let this = self.project();
        let waited = std::task::ready!(this.wait.poll(cx));
        let mut admission = waited?;
        // The admission is held (given back if the call is not made) before anyone hears of it:
        // an observer that panics at `Permitted` unwinds through it, and it goes back.
        admission
            .fleet
            .source
            .emitter()
            .emit_keyed(EventKind::Permitted, &Shown(&admission.key));
        admission.reported = true;
        *this.admission = Some(admission);
        Poll::Ready(Ok(()))
    }

    fn used(self: Pin<&mut Self>) {
        if let Some(mut admission) = self.project().admission.take() {
            admission.unit = None;
        }
    }
}

/// Limits the rate of calls per key across a fleet: every instance's layer over the same
/// [`Store`] shares one [`Quota`] per key. See the [module docs](self) for leases and failure
/// modes.
///
/// The key function returns `None` for requests the limit does not apply to; they pass
/// uncounted. A call over its key's quota fails with [`RateLimited`]. A call that finds its
/// key's lease spent while the next is on its way waits for it in its response future, and then
/// makes the call on the inner service made ready for it, this service keeping a clone for its
/// next call (which is why the inner service must be `Clone`). Such a call is reported
/// `Permitted` once it has taken an admission of the new lease, and holds it until the call is
/// made: dropped before then, or failed by the service beneath as it is made ready again, it
/// gives the admission back and is reported `Cancelled`.
pub struct FleetRateLimitLayer<St, F, Clk: 'static = TokioClock, O: 'static = ()> {
    shared: Arc<Fleet<St, Clk, O>>,
    key: F,
}

impl<St: Store, F> FleetRateLimitLayer<St, F> {
    /// Starts a builder for a limit of `quota` per key across every instance using `store`, the
    /// key taken from each request by `key`.
    pub fn builder(store: St, quota: Quota, key: F) -> FleetBuilder<St, F> {
        FleetBuilder {
            store,
            key,
            settings: FleetSettings {
                quota,
                name: Cow::Borrowed("fleet_rate_limit"),
                max_keys: 10_000,
                lease: (1, 32),
                lease_lasts: Duration::from_millis(100),
                reserve_ahead: Duration::from_secs(1),
                store_timeout: Duration::from_millis(100),
                probe_every: Duration::from_millis(200),
                breaker: None,
                local: Some(quota),
            },
            clock: TokioClock::new(),
            observer: (),
        }
    }
}

/// Builds a [`FleetRateLimitLayer`].
pub struct FleetBuilder<St, F, Clk = TokioClock, O = ()> {
    store: St,
    key: F,
    settings: FleetSettings,
    clock: Clk,
    observer: O,
}

/// A [`FleetBuilder`]'s settings that do not change its type.
#[derive(Debug)]
struct FleetSettings {
    quota: Quota,
    name: Cow<'static, str>,
    max_keys: usize,
    lease: (u32, u32),
    lease_lasts: Duration,
    reserve_ahead: Duration,
    store_timeout: Duration,
    probe_every: Duration,
    breaker: Option<CircuitBreakerLayer>,
    /// The local limit while the store is degraded; `None` to fail closed.
    local: Option<Quota>,
}

impl<St, F, Clk, O> FleetBuilder<St, F, Clk, O> {
    /// The layer's name, in events.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// The most keys this instance keeps leases for (default 10,000; about 100 bytes each,
    /// allocated when the layer is built). A key dropped to make room loses its unspent lease.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.settings.max_keys = max_keys;
        self
    }

    /// The smallest and largest lease, in admissions (default 1 and 32). The largest bounds the
    /// fleet's overshoot: at most `instances × (max + ⌈max / 4⌉)` per key above the quota in any
    /// window (40 per instance at the default).
    pub fn lease(mut self, min: u32, max: u32) -> Self {
        self.settings.lease = (min, max);
        self
    }

    /// How long a lease should last at the key's rate (default 100 ms): leases grow for keys that
    /// spend them faster and shrink for keys that spend them slower.
    pub fn lease_lasts(mut self, lasts: Duration) -> Self {
        self.settings.lease_lasts = lasts;
        self
    }

    /// How far ahead the store may reserve a key's next slots when it has none free now (default
    /// 1 s; zero: never). An instance holding a reservation refuses calls until it is due, with
    /// the exact time to come back, and asks the store nothing meanwhile: a key held over its
    /// quota by many instances costs one store call per lease, not one per instance each time a
    /// slot frees. Reserved slots an instance does not use (its callers gave up, it stopped) are
    /// lost, at most one lease's worth.
    pub fn reserve_ahead(mut self, ahead: Duration) -> Self {
        self.settings.reserve_ahead = ahead;
        self
    }

    /// The longest a store call may take, waiting for the store to be ready included, before
    /// it counts as a failure and marks the store degraded (default 100 ms).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }

    /// The circuit breaker on store calls (default: open after 3 failures in a row, for 1 s
    /// doubling to 10 s). Its handle shows the store's state.
    pub fn store_breaker(mut self, breaker: CircuitBreakerLayer) -> Self {
        self.settings.breaker = Some(breaker);
        self
    }

    /// How often, while the store is degraded, a call tries it again (default 200 ms).
    pub fn probe_every(mut self, every: Duration) -> Self {
        self.settings.probe_every = every;
        self
    }

    /// While the store is degraded, limits each key to `local` in this instance alone (the
    /// default, with the fleet's quota).
    pub fn fail_open(mut self, local: Quota) -> Self {
        self.settings.local = Some(local);
        self
    }

    /// While the store is degraded, fails every call that has no lease left.
    pub fn fail_closed(mut self) -> Self {
        self.settings.local = None;
        self
    }

    /// Reads the time from `clock` (default: tokio's).
    pub fn clock<Clk2: Clock>(self, clock: Clk2) -> FleetBuilder<St, F, Clk2, O> {
        FleetBuilder {
            store: self.store,
            key: self.key,
            settings: self.settings,
            clock,
            observer: self.observer,
        }
    }

    /// Sends the layer's events to `observer`: permitted and rejected (reason `RateLimited`),
    /// each with its key, cancelled (with its key) for a call permitted after a wait and not
    /// made, `KeyEvicted`, and `StoreHealth` when the store becomes degraded or healthy again.
    pub fn observer<O2: Observer>(self, observer: O2) -> FleetBuilder<St, F, Clk, O2> {
        FleetBuilder {
            store: self.store,
            key: self.key,
            settings: self.settings,
            clock: self.clock,
            observer,
        }
    }

    /// Checks the settings and builds the layer, allocating its table of keys. Every mistake is
    /// an error, never a panic: an invalid quota (fleet or local), no keys or more than 2^28,
    /// lease bounds not `1 ≤ min ≤ max`, a zero `lease_lasts`, store timeout or probe interval,
    /// or any of those or `reserve_ahead` longer than about nine years.
    pub fn build(self) -> Result<FleetRateLimitLayer<St, F, Clk, O>, ConfigError>
    where
        St: Store,
        Clk: Clock,
        O: Observer,
    {
        let FleetBuilder {
            store,
            key,
            settings,
            clock,
            observer,
        } = self;
        settings.quota.validate()?;
        if let Some(local) = &settings.local {
            local.validate()?;
        }
        if settings.max_keys == 0 {
            return Err(ConfigError::MaxKeys);
        }
        if settings.max_keys > MAX_KEYS {
            return Err(ConfigError::TooManyKeys);
        }
        let (min, max) = settings.lease;
        if min == 0 || min > max {
            return Err(ConfigError::Lease { min, max });
        }
        for (value, what) in [
            (settings.lease_lasts, "lease_lasts"),
            (settings.store_timeout, "store timeout"),
            (settings.probe_every, "probe interval"),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(what));
            }
        }
        for (value, what) in [
            (settings.lease_lasts, "lease_lasts"),
            (settings.store_timeout, "store timeout"),
            (settings.probe_every, "probe interval"),
            (settings.reserve_ahead, "reserve_ahead"),
        ] {
            if nanos(value) > MAX_SPAN {
                return Err(ConfigError::TooLong(what));
            }
        }
        let breaker = match settings.breaker {
            Some(breaker) => breaker,
            None => CircuitBreakerLayer::builder()
                .name(format!("{}.store", settings.name))
                .no_failure_rate()
                .consecutive_failures(3)
                .open_duration(Duration::from_secs(1))
                .open_backoff(2.0, Duration::from_secs(10))
                .build()
                .expect("the store breaker's settings are valid"),
        };
        let left: fn(&Timed) -> Option<Duration> = Timed::left;
        let store = breaker.layer(TimeoutLayer::per_request(left).layer(Untimed(store)));
        Ok(FleetRateLimitLayer {
            shared: Arc::new(Fleet {
                table: Table::new(settings.max_keys),
                store,
                quota: Mutex::new(settings.quota),
                local: settings.local.as_ref().map(Rule::new),
                lease_min: min.into(),
                lease_max: max.into(),
                lease_lasts: nanos(settings.lease_lasts),
                reserve_ahead: settings.reserve_ahead,
                probe_every: nanos(settings.probe_every),
                store_timeout: settings.store_timeout,
                wait_limit: settings.store_timeout.saturating_mul(2),
                clock,
                source: Source::new(settings.name, observer),
                degraded: AtomicU64::new(0),
                reported: Mutex::new(false),
                next_probe: AtomicU64::new(0),
                store_calls: AtomicU64::new(0),
                store_failures: AtomicU64::new(0),
                rejected: Striped::new(),
                waiting: Striped::new(),
                #[cfg(test)]
                hook: tests::Hook::default(),
            }),
            key,
        })
    }
}

impl<St, F, Clk, O> fmt::Debug for FleetBuilder<St, F, Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<St, F, Clk, O> FleetRateLimitLayer<St, F, Clk, O> {
    /// A handle on this layer's limit.
    pub fn handle(&self) -> FleetHandle<St, Clk, O> {
        FleetHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<St, F: Clone, Clk, O> Clone for FleetRateLimitLayer<St, F, Clk, O> {
    fn clone(&self) -> Self {
        FleetRateLimitLayer {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<St, F, Clk, O> fmt::Debug for FleetRateLimitLayer<St, F, Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRateLimitLayer")
            .field("name", &self.shared.source.name())
            .field("keys", &self.shared.table.keys())
            .finish()
    }
}

impl<S, St, F: Clone, Clk, O> Layer<S> for FleetRateLimitLayer<St, F, Clk, O> {
    type Service = FleetRateLimit<S, St, F, Clk, O>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetRateLimit {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service of [`FleetRateLimitLayer`].
pub struct FleetRateLimit<S, St, F, Clk: 'static = TokioClock, O: 'static = ()> {
    inner: S,
    shared: Arc<Fleet<St, Clk, O>>,
    key: F,
}

impl<S: Clone, St, F: Clone, Clk, O> Clone for FleetRateLimit<S, St, F, Clk, O> {
    fn clone(&self) -> Self {
        FleetRateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, St, F, Clk, O> fmt::Debug for FleetRateLimit<S, St, F, Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRateLimit")
            .field("name", &self.shared.source.name())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, St, F, K, Clk, O, Req> Service<Req> for FleetRateLimit<S, St, F, Clk, O>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    St: Store,
    F: Fn(&Req) -> Option<K>,
    K: Hash + fmt::Display,
    Clk: Clock,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return KeyedResponseFuture::called(self.inner.call(req));
        };
        let fleet = &self.shared;
        let emit = fleet.emitter();
        let place = fleet.table.locate(&key);
        let (index, verdict) = fleet.decide(place, &key);
        match verdict {
            Verdict::Admit(unit) => {
                // Given back if the observer or the inner call panics before the call is made.
                let unspent = Unspent { fleet, index, unit };
                emit.emit_keyed(EventKind::Permitted, &Shown(&key));
                let future = self.inner.call(req);
                unspent.used();
                KeyedResponseFuture::called(future)
            }
            Verdict::Reject(limited) => {
                fleet.rejected.increment();
                // What readiness reserved beneath is given back (see `ready_service`).
                drop(ready_service(&mut self.inner));
                emit.emit_keyed(
                    EventKind::Rejected {
                        reason: RejectReason::RateLimited,
                    },
                    &Shown(&key),
                );
                KeyedResponseFuture::failed(limited)
            }
            Verdict::Wait => {
                let wait = Leasing {
                    wait: Fleet::wait(
                        Waiter::new(Arc::clone(fleet)),
                        index,
                        place,
                        key.to_string(),
                    ),
                    admission: None,
                };
                let ready = waiting_service(&mut self.inner);
                KeyedResponseFuture::waiting(Box::pin(wait), ready, req)
            }
        }
    }
}

/// A handle on a fleet-wide rate limiter: its quota, changeable at run time, the store's health,
/// and counts of store calls.
pub struct FleetHandle<St, Clk: 'static = TokioClock, O: 'static = ()> {
    pub(crate) shared: Arc<Fleet<St, Clk, O>>,
}

impl<St: Store, Clk: Clock, O: Observer> FleetHandle<St, Clk, O> {
    /// The quota each key gets across the fleet.
    pub fn quota(&self) -> Quota {
        self.shared.quota()
    }

    /// Replaces this instance's quota per key, from its next lease on. Every instance sharing the
    /// store should be given the same quota.
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        quota.validate()?;
        *self.shared.quota.lock().unwrap_or_else(|e| e.into_inner()) = quota;
        Ok(())
    }

    /// Whether the store is degraded now: its last call failed, and calls without a lease are
    /// decided by the failure mode.
    pub fn degraded(&self) -> bool {
        self.shared.is_degraded()
    }

    /// How many calls this instance has made to the store.
    pub fn store_calls(&self) -> u64 {
        self.shared.store_calls.load(Relaxed)
    }

    /// How many of them failed or timed out.
    pub fn store_failures(&self) -> u64 {
        self.shared.store_failures.load(Relaxed)
    }

    /// The admissions this instance holds for `key` and has not spent yet, those reserved for
    /// later included.
    pub fn leased<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        let table = &self.shared.table;
        table.find(table.locate(key)).map_or(0, |index| {
            let lease = &table.slot(index).cell;
            lease.left() + lease.reserved()
        })
    }

    /// How many keys this instance holds leases or state for.
    pub fn keys(&self) -> u64 {
        self.shared.table.keys()
    }

    /// How long the store has been degraded, if it is.
    #[cfg(feature = "health")]
    pub(crate) fn degraded_for(&self) -> Option<Duration> {
        let fleet = &*self.shared;
        let since = fleet.degraded.load(Relaxed).checked_sub(1)?;
        Some(Duration::from_nanos(
            fleet.clock.now().saturating_sub(since),
        ))
    }

    /// Whether a call would try the store again now, were it degraded: the probe's time has
    /// come (only a call probes, and none may come while `/ready` fails). Spends nothing.
    #[cfg(feature = "health")]
    pub(crate) fn probe_due(&self) -> bool {
        let fleet = &*self.shared;
        fleet.clock.now() >= fleet.next_probe.load(Relaxed)
    }

    /// Whether calls without a lease fail while the store is degraded.
    #[cfg(feature = "health")]
    pub(crate) fn fails_closed(&self) -> bool {
        self.shared.local.is_none()
    }

    /// Calls turned away since the layer was built.
    #[cfg(feature = "health")]
    pub(crate) fn rejected(&self) -> u64 {
        self.shared.rejected.sum()
    }

    /// How many calls wait for a lease now (their key's lease spent while the next is on its
    /// way). Counted only by calls that wait.
    pub fn waiting(&self) -> u64 {
        self.shared.waiting.sum()
    }
}

impl<St, Clk, O> Clone for FleetHandle<St, Clk, O> {
    fn clone(&self) -> Self {
        FleetHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<St, Clk, O> fmt::Debug for FleetHandle<St, Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetHandle")
            .field("name", &self.shared.source.name())
            .field("degraded", &self.shared.is_degraded())
            .field("store_calls", &self.shared.store_calls.load(Relaxed))
            .finish()
    }
}
