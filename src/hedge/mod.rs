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
//!   [`min_samples`](Builder::min_samples) (100 by default: a layer that sees under 10 calls a
//!   second never holds that many, and hedges nothing). Each call is one sample, from its first attempt's
//!   start to its first success (a hedged call that took longer than the delay counts as such,
//!   whichever attempt won). The start is the call's first poll: a call whose first attempt
//!   answers then counts as a zero latency, and reads no clock; one that waits reads the clock
//!   then, and that is also when its delay starts. A call that ends without a success (every
//!   attempt failed, a final answer) or is dropped by its caller counts the time it ran only if
//!   that is at least the delay: it would have taken at least that long to succeed, so it keeps
//!   the percentile up, while one ended sooner (a fast failure) says nothing of it and is left
//!   out. The histogram is lock-free and log-linear: a record is one atomic add. Both the
//!   latency and the delay run from the response future's first poll, not from `call`: a
//!   service that starts its work in `call` runs unmeasured until then, and a caller that polls
//!   late makes its calls look faster and its hedges go later than the percentile says.
//! - **the budget**: every hedge takes one retry from a [`Budget`](crate::retry::budget::Budget),
//!   retry's type; none is sent when it is empty. By default it allows `max_extra_load` of the
//!   requests of the last 10 s plus one a second, so that a brownout (every call slower) cannot
//!   make every call a hedged one. Give a retry layer the same budget to make retries and
//!   hedges one bound; when one layer is inside the other, the inner one takes
//!   [`withdraw_only`](crate::retry::budget::Budget::withdraw_only), so that a request makes its
//!   deposit once. A hedge that wins after an earlier attempt failed gives its cost back to a
//!   token bucket, as a retry that succeeds does (through the withdraw-only view, its cost less
//!   `success_refund`, which the outer layer gives back); one that wins only because the first
//!   attempt was slow keeps its cost.
//! - **outcomes**, through the classifier: the first success wins and the other attempts are
//!   dropped at once; a failure the policy would retry sends the next hedge at once (a fast
//!   error never beats a slower success); a final answer (an [`Ignored`](crate::core::Outcome)
//!   outcome, or a failure the policy would not retry) ends the call; a server hint
//!   (`Retry-After`, `grpc-retry-pushback-ms`) holds further hedges back until it has passed, up
//!   to [`max_hint`](Builder::max_hint) (60 s; a longer one stops further hedges); when every
//!   attempt has failed, or the deadline comes with the first attempt's failure in hand, the call
//!   returns the first attempt's result. Two failures
//!   the policy declines stop only further hedges, and the attempts in flight may still answer
//!   (see [`Policy::ends_call`](crate::retry::policy::Policy::ends_call)): an attempt that could
//!   not send its body because another attempt is sending it, and, with [`HedgeLayer::grpc`], a
//!   pushback saying not to retry or RESOURCE_EXHAUSTED without a pushback (as in gRPC's
//!   hedging, A6).
//! - **only requests the policy can replay** are hedged (any `Clone` request by default;
//!   idempotent HTTP requests with replayable bodies with [`HedgeLayer::http`]), and no hedge is
//!   sent at or after the request's [deadline](crate::core::Deadline) (read by the policy). A
//!   hedge is sent only once its copy can be sent whole
//!   ([`Policy::can_replay`](crate::retry::policy::Policy::can_replay)): while the first
//!   attempt is still streaming a [`Buffered`](crate::retry::buffered::Buffered) body, a hedge
//!   that is due waits, and is looked at again a delay later; with no attempt left in flight,
//!   a body that cannot be sent (too large to keep) ends the call at once.
//! - **each hedge is told its attempt number** through [`Mark`] (with the HTTP and gRPC
//!   settings, an [`Attempt`] in its extensions), so that a balancer beneath can send it to
//!   another endpoint.
//!
//! A hedge that is due is checked first against the deadline, its body and the budget (without
//! taking from it), and only then polls the inner service's readiness, which may reserve
//! capacity beneath (a bulkhead's slot); it takes from the budget when it is sent. A hedge that
//! waits for readiness waits while the attempts in flight go on, and gives up its place at the
//! deadline; a service made ready for a hedge that is then not sent is dropped at once, giving
//! back what it reserved. A readiness error stops hedging for the call (it is reported as
//! [`HedgeReadinessFailed`](crate::core::EventKind::HedgeReadinessFailed), and the error itself
//! dropped); the attempts in flight go on. Dropping the call drops every attempt, and once the
//! call has returned no attempt is left running.
//!
//! Events: [`HedgeSent`](crate::core::EventKind::HedgeSent),
//! [`HedgeWon`](crate::core::EventKind::HedgeWon),
//! [`HedgeBudgetExhausted`](crate::core::EventKind::HedgeBudgetExhausted) and
//! [`HedgeReadinessFailed`](crate::core::EventKind::HedgeReadinessFailed).
//!
//! # Cost
//!
//! A call whose first attempt answers at its first poll costs a copy of the request (made before
//! the first attempt, as a retry's), the budget's deposit, a reference to the layer's budget and
//! window, and, with the percentile delay, the histogram's record of a zero latency (one atomic
//! add). It reads no clock and arms no timer. A call still waiting at its first poll reads the
//! clock then (the start of its delay and of its latency), arms the timer, and, with the
//! percentile delay, reads the clock again when it ends, to record its latency. Nothing is
//! allocated or locked by the layer; the response future holds room for two attempt futures in
//! place, and a call that sends a third attempt (`max_attempts` above 2) allocates room for the
//! others then.
//!
//! A call to a real service costs more: the inner service, the classifier and the policy are
//! cloned into each call; the request's copy for HTTP clones its headers, which allocates (five
//! allocations for a request with two headers); a call still running at its first poll arms a
//! timer (a `Sleep` registered with tokio's timer, and a clock read); and each hedge is another
//! call with its own copy of the request. Figures: `docs/hedge.md`.
//!
//! # Where to put it
//!
//! Inside a timeout that propagates deadlines (which bounds all attempts together), over
//! per-attempt timeouts and a balancer. Beside a retry layer, share one budget (the inner of
//! two nested layers takes its [`withdraw_only`](crate::retry::budget::Budget::withdraw_only)
//! view).
//!
//! Caches and fallbacks go **above** it, never beneath: beneath it, the calls they answer at
//! their first poll count as zero latencies and as deposits, which pulls the delay to its 1 ms
//! floor and funds a hedge for every call that reaches the backend (with 97 % cache hits, twice
//! the origin's load). Above it, the layer sees only the calls that reach the backend.
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
//! Tuned: a fixed delay, up to three attempts, a budget shared with a retry layer above it (the
//! hedge layer, inside, takes the budget's withdraw-only view, so that each request deposits
//! once). The first attempt is slow; the hedge sent after 50 ms answers first.
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
//!     .budget(budget.withdraw_only())
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
