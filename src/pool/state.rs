//! The pool's shared state: the endpoint registry, and each endpoint's lock-free state (its
//! ejection, its peak-EWMA latency, its windows and counters).
//!
//! An endpoint's ejection state and the time it ends live in one word, so that a reader never sees
//! an ejection with another ejection's end. Every transition is a compare-and-swap on that word;
//! the pool-wide counts of ejected and held endpoints move only with a transition that won.

use super::config::{Config, WhenUnhealthy};
use crate::core::window::{Sample, TimeWindow};
use crate::core::{EjectReason, Emitter, EventKind, Observer, Outcome, Source};
use crate::sync::{nanos, AtomicU32, AtomicU64, Ordering::*};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::time::Instant;

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// In rotation.
pub(crate) const AVAILABLE: u64 = 0;
/// In rotation although a rule would eject it: the cap on ejections held it in.
pub(crate) const HELD: u64 = 1;
/// Out of rotation until the time in the word; then one probe may claim it.
pub(crate) const EJECTED: u64 = 2;
/// Out of rotation, its one probe in flight.
pub(crate) const PROBING: u64 = 3;
/// Discovery removed it.
pub(crate) const REMOVED: u64 = 4;
/// Out of rotation, its one probe claimed by a pool clone's `poll_ready` and not sent yet; the
/// time in the word is when it was claimed. A claim left unsent for the probe-claim timeout
/// (`Config::claim_timeout`: a clone made ready and never called) is taken over by the next pool
/// that wants to probe.
pub(crate) const CLAIMED: u64 = 5;
/// Set beside `EJECTED` or `PROBING` when the ejection came from a failed readiness: such an
/// endpoint is not polled again before its time, even by a pool in panic.
const NOT_READY: u64 = 1 << TAG_BITS;
const TIME_SHIFT: u32 = TAG_BITS + 1;
const MAX_TIME: u64 = u64::MAX >> TIME_SHIFT;

#[inline(always)]
pub(crate) fn tag(word: u64) -> u64 {
    word & TAG_MASK
}

#[inline(always)]
fn time(word: u64) -> u64 {
    word >> TIME_SHIFT
}

/// When the probe of an endpoint in the state `word` may be claimed: its ejection's end, or
/// (claimed) its claim's takeover time, `claim_timeout` nanoseconds after the claim.
#[inline(always)]
fn probe_time(word: u64, claim_timeout: u64) -> Option<u64> {
    match tag(word) {
        EJECTED => Some(time(word)),
        CLAIMED => Some(time(word).saturating_add(claim_timeout)),
        _ => None,
    }
}

/// Whether an ejected endpoint's time is up, or a claimed probe has waited too long for its call.
#[inline(always)]
fn probe_due(word: u64, now: u64, claim_timeout: u64) -> bool {
    probe_time(word, claim_timeout).is_some_and(|t| t <= now)
}

#[inline(always)]
fn pack(time: u64, tag: u64, not_ready: bool) -> u64 {
    time.min(MAX_TIME) << TIME_SHIFT | if not_ready { NOT_READY } else { 0 } | tag
}

/// Bits of the change count kept in the fail-fast refusal cache's word; the rest hold its time,
/// in milliseconds (44 bits: over 500 years).
const QUIET_COUNT_BITS: u32 = 20;
const QUIET_TIME_BITS: u32 = 64 - QUIET_COUNT_BITS;
const QUIET_TIME_MASK: u64 = (1 << QUIET_TIME_BITS) - 1;
const MILLI: u64 = 1_000_000;

/// The refusal cache's word: the change count `changes` (its low 20 bits) and the time `until`
/// (nanoseconds), rounded down to the millisecond so that the cache never says quiet past it.
/// A count that wrapped (a multiple of 2^20 changes since the refusal that recorded it, with no
/// refusal between to record another) would be mistaken for the old one: every refusal from
/// then until the time recorded (the first probe time as it stood then) or the next change
/// would trust it, and skip a probe that came due meanwhile (a claim given back, say).
#[inline]
fn quiet_word(changes: u64, until: u64) -> u64 {
    (changes << QUIET_TIME_BITS) | (until / MILLI).min(QUIET_TIME_MASK)
}

/// Whether the refusal cache's `word` holds for the change count `changes` at `now`. The word 0
/// (nothing known) never holds: its time is 0.
#[inline]
fn quiet_holds(word: u64, changes: u64, now: u64) -> bool {
    word >> QUIET_TIME_BITS == changes & ((1 << QUIET_COUNT_BITS) - 1)
        && now / MILLI < word & QUIET_TIME_MASK
}

