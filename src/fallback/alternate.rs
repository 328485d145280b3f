//! Falling back to another service: [`AlternateLayer`].

use super::{classified, select, ConfigError, Options, Select};
use crate::core::{
    Classify, ErrorIsFailure, EventKind, FallbackTrigger, Observer, Outcome, RejectReason, Source,
};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// Sends a call that failed to an alternate service (a secondary backend, a replica in another
/// region, a simpler code path), and answers with what it answers.
///
/// The alternate gets a request made from the original before the call
/// ([`request_with`](AlternateBuilder::request_with); a clone by default), is polled for
/// readiness before it is called, and runs at most
/// [`max_concurrent`](AlternateBuilder::max_concurrent) fallbacks at once: past that, the
/// original failure is returned, with a `Rejected { reason: FallbackFull }` event, so that a storm
/// of failures cannot pile work onto the alternate without bound.
///
/// When the alternate fails too (its readiness, its call, or a response of its that the layer's
/// [classifier](AlternateBuilder::classify) calls a failure, such as an HTTP 503), the primary's
/// failure is what the caller gets: an error comes back as an [`AlternateFailed`], whose
/// `source()` is the primary's error, so that [`seawall::error::find`](crate::error::find) and the HTTP and gRPC mappings answer
/// for the primary's failure (a timeout stays a 504, not the alternate breaker's 503), and whose
/// [`alternate`](AlternateFailed::alternate) is the alternate's error (a [`FailedResponse`] for a
/// failed response of the alternate's, which is dropped). A response the classifier
/// called a failure is answered as it is, as it would have been without the layer (it is kept
/// while the alternate runs), and the alternate's error is dropped.
///
/// ```
/// use seawall::fallback::AlternateLayer;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let replica = service_fn(|q: String| async move { Ok::<_, std::io::Error>(format!("{q} from the replica")) });
/// let layer = AlternateLayer::builder(replica).max_concurrent(16).build().unwrap();
/// let primary = service_fn(|_: String| async { Err::<String, _>(std::io::Error::other("down")) });
/// let answer = layer.layer(primary).oneshot("user 7".to_string()).await.unwrap();
/// assert_eq!(answer, "user 7 from the replica");
/// # }
/// ```
pub struct AlternateLayer<A, M = CloneRequest, C = ErrorIsFailure, O = ()> {
    shared: Arc<Shared<A, O>>,
    memo: M,
    select: Select,
    classify: C,
}

struct Shared<A, O> {
    alternate: A,
    max: usize,
    running: AtomicUsize,
    source: Source<O>,
}

/// The error of a call that failed, and whose alternate failed too: the primary's error, with the
/// alternate's beside it.
///
/// Its [`source`](Error::source) is the primary's error, so that
/// [`seawall::error::find`](crate::error::find), [`error::kind`](crate::error::kind), the axum and
/// tonic mappings and any error reporter walk the primary's chain and answer for the primary's
/// failure. The alternate's error is [`alternate`](Self::alternate): look there for what went wrong
/// with the fallback (`seawall::error::find(failed.alternate())`).
///
/// ```
/// use seawall::error::{kind, ErrorKind};
/// use seawall::fallback::{AlternateFailed, AlternateLayer};
/// use seawall::timeout::TimeoutLayer;
/// use std::time::Duration;
/// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let replica = service_fn(|_: u32| async { Err::<u32, BoxError>("replica down".into()) });
/// let service = ServiceBuilder::new()
///     .layer(AlternateLayer::builder(replica).build().unwrap())
///     .layer(TimeoutLayer::new(Duration::from_millis(100)))
///     .service(service_fn(|n: u32| async move {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, BoxError>(n)
///     }));
/// let err = service.oneshot(7).await.unwrap_err();
/// // Answered as the primary's timeout (a 504), not as the replica's failure.
/// assert_eq!(kind(&*err), Some(ErrorKind::TimedOut));
/// let both = err.downcast_ref::<AlternateFailed>().unwrap();
/// assert_eq!(both.alternate().to_string(), "replica down");
/// # }
/// ```
#[derive(Debug)]
pub struct AlternateFailed {
    primary: BoxError,
    alternate: BoxError,
}

