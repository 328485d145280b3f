//! The one metrics hook shared by every layer: [`Observer`] and the [`Event`]s it receives.

use super::Outcome;
use std::fmt;
use std::time::Duration;

/// The state of a circuit breaker, as reported in [`EventKind::StateTransition`] and by
/// [`Handle::state`](crate::circuit_breaker::Handle::state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls flow and are measured; a trip rule may open the breaker.
    Closed,
    /// Calls are rejected until the open period ends.
    Open,
    /// A limited number of probe calls decide whether to close or to open again.
    HalfOpen,
    /// Held open by hand: every call is rejected until the breaker is closed or reset.
    ForcedOpen,
    /// Switched off by hand: every call is admitted and nothing is measured.
    Disabled,
    /// Every call is admitted and measured, but the breaker never rejects or trips.
    MetricsOnly,
}

impl CircuitState {
    /// A short, stable label for metrics and logs, such as `"half_open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::Disabled => "disabled",
            CircuitState::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a gate turned a call away, as reported in [`EventKind::Rejected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The circuit breaker is open.
    CircuitOpen,
    /// The circuit breaker is half-open and all its probe slots are taken.
    HalfOpenFull,
    /// The circuit breaker was forced open by hand.
    ForcedOpen,
    /// Every slot of a bulkhead was taken, and it does not queue.
    BulkheadFull,
    /// Every slot of an adaptive concurrency limiter was taken (its current limit reached), and
    /// it does not queue. (Its queue's rejections are `QueueFull` and `QueueTimeout`, as a
    /// bulkhead's.) Answered as a full bulkhead is: [`ErrorKind::BulkheadFull`], 503,
    /// `UNAVAILABLE`.
    ///
    /// [`ErrorKind::BulkheadFull`]: crate::error::ErrorKind::BulkheadFull
    ConcurrencyLimited,
    /// Every slot and every place in the queue were taken.
    QueueFull,
    /// The call waited in the queue for the longest time allowed.
    QueueTimeout,
    /// The service was not ready and the load shedder failed the call instead of waiting.
    Overloaded,
    /// The client-side throttle turned the call away, because the service has been accepting too
    /// few of the calls sent to it.
    Throttled,
    /// A rate limiter had no room for the call in its quota.
    RateLimited,
    /// A fallback to an alternate service was not made: as many fallbacks as allowed were running.
    FallbackFull,
    /// A gate written outside seawall rejected the call.
    Other,
    /// An endpoint pool had no healthy endpoint, and fails fast rather than spreading calls over
    /// every endpoint.
    NoHealthyEndpoint,
    /// An endpoint pool's chosen endpoint left it (removed by discovery, or its probe taken over)
    /// between `poll_ready` and `call`; nothing was sent.
    EndpointUnavailable,
}

impl RejectReason {
    /// A short, stable label for metrics and logs, such as `"circuit_open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::CircuitOpen => "circuit_open",
            RejectReason::HalfOpenFull => "half_open_full",
            RejectReason::ForcedOpen => "forced_open",
            RejectReason::BulkheadFull => "bulkhead_full",
            RejectReason::ConcurrencyLimited => "concurrency_limited",
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::Overloaded => "overloaded",
            RejectReason::Throttled => "throttled",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::FallbackFull => "fallback_full",
            RejectReason::Other => "other",
            RejectReason::NoHealthyEndpoint => "no_healthy_endpoint",
            RejectReason::EndpointUnavailable => "endpoint_unavailable",
        }
    }
}

/// Why a timeout layer gave up on a call, as reported in [`EventKind::TimedOut`] and by
/// [`Elapsed::cause`](crate::timeout::error::Elapsed::cause).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutCause {
    /// The layer's own timeout ran out.
    Timeout,
    /// The deadline the request carried, set further out, came first.
    Deadline,
    /// The request's deadline had already passed when it arrived: the inner service was not called.
    Expired,
}

impl TimeoutCause {
    /// A short, stable label for metrics and logs, such as `"deadline"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutCause::Timeout => "timeout",
            TimeoutCause::Deadline => "deadline",
            TimeoutCause::Expired => "expired",
        }
    }
}

