//! The standard server stack.

use super::part::{
    Own, OwnDeadlineLimiter, OwnLimiter, OwnRateLimit, OwnTimeout, Reobserve, StackDeadlineLimiter,
    StackLimiter, StackPart,
};
use super::Part;
use crate::core::Observer;
use crate::limit::rate::{Quota, RateLimitLayer};
use crate::limit::AdaptiveLimitLayer;
use crate::timeout::TimeoutLayer;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;
use tower::layer::util::Stack;
use tower::Layer;

/// The standard server stack: rate limit, adaptive concurrency, timeout. See the
/// [module docs](super).
///
/// Its error type is [`tower::BoxError`]. Each part's state is made once, when the stack first
/// makes a service, and shared by every clone of the stack and every service made from any of
/// them, as axum's per-connection clones need: configure the stack, then clone it.
///
/// Its type parameters are its parts (rate limit `R`, concurrency limit `C`, timeout `T`; see
/// [`part`](super::part)) and its observer `O`: you never need to write them.
pub struct ServerStack<R = OwnRateLimit, C = OwnLimiter, T = OwnTimeout<Duration>, O = ()> {
    rate: Option<R>,
    concurrency: Option<C>,
    timeout: Option<T>,
    name: Cow<'static, str>,
    observer: O,
}

impl ServerStack {
    /// No rate limit; a windowed Gradient2 limiter with a queue of 128, controlled delay (5 ms
    /// while the queue stands, 165 ms after it emptied) and LIFO order; a 30 s timeout; named
    /// `"server"`, observed by nothing. See the [module docs](super) for why.
    pub fn new() -> Self {
        ServerStack {
            rate: None,
            concurrency: Some(Own::new(StackLimiter)),
            timeout: Some(Own::new(Duration::from_secs(30))),
            name: Cow::Borrowed("server"),
            observer: (),
        }
    }
}

impl Default for ServerStack {
    fn default() -> Self {
        ServerStack::new()
    }
}

