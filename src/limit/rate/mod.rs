//! Rate limiting with GCRA, the generic cell rate algorithm: a [`Quota`] of calls per period with
//! a burst, enforced on one atomic word per limit, exactly over any window, with no background task
//! and no lock.
//!
//! - [`RateLimitLayer`]: one limit for every call through the layer.
//! - [`KeyedRateLimitLayer`]: one limit per key taken from the request (a client address, an API
//!   key, a tenant), in a table of bounded size.
//!
//! Both either turn a call over the quota away at once, failing it with
//! [`RateLimited`] (which says when to come back: the `Retry-After`
//! value), or, with a maximum wait, reserve the call a later slot and make it wait for it.
//!
//! # Callers that stop waiting
//!
//! A caller that goes away while it waits for its slot (a timeout above it fired, its client
//! left) gives the slot back: the next caller that can wait until then takes it, and goes ahead
//! at that very time, in place of the one that left; a slot that is still the last one reserved
//! goes back to the limit itself. So a surge of callers that give up does not use the quota up
//! for nothing, and the limit holds exactly as it would have: the calls let through are ones the
//! algorithm had already allowed. (Moving the limit back by one interval whatever came after
//! would not be safe: two calls would then share one slot.)
//!
//! # Deadlines
//!
//! The global limiter decides in `poll_ready` by default, as tower's back-pressure expects: a
//! call that must wait waits there, before the request exists, so its deadline is unknown; a
//! timeout above starts only when the call is made, after the wait. With `honour_deadlines()`
//! ([`RateLimitBuilder::honour_deadlines`], [`KeyedBuilder::honour_deadlines`]) a limiter reads
//! the [`Deadline`](crate::core::Deadline) a request carries: a call whose slot would come at or
//! after its deadline (one whose deadline has passed, whatever the quota) fails at once with
//! [`RateLimited`] and its `retry_after`, taking nothing, rather than a slot it cannot use. That
//! needs the request, so the limiter then decides in `call`: its services are as ready as the
//! service beneath, and a call that must wait does so in its response future, then is made on
//! the inner service made ready for it, the limiter's service keeping a clone for its next call
//! (the inner service must be `Clone`).
//! The keyed limiter always decides in `call`, once the key is known.
//!
//! State is created once per layer and shared by every clone of the layer and every service it
//! makes, so a limit holds under axum, which clones services per connection. Quotas can be changed
//! at run time through a handle.
//!
//! # How GCRA works
//!
//! Each limit keeps one number, the theoretical arrival time `tat`: when its next call would be
//! due if calls came at exactly the quota's rate. A call at `now` is let through when
//! `max(tat, now) + interval − now ≤ burst × interval`, and moves `tat` forward by one interval.
//! A limit whose `tat` is in the past has its whole burst available, which is also how a fresh
//! limit starts: forgetting an idle limit loses nothing.

mod clock;
mod deadline;
pub(crate) mod gcra;
mod holes;
pub(crate) mod keyed;
pub(crate) mod wait;

#[cfg(feature = "quanta")]
pub use clock::QuantaClock;
pub use clock::{Clock, ManualClock, TokioClock};
pub use deadline::DeadlineRateLimit;
pub use gcra::{Quota, QuotaError, Slot};
pub use keyed::{
    CarriedDeadline, KeyedBuilder, KeyedHandle, KeyedRateLimit, KeyedRateLimitLayer,
    KeyedResponseFuture, NoDeadline, ReadDeadline,
};

use super::error::RateLimited;
use crate::core::gate::{Anchor, Guard, Shared};
use crate::core::{Emitter, ErrorIsFailure, Gate, Observer, Record, RejectReason, Source};
use crate::sync::Mutex;
use crate::sync::{AtomicU64, Padded};
use gcra::{Decision, Rule};
use holes::{Hole, Holes};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::Layer;
use wait::Verdict;

/// A mistake in a rate limiter's configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The quota lets nothing through.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// A keyed limiter with room for no key.
    #[error("a keyed rate limiter needs room for at least one key")]
    MaxKeys,
    /// A keyed limiter asked to keep more than 2^28 keys (4 GiB of cells).
    #[error("a keyed rate limiter keeps at most 2^28 keys")]
    TooManyKeys,
    /// A maximum wait longer than a limiter keeps (about nine years).
    #[error("a rate limiter's maximum wait must be at most about nine years")]
    MaxWait,
}

/// A quota as it is applied: its rule, changeable at run time, the clock and the longest wait.
/// What both rate limiters share.
pub(crate) struct Limits<Clk> {
    rule: Rule,
    quota: Mutex<Quota>,
    clock: Clk,
    max_wait: u64,
}

