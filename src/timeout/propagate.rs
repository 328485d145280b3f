//! Deadlines across the network: read a timeout header on a server's requests into their
//! [`Deadline`], and write what is left of a client request's deadline into the header it sends.
//!
//! gRPC says how long a caller will wait in `grpc-timeout`; tonic servers and clients are tower
//! services of `http::Request`, so [`ReadDeadlineLayer::grpc`] goes in a tonic server's stack and
//! [`WriteDeadlineLayer::grpc`] around a tonic `Channel`. For plain HTTP there is no standard header;
//! [`ReadDeadlineLayer::http`] and [`WriteDeadlineLayer::http`] use [`HTTP_TIMEOUT_HEADER`] with the
//! same format (`250m`, `3S`; see [`parse_grpc_timeout`](crate::grpc::parse_grpc_timeout)), and any
//! other name can be chosen. Values are parsed strictly; a malformed one fails the request with
//! [`InvalidTimeoutHeader`] and never panics.
//!
//! Neither layer enforces the deadline: put a [`TimeoutLayer`](super::TimeoutLayer) that
//! [`propagate`](super::TimeoutLayer::propagate)s beneath the reader, and the writer beneath the
//! client's timeouts.
//!
//! ```
//! use seawall::timeout::propagate::{ReadDeadlineLayer, WriteDeadlineLayer};
//! use seawall::timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! // A gRPC server: honour the caller's budget, and never take more than 10 s.
//! let server = ServiceBuilder::new()
//!     .layer(ReadDeadlineLayer::grpc())
//!     .layer(TimeoutLayer::new(Duration::from_secs(10)).propagate());
//! // Its own client calls: pass on what is left, minus 5 ms for the trip.
//! let client = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)).propagate())
//!     .layer(WriteDeadlineLayer::grpc().margin(Duration::from_millis(5)));
//! # drop((server, client));
//! ```

use super::error::{Elapsed, InvalidTimeoutHeader};
use super::future::PropagateFuture;
use crate::core::{Deadline, DeadlineCarrier, TimeoutCause};
use crate::grpc::{grpc_timeout_header, parse_grpc_timeout_header, GRPC_TIMEOUT};
use http::{HeaderName, Request};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// The header [`ReadDeadlineLayer::http`] and [`WriteDeadlineLayer::http`] use: a timeout in the
/// `grpc-timeout` format.
pub const HTTP_TIMEOUT_HEADER: &str = "x-request-timeout";

/// Reading: [`ReadDeadlineLayer`] sets each request's deadline from its timeout header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Read;

/// Writing: [`WriteDeadlineLayer`] puts what is left of each request's deadline in its timeout
/// header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Write {
    margin: Duration,
}

/// Carries deadlines through a timeout header, in the direction `D`: [`ReadDeadlineLayer`] or
/// [`WriteDeadlineLayer`]; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct DeadlineHeaderLayer<D> {
    header: HeaderName,
    direction: D,
}

/// Sets each request's [`Deadline`] from the timeout header it carries, the earlier of the two
/// if it already has one. A header that cannot be read fails the request with
/// [`InvalidTimeoutHeader`], and the inner service is not called.
pub type ReadDeadlineLayer = DeadlineHeaderLayer<Read>;

/// Writes what is left of each request's [`Deadline`] into a timeout header, unless the header
/// already holds less. A request without a deadline is passed on untouched; one with no time left
/// fails with [`Elapsed`] and is not sent.
pub type WriteDeadlineLayer = DeadlineHeaderLayer<Write>;

impl<D: Default> DeadlineHeaderLayer<D> {
    /// Reads or writes `grpc-timeout`.
    pub fn grpc() -> Self {
        Self::header(HeaderName::from_static(GRPC_TIMEOUT))
    }

    /// Reads or writes [`HTTP_TIMEOUT_HEADER`].
    pub fn http() -> Self {
        Self::header(HeaderName::from_static(HTTP_TIMEOUT_HEADER))
    }

    /// Reads or writes `header`, whose values have the `grpc-timeout` format.
    pub fn header(header: HeaderName) -> Self {
        DeadlineHeaderLayer {
            header,
            direction: D::default(),
        }
    }
}

impl DeadlineHeaderLayer<Write> {
    /// Tells the callee `margin` less than what is left (default zero), so that it gives up before
    /// the caller does and the caller hears why, rather than timing out itself while the answer is
    /// on its way. A request with no more than `margin` left is not sent: it fails at once with
    /// [`Elapsed`] (cause [`Expired`](TimeoutCause::Expired)).
    pub fn margin(mut self, margin: Duration) -> Self {
        self.direction.margin = margin;
        self
    }
}

impl<S, D: Clone> Layer<S> for DeadlineHeaderLayer<D> {
    type Service = DeadlineHeader<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineHeader {
            inner,
            header: self.header.clone(),
            direction: self.direction.clone(),
        }
    }
}

/// The service of [`ReadDeadlineLayer`] and [`WriteDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineHeader<S, D> {
    inner: S,
    header: HeaderName,
    direction: D,
}

/// The service of [`ReadDeadlineLayer`].
pub type ReadDeadline<S> = DeadlineHeader<S, Read>;

/// The service of [`WriteDeadlineLayer`].
pub type WriteDeadline<S> = DeadlineHeader<S, Write>;

impl<S, D> DeadlineHeader<S, D> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Which way a [`DeadlineHeader`] carries deadlines: [`Read`] or [`Write`]. Sealed.
pub trait Direction: sealed::Sealed {
    /// Prepares `req`, or says why it must not be passed on.
    #[doc(hidden)]
    fn apply<B>(&self, header: &HeaderName, req: &mut Request<B>) -> Result<(), BoxError>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Read {}
    impl Sealed for super::Write {}
}

impl Direction for Read {
    fn apply<B>(&self, header: &HeaderName, req: &mut Request<B>) -> Result<(), BoxError> {
        if let Some(value) = req.headers().get(header) {
            let timeout =
                parse_grpc_timeout_header(value).map_err(|source| InvalidTimeoutHeader {
                    header: header.clone(),
                    source,
                })?;
            req.tighten_deadline(Deadline::after(timeout));
        }
        Ok(())
    }
}

impl Direction for Write {
    fn apply<B>(&self, header: &HeaderName, req: &mut Request<B>) -> Result<(), BoxError> {
        let Some(deadline) = req.deadline() else {
            return Ok(());
        };
        let left = deadline
            .remaining_from(Instant::now())
            .saturating_sub(self.margin);
        if left.is_zero() {
            return Err(Elapsed::new(Duration::ZERO, TimeoutCause::Expired).into());
        }
        // A budget already set by hand (tonic writes its own `grpc-timeout`) wins if smaller.
        let set = req
            .headers()
            .get(header)
            .and_then(|value| parse_grpc_timeout_header(value).ok());
        if set.is_none_or(|set| left < set) {
            req.headers_mut()
                .insert(header.clone(), grpc_timeout_header(left));
        }
        Ok(())
    }
}

impl<S, D, B> Service<Request<B>> for DeadlineHeader<S, D>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    D: Direction,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PropagateFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.direction.apply(&self.header, &mut req) {
            Ok(()) => PropagateFuture::called(self.inner.call(req)),
            Err(error) => PropagateFuture::failed(error),
        }
    }
}