impl fmt::Display for TimeoutCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a retry layer waits before the next attempt, as reported in [`EventKind::RetryScheduled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryReason {
    /// The backoff chose the delay.
    Backoff,
    /// The server said when to come back (`Retry-After` or a similar hint).
    ServerHint,
}

impl RetryReason {
    /// A short, stable label for metrics and logs, such as `"server_hint"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Backoff => "backoff",
            RetryReason::ServerHint => "server_hint",
        }
    }
}

/// Why a retry layer stopped retrying a failed call, as reported in [`EventKind::GaveUp`]. The
/// last attempt's outcome is returned to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The maximum number of retries was reached.
    Attempts,
    /// Another retry would end past the maximum total time.
    Elapsed,
    /// Another retry would end past the request's deadline.
    Deadline,
    /// The retry budget had nothing left.
    Budget,
    /// The server asked to wait longer than the configured maximum.
    HintTooLong,
    /// The request may not be retried: the policy declined it (not idempotent, a body that cannot
    /// be replayed, a predicate that said no).
    NotRetryable,
}

impl GiveUpReason {
    /// A short, stable label for metrics and logs, such as `"budget"`.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Attempts => "attempts",
            GiveUpReason::Elapsed => "elapsed",
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::Budget => "budget",
            GiveUpReason::HintTooLong => "hint_too_long",
            GiveUpReason::NotRetryable => "not_retryable",
        }
    }
}

/// Why an endpoint pool ejected an endpoint, as reported in [`EventKind::EndpointEjected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectReason {
    /// Its calls failed upstream (an answer the classifier called a failure, such as a 5xx)
    /// this many times in a row.
    ConsecutiveFailures,
    /// Its calls failed locally (the service's own error: connect, reset, timeout) this many
    /// times in a row.
    ConsecutiveLocalFailures,
    /// Too large a share of its recent calls failed.
    FailurePercentage,
    /// Its success rate fell too far below the other endpoints'.
    SuccessRate,
    /// It answered with a server hint to stay away (`Retry-After` on a 429 or 503).
    RetryAfter,
    /// Its readiness failed (`poll_ready` returned an error).
    NotReady,
    /// The probe sent when its last ejection ended failed.
    ProbeFailed,
}

impl EjectReason {
    /// A short, stable label for metrics and logs, such as `"consecutive_failures"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::ConsecutiveFailures => "consecutive_failures",
            EjectReason::ConsecutiveLocalFailures => "consecutive_local_failures",
            EjectReason::FailurePercentage => "failure_percentage",
            EjectReason::SuccessRate => "success_rate",
            EjectReason::RetryAfter => "retry_after",
            EjectReason::NotReady => "not_ready",
            EjectReason::ProbeFailed => "probe_failed",
        }
    }
}

