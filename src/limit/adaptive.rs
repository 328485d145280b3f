//! The adaptive concurrency limiter: the bulkhead's gate, with a limit an [`Algorithm`] moves.

use super::algorithm::{Algorithm, InvalidSetting, Sample};
use crate::bulkhead::config::{check_queue, QueueMistake};
use crate::bulkhead::error::Full;
use crate::bulkhead::{
    Bulkhead, Codel, DeadlineBulkhead, Order, QueueGate, Waiter, MAX_CONCURRENT,
};
use crate::core::gate::{Anchor, Guard, Shared};
use crate::core::{
    CarriedDeadline, Emitter, ErrorIsFailure, EventKind, Gate, NoDeadline, Observer, Outcome,
    Record, RejectReason,
};
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::Layer;

/// The adaptive limiter's gate: a bulkhead whose limit follows an algorithm.
pub struct Adaptive<A> {
    bulkhead: Bulkhead,
    state: Mutex<State<A>>,
    /// Drops that found the algorithm busy with another sample, for whoever holds it next to
    /// apply: no drop is lost to contention.
    missed_drops: AtomicU64,
    /// Time one call in this many on each thread.
    sample_every: AtomicU64,
    /// Whether `sample_every` follows the call rate (the default) or was fixed by the builder.
    auto_sample: bool,
}

/// With automatic sampling, about how many calls a second are timed: every call of a limiter
/// that sees fewer, one in `rate / TIMED_PER_SECOND` of one that sees more.
const TIMED_PER_SECOND: f64 = 4_096.0;

/// With automatic sampling, at least one call in this many is timed, whatever the rate.
const MAX_SAMPLE_EVERY: u64 = 64;

/// How often to time calls, from one timed call: by Little's law, a limiter whose calls take
/// `rtt` with `in_flight` running sees `in_flight / rtt` calls a second. `None` when the call took
/// no measurable time (paused time in tests), which says nothing of the rate.
fn auto_sample_every(rtt: Duration, in_flight: u64) -> Option<u64> {
    let nanos = rtt.as_nanos();
    if nanos == 0 {
        return None;
    }
    let rate = in_flight as f64 * 1e9 / nanos as f64;
    // The float-to-int cast saturates, and the clamp keeps it within 1..=MAX_SAMPLE_EVERY.
    Some(((rate / TIMED_PER_SECOND) as u64).clamp(1, MAX_SAMPLE_EVERY))
}

struct State<A> {
    algorithm: A,
    limit: f64,
}

/// How many times a call that let go of the algorithm looks again for drops that came while it
/// held it.
const DRAIN_PASSES: usize = 4;

/// The limit an algorithm gave, as the bulkhead's slots can count it: within
/// `1..=MAX_CONCURRENT`, and one if it is not a number. Whatever an algorithm (a user's, or one
/// with no maximum) says, the bulkhead's counts cannot overflow.
fn applicable(limit: f64) -> f64 {
    if limit.is_nan() {
        1.0
    } else {
        limit.clamp(1.0, MAX_CONCURRENT as f64)
    }
}

/// A mistake in an adaptive limiter's configuration, found by
/// [`AdaptiveLimitBuilder::build`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// [`sample_every`](AdaptiveLimitBuilder::sample_every) is zero: one call in zero cannot be
    /// timed.
    #[error("sample_every must be at least 1 (one call in n is timed)")]
    SampleEvery,
    /// A maximum wait was set for a limiter that does not queue.
    #[error("a maximum wait needs a queue (queue length is zero)")]
    MaxWaitWithoutQueue,
    /// Controlled delay ([`codel`](AdaptiveLimitBuilder::codel)) was set for a limiter that does
    /// not queue.
    #[error("controlled delay (codel) needs a queue (queue length is zero)")]
    CodelWithoutQueue,
    /// The [`Codel`] target is zero, or longer than its interval.
    #[error(
        "codel target must be above zero and at most the interval, got target {target:?}, interval {interval:?}"
    )]
    Codel {
        /// The target given.
        target: Duration,
        /// The interval given.
        interval: Duration,
    },
    /// A setting of the algorithm cannot work (see [`Algorithm::check`]).
    #[error("invalid algorithm setting: {0}")]
    Algorithm(#[from] InvalidSetting),
}