/// One endpoint of a pool: its service (cloned for each call), and its state.
pub(crate) struct Endpoint<K, S> {
    pub(crate) key: K,
    pub(crate) service: S,
    word: AtomicU64,
    pub(crate) in_flight: AtomicU32,
    /// The peak-EWMA round-trip time in nanoseconds (`f64` bits), as of `stamp`.
    ewma: AtomicU64,
    stamp: AtomicU64,
    /// Whether a call has set the estimate (the first replaces the initial guess).
    sampled: AtomicBool,
    /// One more than when the last failure penalty was applied; 0 when the last sample was no
    /// failure.
    penalized: AtomicU64,
    consecutive: AtomicU32,
    consecutive_local: AtomicU32,
    window: TimeWindow,
    /// Ejections in a row: what the next ejection's length grows with. It falls by one per
    /// interval the endpoint stays in rotation.
    streak: AtomicU32,
    returned_at: AtomicU64,
    ejections: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    local_failures: AtomicU64,
}

/// Which way an endpoint may take a call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usable {
    /// In rotation.
    Rotation,
    /// Ejected, its time up: it takes one probe, claimed with [`Endpoint::claim_probe`].
    ProbeDue,
    /// Out of rotation, taken only because the pool is in panic.
    Panic,
}

impl<K, S> Endpoint<K, S> {
    pub(crate) fn new(key: K, service: S, config: &Config, now: u64) -> Self {
        Endpoint {
            key,
            service,
            word: AtomicU64::new(pack(0, AVAILABLE, false)),
            in_flight: AtomicU32::new(0),
            ewma: AtomicU64::new((nanos(config.initial_rtt) as f64).to_bits()),
            stamp: AtomicU64::new(now),
            sampled: AtomicBool::new(false),
            penalized: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            window: TimeWindow::new(config.interval, 10),
            streak: AtomicU32::new(0),
            returned_at: AtomicU64::new(now),
            ejections: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            local_failures: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn word(&self) -> u64 {
        self.word.load(Acquire)
    }

    /// Whether, and how, the endpoint may take a call at `now`; `claim_timeout` is the pool's
    /// probe-claim timeout, in nanoseconds.
    #[inline]
    pub(crate) fn usable(&self, now: u64, panic: bool, claim_timeout: u64) -> Option<Usable> {
        let word = self.word();
        match tag(word) {
            AVAILABLE | HELD => Some(Usable::Rotation),
            EJECTED | CLAIMED if probe_due(word, now, claim_timeout) => Some(Usable::ProbeDue),
            EJECTED | PROBING | CLAIMED if panic && word & NOT_READY == 0 => Some(Usable::Panic),
            _ => None,
        }
    }

    /// Claims the one probe of an endpoint whose ejection is over (or takes over a claim left
    /// unsent for `claim_timeout` nanoseconds). The claim, a word no other claim has, is what
    /// [`send_probe`](Self::send_probe) and [`Shared::release_claim`] take.
    pub(crate) fn claim_probe(&self, now: u64, claim_timeout: u64) -> Option<u64> {
        let word = self.word();
        if !probe_due(word, now, claim_timeout) {
            return None;
        }
        // A takeover comes at least the claim timeout (never zero) after the claim it replaces, so the new
        // word differs from it: the clone that lost it cannot mistake it for its own.
        let claim = pack(now, CLAIMED, word & NOT_READY != 0);
        self.word
            .compare_exchange(word, claim, AcqRel, Acquire)
            .ok()
            .map(|_| claim)
    }

    /// Gives back a probe claimed as `claim` and not sent: its ejection is over, so the next
    /// pool that wants to probe may claim it. False if the claim was lost since.
    pub(crate) fn unclaim(&self, claim: u64) -> bool {
        self.word
            .compare_exchange(claim, claim & !TAG_MASK | EJECTED, AcqRel, Acquire)
            .is_ok()
    }

    /// The call of a probe claimed as `claim` is made: the probe is in flight. False when the
    /// claim was lost (taken over, or the endpoint removed) since.
    pub(crate) fn send_probe(&self, claim: u64) -> bool {
        self.word
            .compare_exchange(claim, claim & !TAG_MASK | PROBING, AcqRel, Acquire)
            .is_ok()
    }

    /// The estimate decayed to `now`, in nanoseconds.
    fn rtt(&self, now: u64, tau: f64) -> f64 {
        let estimate = f64::from_bits(self.ewma.load(Relaxed));
        let elapsed = now.saturating_sub(self.stamp.load(Relaxed)) as f64;
        estimate * (-elapsed / tau).exp()
    }

    /// The load p2c compares: the decayed peak-EWMA round-trip time times (calls in flight + 1).
    #[inline]
    pub(crate) fn cost(&self, now: u64, tau: f64) -> f64 {
        self.rtt(now, tau) * (self.in_flight.load(Relaxed) as f64 + 1.0)
    }

    /// Whether a failure penalty has kept the endpoint without a call for `after`: it is given
    /// one call again, which [`claim_recheck`](Self::claim_recheck) takes.
    #[inline]
    pub(crate) fn recheck_due(&self, now: u64, after: u64) -> Option<u64> {
        let penalized = self.penalized.load(Relaxed);
        (penalized != 0 && now.saturating_sub(penalized - 1) >= after).then_some(penalized)
    }

    /// Takes the one call a penalised endpoint is given again; the next comes a period later.
    pub(crate) fn claim_recheck(&self, seen: u64, now: u64) -> bool {
        self.penalized
            .compare_exchange(seen, now + 1, AcqRel, Relaxed)
            .is_ok()
    }

    /// Feeds one round-trip time (or a failure's penalty) to the peak EWMA; `restart` drops what
    /// it had learnt (the endpoint is back from an ejection or a penalty).
    fn observe(&self, now: u64, sample: f64, tau: f64, restart: bool) {
        let previous = self.stamp.swap(now, AcqRel);
        let decay = (-(now.saturating_sub(previous) as f64) / tau).exp();
        let first = !self.sampled.swap(true, Relaxed);
        let _ = self.ewma.fetch_update(AcqRel, Relaxed, |bits| {
            let estimate = f64::from_bits(bits);
            let next = if restart || first || sample > estimate {
                sample
            } else {
                estimate * decay + sample * (1.0 - decay)
            };
            Some(next.to_bits())
        });
    }

    /// A snapshot for the handle.
    pub(crate) fn status(&self, now: u64, config: &Config) -> super::handle::EndpointStatus
    where
        K: fmt::Debug,
    {
        let word = self.word();
        let penalized = self.penalized.load(Relaxed);
        // When a penalised endpoint is given a call again.
        let recheck = penalized
            .checked_sub(1)
            .map_or(0, |at| at.saturating_add(nanos(config.schedule.base)));
        let state = match tag(word) {
            // Its last answer was a failure, and the penalty keeps it out of the draws until
            // its recheck: in rotation in name only, so it is shown apart. Once the recheck is
            // due it is an available endpoint waiting for a call to draw it.
            AVAILABLE if now < recheck => super::handle::EndpointState::Penalised {
                recheck_in: Duration::from_nanos(recheck - now),
            },
            AVAILABLE => super::handle::EndpointState::Available,
            HELD => super::handle::EndpointState::Held,
            EJECTED => super::handle::EndpointState::Ejected {
                remaining: Duration::from_nanos(time(word).saturating_sub(now)),
            },
            PROBING | CLAIMED => super::handle::EndpointState::Probing,
            _ => super::handle::EndpointState::Removed,
        };
        super::handle::EndpointStatus {
            key: format!("{:?}", self.key),
            state,
            load: self.cost(now, config.tau) / 1e9,
            rtt: Duration::from_nanos(self.rtt(now, config.tau) as u64),
            in_flight: self.in_flight.load(Relaxed),
            ejections: self.ejections.load(Relaxed),
            consecutive_failures: self.consecutive.load(Relaxed),
            consecutive_local_failures: self.consecutive_local.load(Relaxed),
            calls: self.calls.load(Relaxed),
            failures: self.failures.load(Relaxed),
            local_failures: self.local_failures.load(Relaxed),
        }
    }
}

/// The endpoints as one pool clone sees them: replaced whole on every change, never edited.
/// Weak, so that a clone that has not looked since an endpoint was removed (a template that is
/// only ever cloned, as axum keeps) does not keep its service, and with it its connection.
pub(crate) type List<K, S> = Arc<[Weak<Endpoint<K, S>>]>;

struct Registry<K, S> {
    generation: u64,
    /// What keeps the endpoints: the registry, and the calls in flight to them.
    endpoints: Vec<Arc<Endpoint<K, S>>>,
    list: List<K, S>,
}

impl<K, S> Registry<K, S> {
    /// Replaces the endpoints, and with them the list pools read.
    fn set(&mut self, endpoints: Vec<Arc<Endpoint<K, S>>>, generation: &AtomicU64) {
        self.list = endpoints.iter().map(Arc::downgrade).collect();
        self.endpoints = endpoints;
        self.generation += 1;
        generation.store(self.generation, Release);
    }
}

/// What every clone of a pool, its futures, its handle and its discovery driver share.
pub(crate) struct Shared<K, S, O> {
    pub(crate) config: Config,
    pub(crate) source: Source<O>,
    origin: Instant,
    registry: Mutex<Registry<K, S>>,
    generation: AtomicU64,
    members: AtomicU32,
    ejected: AtomicU32,
    held: AtomicU32,
    waiters: Mutex<Vec<Waker>>,
    waiting: AtomicBool,
    /// Bumped by every change a waiting pool is woken for.
    changes: AtomicU64,
    rng: Mutex<SmallRng>,
    next_sweep: AtomicU64,
    /// A fail-fast pool with no healthy endpoint: no probe may be claimed before a time, as a
    /// refused call found at a change count; both in one word (see [`quiet_word`]), written with
    /// one store, so that two refusals writing at once never leave one's count with the other's
    /// time. 0: nothing known. Lets the next refusals skip the walk of the endpoints, until a
    /// change or that time.
    quiet: AtomicU64,
}

impl<K, S, O> fmt::Debug for Shared<K, S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.source.name())
            .field("members", &self.members.load(Relaxed))
            .field("ejected", &self.ejected.load(Relaxed))
            .field("held", &self.held.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K, S, O> Shared<K, S, O> {
    pub(crate) fn new(config: Config, source: Source<O>) -> Self {
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed ^ 0x5eed),
            None => SmallRng::from_os_rng(),
        };
        let next_sweep = nanos(config.interval);
        Shared {
            config,
            source,
            origin: Instant::now(),
            registry: Mutex::new(Registry {
                generation: 0,
                endpoints: Vec::new(),
                list: Arc::from(Vec::new()),
            }),
            generation: AtomicU64::new(0),
            members: AtomicU32::new(0),
            ejected: AtomicU32::new(0),
            held: AtomicU32::new(0),
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            rng: Mutex::new(rng),
            next_sweep: AtomicU64::new(next_sweep),
            quiet: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the pool was built.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }

    /// The instant `nanos` after the pool was built.
    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry<K, S>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generation of the endpoint list: it changes with every insertion and removal.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Acquire)
    }

    /// The endpoint list now, and its generation.
    pub(crate) fn list(&self) -> (u64, List<K, S>) {
        let registry = self.registry();
        (registry.generation, registry.list.clone())
    }

    /// The endpoints now (for the handle).
    pub(crate) fn endpoints(&self) -> Vec<Arc<Endpoint<K, S>>> {
        self.registry().endpoints.clone()
    }

    /// Whether no endpoint is healthy: every one is ejected, or held in by the cap although a
    /// rule would eject it. (False for an empty pool.)
    #[inline]
    pub(crate) fn no_healthy(&self) -> bool {
        let members = self.members.load(Acquire);
        members > 0 && self.ejected.load(Acquire) + self.held.load(Acquire) >= members
    }

    pub(crate) fn counts(&self) -> (u32, u32, u32) {
        (
            self.members.load(Acquire),
            self.ejected.load(Acquire),
            self.held.load(Acquire),
        )
    }

    /// Registers `cx` to be woken at the next change of any endpoint's state or of the list.
    pub(crate) fn wait(&self, cx: &mut Context<'_>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        self.waiting.store(true, SeqCst);
    }

    /// How many changes there have been: a pool reads it before it looks for an endpoint, and
    /// again once it has registered to wait, so that a change in between is not missed.
    #[inline]
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(SeqCst)
    }

    /// Whether a refused call found, at the change count `changes` (read now, before looking),
    /// that no probe may be claimed before some time after `now`: then a fail-fast pool with no
    /// healthy endpoint refuses without walking its endpoints. One load, no lock.
    #[inline]
    pub(crate) fn quiet(&self, changes: u64, now: u64) -> bool {
        quiet_holds(self.quiet.load(SeqCst), changes, now)
    }

    /// Records that, at the change count `changes` (read before `list` was looked at), no probe
    /// may be claimed before `until`: one store of the count and the time together.
    pub(crate) fn set_quiet(&self, changes: u64, until: u64) {
        self.quiet.store(quiet_word(changes, until), SeqCst);
    }

    /// Counts a change without waking anyone: a probe claim given back, due again as it was
    /// before the claim. Every refusal that looked before it finds its count stale, so none can
    /// record (or trust) a quiet time that counted the claim; a pool clone polling meanwhile
    /// sees the count move and looks again.
    pub(crate) fn touch(&self) {
        self.changes.fetch_add(1, SeqCst);
    }

    /// Wakes every pool clone waiting for a change.
    pub(crate) fn notify(&self) {
        self.changes.fetch_add(1, SeqCst);
        if !self.waiting.load(SeqCst) {
            return;
        }
        let waiters = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            self.waiting.store(false, Release);
            std::mem::take(&mut *waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    /// The most endpoints that may be ejected at once: `max_ejection_percent` of the pool, and
    /// at least one.
    fn cap(&self) -> u32 {
        let members = self.members.load(Acquire) as u64;
        ((members * self.config.max_ejection_ppm) / 1_000_000).max(1) as u32
    }

    /// A probe sent whose call ended telling nothing (dropped, or its answer ignored): another
    /// may claim it.
    pub(crate) fn release_probe(&self, endpoint: &Endpoint<K, S>) {
        let word = endpoint.word();
        if tag(word) == PROBING
            && endpoint
                .word
                .compare_exchange(word, word & !TAG_MASK | EJECTED, AcqRel, Acquire)
                .is_ok()
        {
            self.notify();
        }
    }

    /// A probe claimed as `claim` and not sent (its clone dropped, or its choice given up):
    /// another may claim it. Nothing if the claim was lost since.
    pub(crate) fn release_claim(&self, endpoint: &Endpoint<K, S>, claim: u64) {
        if endpoint.unclaim(claim) {
            self.notify();
        }
    }

    /// The earliest time a probe may be claimed (an ejection's end, or a claim's takeover), if
    /// any: what a pool with nothing to send to waits for.
    pub(crate) fn next_expiry(&self, list: &List<K, S>) -> Option<u64> {
        list.iter()
            .filter_map(Weak::upgrade)
            .filter_map(|e| probe_time(e.word(), self.config.claim_timeout))
            .min()
    }

    pub(crate) fn fails_fast(&self) -> bool {
        self.config.when_unhealthy == WhenUnhealthy::FailFast
    }
}

impl<K, S, O: Observer> Shared<K, S, O> {
    #[inline]
    pub(crate) fn emitter(&self) -> Emitter<'_, O> {
        self.source.emitter()
    }
}

