//! One breaker per destination: [`KeyedCircuitBreakerLayer`].
//!
//! The breakers live in the keyed rate limiter's table of fixed size (see `core::keys`): a key's
//! hash finds its slot among two buckets of eight, with atomic loads only. A key's breaker is boxed,
//! made the first time a slot is used and kept for the keys that use the slot after it, so memory
//! grows with the keys held at once, is bounded by `max_keys`, and is allocated only on the path
//! of a new key.

use super::config::Config;
use super::error::Open;
use super::state::{Breaker, Permit};
use super::{Builder, ConfigError, Metrics};
use crate::core::gate::{Anchor, Shared};
use crate::core::keys::{Place, Table};
use crate::core::{
    CircuitState, Classify, Emitter, ErrorIsFailure, Event, EventKind, GuardFuture, Observer,
    Record, RejectReason, Source,
};
use crate::sync::{nanos, AtomicU64, Ordering::*};
use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{fence, AtomicBool, AtomicU32};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// The index a permit of the overflow breaker carries.
const OVERFLOW: u32 = u32::MAX;

/// The most keys a keyed breaker keeps (2^20): its table of about 40 bytes a slot takes 40 MiB
/// up front, and a million keys held at once about 1.7 GiB of breakers. More is refused as a
/// mistake.
pub(crate) const MAX_KEYS: usize = 1 << 20;

/// What a keyed breaker takes from a request: the key whose breaker decides the call, or `None`
/// for a request with no destination (it goes through the shared overflow breaker).
///
/// The default, [`Authority`], reads an `http::Request`'s authority. Any closure
/// `Fn(&Req) -> Option<K>` with `K: Hash + Debug` is a key function too.
pub trait KeyOf<Req> {
    /// The key, which may borrow from the request.
    type Key<'a>: Hash + fmt::Debug
    where
        Req: 'a;

    /// The key of `req`.
    fn key<'a>(&self, req: &'a Req) -> Option<Self::Key<'a>>;
}

impl<Req, K, F> KeyOf<Req> for F
where
    F: Fn(&Req) -> Option<K>,
    K: Hash + fmt::Debug,
{
    type Key<'a>
        = K
    where
        Req: 'a;

    #[inline]
    fn key(&self, req: &Req) -> Option<K> {
        self(req)
    }
}

/// The default key: an `http::Request`'s authority (`uri().authority()`, else its `Host`
/// header), as written (`api.example.com:443` and `api.example.com` are two keys). Borrowed from
/// the request: nothing is allocated.
#[derive(Clone, Copy, Debug, Default)]
pub struct Authority;

#[cfg(feature = "http")]
impl<B> KeyOf<http::Request<B>> for Authority {
    type Key<'a>
        = &'a str
    where
        B: 'a;

    #[inline]
    fn key<'a>(&self, req: &'a http::Request<B>) -> Option<&'a str> {
        match req.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok()),
        }
    }
}

/// The observer of a keyed breaker's events: the one given to its builder, shared by the breakers
/// of every key. Every event about a key carries it: its breaker's state transitions and
/// eviction, and the `Permitted`, `Rejected`, `Finished` and `Cancelled` of its calls (the key's
/// `Debug` form, cut at 256 bytes). The calls that go through the overflow breaker have no
/// key of their own: their `Permitted` and `Rejected` carry the request's key, or `(none)`;
/// their `Finished` and `Cancelled`, and the overflow breaker's transitions, none. So does the
/// `Finished` of a call whose key was forgotten, and its slot given to another, while it ran.
pub struct KeyedObserver<O> {
    observer: Arc<O>,
    /// The `Debug` form of the key of the breaker this relays for (`None` for the layer's own
    /// events, and when no observer listens), written when a key takes the breaker's slot.
    key: Option<Box<Label>>,
}

impl<O> fmt::Debug for KeyedObserver<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedObserver").finish_non_exhaustive()
    }
}

impl<O: Observer> Observer for KeyedObserver<O> {
    const ENABLED: bool = O::ENABLED;

    #[inline(always)]
    fn on_event(&self, event: &Event<'_>) {
        if !O::ENABLED {
            return;
        }
        match &self.key {
            Some(label) if event.key.is_none() => {
                self.observer.on_event(&event.with_key(&label.read()))
            }
            _ => self.observer.on_event(event),
        }
    }

    #[inline(always)]
    fn wants_latency(&self) -> bool {
        self.observer.wants_latency()
    }
}

/// The most bytes of a key's `Debug` form that events show; a longer one is cut, ending in `…`.
const LABEL_BYTES: usize = 256;

/// A key's `Debug` form, which the events of its calls read with no lock: written when a key
/// takes the slot, by the one thread that claimed it (no call can find the slot meanwhile), and
/// read by copying it out. The sequence number is odd while a write is under way (a reader
/// tries again) and tells a call's last event whether its key still has the slot.
struct Label {
    seq: AtomicU32,
    len: AtomicU32,
    words: [std::sync::atomic::AtomicU64; LABEL_BYTES / 8],
}