/// An admitted call of an adaptive limiter: when it started, if it is a timed sample.
#[derive(Debug)]
pub struct AdaptivePermit {
    /// Set when the call is made ([`Gate::calling`]), if it is to be timed.
    start: Option<Instant>,
    /// The calls in flight when it was made; [`TO_TIME`] until then if it is to be timed.
    in_flight: u64,
}

/// The mark of a permit whose call is to be timed from when it is made: admission may come long
/// before (a caller waiting for the service beneath to be ready), and that wait is not the
/// service's round-trip time.
const TO_TIME: u64 = u64::MAX;

/// Whether this call of the calling thread is one to time: one in `every`, counted down on the
/// thread (a division per call would cost more than the count). Limiters called on one thread share
/// its count, so the share is roughly of all the calls the thread makes through adaptive limiters,
/// not of each limiter's own.
#[inline]
fn sampled(every: u64) -> bool {
    thread_local! {
        static UNTIL_NEXT: Cell<u64> = const { Cell::new(0) };
    }
    UNTIL_NEXT.with(|left| {
        let n = left.get();
        // A count left from a sparser rate than `every` starts again at once.
        if n == 0 || n >= every {
            left.set(every - 1);
            true
        } else {
            left.set(n - 1);
            false
        }
    })
}

impl<A> fmt::Debug for Adaptive<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adaptive")
            .field("bulkhead", &self.bulkhead)
            .field("sample_every", &self.sample_every.load(Relaxed))
            .field("auto_sample", &self.auto_sample)
            .finish()
    }
}

/// The bulkhead's rejection as the limiter's own: every slot taken is its limit reached, not a
/// full bulkhead, in events and metrics. (Its queue's rejections are a bulkhead queue's.)
#[cold]
fn limit_reached(full: Full) -> Full {
    if full.reason() == RejectReason::BulkheadFull {
        Full::new(RejectReason::ConcurrencyLimited, full.waited())
    } else {
        full
    }
}

impl<A: Algorithm> Gate for Adaptive<A> {
    type Permit = AdaptivePermit;
    type Rejection = Full;
    type Waiter = Waiter;

    #[inline]
    fn poll_acquire<O: Observer>(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        emit: Emitter<'_, O>,
    ) -> Poll<Result<AdaptivePermit, Full>> {
        ready!(self.bulkhead.poll_acquire(cx, waiter, emit)).map_err(limit_reached)?;
        Poll::Ready(Ok(self.permit()))
    }

    #[inline]
    fn complete<O: Observer>(&self, permit: AdaptivePermit, record: &Record, emit: Emitter<'_, O>) {
        self.bulkhead.inner.release();
        let dropped = record.outcome == Outcome::Failure;
        if permit.start.is_some() || dropped {
            self.learn(permit, dropped, emit);
        }
    }

    #[inline]
    fn cancel<O: Observer>(&self, _: AdaptivePermit, _: Emitter<'_, O>) {
        self.bulkhead.inner.release();
    }

    #[inline]
    fn calling(&self, permit: &mut AdaptivePermit) {
        if permit.in_flight == TO_TIME {
            *permit = AdaptivePermit {
                start: Some(Instant::now()),
                in_flight: self.bulkhead.inner.in_flight(),
            };
        }
    }

    #[inline]
    fn wants_latency(&self) -> bool {
        false
    }

    fn reject_reason(rejection: &Full) -> RejectReason {
        rejection.reason()
    }
}

impl<A> crate::bulkhead::deadline::sealed::Sealed for Adaptive<A> {}

impl<A: Algorithm> QueueGate for Adaptive<A> {
    #[inline(always)]
    fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    #[inline(always)]
    fn slotted(&self) -> AdaptivePermit {
        self.permit()
    }

    fn refusal(full: Full) -> Full {
        limit_reached(full)
    }
}

impl<A: Algorithm> Adaptive<A> {
    /// The permit of a call given its slot: timed from when the call is made, if it is one to
    /// time.
    #[inline]
    fn permit(&self) -> AdaptivePermit {
        if sampled(self.sample_every.load(Relaxed)) {
            AdaptivePermit {
                start: None,
                in_flight: TO_TIME,
            }
        } else {
            AdaptivePermit {
                start: None,
                in_flight: 0,
            }
        }
    }