impl<Clk: Clock> Limits<Clk> {
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    pub(crate) fn quota(&self) -> Quota {
        *self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        quota.validate()?;
        let mut current = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        self.rule.set(&quota);
        *current = quota;
        Ok(())
    }

    /// How many calls the cell `tat` would admit at once now.
    pub(crate) fn available(&self, tat: &AtomicU64) -> u64 {
        self.rule.available(tat, self.clock.now())
    }
}

impl<Clk> fmt::Debug for Limits<Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field(
                "quota",
                &*self.quota.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .field("max_wait", &Duration::from_nanos(self.max_wait))
            .finish()
    }
}

/// The settings both builders share.
pub(crate) struct Settings<Clk, O> {
    quota: Quota,
    name: Cow<'static, str>,
    max_wait: Duration,
    clock: Clk,
    observer: O,
}

impl Settings<TokioClock, ()> {
    fn new(quota: Quota, name: &'static str) -> Self {
        Settings {
            quota,
            name: Cow::Borrowed(name),
            max_wait: Duration::ZERO,
            clock: TokioClock::new(),
            observer: (),
        }
    }
}

impl<Clk, O> Settings<Clk, O> {
    fn clock<Clk2>(self, clock: Clk2) -> Settings<Clk2, O> {
        Settings {
            quota: self.quota,
            name: self.name,
            max_wait: self.max_wait,
            clock,
            observer: self.observer,
        }
    }

    fn observer<O2>(self, observer: O2) -> Settings<Clk, O2> {
        Settings {
            quota: self.quota,
            name: self.name,
            max_wait: self.max_wait,
            clock: self.clock,
            observer,
        }
    }

    /// Checks the quota; the limits, and the name and observer of the layer's events.
    fn build(self) -> Result<(Limits<Clk>, Source<O>), ConfigError> {
        self.quota.validate()?;
        if crate::sync::nanos(self.max_wait) > gcra::MAX_SPAN {
            return Err(ConfigError::MaxWait);
        }
        let limits = Limits {
            rule: Rule::new(&self.quota),
            quota: Mutex::new(self.quota),
            clock: self.clock,
            max_wait: crate::sync::nanos(self.max_wait),
        };
        Ok((limits, Source::new(self.name, self.observer)))
    }
}

impl<Clk, O> fmt::Debug for Settings<Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("quota", &self.quota)
            .field("name", &self.name)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// The setters both builders share.
macro_rules! settings_setters {
    ($builder:ident < $($param:ident),* >) => {
        /// The layer's name, in events.
        pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
            self.settings.name = name.into();
            self
        }

        /// Lets a call over the quota wait up to `wait` for a slot (default zero: fail at once).
        /// At most about nine years: `build` refuses more with [`ConfigError::MaxWait`].
        pub fn max_wait(mut self, wait: std::time::Duration) -> Self {
            self.settings.max_wait = wait;
            self
        }
    };
}
use settings_setters;

/// The rate limiter's gate: one GCRA cell and its limits.
pub struct RateLimiter<Clk = TokioClock> {
    limits: Limits<Clk>,
    tat: Padded<AtomicU64>,
    /// Slots given back by callers that stopped waiting for them (waiting mode only).
    holes: Arc<Holes>,
}

impl<Clk> fmt::Debug for RateLimiter<Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish()
    }
}

/// A caller's wait for its reserved slot, in waiting mode. Dropped before the slot is due (the
/// service dropped while its `poll_ready` waits), it gives the slot back: see the
/// [module docs](self).
#[derive(Default)]
pub struct RateWaiter {
    sleep: Option<Pin<Box<Sleep>>>,
    held: Option<Held>,
}

/// A slot a caller waits for, given back if the caller leaves first; the caller is counted among
/// the limiter's waiting callers while it is held.
pub(crate) struct Held {
    holes: Arc<Holes>,
    hole: Hole,
    used: bool,
}

impl Held {
    pub(crate) fn new(holes: &Arc<Holes>, hole: Hole) -> Self {
        holes.wait_begins();
        Held {
            holes: holes.clone(),
            hole,
            used: false,
        }
    }

    /// The slot is due and the caller goes ahead in it.
    pub(crate) fn used(mut self) -> gcra::Slot {
        self.used = true;
        self.hole.slot
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.used {
            self.holes.add(self.hole);
        }
        self.holes.wait_ends();
    }
}