impl Label {
    fn new() -> Self {
        Label {
            seq: AtomicU32::new(0),
            len: AtomicU32::new(0),
            words: std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// The label's version now: a call admitted now reads it, to check at its end that the
    /// label it reads then is its key's.
    #[inline]
    fn version(&self) -> u32 {
        self.seq.load(Acquire)
    }

    /// Writes a key's form, made beforehand (the one writer: the thread that claimed the slot,
    /// which runs no user code while the slot is busy).
    fn write(&self, copy: &LabelCopy) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        fence(Release);
        for (word, bytes) in self.words.iter().zip(copy.bytes.chunks_exact(8)) {
            let bytes = bytes.try_into().expect("chunks of eight bytes");
            word.store(u64::from_ne_bytes(bytes), Relaxed);
        }
        self.len.store(copy.len as u32, Relaxed);
        self.seq.store(seq.wrapping_add(2), Release);
    }

    /// A copy of the label.
    fn read(&self) -> LabelCopy {
        loop {
            if let Some(copy) = self.read_if(None) {
                return copy;
            }
            std::hint::spin_loop();
        }
    }

    /// A copy of the label if it is still at `version` (`None`: any, unless a write is under
    /// way).
    fn read_if(&self, version: Option<u32>) -> Option<LabelCopy> {
        let seq = self.seq.load(Acquire);
        if seq & 1 == 1 || version.is_some_and(|v| v != seq) {
            return None;
        }
        let mut copy = LabelCopy::new();
        copy.len = (self.len.load(Relaxed) as usize).min(LABEL_BYTES);
        let words = copy.len.div_ceil(8);
        for (word, bytes) in self.words[..words]
            .iter()
            .zip(copy.bytes.chunks_exact_mut(8))
        {
            bytes.copy_from_slice(&word.load(Relaxed).to_ne_bytes());
        }
        fence(Acquire);
        (self.seq.load(Relaxed) == seq).then_some(copy)
    }
}

/// A key's `Debug` form, copied out of its [`Label`] (or being written into one), shown as it is.
struct LabelCopy {
    bytes: [u8; LABEL_BYTES],
    len: usize,
    cut: bool,
}

impl LabelCopy {
    fn new() -> Self {
        LabelCopy {
            bytes: [0; LABEL_BYTES],
            len: 0,
            cut: false,
        }
    }

    /// `key`'s `Debug` form, cut at [`LABEL_BYTES`]. It runs the key's own code, which may
    /// panic: never while a slot is busy.
    fn of(key: &dyn fmt::Debug) -> Self {
        let mut copy = LabelCopy::new();
        // An error only says the form was cut.
        let _ = write!(copy, "{key:?}");
        copy.finish();
        copy
    }

    /// Ends a form that was cut with `…`, on a character boundary.
    fn finish(&mut self) {
        const MORE: &str = "…";
        if !self.cut {
            return;
        }
        let mut len = self.len.min(LABEL_BYTES - MORE.len());
        // A continuation byte at `len` would mean `len` splits a character.
        while len > 0 && len < self.len && self.bytes[len] & 0xc0 == 0x80 {
            len -= 1;
        }
        self.bytes[len..len + MORE.len()].copy_from_slice(MORE.as_bytes());
        self.len = len + MORE.len();
    }
}

impl fmt::Write for LabelCopy {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LABEL_BYTES - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.cut = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

impl fmt::Debug for LabelCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written whole from a `&str` and read back under an unchanged sequence number: valid.
        f.write_str(std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?"))
    }
}

/// One key's breaker, made when its slot is first used, and the source of its events.
struct KeyBreaker<O> {
    breaker: Breaker,
    source: Source<KeyedObserver<O>>,
}

/// A slot's cell: about 40 bytes, with the key's breaker (about 1.7 KB) on the heap, made the
/// first time a key takes the slot and kept for the keys after it, so memory grows with the keys
/// held at once rather than with `max_keys`.
struct Cell<O> {
    made: OnceLock<Box<KeyBreaker<O>>>,
    /// Set by a call of the key (only if clear: one write per sweep at most), cleared by sweeps.
    used: AtomicBool,
    /// When the key was last known to be in use: its insertion, or the last sweep that found it
    /// used (see [`KeyedBreakers::sweep`] for a sweep after a long gap). With `used` clear, no
    /// call came since.
    mark: AtomicU64,
}

impl<O> Cell<O> {
    #[inline(always)]
    fn touch(&self) {
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }

