//! [`FailFast`]: the response future of layers that either call the inner service or fail at
//! once, without calling it.

use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::BoxError;

pin_project! {
    /// The response future of layers that either call the inner service or fail at once without
    /// calling it: the load shedder (an overloaded service), deadline propagation (a malformed
    /// header, a deadline already past).
    pub struct FailFast<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<F> FailFast<F> {
    /// The inner service was called; this is its future.
    #[cfg_attr(
        not(any(feature = "limit", all(feature = "timeout", feature = "http"))),
        allow(dead_code)
    )]
    pub(crate) fn called(future: F) -> Self {
        FailFast {
            kind: Kind::Called { future },
        }
    }

    /// The inner service was not called; the future fails with `error`.
    #[cfg_attr(
        not(any(feature = "limit", all(feature = "timeout", feature = "http"))),
        allow(dead_code)
    )]
    pub(crate) fn failed(error: impl Into<BoxError>) -> Self {
        FailFast {
            kind: Kind::Failed {
                error: Some(error.into()),
            },
        }
    }
}

impl<F> fmt::Debug for FailFast<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("FailFast").field("kind", &kind).finish()
    }
}

impl<F, T, E> Future for FailFast<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx).map_err(Into::into),
            KindProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("FailFast polled after completion")))
            }
        }
    }
}
