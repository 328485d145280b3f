//! The standard client stack.

use super::{part, Part};
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::core::{Classify, ErrorIsFailure, Outcome};
use crate::error::ErrorKind;
use crate::retry::policy::Cloned;
use crate::retry::RetryLayer;
use crate::timeout::TimeoutLayer;
use std::fmt;
use std::time::Duration;
use tower::layer::util::Stack;
use tower::{BoxError, Layer};

/// A retry classifier that leaves an open breaker's rejection final: it is not retried (the
/// breaker will not have closed a backoff later), and every other result is classified by `C`.
///
/// ```
/// use seawall::core::{Classify, ErrorIsFailure, Outcome};
/// use seawall::stack::OpenIsFinal;
///
/// let classify = OpenIsFinal(ErrorIsFailure);
/// let other: Result<(), tower::BoxError> = Err("connection reset".into());
/// assert_eq!(classify.classify(&other), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenIsFinal<C>(pub C);

impl<Res, C: Classify<Res, BoxError>> Classify<Res, BoxError> for OpenIsFinal<C> {
    fn classify(&self, result: &Result<Res, BoxError>) -> Outcome {
        if let Err(err) = result {
            if crate::error::kind(&**err) == Some(ErrorKind::CircuitOpen) {
                return Outcome::Ignored;
            }
        }
        self.0.classify(result)
    }

    fn retry_after(&self, result: &Result<Res, BoxError>) -> Option<Duration> {
        self.0.retry_after(result)
    }
}

/// The standard client stack: total timeout, retry, circuit breaker, attempt timeout. See the
/// [module docs](super).
///
/// Its error type is [`tower::BoxError`]. Every part is shared, as the layer alone would share
/// it, by every service the stack makes: one breaker and one retry budget per stack.
pub struct ClientStack<
    RC = OpenIsFinal<ErrorIsFailure>,
    RP = Cloned,
    RO = (),
    BC = ErrorIsFailure,
    BO: 'static = (),
> {
    total: Option<TimeoutLayer>,
    retry: Option<RetryLayer<RC, RP, RO>>,
    breaker: Option<CircuitBreakerLayer<BC, BO>>,
    attempt: Option<TimeoutLayer>,
}

impl ClientStack {
    /// The stack with its defaults, for any request type that can be cloned (for retries).
    pub fn new() -> Self {
        ClientStack {
            total: Some(TimeoutLayer::new(Duration::from_secs(30))),
            retry: Some(
                RetryLayer::builder()
                    .map_classify(OpenIsFinal)
                    .build()
                    .expect("the default configuration is valid"),
            ),
            breaker: Some(CircuitBreakerLayer::new()),
            attempt: Some(TimeoutLayer::new(Duration::from_secs(10))),
        }
    }
}

impl Default for ClientStack {
    fn default() -> Self {
        ClientStack::new()
    }
}

#[cfg(feature = "http")]
impl
    ClientStack<
        OpenIsFinal<crate::http::HttpClassifier>,
        crate::retry::http::HttpPolicy,
        (),
        crate::http::HttpClassifier,
        (),
    >
{
    /// The stack for an HTTP client: retries as [`retry::Builder::http`](crate::retry::Builder::http)
    /// (idempotent methods, 5xx, 408, 429 and transport errors, `Retry-After`), and a breaker that
    /// counts what [`HttpClassifier`](crate::http::HttpClassifier) calls failures.
    pub fn http() -> Self {
        ClientStack {
            total: Some(TimeoutLayer::new(Duration::from_secs(30))),
            retry: Some(
                RetryLayer::builder()
                    .http()
                    .map_classify(OpenIsFinal)
                    .build()
                    .expect("the default configuration is valid"),
            ),
            breaker: Some(
                CircuitBreakerLayer::builder()
                    .classify(crate::http::HttpClassifier::default())
                    .build()
                    .expect("the default configuration is valid"),
            ),
            attempt: Some(TimeoutLayer::new(Duration::from_secs(10))),
        }
    }
}

impl<RC, RP, RO, BC, BO: 'static> ClientStack<RC, RP, RO, BC, BO> {
    /// The caller's whole budget, retries included (default 30 s).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total = Some(TimeoutLayer::new(timeout));
        self
    }

    /// Leaves the total timeout out.
    pub fn without_total_timeout(mut self) -> Self {
        self.total = None;
        self
    }

    /// One attempt's limit (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt = Some(TimeoutLayer::new(timeout));
        self
    }

    /// Leaves the attempt timeout out.
    pub fn without_attempt_timeout(mut self) -> Self {
        self.attempt = None;
        self
    }

    /// Replaces the retry layer. Classify with [`OpenIsFinal`] to keep an open breaker's
    /// rejections from being retried.
    pub fn retry<RC2, RP2, RO2>(
        self,
        retry: RetryLayer<RC2, RP2, RO2>,
    ) -> ClientStack<RC2, RP2, RO2, BC, BO> {
        ClientStack {
            total: self.total,
            retry: Some(retry),
            breaker: self.breaker,
            attempt: self.attempt,
        }
    }

    /// Leaves retries out.
    pub fn without_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Replaces the circuit breaker (build it once, and keep its
    /// [`handle`](CircuitBreakerLayer::handle) to watch or force it).
    pub fn breaker<BC2, BO2>(
        self,
        breaker: CircuitBreakerLayer<BC2, BO2>,
    ) -> ClientStack<RC, RP, RO, BC2, BO2> {
        ClientStack {
            total: self.total,
            retry: self.retry,
            breaker: Some(breaker),
            attempt: self.attempt,
        }
    }

    /// Leaves the circuit breaker out.
    pub fn without_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// The circuit breaker, to take its handle.
    pub fn breaker_layer(&self) -> Option<&CircuitBreakerLayer<BC, BO>> {
        self.breaker.as_ref()
    }
}

impl<RC: Clone, RP: Clone, RO, BC: Clone, BO: 'static> Clone for ClientStack<RC, RP, RO, BC, BO> {
    fn clone(&self) -> Self {
        ClientStack {
            total: self.total.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            attempt: self.attempt.clone(),
        }
    }
}

impl<RC, RP, RO, BC, BO: 'static> fmt::Debug for ClientStack<RC, RP, RO, BC, BO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStack")
            .field("total_timeout", &self.total.is_some())
            .field("retry", &self.retry.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("attempt_timeout", &self.attempt.is_some())
            .finish()
    }
}

/// The layers of a [`ClientStack`], innermost first.
type ClientLayers<RC, RP, RO, BC, BO> = Stack<
    Part<TimeoutLayer>,
    Stack<
        Part<CircuitBreakerLayer<BC, BO>>,
        Stack<Part<RetryLayer<RC, RP, RO>>, Part<TimeoutLayer>>,
    >,
>;

impl<S, RC, RP, RO, BC, BO: 'static> Layer<S> for ClientStack<RC, RP, RO, BC, BO>
where
    RC: Clone,
    RP: Clone,
    BC: Clone,
    ClientLayers<RC, RP, RO, BC, BO>: Layer<S>,
{
    type Service = <ClientLayers<RC, RP, RO, BC, BO> as Layer<S>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        let layers = Stack::new(
            part(&self.attempt),
            Stack::new(
                part(&self.breaker),
                Stack::new(part(&self.retry), part(&self.total)),
            ),
        );
        layers.layer(inner)
    }
}
