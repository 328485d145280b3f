//! The error returned when the bulkhead turns a call away.

use crate::core::RejectReason;
use std::fmt;
use std::time::Duration;

/// The bulkhead had no room for the call, which was not sent.
///
/// Returned (boxed in a [`tower::BoxError`]) from the response future; find it with
/// `err.downcast_ref::<Full>()`. It says why: every slot taken and no queue
/// ([`at_capacity`](Full::at_capacity)), the queue full too ([`queue_full`](Full::queue_full)), or
/// a wait in the queue longer than allowed ([`waited_too_long`](Full::waited_too_long)). A server
/// answers it with 503 and `Retry-After: 1` ([`retry_after`](Full::retry_after)), a gRPC server
/// with `UNAVAILABLE` (which gRPC clients retry) and a pushback of one second.
///
/// ```
/// use seawall::bulkhead::error::Full;
/// # fn handle(err: tower::BoxError) -> u16 {
/// if let Some(full) = err.downcast_ref::<Full>() {
///     if full.waited_too_long() {
///         println!("queued for {:?} without a slot", full.waited());
///     }
///     return 503;
/// }
/// 500
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Full {
    reason: RejectReason,
    waited: Duration,
}

impl Full {
    pub(crate) fn new(reason: RejectReason, waited: Duration) -> Self {
        Full { reason, waited }
    }

    /// Every slot was taken and the bulkhead (or adaptive limiter) does not queue.
    pub fn at_capacity(&self) -> bool {
        matches!(
            self.reason,
            RejectReason::BulkheadFull | RejectReason::ConcurrencyLimited
        )
    }

    /// Every slot was taken and so was every place in the queue.
    pub fn queue_full(&self) -> bool {
        self.reason == RejectReason::QueueFull
    }

    /// The call waited in the queue for the longest time allowed without getting a slot.
    pub fn waited_too_long(&self) -> bool {
        self.reason == RejectReason::QueueTimeout
    }

    /// How long the call waited in the queue (zero unless it waited too long).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// When to come back: one second, whatever the reason. A server answers it as
    /// `Retry-After: 1` (a gRPC server as `grpc-retry-pushback-ms: 1000`).
    ///
    /// The bulkhead cannot know when a slot will free, but it turns a call away only when every
    /// slot is taken and the queue, if any, is full or stands (the call waited its allowed time
    /// without a slot): an overload, which lasts longer than one call. A client that comes back
    /// at once adds to it; one told to wait long leaves the server idle once a burst has passed.
    /// HTTP's `Retry-After` counts whole seconds, and 0 would ask for the immediate retry, so one
    /// second is its smallest useful value: the same for every reason, and for gRPC, so that both
    /// say the same. Clients that honour it (seawall's retry with an HTTP classifier, and a
    /// breaker built with `honour_retry_after`) spread their retries over it.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Why, as reported to observers: `BulkheadFull` from a bulkhead, `ConcurrencyLimited` from
    /// an adaptive limiter, `QueueFull` or `QueueTimeout` from either's queue.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            RejectReason::QueueFull => f.write_str("bulkhead is full and so is its queue"),
            RejectReason::QueueTimeout => {
                write!(f, "bulkhead is full; waited {:?} in its queue", self.waited)
            }
            RejectReason::ConcurrencyLimited => f.write_str("concurrency limit reached"),
            _ => f.write_str("bulkhead is full"),
        }
    }
}

impl std::error::Error for Full {}