    /// The algorithm's state if no one else holds it. A lock poisoned by an algorithm that
    /// panicked is taken all the same: the limit it holds is the last one applied, and learning
    /// goes on from there.
    fn try_state(&self) -> Option<MutexGuard<'_, State<A>>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Feeds one finished call to the algorithm, and moves the limit if it says so.
    ///
    /// The algorithm is behind a lock that is never waited for. A timed success that finds it
    /// taken is skipped (it is one round-trip time among many); a drop is counted in
    /// `missed_drops` instead, for the holder to apply: the holder takes them all in one step
    /// ([`Algorithm::update_dropped`]) while it holds the lock, and looks again once it has let
    /// go, so that a drop that came too late for it is applied by it, not left for a call that
    /// may not come. No drop is lost, and no call does more than constant work.
    #[inline(never)]
    fn learn<O: Observer>(&self, permit: AdaptivePermit, dropped: bool, emit: Emitter<'_, O>) {
        // Where the limit was before this call's learning, if it moved: reported once, at the
        // end, so that an observer that panics cannot stop the missed drops being applied.
        let moved = match self.try_state() {
            Some(state) => self.apply(state, Some((permit, dropped))),
            None if dropped => {
                self.missed_drops.fetch_add(1, SeqCst);
                // This side counts the drop, then tries the lock again; the holder lets go of the
                // lock, then reads the count (`drain`). With a fence between on both sides, at
                // least one of the two sees what the other wrote: the drop is applied here, or
                // by the holder.
                fence(SeqCst);
                match self.try_state() {
                    Some(state) => self.apply(state, None),
                    None => return,
                }
            }
            None => return,
        };
        let moved = self.drain().or(moved);
        if let Some(from) = moved {
            let to = self.bulkhead.inner.limit();
            if to != from {
                emit.emit(EventKind::LimitChanged { from, to });
            }
        }
    }

    /// Once the lock is let go: applies the drops that came while it was held, and whose callers
    /// found it held. Each pass applies, in one step, every drop counted before it; it stops when
    /// none came meanwhile, when another caller holds the lock (who looks in turn once it lets
    /// go), or after [`DRAIN_PASSES`], so that no call does more than constant work. Drops still
    /// left then came during each of those passes: a stream of failures, whose next call applies
    /// them.
    /// Returns where the limit was before the first pass that moved it.
    fn drain(&self) -> Option<u64> {
        let mut moved = None;
        for _ in 0..DRAIN_PASSES {
            fence(SeqCst);
            if self.missed_drops.load(SeqCst) == 0 {
                break;
            }
            match self.try_state() {
                Some(state) => {
                    if let Some(from) = self.apply(state, None) {
                        moved.get_or_insert(from);
                    }
                }
                None => break,
            }
        }
        moved
    }

    /// Under the lock: feeds the call (if any) and the drops missed so far to the algorithm,
    /// applies the limit, lets go of the lock, and returns where the limit was if it moved.
    fn apply(
        &self,
        mut state: MutexGuard<'_, State<A>>,
        call: Option<(AdaptivePermit, bool)>,
    ) -> Option<u64> {
        let at = Instant::now();
        let mut limit = state.limit;
        if let Some((permit, dropped)) = call {
            let (rtt, in_flight) = match permit.start {
                Some(start) => {
                    let rtt = at.saturating_duration_since(start);
                    if self.auto_sample {
                        if let Some(every) = auto_sample_every(rtt, permit.in_flight) {
                            self.sample_every.store(every, Relaxed);
                        }
                    }
                    (rtt, permit.in_flight)
                }
                // An untimed drop.
                None => (Duration::ZERO, self.bulkhead.inner.in_flight() + 1),
            };
            let sample = Sample {
                rtt,
                in_flight,
                dropped,
                at,
            };
            limit = applicable(state.algorithm.update(limit, &sample));
        }
        // Drops that found the lock taken, as untimed drops, all in one step.
        if self.missed_drops.load(SeqCst) != 0 {
            let missed = self.missed_drops.swap(0, SeqCst);
            let drop = Sample {
                rtt: Duration::ZERO,
                in_flight: self.bulkhead.inner.in_flight() + 1,
                dropped: true,
                at,
            };
            limit = applicable(state.algorithm.update_dropped(limit, &drop, missed));
        }
        state.limit = limit;
        let whole = limit as u64;
        let slots = &self.bulkhead.inner;
        let from = slots.limit();
        if whole == from {
            return None;
        }
        slots.set_limit(whole);
        Some(from)
    }
}

/// A service behind an adaptive limiter.
pub type AdaptiveLimit<S, A, C = ErrorIsFailure, O = ()> = Guard<S, Adaptive<A>, C, O>;

