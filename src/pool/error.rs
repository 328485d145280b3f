//! The pool's rejection: [`NoHealthyEndpoint`].

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
