//! The error returned when the breaker turns a call away.

use crate::core::RejectReason;
use std::fmt;
use std::time::Duration;

/// The circuit breaker rejected the call without sending it.
///
/// Returned (boxed in a [`tower::BoxError`]) from the response future; find it with
/// `err.downcast_ref::<Open>()` or `err.is::<Open>()`. It says how long until the breaker will admit
/// a probe again: the value a server puts in `Retry-After` when it answers 503.
///
/// ```
/// use seawall::circuit_breaker::error::Open;
/// # fn handle(err: tower::BoxError) -> u16 {
/// if let Some(open) = err.downcast_ref::<Open>() {
///     let wait = open.retry_after().map_or(1, |d| d.as_secs().max(1));
///     println!("503, Retry-After: {wait}");
///     return 503;
/// }
/// 500
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) reason: RejectReason,
}

impl Open {
    /// The breaker is open for another `nanos` nanoseconds.
    pub(crate) fn open_for(nanos: u64) -> Self {
        Open {
            retry_after: Some(Duration::from_nanos(nanos)),
            reason: RejectReason::CircuitOpen,
        }
    }

    /// How long until the breaker admits a probe again. `None` when nobody can tell: the breaker
    /// was forced open by hand, or it is half-open and waiting for its probes to finish.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the breaker was forced open by hand (see
    /// [`Handle::force_open`](crate::circuit_breaker::Handle::force_open)).
    pub fn is_forced(&self) -> bool {
        self.reason == RejectReason::ForcedOpen
    }

    /// Why the call was rejected: open, half-open with every probe slot taken, or forced open.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.reason, self.retry_after) {
            (RejectReason::ForcedOpen, _) => f.write_str("circuit breaker is forced open"),
            (RejectReason::HalfOpenFull, _) => {
                f.write_str("circuit breaker is half-open and all probe slots are taken")
            }
            (_, Some(wait)) => write!(f, "circuit breaker is open; next probe in {wait:?}"),
            (_, None) => f.write_str("circuit breaker is open"),
        }
    }
}

impl std::error::Error for Open {}