    /// Whether the key has had no call for `idle` nanoseconds at `now`, and its breaker holds
    /// nothing worth keeping.
    fn idle(&self, now: u64, idle: u64) -> bool {
        !self.used.load(Acquire)
            && now.saturating_sub(self.mark.load(Relaxed)) >= idle
            && self
                .made
                .get()
                .is_none_or(|k| k.breaker.forgettable(Duration::from_nanos(idle)))
    }
}

/// The keyed breaker's [`Gate`](crate::core::Gate): a table of breakers, one per key, and the
/// overflow breaker. Read it through a [`KeyedHandle`].
///
/// As a gate on its own (in a [`GateLayer`](crate::core::GateLayer)) it knows no keys, and every
/// call goes through its overflow breaker.
pub struct KeyedBreakers<O: 'static = ()> {
    table: Table<Cell<O>>,
    overflow: Breaker,
    config: Config,
    /// The idle timeout, in nanoseconds.
    idle: u64,
    origin: Instant,
    /// When the next sweep for idle keys is due, in nanoseconds since `origin`.
    next_sweep: AtomicU64,
    /// When the last sweep ran, in nanoseconds since `origin`.
    last_sweep: AtomicU64,
    name: Cow<'static, str>,
    observer: Arc<O>,
    /// Calls that went through the overflow breaker.
    overflowed: AtomicU64,
    /// Keys dropped because they were idle.
    evicted: AtomicU64,
    /// The task that sweeps the table (see [`start_sweeper`]), looked at on new keys' paths only.
    sweeper: std::sync::Mutex<Sweeper>,
}

/// The keyed breaker's sweeper task, as new keys see it.
#[derive(Default)]
struct Sweeper {
    /// The task started last: another is started when it has ended (its runtime shut down, or
    /// it panicked).
    task: Option<tokio::task::JoinHandle<()>>,
    /// A runtime without timers was met: no task is started again, and new keys sweep.
    timerless: bool,
}

impl<O: 'static> Drop for KeyedBreakers<O> {
    fn drop(&mut self) {
        let sweeper = self.sweeper.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = sweeper.task.take() {
            task.abort();
        }
    }
}

impl<O> fmt::Debug for KeyedBreakers<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("keys", &self.table.keys())
            .field("max_keys", &self.table.capacity())
            .field("overflow", &self.overflow)
            .finish()
    }
}

