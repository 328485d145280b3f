//! The pool's rejections: [`NoHealthyEndpoint`] and [`EndpointUnavailable`].

use std::fmt;

/// A pool built to [fail fast](super::Builder::fail_fast) had no healthy endpoint for the call:
/// every endpoint was ejected, or held in rotation only by the cap on ejections. Answered with 503
/// by [`crate::http::status`] and `UNAVAILABLE` by `seawall::tonic`; its
/// [`ErrorKind`](crate::error::ErrorKind) is `NoHealthyEndpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoHealthyEndpoint {
    endpoints: usize,
}

impl NoHealthyEndpoint {
    pub(crate) fn new(endpoints: usize) -> Self {
        NoHealthyEndpoint { endpoints }
    }

    /// How many endpoints the pool had (none of them healthy).
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }
}

impl fmt::Display for NoHealthyEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no healthy endpoint among {}", self.endpoints)
    }
}

impl std::error::Error for NoHealthyEndpoint {}

/// The endpoint a pool clone's `poll_ready` chose could no longer take the call when `call` came:
/// discovery removed it in between, or the probe the clone had claimed on it was taken over by
/// another clone (a claim waits at most a second for its call) and the endpoint is still out of
/// rotation. Nothing was sent, so the call is safe to retry: the next `poll_ready` chooses again.
/// (`call` cannot choose another endpoint itself: that one's readiness was never polled.)
/// Answered with 503 by [`crate::http::status`] and `UNAVAILABLE` by `seawall::tonic`; its
/// [`ErrorKind`](crate::error::ErrorKind) is `EndpointUnavailable`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointUnavailable;

impl EndpointUnavailable {
    pub(crate) fn new() -> Self {
        EndpointUnavailable
    }
}

impl fmt::Display for EndpointUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the chosen endpoint left the pool before the call; nothing was sent")
    }
}

impl std::error::Error for EndpointUnavailable {}