/// What happened, in an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A call was admitted: sent when the call is made (`call`), not when its capacity was
    /// reserved (`poll_ready`). Capacity reserved and given back unused (a layer above refused the
    /// request in its own `call`, or the service was dropped before any call) sends nothing.
    Permitted,
    /// A call was turned away before reaching the inner service.
    Rejected {
        /// Why.
        reason: RejectReason,
    },
    /// An admitted call finished and was classified.
    Finished {
        /// Its outcome.
        outcome: Outcome,
        /// How long it took, when timing was wanted (see [`Observer::wants_latency`]).
        latency: Option<Duration>,
    },
    /// An admitted call (one reported [`Permitted`](Self::Permitted)) was dropped before it
    /// finished. Nothing about it was counted.
    Cancelled,
    /// A timeout layer gave up on a call (or, for [`TimeoutCause::Expired`], did not start it).
    TimedOut {
        /// How long the call ran before it was given up on.
        elapsed: Duration,
        /// Whose limit ran out.
        cause: TimeoutCause,
    },
    /// A retry layer started attempt number `attempt` (1 for the first) of a call.
    AttemptStarted {
        /// The attempt's number.
        attempt: u32,
    },
    /// An attempt of a retry layer ended and was classified.
    AttemptFinished {
        /// The attempt's number.
        attempt: u32,
        /// Its outcome.
        outcome: Outcome,
        /// How long it took, when timing was wanted (see [`Observer::wants_latency`]).
        latency: Option<Duration>,
    },
    /// A retry layer will make attempt number `attempt` after waiting `delay`.
    RetryScheduled {
        /// The number of the attempt to come.
        attempt: u32,
        /// How long it waits first.
        delay: Duration,
        /// What chose the delay.
        reason: RetryReason,
    },
    /// A retry layer stopped retrying after `attempts` attempts; the last outcome is returned.
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Why there was no other.
        reason: GiveUpReason,
    },
    /// A hedge layer sent attempt number `attempt` (2 for the first hedge) of a call, while the
    /// attempts before it were still running or had failed.
    HedgeSent {
        /// The attempt's number.
        attempt: u32,
    },
    /// A hedge (attempt number `attempt`, 2 or more) answered a call first, with a success: the
    /// attempts still running were dropped.
    HedgeWon {
        /// The winning attempt's number.
        attempt: u32,
    },
    /// A hedge layer would have sent attempt number `attempt`, but its budget had nothing left:
    /// the call waits for the attempts already sent.
    HedgeBudgetExhausted {
        /// The number of the attempt not sent.
        attempt: u32,
    },
    /// A hedge layer would have sent attempt number `attempt`, but the inner service's
    /// readiness failed (its error is dropped): no more hedges are sent for the call, and the
    /// attempts already sent may still answer it.
    HedgeReadinessFailed {
        /// The number of the attempt not sent.
        attempt: u32,
    },
    /// An adaptive limiter changed its concurrency limit.
    LimitChanged {
        /// The limit before.
        from: u64,
        /// The limit now.
        to: u64,
    },
    /// A fallback layer answered in place of the service.
    FallbackUsed {
        /// What made it fall back.
        trigger: FallbackTrigger,
        /// How long the call took, the fallback included, when timing was wanted (see
        /// [`Observer::wants_latency`]).
        latency: Option<Duration>,
    },
    /// A keyed rate limiter dropped a key's state to make room for a new key. An `idle` key had
    /// its whole burst available, so nothing about it was lost; any other starts afresh if it
    /// comes back.
    KeyEvicted {
        /// Whether the key was idle.
        idle: bool,
    },
    /// A fleet-wide rate limiter's shared store, or a cache's shared tier, became unreachable
    /// (`degraded`: a rate limiter's calls without a lease are decided by its failure mode, a
    /// cache's memory tier serves alone) or answered again (not `degraded`).
    StoreHealth {
        /// Whether the store is degraded now.
        degraded: bool,
    },
    /// A circuit breaker changed state.
    StateTransition {
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
    },
    /// A cache answered a call from its store, without waiting on the inner service: a fresh
    /// answer, or (`stale`) one served stale while it is refreshed in the background or while a
    /// failing key waits to be asked again.
    CacheHit {
        /// Whether the answer was stale.
        stale: bool,
    },
    /// A cache had no answer to serve: the call was made on the inner service, or (`coalesced`)
    /// waited on another caller's call for the same key.
    CacheMiss {
        /// Whether the call waited on another caller's call.
        coalesced: bool,
    },
    /// A cache started a background refresh of a key: an `early` one (probabilistic early
    /// refresh of a fresh answer), or one of a stale answer served while it is revalidated.
    CacheRefresh {
        /// Whether the answer was still fresh.
        early: bool,
    },
    /// A cache's store evicted `entries` entries to make room for new ones.
    CacheEvicted {
        /// How many.
        entries: u64,
    },
    /// A cache's shared tier (its Redis store) settled a miss of this instance's memory tier.
    CacheTierFill {
        /// How.
        fill: TierFill,
    },
    /// A cache's shared tier stored an answer this instance computed, for the other instances.
    CacheTierWrite,
    /// A call to a cache's shared tier failed, timed out or was refused by its breaker: it
    /// counted as "the shared tier has nothing" (a read, a lock), or what it wrote was lost (a
    /// write), and the memory tier went on alone.
    CacheTierFailed {
        /// Which call.
        op: TierOp,
    },
    /// A layer was built, and starts in this state: sent once, before any other event of the
    /// layer, by the layers whose state is a gauge (a circuit breaker, an adaptive limiter), so
    /// that the gauge exists from the start rather than from its first change. It is no change:
    /// no transition, no limit moved.
    Started {
        /// A circuit breaker's state.
        state: Option<CircuitState>,
        /// An adaptive limiter's concurrency limit.
        limit: Option<u64>,
    },
    /// An endpoint pool took the endpoint named by the event's key out of rotation for
    /// `duration` (its connection is kept; one probe goes to it when the time is up).
    EndpointEjected {
        /// Why.
        reason: EjectReason,
        /// For how long.
        duration: Duration,
    },
    /// An endpoint pool put the ejected endpoint named by the event's key back in rotation: its
    /// probe succeeded.
    EndpointReturned,
    /// An endpoint joined a pool (built with it, or inserted by discovery).
    EndpointAdded,
    /// Discovery removed an endpoint from a pool.
    EndpointRemoved {
        /// Whether it was ejected (or being probed) when it left.
        ejected: bool,
    },
}