impl<O: Observer> KeyedBreakers<O> {
    fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }

    #[inline]
    fn made(&self, index: usize) -> &KeyBreaker<O> {
        self.table
            .slot(index)
            .cell
            .made
            .get()
            .expect("a key's breaker is made before the key can be found")
    }

    /// The slot of `place`'s key, given one if it is new and there is room; `None` when there is
    /// none (the call goes through the overflow breaker). `anchor` holds these breakers: a new
    /// key starts the sweeper with it if none runs.
    #[inline]
    fn slot_of(
        &self,
        place: Place,
        key: &dyn fmt::Debug,
        anchor: &Anchor<KeyedShared<O>>,
    ) -> Option<usize> {
        match self.table.find(place) {
            Some(index) => {
                self.table.slot(index).cell.touch();
                Some(index)
            }
            None => self.insert(place, key, anchor),
        }
    }

    #[cold]
    #[inline(never)]
    fn insert(
        &self,
        place: Place,
        key: &dyn fmt::Debug,
        anchor: &Anchor<KeyedShared<O>>,
    ) -> Option<usize> {
        // The key's label, written first: its `Debug` is the user's code, which must not run
        // (and perhaps panic) while the slot is busy, stalling every new key of its buckets.
        let form = O::ENABLED.then(|| LabelCopy::of(key));
        start_sweeper(anchor);
        let now = self.now();
        self.sweep_if_due(now);
        let idle = self.idle;
        let mut dropped = None;
        let mut fresh = false;
        let claimed = self.table.claim(
            place,
            // The key idle longest goes first.
            |cell| cell.idle(now, idle).then(|| (1, cell.mark.load(Relaxed))),
            |cell| {
                let made = cell.made.get_or_init(|| Box::new(self.make_breaker()));
                made.breaker
                    .transition(CircuitState::Closed, true, Source::new("", ()).emitter());
                if let (Some(label), Some(form)) = (&made.source.observer().key, &form) {
                    dropped = Some(label.read());
                    label.write(form);
                }
                cell.used.store(false, Relaxed);
                cell.mark.store(now, Relaxed);
                fresh = true;
            },
        );
        let (index, evicted) = claimed?;
        if !fresh {
            // Another call gave the key its slot meanwhile: this call is a use of it.
            self.table.slot(index).cell.touch();
        }
        if evicted.is_some() {
            self.evicted.fetch_add(1, Relaxed);
            if let Some(dropped) = dropped {
                Source::new(self.name.clone(), self.relay(false))
                    .emitter()
                    .emit_keyed(EventKind::KeyEvicted { idle: true }, &dropped);
            }
        }
        Some(index)
    }

    /// A relay to the layer's observer; `labelled`: one that adds a key's label to the events
    /// of its breaker, if the observer listens.
    fn relay(&self, labelled: bool) -> KeyedObserver<O> {
        KeyedObserver {
            observer: self.observer.clone(),
            key: (labelled && O::ENABLED).then(|| Box::new(Label::new())),
        }
    }

    fn make_breaker(&self) -> KeyBreaker<O> {
        let mut config = self.config.clone();
        // Every key's breaker draws its own jitter, even from a seed.
        let made = self.table.keys().wrapping_add(self.evicted.load(Relaxed));
        config.seed = config
            .seed
            .map(|seed| seed ^ made.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        KeyBreaker {
            breaker: Breaker::new(config),
            source: Source::new(self.name.clone(), self.relay(true)),
        }
    }

    /// Drops the keys idle for the idle timeout, if a sweep is due at `now`: on a new key's path,
    /// when no sweeper runs (no tokio runtime, or one without timers) or it has missed a whole
    /// period, at most once per half idle timeout.
    fn sweep_if_due(&self, now: u64) {
        let due = self.next_sweep.load(Relaxed);
        if now < due
            || self
                .next_sweep
                .compare_exchange(due, now.saturating_add(self.idle / 2), Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        self.sweep(now, false);
    }

    /// Forgets the keys idle for the idle timeout at `now`, and learns from the keys' flags which
    /// were called since the sweep before: one pass over every slot, a few atomic operations
    /// each, and a lock only for a key forgotten.
    ///
    /// A key called since the last sweep was called at some time between that sweep and now: when
    /// the two are less than an idle timeout apart (as they are while the sweeper runs, every
    /// half idle timeout), it is taken as called now (it may be kept up to that gap too long,
    /// never dropped too soon). After a longer gap (no sweeper: no tokio runtime, and no new key
    /// for an idle timeout), that would keep keys idle for hours a further idle timeout, so the
    /// key is taken as last called at the start of the gap (or its insertion, if later): a key
    /// called again before the table needs its slot keeps it, but one still in use whose next
    /// call comes after a new key needed its slot loses it, and starts afresh when it comes back.
    /// Calls never read the clock, so nothing tells the two apart: only the sweeper's regular
    /// sweeps keep that from happening.
    ///
    /// `guarded`: an observer panicking at a key's `KeyEvicted` does not stop the sweep (the
    /// sweeper's, which has no caller to tell); otherwise the panic reaches the caller, as every
    /// event's does.
    fn sweep(&self, now: u64, guarded: bool) -> u64 {
        let prev = self.last_sweep.fetch_max(now, Relaxed);
        // When sweeps race, the later one decides alone.
        let long_gap = now.saturating_sub(prev) > self.idle;
        let mut evicted = 0;
        for index in 0..self.table.capacity() {
            let cell = &self.table.slot(index).cell;
            let tag = self.table.tag(index);
            if cell.made.get().is_none() {
                continue;
            }
            if cell.used.swap(false, AcqRel) {
                // Never moved back: a new key that took the slot since this sweep began was
                // marked at its insertion, later than this sweep's times.
                let mark = if long_gap { prev } else { now };
                cell.mark.fetch_max(mark, Relaxed);
                continue;
            }
            if !cell.idle(now, self.idle) {
                continue;
            }
            let mut label = None;
            let removed = self.table.remove(index, tag, |cell| {
                // Asked again with the key out of reach: a call that came meanwhile keeps it.
                if !cell.idle(now, self.idle) {
                    return false;
                }
                // Reset, and the key's label read, before a new key can take the slot.
                let made = self.made(index);
                made.breaker
                    .transition(CircuitState::Closed, true, Source::new("", ()).emitter());
                label = made
                    .source
                    .observer()
                    .key
                    .as_ref()
                    .map(|label| label.read());
                true
            });
            if removed {
                evicted += 1;
                self.evicted.fetch_add(1, Relaxed);
                // No label: no observer listens.
                if let Some(label) = label {
                    let evicted = || {
                        self.made(index)
                            .source
                            .emitter()
                            .emit_keyed(EventKind::KeyEvicted { idle: true }, &label)
                    };
                    if guarded {
                        // Sent after the key is gone: a panic leaves nothing half done.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(evicted));
                    } else {
                        evicted();
                    }
                }
            }
        }
        evicted
    }

    /// The sweeper's sweep, at the time it reads: new keys then leave the sweeps to it unless it
    /// misses a whole period (two periods pass with no sweep).
    fn sweep_now(&self) -> u64 {
        let now = self.now();
        self.next_sweep
            .fetch_max(now.saturating_add(2 * nanos(self.sweep_period())), Relaxed);
        self.sweep(now, true)
    }

    /// How often the sweeper sweeps: every half idle timeout, at least [`MIN_SWEEP_PERIOD`]
    /// apart.
    fn sweep_period(&self) -> Duration {
        Duration::from_nanos(self.idle / 2).max(MIN_SWEEP_PERIOD)
    }

    fn find<K: Hash + ?Sized>(&self, key: &K) -> Option<&KeyBreaker<O>> {
        let place = self.table.locate(key);
        self.table.find(place).map(|index| self.made(index))
    }
}

/// The shortest period of the sweeper: with a shorter idle timeout, keys may be forgotten up to
/// this much later than it.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// Starts a task that sweeps `anchor`'s table every half idle timeout (at least every
/// [`MIN_SWEEP_PERIOD`]), if a tokio runtime is at hand and no task started before still runs
/// (the first new key starts it; the first after its runtime shut down, or after it panicked,
/// starts another). It holds the table weakly, and ends when the layer and everything made from
/// it are gone. Regular sweeps are what tell a key in use from an idle one (calls only set a
/// flag, which sweeps clear), and they take the sweep's pass over every slot off new keys' calls.
///
/// A runtime without timers cannot run it: its timer is made here, where making it panics in such
/// a runtime, and that panic is caught; from then on new keys sweep, as without a runtime.
#[cold]
fn start_sweeper<O: Observer>(anchor: &Anchor<KeyedShared<O>>) {
    let gate = &anchor.gate;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Another new key is starting it.
    let mut sweeper = match gate.sweeper.try_lock() {
        Ok(sweeper) => sweeper,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if sweeper.timerless
        || sweeper
            .task
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    {
        return;
    }
    let period = gate.sweep_period();
    let Ok(first) = std::panic::catch_unwind(|| tokio::time::sleep(period)) else {
        sweeper.timerless = true;
        return;
    };
    let table = anchor.downgrade();
    sweeper.task = Some(runtime.spawn(async move {
        first.await;
        loop {
            let Some(anchor) = table.upgrade() else {
                return;
            };
            anchor.gate.sweep_now();
            drop(anchor);
            tokio::time::sleep(period).await;
        }
    }));
}

/// A keyed breaker's permit: the breaker's, and which breaker it is from.
#[derive(Clone, Copy, Debug)]
pub struct KeyedPermit {
    index: u32,
    /// The version of the key's label when the call was admitted (when an observer listens).
    label: u32,
    /// The low half of the key's tag: a call that ends after its key was forgotten and the slot
    /// given to another key leaves that key's breaker alone.
    tag: u32,
    permit: Permit,
}

impl<O: Observer> crate::core::Gate for KeyedBreakers<O> {
    type Permit = KeyedPermit;
    type Rejection = Open;
    type Waiter = ();

    /// Without a request there is no key: the overflow breaker decides.
    fn poll_acquire<O2: Observer>(
        &self,
        _cx: &mut Context<'_>,
        _waiter: &mut (),
        emit: Emitter<'_, O2>,
    ) -> Poll<Result<KeyedPermit, Open>> {
        Poll::Ready(self.overflow.acquire(emit).map(|permit| KeyedPermit {
            index: OVERFLOW,
            label: 0,
            tag: 0,
            permit,
        }))
    }

    #[inline]
    fn complete<O2: Observer>(&self, permit: KeyedPermit, record: &Record, emit: Emitter<'_, O2>) {
        if permit.index == OVERFLOW {
            return self.overflow.complete(permit.permit, record, emit);
        }
        let index = permit.index as usize;
        if !self.table.may_hold(index, permit.tag) {
            return; // the key was forgotten while its call ran
        }
        let made = self.made(index);
        self.table.slot(index).cell.touch();
        made.breaker
            .complete(permit.permit, record, made.source.emitter())
    }

    #[inline]
    fn cancel<O2: Observer>(&self, permit: KeyedPermit, emit: Emitter<'_, O2>) {
        if permit.index == OVERFLOW {
            return self.overflow.cancel(permit.permit, emit);
        }
        let index = permit.index as usize;
        if !self.table.may_hold(index, permit.tag) {
            return;
        }
        let made = self.made(index);
        made.breaker.cancel(permit.permit, made.source.emitter())
    }

    /// The key's label, if the key still has the slot it was admitted in.
    fn key_of(&self, permit: &KeyedPermit) -> Option<impl fmt::Debug + Send + 'static> {
        if permit.index == OVERFLOW {
            return None;
        }
        let made = self.made(permit.index as usize);
        made.source
            .observer()
            .key
            .as_ref()?
            .read_if(Some(permit.label))
    }

    #[inline]
    fn wants_latency(&self) -> bool {
        crate::core::Gate::wants_latency(&self.overflow)
    }

    #[inline]
    fn wants_retry_after(&self) -> bool {
        crate::core::Gate::wants_retry_after(&self.overflow)
    }

    fn reject_reason(rejection: &Open) -> RejectReason {
        rejection.reason
    }
}

/// The shared state of a keyed breaker layer.
type KeyedShared<O> = Shared<KeyedBreakers<O>, KeyedObserver<O>>;

/// One circuit breaker per destination: calls to a failing host are turned away while the other
/// hosts behind the same client keep their traffic. See the [module docs](super) and
/// docs/circuit-breaker.md.
///
/// Build it from the breaker's [`Builder`] (every threshold, window, open-duration schedule,
/// classifier and observer applies to each key's breaker) with [`Builder::keyed`]:
///
/// ```
/// # #[cfg(feature = "http")] {
/// use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breakers = CircuitBreakerLayer::builder()
///     .consecutive_failures(3)
///     .keyed()
///     .max_keys(1_000)
///     .idle_timeout(Duration::from_secs(600))
///     .build()
///     .unwrap();
/// let handle = breakers.handle();
/// let client = ServiceBuilder::new().layer(breakers).service(service_fn(
///     |req: http::Request<()>| async move {
///         match req.uri().host() {
///             Some("down.example") => Err("connection refused"),
///             _ => Ok(http::Response::new(())),
///         }
///     },
/// ));
///
/// let get = |uri: &str| http::Request::get(uri).body(()).unwrap();
/// for _ in 0..3 {
///     let _ = client.clone().oneshot(get("http://down.example/")).await;
/// }
/// let err = client.clone().oneshot(get("http://down.example/")).await.unwrap_err();
/// assert!(err.is::<Open>());
/// // Another host keeps its traffic.
/// assert!(client.oneshot(get("http://up.example/")).await.is_ok());
/// assert_eq!(handle.keys(), 2);
/// # }
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<K = Authority, C = ErrorIsFailure, O: 'static = ()> {
    shared: Anchor<KeyedShared<O>>,
    key: K,
    classify: C,
}

