use super::future::{Kind, ResponseFuture, Timer};
use super::policy::Policy;
use super::TimeoutLayer;
use crate::core::observe::{LayerSource, Listener};
use crate::core::{Deadline, EventKind, Observer, Source, TimeoutCause};
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Service};

/// Fails a call that takes longer than its timeout, or than the deadline its request carries, with
/// [`Elapsed`](super::error::Elapsed); see the [module docs](super).
pub struct Timeout<S, P = Duration, O = ()> {
    inner: S,
    policy: P,
    source: LayerSource<O>,
}

impl<S> Timeout<S> {
    /// Wraps `inner`: every call may take at most `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Timeout::from_parts(inner, timeout, Source::shared("timeout", ()))
    }

    /// A [`TimeoutLayer`] with a fixed `timeout`.
    pub fn layer(timeout: Duration) -> TimeoutLayer {
        TimeoutLayer::new(timeout)
    }
}

impl<S, P, O> Timeout<S, P, O> {
    pub(super) fn from_parts(inner: S, policy: P, source: LayerSource<O>) -> Self {
        Timeout {
            inner,
            policy,
            source,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the timeout, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, O> Clone for Timeout<S, P, O> {
    fn clone(&self) -> Self {
        Timeout::from_parts(self.inner.clone(), self.policy.clone(), self.source.clone())
    }
}

impl<S: fmt::Debug, P: fmt::Debug, O> fmt::Debug for Timeout<S, P, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("name", &self.source.name())
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, O, Req> Service<Req> for Timeout<S, P, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req>,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        // Only a listening observer needs the future to keep the source, to hear of a cancellation.
        let source = || Listener::new(&self.source);
        let timeout = self.policy.timeout(&req);
        if !P::PROPAGATES {
            // Call, then start the clock once the call first has to wait: a call answered at once
            // reads no clock and sets no timer.
            let future = self.inner.call(req);
            let Some(timeout) = timeout else {
                return ResponseFuture::new(Kind::Unbounded { future }, source());
            };
            return ResponseFuture::new(
                Kind::Timed {
                    future,
                    timer: Timer::lazy(timeout),
                    cause: TimeoutCause::Timeout,
                },
                source(),
            );
        }
        let (now, deadline, cause) = match timeout {
            Some(timeout) => {
                let now = Instant::now();
                let own = Deadline::after_from(now, timeout);
                // One look-up: the request keeps an earlier deadline, or takes ours for the layers
                // beneath.
                match self.policy.tighten_deadline(&mut req, own) {
                    Some(carried) => (now, carried, TimeoutCause::Deadline),
                    None => (now, own, TimeoutCause::Timeout),
                }
            }
            None => match self.policy.deadline(&req) {
                Some(carried) => (Instant::now(), carried, TimeoutCause::Deadline),
                None => {
                    // Nothing to enforce: no clock read, no timer.
                    let future = self.inner.call(req);
                    return ResponseFuture::new(Kind::Unbounded { future }, source());
                }
            },
        };
        // No time left, whether the budget came with the request or is this layer's own (a timeout
        // of zero): the inner service is not called.
        if deadline.is_expired_at(now) {
            self.source.emitter().emit(EventKind::TimedOut {
                elapsed: Duration::ZERO,
                cause: TimeoutCause::Expired,
            });
            return ResponseFuture::new(Kind::Expired, Listener::none());
        }
        let future = self.inner.call(req);
        ResponseFuture::new(
            Kind::Timed {
                future,
                timer: Timer::started(deadline.instant(), now),
                cause,
            },
            source(),
        )
    }
}