/// How a cache's shared tier (its Redis store) settled a miss of this instance's memory tier, as
/// reported in [`EventKind::CacheTierFill`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TierFill {
    /// Answered with a fresh answer the shared tier held (another instance computed it): the
    /// backend was not called.
    Shared,
    /// Another instance holds the key's lock and is computing it: answered with the stale
    /// answer the shared tier held, which may still be served.
    SharedStale,
    /// Took the key's lock and called the backend: this instance computes the key for the fleet.
    Locked,
    /// Another instance held the key's lock for the longest wait allowed and the shared tier had
    /// nothing to serve: called the backend without the lock.
    LockWaitExpired,
    /// The shared tier failed (an error, a timeout or its open breaker): called the backend
    /// without the lock, the memory tier going on alone.
    Unavailable,
}

impl TierFill {
    /// A short, stable label for metrics and logs, such as `"shared_stale"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TierFill::Shared => "shared",
            TierFill::SharedStale => "shared_stale",
            TierFill::Locked => "locked",
            TierFill::LockWaitExpired => "lock_wait_expired",
            TierFill::Unavailable => "unavailable",
        }
    }
}

/// Which call to a cache's shared tier failed, as reported in [`EventKind::CacheTierFailed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TierOp {
    /// Reading a key's answer.
    Read,
    /// Taking a key's lock.
    Lock,
    /// Writing an answer (and letting the key's lock go).
    Write,
    /// Letting a key's lock go.
    Unlock,
}

impl TierOp {
    /// A short, stable label for metrics and logs, such as `"read"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TierOp::Read => "read",
            TierOp::Lock => "lock",
            TierOp::Write => "write",
            TierOp::Unlock => "unlock",
        }
    }
}

/// What made a fallback layer answer in place of the service, in [`EventKind::FallbackUsed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackTrigger {
    /// A seawall rejection of this kind (an open breaker, a timeout, ...).
    Rejected(crate::error::ErrorKind),
    /// Any other error.
    Error,
    /// A response the classifier called a failure (an HTTP 503 from upstream, say).
    FailedResponse,
}

impl FallbackTrigger {
    /// A short, stable label for metrics and logs: the rejection's label (`"circuit_open"`),
    /// `"error"` or `"failed_response"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackTrigger::Rejected(kind) => kind.as_str(),
            FallbackTrigger::Error => "error",
            FallbackTrigger::FailedResponse => "failed_response",
        }
    }
}

/// One decision of one layer, delivered to an [`Observer`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Event<'a> {
    /// The name given to the layer (for example `"payments-api"`).
    pub layer: &'a str,
    /// What happened.
    pub kind: EventKind,
    /// The key the decision was about, for layers that keep state per key (a keyed rate limiter's
    /// client address, API key or tenant).
    pub key: Option<&'a dyn fmt::Debug>,
}

