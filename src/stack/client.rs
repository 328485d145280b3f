//! The standard client stack.

use super::part::{
    BreakerSettings, Own, OwnBreaker, OwnRetry, OwnTimeout, Plain, Reobserve, RetrySettings,
    StackPart,
};
use super::Part;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::core::{Classify, ErrorIsFailure, Observer, Outcome};
use crate::error::ErrorKind;
use crate::retry::policy::{ClonedWithDeadline, WithDeadline};
use crate::retry::RetryLayer;
use crate::timeout::policy::Propagate;
use crate::timeout::TimeoutLayer;
use std::borrow::Cow;
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

/// How the timeouts a [`ClientStack`] makes treat deadlines: its type parameter `T`. Sealed.
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

    /// The retry policy `P` of a retry layer given to the stack
    /// ([`ClientStack::retry`]), as the stack uses it: made to read the deadline
    /// ([`WithDeadline`]) when the timeouts propagate, left as it is when they do not.
    #[doc(hidden)]
    type RetryPolicy<P>;

    /// The policy of a timeout of `timeout`.
    #[doc(hidden)]
    fn policy(timeout: Duration) -> Self;

    /// The retry policy `policy` as the stack uses it.
    #[doc(hidden)]
    fn retry_policy<P>(policy: P) -> Self::RetryPolicy<P>;
}

impl StackTimeout for Propagate<Duration> {
    const PROPAGATES: bool = true;
    type RetryPolicy<P> = WithDeadline<P>;

    fn policy(timeout: Duration) -> Self {
        Propagate(timeout)
    }

    fn retry_policy<P>(policy: P) -> WithDeadline<P> {
        WithDeadline(policy)
    }
}

impl StackTimeout for Duration {
    const PROPAGATES: bool = false;
    type RetryPolicy<P> = P;

    fn policy(timeout: Duration) -> Self {
        timeout
    }

    fn retry_policy<P>(policy: P) -> P {
        policy
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
/// Its error type is [`tower::BoxError`]. Each part's state (the breaker, the retry budget) is
/// made once, when the stack first makes a service or hands out a part, and shared by every clone
/// of the stack and every service made from any of them: one breaker and one retry budget per
/// stack. Configure the stack, then clone it.
///
/// Its timeouts propagate deadlines (`T` is [`Propagate<Duration>`](Propagate), see
/// [`StackTimeout`]): the total timeout puts its deadline in the request, the retry reads it, and
/// the attempt timeout never waits past it. Requests must then carry deadlines
/// ([`DeadlineCarrier`](crate::core::DeadlineCarrier): `http::Request` does, and a type of your own
/// can in a few lines); for one that cannot, [`without_deadlines`](ClientStack::without_deadlines)
/// makes them plain timeouts.
///
/// Its other type parameters are its parts (total timeout `Tot`, retry `R`, breaker `B`, attempt
/// timeout `Att`; see [`part`](super::part)) and its observer `O`: you never need to write them.
pub struct ClientStack<
    Tot = OwnTimeout<Propagate<Duration>>,
    R = OwnRetry<OpenIsFinal<ErrorIsFailure>, ClonedWithDeadline>,
    B = OwnBreaker<ErrorIsFailure>,
    Att = OwnTimeout<Propagate<Duration>>,
    T = Propagate<Duration>,
    O = (),
> {
    total: Option<Tot>,
    retry: Option<R>,
    breaker: Option<B>,
    attempt: Option<Att>,
    /// What the timeouts the stack makes from a `Duration` are.
    policy: std::marker::PhantomData<fn() -> T>,
    name: Cow<'static, str>,
    observer: O,
}

/// A client stack whose every part is its own, before any is replaced.
type Made<C, P, BC> = ClientStack<
    OwnTimeout<Propagate<Duration>>,
    OwnRetry<C, P>,
    OwnBreaker<BC>,
    OwnTimeout<Propagate<Duration>>,
>;

/// The stack's parts as one makes them, named `"client"` and observed by nothing.
fn made<C: Clone, P: Clone, BC: Clone>(
    retry: RetrySettings<C, P>,
    breaker: BreakerSettings<BC>,
) -> Made<C, P, BC> {
    ClientStack {
        total: Some(Own::new(Propagate(Duration::from_secs(30)))),
        retry: Some(Own::new(retry)),
        breaker: Some(Own::new(breaker)),
        attempt: Some(Own::new(Propagate(Duration::from_secs(10)))),
        policy: std::marker::PhantomData,
        name: Cow::Borrowed("client"),
        observer: (),
    }
}

impl ClientStack {
    /// The stack with its defaults, for any request type that can be cloned (for retries) and
    /// carries a [`Deadline`](crate::core::Deadline) (see
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier)); add
    /// [`without_deadlines`](Self::without_deadlines) for one that cannot. Named `"client"`,
    /// observed by nothing.
    pub fn new() -> Self {
        made(
            RetrySettings {
                classify: OpenIsFinal(ErrorIsFailure),
                policy: ClonedWithDeadline,
            },
            BreakerSettings {
                classify: ErrorIsFailure,
            },
        )
    }
}

