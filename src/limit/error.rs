//! The errors of the back-pressure layers: [`Overloaded`] from the load shedder, [`Throttled`]
//! from the client-side throttle, [`RateLimited`] from the rate limiters.

use std::fmt;

/// The service beneath was not ready, so the call was failed at once instead of waiting: the
/// service is overloaded. A server answers it with 503, a gRPC server with `UNAVAILABLE`
/// (which gRPC clients retry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overloaded;

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("service overloaded")
    }
}

impl std::error::Error for Overloaded {}

/// The client-side throttle did not send the call: the service has been accepting too few of the
/// calls sent to it lately, and the throttle turned this one away with the
/// [`probability`](Throttled::probability) that follows from that.
///
/// The call never left the client, so it is safe to answer from a fallback, or to fail fast with
/// 503 (gRPC `UNAVAILABLE`). Retrying it at once defeats the throttle.
///
/// ```
/// use seawall::limit::error::Throttled;
/// # fn handle(err: tower::BoxError) -> u16 {
/// if let Some(throttled) = err.downcast_ref::<Throttled>() {
///     println!("not sent: {throttled}");
///     return 503;
/// }
/// 500
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttled {
    pub(crate) probability: f64,
}

impl Throttled {
    /// The probability with which calls were being turned away when this one was, in `(0, 1]`.
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throttled: the service accepts too few calls, {:.0}% are not sent",
            self.probability * 100.0
        )
    }
}

impl std::error::Error for Throttled {}

/// A rate limiter had no room for the call in its quota, and the call was not sent.
///
/// [`retry_after`](RateLimited::retry_after) says when a call would be let through: a server
/// answers 429 with [`retry_after_secs`](RateLimited::retry_after_secs) in a `Retry-After` header
/// (gRPC: `RESOURCE_EXHAUSTED`).
///
/// ```
/// use seawall::limit::error::RateLimited;
/// # fn handle(err: tower::BoxError) -> (u16, Option<u64>) {
/// if let Some(limited) = err.downcast_ref::<RateLimited>() {
///     return (429, Some(limited.retry_after_secs()));
/// }
/// (500, None)
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    pub(crate) retry_after: std::time::Duration,
}

impl RateLimited {
    /// How long until a call would be let through (when no other call takes the slot first).
    pub fn retry_after(&self) -> std::time::Duration {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up: the value of an HTTP
    /// `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited; retry after {:?}", self.retry_after)
    }
}

impl std::error::Error for RateLimited {}
