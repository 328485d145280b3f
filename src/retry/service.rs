use super::future::ResponseFuture;
use super::policy::Policy;
use super::RetryLayer;
use crate::core::{Classify, Observer};
use std::fmt;
use std::task::{Context, Poll};
use tower::Service;

/// Retries failed calls of the inner service; see the [module docs](super).
///
/// The error type is the inner service's: when retries end, the last attempt's result, response or
/// error, is returned as it was.
pub struct Retry<S, C, P, O> {
    pub(super) inner: S,
    pub(super) layer: RetryLayer<C, P, O>,
}

impl<S, C, P, O> Retry<S, C, P, O> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the retry, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone, P: Clone, O> Clone for Retry<S, C, P, O> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, P: fmt::Debug, O> fmt::Debug for Retry<S, C, P, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, C, P, O, Req> Service<Req> for Retry<S, C, P, O>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    P: Policy<Req, S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, P, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // The future takes the service that was made ready, and leaves a clone in its place.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(service, req, &self.layer)
    }
}