impl PartialEq for Event<'_> {
    /// Keys are compared by their `Debug` form.
    fn eq(&self, other: &Self) -> bool {
        let key = |e: &Self| e.key.map(|k| format!("{k:?}"));
        self.layer == other.layer && self.kind == other.kind && key(self) == key(other)
    }
}

/// The metrics hook: receives every [`Event`] of the layers it is given to.
///
/// `()` is the no-op observer and compiles away entirely. Any `Fn(&Event<'_>)` closure is an
/// observer, and [`TracingObserver`] turns events into `tracing` events.
///
/// Observers are called on the request path: they must not block, and should not panic (a panicking
/// observer cannot corrupt a layer's state, since events are sent after each state change is complete,
/// but the panic reaches the caller).
///
/// # Example
///
/// ```
/// use seawall::core::{Event, EventKind, Observer};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let rejected = Arc::new(AtomicU64::new(0));
/// let count = rejected.clone();
/// let observer = move |event: &Event<'_>| {
///     if let EventKind::Rejected { .. } = event.kind {
///         count.fetch_add(1, Ordering::Relaxed);
///     }
/// };
/// # observer.on_event(&Event::new("x", EventKind::Permitted));
/// # assert_eq!(rejected.load(Ordering::Relaxed), 0);
/// ```
pub trait Observer: Send + Sync + 'static {
    /// Receives one event.
    fn on_event(&self, event: &Event<'_>);

    /// Whether this observer wants the latency of finished calls. When neither the observer nor the
    /// layer's rules need it, the clock is never read on the call path.
    fn wants_latency(&self) -> bool {
        true
    }

    /// `false` only for observers that ignore every event, such as `()`. Layers skip the work of
    /// preparing events (for a timeout, keeping a reference to report a cancelled call) when it is
    /// false, so it must not be false for an observer that wants events.
    const ENABLED: bool = true;
}

impl<'a> Event<'a> {
    /// An event of the layer named `layer`.
    pub fn new(layer: &'a str, kind: EventKind) -> Self {
        Event {
            layer,
            kind,
            key: None,
        }
    }

    /// The same event, about `key`.
    pub fn with_key(mut self, key: &'a dyn fmt::Debug) -> Self {
        self.key = Some(key);
        self
    }
}

impl Observer for () {
    const ENABLED: bool = false;

