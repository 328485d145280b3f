use super::budget::Budget;
use super::config::{Builder, Limits};
use super::policy::Cloned;
use super::Retry;
use crate::core::{ErrorIsFailure, Source};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tower::Layer;

/// Wraps services in [`Retry`]; see the [module docs](super). Every service the layer makes, and
/// every clone of those, shares its budget.
pub struct RetryLayer<C = ErrorIsFailure, P = Cloned, O = ()> {
    pub(super) limits: Limits,
    pub(super) budget: Option<Budget>,
    pub(super) sessions: Option<(u64, Arc<AtomicU64>)>,
    pub(super) classify: C,
    pub(super) policy: P,
    pub(super) source: Arc<Source<O>>,
}

impl RetryLayer {
    /// Retries with the default settings (see [`Builder`]).
    pub fn new() -> Self {
        Builder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a [`Builder`] from the default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts a [`Builder`] with the settings for HTTP clients: retries only idempotent requests
    /// (or ones with an `Idempotency-Key`) whose body can be replayed (see
    /// [`HttpPolicy`](super::http::HttpPolicy)), on transport errors and on 408, 429, 500, 502,
    /// 503 and 504 (see [`HttpClassifier::retryable`](crate::http::HttpClassifier::retryable)),
    /// honouring `Retry-After` and `X-RateLimit-Reset`, and the request's deadline.
    ///
    /// It is where the builder starts, so it cannot discard a setting made before it: every
    /// setter may follow it. [`classify`](Builder::classify) and [`policy`](Builder::policy) then
    /// replace the HTTP classifier or policy (and only it);
    /// [`retry_if`](Builder::retry_if) and [`report_budget`](Builder::report_budget) wrap the
    /// HTTP policy.
    ///
    /// ```
    /// use seawall::retry::RetryLayer;
    ///
    /// let layer = RetryLayer::http().name("catalog").max_retries(2).build().unwrap();
    /// # drop(layer);
    /// ```
    ///
    /// It is not a step of a builder, which could silently replace a classifier set before it:
    ///
    /// ```compile_fail,E0599
    /// use seawall::http::HttpClassifier;
    /// use seawall::retry::RetryLayer;
    ///
    /// let builder = RetryLayer::builder().classify(HttpClassifier::default()).http();
    /// ```
    #[cfg(feature = "http")]
    pub fn http() -> Builder<crate::http::HttpClassifier, super::http::HttpPolicy> {
        Builder::default()
            .classify(crate::http::HttpClassifier::retryable())
            .policy(super::http::HttpPolicy::default())
    }

    /// Starts a [`Builder`] with the settings for gRPC clients: retries transport errors and
    /// UNAVAILABLE, RESOURCE_EXHAUSTED only with a pushback, never DEADLINE_EXCEEDED (see
    /// [`GrpcPolicy`](super::grpc::GrpcPolicy)), honouring `grpc-retry-pushback-ms` and the
    /// request's deadline.
    ///
    /// As with [`http`](Self::http), it is where the builder starts: every setter may follow it,
    /// and [`classify`](Builder::classify) or [`policy`](Builder::policy) then replace the gRPC
    /// classifier or policy.
    ///
    /// ```
    /// use seawall::retry::RetryLayer;
    ///
    /// let layer = RetryLayer::grpc().name("inventory").build().unwrap();
    /// # drop(layer);
    /// ```
    #[cfg(feature = "http")]
    pub fn grpc() -> Builder<crate::grpc::GrpcClassifier, super::grpc::GrpcPolicy> {
        Builder::default()
            .classify(crate::grpc::GrpcClassifier::retryable())
            .policy(super::grpc::GrpcPolicy)
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, P, O> RetryLayer<C, P, O> {
    /// The layer's budget, if it has one.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// The same layer (budget, limits, name and observer shared) with its classifier and policy
    /// wrapped: for the stacks, which make a retry given to them honour their deadline.
    #[cfg(all(feature = "circuit-breaker", feature = "timeout"))]
    pub(crate) fn wrap<C2, P2>(
        self,
        classify: impl FnOnce(C) -> C2,
        policy: impl FnOnce(P) -> P2,
    ) -> RetryLayer<C2, P2, O> {
        RetryLayer {
            limits: self.limits,
            budget: self.budget,
            sessions: self.sessions,
            classify: classify(self.classify),
            policy: policy(self.policy),
            source: self.source,
        }
    }
}

impl<C: Clone, P: Clone, O> Clone for RetryLayer<C, P, O> {
    fn clone(&self) -> Self {
        RetryLayer {
            limits: self.limits,
            budget: self.budget.clone(),
            sessions: self.sessions.clone(),
            classify: self.classify.clone(),
            policy: self.policy.clone(),
            source: self.source.clone(),
        }
    }
}

impl<C: fmt::Debug, P: fmt::Debug, O> fmt::Debug for RetryLayer<C, P, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.source.name())
            .field("limits", &self.limits)
            .field("budget", &self.budget)
            .field("classify", &self.classify)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, C: Clone, P: Clone, O> Layer<S> for RetryLayer<C, P, O> {
    type Service = Retry<S, C, P, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}
