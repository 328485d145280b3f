//! The breaker's state machine: a [`Gate`] over one atomic state word and a sliding window.
//!
//! The state word packs the state, the half-open probe tallies and a generation that changes on every
//! transition. Permits carry the generation they were issued under, so the completion of a call
//! admitted before a transition (a slow call from a closed period that ends after the breaker opened,
//! a probe that outlived its half-open period) is recognised and left out.
//!
//! On the closed path, admission is one load of the state word and completion is one window record:
//! no lock, no allocation, and the clock is read only when a rule or the observer needs time.

use super::config::{Config, WindowKind};
use super::error::Open;
use crate::core::window::{CountWindow, Counts, Sample, TimeWindow};
use crate::core::{
    CircuitState, Emitter, EventKind, Gate, Observer, Outcome, Record, RejectReason,
};
use crate::sync::{nanos, AtomicU32, AtomicU64, Ordering::*, Padded};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The most probes a half-open breaker may admit.
pub(crate) const MAX_PROBES: u32 = (1 << PROBE_BITS) - 1;

const TAG_MASK: u64 = 0b111;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const METRICS_ONLY: u64 = 5;

const PROBE_BITS: u32 = 10;
const PROBE_MASK: u64 = (1 << PROBE_BITS) - 1;
const ADMITTED_SHIFT: u32 = 3;
const COMPLETED_SHIFT: u32 = ADMITTED_SHIFT + PROBE_BITS;
const FAILED_SHIFT: u32 = COMPLETED_SHIFT + PROBE_BITS;
const SLOW_SHIFT: u32 = FAILED_SHIFT + PROBE_BITS;
const GEN_SHIFT: u32 = SLOW_SHIFT + PROBE_BITS;

#[inline(always)]
fn tag(word: u64) -> u64 {
    word & TAG_MASK
}

#[inline(always)]
fn generation(word: u64) -> u32 {
    (word >> GEN_SHIFT) as u32
}

#[inline(always)]
fn field(word: u64, shift: u32) -> u32 {
    ((word >> shift) & PROBE_MASK) as u32
}

/// The word for a fresh state `tag` one generation after `word`.
#[inline]
fn next(word: u64, tag: u64) -> u64 {
    let generation = (generation(word) as u64 + 1) & ((1 << (64 - GEN_SHIFT)) - 1);
    generation << GEN_SHIFT | tag
}

fn state_of(tag: u64) -> CircuitState {
    match tag {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        FORCED_OPEN => CircuitState::ForcedOpen,
        DISABLED => CircuitState::Disabled,
        _ => CircuitState::MetricsOnly,
    }
}

fn tag_of(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => CLOSED,
        CircuitState::Open => OPEN,
        CircuitState::HalfOpen => HALF_OPEN,
        CircuitState::ForcedOpen => FORCED_OPEN,
        CircuitState::Disabled => DISABLED,
        CircuitState::MetricsOnly => METRICS_ONLY,
    }
}

/// What a breaker's admitted call carries: the generation it was admitted under, and whether it is a
/// half-open probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    generation: u32,
    probe: bool,
}

impl Permit {
    /// A permit issued in the state `word`: a plain admission, or a half-open probe.
    #[inline(always)]
    fn of(word: u64, probe: bool) -> Self {
        Permit {
            generation: generation(word),
            probe,
        }
    }
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

/// A time written by the transition that won, tagged with the generation it started: one word, so a
/// reader sees the time and whose it is together, and a completion that lost the race to trip (or a
/// caller that lost the race to start a half-open trial) never writes one.
///
/// The low 16 bits of the generation and 48 bits of microseconds since the breaker's origin (about
/// 8.9 years; later times saturate).
struct Stamp(AtomicU64);

const STAMP_GEN_BITS: u32 = 16;
const STAMP_GEN_MASK: u64 = (1 << STAMP_GEN_BITS) - 1;
const STAMP_TIME_MASK: u64 = (1 << (64 - STAMP_GEN_BITS)) - 1;

impl Stamp {
    fn new() -> Self {
        // Generation 0 is the first closed period, which has no stamp.
        Stamp(AtomicU64::new(0))
    }