impl<Tot, R, B, Att, O> ClientStack<Tot, R, B, Att, Propagate<Duration>, O>
where
    O: Observer,
    Tot: Plain<O>,
    R: Plain<O>,
    Att: Plain<O>,
{
    /// For requests that cannot carry a [`Deadline`](crate::core::Deadline) (that do not implement
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier)): the timeouts the stack makes are plain
    /// ones, which leave the request alone, and the retry it makes clones requests without
    /// reading a deadline. Each timeout still ends the calls beneath it, but the retry no longer
    /// knows when the total timeout will end: it may start an attempt or a backoff that the total
    /// timeout then cuts, and the caller gets [`Elapsed`](crate::timeout::error::Elapsed) rather
    /// than the last attempt's answer. Parts given as built layers are kept as they are (give
    /// plain ones), and so is the stack's `ClientStack::http()` or `grpc()` retry, whose requests
    /// carry deadlines: this is for `ClientStack::new()`.
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
    pub fn without_deadlines(
        self,
    ) -> ClientStack<Tot::Output, R::Output, B, Att::Output, Duration, O> {
        ClientStack {
            total: self.total.map(Plain::plain),
            retry: self.retry.map(Plain::plain),
            breaker: self.breaker,
            attempt: self.attempt.map(Plain::plain),
            policy: std::marker::PhantomData,
            name: self.name,
            observer: self.observer,
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
    Made<
        OpenIsFinal<crate::http::HttpClassifier>,
        crate::retry::http::HttpPolicy,
        crate::http::HttpClassifier,
    >
{
    /// The stack for an HTTP client: retries as [`RetryLayer::http`]
    /// (idempotent methods, 5xx, 408, 429 and transport errors, `Retry-After`), and a breaker that
    /// counts what [`HttpClassifier`](crate::http::HttpClassifier) calls failures. Its timeouts
    /// put their deadline in the request's extensions: a
    /// [`WriteDeadlineLayer`](crate::timeout::propagate::WriteDeadlineLayer) beneath the stack
    /// sends what is left to the server.
    pub fn http() -> Self {
        made(
            RetrySettings {
                classify: OpenIsFinal(crate::http::HttpClassifier::retryable()),
                policy: crate::retry::http::HttpPolicy::default(),
            },
            BreakerSettings {
                classify: crate::http::HttpClassifier::default(),
            },
        )
    }
}

#[cfg(feature = "http")]
impl
    Made<
        OpenIsFinal<crate::grpc::GrpcClassifier>,
        crate::retry::grpc::GrpcPolicy,
        crate::grpc::GrpcClassifier,
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
        made(
            RetrySettings {
                classify: OpenIsFinal(crate::grpc::GrpcClassifier::retryable()),
                policy: crate::retry::grpc::GrpcPolicy,
            },
            BreakerSettings {
                classify: crate::grpc::GrpcClassifier::default(),
            },
        )
    }
}