impl AlternateFailed {
    /// The primary's error: the failure that made the layer fall back.
    pub fn primary(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.primary
    }

    /// The alternate's error: its readiness's or its call's, or a [`FailedResponse`].
    pub fn alternate(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.alternate
    }

    /// The primary's error and the alternate's, in that order.
    pub fn into_parts(self) -> (BoxError, BoxError) {
        (self.primary, self.alternate)
    }
}

impl fmt::Display for AlternateFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The primary's message is the source's, not repeated here.
        write!(f, "the alternate failed too ({})", self.alternate)
    }
}

impl Error for AlternateFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.primary)
    }
}

/// What an [`AlternateFailed`] holds as the alternate's error when the alternate answered a
/// response that the layer's classifier called a failure (an HTTP 503, say): the response is
/// dropped, and the primary's failure is answered instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedResponse;

impl fmt::Display for FailedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the alternate answered a response classified as a failure")
    }
}

impl Error for FailedResponse {}

/// What a call whose alternate failed answers: the primary's error, with the alternate's beside
/// it, or the primary's response that the classifier called a failure, as it is.
#[cold]
fn primary_failure<Res>(
    primary: Result<Res, BoxError>,
    alternate: BoxError,
) -> Result<Res, BoxError> {
    primary.map_err(|primary| BoxError::from(AlternateFailed { primary, alternate }))
}

/// Makes the alternate's request by cloning the original.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneRequest;

/// Makes an alternate's request from the original one.
pub trait MakeRequest<Req> {
    /// The alternate's request.
    type Request;

    /// Makes it, before the original call.
    fn make(&self, req: &Req) -> Self::Request;
}

impl<Req: Clone> MakeRequest<Req> for CloneRequest {
    type Request = Req;

    fn make(&self, req: &Req) -> Req {
        req.clone()
    }
}

impl<F, Req, R> MakeRequest<Req> for F
where
    F: Fn(&Req) -> R,
{
    type Request = R;

    fn make(&self, req: &Req) -> R {
        self(req)
    }
}

/// Builds an [`AlternateLayer`].
pub struct AlternateBuilder<A, M = CloneRequest, C = ErrorIsFailure, O = ()> {
    alternate: A,
    memo: M,
    max: usize,
    options: Options<C, O>,
}

impl<A> AlternateLayer<A> {
    /// Starts a builder for fallbacks to `alternate`: every failure, at most 64 at once, with a
    /// clone of the request.
    pub fn builder(alternate: A) -> AlternateBuilder<A> {
        AlternateBuilder {
            alternate,
            memo: CloneRequest,
            max: 64,
            options: Options::new("alternate"),
        }
    }
}

impl<A, M, C, O> AlternateBuilder<A, M, C, O> {
    /// At most `max` fallbacks run at once (default 64; at least 1, or
    /// [`build`](Self::build) fails with [`ConfigError::MaxConcurrent`]).
    pub fn max_concurrent(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Makes the alternate's request with `make` (from a reference to the original, before the
    /// original call), for requests that cannot be cloned or that the alternate wants otherwise.
    pub fn request_with<M2>(self, make: M2) -> AlternateBuilder<A, M2, C, O> {
        AlternateBuilder {
            alternate: self.alternate,
            memo: make,
            max: self.max,
            options: self.options,
        }
    }

    /// Falls back only on the failures `select` chooses (default: every failure).
    pub fn when(mut self, select: Select) -> Self {
        self.options.select = select;
        self
    }

    /// Decides with `classify` which responses are failures: the primary's, for
    /// [`Select::or_failed_responses`], and the alternate's, which are never answered when they
    /// are failures (the primary's failure is).
    pub fn classify<C2>(self, classify: C2) -> AlternateBuilder<A, M, C2, O> {
        AlternateBuilder {
            alternate: self.alternate,
            memo: self.memo,
            max: self.max,
            options: self.options.classify(classify),
        }
    }

    /// The layer's name, in events (default `"alternate"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.options.name = name.into();
        self
    }