    /// Records `nanos` (to the microsecond) as the time of the transition to `generation`,
    /// while the breaker (whose state word is `state`) is still in that generation. Every write is
    /// a compare-and-swap made after checking the state, so a transition that has been overtaken
    /// never overwrites a later one's time.
    fn publish(&self, state: &AtomicU64, generation: u32, nanos: u64) {
        // Truncated: an open period recorded ends up to a microsecond early, never late, so a
        // caller that reads the clock after a period's last nanosecond always finds it over.
        let micros = (nanos / 1_000).min(STAMP_TIME_MASK);
        let word = micros << STAMP_GEN_BITS | generation as u64 & STAMP_GEN_MASK;
        // Read the stamp, then the state, then swap: a later transition that publishes in between
        // changes the stamp (its tag differs), so the swap fails and the state is read again.
        let mut current = self.0.load(Acquire);
        while self::generation(state.load(Acquire)) == generation {
            match self.0.compare_exchange_weak(current, word, AcqRel, Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The time recorded for `generation`, in nanoseconds since the origin; `None` while the
    /// transition that started it has not recorded it yet.
    fn read(&self, generation: u32) -> Option<u64> {
        let word = self.0.load(Acquire);
        (word & STAMP_GEN_MASK == generation as u64 & STAMP_GEN_MASK)
            .then(|| (word >> STAMP_GEN_BITS).saturating_mul(1_000))
    }
}

/// A breaker's state as `health` shows it, read at once (see [`Breaker::view`]).
#[cfg_attr(
    not(all(
        feature = "health",
        any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
    )),
    allow(dead_code)
)]
pub(crate) struct View {
    pub(crate) state: CircuitState,
    pub(crate) probes_in_flight: u32,
    pub(crate) opened_ago: Option<Duration>,
    pub(crate) next_probe_in: Option<Duration>,
}

/// How long a breaker stays open after its `attempt`-th trip in a row (or a pool keeps an
/// endpoint ejected after its `attempt`-th ejection): `base`, times `multiplier` per repeat, capped
/// at `max`, then shortened by up to `jitter` (a fraction) at random.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Schedule {
    pub(crate) base: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

impl Schedule {
    /// The duration for `attempt` (1 for the first), with `draw` a uniform draw from `[0, 1)`.
    pub(crate) fn duration(&self, attempt: u32, draw: f64) -> Duration {
        // Past a thousand trips in a row the cap has long been reached; the bound keeps `powi` sane.
        let exponent = attempt.clamp(1, 1024) as i32 - 1;
        let grown = self.base.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = grown.min(self.max.as_secs_f64());
        // Saturates rather than panics for caps near `Duration::MAX`.
        Duration::try_from_secs_f64(capped * (1.0 - self.jitter * draw)).unwrap_or(self.max)
    }
}

/// The circuit breaker's [`Gate`]: its state machine, window and counters, shared by every service
/// made from one [`CircuitBreakerLayer`](super::CircuitBreakerLayer). Reach it through a
/// [`Handle`](super::Handle).
pub struct Breaker {
    state: Padded<AtomicU64>,
    window: Window,
    consecutive: Padded<AtomicU32>,
    /// When an open breaker admits its first probe, written by the trip that opened it.
    open_until: Stamp,
    /// When the breaker last went half-open, written by the call that moved it there.
    half_open_since: Stamp,
    /// When the breaker last opened (tripped or was forced open): for `health`, never read on
    /// the call path.
    opened_at: Stamp,
    /// Trips since the breaker last closed; the open duration grows with it.
    trips: AtomicU32,
    wants_time: bool,
    /// No rule but the window looks at successes (no consecutive-failures or slow-call rule).
    plain_success: bool,
    origin: Instant,
    config: Config,
    rng: Mutex<SmallRng>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("counts", &self.counts())
            .field("config", &self.config)
            .finish()
    }
}

impl Breaker {
    pub(crate) fn new(config: Config) -> Self {
        let window = match config.window {
            WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
            WindowKind::Time { duration, buckets } => {
                Window::Time(TimeWindow::new(duration, buckets))
            }
        };
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Breaker {
            state: Padded(AtomicU64::new(CLOSED)),
            // A time window reads the clock itself when a call ends; only the slow-call rule needs
            // the start too.
            wants_time: config.slow_rate_ppm.is_some(),
            plain_success: config.slow_rate_ppm.is_none() && config.consecutive_failures.is_none(),
            window,
            consecutive: Padded(AtomicU32::new(0)),
            open_until: Stamp::new(),
            half_open_since: Stamp::new(),
            opened_at: Stamp::new(),
            trips: AtomicU32::new(0),
            origin: Instant::now(),
            config,
            rng: Mutex::new(rng),
        }
    }

