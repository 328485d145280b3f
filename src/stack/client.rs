//! The standard client stack.

use super::{part, Part};
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::core::{Classify, ErrorIsFailure, Outcome};
use crate::error::ErrorKind;
use crate::retry::policy::{Cloned, ClonedWithDeadline};
use crate::retry::RetryLayer;
use crate::timeout::policy::Propagate;
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

/// How the timeouts of a [`ClientStack`] treat deadlines: its type parameter `T`. Sealed.
///
/// - [`Propagate<Duration>`](Propagate), the default: each timeout honours the
///   [`Deadline`](crate::core::Deadline) the request carries and gives the layers beneath a
///   tighter one, so that the retry never starts an attempt or a backoff past the total timeout,
///   the attempt timeout never waits past it, and a
///   [`WriteDeadlineLayer`](crate::timeout::propagate::WriteDeadlineLayer) beneath the stack tells
///   the server what is left. Requests must implement
///   [`DeadlineCarrier`](crate::core::DeadlineCarrier), as `http::Request` does.
/// - `Duration`: plain timeouts, for request types that cannot carry a deadline (see
///   [`ClientStack::without_deadlines`]).
pub trait StackTimeout: Clone + sealed::Sealed {
    /// Whether the timeouts propagate deadlines.
    #[doc(hidden)]
    const PROPAGATES: bool;

    /// The stack's timeout layer for `timeout`.
    #[doc(hidden)]
    fn timeout_layer(timeout: Duration) -> TimeoutLayer<Self>;
}

impl StackTimeout for Propagate<Duration> {
    const PROPAGATES: bool = true;

    fn timeout_layer(timeout: Duration) -> TimeoutLayer<Self> {
        TimeoutLayer::new(timeout).propagate()
    }
}

impl StackTimeout for Duration {
    const PROPAGATES: bool = false;

    fn timeout_layer(timeout: Duration) -> TimeoutLayer<Self> {
        TimeoutLayer::new(timeout)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Propagate<super::Duration> {}
    impl Sealed for super::Duration {}
}

/// The standard client stack: total timeout, retry, circuit breaker, attempt timeout. See the
/// [module docs](super).
///
/// Its error type is [`tower::BoxError`]. Every part is shared, as the layer alone would share
/// it, by every service the stack makes: one breaker and one retry budget per stack.
///
/// Its timeouts propagate deadlines (`T` is [`Propagate<Duration>`](Propagate), see
/// [`StackTimeout`]): the total timeout puts its deadline in the request, the retry reads it, and
/// the attempt timeout never waits past it. Requests must then carry deadlines
/// ([`DeadlineCarrier`](crate::core::DeadlineCarrier): `http::Request` does, and a type of your own
/// can in a few lines); for one that cannot, [`without_deadlines`](ClientStack::without_deadlines)
/// makes them plain timeouts.
pub struct ClientStack<
    RC = OpenIsFinal<ErrorIsFailure>,
    RP = ClonedWithDeadline,
    RO = (),
    BC = ErrorIsFailure,
    BO: 'static = (),
    T = Propagate<Duration>,
> {
    total: Option<TimeoutLayer<T>>,
    retry: Option<RetryLayer<RC, RP, RO>>,
    breaker: Option<CircuitBreakerLayer<BC, BO>>,
    attempt: Option<TimeoutLayer<T>>,
}

impl ClientStack {
    /// The stack with its defaults, for any request type that can be cloned (for retries) and
    /// carries a [`Deadline`](crate::core::Deadline) (see
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier)); add
    /// [`without_deadlines`](Self::without_deadlines) for one that cannot.
    pub fn new() -> Self {
        ClientStack {
            total: Some(StackTimeout::timeout_layer(Duration::from_secs(30))),
            retry: Some(
                RetryLayer::builder()
                    .policy(ClonedWithDeadline)
                    .map_classify(OpenIsFinal)
                    .build()
                    .expect("the default configuration is valid"),
            ),
            breaker: Some(CircuitBreakerLayer::new()),
            attempt: Some(StackTimeout::timeout_layer(Duration::from_secs(10))),
        }
    }
}

