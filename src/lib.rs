//! Resilience middleware for [`tower`]: layers that keep a service up when what it depends on slows
//! down, fails, or is flooded.
//!
//! | layer | module | feature |
//! |---|---|---|
//! | bulkhead: bounded concurrency with a bounded FIFO or LIFO queue | [`bulkhead`] | `bulkhead` (default) |
//! | circuit breaker | [`circuit_breaker`] | `circuit-breaker` (default) |
//! | retry: backoff and jitter, budgets, server hints | [`retry`] | `retry` (default) |
//! | timeouts and deadlines, deadline propagation | [`timeout`], [`timeout::propagate`] | `timeout` (default; propagation with `http`) |
//! | HTTP classification, `Retry-After` | [`http`] | `http` (default) |
//! | the `grpc-timeout` header | [`grpc`] | `http` (default) |
//! | adaptive concurrency, client-side throttling, rate limits | [`limit`], `limit::rate` | `limit` (default) |
//! | what an error out of a stack is | [`error`] | always |
//! | rejections as axum responses | `axum` | `axum` |
//! | rejections as gRPC statuses | `tonic` | `tonic` |
//!
//! | fallback: degraded answers in place of failures | `fallback` | `fallback` (default) |
//!
//! Every layer shares the same [`core`]: outcome classification,
//! lock-free sliding windows, one admission gate `Service`, and one [`Observer`](core::Observer)
//! hook for metrics and tracing.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "circuit-breaker")] {
//! use seawall::circuit_breaker::CircuitBreakerLayer;
//! use seawall::ServiceBuilderExt;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let service = ServiceBuilder::new()
//!     .circuit_breaker(CircuitBreakerLayer::new())
//!     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
//! assert_eq!(service.oneshot(41).await?, 42);
//! # Ok(())
//! # }
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
pub mod core;
pub mod error;
#[cfg(feature = "fallback")]
pub mod fallback;
#[cfg(feature = "http")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "limit")]
pub mod limit;
#[cfg(feature = "retry")]
pub mod retry;
mod sync;
#[cfg(feature = "timeout")]
pub mod timeout;
#[cfg(feature = "tonic")]
pub mod tonic;

// The README's examples are compiled and run as doc tests.
#[cfg(all(doctest, feature = "circuit-breaker", feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Adds seawall's layers to [`tower::ServiceBuilder`].
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// Wraps the services built below in `layer`'s bulkhead.
    ///
    /// ```
    /// use seawall::bulkhead::BulkheadLayer;
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .bulkhead(BulkheadLayer::new(50))
    ///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// # drop(service);
    /// ```
    #[cfg(feature = "bulkhead")]
    fn bulkhead<C, O>(
        self,
        layer: bulkhead::BulkheadLayer<C, O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<bulkhead::BulkheadLayer<C, O>, L>>;

    /// Wraps the services built below in `layer`'s circuit breaker.
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C, O>(
        self,
        layer: circuit_breaker::CircuitBreakerLayer<C, O>,
    ) -> tower::ServiceBuilder<
        tower::layer::util::Stack<circuit_breaker::CircuitBreakerLayer<C, O>, L>,
    >;

    /// Wraps the services built below in `layer`'s timeout. (Not `timeout`: `ServiceBuilder`'s own
    /// method of that name, tower's timeout, would be chosen instead.)
    ///
    /// ```
    /// use seawall::timeout::TimeoutLayer;
    /// use seawall::ServiceBuilderExt;
    /// use std::time::Duration;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .with_timeout(TimeoutLayer::new(Duration::from_secs(2)).propagate())
    ///     .service(service_fn(|req: http::Request<()>| async move {
    ///         Ok::<_, std::io::Error>(req)
    ///     }));
    /// # drop(service);
    /// ```
    #[cfg(feature = "timeout")]
    fn with_timeout<P, O>(
        self,
        layer: timeout::TimeoutLayer<P, O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<timeout::TimeoutLayer<P, O>, L>>;

    /// Sheds load above the services built below: calls that find them not ready fail at once.
    /// (Not `load_shed`: `ServiceBuilder`'s own method of that name, tower's, would be chosen
    /// instead.)
    ///
    /// ```
    /// use seawall::limit::LoadShedLayer;
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .with_load_shed(LoadShedLayer::new())
    ///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// # drop(service);
    /// ```
    #[cfg(feature = "limit")]
    fn with_load_shed<O>(
        self,
        layer: limit::LoadShedLayer<O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<limit::LoadShedLayer<O>, L>>;

    /// Wraps the services built below in `layer`'s retries. (Not `retry`: `ServiceBuilder`'s own
    /// method of that name, tower's retry, would be chosen instead.)
    ///
    /// ```
    /// use seawall::retry::RetryLayer;
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .with_retry(RetryLayer::builder().http().build().unwrap())
    ///     .service(service_fn(|_: http::Request<String>| async {
    ///         Ok::<_, std::io::Error>(http::Response::new(()))
    ///     }));
    /// # drop(service);
    /// ```
    #[cfg(feature = "retry")]
    fn with_retry<C, P, O>(
        self,
        layer: retry::RetryLayer<C, P, O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<retry::RetryLayer<C, P, O>, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    #[cfg(feature = "bulkhead")]
    fn bulkhead<C, O>(
        self,
        layer: bulkhead::BulkheadLayer<C, O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<bulkhead::BulkheadLayer<C, O>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C, O>(
        self,
        layer: circuit_breaker::CircuitBreakerLayer<C, O>,
    ) -> tower::ServiceBuilder<
        tower::layer::util::Stack<circuit_breaker::CircuitBreakerLayer<C, O>, L>,
    > {
        self.layer(layer)
    }

    #[cfg(feature = "timeout")]
    fn with_timeout<P, O>(
        self,
        layer: timeout::TimeoutLayer<P, O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<timeout::TimeoutLayer<P, O>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "limit")]
    fn with_load_shed<O>(
        self,
        layer: limit::LoadShedLayer<O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<limit::LoadShedLayer<O>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn with_retry<C, P, O>(
        self,
        layer: retry::RetryLayer<C, P, O>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<retry::RetryLayer<C, P, O>, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
