//! seawall's rejections as axum responses (feature `axum`).
//!
//! | rejection ([`ErrorKind`]) | status | headers |
//! |---|---|---|
//! | circuit open | 503 Service Unavailable | `Retry-After` when the breaker knows when it will probe |
//! | bulkhead or adaptive limiter full (at capacity, queue full, or waited too long) | 503 Service Unavailable | `Retry-After: 1` ([`Full::retry_after`](crate::bulkhead::error::Full::retry_after)) |
//! | overloaded, throttled, retry budget exhausted, no healthy endpoint in a pool | 503 Service Unavailable | |
//! | rate limited | 429 Too Many Requests | `Retry-After` |
//! | timed out | 504 Gateway Timeout | |
//! | malformed deadline header | 400 Bad Request | |
//! | anything else | 500 Internal Server Error | |
//!
//! Bodies are short fixed texts ([`ErrorKind::describe`]); an unknown error's message is never
//! sent to the client, only logged (at `WARN`, target `seawall`).
//!
//! Put [`HandleErrorsLayer`] above the seawall layers of a `Router` (or axum's
//! `HandleErrorLayer` with [`handle_error`]: the same answers, with a boxed future and a clone of
//! the service for each request):
//!
//! ```
//! use axum::{routing::get, Router};
//! use seawall::axum::HandleErrorsLayer;
//! use seawall::limit::rate::{Quota, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
//!     ServiceBuilder::new()
//!         .layer(HandleErrorsLayer::new())
//!         .layer(RateLimitLayer::new(Quota::per_second(100))),
//! );
//! # drop(app);
//! ```

use crate::error::{find, ErrorKind};
use axum_core::response::{IntoResponse, Response};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Layer, Service};

/// The status a rejection of kind `kind` is answered with: [`http::status`](crate::http::status).
pub fn status(kind: ErrorKind) -> StatusCode {
    crate::http::status(kind)
}

/// Whole seconds, rounded up and at least 1: a `Retry-After` value.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The response for `err`: see the [module docs](self) for the mapping.
pub fn error_response(err: &(dyn Error + 'static)) -> Response {
    let Some(cause) = find(err) else {
        tracing::warn!(target: "seawall", error = %err, "unhandled error answered with 500");
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    };
    let kind = cause.kind();
    let status = status(kind);
    let body = if status == StatusCode::SERVICE_UNAVAILABLE {
        format!("service unavailable: {}", kind.describe())
    } else {
        kind.describe().to_string()
    };
    let mut response = (status, body).into_response();
    if let Some(wait) = cause.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    response
}

/// A handler for axum's `HandleErrorLayer`: answers any error of the layers beneath with
/// [`error_response`].
pub async fn handle_error(err: BoxError) -> Response {
    error_response(&*err)
}

/// An error that answers with [`error_response`] when returned from an axum handler.
///
/// ```
/// use seawall::axum::ErrorResponse;
/// use tower::{BoxError, Service, ServiceExt};
///
/// async fn handler(
///     mut client: impl Service<(), Response = String, Error = BoxError>,
/// ) -> Result<String, ErrorResponse> {
///     Ok(client.ready().await?.call(()).await?)
/// }
/// # drop(handler(tower::service_fn(|_: ()| async { Ok::<_, BoxError>(String::new()) })));
/// ```
pub struct ErrorResponse(pub BoxError);

impl<E: Into<BoxError>> From<E> for ErrorResponse {
    fn from(err: E) -> Self {
        ErrorResponse(err.into())
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        error_response(&*self.0)
    }
}

impl fmt::Debug for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ErrorResponse").field(&self.0).finish()
    }
}

/// Answers every error of the services beneath with [`error_response`], so that a stack of
/// seawall layers fits `Router::layer` (which needs an infallible service) as it is.
///
/// It does what axum's `HandleErrorLayer::new(handle_error)` does, without boxing a future and
/// cloning the service beneath for each request. An error from the inner service's `poll_ready`
/// is answered too: the service reports itself ready, and the next call gets the error's response
/// without reaching the inner service.
///
/// ```
/// use axum::{routing::get, Router};
/// use seawall::axum::HandleErrorsLayer;
/// use seawall::stack::ServerStack;
/// use tower::ServiceBuilder;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(ServiceBuilder::new().layer(HandleErrorsLayer::new()).layer(ServerStack::new()));
/// # drop(app);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HandleErrorsLayer {
    _private: (),
}

impl HandleErrorsLayer {
    /// The layer.
    pub fn new() -> Self {
        HandleErrorsLayer { _private: () }
    }
}

impl<S> Layer<S> for HandleErrorsLayer {
    type Service = HandleErrors<S>;

    fn layer(&self, inner: S) -> HandleErrors<S> {
        HandleErrors {
            inner,
            not_ready: None,
        }
    }
}

/// The service of [`HandleErrorsLayer`].
pub struct HandleErrors<S> {
    inner: S,
    /// What the inner service's `poll_ready` failed with, answered to the next call.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for HandleErrors<S> {
    /// A clone shares nothing of the original's state: a pending `poll_ready` error stays with
    /// the original.
    fn clone(&self) -> Self {
        HandleErrors {
            inner: self.inner.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for HandleErrors<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandleErrors")
            .field("inner", &self.inner)
            .field("not_ready", &self.not_ready)
            .finish()
    }
}

impl<S, Req> Service<Req> for HandleErrors<S>
where
    S: Service<Req, Response = Response>,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = HandleErrorsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_none() {
            if let Err(err) = std::task::ready!(self.inner.poll_ready(cx)) {
                self.not_ready = Some(err.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.not_ready.take() {
            None => HandleErrorsFuture {
                kind: Kind::Called {
                    future: self.inner.call(req),
                },
            },
            Some(err) => HandleErrorsFuture {
                kind: Kind::NotReady {
                    response: Some(error_response(&*err)),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`HandleErrors`].
    pub struct HandleErrorsFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        NotReady { response: Option<Response> },
    }
}

impl<F> fmt::Debug for HandleErrorsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandleErrorsFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for HandleErrorsFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => {
                Poll::Ready(Ok(match std::task::ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(err) => error_response(&*err.into()),
                }))
            }
            KindProj::NotReady { response } => Poll::Ready(Ok(response
                .take()
                .expect("HandleErrorsFuture polled after it finished"))),
        }
    }
}
