//! Hedged requests: when a call is slow, send another copy of it and take the first answer that
//! succeeds, within a budget, so that a slow tail is cut without multiplying the load on a
//! dependency that is slow for everyone.
//!
//! "The Tail at Scale" (Dean and Barroso, 2013) cut a benchmark's 99.9th percentile from 1.8 s to
//! 74 ms for 2 % more requests this way. [`HedgeLayer`] sends the first attempt at once and,
//! while no attempt has answered, another copy (a *hedge*) each time the delay passes, up to
//! [`max_attempts`](Builder::max_attempts) in all (2 by default, at most [`MAX_ATTEMPTS`]):
//!
//! - **the delay** is fixed ([`delay`](Builder::delay)), or by default the `1 - max_extra_load`
//!   percentile (95th by default) of the latencies of the last 10 s, recomputed about every
//!   second, never under 1 ms; no call is hedged until the window holds
//!   [`min_samples`](Builder::min_samples). The latencies of successes are recorded, and those
//!   of attempts dropped because another won, at the time they were dropped (they took at
//!   least that long, so slow calls keep the percentile up); failures are not. The histogram is
//!   lock-free and log-linear: a record is two atomic adds.
//! - **the budget**: every hedge takes one retry from a [`Budget`](crate::retry::budget::Budget),
//!   retry's type; none is sent when it is empty. By default it allows `max_extra_load` of the
//!   requests of the last 10 s plus one a second, so that a brownout (every call slower) cannot
//!   make every call a hedged one. Give a retry layer the same budget to make retries and
//!   hedges one bound.
//! - **outcomes**, through the classifier: the first success wins and the other attempts are
//!   dropped at once; a failure the policy would retry sends the next hedge at once (a fast
//!   error never beats a slower success); a final answer (an [`Ignored`](crate::core::Outcome)
//!   outcome, or a failure the policy would not retry) ends the call; a server hint
//!   (`Retry-After`, `grpc-retry-pushback-ms`) holds further hedges back until it has passed;
//!   when every attempt has failed, the call returns the first attempt's result.
//! - **only requests the policy can replay** are hedged (any `Clone` request by default;
//!   idempotent HTTP requests with replayable bodies with [`HedgeLayer::http`]), and no hedge is
//!   sent at or after the request's [deadline](crate::core::Deadline) (read by the policy).
//! - **each hedge is told its attempt number** through [`Mark`] (with the HTTP and gRPC
//!   settings, an [`Attempt`] in its extensions), so that a balancer beneath can send it to
//!   another endpoint.
//!
//! Each hedge polls the inner service's readiness first; a hedge that is due while the service
//! is not ready waits for it while the attempts in flight go on. Dropping the call drops every
//! attempt, and once the call has returned no attempt is left running.
//!
//! Events: [`HedgeSent`](crate::core::EventKind::HedgeSent),
//! [`HedgeWon`](crate::core::EventKind::HedgeWon) and
//! [`HedgeBudgetExhausted`](crate::core::EventKind::HedgeBudgetExhausted).
//!
//! # Cost
//!
//! A call answered before the delay costs a copy of the request (made before the first attempt,
//! as a retry's), the budget's deposit, one clock read, and, with the percentile delay, a second
//! clock read and the histogram's record. The timer is created only if the first attempt is still
//! running at its first poll. Nothing is allocated or locked by the layer; the response future
//! holds room for [`MAX_ATTEMPTS`] attempt futures in place.
//!
//! # Where to put it
//!
//! Inside a timeout that propagates deadlines (which bounds all attempts together), over
//! per-attempt timeouts and a balancer. Beside a retry layer, share one budget.
//!
//! # Examples
//!
//! The defaults: one hedge at the 95th percentile of recent latencies.
//!
//! ```
//! use seawall::hedge::HedgeLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(HedgeLayer::new())
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) }));
//! assert_eq!(service.oneshot(21).await.unwrap(), 42);
//! # }
//! ```
//!
//! Tuned: a fixed delay, up to three attempts, a budget shared with a retry layer. The first
//! attempt is slow; the hedge sent after 50 ms answers first.
//!
//! ```
//! use seawall::hedge::HedgeLayer;
//! use seawall::retry::{budget::Budget, RetryLayer};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let budget = Budget::ratio(0.1, 5, Duration::from_secs(10)).unwrap();
//! let hedge = HedgeLayer::builder()
//!     .name("search")
//!     .delay(Duration::from_millis(50))
//!     .max_attempts(3)
//!     .budget(budget.clone())
//!     .build()
//!     .unwrap();
//! let retry = RetryLayer::builder().budget(budget).build().unwrap();
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(retry)
//!     .layer(hedge)
//!     .service(service_fn(move |_: ()| {
//!         let n = counter.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let ms = if n == 0 { 1000 } else { 10 };
//!             tokio::time::sleep(Duration::from_millis(ms)).await;
//!             Ok::<_, std::io::Error>(n)
//!         }
//!     }));
//! let started = tokio::time::Instant::now();
//! assert_eq!(service.oneshot(()).await.unwrap(), 1); // the hedge's answer
//! assert_eq!(started.elapsed(), Duration::from_millis(60));
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

mod config;
pub mod future;
mod layer;
mod service;

pub use config::{Builder, ConfigError, MAX_ATTEMPTS};
pub use layer::HedgeLayer;
pub use service::Hedge;

/// Tells a hedge its attempt number (2 for the first hedge): see [`Builder::mark`]. The first
/// attempt is sent as it came, unmarked.
///
/// `()` marks nothing (the default); a closure `Fn(&mut Req, u32)` is a `Mark`; [`MarkAttempt`]
/// puts an [`Attempt`] in an HTTP request's extensions.
pub trait Mark<Req> {
    /// Marks `req` as attempt number `attempt`.
    fn mark(&self, req: &mut Req, attempt: u32);
}

impl<Req> Mark<Req> for () {
    #[inline(always)]
    fn mark(&self, _req: &mut Req, _attempt: u32) {}
}

impl<Req, F: Fn(&mut Req, u32)> Mark<Req> for F {
    #[inline]
    fn mark(&self, req: &mut Req, attempt: u32) {
        self(req, attempt)
    }
}

/// A hedge's attempt number, in an HTTP request's extensions (put there by [`MarkAttempt`]): a
/// request without one is a first attempt.
///
/// ```
/// use seawall::hedge::Attempt;
///
/// let mut request = http::Request::new(());
/// assert_eq!(Attempt::of(&request), 1);
/// request.extensions_mut().insert(Attempt(2));
/// assert_eq!(Attempt::of(&request), 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempt(pub u32);

#[cfg(feature = "http")]
impl Attempt {
    /// The attempt number of `req`: 1 unless a hedge layer marked it.
    pub fn of<B>(req: &http::Request<B>) -> u32 {
        req.extensions().get::<Attempt>().map_or(1, |a| a.0)
    }
}

/// Puts each hedge's [`Attempt`] in its HTTP request's extensions.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkAttempt;

#[cfg(feature = "http")]
impl<B> Mark<http::Request<B>> for MarkAttempt {
    #[inline]
    fn mark(&self, req: &mut http::Request<B>, attempt: u32) {
        req.extensions_mut().insert(Attempt(attempt));
    }
}
