//! The global limiter deciding in `call`, where the request and its deadline are known
//! ([`RateLimitBuilder::honour_deadlines`](super::RateLimitBuilder::honour_deadlines)).

use super::clock::{Clock, TokioClock};
use super::keyed::{ready_service, waiting_service, KeyedResponseFuture};
use super::wait::{self, Report, Unused, Verdict, Waiting};
use super::RateLimiter;
use crate::core::gate::{Anchor, Shared};
use crate::core::{DeadlineCarrier, EventKind, Observer, RejectReason};
use crate::limit::error::RateLimited;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Service};

/// The service of a [`RateLimitLayer`](super::RateLimitLayer) built with
/// [`honour_deadlines`](super::RateLimitBuilder::honour_deadlines): the limit is decided in
/// `call`, where the request's [`Deadline`](crate::core::Deadline) can be read.
///
/// It is as ready as the service beneath and reserves nothing in `poll_ready`. A call the quota
/// lets through at once is made at once; one that must wait gets the earliest slot due before
/// both the limiter's maximum wait and its deadline, waits for it in its response future, and is
/// then made on the inner service that was made ready for it, which it takes along (so what that
/// readiness reserved beneath, a bulkhead's slot say, is the call's), leaving a clone in this
/// service, to be made ready for the next call (which is why the inner service must be `Clone`);
/// one that would wait longer, or whose deadline has passed, fails at once with [`RateLimited`],
/// taking nothing, and gives back what readiness reserved beneath. A call dropped while it waits
/// (or once its slot came, but before the service beneath was ready again) gives its slot back,
/// to the next caller that can wait until then.
///
/// ```
/// use seawall::core::{Deadline, DeadlineCarrier};
/// use seawall::limit::error::RateLimited;
/// use seawall::limit::rate::{Quota, RateLimitLayer};
/// use std::time::Duration;
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// /// A request with the deadline its caller gave it (`http::Request` carries one too, with
/// /// feature `http`, put there by a propagating `TimeoutLayer` above).
/// struct Query(Option<Deadline>);
///
/// impl DeadlineCarrier for Query {
///     fn deadline(&self) -> Option<Deadline> {
///         self.0
///     }
///     fn set_deadline(&mut self, deadline: Deadline) {
///         self.0 = Some(deadline);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // Two calls a second, one at a time; a call waits up to a second for its slot, but never
/// // past its deadline.
/// let limit = RateLimitLayer::builder(Quota::per_second(2).burst(1))
///     .max_wait(Duration::from_secs(1))
///     .honour_deadlines()
///     .build()
///     .unwrap();
/// let mut service = limit.layer(service_fn(|_: Query| async { Ok::<_, std::io::Error>(()) }));
/// let within = |ms| Query(Some(Deadline::after(Duration::from_millis(ms))));
/// service.ready().await.unwrap().call(within(200)).await.unwrap();
/// // The next slot is 500 ms away, after this call's deadline: refused at once.
/// let err = service.ready().await.unwrap().call(within(200)).await.unwrap_err();
/// let limited = err.downcast_ref::<RateLimited>().unwrap();
/// assert_eq!(limited.retry_after(), Duration::from_millis(500));
/// // This one can wait for it.
/// service.ready().await.unwrap().call(within(600)).await.unwrap();
/// # }
/// ```
pub struct DeadlineRateLimit<S, Clk: 'static = TokioClock, O: 'static = ()> {
    inner: S,
    shared: Anchor<Shared<RateLimiter<Clk>, O>>,
}

impl<S, Clk, O> DeadlineRateLimit<S, Clk, O> {
    pub(super) fn new(inner: S, shared: Anchor<Shared<RateLimiter<Clk>, O>>) -> Self {
        DeadlineRateLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter's service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A clone holds no reservation: this service never holds one.
impl<S: Clone, Clk, O> Clone for DeadlineRateLimit<S, Clk, O> {
    fn clone(&self) -> Self {
        DeadlineRateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, Clk, O> fmt::Debug for DeadlineRateLimit<S, Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineRateLimit")
            .field("name", &self.shared.name())
            .field("limiter", &self.shared.gate)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, Clk, O, Req> Service<Req> for DeadlineRateLimit<S, Clk, O>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Clk: Clock,
    O: Observer,
    Req: DeadlineCarrier,
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
        let shared = &*self.shared;
        let gate = &shared.gate;
        let emit = shared.emitter();
        let now = gate.limits.now();
        // The deadline is read on every call, the clock for it only when the request carries
        // one: a request with no time left is refused, taking nothing, even when the quota has
        // room now.
        let left = wait::time_left(req.deadline());
        if left == Some(0) {
            return self.refuse(gate.expired(now));
        }
        let verdict = match gate.limits.rule.admit(&gate.tat, now) {
            Ok(slot) => Verdict::Admit(slot),
            Err(not_before) => gate.decide_late(now, not_before, left),
        };
        match verdict {
            Verdict::Admit(slot) => {
                // Given back if the observer or the inner call panics before the call is made.
                let unused = Unused::new(&gate.tat, slot);
                emit.emit(EventKind::Permitted);
                let future = self.inner.call(req);
                unused.used();
                KeyedResponseFuture::called(future)
            }
            Verdict::Wait(hole) => {
                // The slot is held (given back if the call goes away) before anyone hears of
                // it: an observer that panics at `Permitted` leaves nothing reserved.
                let report = O::ENABLED.then(|| Cancelled(self.shared.clone()));
                let held = Waiting::new(&gate.holes, hole, report);
                emit.emit(EventKind::Permitted);
                // What readiness reserved beneath is given back for the wait; a clone, made
                // ready when the slot comes, makes the call (see `waiting_service`).
                let ready = waiting_service(&mut self.inner);
                KeyedResponseFuture::waiting(held.wait(hole.due - now), ready, req)
            }
            Verdict::Reject(nanos) => self.refuse(RateLimited {
                retry_after: Duration::from_nanos(nanos),
            }),
        }
    }
}

impl<S: Clone, Clk: Clock, O: Observer> DeadlineRateLimit<S, Clk, O> {
    /// Refuses a call: what readiness reserved beneath is given back, and the refusal reported.
    #[cold]
    #[inline(never)]
    fn refuse<Req>(&mut self, limited: RateLimited) -> KeyedResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        drop(ready_service(&mut self.inner));
        self.shared.count_rejected();
        self.shared.emitter().emit(EventKind::Rejected {
            reason: RejectReason::RateLimited,
        });
        KeyedResponseFuture::failed(limited)
    }
}

/// Reports a wait dropped before its slot `Cancelled`.
struct Cancelled<Clk: 'static, O: 'static>(Anchor<Shared<RateLimiter<Clk>, O>>);

impl<Clk: Clock, O: Observer> Report for Cancelled<Clk, O> {
    fn cancelled(self) {
        self.0.emitter().emit(EventKind::Cancelled);
    }
}
