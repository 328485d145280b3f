//! seawall's rejections as gRPC statuses for tonic (feature `tonic`).
//!
//! | rejection ([`ErrorKind`]) | code |
//! |---|---|
//! | circuit open, bulkhead or adaptive limiter full, overloaded (load shed), throttled, retry budget exhausted | `UNAVAILABLE` |
//! | rate limited | `RESOURCE_EXHAUSTED` |
//! | timed out | `DEADLINE_EXCEEDED` |
//! | malformed `grpc-timeout` | `INVALID_ARGUMENT` |
//! | a `tonic::Status` found in the error's chain | that status, as it is |
//! | anything else | `INTERNAL` |
//!
//! A full bulkhead, a full adaptive limiter and shed load are `UNAVAILABLE`, not
//! `RESOURCE_EXHAUSTED`: the call was refused before it did any work, another attempt (on another
//! instance, or a moment later) may well succeed, and `UNAVAILABLE` is the code gRPC clients'
//! retry policies retry. A rate limit is a quota the caller has used up: `RESOURCE_EXHAUSTED`,
//! which gRPC clients retry only when the server pushes back, and it always does, with the time
//! to its next slot. HTTP answers are not affected ([`crate::http::status`]).
//!
//! When the rejection says when to come back (an open breaker, a rate limit, a full bulkhead or
//! adaptive limiter: one second), the status carries
//! it in `grpc-retry-pushback-ms`, which gRPC clients' retry policies obey. Messages are short
//! fixed texts ([`ErrorKind::describe`]); an unknown error's message is never sent, only logged
//! (at `WARN`, target `seawall`).
//!
//! ```
//! use seawall::limit::rate::{Quota, RateLimitLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut service = RateLimitLayer::new(Quota::per_second(1))
//!     .layer(service_fn(|_: ()| async { Ok::<_, tonic::Status>(()) }));
//! service.ready().await.unwrap().call(()).await.unwrap();
//! let err = service.ready().await.unwrap().call(()).await.unwrap_err();
//! let status = seawall::tonic::status(&*err);
//! assert_eq!(status.code(), tonic::Code::ResourceExhausted);
//! assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
//! # }
//! ```

use crate::error::{identify, ErrorKind};
use crate::grpc::GRPC_RETRY_PUSHBACK_MS;
use std::error::Error;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The code a rejection of kind `kind` is answered with (the table in the [module docs](self)).
///
/// ```
/// use seawall::error::ErrorKind;
/// use tonic::Code;
///
/// assert_eq!(seawall::tonic::code(ErrorKind::BulkheadFull), Code::Unavailable);
/// assert_eq!(seawall::tonic::code(ErrorKind::Overloaded), Code::Unavailable);
/// assert_eq!(seawall::tonic::code(ErrorKind::RateLimited), Code::ResourceExhausted);
/// ```
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::CircuitOpen
        | ErrorKind::BulkheadFull
        | ErrorKind::Overloaded
        | ErrorKind::Throttled
        | ErrorKind::RetryBudgetExhausted => Code::Unavailable,
        ErrorKind::RateLimited => Code::ResourceExhausted,
        ErrorKind::TimedOut => Code::DeadlineExceeded,
        ErrorKind::InvalidDeadline => Code::InvalidArgument,
    }
}

/// The status for `err`: the first seawall rejection or `tonic::Status` in its chain, mapped as
/// the [module docs](self) say.
pub fn status(err: &(dyn Error + 'static)) -> Status {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(cause) = identify(e) {
            let kind = cause.kind();
            let mut status = Status::new(code(kind), kind.describe());
            if let Some(wait) = cause.retry_after() {
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                status
                    .metadata_mut()
                    .insert(GRPC_RETRY_PUSHBACK_MS, MetadataValue::from(ms));
            }
            return status;
        }
        if let Some(status) = e.downcast_ref::<Status>() {
            return status.clone();
        }
        next = e.source();
    }
    tracing::warn!(target: "seawall", error = %err, "unhandled error answered with INTERNAL");
    Status::internal("internal error")
}

/// A gRPC server's errors as statuses: turns the `Err` of a stack of seawall layers into the HTTP
/// response carrying [`status`], for `ServiceBuilder::map_result` in front of a tonic server's
/// services, so that clients get the mapped codes instead of tonic's `UNKNOWN`. It never returns
/// `Err`; its error type is `BoxError` because `map_result` passes readiness errors through.
///
/// ```
/// use seawall::limit::rate::{Quota, RateLimitLayer};
/// use tower::ServiceBuilder;
///
/// let layers = ServiceBuilder::new()
///     .map_result(seawall::tonic::or_status::<tonic::body::Body>)
///     .layer(RateLimitLayer::new(Quota::per_second(100)));
/// // tonic::transport::Server::builder().layer(layers).add_service(...)
/// # drop(layers);
/// ```
pub fn or_status<B: Default>(
    result: Result<http::Response<B>, tower::BoxError>,
) -> Result<http::Response<B>, tower::BoxError> {
    Ok(result.unwrap_or_else(|err| status(&*err).into_http()))
}
