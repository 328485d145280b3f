use super::deadline::DeadlineBulkhead;
use super::state::Bulkhead;
use super::{Builder, Handle};
use crate::core::gate::{Anchor, Guard, Shared};
use crate::core::{CarriedDeadline, ErrorIsFailure, NoDeadline, Observer};
use std::fmt;
use tower::Layer;

/// A service behind a bulkhead: at most a fixed number of its calls run at once.
pub type BulkheadService<S, C = ErrorIsFailure, O = ()> = Guard<S, Bulkhead, C, O>;

/// Wraps services in a bulkhead; see the [module docs](super). Every service the layer makes, and
/// every clone of those, shares one bulkhead.
///
/// Its services are [`BulkheadService`]s, which wait for a slot in `poll_ready`; built with
/// [`honour_deadlines`](Builder::honour_deadlines) (`D` is then [`CarriedDeadline`]), they are
/// [`DeadlineBulkhead`]s, which decide in `call` and never wait past a request's deadline.
///
/// ```
/// use seawall::bulkhead::BulkheadLayer;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let bulkhead = BulkheadLayer::new(10);
/// let service = ServiceBuilder::new()
///     .layer(bulkhead.clone())
///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
/// assert_eq!(service.oneshot(21).await?, 42);
/// assert_eq!(bulkhead.handle().in_flight(), 0);
/// # Ok(())
/// # }
/// ```
pub struct BulkheadLayer<C = ErrorIsFailure, O: 'static = (), D = NoDeadline> {
    shared: Anchor<Shared<Bulkhead, O>>,
    classify: C,
    /// Where it decides: in `poll_ready` ([`NoDeadline`]), or in `call`, reading the request's
    /// deadline ([`CarriedDeadline`]).
    deadline: D,
}

impl BulkheadLayer {
    /// At most `limit` calls at once; a call that finds every slot taken fails at once.
    ///
    /// # Panics
    ///
    /// If `limit` is zero or above [`MAX_CONCURRENT`](super::MAX_CONCURRENT). For a limit that
    /// comes from configuration, use the [builder](Self::builder), which returns these mistakes as
    /// a [`ConfigError`](super::ConfigError):
    ///
    /// ```
    /// use seawall::bulkhead::{BulkheadLayer, ConfigError};
    ///
    /// let limit = 0; // read from a file
    /// let built = BulkheadLayer::builder().max_concurrent(limit).build();
    /// assert_eq!(built.unwrap_err(), ConfigError::MaxConcurrent);
    /// ```
    pub fn new(limit: u64) -> Self {
        match Builder::default().max_concurrent(limit).build() {
            Ok(layer) => layer,
            Err(err) => panic!("BulkheadLayer::new: {err}"),
        }
    }

    /// Starts a [`Builder`] from the default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C, O: Observer, D> BulkheadLayer<C, O, D> {
    pub(crate) fn from_parts(
        shared: Anchor<Shared<Bulkhead, O>>,
        classify: C,
        deadline: D,
    ) -> Self {
        BulkheadLayer {
            shared,
            classify,
            deadline,
        }
    }

    /// A handle on this layer's bulkhead.
    pub fn handle(&self) -> Handle<O> {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The same bulkhead, with another classifier (which only labels the outcomes observers see).
    pub fn classify<C2>(self, classify: C2) -> BulkheadLayer<C2, O, D> {
        BulkheadLayer {
            shared: self.shared,
            classify,
            deadline: self.deadline,
        }
    }
}

impl<C: Clone, O, D: Clone> Clone for BulkheadLayer<C, O, D> {
    fn clone(&self) -> Self {
        BulkheadLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

impl<C: fmt::Debug, O, D: fmt::Debug> fmt::Debug for BulkheadLayer<C, O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("name", &self.shared.name())
            .field("bulkhead", &self.shared.gate)
            .field("classify", &self.classify)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<S, C: Clone, O: Observer> Layer<S> for BulkheadLayer<C, O> {
    type Service = BulkheadService<S, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), self.classify.clone())
    }
}

impl<S, C: Clone, O: Observer> Layer<S> for BulkheadLayer<C, O, CarriedDeadline> {
    type Service = DeadlineBulkhead<S, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineBulkhead::new(inner, self.shared.clone(), self.classify.clone())
    }
}
