//! What may be retried, and how a request is copied for another attempt: [`Policy`].

use crate::core::{Deadline, DeadlineCarrier};
use std::fmt;

/// Copies requests for further attempts, may decline to retry some, and reads their deadline.
///
/// Which results are failures worth retrying is the classifier's call (see
/// [`Builder::classify`](super::Builder::classify)); a policy refines it per request.
pub trait Policy<Req, Res, E> {
    /// A copy of `req` for another attempt, or `None` if it must be sent only once (it is not
    /// idempotent, or its body cannot be replayed). Called once per call, before the first attempt,
    /// and again before each retry but the last.
    fn replay(&self, req: &Req) -> Option<Req>;

    /// Whether a failed attempt of `req` that ended in `result` may be retried. Yes by default.
    fn should_retry(&self, req: &Req, result: &Result<Res, E>) -> bool {
        let _ = (req, result);
        true
    }

    /// The deadline `req` carries, past which no retry may end. None by default.
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        let _ = req;
        None
    }
}

/// Retries any request that is `Clone`, by cloning it. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cloned;

impl<Req: Clone, Res, E> Policy<Req, Res, E> for Cloned {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Retries any request that is `Clone`, and honours the [`Deadline`] it carries (see
/// [`DeadlineCarrier`]): no retry is started that would end past it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClonedWithDeadline;

impl<Req: Clone + DeadlineCarrier, Res, E> Policy<Req, Res, E> for ClonedWithDeadline {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn deadline(&self, req: &Req) -> Option<Deadline> {
        req.deadline()
    }
}

/// A policy whose retries a predicate may also decline; see
/// [`Builder::retry_if`](super::Builder::retry_if).
#[derive(Clone, Copy)]
pub struct RetryIf<P, F> {
    policy: P,
    predicate: F,
}

impl<P, F> RetryIf<P, F> {
    pub(crate) fn new(policy: P, predicate: F) -> Self {
        RetryIf { policy, predicate }
    }
}

impl<P: fmt::Debug, F> fmt::Debug for RetryIf<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryIf")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<Req, Res, E, P, F> Policy<Req, Res, E> for RetryIf<P, F>
where
    P: Policy<Req, Res, E>,
    F: Fn(&Req, &Result<Res, E>) -> bool,
{
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        self.policy.replay(req)
    }

    fn should_retry(&self, req: &Req, result: &Result<Res, E>) -> bool {
        self.policy.should_retry(req, result) && (self.predicate)(req, result)
    }

    fn deadline(&self, req: &Req) -> Option<Deadline> {
        self.policy.deadline(req)
    }
}