impl<Tot, R, B, Att, T, O> ClientStack<Tot, R, B, Att, T, O> {
    /// The caller's whole budget, retries included (default 30 s): a part the stack makes, named
    /// `"{name}.total_timeout"`.
    pub fn total_timeout(self, timeout: Duration) -> ClientStack<OwnTimeout<T, O>, R, B, Att, T, O>
    where
        T: StackTimeout,
        O: Observer,
    {
        ClientStack {
            total: Some(Own::new(T::policy(timeout))),
            retry: self.retry,
            breaker: self.breaker,
            attempt: self.attempt,
            policy: self.policy,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Uses `layer` as the total timeout, with its own name and observer: the stack's
    /// [`observer`](Self::observer) does not reach it. Make it propagate deadlines
    /// ([`TimeoutLayer::propagate`]), or the retry beneath will not know when it ends.
    pub fn total_timeout_layer<P, O2>(
        self,
        layer: TimeoutLayer<P, O2>,
    ) -> ClientStack<TimeoutLayer<P, O2>, R, B, Att, T, O> {
        ClientStack {
            total: Some(layer),
            retry: self.retry,
            breaker: self.breaker,
            attempt: self.attempt,
            policy: self.policy,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Leaves the total timeout out.
    pub fn without_total_timeout(mut self) -> Self {
        self.total = None;
        self
    }

    /// One attempt's limit (default 10 s): a part the stack makes, named
    /// `"{name}.attempt_timeout"`.
    pub fn attempt_timeout(
        self,
        timeout: Duration,
    ) -> ClientStack<Tot, R, B, OwnTimeout<T, O>, T, O>
    where
        T: StackTimeout,
        O: Observer,
    {
        ClientStack {
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            attempt: Some(Own::new(T::policy(timeout))),
            policy: self.policy,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Uses `layer` as the attempt timeout, with its own name and observer: the stack's
    /// [`observer`](Self::observer) does not reach it.
    pub fn attempt_timeout_layer<P, O2>(
        self,
        layer: TimeoutLayer<P, O2>,
    ) -> ClientStack<Tot, R, B, TimeoutLayer<P, O2>, T, O> {
        ClientStack {
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            attempt: Some(layer),
            policy: self.policy,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Leaves the attempt timeout out.
    pub fn without_attempt_timeout(mut self) -> Self {
        self.attempt = None;
        self
    }

    /// Replaces the retry layer, with its budget, limits, name and observer (the stack's
    /// [`observer`](Self::observer) does not reach it): the stack's classifier and policy (those
    /// of `ClientStack::http()` or `grpc()`, say) are not kept, so start from `RetryLayer::http()`
    /// or `RetryLayer::grpc()` for such a stack.
    ///
    /// The stack keeps two things of its own retry in the one given: its classifier is wrapped
    /// in [`OpenIsFinal`], so that an open breaker's rejections are not retried, and, when the
    /// stack's timeouts propagate deadlines (the default), its policy in
    /// [`WithDeadline`](crate::retry::policy::WithDeadline), so that it reads the stack's
    /// deadline even if it was built with one that does not (the default `Cloned`): no backoff
    /// is started that would end past the total timeout. Call
    /// [`without_deadlines`](Self::without_deadlines) before this, not after, for requests that
    /// cannot carry a deadline.
    pub fn retry<RC, RP, RO>(
        self,
        retry: RetryLayer<RC, RP, RO>,
    ) -> ClientStack<Tot, GivenRetry<RC, RP, RO, T>, B, Att, T, O>
    where
        T: StackTimeout,
    {
        ClientStack {
            total: self.total,
            retry: Some(retry.wrap(OpenIsFinal, T::retry_policy)),
            breaker: self.breaker,
            attempt: self.attempt,
            policy: self.policy,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Leaves retries out.
    pub fn without_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Replaces the circuit breaker (build it once, and keep its
    /// [`handle`](CircuitBreakerLayer::handle) to watch or force it), with its classifier, name
    /// and observer (the stack's [`observer`](Self::observer) does not reach it): the stack's
    /// classifier is not kept, so give the breaker of a `ClientStack::http()` stack
    /// `.classify(HttpClassifier::default())` (and that of a `grpc()` one `GrpcClassifier`)
    /// yourself, or it counts every `Ok` as a success.
    pub fn breaker<BC, BO>(
        self,
        breaker: CircuitBreakerLayer<BC, BO>,
    ) -> ClientStack<Tot, R, CircuitBreakerLayer<BC, BO>, Att, T, O> {
        ClientStack {
            total: self.total,
            retry: self.retry,
            breaker: Some(breaker),
            attempt: self.attempt,
            policy: self.policy,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Leaves the circuit breaker out.
    pub fn without_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// The circuit breaker, to take its handle. The stack's own breaker is made now if it has not
    /// been yet (with the stack's name and observer as they are now: set those first).
    pub fn breaker_layer(&self) -> Option<&B::Layer>
    where
        B: StackPart<O>,
    {
        self.breaker
            .as_ref()
            .map(|b| b.layer(|| self.part_name("breaker"), &self.observer))
    }

    /// Names the stack (default `"client"`): the parts it makes report as
    /// `"{name}.total_timeout"`, `"{name}.retry"`, `"{name}.breaker"` and
    /// `"{name}.attempt_timeout"`. Give two stacks in one process different names (a stack per
    /// dependency: `"catalog"`, `"payments"`), or their metrics mix. Before or after
    /// [`observer`](Self::observer), as you like; the parts are made anew (see
    /// [`part`](super::part)), so set it before cloning the stack.
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self
    where
        Tot: StackPart<O>,
        R: StackPart<O>,
        B: StackPart<O>,
        Att: StackPart<O>,
    {
        ClientStack {
            total: self.total.map(StackPart::fresh),
            retry: self.retry.map(StackPart::fresh),
            breaker: self.breaker.map(StackPart::fresh),
            attempt: self.attempt.map(StackPart::fresh),
            policy: self.policy,
            name: name.into(),
            observer: self.observer,
        }
    }

    /// Sends the events of every part the stack makes to `observer`, each under its own name (see
    /// [`name`](Self::name)): the timeouts' timeouts, the retry's attempts, retries and give-ups,
    /// the breaker's state, admissions, rejections and finished calls. Each part gets a clone of
    /// `observer`; a [`MetricsObserver`](crate::metrics::MetricsObserver)'s clones share their
    /// series, and keep each part's apart.
    ///
    /// A part given as a built layer ([`retry`](Self::retry), [`breaker`](Self::breaker),
    /// [`total_timeout_layer`](Self::total_timeout_layer),
    /// [`attempt_timeout_layer`](Self::attempt_timeout_layer)) keeps its own name and observer,
    /// and reports nothing if it was built without one: give it the observer yourself
    /// (`.name("catalog.breaker").observer(observer.clone())` on its builder).
    ///
    /// The parts are made anew (see [`part`](super::part)), so set it before cloning the stack.
    pub fn observer<O2>(
        self,
        observer: O2,
    ) -> ClientStack<Tot::Output, R::Output, B::Output, Att::Output, T, O2>
    where
        O2: Observer + Clone,
        Tot: Reobserve<O2>,
        R: Reobserve<O2>,
        B: Reobserve<O2>,
        Att: Reobserve<O2>,
    {
        ClientStack {
            total: self.total.map(Reobserve::reobserve),
            retry: self.retry.map(Reobserve::reobserve),
            breaker: self.breaker.map(Reobserve::reobserve),
            attempt: self.attempt.map(Reobserve::reobserve),
            policy: self.policy,
            name: self.name,
            observer,
        }
    }

    /// The name of the part called `part`.
    fn part_name(&self, part: &str) -> Cow<'static, str> {
        Cow::Owned(format!("{}.{part}", self.name))
    }
}

impl<Tot: Clone, R: Clone, B: Clone, Att: Clone, T, O: Clone> Clone
    for ClientStack<Tot, R, B, Att, T, O>
{
    fn clone(&self) -> Self {
        ClientStack {
            total: self.total.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            attempt: self.attempt.clone(),
            policy: self.policy,
            name: self.name.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<Tot, R, B, Att, T: StackTimeout, O> fmt::Debug for ClientStack<Tot, R, B, Att, T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStack")
            .field("name", &self.name)
            .field("total_timeout", &self.total.is_some())
            .field("retry", &self.retry.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("attempt_timeout", &self.attempt.is_some())
            .field("deadlines", &T::PROPAGATES)
            .finish()
    }
}

/// A retry layer given to a [`ClientStack`] whose timeouts are `T`, as the stack uses it (see
/// [`ClientStack::retry`]).
type GivenRetry<C, P, O, T> = RetryLayer<OpenIsFinal<C>, <T as StackTimeout>::RetryPolicy<P>, O>;

/// The layers of a [`ClientStack`], innermost first.
type ClientLayers<Tot, R, B, Att> = Stack<Part<Att>, Stack<Part<B>, Stack<Part<R>, Part<Tot>>>>;

impl<S, Tot, R, B, Att, T, O> Layer<S> for ClientStack<Tot, R, B, Att, T, O>
where
    Tot: StackPart<O>,
    R: StackPart<O>,
    B: StackPart<O>,
    Att: StackPart<O>,
    ClientLayers<Tot::Layer, R::Layer, B::Layer, Att::Layer>: Layer<S>,
{
    type Service = <ClientLayers<Tot::Layer, R::Layer, B::Layer, Att::Layer> as Layer<S>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        let name = |part: &'static str| move || self.part_name(part);
        let observer = &self.observer;
        Stack::new(
            Part::of(&self.attempt, name("attempt_timeout"), observer),
            Stack::new(
                Part::of(&self.breaker, name("breaker"), observer),
                Stack::new(
                    Part::of(&self.retry, name("retry"), observer),
                    Part::of(&self.total, name("total_timeout"), observer),
                ),
            ),
        )
        .layer(inner)
    }
}
