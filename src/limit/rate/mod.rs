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
pub(crate) mod gcra;
pub(crate) mod keyed;

#[cfg(feature = "quanta")]
pub use clock::QuantaClock;
pub use clock::{Clock, ManualClock, TokioClock};
pub use gcra::{Quota, QuotaError};
pub use keyed::{
    KeyedBuilder, KeyedHandle, KeyedRateLimit, KeyedRateLimitLayer, KeyedResponseFuture,
};

use super::error::RateLimited;
use crate::core::gate::{Anchor, Guard, Shared};
use crate::core::{Emitter, ErrorIsFailure, Gate, Observer, Record, RejectReason, Source};
use crate::sync::Mutex;
use crate::sync::{AtomicU64, Padded};
use gcra::{Decision, Rule};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::Layer;

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
    /// Decides one call on the cell `tat` at `now`.
    #[inline]
    pub(crate) fn decide_at(&self, tat: &AtomicU64, now: u64) -> Decision {
        self.rule.decide(tat, now, self.max_wait)
    }

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

    /// Gives one interval back to the cell `tat`: a slot taken and not used.
    pub(crate) fn give_back(&self, tat: &AtomicU64) {
        self.rule.give_back(tat);
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
}

impl<Clk> fmt::Debug for RateLimiter<Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish()
    }
}

/// A caller's wait for its reserved slot, in waiting mode.
#[derive(Default)]
pub struct RateWaiter {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for RateWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateWaiter")
            .field("waiting", &self.sleep.is_some())
            .finish()
    }
}

/// Sleeps until a reserved slot, or returns at once if it is already due.
fn wait_for(nanos: u64, cx: &mut Context<'_>, slot: &mut Option<Pin<Box<Sleep>>>) -> Poll<()> {
    let mut sleep = Box::pin(tokio::time::sleep(Duration::from_nanos(nanos)));
    if sleep.as_mut().poll(cx).is_ready() {
        return Poll::Ready(());
    }
    *slot = Some(sleep);
    Poll::Pending
}

impl<Clk: Clock> Gate for RateLimiter<Clk> {
    type Permit = ();
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
    ) -> Poll<Result<(), RateLimited>> {
        if let Some(sleep) = waiter.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            waiter.sleep = None;
            return Poll::Ready(Ok(()));
        }
        let limits = &self.limits;
        match limits.decide_at(&self.tat, limits.now()) {
            Decision::Admit => Poll::Ready(Ok(())),
            Decision::Wait(nanos) => wait_for(nanos, cx, &mut waiter.sleep).map(Ok),
            Decision::Reject(nanos) => Poll::Ready(Err(RateLimited {
                retry_after: Duration::from_nanos(nanos),
            })),
        }
    }

    #[inline]
    fn complete<O: Observer>(&self, _: (), _: &Record, _: Emitter<'_, O>) {}

    /// A call let through counts against the quota even if it is dropped before it ends (it may
    /// have reached the service): the limiter errs on the side of letting fewer through.
    #[inline]
    fn cancel<O: Observer>(&self, _: (), _: Emitter<'_, O>) {}

    /// A slot reserved in `poll_ready` for a call that was never made goes back to the quota, so
    /// that requests a layer above refuses, or clones dropped unused, cost nothing.
    fn release_unused<O: Observer>(&self, _: (), _: Emitter<'_, O>) {
        self.limits.give_back(&self.tat);
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
/// within that time waits for it in `poll_ready`.
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
pub struct RateLimitLayer<Clk: 'static = TokioClock, O: 'static = ()> {
    shared: Anchor<Shared<RateLimiter<Clk>, O>>,
}

impl RateLimitLayer {
    /// A limiter of `quota` that turns calls over it away, named `"rate_limit"`.
    ///
    /// # Panics
    ///
    /// If the quota lets nothing through (a count, period or burst of zero); use the
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
        }
    }
}

/// Builds a [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimitBuilder<Clk = TokioClock, O = ()> {
    settings: Settings<Clk, O>,
}

impl<Clk, O> RateLimitBuilder<Clk, O> {
    settings_setters!(RateLimitBuilder<Clk, O>);

    /// Reads the time from `clock` (default: tokio's).
    pub fn clock<Clk2: Clock>(self, clock: Clk2) -> RateLimitBuilder<Clk2, O> {
        RateLimitBuilder {
            settings: self.settings.clock(clock),
        }
    }

    /// Sends the layer's events (permitted, and rejected with reason `RateLimited`) to
    /// `observer`.
    pub fn observer<O2: Observer>(self, observer: O2) -> RateLimitBuilder<Clk, O2> {
        RateLimitBuilder {
            settings: self.settings.observer(observer),
        }
    }

    /// Checks the quota and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<Clk, O>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        self.build_with(false)
    }

    /// Like [`build`](Self::build), for a limiter that lives as long as the process: it is leaked
    /// on purpose (never freed), and in exchange calls never touch its reference count. Use it for
    /// limiters built once at start-up, never per request.
    pub fn build_static(self) -> Result<RateLimitLayer<Clk, O>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        self.build_with(true)
    }

    fn build_with(self, leak: bool) -> Result<RateLimitLayer<Clk, O>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        let (limits, source) = self.settings.build()?;
        let gate = RateLimiter {
            limits,
            tat: Padded(AtomicU64::new(0)),
        };
        let shared = Shared::from_source(gate, source);
        let shared = if leak {
            Anchor::leaked(shared)
        } else {
            Anchor::counted(shared)
        };
        Ok(RateLimitLayer { shared })
    }
}

impl<Clk: Clock, O: Observer> RateLimitLayer<Clk, O> {
    /// A handle on this layer's limit.
    pub fn handle(&self) -> RateLimitHandle<Clk, O> {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<Clk, O> Clone for RateLimitLayer<Clk, O> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<Clk, O> fmt::Debug for RateLimitLayer<Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name())
            .field("limiter", &self.shared.gate)
            .finish()
    }
}

impl<S, Clk: Clock, O: Observer> Layer<S> for RateLimitLayer<Clk, O> {
    type Service = RateLimit<S, Clk, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), ErrorIsFailure)
    }
}

/// A handle on a rate limiter: its quota, changeable at run time, and the calls it would let
/// through now.
pub struct RateLimitHandle<Clk: 'static = TokioClock, O: 'static = ()> {
    shared: Anchor<Shared<RateLimiter<Clk>, O>>,
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
