//! Retries: try a failed call again, after a jittered backoff, within a budget, and never past the
//! request's deadline.
//!
//! [`RetryLayer`] retries the calls its classifier says failed (by default every `Err`; with
//! [`HttpClassifier`](crate::http::HttpClassifier), 5xx, 408, 429 and transport errors), as long as
//!
//! - the [`Policy`](policy::Policy) could copy the request (by default, any `Clone` request) and
//!   does not decline the retry;
//! - fewer than [`max_retries`](Builder::max_retries) retries were made (3 by default);
//! - the [`Budget`](budget::Budget) has a retry to spare (by default Finagle's: 20 % of the requests
//!   of the last 10 s, plus 10 per second), so that retries cannot multiply the load on a
//!   dependency that is already down;
//! - the retry would end before the request's deadline and the layer's
//!   [`max_elapsed`](Builder::max_elapsed), if set (the wait for the inner service's readiness
//!   ends at the deadline too: no attempt starts after it, and the caller gets the last answer);
//! - a server hint (`Retry-After`, read by the classifier) asks for no more than
//!   [`max_hint`](Builder::max_hint).
//!
//! Between attempts it waits as the [`Backoff`](backoff::Backoff) says (exponential from 100 ms with
//! full jitter by default, the cap applied before the jitter), or, when the server sent a hint, a
//! random delay between the hint and one and a half times it: never earlier than asked. Every call
//! draws its own random delays, so clients that failed together do not retry together.
//!
//! Each attempt polls the inner service's readiness first, and no capacity is held during a
//! backoff. When retries end, the last attempt's result is returned as it was: the error type is
//! the inner service's. Every step is an event for the observer: attempts started and finished,
//! retries scheduled (with their delay and whether a server hint chose it), and why the layer gave
//! up.
//!
//! # Where to put it
//!
//! Inside a timeout that propagates deadlines (the total budget), and outside a circuit breaker and
//! a per-attempt timeout; see [`timeout`](crate::timeout#where-to-put-it) for the picture.
//!
//! # Examples
//!
//! The defaults:
//!
//! ```
//! use seawall::retry::RetryLayer;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .service(service_fn(move |_: ()| {
//!         // Fails twice, then answers.
//!         let n = counter.fetch_add(1, Ordering::SeqCst);
//!         async move { if n < 2 { Err("flaky") } else { Ok(n) } }
//!     }));
//! assert_eq!(service.oneshot(()).await, Ok(2));
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```
//!
//! Tuned, with a budget shared by two layers:
//!
//! ```
//! use seawall::retry::{backoff::{Backoff, Jitter}, budget::Budget, RetryLayer};
//! use std::time::Duration;
//!
//! let budget = Budget::token_bucket(500, 5, 1).unwrap();
//! let reads = RetryLayer::builder()
//!     .name("reads")
//!     .max_retries(4)
//!     .backoff(Backoff::decorrelated(Duration::from_millis(20)).max(Duration::from_secs(1)))
//!     .budget(budget.clone())
//!     .build()
//!     .unwrap();
//! let writes = RetryLayer::builder()
//!     .name("writes")
//!     .max_retries(1)
//!     .backoff(Backoff::constant(Duration::from_millis(200)).jitter(Jitter::Equal))
//!     .budget(budget)
//!     .build()
//!     .unwrap();
//! # drop((reads, writes));
//! ```

pub mod backoff;
pub mod budget;
#[cfg(feature = "http")]
pub mod buffered;
mod config;
pub mod future;
#[cfg(feature = "http")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
mod layer;
pub mod policy;
mod service;

pub use config::{Builder, ConfigError, MAX_RETRIES};
pub use layer::RetryLayer;
pub use service::Retry;