    #[inline]
    fn nanos(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }

    fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    /// When `record`'s call finished: from the record if it was timed, else from the clock.
    fn finished_at(&self, record: &Record) -> u64 {
        record
            .finished
            .map_or_else(|| self.now(), |t| self.nanos(t))
    }

    /// The current state. An open breaker whose open period is over still reads as open until the
    /// next call moves it to half-open.
    pub fn state(&self) -> CircuitState {
        state_of(tag(self.state.load(Acquire)))
    }

    pub(crate) fn counts(&self) -> Counts {
        match &self.window {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts_at(self.now()),
        }
    }

    /// Probes admitted in the current half-open trial that have not finished (0 unless half-open).
    pub(crate) fn probes_in_flight(&self) -> u32 {
        let word = self.state.load(Acquire);
        if tag(word) == HALF_OPEN {
            field(word, ADMITTED_SHIFT) - field(word, COMPLETED_SHIFT)
        } else {
            0
        }
    }

    /// The state, the half-open probes in flight, how long ago the breaker opened and how long
    /// until it admits its next probe, all from one reading of the state word, so never from two
    /// states: `opened_ago` only while open or forced open, `next_probe_in` only while open (zero
    /// once the open period is over: the next call probes). For `health`.
    #[cfg_attr(
        not(all(
            feature = "health",
            any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
        )),
        allow(dead_code)
    )]
    pub(crate) fn view(&self) -> View {
        let word = self.state.load(Acquire);
        let state = state_of(tag(word));
        let probes_in_flight = if tag(word) == HALF_OPEN {
            field(word, ADMITTED_SHIFT) - field(word, COMPLETED_SHIFT)
        } else {
            0
        };
        let (mut opened_ago, mut next_probe_in) = (None, None);
        if matches!(tag(word), OPEN | FORCED_OPEN) {
            // The times are stamped with the generation they belong to: one of a later state is
            // not taken for this one's.
            let now = self.now();
            let ago = |at: u64| Duration::from_nanos(now.saturating_sub(at));
            opened_ago = self.opened_at.read(generation(word)).map(ago);
            next_probe_in = (tag(word) == OPEN)
                .then(|| self.open_until.read(generation(word)))
                .flatten()
                .map(|until| Duration::from_nanos(until.saturating_sub(now)));
        }
        View {
            state,
            probes_in_flight,
            opened_ago,
            next_probe_in,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Relaxed)
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// How long the `attempt`-th trip in a row keeps the breaker open.
    fn open_duration(&self, attempt: u32) -> Duration {
        let c = &self.config;
        let draw = if c.open_jitter > 0.0 {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            rng.random::<f64>()
        } else {
            0.0
        };
        Schedule {
            base: c.open_duration,
            multiplier: c.open_multiplier,
            max: c.max_open_duration,
            jitter: c.open_jitter,
        }
        .duration(attempt, draw)
    }

    /// Opens the breaker from the state `word`, for `hint` if given, else for the backed-off
    /// duration. Returns the open-until time, or `None` if the state changed meanwhile.
    fn trip<O: Observer>(
        &self,
        word: u64,
        now: u64,
        hint: Option<Duration>,
        emit: Emitter<'_, O>,
    ) -> Option<u64> {
        // Trips since the breaker last closed on its own (a successful trial or a reset): a breaker
        // closed by hand keeps its growth.
        let attempt = self.trips.load(Relaxed).saturating_add(1);
        let duration = match (hint, self.config.max_retry_after) {
            (Some(hint), Some(max)) => hint.min(max),
            _ => self.open_duration(attempt),
        };
        let until = now.saturating_add(nanos(duration));
        let open = next(word, OPEN);
        self.state
            .compare_exchange(word, open, AcqRel, Acquire)
            .ok()?;
        // Only the trip that won writes its open period; until it has, callers see an open breaker
        // whose period is not known yet, and are rejected.
        self.open_until
            .publish(&self.state, generation(open), until);
        self.opened_at.publish(&self.state, generation(open), now);
        self.trips.store(attempt, Relaxed);
        emit.emit(EventKind::StateTransition {
            from: state_of(tag(word)),
            to: CircuitState::Open,
        });
        Some(until)
    }

    fn reset_window(&self, now: Option<u64>) {
        match &self.window {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(now.unwrap_or_else(|| self.now())),
        }
        self.consecutive.store(0, Relaxed);
    }

    /// Moves to `to` (closed, forced open, disabled or metrics-only) by hand, from whatever state the
    /// breaker is in. Closed and metrics-only start from an empty window.
    pub(crate) fn transition<O: Observer>(
        &self,
        to: CircuitState,
        forget_trips: bool,
        emit: Emitter<'_, O>,
    ) {
        let to_tag = tag_of(to);
        if to_tag == CLOSED || to_tag == METRICS_ONLY {
            self.reset_window(None);
        }
        if forget_trips {
            self.trips.store(0, Relaxed);
        }
        let from = self
            .state
            .fetch_update(AcqRel, Acquire, |word| Some(next(word, to_tag)))
            .expect("the update always succeeds");
        // Keeps the stamps' 16-bit generation tags from meeting an old stamp again after many
        // transitions by hand: a stamp is written at least once every few generations.
        let now = generation(next(from, to_tag));
        self.open_until.publish(&self.state, now, 0);
        self.half_open_since.publish(&self.state, now, 0);
        let opened = if to_tag == FORCED_OPEN { self.now() } else { 0 };
        self.opened_at.publish(&self.state, now, opened);
        if tag(from) != to_tag {
            emit.emit(EventKind::StateTransition {
                from: state_of(tag(from)),
                to,
            });
        }
    }

    /// Whether the rate rules say open, for the window's `counts`.
    fn rates_trip(&self, counts: Counts) -> bool {
        if counts.calls < self.config.minimum_calls {
            return false;
        }
        let over = |part: u64, ppm: Option<u64>| {
            ppm.is_some_and(|ppm| part as u128 * 1_000_000 >= ppm as u128 * counts.calls as u128)
        };
        over(counts.failures, self.config.failure_rate_ppm)
            || over(counts.slow, self.config.slow_rate_ppm)
    }

    #[inline]
    fn is_slow(&self, record: &Record) -> bool {
        self.config.slow_rate_ppm.is_some()
            && record
                .latency
                .is_some_and(|l| l >= self.config.slow_call_duration)
    }

    fn record_closed<O: Observer>(
        &self,
        word: u64,
        record: &Record,
        may_trip: bool,
        emit: Emitter<'_, O>,
    ) {
        let failure = match record.outcome {
            Outcome::Failure => true,
            Outcome::Success => false,
            _ => return,
        };
        let sample = Sample::new(failure, self.is_slow(record));
        let mut trip = false;
        if let Some(limit) = self.config.consecutive_failures {
            if failure {
                trip = self.consecutive.fetch_add(1, Relaxed).saturating_add(1) >= limit;
            } else if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
        }
        let hint = record.retry_after.filter(|_| failure);
        trip |= hint.is_some() && self.config.max_retry_after.is_some();
        let mut now = None;
        let changed = match &self.window {
            Window::Count(w) => w.record(sample),
            Window::Time(w) => {
                let at = self.finished_at(record);
                now = Some(at);
                w.record(at, sample)
            }
        };
        if may_trip && (trip || changed && self.rates_trip(self.window_counts())) {
            let now = now.unwrap_or_else(|| self.now());
            self.trip(word, now, hint, emit);
        }
    }

    #[inline]
    fn window_counts(&self) -> Counts {
        match &self.window {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(),
        }
    }

    /// Whether the finished probes of a half-open trial say close.
    fn probes_pass(&self, failed: u32, slow: u32) -> bool {
        let probes = self.config.half_open_probes as u128;
        let under = |part: u32, ppm: u64| (part as u128) * 1_000_000 < ppm as u128 * probes;
        let failures_ok = match self.config.failure_rate_ppm {
            Some(ppm) => under(failed, ppm),
            None => failed == 0,
        };
        let slow_ok = self.config.slow_rate_ppm.is_none_or(|ppm| under(slow, ppm));
        failures_ok && slow_ok
    }

    fn complete_probe<O: Observer>(&self, permit: Permit, record: &Record, emit: Emitter<'_, O>) {
        let failure = record.outcome == Outcome::Failure;
        let slow = self.is_slow(record);
        let probes = self.config.half_open_probes;
        let mut word = self.state.load(Acquire);
        loop {
            if tag(word) != HALF_OPEN || generation(word) != permit.generation {
                return; // a probe of an earlier trial
            }
            if record.outcome == Outcome::Ignored {
                // Says nothing either way: give the slot back for another probe.
                match self.state.compare_exchange_weak(
                    word,
                    word - (1 << ADMITTED_SHIFT),
                    AcqRel,
                    Acquire,
                ) {
                    Ok(_) => return,
                    Err(actual) => {
                        word = actual;
                        continue;
                    }
                }
            }
            let tallied = word
                + (1 << COMPLETED_SHIFT)
                + ((failure as u64) << FAILED_SHIFT)
                + ((slow as u64) << SLOW_SHIFT);
            if field(tallied, COMPLETED_SHIFT) < probes {
                match self
                    .state
                    .compare_exchange_weak(word, tallied, AcqRel, Acquire)
                {
                    Ok(_) => return,
                    Err(actual) => {
                        word = actual;
                        continue;
                    }
                }
            }
            // The last probe decides.
            if self.probes_pass(field(tallied, FAILED_SHIFT), field(tallied, SLOW_SHIFT)) {
                // Nothing records into the window while half-open, so emptying it first is safe.
                self.reset_window(record.finished.map(|t| self.nanos(t)));
                match self
                    .state
                    .compare_exchange(word, next(word, CLOSED), AcqRel, Acquire)
                {
                    Ok(_) => {
                        self.trips.store(0, Relaxed);
                        emit.emit(EventKind::StateTransition {
                            from: CircuitState::HalfOpen,
                            to: CircuitState::Closed,
                        });
                        return;
                    }
                    Err(actual) => word = actual,
                }
            } else {
                let now = self.finished_at(record);
                if self.trip(word, now, None, emit).is_some() {
                    return;
                }
                word = self.state.load(Acquire);
            }
        }
    }
}

