//! A health-aware endpoint pool (feature `pool`): [`Pool`] sends each call to one of several
//! endpoints (replicas of a dependency, each a tower `Service`), chosen by power of two choices on
//! their load, and takes endpoints that fail out of rotation for a while (outlier ejection).
//!
//! - **Selection.** Two endpoints in rotation are drawn at random; the call goes to the one whose
//!   load, its peak-EWMA round-trip time × (calls in flight + 1), is lower, once its readiness is
//!   polled (only the chosen endpoints' readiness is polled; one pending or failing is passed
//!   over for another draw). A failed call counts in the
//!   estimate as `max(5 s, its own time)`, so an endpoint that fails fast draws no load for
//!   answering quickly (linkerd's rule); one kept idle by that penalty for the ejection time gets
//!   a call again, and the first answer that is no failure restarts its estimate.
//! - **Ejection.** Each endpoint's state is a few atomics. A rule ejects it: consecutive
//!   upstream failures (answers the classifier calls failures), consecutive local-origin failures
//!   (the service's own errors) counted apart, the share of failures over the interval, an
//!   outlying success rate (opt-in), a server's `Retry-After` on a 429 or 503, or a failed
//!   readiness (an endpoint's `poll_ready` error is never final). An ejection lasts the breaker's
//!   schedule (30 s, doubling per ejection in a row, up to 300 s, jittered); when it ends, exactly
//!   one probe goes to the endpoint: success brings it back, failure ejects it again for longer.
//!   An ejected endpoint's connection (its service) is kept.
//! - **The cap.** At most `max_ejection_percent` of the endpoints (50 %, and at least one) are
//!   ejected at once; an endpoint a rule would eject beyond that stays in rotation, *held*. When
//!   no endpoint is healthy (all ejected or held), the pool either spreads calls over every
//!   endpoint ([`WhenUnhealthy::Panic`], the default, as Envoy) or refuses them with
//!   [`NoHealthyEndpoint`](error::NoHealthyEndpoint) (503, `UNAVAILABLE`) but for probes
//!   ([`WhenUnhealthy::FailFast`]).
//! - **Endpoints** are given at build ([`Builder::build`]) or come from a
//!   `tower::discover::Discover` stream ([`Builder::build_discover`], with a [`Driver`] to spawn);
//!   every change replaces the list a pool reads whole, so no choice ever points into a list that
//!   has changed beneath it. A call whose endpoint was removed between `poll_ready` and `call`
//!   sends nothing and fails with [`EndpointUnavailable`](error::EndpointUnavailable), safe to
//!   retry.
//!
//! Per call: two random draws, two loads read, one endpoint's readiness polled (a clone of its
//! service), its in-flight count, and at the end its estimate, window and counters: no lock and
//! no allocation, whatever the number of endpoints. Pools are `Clone`; clones share every
//! endpoint's state. See docs/pool.md for the defaults and their reasons.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use seawall::http::HttpClassifier;
//! use seawall::pool::Pool;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let replica = |zone: &'static str| {
//!     service_fn(move |_: http::Request<()>| async move {
//!         Ok::<_, std::io::Error>(http::Response::new(zone))
//!     })
//! };
//! let pool = Pool::builder()
//!     .name("inventory")
//!     .classify(HttpClassifier::default())
//!     .build([replica("a"), replica("b"), replica("c")])?;
//! let handle = pool.handle();
//! let answer = pool.oneshot(http::Request::new(())).await?;
//! assert!(["a", "b", "c"].contains(answer.body()));
//! assert_eq!(handle.healthy(), 3);
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```
//!
//! With discovery:
//!
//! ```
//! use seawall::pool::Pool;
//! use tower::discover::Change;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let (changes, stream) = tokio::sync::mpsc::unbounded_channel();
//! let stream = futures::stream::unfold(stream, |mut rx| async move {
//!     rx.recv().await.map(|change| (Ok::<_, std::io::Error>(change), rx))
//! });
//! let (pool, driver) = Pool::builder().build_discover(Box::pin(stream))?;
//! tokio::spawn(driver);
//! let replica = service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) });
//! changes.send(Change::Insert("10.0.0.1:80", replica)).unwrap();
//! assert_eq!(pool.oneshot(21).await?, 42);
//! # Ok(())
//! # }
//! ```

mod config;
mod discover;
pub mod error;
pub mod future;
mod handle;
mod service;
mod state;

pub use config::{Builder, ConfigError, WhenUnhealthy};
pub use discover::Driver;
#[cfg(feature = "health")]
pub(crate) use handle::WeakPoolHandle;
pub use handle::{EndpointState, EndpointStatus, PoolHandle};
pub use service::Pool;
