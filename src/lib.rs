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
//! | fleet-wide rate limits through a shared store (Redis) | `limit::fleet` | `fleet`; Redis with `redis` |
//! | what an error out of a stack is | [`error`] | always |
//! | fallback: degraded answers in place of failures | `fallback` | `fallback` (default) |
//! | the standard client and server stacks | `stack` | `timeout` (default), with the layers they hold |
//! | rejections as axum responses | `axum` | `axum` |
//! | rejections as gRPC statuses | `tonic` | `tonic` |
//! | events as metrics | `metrics` | `metrics` |
//! | fault injection for resilience tests | `chaos` | `chaos` |
//! | a registry of every layer's state; liveness, readiness and health probes | `health` | `health`; routes with `http` |
//! | a health-aware endpoint pool: power of two choices, outlier ejection, discovery | `pool` | `pool` |
//!
//! Every layer shares the same [`core`]: outcome classification, lock-free sliding windows, one
//! admission gate `Service`, and one [`Observer`](core::Observer) hook for metrics and tracing.
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
#[cfg(feature = "cache")]
pub mod cache;
#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
pub mod core;
pub mod error;
#[cfg(feature = "fallback")]
pub mod fallback;
#[cfg(feature = "http")]
pub mod grpc;
#[cfg(feature = "health")]
pub mod health;
#[cfg(feature = "hedge")]
pub mod hedge;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "limit")]
pub mod limit;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "pool")]
pub mod pool;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "timeout")]
pub mod stack;
mod sync;
#[cfg(feature = "timeout")]
pub mod timeout;
#[cfg(feature = "tonic")]
pub mod tonic;

// The README's examples are compiled and run as doc tests.
#[cfg(all(doctest, feature = "circuit-breaker", feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// So are the migration guide's.
#[cfg(all(
    doctest,
    feature = "bulkhead",
    feature = "circuit-breaker",
    feature = "timeout"
))]
#[doc = include_str!("../docs/migration.md")]
struct MigrationDoctests;

// And the health page's.
#[cfg(all(
    doctest,
    feature = "health",
    feature = "axum",
    feature = "bulkhead",
    feature = "circuit-breaker"
))]
#[doc = include_str!("../docs/health.md")]
struct HealthDoctests;