impl Gate for Breaker {
    type Permit = Permit;
    type Rejection = Open;
    type Waiter = ();

    #[inline]
    fn poll_acquire<O: Observer>(
        &self,
        _cx: &mut Context<'_>,
        _waiter: &mut (),
        emit: Emitter<'_, O>,
    ) -> Poll<Result<Permit, Open>> {
        let word = self.state.load(Acquire);
        if matches!(tag(word), CLOSED | DISABLED | METRICS_ONLY) {
            return Poll::Ready(Ok(Permit::of(word, false)));
        }
        Poll::Ready(self.acquire_slow(word, emit))
    }

    #[inline]
    fn complete<O: Observer>(&self, permit: Permit, record: &Record, emit: Emitter<'_, O>) {
        let word = self.state.load(Acquire);
        // The common case, kept small enough to inline: a success in the closed state of the
        // generation it was admitted in, with a count window and no rule that looks at successes.
        if word == (permit.generation as u64) << GEN_SHIFT | CLOSED
            && !permit.probe
            && record.outcome == Outcome::Success
            && self.plain_success
        {
            if let Window::Count(window) = &self.window {
                if window.record(Sample::default()) {
                    self.check_rates(word, emit);
                }
                return;
            }
        }
        self.complete_other(word, permit, record, emit)
    }