impl fmt::Debug for RateWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateWaiter")
            .field("waiting", &self.sleep.is_some())
            .finish()
    }
}

impl<Clk: Clock> RateLimiter<Clk> {
    /// For a call at `now` that could not go ahead at once: a slot given back by a caller that
    /// left, or a new one, due by `until`; else a refusal.
    fn reserve(&self, now: u64, until: u64) -> Verdict {
        let decide = |wait| Some(self.limits.rule.decide(&self.tat, now, wait));
        match wait::reserve(&self.holes, (0, 0), &self.tat, now, until, decide) {
            Some(verdict) => verdict,
            None => unreachable!("a global cell always decides"),
        }
    }

    /// A call over the quota at `now`, which could go ahead `not_before` nanoseconds from now,
    /// decided in `call` (see [`RateLimitBuilder::honour_deadlines`]): it may wait up to the
    /// maximum wait, and never for a slot at or after its deadline, `left` nanoseconds from now
    /// (`None`: none).
    #[cold]
    #[inline(never)]
    fn decide_late(&self, now: u64, not_before: u64, left: Option<u64>) -> Verdict {
        let max_wait = self.limits.max_wait;
        if max_wait == 0 {
            return Verdict::Reject(not_before);
        }
        match wait::last_slot(now, max_wait, left) {
            Some(until) => self.reserve(now, until),
            None => Verdict::Reject(not_before),
        }
    }

    /// The refusal of a call at `now` whose deadline has passed: it takes nothing, and is told
    /// when a call could go ahead.
    #[cold]
    #[inline(never)]
    fn expired(&self, now: u64) -> RateLimited {
        RateLimited {
            retry_after: Duration::from_nanos(self.limits.rule.not_before(&self.tat, now)),
        }
    }

    /// Every decision but an admission at once: a hole to take, a slot to reserve and wait for,
    /// or a rejection.
    #[cold]
    #[inline(never)]
    fn poll_slow(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut RateWaiter,
        now: u64,
    ) -> Poll<Result<gcra::Slot, RateLimited>> {
        let limits = &self.limits;
        if limits.max_wait == 0 {
            return match limits.rule.decide(&self.tat, now, 0) {
                Decision::Admit(slot) => Poll::Ready(Ok(slot)),
                Decision::Wait(nanos, _) | Decision::Reject(nanos) => {
                    Poll::Ready(Err(RateLimited {
                        retry_after: Duration::from_nanos(nanos),
                    }))
                }
            };
        }
        let until = now.saturating_add(limits.max_wait);
        let hole = match self.reserve(now, until) {
            Verdict::Admit(slot) => return Poll::Ready(Ok(slot)),
            Verdict::Wait(hole) => hole,
            Verdict::Reject(nanos) => {
                return Poll::Ready(Err(RateLimited {
                    retry_after: Duration::from_nanos(nanos),
                }))
            }
        };
        let held = Held::new(&self.holes, hole);
        let mut sleep = Box::pin(tokio::time::sleep(Duration::from_nanos(hole.due - now)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(held.used()));
        }
        waiter.sleep = Some(sleep);
        waiter.held = Some(held);
        Poll::Pending
    }
}

impl<Clk: Clock> Gate for RateLimiter<Clk> {
    /// The slot taken: given back exactly if no call was made in it and none taken after it.
    type Permit = gcra::Slot;
    type Rejection = RateLimited;
    type Waiter = RateWaiter;

    /// A call is settled when it is let through: its response future need not come back.
    const FOLLOWS_CALLS: bool = false;