/// Declares [`ServiceBuilderExt`]'s methods and implements them (each is `self.layer(layer)`
/// with the layer's type spelt out), from one list.
macro_rules! service_builder_ext {
    ($(
        $(#[doc = $doc:expr])*
        [$($cfg:tt)*] fn $name:ident<$($generic:ident),*>(layer: $layer:ty);
    )*) => {
        /// Adds seawall's layers to [`tower::ServiceBuilder`]. Methods whose name tower's
        /// `ServiceBuilder` already has (`retry`, `timeout`, `load_shed`, `rate_limit`) take a
        /// `with_` prefix, since the inherent method would be chosen instead.
        pub trait ServiceBuilderExt<L>: sealed::Sealed {
            $(
                $(#[doc = $doc])*
                #[cfg($($cfg)*)]
                fn $name<$($generic),*>(
                    self,
                    layer: $layer,
                ) -> tower::ServiceBuilder<tower::layer::util::Stack<$layer, L>>;
            )*
        }

        impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
            $(
                #[cfg($($cfg)*)]
                fn $name<$($generic),*>(
                    self,
                    layer: $layer,
                ) -> tower::ServiceBuilder<tower::layer::util::Stack<$layer, L>> {
                    self.layer(layer)
                }
            )*
        }
    };
}

service_builder_ext! {
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
    [feature = "bulkhead"] fn bulkhead<C, O>(layer: bulkhead::BulkheadLayer<C, O>);

    /// Wraps the services built below in `layer`'s circuit breaker.
    [feature = "circuit-breaker"] fn circuit_breaker<C, O>(layer: circuit_breaker::CircuitBreakerLayer<C, O>);

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
    [feature = "timeout"] fn with_timeout<P, O>(layer: timeout::TimeoutLayer<P, O>);

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
    [feature = "limit"] fn with_load_shed<O>(layer: limit::LoadShedLayer<O>);

    /// Wraps the services built below in `layer`'s retries. (Not `retry`: `ServiceBuilder`'s own
    /// method of that name, tower's retry, would be chosen instead.)
    ///
    /// ```
    /// use seawall::retry::RetryLayer;
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .with_retry(RetryLayer::http().build().unwrap())
    ///     .service(service_fn(|_: http::Request<String>| async {
    ///         Ok::<_, std::io::Error>(http::Response::new(()))
    ///     }));
    /// # drop(service);
    /// ```
    [feature = "retry"] fn with_retry<C, P, O>(layer: retry::RetryLayer<C, P, O>);

    /// Limits concurrency above the services built below to what they show they can take.
    ///
    /// ```
    /// use seawall::limit::algorithm::{Gradient2, Windowed};
    /// use seawall::limit::AdaptiveLimitLayer;
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .adaptive_limit(
    ///         AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
    ///             .build()
    ///             .unwrap(),
    ///     )
    ///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// # drop(service);
    /// ```
    [feature = "limit"] fn adaptive_limit<A, C, O>(layer: limit::AdaptiveLimitLayer<A, C, O>);

    /// Throttles calls to the services built below on the client side when they accept too few.
    [feature = "limit"] fn throttle<C, O>(layer: limit::ThrottleLayer<C, O>);

    /// Limits the rate of calls to the services built below. (Not `rate_limit`: tower's
    /// `ServiceBuilder` has a method of that name.)
    ///
    /// ```
    /// use seawall::limit::rate::{Quota, RateLimitLayer};
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .with_rate_limit(RateLimitLayer::new(Quota::per_second(100)))
    ///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// # drop(service);
    /// ```
    [feature = "limit"] fn with_rate_limit<Clk, O, D>(layer: limit::rate::RateLimitLayer<Clk, O, D>);

    /// Limits the rate of calls to the services built below per key of the request.
    [feature = "limit"] fn keyed_rate_limit<F, Clk, O, D>(layer: limit::rate::KeyedRateLimitLayer<F, Clk, O, D>);

    /// Limits the rate of calls per key of the request across every instance sharing the
    /// layer's store.
    [feature = "fleet"] fn fleet_rate_limit<St, F, Clk, O>(layer: limit::fleet::FleetRateLimitLayer<St, F, Clk, O>);

    /// Answers in place of the services built below when their calls fail as chosen.
    ///
    /// ```
    /// use seawall::fallback::{FallbackLayer, Trigger};
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .fallback(FallbackLayer::from_fn(|_: Trigger<'_, u32>| 0))
    ///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// # drop(service);
    /// ```
    [feature = "fallback"] fn fallback<P, C, O>(layer: fallback::FallbackLayer<P, C, O>);

    /// Sends calls of the services built below that fail as chosen to an alternate service.
    [feature = "fallback"] fn alternate<A, M, C, O>(layer: fallback::AlternateLayer<A, M, C, O>);

    /// Serves the last good answer of the services built below when a call fails as chosen.
    [feature = "fallback"] fn stale_if_error<F, K, Res, C, O, P>(
        layer: fallback::StaleIfErrorLayer<F, K, Res, C, O, P>
    );

    /// Injects faults (errors, latency, substituted responses) into the services built below.
    ///
    /// ```
    /// use seawall::chaos::ChaosLayer;
    /// use seawall::ServiceBuilderExt;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let service = ServiceBuilder::new()
    ///     .chaos(ChaosLayer::builder().error(0.01).build().unwrap())
    ///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// # drop(service);
    /// ```
    [feature = "chaos"] fn chaos<M>(layer: chaos::ChaosLayer<M>);

    /// Reads a timeout header (`grpc-timeout`, or another in its format) on the requests of the
    /// services built below into their deadline, or writes what is left of their deadline into it
    /// (see [`timeout::propagate`]).
    ///
    /// ```
    /// use seawall::timeout::propagate::{ReadDeadlineLayer, WriteDeadlineLayer};
    /// use seawall::timeout::TimeoutLayer;
    /// use seawall::ServiceBuilderExt;
    /// use std::time::Duration;
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let server = ServiceBuilder::new()
    ///     .deadline_header(ReadDeadlineLayer::grpc())
    ///     .with_timeout(TimeoutLayer::new(Duration::from_secs(10)).propagate())
    ///     .service(service_fn(|req: http::Request<()>| async move {
    ///         Ok::<_, std::io::Error>(req)
    ///     }));
    /// let client = ServiceBuilder::new()
    ///     .deadline_header(WriteDeadlineLayer::grpc())
    ///     .service(service_fn(|req: http::Request<()>| async move {
    ///         Ok::<_, std::io::Error>(req)
    ///     }));
    /// # drop((server, client));
    /// ```
    [all(feature = "timeout", feature = "http")] fn deadline_header<D>(layer: timeout::propagate::DeadlineHeaderLayer<D>);
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