    #[inline]
    fn cancel<O: Observer>(&self, permit: Permit, _emit: Emitter<'_, O>) {
        if permit.probe {
            self.give_back_probe(permit);
        }
    }

    /// A permit answers for the period it was admitted in: after any transition (a trip, a trial
    /// that ended, a change by hand) a service polled again asks anew.
    fn still_valid(&self, permit: &Permit) -> bool {
        generation(self.state.load(Acquire)) == permit.generation
    }

    #[inline]
    fn wants_latency(&self) -> bool {
        self.wants_time
    }

    #[inline]
    fn wants_retry_after(&self) -> bool {
        self.config.max_retry_after.is_some()
    }

    fn reject_reason(rejection: &Open) -> RejectReason {
        rejection.reason
    }
}

impl Breaker {
    /// Admits a call now or rejects it: [`Gate::poll_acquire`] for callers with no task context
    /// (the keyed breaker decides in `call`).
    #[inline]
    pub(crate) fn acquire<O: Observer>(&self, emit: Emitter<'_, O>) -> Result<Permit, Open> {
        let word = self.state.load(Acquire);
        if matches!(tag(word), CLOSED | DISABLED | METRICS_ONLY) {
            return Ok(Permit::of(word, false));
        }
        self.acquire_slow(word, emit)
    }

