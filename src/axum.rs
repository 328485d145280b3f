//! seawall's rejections as axum responses (feature `axum`).
//!
//! | rejection ([`ErrorKind`]) | status | headers |
//! |---|---|---|
//! | circuit open | 503 Service Unavailable | `Retry-After` when the breaker knows when it will probe |
//! | bulkhead or adaptive limiter full, overloaded, throttled | 503 Service Unavailable | |
//! | rate limited | 429 Too Many Requests | `Retry-After` |
//! | timed out | 504 Gateway Timeout | |
//! | malformed deadline header | 400 Bad Request | |
//! | anything else | 500 Internal Server Error | |
//!
//! Bodies are short fixed texts ([`ErrorKind::describe`]); an unknown error's message is never
//! sent to the client, only logged (at `WARN`, target `seawall`).
//!
//! ```
//! use axum::error_handling::HandleErrorLayer;
//! use axum::{routing::get, Router};
//! use seawall::limit::rate::{Quota, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
//!     ServiceBuilder::new()
//!         .layer(HandleErrorLayer::new(seawall::axum::handle_error))
//!         .layer(RateLimitLayer::new(Quota::per_second(100))),
//! );
//! # drop(app);
//! ```

use crate::error::{find, ErrorKind};
use axum_core::response::{IntoResponse, Response};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use std::error::Error;
use std::fmt;
use std::time::Duration;
use tower::BoxError;

/// The status a rejection of kind `kind` is answered with.
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::InvalidDeadline => StatusCode::BAD_REQUEST,
        ErrorKind::CircuitOpen
        | ErrorKind::BulkheadFull
        | ErrorKind::Overloaded
        | ErrorKind::Throttled => StatusCode::SERVICE_UNAVAILABLE,
    }
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
