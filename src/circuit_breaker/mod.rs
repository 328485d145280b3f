//! A circuit breaker that stops calling a failing dependency, probes it, and lets traffic back in when
//! it recovers.
//!
//! # How it decides
//!
//! While **closed**, every call goes through and its outcome (from a [`Classify`](crate::core::Classify)
//! implementation; by default every `Err` is a failure) is recorded in a sliding window: the last
//! `N` calls, or the calls of the last `T`. The breaker **opens** when any enabled rule says so:
//!
//! - the failure rate in the window reaches a threshold (default 50 %);
//! - the slow-call rate (calls at or over a duration) reaches a threshold;
//! - `n` calls in a row failed;
//! - a failed response carried a server hint (`Retry-After`), when
//!   [`honour_retry_after`](Builder::honour_retry_after) is set: the breaker opens for that long.
//!
//! Rate rules wait for [`minimum_calls`](Builder::minimum_calls) calls in the window; until then the
//! rates read as unknown.
//!
//! While **open**, calls fail at once with [`error::Open`], which says how long until the next probe.
//! The open period grows on repeated trips (exponentially, capped, with jitter). When it ends, the next
//! call finds the breaker **half-open**: at most `K` probe calls go through, and when all have finished
//! the breaker closes if their failure rate is under the threshold and opens again otherwise. A probe
//! that is cancelled gives its slot back; probes that never finish are given up on after
//! [`max_half_open_wait`](Builder::max_half_open_wait). All transitions happen on calls; there is no
//! background task.
//!
//! [`KeyedCircuitBreakerLayer`] keeps one such breaker per destination (by default the request's
//! authority), made on first use, forgotten when idle, in a table of bounded size; see its docs
//! for an example.
//!
//! A [`Handle`] reads the state and metrics and steers the breaker by hand: force it open, close it,
//! disable it, switch it to metrics-only, or reset it.
//!
//! # Cost
//!
//! On the closed path admission is one atomic load, and completion of a success in a healthy count
//! window one more (a full window of successes absorbs another without a write; other outcomes cost
//! an atomic add or two): no lock, no allocation, no boxed future, and no clock read unless a
//! slow-call rule, a time window or the observer needs time. The response future keeps the breaker alive through an `Arc`; a breaker
//! built with [`Builder::build_static`] lives as long as the process instead and skips that reference
//! count too.
//!
//! # Examples
//!
//! The defaults, in a `ServiceBuilder`:
//!
//! ```
//! use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::new();
//! let handle = breaker.handle();
//! let service = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|_: ()| async { Err::<(), _>("backend down") }));
//!
//! for _ in 0..20 {
//!     let _ = service.clone().oneshot(()).await; // 20 failures: the minimum, all failed
//! }
//! let err = service.oneshot(()).await.unwrap_err();
//! assert!(err.is::<Open>());
//! assert!(handle.metrics().failure_rate.unwrap() >= 50.0);
//! # }
//! ```
//!
//! Tuned for an HTTP client: 5xx, 408 and 429 count as failures, a 503's `Retry-After` is honoured,
//! slow answers count too, and the breaker reports to `tracing`:
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use seawall::circuit_breaker::CircuitBreakerLayer;
//! use seawall::core::TracingObserver;
//! use seawall::http::HttpClassifier;
//! use std::time::Duration;
//!
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("inventory-api")
//!     .classify(HttpClassifier::default())
//!     .observer(TracingObserver)
//!     .time_window(Duration::from_secs(30))
//!     .minimum_calls(50)
//!     .failure_rate_threshold(40.0)
//!     .slow_call_rate_threshold(60.0, Duration::from_secs(2))
//!     .honour_retry_after(Duration::from_secs(60))
//!     .open_duration(Duration::from_secs(10))
//!     .half_open_probes(5)
//!     .build()
//!     .expect("valid configuration");
//! # drop(breaker);
//! # }
//! ```

mod config;
pub mod error;
pub mod future;
mod handle;
mod keyed;
mod layer;
mod state;

pub use config::{Builder, ConfigError, WindowKind};
pub use handle::{Handle, Metrics};
pub use keyed::{
    Authority, KeyOf, KeyedBreakers, KeyedBuilder, KeyedCircuitBreaker, KeyedCircuitBreakerLayer,
    KeyedHandle, KeyedObserver, KeyedPermit, KeyedResponseFuture,
};
pub use layer::CircuitBreakerLayer;
#[cfg(feature = "pool")]
pub(crate) use state::Schedule;
pub use state::{Breaker, Permit};

/// A service wrapped in a circuit breaker, made by [`CircuitBreakerLayer`].
///
/// It is the crate's one gate service, [`Guard`](crate::core::Guard), over the breaker's state
/// machine; its error type is [`tower::BoxError`], holding either the inner service's error or an
/// [`error::Open`].
pub type CircuitBreaker<S, C = crate::core::ErrorIsFailure, O = ()> =
    crate::core::Guard<S, Breaker, C, O>;
