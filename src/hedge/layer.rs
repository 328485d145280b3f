use super::config::Builder;
use super::Hedge;
use crate::core::anchor::Anchor;
use crate::core::histogram::LatencyWindow;
use crate::core::{ErrorIsFailure, Source};
use crate::retry::budget::Budget;
use crate::retry::policy::Cloned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower::Layer;

/// When a hedge is sent.
#[derive(Clone, Copy, Debug)]
pub(super) enum Delay {
    Fixed(Duration),
    /// The percentile kept by the layer's latency window.
    Percentile,
}

/// What every future of one layer needs to decide on hedges, copied into each.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_attempts: u32,
    pub(super) max_hint: Duration,
    pub(super) delay: Delay,
}

/// The state every service of a layer shares: the latency window of a percentile delay, and the
/// budget (a handle on it), so that a call needs one reference for both.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) window: Option<LatencyWindow>,
    pub(super) budget: Option<Budget>,
}

/// Wraps services in [`Hedge`]; see the [module docs](super). Every service the layer makes, and
/// every clone of those, shares its budget and its latency window.
pub struct HedgeLayer<C = ErrorIsFailure, P = Cloned, M = (), O = ()> {
    pub(super) limits: Limits,
    pub(super) budget: Option<Budget>,
    pub(super) shared: Anchor<Shared>,
    pub(super) classify: C,
    pub(super) policy: P,
    pub(super) mark: M,
    pub(super) source: Arc<Source<O>>,
}

impl HedgeLayer {
    /// Hedges with the default settings (see [`Builder`]): one hedge at the 95th percentile of
    /// recent latencies, within a budget of 5 % of requests.
    pub fn new() -> Self {
        Builder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a [`Builder`] from the default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts a [`Builder`] with the settings for HTTP clients: hedges only the requests
    /// [`HttpPolicy`](crate::retry::http::HttpPolicy) would retry (idempotent, with a body that
    /// can be replayed), classifies with
    /// [`HttpClassifier::retryable`](crate::http::HttpClassifier::retryable) (a 5xx, 408 or 429
    /// sends the next hedge at once, `Retry-After` holds hedges back), honours the request's
    /// deadline, and puts each hedge's [`Attempt`](super::Attempt) in its extensions.
    ///
    /// ```
    /// use seawall::hedge::HedgeLayer;
    ///
    /// let layer = HedgeLayer::http().name("catalog").build().unwrap();
    /// # drop(layer);
    /// ```
    #[cfg(feature = "http")]
    pub fn http(
    ) -> Builder<crate::http::HttpClassifier, crate::retry::http::HttpPolicy, super::MarkAttempt>
    {
        Builder::default()
            .classify(crate::http::HttpClassifier::retryable())
            .policy(crate::retry::http::HttpPolicy::default())
            .mark(super::MarkAttempt)
    }

    /// Starts a [`Builder`] with the settings for gRPC clients: the classifier and policy of
    /// [`RetryLayer::grpc`](crate::retry::RetryLayer::grpc) (`grpc-retry-pushback-ms` holds
    /// hedges back, or, when it says not to retry, stops them while the attempts in flight may
    /// still answer, as does RESOURCE_EXHAUSTED without it), the request's deadline, and each
    /// hedge's [`Attempt`](super::Attempt) in its extensions.
    #[cfg(feature = "http")]
    pub fn grpc(
    ) -> Builder<crate::grpc::GrpcClassifier, crate::retry::grpc::GrpcPolicy, super::MarkAttempt>
    {
        Builder::default()
            .classify(crate::grpc::GrpcClassifier::retryable())
            .policy(crate::retry::grpc::GrpcPolicy)
            .mark(super::MarkAttempt)
    }
}

impl Default for HedgeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, P, M, O> HedgeLayer<C, P, M, O> {
    /// The layer's budget, if it has one.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// The delay a call started now would be hedged after: the fixed delay, or the percentile
    /// of recent latencies (`None` while the window holds too few of them).
    pub fn delay(&self) -> Option<Duration> {
        match self.limits.delay {
            Delay::Fixed(delay) => Some(delay),
            Delay::Percentile => self
                .shared
                .window
                .as_ref()
                .and_then(|w| w.percentile(tokio::time::Instant::now())),
        }
    }
}

impl<C: Clone, P: Clone, M: Clone, O> Clone for HedgeLayer<C, P, M, O> {
    fn clone(&self) -> Self {
        HedgeLayer {
            limits: self.limits,
            budget: self.budget.clone(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            policy: self.policy.clone(),
            mark: self.mark.clone(),
            source: self.source.clone(),
        }
    }
}

impl<C: fmt::Debug, P: fmt::Debug, M, O> fmt::Debug for HedgeLayer<C, P, M, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("name", &self.source.name())
            .field("limits", &self.limits)
            .field("budget", &self.budget)
            .field("classify", &self.classify)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, P: Clone, M: Clone, O> Layer<S> for HedgeLayer<C, P, M, O> {
    type Service = Hedge<S, C, P, M, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            layer: self.clone(),
        }
    }
}