impl KeyedCircuitBreakerLayer {
    /// One breaker with the default settings per request authority (see [`Builder`] and
    /// [`KeyedBuilder`]).
    pub fn new() -> Self {
        Builder::default()
            .keyed()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a [`KeyedBuilder`] from the breaker's defaults; set the breaker's own settings with
    /// [`CircuitBreakerLayer::builder`](super::CircuitBreakerLayer::builder) and
    /// [`Builder::keyed`] instead.
    pub fn builder() -> KeyedBuilder {
        Builder::default().keyed()
    }
}

impl Default for KeyedCircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, C, O: Observer> KeyedCircuitBreakerLayer<K, C, O> {
    /// A handle on the layer's breakers.
    pub fn handle(&self) -> KeyedHandle<O> {
        KeyedHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Clone, C: Clone, O> Clone for KeyedCircuitBreakerLayer<K, C, O> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            shared: self.shared.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<K, C: fmt::Debug, O> fmt::Debug for KeyedCircuitBreakerLayer<K, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.shared.name())
            .field("breakers", &self.shared.gate)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, K: Clone, C: Clone, O: Observer> Layer<S> for KeyedCircuitBreakerLayer<K, C, O> {
    type Service = KeyedCircuitBreaker<S, K, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// Builds a [`KeyedCircuitBreakerLayer`]: the breaker's [`Builder`] (from [`Builder::keyed`]),
/// with how keys are found, how many are kept and when an idle one is dropped.
#[derive(Clone, Debug)]
pub struct KeyedBuilder<K = Authority, C = ErrorIsFailure, O = ()> {
    breaker: Builder<C, O>,
    key: K,
    max_keys: usize,
    idle_timeout: Duration,
}

impl<C, O> Builder<C, O> {
    /// One breaker of these settings per destination: a [`KeyedBuilder`].
    pub fn keyed(self) -> KeyedBuilder<Authority, C, O> {
        KeyedBuilder {
            breaker: self,
            key: Authority,
            max_keys: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl<K, C, O> KeyedBuilder<K, C, O> {
    /// Takes each request's key with `key` (default: [`Authority`]): any closure
    /// `Fn(&Req) -> Option<K>`, or a [`KeyOf`]. A request with no key goes through the overflow
    /// breaker.
    pub fn key<K2>(self, key: K2) -> KeyedBuilder<K2, C, O> {
        KeyedBuilder {
            breaker: self.breaker,
            key,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
        }
    }

    /// The most keys with a breaker of their own (default 1,024; at most 2^20, 1,048,576:
    /// `build` refuses more with [`ConfigError::MaxKeys`]), rounded up to a multiple of 8. Their
    /// slots are allocated when the layer is built, about 40 bytes each on x86-64; a key's
    /// breaker (about 1.7 KB: its hot fields are padded to cache lines of their own) is
    /// allocated when a key first takes the slot and kept for the keys after it, so memory grows
    /// with the most keys held at once. A new key that finds no room (its two buckets of eight
    /// all held by keys in use, or by open breakers) goes through the shared overflow breaker
    /// until room is made: size it at about 1.25 times the keys live within an idle timeout.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How long a key may go without a call before its breaker is forgotten and its slot given
    /// to another key (default 10 minutes). An open breaker is kept until its open period is
    /// over and then the idle timeout more has passed with no call, a half-open one with a probe
    /// in flight until the trial's longest wait (`max_half_open_wait`) and then the idle timeout
    /// more have passed (its probe is taken as lost); a forced-open one is never forgotten.
    ///
    /// # The sweeper
    ///
    /// Within a tokio runtime a task sweeps the table for idle keys every half idle timeout, at
    /// least 100 ms apart, for as long as the layer is held: the first new key starts it in its
    /// runtime, and the first new key after that runtime shut down (or the task panicked) starts
    /// another. A key is forgotten between one and one and a half idle timeouts after its last
    /// call; with an idle timeout under 200 ms, the 100 ms floor makes that up to two sweep
    /// periods after it (three between 100 and 200 ms): about 200 ms late for a 1 ms idle
    /// timeout. Without a runtime a new key's call sweeps instead, at most once per half idle
    /// timeout. The task needs the runtime's **timers** (`enable_time`, as every timed layer of
    /// the crate does): in a runtime without them, making its timer panics on the first new key's
    /// path; that panic is caught (the panic hook still reports it once) and new keys sweep from
    /// then on, as without a runtime. An observer that panics at a `KeyEvicted` sent by the task
    /// does not stop it. Both panics are caught with `catch_unwind`: where panics abort
    /// (`panic = "abort"`), either aborts the process.
    ///
    /// # Testing with paused time
    ///
    /// The task's timer is always pending, so a runtime with paused time whose tasks all wait
    /// on something other than a timer no longer sits still: it auto-advances its clock to the
    /// sweeper's next tick, in steps of its period (half the idle timeout, at least 100 ms), and
    /// sweeps as it goes. A test
    /// that relies on the clock standing still while it waits for another thread (or a real I/O)
    /// should drop the layer and everything made from it first (the task then ends), or set an
    /// idle timeout much longer than the times it checks.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Checks the settings and builds the layer, allocating its table of keys.
    pub fn build(self) -> Result<KeyedCircuitBreakerLayer<K, C, O>, ConfigError>
    where
        O: Observer,
    {
        if self.max_keys == 0 || self.max_keys > MAX_KEYS {
            return Err(ConfigError::MaxKeys {
                max_keys: self.max_keys,
                max: MAX_KEYS,
            });
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::IdleTimeout);
        }
        let (config, name, classify, observer) = self.breaker.into_parts()?;
        let observer = Arc::new(observer);
        let breakers = KeyedBreakers {
            table: Table::with_cells(self.max_keys, || Cell {
                made: OnceLock::new(),
                used: AtomicBool::new(false),
                mark: AtomicU64::new(0),
            }),
            overflow: Breaker::new(config.clone()),
            config,
            idle: nanos(self.idle_timeout),
            origin: Instant::now(),
            next_sweep: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            name: name.clone(),
            observer: observer.clone(),
            overflowed: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            sweeper: std::sync::Mutex::default(),
        };
        let shared = Shared::new(
            name,
            breakers,
            KeyedObserver {
                observer,
                key: None,
            },
        );
        shared.emitter().emit(EventKind::Started {
            state: Some(CircuitState::Closed),
            limit: None,
        });
        Ok(KeyedCircuitBreakerLayer {
            shared: Anchor::counted(shared),
            key: self.key,
            classify,
        })
    }
}

/// The service of [`KeyedCircuitBreakerLayer`]: finds the request's key in `call`, and admits or
/// rejects the call on that key's breaker.
pub struct KeyedCircuitBreaker<S, K = Authority, C = ErrorIsFailure, O: 'static = ()> {
    inner: S,
    shared: Anchor<KeyedShared<O>>,
    key: K,
    classify: C,
}

impl<S, K, C, O> KeyedCircuitBreaker<S, K, C, O> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K: Clone, C: Clone, O> Clone for KeyedCircuitBreaker<S, K, C, O> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C, O> fmt::Debug for KeyedCircuitBreaker<S, K, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("name", &self.shared.name())
            .field("inner", &self.inner)
            .finish()
    }
}

/// The response future of [`KeyedCircuitBreaker`]: the inner call with its key's permit, or the
/// rejection of an open breaker. Named and unboxed.
pub type KeyedResponseFuture<F, C = ErrorIsFailure, O = ()> =
    GuardFuture<F, KeyedBreakers<O>, C, KeyedObserver<O>>;

impl<S, K, C, O, Req> Service<Req> for KeyedCircuitBreaker<S, K, C, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: KeyOf<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S::Future, C, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        let breakers = &shared.gate;
        let emit = shared.emitter();
        let key = self.key.key(&req);
        let (index, decided) = loop {
            let Some(key) = &key else {
                break ((OVERFLOW, 0, 0), breakers.overflow.acquire(emit));
            };
            let place = breakers.table.locate(key);
            let Some(index) = breakers.slot_of(place, key, &self.shared) else {
                breakers.overflowed.fetch_add(1, Relaxed);
                break ((OVERFLOW, 0, 0), breakers.overflow.acquire(emit));
            };
            let made = breakers.made(index);
            let decided = made.breaker.acquire(made.source.emitter());
            // The slot may have gone to another key since it was found (an idle key dropped by
            // a sweep): then the permit is given back and the key looked up again.
            if breakers.table.tag(index) != place.tag {
                if let Ok(permit) = decided {
                    crate::core::Gate::cancel(&made.breaker, permit, Source::new("", ()).emitter());
                }
                continue;
            }
            // Read after the check: the label is the key's.
            let label = match &made.source.observer().key {
                Some(label) if O::ENABLED => label.version(),
                _ => 0,
            };
            break ((index as u32, label, place.tag as u32), decided);
        };
        let (index, label, tag) = index;
        match decided {
            Ok(permit) => {
                // Given back should the observer panic before the call is made.
                let unsent = Unsent(
                    breakers,
                    Some(KeyedPermit {
                        index,
                        label,
                        tag,
                        permit,
                    }),
                );
                emit.emit_keyed(EventKind::Permitted, &Shown(&key));
                let permit = unsent.sent();
                // The key may borrow from the request, which the call takes.
                drop(key);
                let start = (crate::core::Gate::wants_latency(breakers)
                    || shared.source.observer().wants_latency())
                .then(Instant::now);
                let classify = self.classify.clone();
                let inner = &mut self.inner;
                KeyedResponseFuture::admitted(&self.shared, permit, classify, start, || {
                    inner.call(req)
                })
            }
            Err(open) => {
                shared.count_rejected();
                emit.emit_keyed(
                    EventKind::Rejected {
                        reason: open.reason,
                    },
                    &Shown(&key),
                );
                KeyedResponseFuture::rejected(open)
            }
        }
    }
}

