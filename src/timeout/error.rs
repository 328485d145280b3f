//! The errors of the timeout layers.

pub use crate::core::TimeoutCause;
use std::fmt;
use std::time::Duration;

/// The call took longer than it was allowed to, or its deadline had passed before it started.
///
/// Returned (boxed in a [`tower::BoxError`]) from [`Timeout`](super::Timeout)'s response future and,
/// for a deadline that has already passed, from
/// [`WriteDeadline`](super::propagate::WriteDeadline). A caller that drops the response future is not
/// timed out: that is a cancellation, reported to the observer as
/// [`EventKind::Cancelled`](crate::core::EventKind::Cancelled).
///
/// ```
/// use seawall::timeout::error::{Elapsed, TimeoutCause};
/// # fn handle(err: tower::BoxError) -> u16 {
/// if let Some(elapsed) = err.downcast_ref::<Elapsed>() {
///     if elapsed.cause() == TimeoutCause::Expired {
///         println!("the caller had given up before we started");
///     }
///     return 504;
/// }
/// 500
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elapsed {
    budget: Duration,
    cause: TimeoutCause,
}

impl Elapsed {
    pub(crate) fn new(budget: Duration, cause: TimeoutCause) -> Self {
        Elapsed { budget, cause }
    }

    /// How long the call was allowed to run: zero when its deadline had already passed.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Whose limit ran out: the layer's own timeout, the deadline the request carried, or a deadline
    /// that had passed before the call started.
    pub fn cause(&self) -> TimeoutCause {
        self.cause
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            TimeoutCause::Expired => f.write_str("request deadline had already passed"),
            TimeoutCause::Deadline => write!(f, "request deadline passed after {:?}", self.budget),
            _ => write!(f, "request timed out after {:?}", self.budget),
        }
    }
}

impl std::error::Error for Elapsed {}

/// A request carried a timeout header that could not be read: it was not passed on.
///
/// Returned by [`ReadDeadline`](super::propagate::ReadDeadline). A server answers it with
/// 400 Bad Request, or gRPC `INVALID_ARGUMENT`.
#[cfg(feature = "http")]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header: {source}")]
pub struct InvalidTimeoutHeader {
    pub(crate) header: http::HeaderName,
    #[source]
    pub(crate) source: crate::grpc::GrpcTimeoutError,
}

#[cfg(feature = "http")]
impl InvalidTimeoutHeader {
    /// The header's name.
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    /// What is wrong with its value.
    pub fn reason(&self) -> &crate::grpc::GrpcTimeoutError {
        &self.source
    }
}