    #[inline(always)]
    fn on_event(&self, _event: &Event<'_>) {}

    #[inline(always)]
    fn wants_latency(&self) -> bool {
        false
    }
}

impl<F> Observer for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

/// An [`Observer`] that writes every event to `tracing`, under the target `seawall`.
///
/// State transitions are logged at `INFO` (`WARN` when a breaker opens), rejections at `DEBUG`,
/// admissions and finished calls at `TRACE`. When no subscriber listens at `TRACE`, latency is not
/// measured for its sake.
///
/// ```
/// use seawall::circuit_breaker::CircuitBreakerLayer;
/// use seawall::core::TracingObserver;
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("inventory")
///     .observer(TracingObserver)
///     .build()
///     .unwrap();
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingObserver;

impl Observer for TracingObserver {
    fn on_event(&self, event: &Event<'_>) {
        let layer = event.layer;
        match event.kind {
            EventKind::Permitted => tracing::trace!(target: "seawall", layer, "permitted"),
            EventKind::Rejected { reason } => match event.key {
                Some(key) => tracing::debug!(
                    target: "seawall",
                    layer,
                    reason = reason.as_str(),
                    key = ?key,
                    "rejected"
                ),
                None => {
                    tracing::debug!(target: "seawall", layer, reason = reason.as_str(), "rejected")
                }
            },
            EventKind::Finished { outcome, latency } => tracing::trace!(
                target: "seawall",
                layer,
                outcome = outcome.as_str(),
                latency_us = latency.map(|l| l.as_micros() as u64),
                "finished"
            ),
            EventKind::Cancelled => tracing::trace!(target: "seawall", layer, "cancelled"),
            EventKind::AttemptStarted { attempt } => {
                tracing::trace!(target: "seawall", layer, attempt, "attempt started")
            }
            EventKind::AttemptFinished {
                attempt,
                outcome,
                latency,
            } => tracing::trace!(
                target: "seawall",
                layer,
                attempt,
                outcome = outcome.as_str(),
                latency_us = latency.map(|l| l.as_micros() as u64),
                "attempt finished"
            ),
            EventKind::RetryScheduled {
                attempt,
                delay,
                reason,
            } => tracing::debug!(
                target: "seawall",
                layer,
                attempt,
                delay_us = delay.as_micros() as u64,
                reason = reason.as_str(),
                "retry scheduled"
            ),
            EventKind::GaveUp { attempts, reason } => tracing::debug!(
                target: "seawall",
                layer,
                attempts,
                reason = reason.as_str(),
                "gave up retrying"
            ),
            EventKind::HedgeSent { attempt } => {
                tracing::debug!(target: "seawall", layer, attempt, "hedge sent")
            }
            EventKind::HedgeWon { attempt } => {
                tracing::debug!(target: "seawall", layer, attempt, "hedge won")
            }
            EventKind::HedgeBudgetExhausted { attempt } => {
                tracing::debug!(target: "seawall", layer, attempt, "hedge budget exhausted")
            }
            EventKind::HedgeReadinessFailed { attempt } => {
                tracing::debug!(target: "seawall", layer, attempt, "hedge readiness failed")
            }
            EventKind::LimitChanged { from, to } => {
                tracing::debug!(target: "seawall", layer, from, to, "limit changed")
            }
            EventKind::FallbackUsed { trigger, latency } => tracing::debug!(
                target: "seawall",
                layer,
                trigger = trigger.as_str(),
                latency_us = latency.map(|l| l.as_micros() as u64),
                "fell back"
            ),
            EventKind::KeyEvicted { idle } => {
                tracing::trace!(target: "seawall", layer, idle, "key evicted")
            }
            EventKind::StoreHealth { degraded: true } => {
                tracing::warn!(target: "seawall", layer, degraded = true, "store degraded")
            }
            EventKind::StoreHealth { degraded: false } => {
                tracing::info!(target: "seawall", layer, degraded = false, "store recovered")
            }
            EventKind::CacheHit { stale } => {
                tracing::trace!(target: "seawall", layer, stale, "cache hit")
            }
            EventKind::CacheMiss { coalesced } => {
                tracing::trace!(target: "seawall", layer, coalesced, "cache miss")
            }
            EventKind::CacheRefresh { early } => {
                tracing::debug!(target: "seawall", layer, early, "cache refresh")
            }
            EventKind::CacheEvicted { entries } => {
                tracing::debug!(target: "seawall", layer, entries, "cache evicted")
            }
            EventKind::CacheTierFill { fill } => {
                tracing::trace!(target: "seawall", layer, fill = fill.as_str(), "cache tier fill")
            }
            EventKind::CacheTierWrite => {
                tracing::trace!(target: "seawall", layer, "cache tier write")
            }
            EventKind::CacheTierFailed { op } => {
                tracing::debug!(target: "seawall", layer, op = op.as_str(), "cache tier failed")
            }
            EventKind::TimedOut { elapsed, cause } => tracing::debug!(
                target: "seawall",
                layer,
                cause = cause.as_str(),
                elapsed_us = elapsed.as_micros() as u64,
                "timed out"
            ),
            EventKind::Started { state, limit } => tracing::debug!(
                target: "seawall",
                layer,
                state = state.map(CircuitState::as_str),
                limit,
                "started"
            ),
            EventKind::EndpointEjected { reason, duration } => match event.key {
                Some(key) => tracing::warn!(
                    target: "seawall",
                    layer,
                    reason = reason.as_str(),
                    duration_ms = duration.as_millis() as u64,
                    endpoint = ?key,
                    "endpoint ejected"
                ),
                None => tracing::warn!(
                    target: "seawall",
                    layer,
                    reason = reason.as_str(),
                    duration_ms = duration.as_millis() as u64,
                    "endpoint ejected"
                ),
            },
            EventKind::EndpointReturned => match event.key {
                Some(key) => {
                    tracing::info!(target: "seawall", layer, endpoint = ?key, "endpoint returned")
                }
                None => tracing::info!(target: "seawall", layer, "endpoint returned"),
            },
            EventKind::EndpointAdded => match event.key {
                Some(key) => {
                    tracing::debug!(target: "seawall", layer, endpoint = ?key, "endpoint added")
                }
                None => tracing::debug!(target: "seawall", layer, "endpoint added"),
            },
            EventKind::EndpointRemoved { ejected } => match event.key {
                Some(key) => tracing::debug!(
                    target: "seawall",
                    layer,
                    ejected,
                    endpoint = ?key,
                    "endpoint removed"
                ),
                None => tracing::debug!(target: "seawall", layer, ejected, "endpoint removed"),
            },
            EventKind::StateTransition { from, to } => match to {
                CircuitState::Open | CircuitState::ForcedOpen => tracing::warn!(
                    target: "seawall",
                    layer,
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker state transition"
                ),
                _ => tracing::info!(
                    target: "seawall",
                    layer,
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker state transition"
                ),
            },
        }
    }