    #[inline]
    fn poll_acquire<O: Observer>(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut RateWaiter,
        _: Emitter<'_, O>,
    ) -> Poll<Result<gcra::Slot, RateLimited>> {
        if let Some(sleep) = waiter.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            waiter.sleep = None;
            let held = waiter.held.take().expect("a waiter holds its slot");
            return Poll::Ready(Ok(held.used()));
        }
        let limits = &self.limits;
        let now = limits.now();
        match limits.rule.admit(&self.tat, now) {
            Ok(slot) => Poll::Ready(Ok(slot)),
            Err(_) => self.poll_slow(cx, waiter, now),
        }
    }

    #[inline]
    fn complete<O: Observer>(&self, _: gcra::Slot, _: &Record, _: Emitter<'_, O>) {}

    /// A call let through counts against the quota even if it is dropped before it ends (it may
    /// have reached the service): the limiter errs on the side of letting fewer through.
    #[inline]
    fn cancel<O: Observer>(&self, _: gcra::Slot, _: Emitter<'_, O>) {}

    /// A slot reserved in `poll_ready` for a call that was never made goes back to the quota
    /// when no later slot has been taken since (see the [module docs](self)), so that requests a
    /// layer above refuses, or clones dropped unused, cost nothing; otherwise it is lost.
    fn release_unused<O: Observer>(&self, slot: gcra::Slot, _: Emitter<'_, O>) {
        Rule::undo(&self.tat, slot);
    }

    #[inline]
    fn wants_latency(&self) -> bool {
        false
    }

    fn reject_reason(_: &RateLimited) -> RejectReason {
        RejectReason::RateLimited
    }
}

/// A service behind a [`RateLimitLayer`].
pub type RateLimit<S, Clk = TokioClock, O = ()> = Guard<S, RateLimiter<Clk>, ErrorIsFailure, O>;

/// Limits the rate of calls through it to a [`Quota`], for every clone of it and every service it
/// makes together. See the [module docs](self).
///
/// Readiness reserves the call's slot: a call over the quota is ready at once and fails with
/// [`RateLimited`]; with [`max_wait`](RateLimitBuilder::max_wait), a call that can have a slot
/// within that time waits for it in `poll_ready`. Built with
/// [`honour_deadlines`](RateLimitBuilder::honour_deadlines) (`D` is then [`CarriedDeadline`]),
/// it decides in `call` instead, and makes [`DeadlineRateLimit`] services.
///
/// ```
/// use seawall::limit::error::RateLimited;
/// use seawall::limit::rate::{Quota, RateLimitLayer};
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = RateLimitLayer::new(Quota::per_second(10).burst(2));
/// let mut service = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
/// service.ready().await.unwrap().call(()).await.unwrap();
/// service.ready().await.unwrap().call(()).await.unwrap();
/// let err = service.ready().await.unwrap().call(()).await.unwrap_err();
/// let limited = err.downcast_ref::<RateLimited>().unwrap();
/// assert_eq!(limited.retry_after(), std::time::Duration::from_millis(100));
/// # }
/// ```
pub struct RateLimitLayer<Clk: 'static = TokioClock, O: 'static = (), D = NoDeadline> {
    shared: Anchor<Shared<RateLimiter<Clk>, O>>,
    /// Where it decides: in `poll_ready` ([`NoDeadline`]), or in `call`, reading the request's
    /// deadline ([`CarriedDeadline`]).
    deadline: D,
}

impl RateLimitLayer {
    /// A limiter of `quota` that turns calls over it away, named `"rate_limit"`.
    ///
    /// # Panics
    ///
    /// If the quota is invalid (a count, period or burst of zero, a period shorter than a
    /// nanosecond per call, or one of more than about nine years: see [`QuotaError`]); use the
    /// [builder](Self::builder) to get an error instead.
    pub fn new(quota: Quota) -> Self {
        RateLimitLayer::builder(quota)
            .build()
            .unwrap_or_else(|e| panic!("invalid rate limit: {e}"))
    }

    /// Starts a builder for a limiter of `quota`.
    pub fn builder(quota: Quota) -> RateLimitBuilder {
        RateLimitBuilder {
            settings: Settings::new(quota, "rate_limit"),
            deadline: NoDeadline,
        }
    }
}

/// Builds a [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimitBuilder<Clk = TokioClock, O = (), D = NoDeadline> {
    settings: Settings<Clk, O>,
    deadline: D,
}

impl<Clk, O, D> RateLimitBuilder<Clk, O, D> {
    settings_setters!(RateLimitBuilder<Clk, O, D>);

