//! Asking any error that comes out of a seawall stack what it is: [`find`] walks the error's chain
//! of sources for a seawall rejection and returns it as a [`Cause`], whose [`kind`](Cause::kind)
//! says which, without downcasting by hand.
//!
//! Layers above another one may wrap its errors (a `HandleErrorLayer`, a client library, an
//! `anyhow` context): the walk finds the rejection wherever it sits in the chain.
//!
//! ```
//! # #[cfg(feature = "limit")] {
//! use seawall::error::{find, ErrorKind};
//! use seawall::limit::rate::{Quota, RateLimitLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut service = RateLimitLayer::new(Quota::per_second(1))
//!     .layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
//! service.ready().await.unwrap().call(()).await.unwrap();
//! let err = service.ready().await.unwrap().call(()).await.unwrap_err();
//! let cause = find(&*err).unwrap();
//! assert_eq!(cause.kind(), ErrorKind::RateLimited);
//! assert_eq!(cause.retry_after(), Some(std::time::Duration::from_secs(1)));
//! # }
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Which seawall rejection an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A circuit breaker was open (or half-open and busy, or forced open).
    CircuitOpen,
    /// A bulkhead or adaptive limiter had no room (its queue full, or the wait too long).
    BulkheadFull,
    /// A load shedder found the service beneath not ready.
    Overloaded,
    /// The client-side throttle did not send the call.
    Throttled,
    /// A rate limit was reached.
    RateLimited,
    /// A timeout or deadline ran out.
    TimedOut,
    /// A request carried a malformed deadline header.
    InvalidDeadline,
    /// A call failed and the retry budget had nothing left for another attempt (made only by a
    /// retry layer built with [`report_budget`](crate::retry::Builder::report_budget)).
    RetryBudgetExhausted,
    /// An endpoint pool had no healthy endpoint to send the call to, and was built to fail fast
    /// rather than spread calls over every endpoint (see [`crate::pool`]).
    NoHealthyEndpoint,
    /// The endpoint an endpoint pool chose in `poll_ready` left the pool (or its probe was taken
    /// over) before `call`: nothing was sent, and the call is safe to retry (see
    /// [`crate::pool`]).
    EndpointUnavailable,
}

impl ErrorKind {
    /// How many kinds there are.
    #[allow(dead_code)]
    pub(crate) const COUNT: usize = 10;

    /// The kind's number, from 0 to `COUNT - 1`.
    #[allow(dead_code)]
    pub(crate) fn index(self) -> usize {
        match self {
            ErrorKind::CircuitOpen => 0,
            ErrorKind::BulkheadFull => 1,
            ErrorKind::Overloaded => 2,
            ErrorKind::Throttled => 3,
            ErrorKind::RateLimited => 4,
            ErrorKind::TimedOut => 5,
            ErrorKind::InvalidDeadline => 6,
            ErrorKind::RetryBudgetExhausted => 7,
            ErrorKind::NoHealthyEndpoint => 8,
            ErrorKind::EndpointUnavailable => 9,
        }
    }

    /// A short, stable label for metrics and logs, such as `"circuit_open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::BulkheadFull => "bulkhead_full",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Throttled => "throttled",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::InvalidDeadline => "invalid_deadline",
            ErrorKind::RetryBudgetExhausted => "retry_budget_exhausted",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::EndpointUnavailable => "endpoint_unavailable",
        }
    }
}

