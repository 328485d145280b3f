//! What may be retried, and how a request is copied for another attempt: [`Policy`].

use crate::core::{Deadline, DeadlineCarrier, GiveUpReason};
use std::fmt;
use tower::BoxError;

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

    /// Whether a copy of `req` made now could be sent whole. Yes by default; the HTTP and gRPC
    /// policies say no while another attempt is still sending a
    /// [`Buffered`](super::buffered::Buffered) body (and once it was too large to keep). Asked by
    /// a hedge layer, whose attempts overlap, before it sends each hedge: it waits while the
    /// answer is no. A retry layer, whose attempts never overlap, does not ask.
    fn can_replay(&self, req: &Req) -> bool {
        let _ = req;
        true
    }

    /// Whether a failed attempt that [`should_retry`](Self::should_retry) declined ends the
    /// call while other attempts of it are still in flight (in a hedge layer): yes by default,
    /// and those attempts are dropped. No means that only further attempts are not sent, and
    /// the attempts in flight may still answer. The gRPC policy says no to a pushback saying
    /// not to retry and to RESOURCE_EXHAUSTED without a pushback, as gRPC's hedging (A6) does.
    /// A retry layer, with one attempt at a time, does not ask.
    fn ends_call(&self, req: &Req, result: &Result<Res, E>) -> bool {
        let _ = (req, result);
        true
    }

    /// What the call returns when the layer stops retrying after `attempts` attempts for
    /// `reason`: the last attempt's `result`, unchanged by default. See [`ReportBudget`], which
    /// turns a failure the budget would not retry into [`BudgetExhausted`].
    fn give_up(
        &self,
        reason: GiveUpReason,
        attempts: u32,
        result: Result<Res, E>,
    ) -> Result<Res, E> {
        let _ = (reason, attempts);
        result
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
/// [`DeadlineCarrier`]): no backoff is started that would end past it, and should the deadline
/// pass during a retry, the call ends then with the answer of the attempt before.
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

/// A policy `P` that also honours the [`Deadline`] the request carries (see
/// [`DeadlineCarrier`]) when `P` reads none: what
/// [`ClientStack::retry`](crate::stack::ClientStack::retry) makes of the policy of a retry layer
/// given to a stack whose timeouts propagate deadlines, so that its retries stop at the stack's
/// deadline. Everything else is `P`'s.
#[derive(Clone, Copy, Debug, Default)]
pub struct WithDeadline<P>(pub P);

impl<Req: DeadlineCarrier, Res, E, P: Policy<Req, Res, E>> Policy<Req, Res, E> for WithDeadline<P> {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        self.0.replay(req)
    }

    fn should_retry(&self, req: &Req, result: &Result<Res, E>) -> bool {
        self.0.should_retry(req, result)
    }

    fn deadline(&self, req: &Req) -> Option<Deadline> {
        self.0.deadline(req).or_else(|| req.deadline())
    }

    fn can_replay(&self, req: &Req) -> bool {
        self.0.can_replay(req)
    }

    fn ends_call(&self, req: &Req, result: &Result<Res, E>) -> bool {
        self.0.ends_call(req, result)
    }

    fn give_up(
        &self,
        reason: GiveUpReason,
        attempts: u32,
        result: Result<Res, E>,
    ) -> Result<Res, E> {
        self.0.give_up(reason, attempts, result)
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

    fn can_replay(&self, req: &Req) -> bool {
        self.policy.can_replay(req)
    }

    fn ends_call(&self, req: &Req, result: &Result<Res, E>) -> bool {
        // A failure the predicate declined (and the inner policy would retry) is final.
        self.policy.should_retry(req, result) || self.policy.ends_call(req, result)
    }

    fn give_up(
        &self,
        reason: GiveUpReason,
        attempts: u32,
        result: Result<Res, E>,
    ) -> Result<Res, E> {
        self.policy.give_up(reason, attempts, result)
    }
}

/// A policy whose calls that fail and that the retry budget would not retry end in
/// [`BudgetExhausted`], wrapping the last attempt's error; see
/// [`Builder::report_budget`](super::Builder::report_budget). Everything else is the inner
/// policy's.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReportBudget<P>(P);

impl<P> ReportBudget<P> {
    pub(crate) fn new(policy: P) -> Self {
        ReportBudget(policy)
    }
}

impl<Req, Res, E, P> Policy<Req, Res, E> for ReportBudget<P>
where
    P: Policy<Req, Res, E>,
    E: Into<BoxError> + From<BudgetExhausted>,
{
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        self.0.replay(req)
    }

    fn should_retry(&self, req: &Req, result: &Result<Res, E>) -> bool {
        self.0.should_retry(req, result)
    }

    fn deadline(&self, req: &Req) -> Option<Deadline> {
        self.0.deadline(req)
    }

    fn can_replay(&self, req: &Req) -> bool {
        self.0.can_replay(req)
    }

    fn ends_call(&self, req: &Req, result: &Result<Res, E>) -> bool {
        self.0.ends_call(req, result)
    }

    fn give_up(
        &self,
        reason: GiveUpReason,
        attempts: u32,
        result: Result<Res, E>,
    ) -> Result<Res, E> {
        match self.0.give_up(reason, attempts, result) {
            Err(last) if reason == GiveUpReason::Budget => Err(E::from(BudgetExhausted {
                attempts,
                last: last.into(),
            })),
            result => result,
        }
    }
}

/// A call failed, and the retry budget had nothing left for another attempt: the service beneath
/// is failing for many callers at once. Its [source](std::error::Error::source) is the last
/// attempt's error. Made only by a retry layer built with
/// [`report_budget`](super::Builder::report_budget); it maps to `503 Service Unavailable` and
/// gRPC `UNAVAILABLE`.
///
/// ```
/// use seawall::error::ErrorKind;
/// use seawall::retry::budget::Budget;
/// use seawall::retry::policy::BudgetExhausted;
/// use seawall::retry::RetryLayer;
/// use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // A budget with nothing in it: no call may be retried.
/// let layer = RetryLayer::builder()
///     .budget(Budget::ratio(0.0, 0, std::time::Duration::from_secs(10)).unwrap())
///     .report_budget()
///     .build()
///     .unwrap();
/// let mut service = layer.layer(service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) }));
/// let err = service.ready().await.unwrap().call(1).await.unwrap_err();
/// let exhausted = err.downcast_ref::<BudgetExhausted>().unwrap();
/// assert_eq!(exhausted.attempts(), 1);
/// assert_eq!(seawall::error::kind(&*err), Some(ErrorKind::RetryBudgetExhausted));
/// assert_eq!(std::error::Error::source(exhausted).unwrap().to_string(), "down");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("retry budget exhausted after {attempts} attempt(s)")]
pub struct BudgetExhausted {
    attempts: u32,
    #[source]
    last: BoxError,
}

impl BudgetExhausted {
    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}
