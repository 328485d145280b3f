//! Graceful degradation: [`FallbackLayer`] answers in place of the service when a call fails, with
//! a value, or a response made from the failure (and what it kept of the request);
//! [`AlternateLayer`] sends the call to another service instead, a bounded number at a time;
//! [`StaleIfErrorLayer`] serves the last good response for the request's key, marked as stale.
//!
//! What makes it fall back is chosen with [`Select`]: seawall rejections by kind (an open breaker,
//! a timeout), other errors, and responses the classifier calls failures (an HTTP 503 from
//! upstream), so that "fall back on an open breaker or a timeout, but let a 404 through" is one
//! line, without downcasting. The fallback sees what triggered it, as a [`Trigger`].
//!
//! # Stale-if-error: the key decides who is served what
//!
//! <div class="warning">
//!
//! [`StaleIfErrorLayer`] serves a stored answer to **any** request with the same key, whoever
//! sends it. Key only on what makes an answer the same for everyone who may ask: a public
//! catalog page by its method, host and path and query, yes; `/me` or `/cart` by their path,
//! never (put the user in the key, or give such requests no key, and they are neither stored
//! nor served). Never key on the path alone: a token in the query string
//! (`/me?access_token=...`) would then share one user's answer with the next. The layer sees
//! credentials only in `Authorization` and `Cookie` of the request as it reaches it: a token in
//! the query, in a header of your own (`X-Api-Key`) or added by a layer beneath it is
//! invisible to it, and only the key can keep those users apart.
//!
//! </div>
//!
//! - [`StaleIfErrorLayer::http`] is for `http::Response`s: it stores only whole answers to a
//!   `GET` (`200`, `203`, `204`) and serves them only to a `GET`, never one with `Set-Cookie`,
//!   `Cache-Control: private`, `no-store`, `no-cache`, `must-revalidate` or `proxy-revalidate`
//!   (and one with `stale-if-error=N` no longer than it allows), nor the answer to a request
//!   with `Authorization` or `Cookie` (unless
//!   [`key_includes_credentials`](StaleIfErrorBuilder::key_includes_credentials) says the key
//!   includes them), nor one that `Vary`s on a header the key does not cover
//!   ([`key_covers_headers`](StaleIfErrorBuilder::key_covers_headers)): see [`HttpStore`].
//! - [`StaleIfErrorLayer::builder`] is for any other type and knows nothing of it: it stores
//!   every response the classifier calls a success and the
//!   [`may_store`](StaleIfErrorBuilder::may_store) predicate accepts, and only the key keeps
//!   users apart.
//!
//! Either way a response that is not stored (a `500`, a `404`) leaves the last good one in
//! place, and the store is bounded in entries, in bytes
//! ([`max_bytes`](StaleIfErrorBuilder::max_bytes), [`weigh`](StaleIfErrorBuilder::weigh)) and
//! in time.
//!
//! ```
//! use seawall::error::ErrorKind;
//! use seawall::fallback::{FallbackLayer, Select, Trigger};
//! use seawall::timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(
//!         FallbackLayer::from_fn(|trigger: Trigger<'_, String>| {
//!             format!("cached answer ({})", trigger.kind().as_str())
//!         })
//!         .when(Select::rejections([ErrorKind::CircuitOpen, ErrorKind::TimedOut])),
//!     )
//!     .layer(TimeoutLayer::new(Duration::from_millis(100)))
//!     .service(service_fn(|slow: bool| async move {
//!         if slow {
//!             tokio::time::sleep(Duration::from_secs(1)).await;
//!         }
//!         Ok::<_, std::io::Error>("fresh answer".to_string())
//!     }));
//! assert_eq!(service.clone().oneshot(false).await.unwrap(), "fresh answer");
//! assert_eq!(service.oneshot(true).await.unwrap(), "cached answer (timed_out)");
//! # }
//! ```

mod alternate;
#[cfg(feature = "http")]
pub(crate) mod cache_control;
mod config;
mod policy;
mod stale;