impl ErrorKind {
    /// A short text for a client: `"circuit open"`, `"rate limited"`. It says nothing of the
    /// service's insides.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::CircuitOpen => "circuit open",
            ErrorKind::BulkheadFull => "at capacity",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Throttled => "throttled",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::InvalidDeadline => "invalid deadline header",
            ErrorKind::RetryBudgetExhausted => "retry budget exhausted",
            ErrorKind::NoHealthyEndpoint => "no healthy endpoint",
            ErrorKind::EndpointUnavailable => "endpoint unavailable",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A seawall rejection found in an error's chain, by reference to the error itself.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Cause<'a> {
    /// A circuit breaker's rejection.
    #[cfg(feature = "circuit-breaker")]
    CircuitOpen(&'a crate::circuit_breaker::error::Open),
    /// A bulkhead's or adaptive limiter's rejection.
    #[cfg(feature = "bulkhead")]
    BulkheadFull(&'a crate::bulkhead::error::Full),
    /// A load shedder's rejection.
    #[cfg(feature = "limit")]
    Overloaded(&'a crate::limit::error::Overloaded),
    /// The client-side throttle's rejection.
    #[cfg(feature = "limit")]
    Throttled(&'a crate::limit::error::Throttled),
    /// A rate limiter's rejection.
    #[cfg(feature = "limit")]
    RateLimited(&'a crate::limit::error::RateLimited),
    /// A timeout's.
    #[cfg(feature = "timeout")]
    TimedOut(&'a crate::timeout::error::Elapsed),
    /// A malformed deadline header.
    #[cfg(all(feature = "timeout", feature = "http"))]
    InvalidDeadline(&'a crate::timeout::error::InvalidTimeoutHeader),
    /// A retry layer's budget ran out on a failing call.
    #[cfg(feature = "retry")]
    RetryBudgetExhausted(&'a crate::retry::policy::BudgetExhausted),
    /// An endpoint pool had no healthy endpoint and fails fast.
    #[cfg(feature = "pool")]
    NoHealthyEndpoint(&'a crate::pool::error::NoHealthyEndpoint),
    /// An endpoint pool's chosen endpoint left it before the call (nothing was sent).
    #[cfg(feature = "pool")]
    EndpointUnavailable(&'a crate::pool::error::EndpointUnavailable),
    /// Never made: it keeps the lifetime when no layer feature is on.
    #[cfg(not(any(
        feature = "circuit-breaker",
        feature = "bulkhead",
        feature = "limit",
        feature = "timeout",
        feature = "retry"
    )))]
    #[doc(hidden)]
    _None(std::marker::PhantomData<&'a ()>),
}

impl Cause<'_> {
    /// Which rejection it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            #[cfg(feature = "circuit-breaker")]
            Cause::CircuitOpen(_) => ErrorKind::CircuitOpen,
            #[cfg(feature = "bulkhead")]
            Cause::BulkheadFull(_) => ErrorKind::BulkheadFull,
            #[cfg(feature = "limit")]
            Cause::Overloaded(_) => ErrorKind::Overloaded,
            #[cfg(feature = "limit")]
            Cause::Throttled(_) => ErrorKind::Throttled,
            #[cfg(feature = "limit")]
            Cause::RateLimited(_) => ErrorKind::RateLimited,
            #[cfg(feature = "timeout")]
            Cause::TimedOut(_) => ErrorKind::TimedOut,
            #[cfg(all(feature = "timeout", feature = "http"))]
            Cause::InvalidDeadline(_) => ErrorKind::InvalidDeadline,
            #[cfg(feature = "retry")]
            Cause::RetryBudgetExhausted(_) => ErrorKind::RetryBudgetExhausted,
            #[cfg(feature = "pool")]
            Cause::NoHealthyEndpoint(_) => ErrorKind::NoHealthyEndpoint,
            #[cfg(feature = "pool")]
            Cause::EndpointUnavailable(_) => ErrorKind::EndpointUnavailable,
            #[cfg(not(any(
                feature = "circuit-breaker",
                feature = "bulkhead",
                feature = "limit",
                feature = "timeout",
                feature = "retry"
            )))]
            Cause::_None(_) => unreachable!("never made"),
        }
    }

    /// When to come back, if the rejection says: an open breaker's next probe, a rate limit's
    /// next slot, a full bulkhead's or adaptive limiter's second
    /// ([`Full::retry_after`](crate::bulkhead::error::Full::retry_after)).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            #[cfg(feature = "circuit-breaker")]
            Cause::CircuitOpen(open) => open.retry_after(),
            #[cfg(feature = "bulkhead")]
            Cause::BulkheadFull(full) => Some(full.retry_after()),
            #[cfg(feature = "limit")]
            Cause::RateLimited(limited) => Some(limited.retry_after()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// The first seawall rejection in `err`'s chain (`err` itself, then its sources), if any.
pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<Cause<'a>> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(cause) = identify(err) {
            return Some(cause);
        }
        next = err.source();
    }
    None
}

/// The kind of the first seawall rejection in `err`'s chain, if any.
pub fn kind(err: &(dyn Error + 'static)) -> Option<ErrorKind> {
    find(err).map(|cause| cause.kind())
}

/// The seawall rejection `err` itself is, if it is one.
#[allow(unused_variables)]
pub(crate) fn identify<'a>(err: &'a (dyn Error + 'static)) -> Option<Cause<'a>> {
    #[cfg(feature = "circuit-breaker")]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::CircuitOpen(e));
    }
    #[cfg(feature = "bulkhead")]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::BulkheadFull(e));
    }
    #[cfg(feature = "limit")]
    {
        if let Some(e) = err.downcast_ref() {
            return Some(Cause::Overloaded(e));
        }
        if let Some(e) = err.downcast_ref() {
            return Some(Cause::Throttled(e));
        }
        if let Some(e) = err.downcast_ref() {
            return Some(Cause::RateLimited(e));
        }
    }
    #[cfg(feature = "timeout")]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::TimedOut(e));
    }
    #[cfg(all(feature = "timeout", feature = "http"))]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::InvalidDeadline(e));
    }
    #[cfg(feature = "retry")]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::RetryBudgetExhausted(e));
    }
    #[cfg(feature = "pool")]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::NoHealthyEndpoint(e));
    }
    #[cfg(feature = "pool")]
    if let Some(e) = err.downcast_ref() {
        return Some(Cause::EndpointUnavailable(e));
    }
    None
}
