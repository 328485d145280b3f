//! Deciding what a call's result means: [`Classify`].

use super::Outcome;
use std::time::Duration;

/// Turns a call's `Result` into an [`Outcome`].
///
/// Implemented by [`ErrorIsFailure`] (the default: every `Err` is a failure, every `Ok` a success),
/// by closures `Fn(&Result<Res, E>) -> Outcome`, and, with the `http` feature, by
/// [`HttpClassifier`](crate::http::HttpClassifier).
///
/// Classifiers are cloned into every response future, so keep them small and cheap to clone
/// (a unit struct or a few integers; put anything larger behind an `Arc`).
///
/// # Example
///
/// ```
/// use seawall::core::{Classify, Outcome};
///
/// // Count only timeouts as failures; other errors are the caller's fault.
/// let classify = |result: &Result<u32, std::io::Error>| match result {
///     Ok(_) => Outcome::Success,
///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Failure,
///     Err(_) => Outcome::Ignored,
/// };
/// let timed_out = Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
/// assert_eq!(classify.classify(&timed_out), Outcome::Failure);
/// ```
pub trait Classify<Res, E> {
    /// Classifies one finished call.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;

    /// A server's request to stay away for a while (HTTP `Retry-After` on a 429 or 503), if the result
    /// carries one. Only asked for failures, and only by gates that honour hints.
    fn retry_after(&self, result: &Result<Res, E>) -> Option<Duration> {
        let _ = result;
        None
    }
}

/// The default classifier: `Ok` is [`Outcome::Success`], `Err` is [`Outcome::Failure`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorIsFailure;

impl<Res, E> Classify<Res, E> for ErrorIsFailure {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}