/// A service behind an adaptive limiter built with
/// [`honour_deadlines`](AdaptiveLimitBuilder::honour_deadlines): it decides in `call`, and a call
/// waits in the queue never past its request's deadline. See
/// [`DeadlineBulkhead`](crate::bulkhead::DeadlineBulkhead), whose gate is the limiter's here.
pub type DeadlineAdaptiveLimit<S, A, C = ErrorIsFailure, O = ()> =
    DeadlineBulkhead<S, C, O, Adaptive<A>>;

/// Limits concurrency to what the service beneath shows it can take: an [`Algorithm`] (AIMD,
/// Gradient2, Vegas) moves the limit from the calls' round-trip times and failures, over the
/// bulkhead's gate and its queue options. See the [module docs](super).
///
/// Every call's outcome comes from the classifier (every `Err` by default): a failure counts as a
/// drop. A call is timed from the moment it has its slot, after any wait in the queue, to its end,
/// so the algorithm learns from time in service and a queue never inflates the limit. Timing a call costs two clock reads, so a limiter that sees more than about 4,000 calls a
/// second times only a share of them; see
/// [`sample_every`](AdaptiveLimitBuilder::sample_every).
///
/// Wrap the algorithm in [`Windowed`](super::algorithm::Windowed) for a service of more than a few
/// hundred calls a second, as Netflix does: `docs/back-pressure.md` shows what per-call updates do
/// to a surge.
///
/// ```
/// use seawall::limit::algorithm::{Gradient2, Windowed};
/// use seawall::limit::AdaptiveLimitLayer;
///
/// let layer = AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
///     .queue(100)
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().limit(), 20);
/// ```
///
/// Its services are [`AdaptiveLimit`]s, which wait for a slot in `poll_ready`; built with
/// [`honour_deadlines`](AdaptiveLimitBuilder::honour_deadlines) (`D` is then
/// [`CarriedDeadline`]), they are [`DeadlineAdaptiveLimit`]s, which decide in `call` and never
/// wait past a request's deadline.
pub struct AdaptiveLimitLayer<A: 'static, C = ErrorIsFailure, O: 'static = (), D = NoDeadline> {
    shared: Anchor<Shared<Adaptive<A>, O>>,
    classify: C,
    /// Where it decides: in `poll_ready` ([`NoDeadline`]), or in `call`, reading the request's
    /// deadline ([`CarriedDeadline`]).
    deadline: D,
}

/// Builds an [`AdaptiveLimitLayer`].
#[derive(Debug)]
pub struct AdaptiveLimitBuilder<A, O = (), D = NoDeadline> {
    algorithm: A,
    name: Cow<'static, str>,
    max_queue: usize,
    max_wait: Option<Duration>,
    order: Order,
    codel: Option<Codel>,
    sample_every: Option<u64>,
    observer: O,
    deadline: D,
}

impl<A: Algorithm> AdaptiveLimitLayer<A> {
    /// Starts a builder for a limiter run by `algorithm`, with no queue.
    pub fn builder(algorithm: A) -> AdaptiveLimitBuilder<A> {
        AdaptiveLimitBuilder {
            algorithm,
            name: Cow::Borrowed("adaptive_limit"),
            max_queue: 0,
            max_wait: None,
            order: Order::Fifo,
            codel: None,
            sample_every: None,
            observer: (),
            deadline: NoDeadline,
        }
    }
}

impl<A, O, D> AdaptiveLimitBuilder<A, O, D> {
    /// The layer's name, in events.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    crate::bulkhead::config::queue_setters!();

    /// Decides in `call`, where the request is known, rather than in `poll_ready`, and honours
    /// the [`Deadline`](crate::core::Deadline) each request carries, as the bulkhead's
    /// [`honour_deadlines`](crate::bulkhead::Builder::honour_deadlines) does: a call waits in the
    /// queue no longer than its deadline allows (nor than controlled delay and
    /// [`max_wait`](Self::max_wait) allow), and then fails with
    /// [`Full`](crate::bulkhead::error::Full), not a timeout; a request that must queue and whose
    /// deadline has passed is refused at once (one that finds a slot free is made, its deadline
    /// unread). The layer's services are then [`DeadlineAdaptiveLimit`]s: as ready as
    /// the service beneath (which must be `Clone`), a call that must queue waiting in its
    /// response future. Calls are still timed from the moment they have their slot, so the
    /// algorithm learns from time in service. Useful with a [`queue`](Self::queue).
    pub fn honour_deadlines(self) -> AdaptiveLimitBuilder<A, O, CarriedDeadline> {
        AdaptiveLimitBuilder {
            algorithm: self.algorithm,
            name: self.name,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            order: self.order,
            codel: self.codel,
            sample_every: self.sample_every,
            observer: self.observer,
            deadline: CarriedDeadline,
        }
    }