    /// Sends the layer's events (`FallbackUsed` for each answer of the alternate,
    /// `Rejected { reason: FallbackFull }` for each fallback not made) to `observer` (default:
    /// none).
    pub fn observer<O2: Observer>(self, observer: O2) -> AlternateBuilder<A, M, C, O2> {
        AlternateBuilder {
            alternate: self.alternate,
            memo: self.memo,
            max: self.max,
            options: self.options.observer(observer),
        }
    }

    /// Checks the settings and builds the layer; every service it makes shares the alternate and
    /// its bound.
    pub fn build(self) -> Result<AlternateLayer<A, M, C, O>, ConfigError> {
        if self.max == 0 {
            return Err(ConfigError::MaxConcurrent);
        }
        let options = self.options;
        Ok(AlternateLayer {
            shared: Arc::new(Shared {
                alternate: self.alternate,
                max: self.max,
                running: AtomicUsize::new(0),
                source: Source::new(options.name, options.observer),
            }),
            memo: self.memo,
            select: options.select,
            classify: options.classify,
        })
    }
}

impl<A, M: fmt::Debug, C: fmt::Debug, O> fmt::Debug for AlternateBuilder<A, M, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlternateBuilder")
            .field("max_concurrent", &self.max)
            .field("options", &self.options)
            .finish()
    }
}

impl<A, M, C, O> AlternateLayer<A, M, C, O> {
    /// How many fallbacks are running.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }
}

impl<A, M: Clone, C: Clone, O> Clone for AlternateLayer<A, M, C, O> {
    fn clone(&self) -> Self {
        AlternateLayer {
            shared: self.shared.clone(),
            memo: self.memo.clone(),
            select: self.select,
            classify: self.classify.clone(),
        }
    }
}

impl<A, M, C, O> fmt::Debug for AlternateLayer<A, M, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlternateLayer")
            .field("name", &self.shared.source.name())
            .field("max_concurrent", &self.shared.max)
            .field("running", &self.running())
            .field("select", &self.select)
            .finish()
    }
}

impl<S, A, M: Clone, C: Clone, O> Layer<S> for AlternateLayer<A, M, C, O> {
    type Service = Alternate<S, A, M, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Alternate {
            inner,
            shared: self.shared.clone(),
            memo: self.memo.clone(),
            select: self.select,
            classify: self.classify.clone(),
        }
    }
}

/// The service of [`AlternateLayer`].
pub struct Alternate<S, A, M = CloneRequest, C = ErrorIsFailure, O = ()> {
    inner: S,
    shared: Arc<Shared<A, O>>,
    memo: M,
    select: Select,
    classify: C,
}

impl<S: Clone, A, M: Clone, C: Clone, O> Clone for Alternate<S, A, M, C, O> {
    fn clone(&self) -> Self {
        Alternate {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            memo: self.memo.clone(),
            select: self.select,
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, A, M, C, O> fmt::Debug for Alternate<S, A, M, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alternate")
            .field("name", &self.shared.source.name())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, A, M, C, O, Req> Service<Req> for Alternate<S, A, M, C, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: MakeRequest<Req>,
    A: Service<M::Request, Response = S::Response> + Clone,
    A::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AlternateFuture<S::Future, A, M::Request, C, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let alternate_request = self.memo.make(&req);
        let start =
            (O::ENABLED && self.shared.source.observer().wants_latency()).then(Instant::now);
        AlternateFuture {
            state: State::Primary {
                future: self.inner.call(req),
                request: Some(alternate_request),
            },
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            select: self.select,
            start,
        }
    }
}

/// A running fallback's place in the bound, given back when dropped.
struct Running<A, O>(Arc<Shared<A, O>>);

impl<A, O> Drop for Running<A, O> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Release);
    }
}