    /// Decides in `call`, where the request is known, rather than in `poll_ready`, and honours
    /// the [`Deadline`](crate::core::Deadline) each request carries (see
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier); a propagating `TimeoutLayer` above puts
    /// one in): a call that cannot go ahead at once waits only for a slot due before its
    /// deadline, and fails at once with [`RateLimited`] (and the time to come back) when there is
    /// none, rather than taking a slot it cannot use. Useful only with
    /// [`max_wait`](Self::max_wait): without it, no call waits.
    ///
    /// The layer's services are then [`DeadlineRateLimit`]s: always as ready as the service
    /// beneath; a call that must wait waits in its response future, and is then made on the inner
    /// service made ready for it (asked again whether it still is), the limiter's service keeping
    /// a clone for its next call (so the inner service must be `Clone`, as under the keyed
    /// limiter). Dropped while it waits, the call gives its slot back. A request whose deadline
    /// has passed is refused even when the quota has room: the deadline is then read on every
    /// call, and the clock for it only when the request carries one.
    pub fn honour_deadlines(self) -> RateLimitBuilder<Clk, O, CarriedDeadline> {
        RateLimitBuilder {
            settings: self.settings,
            deadline: CarriedDeadline,
        }
    }

    /// Reads the time from `clock` (default: tokio's).
    pub fn clock<Clk2: Clock>(self, clock: Clk2) -> RateLimitBuilder<Clk2, O, D> {
        RateLimitBuilder {
            settings: self.settings.clock(clock),
            deadline: self.deadline,
        }
    }

    /// Sends the layer's events to `observer`: permitted, and rejected with reason
    /// `RateLimited`; with [`honour_deadlines`](Self::honour_deadlines), cancelled for a call
    /// dropped while it waits for its slot (it was reported permitted when its slot was
    /// reserved).
    pub fn observer<O2: Observer>(self, observer: O2) -> RateLimitBuilder<Clk, O2, D> {
        RateLimitBuilder {
            settings: self.settings.observer(observer),
            deadline: self.deadline,
        }
    }

    /// Checks the settings and builds the layer. Every mistake is an error, never a panic: an
    /// invalid quota ([`QuotaError`]) or a maximum wait of more than about nine years.
    pub fn build(self) -> Result<RateLimitLayer<Clk, O, D>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        self.build_with(false)
    }

    /// Like [`build`](Self::build), for a limiter that lives as long as the process: it is leaked
    /// on purpose (never freed), and in exchange calls never touch its reference count. Use it for
    /// limiters built once at start-up, never per request.
    pub fn build_static(self) -> Result<RateLimitLayer<Clk, O, D>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        self.build_with(true)
    }

    fn build_with(self, leak: bool) -> Result<RateLimitLayer<Clk, O, D>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        let (limits, source) = self.settings.build()?;
        let gate = RateLimiter {
            limits,
            tat: Padded(AtomicU64::new(0)),
            holes: Arc::new(Holes::new(1)),
        };
        let shared = Shared::from_source(gate, source);
        let shared = if leak {
            Anchor::leaked(shared)
        } else {
            Anchor::counted(shared)
        };
        Ok(RateLimitLayer {
            shared,
            deadline: self.deadline,
        })
    }
}

impl<Clk: Clock, O: Observer, D> RateLimitLayer<Clk, O, D> {
    /// A handle on this layer's limit.
    pub fn handle(&self) -> RateLimitHandle<Clk, O> {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<Clk, O, D: Clone> Clone for RateLimitLayer<Clk, O, D> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

impl<Clk, O, D: fmt::Debug> fmt::Debug for RateLimitLayer<Clk, O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name())
            .field("limiter", &self.shared.gate)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<S, Clk: Clock, O: Observer> Layer<S> for RateLimitLayer<Clk, O> {
    type Service = RateLimit<S, Clk, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), ErrorIsFailure)
    }
}

impl<S, Clk: Clock, O: Observer> Layer<S> for RateLimitLayer<Clk, O, CarriedDeadline> {
    type Service = DeadlineRateLimit<S, Clk, O>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineRateLimit::new(inner, self.shared.clone())
    }
}

/// A handle on a rate limiter: its quota, changeable at run time, and the calls it would let
/// through now.
pub struct RateLimitHandle<Clk: 'static = TokioClock, O: 'static = ()> {
    pub(crate) shared: Anchor<Shared<RateLimiter<Clk>, O>>,
}

impl<Clk: Clock, O> RateLimitHandle<Clk, O> {
    /// The quota in force.
    pub fn quota(&self) -> Quota {
        self.shared.gate.limits.quota()
    }

    /// Replaces the quota, for every service of the layer, from the next call on. Calls already
    /// let through or waiting for a slot keep their place.
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.shared.gate.limits.set_quota(quota)
    }

    /// How many calls would be let through at once now.
    pub fn available(&self) -> u64 {
        let gate = &self.shared.gate;
        gate.limits.available(&gate.tat)
    }

    /// How many callers wait for a slot they were given (with
    /// [`max_wait`](RateLimitBuilder::max_wait)), from when it is reserved until their call is
    /// made in it or they leave. Counted only by callers that wait.
    pub fn waiting(&self) -> u64 {
        self.shared.gate.holes.waiting()
    }
}

impl<Clk, O> Clone for RateLimitHandle<Clk, O> {
    fn clone(&self) -> Self {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<Clk, O> fmt::Debug for RateLimitHandle<Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("name", &self.shared.name())
            .field("limiter", &self.shared.gate)
            .finish()
    }
}