impl<R, C, T, O> ServerStack<R, C, T, O> {
    /// Limits the rate of requests to `quota`, turning the rest away: a part the stack makes,
    /// named `"{name}.rate_limit"`.
    ///
    /// # Panics
    ///
    /// If the quota lets nothing through. For a quota that comes from configuration, build the
    /// layer with [`RateLimitLayer::builder`], which returns the mistake as an error, and pass it
    /// to [`rate_limit_layer`](Self::rate_limit_layer).
    pub fn rate_limit(self, quota: Quota) -> ServerStack<OwnRateLimit<O>, C, T, O>
    where
        O: Observer,
    {
        if let Err(e) = quota.validate() {
            panic!("invalid rate limit: {e}");
        }
        ServerStack {
            rate: Some(Own::new(quota)),
            concurrency: self.concurrency,
            timeout: self.timeout,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Uses `layer` as the rate limit (to wait for slots, watch it through its handle, honour
    /// deadlines or read another clock), with its own name and observer: the stack's
    /// [`observer`](Self::observer) does not reach it.
    pub fn rate_limit_layer<Clk, O2, D>(
        self,
        layer: RateLimitLayer<Clk, O2, D>,
    ) -> ServerStack<RateLimitLayer<Clk, O2, D>, C, T, O> {
        ServerStack {
            rate: Some(layer),
            concurrency: self.concurrency,
            timeout: self.timeout,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Leaves the rate limit out (the default).
    pub fn without_rate_limit(mut self) -> Self {
        self.rate = None;
        self
    }

    /// Uses `layer` as the concurrency limiter, in place of the stack's (keep its handle to watch
    /// the limit), with its own name and observer: the stack's [`observer`](Self::observer) does
    /// not reach it. Its queue is the one its builder was given: none unless set (see the
    /// [module docs](super) for the default's), and so is whether it honours deadlines.
    pub fn concurrency_layer<A2, C2, O2, D2>(
        self,
        layer: AdaptiveLimitLayer<A2, C2, O2, D2>,
    ) -> ServerStack<R, AdaptiveLimitLayer<A2, C2, O2, D2>, T, O> {
        ServerStack {
            rate: self.rate,
            concurrency: Some(layer),
            timeout: self.timeout,
            name: self.name,
            observer: self.observer,
        }
    }

    /// The same as [`concurrency_layer`](Self::concurrency_layer).
    #[deprecated(note = "use `concurrency_layer`")]
    pub fn concurrency<A2, C2, O2>(
        self,
        layer: AdaptiveLimitLayer<A2, C2, O2>,
    ) -> ServerStack<R, AdaptiveLimitLayer<A2, C2, O2>, T, O> {
        self.concurrency_layer(layer)
    }

    /// Leaves the concurrency limit out.
    pub fn without_concurrency_limit(mut self) -> Self {
        self.concurrency = None;
        self
    }

    /// A request's limit (default 30 s): a part the stack makes, named `"{name}.timeout"`.
    pub fn timeout(self, timeout: Duration) -> ServerStack<R, C, OwnTimeout<Duration, O>, O>
    where
        O: Observer,
    {
        ServerStack {
            rate: self.rate,
            concurrency: self.concurrency,
            timeout: Some(Own::new(timeout)),
            name: self.name,
            observer: self.observer,
        }
    }

    /// Uses `layer` as the timeout (one that reads the request, or propagates deadlines), with
    /// its own name and observer: the stack's [`observer`](Self::observer) does not reach it.
    pub fn timeout_layer<P, O2>(
        self,
        layer: TimeoutLayer<P, O2>,
    ) -> ServerStack<R, C, TimeoutLayer<P, O2>, O> {
        ServerStack {
            rate: self.rate,
            concurrency: self.concurrency,
            timeout: Some(layer),
            name: self.name,
            observer: self.observer,
        }
    }

    /// Leaves the timeout out.
    pub fn without_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// Names the stack (default `"server"`): the parts it makes report as `"{name}.rate_limit"`,
    /// `"{name}.concurrency"` and `"{name}.timeout"`. Give two stacks in one process different
    /// names, or their metrics mix. Before or after [`observer`](Self::observer), as you like;
    /// the parts are made anew (see [`part`](super::part)), so set it before cloning the stack.
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self
    where
        R: StackPart<O>,
        C: StackPart<O>,
        T: StackPart<O>,
    {
        ServerStack {
            rate: self.rate.map(StackPart::fresh),
            concurrency: self.concurrency.map(StackPart::fresh),
            timeout: self.timeout.map(StackPart::fresh),
            name: name.into(),
            observer: self.observer,
        }
    }

    /// Sends the events of every part the stack makes to `observer`, each under its own name (see
    /// [`name`](Self::name)): the rate limit's admissions and rejections, the concurrency
    /// limiter's admissions, rejections, finished calls and limit, the timeout's timeouts. Each
    /// part gets a clone of `observer`; a
    /// [`MetricsObserver`](crate::metrics::MetricsObserver)'s clones share their series, and keep
    /// each part's apart.
    ///
    /// A part given as a built layer ([`rate_limit_layer`](Self::rate_limit_layer),
    /// [`concurrency_layer`](Self::concurrency_layer), [`timeout_layer`](Self::timeout_layer))
    /// keeps its own name and observer, and reports nothing if it was built without one: give it
    /// the observer yourself (`.name("api.timeout").observer(observer.clone())`).
    ///
    /// The parts are made anew (see [`part`](super::part)), so set it before cloning the stack.
    pub fn observer<O2>(self, observer: O2) -> ServerStack<R::Output, C::Output, T::Output, O2>
    where
        O2: Observer + Clone,
        R: Reobserve<O2>,
        C: Reobserve<O2>,
        T: Reobserve<O2>,
    {
        ServerStack {
            rate: self.rate.map(Reobserve::reobserve),
            concurrency: self.concurrency.map(Reobserve::reobserve),
            timeout: self.timeout.map(Reobserve::reobserve),
            name: self.name,
            observer,
        }
    }

    /// The name of the part called `part`.
    fn part_name(&self, part: &str) -> Cow<'static, str> {
        Cow::Owned(format!("{}.{part}", self.name))
    }
}

impl<R, T, O: Observer> ServerStack<R, OwnLimiter<O>, T, O> {
    /// The stack's own limiter (not one given with
    /// [`concurrency_layer`](Self::concurrency_layer): build that one with `honour_deadlines()`)
    /// decides in `call` and honours the
    /// [`Deadline`](crate::core::Deadline) each request carries: a request waits in its queue
    /// never past its deadline, and is turned away then with the limiter's usual 503 and
    /// `Retry-After` (a request whose deadline has passed, at once), rather than reach the
    /// handler with no time left (see
    /// [`AdaptiveLimitBuilder::honour_deadlines`](crate::limit::AdaptiveLimitBuilder::honour_deadlines)).
    ///
    /// Requests carry a deadline only if a layer above puts one in: a
    /// [`ReadDeadlineLayer`](crate::timeout::propagate::ReadDeadlineLayer) reading `grpc-timeout`
    /// or a timeout header, or a propagating [`TimeoutLayer`] (the stack's own timeout is beneath
    /// the limiter, and sets none). The requests must be
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier)s (`http::Request` is, with feature
    /// `http`) and the service beneath `Clone` (axum's and tonic's are): a request that waits is
    /// made on a clone, made ready once it has its slot.
    ///
    /// ```
    /// # #[cfg(feature = "http")] {
    /// use seawall::stack::ServerStack;
    /// use seawall::timeout::propagate::ReadDeadlineLayer;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let server = ServiceBuilder::new()
    ///     .layer(ReadDeadlineLayer::grpc()) // the caller's grpc-timeout, as a deadline
    ///     .layer(ServerStack::new().honour_deadlines())
    ///     .service(service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::io::Error>(http::Response::new(()))
    ///     }));
    /// let request = http::Request::builder().header("grpc-timeout", "200m").body(()).unwrap();
    /// assert!(server.oneshot(request).await.is_ok());
    /// # }
    /// # }
    /// ```
    pub fn honour_deadlines(self) -> ServerStack<R, OwnDeadlineLimiter<O>, T, O> {
        ServerStack {
            rate: self.rate,
            // Left out, it stays out.
            concurrency: self.concurrency.map(|_| Own::new(StackDeadlineLimiter)),
            timeout: self.timeout,
            name: self.name,
            observer: self.observer,
        }
    }
}

impl<R: Clone, C: Clone, T: Clone, O: Clone> Clone for ServerStack<R, C, T, O> {
    fn clone(&self) -> Self {
        ServerStack {
            rate: self.rate.clone(),
            concurrency: self.concurrency.clone(),
            timeout: self.timeout.clone(),
            name: self.name.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<R, C, T, O> fmt::Debug for ServerStack<R, C, T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStack")
            .field("name", &self.name)
            .field("rate_limit", &self.rate.is_some())
            .field("concurrency_limit", &self.concurrency.is_some())
            .field("timeout", &self.timeout.is_some())
            .finish()
    }
}

/// The layers of a [`ServerStack`], innermost first.
type ServerLayers<R, C, T> = Stack<Part<T>, Stack<Part<C>, Part<R>>>;

impl<S, R, C, T, O> Layer<S> for ServerStack<R, C, T, O>
where
    R: StackPart<O>,
    C: StackPart<O>,
    T: StackPart<O>,
    ServerLayers<R::Layer, C::Layer, T::Layer>: Layer<S>,
{
    type Service = <ServerLayers<R::Layer, C::Layer, T::Layer> as Layer<S>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        let name = |part: &'static str| move || self.part_name(part);
        let observer = &self.observer;
        Stack::new(
            Part::of(&self.timeout, name("timeout"), observer),
            Stack::new(
                Part::of(&self.concurrency, name("concurrency"), observer),
                Part::of(&self.rate, name("rate_limit"), observer),
            ),
        )
        .layer(inner)
    }
}