    /// Whether the breaker holds nothing worth keeping for a key gone idle: closed (or disabled,
    /// or metrics-only), half-open with no probe in flight, or open with its open period over for
    /// `idle` already. An open breaker remembers that its key is failing while that may still
    /// matter (a call would be rejected, or would be its first probe a moment after the period);
    /// once it has waited out its period and `idle` more with no call, its key is taken as gone.
    /// A forced-open breaker is kept (an operator's decision). A probe in flight must find its
    /// trial, while it may still come back: until the trial's longest wait is over (a call would
    /// then end the trial as failed) and `idle` more; after that it is taken as lost (the keyed
    /// breaker then leaves the slot's next breaker alone when it ends). Reads the clock only for
    /// an open breaker, or a half-open one with a probe in flight.
    pub(crate) fn forgettable(&self, idle: Duration) -> bool {
        let word = self.state.load(Acquire);
        match tag(word) {
            // Not written yet: it tripped a moment ago.
            OPEN => self
                .open_until
                .read(generation(word))
                .is_some_and(|until| self.now().saturating_sub(until) >= nanos(idle)),
            FORCED_OPEN => false,
            HALF_OPEN => {
                field(word, ADMITTED_SHIFT) == field(word, COMPLETED_SHIFT)
                    || self
                        .half_open_since
                        .read(generation(word))
                        .is_some_and(|since| {
                            let lost = self.config.max_half_open_wait.saturating_add(idle);
                            self.now().saturating_sub(since) >= nanos(lost)
                        })
            }
            _ => true,
        }
    }

