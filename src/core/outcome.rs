//! What a finished call means to the layers that measure it.

use std::time::Duration;
use tokio::time::Instant;

/// The meaning of a finished call, as decided by a [`Classify`](super::Classify) implementation.
///
/// Gates count [`Success`](Outcome::Success) and [`Failure`](Outcome::Failure) in their windows and
/// leave [`Ignored`](Outcome::Ignored) calls out entirely (a 404 for a resource that does not exist
/// says nothing about the health of the backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed in a way that says something about the health of the callee.
    Failure,
    /// The call is not counted either way.
    Ignored,
}

impl Outcome {
    /// Whether this is [`Outcome::Failure`].
    #[inline]
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure)
    }

    /// A short, stable label for metrics and logs: `"success"`, `"failure"` or `"ignored"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Everything a gate learns about a finished call: its [`Outcome`], and, when anyone asked for it,
/// how long it took and when it ended.
///
/// The clock is read only when the gate or the observer wants timing, so `latency` and `finished`
/// are `None` on the cheapest path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The classified outcome.
    pub outcome: Outcome,
    /// How long the call took, if timing was wanted.
    pub latency: Option<Duration>,
    /// When the call finished, if timing was wanted.
    pub finished: Option<Instant>,
    /// A server's hint to stay away for this long (for example an HTTP `Retry-After` on a 503),
    /// read only for failures and only when the gate asks for hints.
    pub retry_after: Option<Duration>,
}

impl Record {
    /// A record with no timing and no hint.
    pub fn new(outcome: Outcome) -> Self {
        Record {
            outcome,
            latency: None,
            finished: None,
            retry_after: None,
        }
    }

    /// Sets the latency and the instant the call finished.
    pub fn with_timing(mut self, latency: Duration, finished: Instant) -> Self {
        self.latency = Some(latency);
        self.finished = Some(finished);
        self
    }

    /// Sets the server's hint.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}
