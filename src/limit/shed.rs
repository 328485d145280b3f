use crate::core::observe::LayerSource;
use crate::core::{EventKind, Observer, RejectReason, Source};
use std::borrow::Cow;
use std::fmt;
use std::task::{Context, Poll};
use tower::{BoxError, Layer, Service};

use super::error::Overloaded;

/// Sheds load: a call that finds the service beneath not ready fails at once with
/// [`Overloaded`], and is not queued. As tower's `LoadShed`, with seawall's events.
///
/// Put it above a layer that makes callers wait when full (a [bulkhead](crate::bulkhead) with a
/// queue, tower's `ConcurrencyLimit` or `Buffer`): the waiting turns into fast failures, which a
/// client can retry elsewhere, instead of latency that grows with the queue.
///
/// ```
/// use seawall::bulkhead::BulkheadLayer;
/// use seawall::limit::{error::Overloaded, LoadShedLayer};
/// use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut service = ServiceBuilder::new()
///     .layer(LoadShedLayer::new())
///     .layer(BulkheadLayer::builder().max_concurrent(1).queue(10).build().unwrap())
///     .service(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
/// let mut other = service.clone();
/// let _running = service.ready().await.unwrap().call(()); // the one slot
/// let err = other.ready().await.unwrap().call(()).await.unwrap_err();
/// assert!(err.is::<Overloaded>());
/// # }
/// ```
///
/// Its events (a `Rejected` with reason `Overloaded` for each shed call) go to the observer set
/// with [`observer`](Self::observer), under the name set with [`name`](Self::name), in either
/// order.
pub struct LoadShedLayer<O = ()> {
    source: LayerSource<O>,
}

impl LoadShedLayer {
    /// A load shedder named `"load_shed"`, without an observer.
    pub fn new() -> Self {
        LoadShedLayer {
            source: Source::shared("load_shed", ()),
        }
    }
}

impl Default for LoadShedLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<O> LoadShedLayer<O> {
    /// The layer's name, in events (default `"load_shed"`).
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self {
        LoadShedLayer {
            source: self.source.renamed(name),
        }
    }

    /// Sends the layer's events (a `Rejected` with reason `Overloaded` for each shed call) to
    /// `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> LoadShedLayer<O2> {
        LoadShedLayer {
            source: self.source.observed(observer),
        }
    }

    /// Names the layer and sends its events to `observer`.
    #[deprecated(note = "use `.name(name).observer(observer)`")]
    pub fn with_observer<O2: Observer>(
        self,
        name: impl Into<Cow<'static, str>>,
        observer: O2,
    ) -> LoadShedLayer<O2> {
        self.name(name).observer(observer)
    }
}

impl<O> Clone for LoadShedLayer<O> {
    fn clone(&self) -> Self {
        LoadShedLayer {
            source: self.source.clone(),
        }
    }
}

impl<O> fmt::Debug for LoadShedLayer<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("name", &self.source.name())
            .finish()
    }
}

impl<S, O> Layer<S> for LoadShedLayer<O> {
    type Service = LoadShed<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            source: self.source.clone(),
            ready: false,
        }
    }
}

/// The service of [`LoadShedLayer`].
pub struct LoadShed<S, O = ()> {
    inner: S,
    source: LayerSource<O>,
    // Whether the inner service said it was ready: its reservation, which clones do not share.
    ready: bool,
}

impl<S, O> LoadShed<S, O> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the load shedder, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, O> Clone for LoadShed<S, O> {
    /// A clone shares the layer, never the original's readiness.
    fn clone(&self) -> Self {
        LoadShed {
            inner: self.inner.clone(),
            source: self.source.clone(),
            ready: false,
        }
    }
}

impl<S: fmt::Debug, O> fmt::Debug for LoadShed<S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("name", &self.source.name())
            .field("inner", &self.inner)
            .field("ready", &self.ready)
            .finish()
    }
}

impl<S, O, Req> Service<Req> for LoadShed<S, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    /// Always ready: the inner service's readiness decides whether the call is made or shed.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.ready {
            match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.ready = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if std::mem::take(&mut self.ready) {
            return ResponseFuture::called(self.inner.call(req));
        }
        self.source.emitter().emit(EventKind::Rejected {
            reason: RejectReason::Overloaded,
        });
        ResponseFuture::failed(Overloaded)
    }
}

/// The response future of [`LoadShed`]: the inner call, or the failure of a shed one.
pub type ResponseFuture<F> = crate::core::FailFast<F>;
