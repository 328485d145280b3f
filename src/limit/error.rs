//! The errors of the back-pressure layers: [`Overloaded`] from the load shedder, [`Throttled`]
//! from the client-side throttle.

use std::fmt;

/// The service beneath was not ready, so the call was failed at once instead of waiting: the
/// service is overloaded. A server answers it with 503, a gRPC server with
/// `RESOURCE_EXHAUSTED`.
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
