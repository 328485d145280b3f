use super::policy::{FromExtension, PerRequest, Propagate};
use super::Timeout;
use crate::core::observe::LayerSource;
use crate::core::{Observer, Source};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;
use tower::Layer;

/// Applies a [`Timeout`] to the services it wraps; see the [module docs](super).
///
/// Every service the layer makes, and every clone of those, shares the layer's name and observer,
/// set with [`name`](Self::name) and [`observer`](Self::observer) in either order:
///
/// ```
/// use seawall::core::TracingObserver;
/// use seawall::timeout::TimeoutLayer;
/// use std::time::Duration;
///
/// let layer = TimeoutLayer::new(Duration::from_secs(2))
///     .name("search")
///     .observer(TracingObserver);
/// # drop(layer);
/// ```
pub struct TimeoutLayer<P = Duration, O = ()> {
    policy: P,
    source: LayerSource<O>,
}

impl TimeoutLayer {
    /// Every call may take at most `timeout`.
    ///
    /// ```
    /// use seawall::timeout::TimeoutLayer;
    /// use std::time::Duration;
    ///
    /// let layer = TimeoutLayer::new(Duration::from_secs(2));
    /// # drop(layer);
    /// ```
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer::with_policy(timeout)
    }

    /// Each call may take at most what `timeout` says for its request; `None` sets no timeout.
    ///
    /// ```
    /// use seawall::timeout::TimeoutLayer;
    /// use std::time::Duration;
    ///
    /// // Reports get a minute, everything else a second.
    /// let layer = TimeoutLayer::per_request(|req: &http::Request<()>| {
    ///     Some(if req.uri().path().starts_with("/reports") {
    ///         Duration::from_secs(60)
    ///     } else {
    ///         Duration::from_secs(1)
    ///     })
    /// });
    /// # drop(layer);
    /// ```
    pub fn per_request<F>(timeout: F) -> TimeoutLayer<PerRequest<F>> {
        TimeoutLayer::with_policy(PerRequest(timeout))
    }

    /// Each call may take at most the [`RequestTimeout`](crate::core::RequestTimeout) its request
    /// carries (see [`DeadlineCarrier`](crate::core::DeadlineCarrier)), or `default` when it carries
    /// none; `None` sets no timeout then.
    pub fn from_extension(default: Option<Duration>) -> TimeoutLayer<FromExtension> {
        TimeoutLayer::with_policy(FromExtension { default })
    }
}

impl<P> TimeoutLayer<P> {
    fn with_policy(policy: P) -> Self {
        TimeoutLayer {
            policy,
            source: Source::shared("timeout", ()),
        }
    }
}

impl<P, O> TimeoutLayer<P, O> {
    /// Also honours the [`Deadline`](crate::core::Deadline) a request carries, and gives the layers
    /// beneath a tighter one when this layer's timeout ends first.
    ///
    /// The request must implement [`DeadlineCarrier`](crate::core::DeadlineCarrier), as
    /// `http::Request` does. A request whose deadline has already passed fails at once with
    /// [`Elapsed`](super::error::Elapsed) (cause
    /// [`Expired`](crate::core::TimeoutCause::Expired)) without calling the inner service.
    pub fn propagate(self) -> TimeoutLayer<Propagate<P>, O> {
        TimeoutLayer {
            policy: Propagate(self.policy),
            source: self.source,
        }
    }

    /// The layer's name, in events (default `"timeout"`).
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self {
        TimeoutLayer {
            source: self.source.renamed(name),
            policy: self.policy,
        }
    }

    /// Sends the layer's events (calls timed out, calls cancelled by their caller) to `observer`
    /// (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> TimeoutLayer<P, O2> {
        TimeoutLayer {
            source: self.source.observed(observer),
            policy: self.policy,
        }
    }

    /// Names the layer and sends its events to `observer`.
    #[deprecated(note = "use `.name(name).observer(observer)`")]
    pub fn with_observer<O2: Observer>(
        self,
        name: impl Into<Cow<'static, str>>,
        observer: O2,
    ) -> TimeoutLayer<P, O2> {
        self.name(name).observer(observer)
    }
}

impl<P: Clone, O> Clone for TimeoutLayer<P, O> {
    fn clone(&self) -> Self {
        TimeoutLayer {
            policy: self.policy.clone(),
            source: self.source.clone(),
        }
    }
}

impl<P: fmt::Debug, O> fmt::Debug for TimeoutLayer<P, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("name", &self.source.name())
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P: Clone, O> Layer<S> for TimeoutLayer<P, O> {
    type Service = Timeout<S, P, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::from_parts(inner, self.policy.clone(), self.source.clone())
    }
}