    fn wants_latency(&self) -> bool {
        tracing::enabled!(target: "seawall", tracing::Level::TRACE)
    }
}

/// A listening observer's source, kept by a response future until its call ends; dropped before
/// that, it reports the call as [`EventKind::Cancelled`]. Holds nothing for `()`.
#[cfg(any(feature = "timeout", feature = "retry", feature = "hedge"))]
pub(crate) struct Listener<O: Observer>(Option<std::sync::Arc<Source<O>>>);

#[cfg(any(feature = "timeout", feature = "retry", feature = "hedge"))]
impl<O: Observer> Listener<O> {
    /// Keeps `source` if its observer listens at all.
    #[inline(always)]
    pub(crate) fn new(source: &std::sync::Arc<Source<O>>) -> Self {
        Listener(O::ENABLED.then(|| source.clone()))
    }

    /// Nothing to report to.
    #[cfg(feature = "timeout")]
    #[inline(always)]
    pub(crate) fn none() -> Self {
        Listener(None)
    }

    /// Sends `kind`, if listening.
    #[inline(always)]
    pub(crate) fn emit(&self, kind: EventKind) {
        if O::ENABLED {
            if let Some(source) = &self.0 {
                source.emitter().emit(kind);
            }
        }
    }

    /// Whether the observer wants latencies.
    #[cfg(any(feature = "retry", feature = "hedge"))]
    #[inline(always)]
    pub(crate) fn wants_latency(&self) -> bool {
        O::ENABLED
            && self
                .0
                .as_ref()
                .is_some_and(|s| s.observer().wants_latency())
    }

    /// The call has ended: dropping the future now is not a cancellation.
    #[inline(always)]
    pub(crate) fn done(&mut self) {
        if O::ENABLED {
            self.0 = None;
        }
    }

    /// The call has ended, and `kind` says how: marked done before `kind` is sent, so that an
    /// observer panicking at it leaves the call ended, not reported as cancelled.
    #[cfg(any(feature = "retry", feature = "hedge"))]
    #[inline(always)]
    pub(crate) fn done_with(&mut self, kind: EventKind) {
        if O::ENABLED {
            if let Some(source) = self.0.take() {
                source.emitter().emit(kind);
            }
        }
    }
}

#[cfg(any(feature = "timeout", feature = "retry", feature = "hedge"))]
impl<O: Observer> Drop for Listener<O> {
    #[inline(always)]
    fn drop(&mut self) {
        if O::ENABLED {
            if let Some(source) = self.0.take() {
                source.emitter().emit_from_drop(EventKind::Cancelled);
            }
        }
    }
}

/// A layer's name together with its observer: where a layer's events come from.
#[derive(Clone, Debug)]
pub struct Source<O> {
    name: std::borrow::Cow<'static, str>,
    observer: O,
}

impl<O> Source<O> {
    /// Pairs a layer name with an observer.
    pub fn new(name: impl Into<std::borrow::Cow<'static, str>>, observer: O) -> Self {
        Source {
            name: name.into(),
            observer,
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// An [`Emitter`] sending this source's events.
    #[inline(always)]
    pub fn emitter(&self) -> Emitter<'_, O> {
        Emitter(self)
    }
}

/// An observer shared by several [`Source`]s: the layers configured without a builder (a timeout,
/// a load shedder, a fallback) keep theirs this way, so that `.name(..)` can come after
/// `.observer(..)` (a new source, the same observer) on a layer that may already have been cloned.
#[cfg(any(feature = "timeout", feature = "limit", feature = "fallback"))]
pub(crate) struct SharedObserver<O>(std::sync::Arc<O>);

#[cfg(any(feature = "timeout", feature = "limit", feature = "fallback"))]
impl<O> Clone for SharedObserver<O> {
    fn clone(&self) -> Self {
        SharedObserver(self.0.clone())
    }
}

#[cfg(any(feature = "timeout", feature = "limit", feature = "fallback"))]
impl<O: Observer> Observer for SharedObserver<O> {
    const ENABLED: bool = O::ENABLED;