    /// Times one call in `n` on each thread (1: every call), to save the two clock reads of the
    /// others; failures are always counted. Zero is a mistake, which
    /// [`build`](Self::build) refuses with [`ConfigError::SampleEvery`].
    ///
    /// By default the limiter chooses: it times every call while it sees up to about 4,000 calls a
    /// second, and about 4,000 calls a second above that (at least one call in 64), judging its rate
    /// from each timed call (calls in flight over round-trip time, by Little's law). A windowed
    /// algorithm then still gets thousands of round-trip times a window, while a fast service pays
    /// for a clock read on only a few of its calls. An algorithm that updates on every sample
    /// (unwindowed) sees only the timed ones at high rates: fix `n` at 1 to feed it every call.
    ///
    /// ```
    /// use seawall::limit::algorithm::Aimd;
    /// use seawall::limit::AdaptiveLimitLayer;
    ///
    /// // Every call timed, whatever the rate.
    /// let layer = AdaptiveLimitLayer::builder(Aimd::default())
    ///     .sample_every(1)
    ///     .build()
    ///     .unwrap();
    /// # drop(layer);
    /// ```
    pub fn sample_every(mut self, n: u64) -> Self {
        self.sample_every = Some(n);
        self
    }

    /// Sends the layer's events (including every change of the limit) to `observer`.
    pub fn observer<O2: Observer>(self, observer: O2) -> AdaptiveLimitBuilder<A, O2, D> {
        AdaptiveLimitBuilder {
            algorithm: self.algorithm,
            name: self.name,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            order: self.order,
            codel: self.codel,
            sample_every: self.sample_every,
            observer,
            deadline: self.deadline,
        }
    }

    /// Checks the settings and builds the layer. A mistake is a [`ConfigError`], never a panic:
    /// `sample_every(0)`, a maximum wait or controlled delay without a queue, a codel target of
    /// zero or above its interval, or an algorithm whose [`check`](Algorithm::check) fails
    /// (bounds that are not numbers or the wrong way round, a backoff or smoothing out of range,
    /// `Fixed(0)`...).
    ///
    /// ```
    /// use seawall::limit::algorithm::Aimd;
    /// use seawall::limit::{AdaptiveConfigError, AdaptiveLimitLayer};
    ///
    /// let backwards = Aimd { min: 50.0, max: 10.0, ..Aimd::default() };
    /// let err = AdaptiveLimitLayer::builder(backwards).build().unwrap_err();
    /// assert!(matches!(err, AdaptiveConfigError::Algorithm(_)), "{err}");
    /// ```
    pub fn build(self) -> Result<AdaptiveLimitLayer<A, ErrorIsFailure, O, D>, ConfigError>
    where
        A: Algorithm,
        O: Observer,
    {
        if self.sample_every == Some(0) {
            return Err(ConfigError::SampleEvery);
        }
        check_queue(self.max_queue, self.max_wait, self.codel).map_err(
            |mistake| match mistake {
                QueueMistake::MaxWaitWithoutQueue => ConfigError::MaxWaitWithoutQueue,
                QueueMistake::CodelWithoutQueue => ConfigError::CodelWithoutQueue,
                QueueMistake::Codel(Codel { target, interval }) => {
                    ConfigError::Codel { target, interval }
                }
            },
        )?;
        self.algorithm.check()?;
        let limit = applicable(self.algorithm.initial());
        let gate = Adaptive {
            bulkhead: Bulkhead::new(
                limit as u64,
                self.max_queue,
                self.max_wait,
                self.order,
                self.codel,
            ),
            state: Mutex::new(State {
                algorithm: self.algorithm,
                limit,
            }),
            missed_drops: AtomicU64::new(0),
            sample_every: AtomicU64::new(self.sample_every.unwrap_or(1)),
            auto_sample: self.sample_every.is_none(),
        };
        let shared = Shared::new(self.name, gate, self.observer);
        shared.emitter().emit(EventKind::Started {
            state: None,
            limit: Some(limit as u64),
        });
        Ok(AdaptiveLimitLayer {
            shared: Anchor::counted(shared),
            classify: ErrorIsFailure,
            deadline: self.deadline,
        })
    }