pub use alternate::{
    Alternate, AlternateBuilder, AlternateFailed, AlternateFuture, AlternateLayer, CloneRequest,
    FailedResponse, MakeRequest,
};
#[cfg(feature = "http")]
pub use cache_control::{CacheControl, MAX_DELTA_SECONDS};
pub use config::ConfigError;
#[cfg(feature = "http")]
pub use policy::{BodySize, HttpMemo, HttpStore};
pub use policy::{FromFn, Policy, Respond, StorePolicy, StoreSuccesses, Value, WithRequest};
#[cfg(feature = "http")]
pub use stale::StaleResponse;
#[cfg(all(feature = "http", feature = "cache"))]
pub(crate) use stale::{age_http, keep_http, mark_http};
pub use stale::{StaleFuture, StaleIfError, StaleIfErrorBuilder, StaleIfErrorLayer};

use crate::core::observe::LayerSource;
use crate::core::{
    Classify, ErrorIsFailure, EventKind, FallbackTrigger, Observer, Outcome, Source,
};
use crate::error::{find, Cause, ErrorKind};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// Which failures a fallback answers.
///
/// ```
/// use seawall::error::ErrorKind;
/// use seawall::fallback::Select;
///
/// // Every failure (the default).
/// let all = Select::all();
/// // Only an open breaker or a timeout: other errors and failed responses go through.
/// let some = Select::rejections([ErrorKind::CircuitOpen, ErrorKind::TimedOut]);
/// // Any seawall rejection, and responses the classifier calls failures.
/// let more = Select::any_rejection().or_failed_responses();
/// # drop((all, some, more));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Select {
    kinds: u32,
    other_errors: bool,
    failed_responses: bool,
}

/// The bit of `kind` in [`Select::kinds`].
fn bit(kind: ErrorKind) -> u32 {
    1 << kind.index()
}

impl Select {
    /// Every seawall rejection, every other error, and every response the classifier calls a
    /// failure.
    pub fn all() -> Self {
        Select {
            kinds: u32::MAX,
            other_errors: true,
            failed_responses: true,
        }
    }

    /// Every seawall rejection, and nothing else.
    pub fn any_rejection() -> Self {
        Select {
            kinds: u32::MAX,
            other_errors: false,
            failed_responses: false,
        }
    }

    /// The seawall rejections of these kinds, and nothing else.
    pub fn rejections(kinds: impl IntoIterator<Item = ErrorKind>) -> Self {
        Select {
            kinds: kinds.into_iter().fold(0, |bits, kind| bits | bit(kind)),
            other_errors: false,
            failed_responses: false,
        }
    }

    /// Also errors that are not seawall rejections.
    pub fn or_other_errors(mut self) -> Self {
        self.other_errors = true;
        self
    }

    /// Also responses the classifier calls failures.
    pub fn or_failed_responses(mut self) -> Self {
        self.failed_responses = true;
        self
    }

    /// Whether a rejection of `kind` is answered.
    pub fn answers(&self, kind: ErrorKind) -> bool {
        self.kinds & bit(kind) != 0
    }

    /// Whether responses the classifier calls failures are answered.
    #[cfg(feature = "cache")]
    pub(crate) fn answers_failed_responses(&self) -> bool {
        self.failed_responses
    }
}

impl Default for Select {
    fn default() -> Self {
        Select::all()
    }
}

/// What the builders of the fallback layers share: the triggers, the classifier, the name and the
/// observer.
pub(crate) struct Options<C, O> {
    select: Select,
    classify: C,
    name: Cow<'static, str>,
    observer: O,
}

impl Options<ErrorIsFailure, ()> {
    fn new(name: &'static str) -> Self {
        Options {
            select: Select::all(),
            classify: ErrorIsFailure,
            name: Cow::Borrowed(name),
            observer: (),
        }
    }
}