    #[inline(always)]
    fn on_event(&self, event: &Event<'_>) {
        self.0.on_event(event)
    }

    #[inline(always)]
    fn wants_latency(&self) -> bool {
        self.0.wants_latency()
    }
}

/// The name and observer of a layer configured without a builder, shared by the layer, its
/// clones and every service it makes.
#[cfg(any(feature = "timeout", feature = "limit", feature = "fallback"))]
pub(crate) type LayerSource<O> = std::sync::Arc<Source<SharedObserver<O>>>;

#[cfg(any(feature = "timeout", feature = "limit", feature = "fallback"))]
impl<O> Source<SharedObserver<O>> {
    /// A layer's source named `name`, sending to `observer`.
    pub(crate) fn shared(
        name: impl Into<std::borrow::Cow<'static, str>>,
        observer: O,
    ) -> LayerSource<O> {
        std::sync::Arc::new(Source::new(
            name,
            SharedObserver(std::sync::Arc::new(observer)),
        ))
    }

    /// A new source with this one's observer and another name; this one, and the layers and
    /// services that hold it, are left as they are.
    pub(crate) fn renamed(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
    ) -> LayerSource<O> {
        std::sync::Arc::new(Source::new(name, self.observer.clone()))
    }

    /// A new source with this one's name and another observer.
    pub(crate) fn observed<O2>(&self, observer: O2) -> LayerSource<O2> {
        Source::shared(self.name.clone(), observer)
    }
}

/// What gates send events through: a reference to a layer's [`Source`], one pointer wide and
/// `Copy`, so that passing it costs nothing when the observer is `()`.
#[derive(Debug)]
pub struct Emitter<'a, O>(&'a Source<O>);

impl<O> Clone for Emitter<'_, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<O> Copy for Emitter<'_, O> {}

impl<'a, O: Observer> Emitter<'a, O> {
    /// Sends one event.
    #[inline(always)]
    pub fn emit(self, kind: EventKind) {
        self.0.observer.on_event(&Event::new(&self.0.name, kind))
    }

    /// Sends one event from a destructor: not while a panic unwinds, when a second panic from the
    /// observer would abort the process. (What the destructor gives back is given back either way.)
    #[inline(always)]
    pub(crate) fn emit_from_drop(self, kind: EventKind) {
        if O::ENABLED && !std::thread::panicking() {
            self.emit(kind)
        }
    }

    /// Sends one event about `key` from a destructor, as [`emit_from_drop`](Self::emit_from_drop).
    #[inline(always)]
    pub(crate) fn emit_keyed_from_drop(self, kind: EventKind, key: &dyn fmt::Debug) {
        if O::ENABLED && !std::thread::panicking() {
            self.emit_keyed(kind, key)
        }
    }

    /// Sends one event about `key`.
    #[inline(always)]
    pub fn emit_keyed(self, kind: EventKind, key: &dyn fmt::Debug) {
        if O::ENABLED {
            self.0
                .observer
                .on_event(&Event::new(&self.0.name, kind).with_key(key))
        }
    }

    /// The layer's name.
    pub fn layer(self) -> &'a str {
        &self.0.name
    }
}