    /// Gives a probe's slot back to its trial, if the trial is still running.
    fn give_back_probe(&self, permit: Permit) {
        let _ = self.state.fetch_update(AcqRel, Acquire, |word| {
            (tag(word) == HALF_OPEN
                && generation(word) == permit.generation
                && field(word, ADMITTED_SHIFT) > 0)
                .then(|| word - (1 << ADMITTED_SHIFT))
        });
    }

    /// Every completion but a plain closed-state success.
    #[inline(never)]
    fn complete_other<O: Observer>(
        &self,
        word: u64,
        permit: Permit,
        record: &Record,
        emit: Emitter<'_, O>,
    ) {
        if permit.probe {
            return self.complete_probe(permit, record, emit);
        }
        if generation(word) != permit.generation {
            return; // admitted before a transition: says nothing about the current period
        }
        match tag(word) {
            CLOSED => self.record_closed(word, record, true, emit),
            METRICS_ONLY => self.record_closed(word, record, false, emit),
            _ => {}
        }
    }

    /// A success changed a count window that is still filling: it may have reached the minimum.
    #[cold]
    #[inline(never)]
    fn check_rates<O: Observer>(&self, word: u64, emit: Emitter<'_, O>) {
        if self.rates_trip(self.window_counts()) {
            self.trip(word, self.now(), None, emit);
        }
    }

    /// Admission outside the closed state: open, half-open or forced open.
    #[cold]
    fn acquire_slow<O: Observer>(
        &self,
        mut word: u64,
        emit: Emitter<'_, O>,
    ) -> Result<Permit, Open> {
        loop {
            match tag(word) {
                CLOSED | DISABLED | METRICS_ONLY => return Ok(Permit::of(word, false)),
                FORCED_OPEN => {
                    return Err(Open {
                        retry_after: None,
                        reason: RejectReason::ForcedOpen,
                    })
                }
                OPEN => {
                    let now = self.now();
                    let Some(until) = self.open_until.read(generation(word)) else {
                        // Tripped a moment ago; the trip has not written its period yet.
                        return Err(Open {
                            retry_after: None,
                            reason: RejectReason::CircuitOpen,
                        });
                    };
                    if now < until {
                        return Err(Open::open_for(until - now));
                    }
                    // The open period is over: this call is the first probe.
                    let half = next(word, HALF_OPEN) + (1 << ADMITTED_SHIFT);
                    match self.state.compare_exchange(word, half, AcqRel, Acquire) {
                        Ok(_) => {
                            self.half_open_since
                                .publish(&self.state, generation(half), now);
                            let permit = Permit::of(half, true);
                            // Should the observer panic, the probe goes back to the trial.
                            let unsent = ProbeGuard(self, Some(permit));
                            emit.emit(EventKind::StateTransition {
                                from: CircuitState::Open,
                                to: CircuitState::HalfOpen,
                            });
                            return Ok(unsent.sent());
                        }
                        Err(actual) => word = actual,
                    }
                }
                _ => {
                    // Half-open.
                    if field(word, ADMITTED_SHIFT) < self.config.half_open_probes {
                        match self.state.compare_exchange_weak(
                            word,
                            word + (1 << ADMITTED_SHIFT),
                            AcqRel,
                            Acquire,
                        ) {
                            Ok(_) => return Ok(Permit::of(word, true)),
                            Err(actual) => {
                                word = actual;
                                continue;
                            }
                        }
                    }
                    let now = self.now();
                    // Not written yet: the trial has only just started.
                    let since = self.half_open_since.read(generation(word)).unwrap_or(now);
                    let waited = Duration::from_nanos(now.saturating_sub(since));
                    if waited < self.config.max_half_open_wait {
                        return Err(Open {
                            retry_after: None,
                            reason: RejectReason::HalfOpenFull,
                        });
                    }
                    // The probes never came back: the trial failed.
                    match self.trip(word, now, None, emit) {
                        Some(until) => return Err(Open::open_for(until - now)),
                        None => word = self.state.load(Acquire),
                    }
                }
            }
        }
    }
}