impl<RC, RO, BC, BO: 'static> ClientStack<RC, ClonedWithDeadline, RO, BC, BO, Propagate<Duration>> {
    /// For requests that cannot carry a [`Deadline`](crate::core::Deadline) (that do not implement
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier)): the timeouts are plain ones, which
    /// leave the request alone, and the retry clones requests without reading a deadline. Each
    /// timeout still ends the calls beneath it, but the retry no longer knows when the total
    /// timeout will end: it may start an attempt or a backoff that the total timeout then cuts,
    /// and the caller gets [`Elapsed`](crate::timeout::error::Elapsed) rather than the last
    /// attempt's answer. Call it before [`retry`](Self::retry), whose layer it keeps.
    ///
    /// ```
    /// use seawall::stack::ClientStack;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let stack = ClientStack::new().without_deadlines();
    /// let client = stack.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
    /// assert_eq!(client.oneshot(41).await.unwrap(), 42);
    /// # }
    /// ```
    pub fn without_deadlines(self) -> ClientStack<RC, Cloned, RO, BC, BO, Duration> {
        let plain = |timeout: TimeoutLayer<Propagate<Duration>>| timeout.map_policy(|p| p.0);
        ClientStack {
            total: self.total.map(plain),
            retry: self.retry.map(|retry| retry.map_policy(|_| Cloned)),
            breaker: self.breaker,
            attempt: self.attempt.map(plain),
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
        Propagate<Duration>,
    >
{
    /// The stack for an HTTP client: retries as [`RetryLayer::http`]
    /// (idempotent methods, 5xx, 408, 429 and transport errors, `Retry-After`), and a breaker that
    /// counts what [`HttpClassifier`](crate::http::HttpClassifier) calls failures. Its timeouts
    /// put their deadline in the request's extensions: a
    /// [`WriteDeadlineLayer`](crate::timeout::propagate::WriteDeadlineLayer) beneath the stack
    /// sends what is left to the server.
    pub fn http() -> Self {
        ClientStack {
            total: Some(StackTimeout::timeout_layer(Duration::from_secs(30))),
            retry: Some(
                RetryLayer::http()
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
            attempt: Some(StackTimeout::timeout_layer(Duration::from_secs(10))),
        }
    }
}

#[cfg(feature = "http")]
impl
    ClientStack<
        OpenIsFinal<crate::grpc::GrpcClassifier>,
        crate::retry::grpc::GrpcPolicy,
        (),
        crate::grpc::GrpcClassifier,
        (),
        Propagate<Duration>,
    >
{
    /// The stack for a gRPC client: retries as [`RetryLayer::grpc`]
    /// (transport errors and UNAVAILABLE, RESOURCE_EXHAUSTED only when the server pushed back,
    /// never DEADLINE_EXCEEDED or a code that says the call was wrong; `grpc-retry-pushback-ms`
    /// obeyed), and a breaker that counts what
    /// [`GrpcClassifier`](crate::grpc::GrpcClassifier) calls failures (transport errors, UNKNOWN,
    /// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, DATA_LOSS; not NOT_FOUND,
    /// INVALID_ARGUMENT, UNAUTHENTICATED and the other codes of a caller's mistake). Both read the
    /// `grpc-status` of trailers-only responses, which is how servers answer calls that fail before
    /// any message; a status sent in trailers after a message is not seen.
    ///
    /// Its timeouts put their deadline in the request's extensions; a
    /// [`WriteDeadlineLayer::grpc`](crate::timeout::propagate::WriteDeadlineLayer::grpc) beneath
    /// the stack sends what is left in `grpc-timeout`, so that the server gives up when the caller
    /// does. Requests are replayed when their body implements
    /// [`ReplayBody`](crate::retry::http::ReplayBody); tonic's does not, so for a tonic client use
    /// `seawall::tonic::ClientLayer` (feature `tonic`), which keeps each request's body in a
    /// [`Buffered`](crate::retry::buffered::Buffered) for the retries, writes `grpc-timeout`
    /// beneath the stack and turns its errors into `tonic::Status`es:
    ///
    /// ```text
    /// let channel = Channel::from_static("http://[::1]:50051").connect_lazy();
    /// let channel = seawall::tonic::ClientLayer::new(ClientStack::grpc()).layer(channel);
    /// let mut client = HealthClient::new(channel);
    /// ```
    pub fn grpc() -> Self {
        ClientStack {
            total: Some(StackTimeout::timeout_layer(Duration::from_secs(30))),
            retry: Some(
                RetryLayer::grpc()
                    .map_classify(OpenIsFinal)
                    .build()
                    .expect("the default configuration is valid"),
            ),
            breaker: Some(
                CircuitBreakerLayer::builder()
                    .classify(crate::grpc::GrpcClassifier::default())
                    .build()
                    .expect("the default configuration is valid"),
            ),
            attempt: Some(StackTimeout::timeout_layer(Duration::from_secs(10))),
        }
    }
}

impl<RC, RP, RO, BC, BO: 'static, T: StackTimeout> ClientStack<RC, RP, RO, BC, BO, T> {
    /// The caller's whole budget, retries included (default 30 s).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total = Some(T::timeout_layer(timeout));
        self
    }

    /// Leaves the total timeout out.
    pub fn without_total_timeout(mut self) -> Self {
        self.total = None;
        self
    }

    /// One attempt's limit (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt = Some(T::timeout_layer(timeout));
        self
    }

    /// Leaves the attempt timeout out.
    pub fn without_attempt_timeout(mut self) -> Self {
        self.attempt = None;
        self
    }

    /// Replaces the retry layer, with its classifier and policy: the stack's (those of
    /// `ClientStack::http()` or `grpc()`, say) are not kept, so start from `RetryLayer::http()` or
    /// `RetryLayer::grpc()` for such a stack. Classify with [`OpenIsFinal`] to keep an open
    /// breaker's rejections from being retried.
    pub fn retry<RC2, RP2, RO2>(
        self,
        retry: RetryLayer<RC2, RP2, RO2>,
    ) -> ClientStack<RC2, RP2, RO2, BC, BO, T> {
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
    /// [`handle`](CircuitBreakerLayer::handle) to watch or force it), with its classifier: the
    /// stack's is not kept, so give the breaker of a `ClientStack::http()` stack
    /// `.classify(HttpClassifier::default())` (and that of a `grpc()` one `GrpcClassifier`)
    /// yourself, or it counts every `Ok` as a success.
    pub fn breaker<BC2, BO2>(
        self,
        breaker: CircuitBreakerLayer<BC2, BO2>,
    ) -> ClientStack<RC, RP, RO, BC2, BO2, T> {
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

impl<RC: Clone, RP: Clone, RO, BC: Clone, BO: 'static, T: Clone> Clone
    for ClientStack<RC, RP, RO, BC, BO, T>
{
    fn clone(&self) -> Self {
        ClientStack {
            total: self.total.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            attempt: self.attempt.clone(),
        }
    }
}

impl<RC, RP, RO, BC, BO: 'static, T: StackTimeout> fmt::Debug
    for ClientStack<RC, RP, RO, BC, BO, T>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStack")
            .field("total_timeout", &self.total.is_some())
            .field("retry", &self.retry.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("attempt_timeout", &self.attempt.is_some())
            .field("deadlines", &T::PROPAGATES)
            .finish()
    }
}

/// The layers of a [`ClientStack`], innermost first.
type ClientLayers<RC, RP, RO, BC, BO, T> = Stack<
    Part<TimeoutLayer<T>>,
    Stack<
        Part<CircuitBreakerLayer<BC, BO>>,
        Stack<Part<RetryLayer<RC, RP, RO>>, Part<TimeoutLayer<T>>>,
    >,
>;

impl<S, RC, RP, RO, BC, BO: 'static, T> Layer<S> for ClientStack<RC, RP, RO, BC, BO, T>
where
    RC: Clone,
    RP: Clone,
    BC: Clone,
    T: Clone,
    ClientLayers<RC, RP, RO, BC, BO, T>: Layer<S>,
{
    type Service = <ClientLayers<RC, RP, RO, BC, BO, T> as Layer<S>>::Service;

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
