//! The response futures of the timeout layers.

use super::error::Elapsed;
use crate::core::observe::{Listener, SharedObserver};
use crate::core::{EventKind, Observer, TimeoutCause};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F, O: Observer> {
        #[pin]
        kind: Kind<F>,
        // Kept only for a listening observer, and taken when the call ends: still here on drop
        // means the caller gave up on the call, which is a cancellation, not a timeout.
        source: Listener<SharedObserver<O>>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(super) enum Kind<F> {
        Unbounded {
            #[pin]
            future: F,
        },
        Timed {
            #[pin]
            future: F,
            #[pin]
            timer: Timer,
            cause: TimeoutCause,
        },
        Expired,
    }
}

pin_project! {
    /// A call's timer: started when the call is made (deadlines), or only once the call first has
    /// to wait (a fixed timeout), so that a call answered at once costs no clock read and no timer.
    #[project = TimerProj]
    pub(super) enum Timer {
        Lazy {
            timeout: Duration,
        },
        Running {
            #[pin]
            sleep: Sleep,
            start: Instant,
        },
    }
}

impl Timer {
    #[inline]
    pub(super) fn lazy(timeout: Duration) -> Self {
        Timer::Lazy { timeout }
    }

    #[inline]
    pub(super) fn started(deadline: Instant, start: Instant) -> Self {
        Timer::Running {
            sleep: tokio::time::sleep_until(deadline),
            start,
        }
    }

    /// Polls the timer, starting it first if it has not started: `Ready` with the time it started
    /// and its deadline once it fires.
    fn poll_fire(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Instant, Instant)> {
        if let TimerProj::Lazy { timeout } = self.as_mut().project() {
            let now = Instant::now();
            let deadline = crate::core::Deadline::after_from(now, *timeout).instant();
            self.set(Timer::started(deadline, now));
        }
        match self.project() {
            TimerProj::Running { sleep, start } => {
                let deadline = sleep.deadline();
                sleep.poll(cx).map(|()| (*start, deadline))
            }
            TimerProj::Lazy { .. } => unreachable!("started above"),
        }
    }
}

impl<F, O: Observer> ResponseFuture<F, O> {
    #[inline(always)]
    pub(super) fn new(kind: Kind<F>, source: Listener<SharedObserver<O>>) -> Self {
        ResponseFuture { kind, source }
    }
}

impl<F, O: Observer> fmt::Debug for ResponseFuture<F, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Unbounded { .. } => "unbounded",
            Kind::Timed { .. } => "timed",
            Kind::Expired => "expired",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, O, T, E> Future for ResponseFuture<F, O>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    O: Observer,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.kind.project() {
            KindProj::Unbounded { future } => match future.poll(cx) {
                Poll::Ready(result) => result.map_err(Into::into),
                Poll::Pending => return Poll::Pending,
            },
            KindProj::Timed {
                future,
                timer,
                cause,
            } => {
                // The call first: a response that is ready when the timer fires still counts.
                if let Poll::Ready(result) = future.poll(cx) {
                    result.map_err(Into::into)
                } else {
                    let Poll::Ready((start, deadline)) = timer.poll_fire(cx) else {
                        return Poll::Pending;
                    };
                    let elapsed = Instant::now().saturating_duration_since(start);
                    this.source.emit(EventKind::TimedOut {
                        elapsed,
                        cause: *cause,
                    });
                    let budget = deadline.saturating_duration_since(start);
                    Err(Elapsed::new(budget, *cause).into())
                }
            }
            KindProj::Expired => Err(Elapsed::new(Duration::ZERO, TimeoutCause::Expired).into()),
        };
        // The call has ended: dropping the future now is not a cancellation.
        this.source.done();
        Poll::Ready(result)
    }
}

/// The response future of [`ReadDeadline`](super::propagate::ReadDeadline) and
/// [`WriteDeadline`](super::propagate::WriteDeadline): the inner call, or the reason it was not
/// made.
#[cfg(feature = "http")]
pub type PropagateFuture<F> = crate::core::FailFast<F>;
