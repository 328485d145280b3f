//! [`Deadline`]: the instant by which a request must be answered, carried with the request so that
//! every layer beneath the one that set it (a nested timeout, a retry, a client writing
//! `grpc-timeout`) can honour it.

use std::time::Duration;
use tokio::time::Instant;

/// About thirty years: what "no limit" becomes when adding a timeout to an instant would overflow.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant by which a request must be answered.
///
/// The outermost [`Timeout`](crate::timeout::Timeout) that propagates deadlines puts one in the
/// request (see [`DeadlineCarrier`]); inner timeouts never wait past it, retries never start a
/// backoff that would end after it (and return the answer they had when it cuts an attempt),
/// and clients write what is left of it into
/// `grpc-timeout`. Time is `tokio::time`, so tests can pause it.
///
/// ```
/// use seawall::core::Deadline;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let deadline = Deadline::after(Duration::from_secs(2));
/// tokio::time::advance(Duration::from_millis(500)).await;
/// assert_eq!(deadline.remaining(), Duration::from_millis(1500));
/// assert!(!deadline.is_expired());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline at `instant`.
    #[inline]
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The deadline `timeout` from now. A timeout too large to add to the clock means about
    /// thirty years.
    #[inline]
    pub fn after(timeout: Duration) -> Self {
        Self::after_from(Instant::now(), timeout)
    }

    /// The deadline `timeout` after `now`, for callers that already read the clock.
    #[inline]
    pub fn after_from(now: Instant, timeout: Duration) -> Self {
        Deadline(now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE))
    }

    /// The instant itself.
    #[inline]
    pub fn instant(self) -> Instant {
        self.0
    }

    /// How long is left, zero once it has passed.
    #[inline]
    pub fn remaining(self) -> Duration {
        self.remaining_from(Instant::now())
    }

    /// How long is left as of `now`, zero once it has passed.
    #[inline]
    pub fn remaining_from(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether it has passed (no time is left).
    #[inline]
    pub fn is_expired(self) -> bool {
        self.is_expired_at(Instant::now())
    }

    /// Whether it has passed as of `now`.
    #[inline]
    pub fn is_expired_at(self, now: Instant) -> bool {
        self.0 <= now
    }

    /// The earlier of `self` and `other`.
    #[inline]
    pub fn earliest(self, other: Option<Deadline>) -> Deadline {
        match other {
            Some(other) if other < self => other,
            _ => self,
        }
    }
}

/// A timeout chosen for one request, carried with it: read by
/// [`TimeoutLayer::from_extension`](crate::timeout::TimeoutLayer::from_extension).
///
/// ```
/// # #[cfg(feature = "http")] {
/// use seawall::core::RequestTimeout;
/// use std::time::Duration;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(RequestTimeout(Duration::from_millis(250)));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestTimeout(pub Duration);

/// Marks a layer that reads no deadline: a call may wait as long as the layer's own settings
/// allow, whatever the deadline its request carries. The default of the layers that can honour
/// deadlines instead ([`CarriedDeadline`]): the rate limiters, the bulkhead and the adaptive
/// limiter.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDeadline;

/// Marks a layer that reads the [`Deadline`] each request carries through [`DeadlineCarrier`]
/// (put there by a propagating `TimeoutLayer` above, or read from `grpc-timeout`), and so decides
/// in `call`, where the request is known: a call never waits for capacity past its deadline. Set
/// by the builders' `honour_deadlines()` (the rate limiters', the bulkhead's and the adaptive
/// limiter's).
#[derive(Clone, Copy, Debug, Default)]
pub struct CarriedDeadline;

/// A request that can carry a [`Deadline`] (and a [`RequestTimeout`]) to the layers beneath.
///
/// Implemented for `http::Request<B>` (feature `http`), in its extensions, which covers axum and
/// tonic, servers and clients. Implement it for your own request types to let deadlines cross them.
///
/// ```
/// use seawall::core::{Deadline, DeadlineCarrier};
///
/// struct Query {
///     sql: String,
///     deadline: Option<Deadline>,
/// }
///
/// impl DeadlineCarrier for Query {
///     fn deadline(&self) -> Option<Deadline> {
///         self.deadline
///     }
///     fn set_deadline(&mut self, deadline: Deadline) {
///         self.deadline = Some(deadline);
///     }
/// }
/// ```
pub trait DeadlineCarrier {
    /// The deadline the request carries, if any.
    fn deadline(&self) -> Option<Deadline>;

    /// Sets the request's deadline, replacing any other.
    fn set_deadline(&mut self, deadline: Deadline);

    /// Gives the request `deadline` unless it already carries one no later: returns the deadline it
    /// carried in that case (and leaves it), `None` when `deadline` was set.
    ///
    /// Provided in terms of the two methods above; implement it when one look-up can do both.
    fn tighten_deadline(&mut self, deadline: Deadline) -> Option<Deadline> {
        match self.deadline() {
            Some(carried) if carried <= deadline => Some(carried),
            _ => {
                self.set_deadline(deadline);
                None
            }
        }
    }

    /// The timeout chosen for this request, if it carries one. None by default.
    fn request_timeout(&self) -> Option<Duration> {
        None
    }
}

#[cfg(feature = "http")]
impl<B> DeadlineCarrier for http::Request<B> {
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        self.extensions().get::<Deadline>().copied()
    }

    #[inline]
    fn set_deadline(&mut self, deadline: Deadline) {
        // Overwriting in place does not allocate; only the first deadline is boxed into the map.
        match self.extensions_mut().get_mut::<Deadline>() {
            Some(slot) => *slot = deadline,
            None => {
                self.extensions_mut().insert(deadline);
            }
        }
    }

    #[inline]
    fn tighten_deadline(&mut self, deadline: Deadline) -> Option<Deadline> {
        let extensions = self.extensions_mut();
        match extensions.get_mut::<Deadline>() {
            Some(carried) if *carried <= deadline => Some(*carried),
            Some(carried) => {
                *carried = deadline;
                None
            }
            None => {
                extensions.insert(deadline);
                None
            }
        }
    }

    #[inline]
    fn request_timeout(&self) -> Option<Duration> {
        self.extensions().get::<RequestTimeout>().map(|t| t.0)
    }
}