impl<C, O> Options<C, O> {
    fn classify<C2>(self, classify: C2) -> Options<C2, O> {
        Options {
            select: self.select,
            classify,
            name: self.name,
            observer: self.observer,
        }
    }

    fn observer<O2>(self, observer: O2) -> Options<C, O2> {
        Options {
            select: self.select,
            classify: self.classify,
            name: self.name,
            observer,
        }
    }
}

impl<C, O> fmt::Debug for Options<C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("name", &self.name)
            .field("select", &self.select)
            .finish()
    }
}

/// The result with its error boxed, and whether it is a response to answer as a failure.
#[inline]
fn classified<Res, E, C>(
    result: Result<Res, E>,
    select: Select,
    classify: &C,
) -> (Result<Res, BoxError>, bool)
where
    E: Into<BoxError>,
    C: Classify<Res, E>,
{
    let failed =
        select.failed_responses && result.is_ok() && classify.classify(&result) == Outcome::Failure;
    (result.map_err(Into::into), failed)
}

/// What in `result` triggers a fallback, if `select` chooses it.
#[inline]
pub(crate) fn select<Res>(
    select: Select,
    failed_response: bool,
    result: &Result<Res, BoxError>,
) -> Option<Trigger<'_, Res>> {
    match result {
        Ok(response) => failed_response.then_some(Trigger::FailedResponse(response)),
        Err(err) => match find(&**err) {
            Some(cause) => select
                .answers(cause.kind())
                .then_some(Trigger::Rejected(cause)),
            None => select.other_errors.then_some(Trigger::Error(&**err)),
        },
    }
}

/// What made a fallback answer, as its policy sees it.
#[derive(Debug)]
pub enum Trigger<'a, Res> {
    /// A seawall rejection.
    Rejected(Cause<'a>),
    /// Any other error.
    Error(&'a (dyn Error + Send + Sync + 'static)),
    /// A response the classifier called a failure.
    FailedResponse(&'a Res),
}

impl<Res> Trigger<'_, Res> {
    /// Which, for events and metrics.
    pub fn kind(&self) -> FallbackTrigger {
        match self {
            Trigger::Rejected(cause) => FallbackTrigger::Rejected(cause.kind()),
            Trigger::Error(_) => FallbackTrigger::Error,
            Trigger::FailedResponse(_) => FallbackTrigger::FailedResponse,
        }
    }
}

/// Answers in place of the service when a selected failure happens. See the
/// [module docs](self).
///
/// The layer's error type is [`BoxError`]: failures it does not answer go through boxed, as they
/// were.
pub struct FallbackLayer<P, C = ErrorIsFailure, O = ()> {
    policy: P,
    select: Select,
    classify: C,
    source: LayerSource<O>,
}

impl<T> FallbackLayer<Value<T>> {
    /// Falls back to `value`, cloned into each call: see [`Value`] for the cost.
    pub fn value(value: T) -> Self {
        FallbackLayer::new(Value(value))
    }
}

impl<F> FallbackLayer<FromFn<F>> {
    /// Falls back to what `f` makes of the [`Trigger`].
    pub fn from_fn(f: F) -> Self {
        FallbackLayer::new(FromFn(f))
    }
}

impl<M, F> FallbackLayer<WithRequest<M, F>> {
    /// Keeps what `memo` takes from each request (its path, an id: whatever the fallback
    /// needs), and falls back to what `f` makes of it and the [`Trigger`].
    pub fn with_request(memo: M, f: F) -> Self {
        FallbackLayer::new(WithRequest { memo, f })
    }
}

impl<P> FallbackLayer<P> {
    /// Falls back to what `policy` answers, on every failure.
    pub fn new(policy: P) -> Self {
        FallbackLayer {
            policy,
            select: Select::all(),
            classify: ErrorIsFailure,
            source: Source::shared("fallback", ()),
        }
    }
}

impl<P, C, O> FallbackLayer<P, C, O> {
    /// Answers only the failures `select` chooses (default: every failure).
    pub fn when(mut self, select: Select) -> Self {
        self.select = select;
        self
    }