/// A request's key in events: the key, or nothing for a request without one.
struct Shown<'a, T>(&'a Option<T>);

impl<T: fmt::Debug> fmt::Debug for Shown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => key.fmt(f),
            None => f.write_str("(none)"),
        }
    }
}

/// A permit taken and not yet in its call's future: given back if dropped.
struct Unsent<'a, O: Observer>(&'a KeyedBreakers<O>, Option<KeyedPermit>);

impl<O: Observer> Unsent<'_, O> {
    fn sent(mut self) -> KeyedPermit {
        self.1.take().expect("a permit is sent once")
    }
}

impl<O: Observer> Drop for Unsent<'_, O> {
    fn drop(&mut self) {
        if let Some(permit) = self.1.take() {
            crate::core::Gate::cancel(self.0, permit, Source::new("", ()).emitter());
        }
    }
}

/// A handle on a keyed breaker: its keys, each key's state and counts, and the overflow breaker.
pub struct KeyedHandle<O: 'static = ()> {
    shared: Anchor<KeyedShared<O>>,
}

impl<O> Clone for KeyedHandle<O> {
    fn clone(&self) -> Self {
        KeyedHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<O> fmt::Debug for KeyedHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("name", &self.shared.name())
            .field("breakers", &self.shared.gate)
            .finish()
    }
}