impl<K, S, O> Shared<K, S, O>
where
    K: fmt::Debug,
    O: Observer,
{
    /// Adds an endpoint, or replaces the one of the same key.
    pub(crate) fn insert(&self, key: K, service: S)
    where
        K: PartialEq,
    {
        let endpoint = Arc::new(Endpoint::new(key, service, &self.config, self.now()));
        let replaced = {
            let mut registry = self.registry();
            let mut list = registry.endpoints.clone();
            let replaced = list
                .iter()
                .position(|e| e.key == endpoint.key)
                .map(|i| list.remove(i));
            let replaced = replaced.map(|old| {
                let ejected = self.retire(&old);
                (old, ejected)
            });
            list.push(endpoint.clone());
            self.members.store(list.len() as u32, Release);
            registry.set(list, &self.generation);
            replaced
        };
        // Waiting pools are woken before the observer hears of it: an observer that panics
        // must not leave them asleep.
        self.notify();
        if let Some((old, ejected)) = replaced {
            self.report_removed(&old, ejected);
        }
        self.emitter()
            .emit_keyed(EventKind::EndpointAdded, &endpoint.key);
    }

    /// Removes the endpoint of `key`, if there is one.
    pub(crate) fn remove(&self, key: &K)
    where
        K: PartialEq,
    {
        let removed = {
            let mut registry = self.registry();
            let Some(i) = registry.endpoints.iter().position(|e| e.key == *key) else {
                return;
            };
            let mut list = registry.endpoints.clone();
            let old = list.remove(i);
            let ejected = self.retire(&old);
            self.members.store(list.len() as u32, Release);
            registry.set(list, &self.generation);
            (old, ejected)
        };
        self.notify();
        self.report_removed(&removed.0, removed.1);
    }

    /// Marks an endpoint removed and takes it out of the counts (under the registry's lock).
    /// Whether it was ejected.
    fn retire(&self, endpoint: &Endpoint<K, S>) -> bool {
        let old = endpoint.word.swap(pack(0, REMOVED, false), AcqRel);
        match tag(old) {
            EJECTED | PROBING | CLAIMED => {
                self.ejected.fetch_sub(1, AcqRel);
            }
            HELD => {
                self.held.fetch_sub(1, AcqRel);
            }
            _ => {}
        }
        matches!(tag(old), EJECTED | PROBING | CLAIMED)
    }

    fn report_removed(&self, endpoint: &Endpoint<K, S>, ejected: bool) {
        self.emitter()
            .emit_keyed(EventKind::EndpointRemoved { ejected }, &endpoint.key);
    }

    /// How long the next ejection of `endpoint` lasts, and its place in the streak.
    fn ejection_time(
        &self,
        endpoint: &Endpoint<K, S>,
        now: u64,
        probing: bool,
        hint: Option<Duration>,
    ) -> (Duration, u32) {
        let streak = endpoint.streak.load(Relaxed);
        let streak = if probing {
            streak.saturating_add(1)
        } else {
            // One ejection forgiven per interval spent in rotation since the last return.
            let healthy = now.saturating_sub(endpoint.returned_at.load(Relaxed));
            let forgiven = healthy / nanos(self.config.interval).max(1);
            (streak as u64).saturating_sub(forgiven) as u32 + 1
        };
        let duration = match (hint, self.config.max_retry_after) {
            (Some(hint), Some(max)) => hint.min(max),
            _ => {
                let draw = if self.config.schedule.jitter > 0.0 {
                    self.rng
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .random::<f64>()
                } else {
                    0.0
                };
                self.config.schedule.duration(streak, draw)
            }
        };
        (duration, streak)
    }

    /// Ejects `endpoint` from the state `word` (in rotation, or probing), for `reason`. In
    /// rotation, an endpoint the cap leaves no room for is held in instead (and waiting pools
    /// are woken: with it, no endpoint may be healthy). Whether it was ejected.
    pub(crate) fn eject(
        &self,
        endpoint: &Endpoint<K, S>,
        word: u64,
        reason: EjectReason,
        now: u64,
        hint: Option<Duration>,
    ) -> bool {
        let probing = matches!(tag(word), PROBING | CLAIMED);
        if !probing {
            debug_assert!(matches!(tag(word), AVAILABLE | HELD));
            let cap = self.cap();
            let room = self
                .ejected
                .fetch_update(AcqRel, Acquire, |n| (n < cap).then_some(n + 1));
            if room.is_err() {
                // Counted before the swap (and uncounted if it fails), so that a removal racing
                // with it never takes the count below zero.
                if tag(word) == AVAILABLE {
                    self.held.fetch_add(1, AcqRel);
                    if endpoint
                        .word
                        .compare_exchange(word, pack(0, HELD, false), AcqRel, Acquire)
                        .is_ok()
                    {
                        self.notify();
                    } else {
                        self.held.fetch_sub(1, AcqRel);
                    }
                }
                return false;
            }
        }
        let (duration, streak) = self.ejection_time(endpoint, now, probing, hint);
        let until = now.saturating_add(nanos(duration));
        let ejected = pack(until, EJECTED, reason == EjectReason::NotReady);
        if endpoint
            .word
            .compare_exchange(word, ejected, AcqRel, Acquire)
            .is_err()
        {
            if !probing {
                self.ejected.fetch_sub(1, AcqRel);
            }
            return false;
        }
        if tag(word) == HELD {
            self.held.fetch_sub(1, AcqRel);
        }
        endpoint.streak.store(streak, Relaxed);
        endpoint.ejections.fetch_add(1, Relaxed);
        endpoint.consecutive.store(0, Relaxed);
        endpoint.consecutive_local.store(0, Relaxed);
        self.notify();
        self.emitter().emit_keyed(
            EventKind::EndpointEjected { reason, duration },
            &endpoint.key,
        );
        true
    }

    /// The endpoint's readiness failed: it is ejected (or, a probe's, ejected again). In
    /// rotation it also takes the failure penalty in its estimate, so that an endpoint the cap
    /// holds in draws no load meanwhile, and counts as a local failure; but it is no call (not
    /// in `calls`, `failures` or the window): a held endpoint polled again and again would
    /// otherwise fill its window with failures, and the failure-percentage or success-rate rule
    /// would eject it for polls alone once it is back. `claim` is the probe this pool clone
    /// claimed on it, if any.
    pub(crate) fn not_ready(&self, endpoint: &Endpoint<K, S>, claim: Option<u64>, now: u64) {
        let word = endpoint.word();
        match tag(word) {
            CLAIMED if claim == Some(word) => {
                self.eject(endpoint, word, EjectReason::NotReady, now, None);
            }
            AVAILABLE | HELD => {
                self.penalise(endpoint, now, 0.0);
                endpoint.local_failures.fetch_add(1, Relaxed);
                self.eject(endpoint, word, EjectReason::NotReady, now, None);
            }
            _ => {}
        }
    }

    /// Feeds a failure (of a call that took `rtt_nanos`, or of a readiness) to the endpoint's
    /// estimate, with the failure penalty.
    fn penalise(&self, endpoint: &Endpoint<K, S>, now: u64, rtt_nanos: f64) {
        let config = &self.config;
        let sample = match config.penalty {
            Some(penalty) => {
                endpoint.penalized.store(now + 1, Relaxed);
                rtt_nanos.max(nanos(penalty) as f64)
            }
            None => rtt_nanos,
        };
        endpoint.observe(now, sample, config.tau, false);
    }

    /// Counts a failed call that took `rtt_nanos` in the endpoint's estimate (with the failure
    /// penalty), counters and window.
    fn failed(&self, endpoint: &Endpoint<K, S>, now: u64, rtt_nanos: f64, local: bool) {
        self.penalise(endpoint, now, rtt_nanos);
        endpoint.calls.fetch_add(1, Relaxed);
        endpoint.failures.fetch_add(1, Relaxed);
        if local {
            endpoint.local_failures.fetch_add(1, Relaxed);
        }
        endpoint.window.record(now, Sample::new(true, false));
    }

    /// A call to `endpoint` finished with `outcome` after `rtt`; `local` when it was the
    /// service's own error; `hint` a server's request to stay away. `probe` when it was the
    /// endpoint's probe.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn complete(
        &self,
        endpoint: &Endpoint<K, S>,
        outcome: Outcome,
        local: bool,
        rtt: Duration,
        now: u64,
        hint: Option<Duration>,
        probe: bool,
    ) {
        let config = &self.config;
        let rtt_nanos = nanos(rtt) as f64;
        match outcome {
            Outcome::Failure => self.failed(endpoint, now, rtt_nanos, local),
            _ => {
                // The first answer after a penalty, or a probe's, restarts the estimate: the
                // penalty (or the ejection) has done its work.
                let penalized = endpoint.penalized.load(Relaxed) != 0;
                if penalized {
                    endpoint.penalized.store(0, Relaxed);
                }
                let restart = penalized || (probe && outcome == Outcome::Success);
                endpoint.observe(now, rtt_nanos, config.tau, restart);
                if outcome == Outcome::Success {
                    endpoint.calls.fetch_add(1, Relaxed);
                    endpoint.window.record(now, Sample::new(false, false));
                }
            }
        }

        let word = endpoint.word();
        match tag(word) {
            PROBING if probe => match outcome {
                Outcome::Success => self.returned(endpoint, word, now),
                Outcome::Failure => {
                    self.eject(endpoint, word, EjectReason::ProbeFailed, now, hint);
                }
                _ => self.release_probe(endpoint),
            },
            AVAILABLE | HELD => match outcome {
                Outcome::Success => {
                    endpoint.consecutive.store(0, Relaxed);
                    endpoint.consecutive_local.store(0, Relaxed);
                    if tag(word) == HELD
                        && endpoint
                            .word
                            .compare_exchange(word, pack(0, AVAILABLE, false), AcqRel, Acquire)
                            .is_ok()
                    {
                        self.held.fetch_sub(1, AcqRel);
                        self.notify();
                    }
                }
                Outcome::Failure => {
                    if let Some(reason) = self.failure_trips(endpoint, local, now, hint) {
                        self.eject(endpoint, word, reason, now, hint);
                    }
                }
                _ => {}
            },
            _ => {}
        }
        if config.success_rate.is_some() && now >= self.next_sweep.load(Relaxed) {
            self.sweep(now);
        }
    }

    /// Which rule, if any, ejects an endpoint in rotation after this failure.
    fn failure_trips(
        &self,
        endpoint: &Endpoint<K, S>,
        local: bool,
        now: u64,
        hint: Option<Duration>,
    ) -> Option<EjectReason> {
        let config = &self.config;
        if hint.is_some() && config.max_retry_after.is_some() {
            return Some(EjectReason::RetryAfter);
        }
        let (counter, limit, reason) = if local {
            (
                &endpoint.consecutive_local,
                config.consecutive_local,
                EjectReason::ConsecutiveLocalFailures,
            )
        } else {
            (
                &endpoint.consecutive,
                config.consecutive,
                EjectReason::ConsecutiveFailures,
            )
        };
        let run = counter.fetch_add(1, Relaxed).saturating_add(1);
        if limit.is_some_and(|limit| run >= limit) {
            return Some(reason);
        }
        if let Some(rule) = config.failure_percentage {
            if self.members.load(Relaxed) >= rule.minimum_endpoints {
                let counts = endpoint.window.counts_at(now);
                if counts.calls >= rule.minimum_calls as u64
                    && counts.failures * 1_000_000 >= rule.threshold_ppm * counts.calls
                {
                    return Some(EjectReason::FailurePercentage);
                }
            }
        }
        None
    }

    /// A probe succeeded: the endpoint is back in rotation.
    fn returned(&self, endpoint: &Endpoint<K, S>, word: u64, now: u64) {
        if endpoint
            .word
            .compare_exchange(word, pack(0, AVAILABLE, false), AcqRel, Acquire)
            .is_err()
        {
            return;
        }
        self.ejected.fetch_sub(1, AcqRel);
        endpoint.returned_at.store(now, Relaxed);
        endpoint.consecutive.store(0, Relaxed);
        endpoint.consecutive_local.store(0, Relaxed);
        self.notify();
        self.emitter()
            .emit_keyed(EventKind::EndpointReturned, &endpoint.key);
    }

    /// Success-rate outliers: once an interval, the endpoints in rotation with enough calls whose
    /// success rate is below the mean by more than the factor of standard deviations are ejected.
    /// One caller a period does it, in two passes over the list and without allocating.
    fn sweep(&self, now: u64) {
        let Some(rule) = self.config.success_rate else {
            return;
        };
        let due = self.next_sweep.load(Relaxed);
        let next = now.saturating_add(nanos(self.config.interval));
        if now < due
            || self
                .next_sweep
                .compare_exchange(due, next, AcqRel, Relaxed)
                .is_err()
        {
            return;
        }
        // The list pools read (an `Arc` clone): copying the registry's endpoints would allocate.
        let (_, list) = self.list();
        let rate = |e: &Endpoint<K, S>| {
            if !matches!(tag(e.word()), AVAILABLE | HELD) {
                return None;
            }
            let counts = e.window.counts_at(now);
            (counts.calls >= rule.minimum_calls as u64)
                .then(|| 1.0 - counts.failures as f64 / counts.calls as f64)
        };
        let (mut n, mut sum, mut squares) = (0u32, 0.0, 0.0);
        for e in list.iter().filter_map(Weak::upgrade) {
            if let Some(r) = rate(&e) {
                n += 1;
                sum += r;
                squares += r * r;
            }
        }
        if n < rule.minimum_endpoints || n == 0 {
            return;
        }
        let mean = sum / n as f64;
        let deviation = (squares / n as f64 - mean * mean).max(0.0).sqrt();
        let threshold = mean - rule.stdev_factor * deviation;
        for e in list.iter().filter_map(Weak::upgrade) {
            if rate(&e).is_some_and(|r| r < threshold) {
                let word = e.word();
                if matches!(tag(word), AVAILABLE | HELD) {
                    self.eject(&e, word, EjectReason::SuccessRate, now, None);
                }
            }
        }
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;

    /// The refusal cache is one word: whatever order two refusals write in, what a reader finds
    /// is one refusal's count with that same refusal's time, never one's count with the other's.
    #[test]
    fn the_refusal_cache_pairs_a_count_with_its_own_time() {
        let shared: Shared<u32, (), ()> =
            Shared::new(super::super::config::default_config(), Source::new("p", ()));
        // R1 found, at count 7, no probe before 5 s; R2, at count 8 (a probe came due), none
        // before 1 ms. The two words written in either order.
        for (first, second) in [
            ((7, 5_000 * MILLI), (8, MILLI)),
            ((8, MILLI), (7, 5_000 * MILLI)),
        ] {
            shared.set_quiet(first.0, first.1);
            shared.set_quiet(second.0, second.1);
            let (count, until) = second;
            let other = if count == 7 { 8 } else { 7 };
            assert!(shared.quiet(count, until - MILLI));
            assert!(!shared.quiet(count, until), "quiet past its own time");
            // The other count never holds, at any time: its time is not in the word.
            assert!(!shared.quiet(other, 0));
        }
        // Rounded down to the millisecond: never quiet past the time found.
        shared.set_quiet(3, 2 * MILLI + 1);
        assert!(shared.quiet(3, 2 * MILLI - 1));
        assert!(!shared.quiet(3, 2 * MILLI));
        // Nothing known holds for no count; nor does a forgotten time.
        shared.set_quiet(0, 0);
        assert!(!shared.quiet(0, 0));
        // Beyond any time: capped, still quiet.
        shared.set_quiet(u64::MAX, u64::MAX);
        assert!(shared.quiet(u64::MAX, u64::MAX / 2));
    }
}