    /// Decides with `classify` which responses are failures, for
    /// [`Select::or_failed_responses`] (default: none is; every `Err` is).
    pub fn classify<C2>(self, classify: C2) -> FallbackLayer<P, C2, O> {
        FallbackLayer {
            policy: self.policy,
            select: self.select,
            classify,
            source: self.source,
        }
    }

    /// The layer's name, in events (default `"fallback"`).
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self {
        FallbackLayer {
            source: self.source.renamed(name),
            ..self
        }
    }

    /// Sends a `FallbackUsed` event for each answer to `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> FallbackLayer<P, C, O2> {
        FallbackLayer {
            policy: self.policy,
            select: self.select,
            classify: self.classify,
            source: self.source.observed(observer),
        }
    }
}

impl<P: Clone, C: Clone, O> Clone for FallbackLayer<P, C, O> {
    fn clone(&self) -> Self {
        FallbackLayer {
            policy: self.policy.clone(),
            select: self.select,
            classify: self.classify.clone(),
            source: self.source.clone(),
        }
    }
}

impl<P, C: fmt::Debug, O> fmt::Debug for FallbackLayer<P, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.source.name())
            .field("select", &self.select)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, P: Clone, C: Clone, O> Layer<S> for FallbackLayer<P, C, O> {
    type Service = Fallback<S, P, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            policy: self.policy.clone(),
            select: self.select,
            classify: self.classify.clone(),
            source: self.source.clone(),
        }
    }
}

/// The service of [`FallbackLayer`].
pub struct Fallback<S, P, C = ErrorIsFailure, O = ()> {
    inner: S,
    policy: P,
    select: Select,
    classify: C,
    source: LayerSource<O>,
}

impl<S: Clone, P: Clone, C: Clone, O> Clone for Fallback<S, P, C, O> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            select: self.select,
            classify: self.classify.clone(),
            source: self.source.clone(),
        }
    }
}

impl<S: fmt::Debug, P, C, O> fmt::Debug for Fallback<S, P, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("name", &self.source.name())
            .field("inner", &self.inner)
            .field("select", &self.select)
            .finish()
    }
}

impl<S, P, C, O, Req> Service<Req> for Fallback<S, P, C, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response> + Respond<P::Memo, S::Response> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P, P::Memo, C, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let memo = self.policy.memo(&req);
        let listening = O::ENABLED;
        let start = (listening && self.source.observer().wants_latency()).then(Instant::now);
        ResponseFuture {
            future: self.inner.call(req),
            fallback: Some((self.policy.clone(), memo)),
            select: self.select,
            classify: self.classify.clone(),
            source: listening.then(|| self.source.clone()),
            start,
        }
    }
}

pin_project! {
    /// The response future of [`Fallback`].
    pub struct ResponseFuture<F, P, M, C, O> {
        #[pin]
        future: F,
        fallback: Option<(P, M)>,
        select: Select,
        classify: C,
        source: Option<LayerSource<O>>,
        start: Option<Instant>,
    }
}

impl<F, P, M, C, O> fmt::Debug for ResponseFuture<F, P, M, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("select", &self.select)
            .finish()
    }
}

impl<F, P, M, C, O, Res, E> Future for ResponseFuture<F, P, M, C, O>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    P: Respond<M, Res>,
    C: Classify<Res, E>,
    O: Observer,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let (result, failed_response) = classified(result, *this.select, this.classify);
        let Some(trigger) = select(*this.select, failed_response, &result) else {
            return Poll::Ready(result);
        };
        let kind = trigger.kind();
        let (policy, memo) = this.fallback.take().expect("polled after completion");
        let response = policy.respond(memo, trigger);
        if let Some(source) = this.source {
            let latency = this.start.map(|start| start.elapsed());
            source.emitter().emit(EventKind::FallbackUsed {
                trigger: kind,
                latency,
            });
        }
        Poll::Ready(Ok(response))
    }
}