fn metrics_of(breaker: &Breaker) -> Metrics {
    let counts = breaker.counts();
    let minimum = breaker.config().minimum_calls;
    Metrics {
        state: breaker.state(),
        calls: counts.calls,
        failures: counts.failures,
        slow_calls: counts.slow,
        failure_rate: counts.failure_rate(minimum),
        slow_call_rate: counts.slow_rate(minimum),
        consecutive_failures: breaker.consecutive_failures(),
        probes_in_flight: breaker.probes_in_flight(),
    }
}

impl<O: Observer> KeyedHandle<O> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// How many keys have a breaker of their own now.
    pub fn keys(&self) -> u64 {
        self.shared.gate.table.keys()
    }

    /// The most keys kept.
    pub fn max_keys(&self) -> usize {
        self.shared.gate.table.capacity()
    }

    /// The state of `key`'s breaker; `None` if the key has none (never seen, or forgotten).
    /// `key` must hash as the key function's keys do (for [`Authority`], a `&str`).
    pub fn state<Q: Hash + ?Sized>(&self, key: &Q) -> Option<CircuitState> {
        self.shared.gate.find(key).map(|k| k.breaker.state())
    }

    /// The window's counts and rates of `key`'s breaker, and its state.
    pub fn metrics<Q: Hash + ?Sized>(&self, key: &Q) -> Option<Metrics> {
        self.shared.gate.find(key).map(|k| metrics_of(&k.breaker))
    }

    /// The counts of the overflow breaker: calls with no key, or whose key found no room.
    pub fn overflow_metrics(&self) -> Metrics {
        metrics_of(&self.shared.gate.overflow)
    }

    /// Calls whose key found no room in the table and went through the overflow breaker.
    pub fn overflowed(&self) -> u64 {
        self.shared.gate.overflowed.load(Relaxed)
    }

    /// Keys forgotten for being idle, since the layer was built.
    pub fn evicted(&self) -> u64 {
        self.shared.gate.evicted.load(Relaxed)
    }

    /// Forces `key`'s breaker open (rejecting every call with the key, never forgotten while so)
    /// until [`reset`](Self::reset); returns `false` if the key has no breaker.
    pub fn force_open<Q: Hash + ?Sized>(&self, key: &Q) -> bool {
        self.to(key, CircuitState::ForcedOpen)
    }

    /// Closes `key`'s breaker with an empty window and no memory of earlier trips; returns `false`
    /// if the key has no breaker.
    pub fn reset<Q: Hash + ?Sized>(&self, key: &Q) -> bool {
        self.to(key, CircuitState::Closed)
    }

    fn to<Q: Hash + ?Sized>(&self, key: &Q, state: CircuitState) -> bool {
        match self.shared.gate.find(key) {
            Some(k) => {
                k.breaker.transition(state, true, k.source.emitter());
                true
            }
            None => false,
        }
    }

    /// Forgets now every key idle for the idle timeout (sweeps otherwise run every half idle
    /// timeout, in a task of the runtime where the first new key came, or without a runtime on
    /// the path of a new key); returns how many were.
    pub fn evict_idle(&self) -> u64 {
        let gate = &self.shared.gate;
        gate.sweep(gate.now(), false)
    }
}