    /// The same as [`build`](Self::build), which now returns the error itself.
    #[deprecated(note = "use `build`, which returns a `Result`")]
    pub fn try_build(self) -> Result<AdaptiveLimitLayer<A, ErrorIsFailure, O, D>, ConfigError>
    where
        A: Algorithm,
        O: Observer,
    {
        self.build()
    }
}

impl<A: Algorithm, C, O: Observer, D> AdaptiveLimitLayer<A, C, O, D> {
    /// A handle on this layer's limiter.
    pub fn handle(&self) -> AdaptiveHandle<A, O> {
        AdaptiveHandle {
            shared: self.shared.clone(),
        }
    }

    /// The same limiter, with another classifier: what counts as a drop.
    pub fn classify<C2>(self, classify: C2) -> AdaptiveLimitLayer<A, C2, O, D> {
        AdaptiveLimitLayer {
            shared: self.shared,
            classify,
            deadline: self.deadline,
        }
    }
}

impl<A, C: Clone, O, D: Clone> Clone for AdaptiveLimitLayer<A, C, O, D> {
    fn clone(&self) -> Self {
        AdaptiveLimitLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

impl<A, C: fmt::Debug, O, D: fmt::Debug> fmt::Debug for AdaptiveLimitLayer<A, C, O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("name", &self.shared.name())
            .field("limiter", &self.shared.gate)
            .field("classify", &self.classify)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<S, A: Algorithm, C: Clone, O: Observer> Layer<S> for AdaptiveLimitLayer<A, C, O> {
    type Service = AdaptiveLimit<S, A, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), self.classify.clone())
    }
}

impl<S, A: Algorithm, C: Clone, O: Observer> Layer<S>
    for AdaptiveLimitLayer<A, C, O, CarriedDeadline>
{
    type Service = DeadlineAdaptiveLimit<S, A, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineBulkhead::new(inner, self.shared.clone(), self.classify.clone())
    }
}

/// A handle on an adaptive limiter: its current limit, and the calls running and waiting.
pub struct AdaptiveHandle<A: 'static, O: 'static = ()> {
    pub(crate) shared: Anchor<Shared<Adaptive<A>, O>>,
}

impl<A, O> AdaptiveHandle<A, O> {
    /// The current limit.
    pub fn limit(&self) -> u64 {
        self.shared.gate.bulkhead.inner.limit()
    }

    /// How many calls hold a slot.
    pub fn in_flight(&self) -> u64 {
        self.shared.gate.bulkhead.inner.in_flight()
    }

    /// How many callers wait in the queue.
    pub fn queued(&self) -> u64 {
        self.shared.gate.bulkhead.inner.queued()
    }

    /// One call in how many is timed on each thread: fixed by
    /// [`sample_every`](AdaptiveLimitBuilder::sample_every), or the limiter's current choice.
    pub fn sample_every(&self) -> u64 {
        self.shared.gate.sample_every.load(Relaxed)
    }
}

impl<A, O> Clone for AdaptiveHandle<A, O> {
    fn clone(&self) -> Self {
        AdaptiveHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<A, O> fmt::Debug for AdaptiveHandle<A, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveHandle")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("sample_every", &self.sample_every())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_timed_calls_follows_the_rate_by_littles_law() {
        // 100 calls a second: every one.
        assert_eq!(auto_sample_every(Duration::from_millis(30), 3), Some(1));
        // 200,000 calls a second: one in 48.
        assert_eq!(auto_sample_every(Duration::from_millis(1), 200), Some(48));
        // A no-op service: the most it skips.
        assert_eq!(auto_sample_every(Duration::from_nanos(30), 1), Some(64));
        assert_eq!(
            auto_sample_every(Duration::from_nanos(1), u64::MAX),
            Some(64)
        );
        // No time measured: no rate.
        assert_eq!(auto_sample_every(Duration::ZERO, 10), None);
    }

    #[test]
    fn a_thread_times_one_call_in_every() {
        // Start from a fresh count (another test on this thread may have left one).
        sampled(1);
        let timed = (0..64).filter(|_| sampled(16)).count();
        assert_eq!(timed, 4);
        // A smaller `every` starts again at once instead of finishing a longer count.
        sampled(64);
        assert!(sampled(2));
        assert!(!sampled(2));
        assert!(sampled(2));
    }
}
