use super::future::ResponseFuture;
use super::{HedgeLayer, Mark};
use crate::core::{Classify, Observer};
use crate::retry::policy::Policy;
use std::fmt;
use std::task::{Context, Poll};
use tower::Service;

/// Sends hedges of slow calls of the inner service; see the [module docs](super).
///
/// The error type is the inner service's: the call returns the first success, a final answer, or,
/// when every attempt failed, the first attempt's result.
pub struct Hedge<S, C, P, M, O> {
    pub(super) inner: S,
    pub(super) layer: HedgeLayer<C, P, M, O>,
}

impl<S, C, P, M, O> Hedge<S, C, P, M, O> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the hedge, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone, P: Clone, M: Clone, O> Clone for Hedge<S, C, P, M, O> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, P: fmt::Debug, M, O> fmt::Debug for Hedge<S, C, P, M, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, C, P, M, O, Req> Service<Req> for Hedge<S, C, P, M, O>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    P: Policy<Req, S::Response, S::Error> + Clone,
    M: Mark<Req> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, P, M, O>;

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