/// A half-open probe admitted but not yet handed to its caller; given back if dropped (an observer
/// panicked while the transition was being reported).
struct ProbeGuard<'a>(&'a Breaker, Option<Permit>);

impl ProbeGuard<'_> {
    fn sent(mut self) -> Permit {
        self.1.take().expect("a probe is sent once")
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.1.take() {
            self.0.give_back_probe(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Event, Source};

    fn breaker(probes: u32) -> Breaker {
        Breaker::new(Config {
            failure_rate_ppm: Some(500_000),
            slow_rate_ppm: None,
            slow_call_duration: Duration::from_secs(60),
            consecutive_failures: None,
            minimum_calls: 20,
            window: WindowKind::Count(100),
            half_open_probes: probes,
            max_half_open_wait: Duration::from_secs(30),
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(120),
            open_multiplier: 2.0,
            open_jitter: 0.0,
            max_retry_after: Some(Duration::from_secs(600)),
            seed: Some(7),
        })
    }

    const SECOND: u64 = 1_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn a_trip_that_lost_the_race_does_not_write_the_open_period() {
        let source = Source::new("b", ());
        let b = breaker(1);
        let closed = b.state.load(Acquire);
        let now = b.now();
        assert_eq!(
            b.trip(closed, now, None, source.emitter()),
            Some(now + 5 * SECOND)
        );
        // A completion that read the same closed state, with a server's hint of 60 s, loses.
        let hint = Some(Duration::from_secs(60));
        assert_eq!(b.trip(closed, now, hint, source.emitter()), None);
        let open = b
            .acquire_slow(b.state.load(Acquire), source.emitter())
            .unwrap_err();
        assert_eq!(
            open.retry_after,
            Some(Duration::from_secs(5)),
            "the winner's period stands"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            b.acquire_slow(b.state.load(Acquire), source.emitter())
                .unwrap()
                .probe
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_lost_the_race_to_start_a_trial_does_not_move_its_start() {
        let source = Source::new("b", ());
        let b = breaker(1);
        let closed = b.state.load(Acquire);
        b.trip(closed, b.now(), None, source.emitter()).unwrap();
        let open = b.state.load(Acquire);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            b.acquire_slow(open, source.emitter()).unwrap().probe,
            "the trial starts at 5 s"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        // A caller that read the open state long ago, and only now tries to start the trial.
        let late = b.acquire_slow(open, source.emitter()).unwrap_err();
        assert_eq!(late.reason, RejectReason::HalfOpenFull);
        tokio::time::advance(Duration::from_secs(10)).await;
        // 30 s after the trial started, its probe has not come back: the trial has failed.
        let now = b
            .acquire_slow(b.state.load(Acquire), source.emitter())
            .unwrap_err();
        assert_eq!(now.reason, RejectReason::CircuitOpen, "{now:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_observer_at_half_open_gives_the_probe_back() {
        let panicking = Source::new("b", |event: &Event<'_>| {
            if let EventKind::StateTransition {
                to: CircuitState::HalfOpen,
                ..
            } = event.kind
            {
                panic!("observer fails");
            }
        });
        let quiet = Source::new("b", ());
        let b = breaker(1);
        b.trip(b.state.load(Acquire), b.now(), None, quiet.emitter())
            .unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let open = b.state.load(Acquire);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.acquire_slow(open, panicking.emitter())
        }));
        assert!(panicked.is_err());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.probes_in_flight(), 0, "the probe went back to the trial");
        assert!(
            b.acquire_slow(b.state.load(Acquire), quiet.emitter())
                .unwrap()
                .probe
        );
    }
}