pin_project! {
    /// The response future of [`Alternate`].
    pub struct AlternateFuture<F, A, R, C, O>
    where
        A: Service<R>,
    {
        #[pin]
        state: State<F, A, R, O>,
        shared: Arc<Shared<A, O>>,
        // Classifies the primary's answer, and the alternate's.
        classify: C,
        select: Select,
        start: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, A, R, O>
    where
        A: Service<R>,
    {
        Primary {
            #[pin]
            future: F,
            request: Option<R>,
        },
        Readying {
            alternate: A,
            request: Option<R>,
            trigger: FallbackTrigger,
            running: Option<Running<A, O>>,
            // What the primary answered, for the caller if the alternate fails too.
            primary: Option<Result<A::Response, BoxError>>,
        },
        Calling {
            #[pin]
            future: A::Future,
            trigger: FallbackTrigger,
            running: Running<A, O>,
            primary: Option<Result<A::Response, BoxError>>,
        },
    }
}

impl<F, A: Service<R>, R, C, O> fmt::Debug for AlternateFuture<F, A, R, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Primary { .. } => "primary",
            State::Readying { .. } => "readying",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("AlternateFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, A, R, C, O, Res, E> Future for AlternateFuture<F, A, R, C, O>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    A: Service<R, Response = Res> + Clone,
    A::Error: Into<BoxError>,
    C: Classify<Res, E>,
    O: Observer,
{
    type Output = Result<Res, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Primary { future, request } => {
                    let result = ready!(future.poll(cx));
                    let (result, failed) = classified(result, *this.select, &*this.classify);
                    let Some(trigger) = select(*this.select, failed, &result).map(|t| t.kind())
                    else {
                        return Poll::Ready(result);
                    };
                    let shared = &**this.shared;
                    let taken = shared.running.fetch_add(1, Ordering::Acquire);
                    let running = Running(this.shared.clone());
                    if taken >= shared.max {
                        drop(running);
                        shared.source.emitter().emit(EventKind::Rejected {
                            reason: RejectReason::FallbackFull,
                        });
                        return Poll::Ready(result);
                    }
                    State::Readying {
                        alternate: shared.alternate.clone(),
                        request: request.take(),
                        trigger,
                        running: Some(running),
                        primary: Some(result),
                    }
                }
                StateProj::Readying {
                    alternate,
                    request,
                    trigger,
                    running,
                    primary,
                } => {
                    if let Err(e) = ready!(alternate.poll_ready(cx)) {
                        let primary = primary.take().expect("polled after completion");
                        return Poll::Ready(primary_failure(primary, e.into()));
                    }
                    let future = alternate.call(request.take().expect("polled after completion"));
                    State::Calling {
                        future,
                        trigger: *trigger,
                        // The place in the bound moves on with the call.
                        running: running.take().expect("polled after completion"),
                        primary: primary.take(),
                    }
                }
                StateProj::Calling {
                    future,
                    trigger,
                    primary,
                    ..
                } => {
                    let result = match ready!(future.poll(cx)) {
                        Ok(response) => Ok::<Res, E>(response),
                        Err(e) => {
                            let primary = primary.take().expect("polled after completion");
                            return Poll::Ready(primary_failure(primary, e.into()));
                        }
                    };
                    // An answer the classifier calls a failure (a 503 of the alternate's) is
                    // no better than the primary's failure, and would hide it.
                    if this.classify.classify(&result) == Outcome::Failure {
                        let primary = primary.take().expect("polled after completion");
                        return Poll::Ready(primary_failure(primary, FailedResponse.into()));
                    }
                    let Ok(result) = result else {
                        unreachable!("an error returned above")
                    };
                    let latency = this.start.map(|start| start.elapsed());
                    this.shared.source.emitter().emit(EventKind::FallbackUsed {
                        trigger: *trigger,
                        latency,
                    });
                    return Poll::Ready(Ok(result));
                }
            };
            this.state.set(next);
        }
    }
}
