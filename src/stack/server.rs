//! The standard server stack.

use super::{part, Part};
use crate::bulkhead::{Codel, Order};
use crate::limit::algorithm::{Gradient2, Windowed};
use crate::limit::rate::{Quota, RateLimitLayer};
use crate::limit::AdaptiveLimitLayer;
use crate::timeout::TimeoutLayer;
use std::fmt;
use std::time::Duration;
use tower::layer::util::Stack;
use tower::Layer;

/// The standard server stack: rate limit, adaptive concurrency, timeout. See the
/// [module docs](super).
///
/// Its error type is [`tower::BoxError`]. State is created with the stack and shared by every
/// service it makes, as axum's per-connection clones need.
pub struct ServerStack<A: 'static = Windowed<Gradient2>> {
    rate: Option<RateLimitLayer>,
    concurrency: Option<AdaptiveLimitLayer<A>>,
    timeout: Option<TimeoutLayer>,
}

/// How many callers the default limiter's queue holds.
const QUEUE: usize = 128;
/// The default limiter's controlled delay: 5 ms while the queue stands, 150 ms after it emptied.
const CODEL: Codel = Codel::new(Duration::from_millis(5), Duration::from_millis(150));

impl ServerStack {
    /// No rate limit; a windowed Gradient2 limiter with a queue of 128, controlled delay (5 ms
    /// while the queue stands, 150 ms after it emptied) and LIFO order; a 30 s timeout. See the
    /// [module docs](super) for why.
    pub fn new() -> Self {
        ServerStack {
            rate: None,
            concurrency: Some(
                AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
                    .queue(QUEUE)
                    .codel(CODEL)
                    .order(Order::Lifo)
                    .build()
                    .expect("the default configuration is valid"),
            ),
            timeout: Some(TimeoutLayer::new(Duration::from_secs(30))),
        }
    }
}

impl Default for ServerStack {
    fn default() -> Self {
        ServerStack::new()
    }
}

impl<A> ServerStack<A> {
    /// Limits the rate of requests to `quota`, turning the rest away.
    ///
    /// # Panics
    ///
    /// If the quota lets nothing through. For a quota that comes from configuration, build the
    /// layer with [`RateLimitLayer::builder`], which returns the mistake as an error, and pass it
    /// to [`rate_limit_layer`](Self::rate_limit_layer).
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        self.rate = Some(RateLimitLayer::new(quota));
        self
    }

    /// Uses `layer` as the rate limit (to wait for slots, watch it through its handle, or read
    /// another clock).
    pub fn rate_limit_layer(mut self, layer: RateLimitLayer) -> Self {
        self.rate = Some(layer);
        self
    }

    /// Leaves the rate limit out (the default).
    pub fn without_rate_limit(mut self) -> Self {
        self.rate = None;
        self
    }

    /// Replaces the adaptive concurrency limiter (keep its handle to watch the limit). Its queue
    /// is the one its builder was given: none unless set (see the [module docs](super) for the
    /// default's).
    pub fn concurrency<A2>(self, layer: AdaptiveLimitLayer<A2>) -> ServerStack<A2> {
        ServerStack {
            rate: self.rate,
            concurrency: Some(layer),
            timeout: self.timeout,
        }
    }

    /// Leaves the concurrency limit out.
    pub fn without_concurrency_limit(mut self) -> Self {
        self.concurrency = None;
        self
    }

    /// A request's limit (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(TimeoutLayer::new(timeout));
        self
    }

    /// Leaves the timeout out.
    pub fn without_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }
}

impl<A> Clone for ServerStack<A> {
    fn clone(&self) -> Self {
        ServerStack {
            rate: self.rate.clone(),
            concurrency: self.concurrency.clone(),
            timeout: self.timeout.clone(),
        }
    }
}

impl<A> fmt::Debug for ServerStack<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStack")
            .field("rate_limit", &self.rate.is_some())
            .field("concurrency_limit", &self.concurrency.is_some())
            .field("timeout", &self.timeout.is_some())
            .finish()
    }
}

/// The layers of a [`ServerStack`], innermost first.
type ServerLayers<A> =
    Stack<Part<TimeoutLayer>, Stack<Part<AdaptiveLimitLayer<A>>, Part<RateLimitLayer>>>;

impl<S, A> Layer<S> for ServerStack<A>
where
    ServerLayers<A>: Layer<S>,
{
    type Service = <ServerLayers<A> as Layer<S>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        Stack::new(
            part(&self.timeout),
            Stack::new(part(&self.concurrency), part(&self.rate)),
        )
        .layer(inner)
    }
}
