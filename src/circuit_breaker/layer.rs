use super::state::Breaker;
use super::{Builder, CircuitBreaker, Handle};
use crate::core::gate::{Anchor, Guard, Shared};
use crate::core::{ErrorIsFailure, Observer};
use std::fmt;
use tower::Layer;

/// Wraps services in a [`CircuitBreaker`]. Every service the layer makes, and every clone of those,
/// shares one breaker, so under axum (which clones services per connection and per request) there is
/// one breaker, not one per connection.
///
/// ```
/// use seawall::circuit_breaker::CircuitBreakerLayer;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let breaker = CircuitBreakerLayer::new();
/// let service = ServiceBuilder::new()
///     .layer(breaker.clone())
///     .service(service_fn(|name: &'static str| async move {
///         Ok::<_, std::io::Error>(format!("hello, {name}"))
///     }));
/// assert_eq!(service.oneshot("world").await?, "hello, world");
/// assert_eq!(breaker.handle().metrics().calls, 1);
/// # Ok(())
/// # }
/// ```
pub struct CircuitBreakerLayer<C = ErrorIsFailure, O: 'static = ()> {
    shared: Anchor<Shared<Breaker, O>>,
    classify: C,
}

impl CircuitBreakerLayer {
    /// A breaker with the default settings (see [`Builder`]).
    pub fn new() -> Self {
        Builder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a [`Builder`] from the default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<O: Observer> CircuitBreakerLayer<ErrorIsFailure, O> {
    /// A layer over the breaker behind `handle`, so that several stacks (say, the reads and the writes
    /// to one backend) share one breaker. Set its classifier with [`classify`](Self::classify).
    pub fn from_handle(handle: &Handle<O>) -> Self {
        CircuitBreakerLayer {
            shared: handle.shared.clone(),
            classify: ErrorIsFailure,
        }
    }
}

impl<C, O: Observer> CircuitBreakerLayer<C, O> {
    pub(crate) fn from_parts(shared: Anchor<Shared<Breaker, O>>, classify: C) -> Self {
        CircuitBreakerLayer { shared, classify }
    }

    /// A handle on this layer's breaker.
    pub fn handle(&self) -> Handle<O> {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The same breaker, with another classifier.
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<C2, O> {
        CircuitBreakerLayer {
            shared: self.shared,
            classify,
        }
    }
}

impl<C: Clone, O> Clone for CircuitBreakerLayer<C, O> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C: fmt::Debug, O> fmt::Debug for CircuitBreakerLayer<C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.name())
            .field("breaker", &self.shared.gate)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, C: Clone, O: Observer> Layer<S> for CircuitBreakerLayer<C, O> {
    type Service = CircuitBreaker<S, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), self.classify.clone())
    }
}

impl<S, O: Observer> CircuitBreaker<S, ErrorIsFailure, O> {
    /// Wraps `inner` in the breaker behind `handle`, with the default classifier.
    pub fn new(inner: S, handle: &Handle<O>) -> Self {
        CircuitBreakerLayer::from_handle(handle).layer(inner)
    }

    /// A layer over the breaker behind `handle`; the same as
    /// [`CircuitBreakerLayer::from_handle`].
    pub fn layer(handle: &Handle<O>) -> CircuitBreakerLayer<ErrorIsFailure, O> {
        CircuitBreakerLayer::from_handle(handle)
    }
}
