//! [`MetricsObserver`]: every layer's events as metrics, through the `metrics`
//! facade (feature `metrics`), so that any exporter (Prometheus, StatsD, OpenTelemetry) works.
//!
//! | metric | kind | labels | recorded on |
//! |---|---|---|---|
//! | `seawall_permitted_total` | counter | `layer` | a call admitted by a gate |
//! | `seawall_rejected_total` | counter | `layer`, `reason` | a call turned away ([`RejectReason::as_str`]) |
//! | `seawall_calls_total` | counter | `layer`, `outcome` | an admitted call finished (`success`, `failure`, `ignored`) |
//! | `seawall_call_duration_seconds` | histogram | `layer`, `outcome` | the same, when timed |
//! | `seawall_cancelled_total` | counter | `layer` | an admitted call dropped before it finished |
//! | `seawall_timeouts_total` | counter | `layer`, `cause` | a timeout ([`TimeoutCause::as_str`]) |
//! | `seawall_attempts_started_total` | counter | `layer` | a retry layer started an attempt (the first included) |
//! | `seawall_attempts_total` | counter | `layer`, `outcome` | an attempt of a retry layer finished |
//! | `seawall_retries_total` | counter | `layer`, `reason` | a retry scheduled (`backoff`, `server_hint`) |
//! | `seawall_retry_give_ups_total` | counter | `layer`, `reason` | a retry layer gave up ([`GiveUpReason::as_str`]) |
//! | `seawall_hedges_total` | counter | `layer` | a hedge layer sent a hedge (an attempt after the first) |
//! | `seawall_hedges_won_total` | counter | `layer` | a hedge answered first, with a success |
//! | `seawall_hedge_budget_exhausted_total` | counter | `layer` | a hedge not sent: the budget was empty |
//! | `seawall_hedge_readiness_failures_total` | counter | `layer` | a hedge not sent: the service's readiness failed |
//! | `seawall_circuit_state` | gauge | `layer`, `state` | 1 for the state a breaker entered (or was built in), 0 for the one it left |
//! | `seawall_circuit_transitions_total` | counter | `layer`, `from`, `to` | a breaker changed state |
//! | `seawall_concurrency_limit` | gauge | `layer` | an adaptive limiter was built or moved its limit |
//! | `seawall_fallbacks_total` | counter | `layer`, `trigger` | a fallback answered ([`FallbackTrigger::as_str`]) |
//! | `seawall_keys_evicted_total` | counter | `layer`, `idle` | a keyed rate limiter dropped a key |
//! | `seawall_store_degraded` | gauge | `layer` | 1 while a fleet rate limiter's store or a cache's shared tier is degraded, else 0 |
//! | `seawall_cache_hits_total` | counter | `layer`, `stale` | a cache answered from its store (`stale`: `true` or `false`) |
//! | `seawall_cache_misses_total` | counter | `layer`, `coalesced` | a cache called the service, or (`coalesced`) waited on another caller's call |
//! | `seawall_cache_refreshes_total` | counter | `layer`, `early` | a cache started a background refresh (`early`: of a fresh answer) |
//! | `seawall_cache_evictions_total` | counter | `layer` | a cache's store evicted entries to make room |
//! | `seawall_cache_tier_fills_total` | counter | `layer`, `fill` | a cache's shared tier settled a miss ([`TierFill::as_str`]) |
//! | `seawall_cache_tier_writes_total` | counter | `layer` | a cache's shared tier stored an answer this instance computed |
//! | `seawall_cache_tier_failures_total` | counter | `layer`, `op` | a call to a cache's shared tier failed ([`TierOp::as_str`]) |
//! | `seawall_pool_ejections_total` | counter | `layer`, `reason` | an endpoint pool ejected an endpoint ([`EjectReason::as_str`]) |
//! | `seawall_pool_returns_total` | counter | `layer` | an endpoint pool put an ejected endpoint back |
//! | `seawall_pool_endpoints` | gauge | `layer` | the endpoints of a pool (moved as they are added and removed) |
//! | `seawall_pool_ejected` | gauge | `layer` | the endpoints of a pool ejected now |
//!
//! `layer` is the name given to the layer. Label values are the stable `as_str` labels of the
//! event types. The two gauges exist from the moment their layer is built (from its
//! [`Started`](EventKind::Started) event), so install the recorder before building the layers.
//!
//! An observer registers its series with the installed recorder the first time each is used, and
//! from then on an event costs an atomic update and no allocation. One observer (and its clones)
//! keeps the series of up to eight layers, so that a stack's parts can share one (see
//! `seawall::stack`): an event finds its layer's among them by name. Events of further layers
//! sharing it are recorded too, but look their series up (allocating) every time: give a busy
//! layer beyond those its own `MetricsObserver`.
//!
//! ```
//! use seawall::circuit_breaker::CircuitBreakerLayer;
//! use seawall::metrics::MetricsObserver;
//!
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .observer(MetricsObserver::new())
//!     .build()
//!     .unwrap();
//! # drop(breaker);
//! ```

use crate::core::{
    CircuitState, EjectReason, Event, EventKind, FallbackTrigger, GiveUpReason, Observer, Outcome,
    RejectReason, RetryReason, TierFill, TierOp, TimeoutCause,
};
use crate::error::ErrorKind;
use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, SharedString};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// An enum with a label per variant, numbered from 0.
trait Labelled: Copy {
    const COUNT: usize;
    fn index(self) -> usize;
    fn label(self) -> &'static str;
}

impl Labelled for Outcome {
    const COUNT: usize = 3;
    fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Ignored => 2,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for RejectReason {
    const COUNT: usize = 14;
    fn index(self) -> usize {
        match self {
            RejectReason::CircuitOpen => 0,
            RejectReason::HalfOpenFull => 1,
            RejectReason::ForcedOpen => 2,
            RejectReason::BulkheadFull => 3,
            RejectReason::QueueFull => 4,
            RejectReason::QueueTimeout => 5,
            RejectReason::Overloaded => 6,
            RejectReason::Throttled => 7,
            RejectReason::RateLimited => 8,
            RejectReason::FallbackFull => 9,
            RejectReason::Other => 10,
            RejectReason::ConcurrencyLimited => 11,
            RejectReason::NoHealthyEndpoint => 12,
            RejectReason::EndpointUnavailable => 13,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for TimeoutCause {
    const COUNT: usize = 3;
    fn index(self) -> usize {
        match self {
            TimeoutCause::Timeout => 0,
            TimeoutCause::Deadline => 1,
            TimeoutCause::Expired => 2,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for RetryReason {
    const COUNT: usize = 2;
    fn index(self) -> usize {
        match self {
            RetryReason::Backoff => 0,
            RetryReason::ServerHint => 1,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for GiveUpReason {
    const COUNT: usize = 6;
    fn index(self) -> usize {
        match self {
            GiveUpReason::Attempts => 0,
            GiveUpReason::Elapsed => 1,
            GiveUpReason::Deadline => 2,
            GiveUpReason::Budget => 3,
            GiveUpReason::HintTooLong => 4,
            GiveUpReason::NotRetryable => 5,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for CircuitState {
    const COUNT: usize = 6;
    fn index(self) -> usize {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
            CircuitState::ForcedOpen => 3,
            CircuitState::Disabled => 4,
            CircuitState::MetricsOnly => 5,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for FallbackTrigger {
    const COUNT: usize = ErrorKind::COUNT + 2;
    fn index(self) -> usize {
        match self {
            FallbackTrigger::Rejected(kind) => kind.index(),
            FallbackTrigger::Error => ErrorKind::COUNT,
            FallbackTrigger::FailedResponse => ErrorKind::COUNT + 1,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for EjectReason {
    const COUNT: usize = 7;
    fn index(self) -> usize {
        match self {
            EjectReason::ConsecutiveFailures => 0,
            EjectReason::ConsecutiveLocalFailures => 1,
            EjectReason::FailurePercentage => 2,
            EjectReason::SuccessRate => 3,
            EjectReason::RetryAfter => 4,
            EjectReason::NotReady => 5,
            EjectReason::ProbeFailed => 6,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for TierFill {
    const COUNT: usize = 5;
    fn index(self) -> usize {
        match self {
            TierFill::Shared => 0,
            TierFill::SharedStale => 1,
            TierFill::Locked => 2,
            TierFill::LockWaitExpired => 3,
            TierFill::Unavailable => 4,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for TierOp {
    const COUNT: usize = 4;
    fn index(self) -> usize {
        match self {
            TierOp::Read => 0,
            TierOp::Lock => 1,
            TierOp::Write => 2,
            TierOp::Unlock => 3,
        }
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Labelled for bool {
    const COUNT: usize = 2;
    fn index(self) -> usize {
        usize::from(self)
    }
    fn label(self) -> &'static str {
        if self {
            "true"
        } else {
            "false"
        }
    }
}

/// The handles of one family of series, one per label value, registered on first use.
struct Family<T, const N: usize>([OnceLock<T>; N]);

impl<T, const N: usize> Family<T, N> {
    fn new() -> Self {
        Family([const { OnceLock::new() }; N])
    }

    fn get<L: Labelled>(&self, label: L, make: impl FnOnce(&'static str) -> T) -> &T {
        self.0[label.index()].get_or_init(|| make(label.label()))
    }
}

/// One layer's series.
struct Series {
    layer: SharedString,
    permitted: OnceLock<Counter>,
    rejected: Family<Counter, { RejectReason::COUNT }>,
    calls: Family<Counter, { Outcome::COUNT }>,
    durations: Family<Histogram, { Outcome::COUNT }>,
    cancelled: OnceLock<Counter>,
    timeouts: Family<Counter, { TimeoutCause::COUNT }>,
    attempts_started: OnceLock<Counter>,
    attempts: Family<Counter, { Outcome::COUNT }>,
    retries: Family<Counter, { RetryReason::COUNT }>,
    give_ups: Family<Counter, { GiveUpReason::COUNT }>,
    hedges: OnceLock<Counter>,
    hedges_won: OnceLock<Counter>,
    hedge_budget: OnceLock<Counter>,
    hedge_readiness: OnceLock<Counter>,
    state: Family<Gauge, { CircuitState::COUNT }>,
    transitions: [OnceLock<Counter>; CircuitState::COUNT * CircuitState::COUNT],
    limit: OnceLock<Gauge>,
    fallbacks: Family<Counter, { FallbackTrigger::COUNT }>,
    evicted: Family<Counter, { bool::COUNT }>,
    store_degraded: OnceLock<Gauge>,
    cache_hits: Family<Counter, { bool::COUNT }>,
    cache_misses: Family<Counter, { bool::COUNT }>,
    cache_refreshes: Family<Counter, { bool::COUNT }>,
    cache_evictions: OnceLock<Counter>,
    tier_fills: Family<Counter, { TierFill::COUNT }>,
    tier_writes: OnceLock<Counter>,
    tier_failures: Family<Counter, { TierOp::COUNT }>,
    ejections: Family<Counter, { EjectReason::COUNT }>,
    returns: OnceLock<Counter>,
    endpoints: OnceLock<Gauge>,
    ejected: OnceLock<Gauge>,
}

impl Series {
    fn new(layer: &str) -> Self {
        Series {
            layer: SharedString::from(layer.to_owned()),
            permitted: OnceLock::new(),
            rejected: Family::new(),
            calls: Family::new(),
            durations: Family::new(),
            cancelled: OnceLock::new(),
            timeouts: Family::new(),
            attempts_started: OnceLock::new(),
            attempts: Family::new(),
            retries: Family::new(),
            give_ups: Family::new(),
            hedges: OnceLock::new(),
            hedges_won: OnceLock::new(),
            hedge_budget: OnceLock::new(),
            hedge_readiness: OnceLock::new(),
            state: Family::new(),
            transitions: [const { OnceLock::new() }; CircuitState::COUNT * CircuitState::COUNT],
            limit: OnceLock::new(),
            fallbacks: Family::new(),
            evicted: Family::new(),
            store_degraded: OnceLock::new(),
            cache_hits: Family::new(),
            cache_misses: Family::new(),
            cache_refreshes: Family::new(),
            cache_evictions: OnceLock::new(),
            tier_fills: Family::new(),
            tier_writes: OnceLock::new(),
            tier_failures: Family::new(),
            ejections: Family::new(),
            returns: OnceLock::new(),
            endpoints: OnceLock::new(),
            ejected: OnceLock::new(),
        }
    }

    fn limit(&self, limit: u64) {
        self.limit
            .get_or_init(|| gauge!("seawall_concurrency_limit", "layer" => self.layer.clone()))
            .set(limit as f64)
    }

    fn endpoints(&self) -> &Gauge {
        self.endpoints
            .get_or_init(|| gauge!("seawall_pool_endpoints", "layer" => self.layer.clone()))
    }

    fn ejected(&self) -> &Gauge {
        self.ejected
            .get_or_init(|| gauge!("seawall_pool_ejected", "layer" => self.layer.clone()))
    }

    fn record(&self, kind: EventKind) {
        let layer = || self.layer.clone();
        match kind {
            EventKind::Permitted => self
                .permitted
                .get_or_init(|| counter!("seawall_permitted_total", "layer" => layer()))
                .increment(1),
            EventKind::Rejected { reason } => self
                .rejected
                .get(
                    reason,
                    |r| counter!("seawall_rejected_total", "layer" => layer(), "reason" => r),
                )
                .increment(1),
            EventKind::Finished { outcome, latency } => {
                self.calls
                    .get(
                        outcome,
                        |o| counter!("seawall_calls_total", "layer" => layer(), "outcome" => o),
                    )
                    .increment(1);
                if let Some(latency) = latency {
                    self.durations
                        .get(outcome, |o| {
                            histogram!("seawall_call_duration_seconds", "layer" => layer(), "outcome" => o)
                        })
                        .record(latency.as_secs_f64());
                }
            }
            EventKind::Cancelled => self
                .cancelled
                .get_or_init(|| counter!("seawall_cancelled_total", "layer" => layer()))
                .increment(1),
            EventKind::TimedOut { cause, .. } => self
                .timeouts
                .get(
                    cause,
                    |c| counter!("seawall_timeouts_total", "layer" => layer(), "cause" => c),
                )
                .increment(1),
            EventKind::AttemptStarted { .. } => self
                .attempts_started
                .get_or_init(|| counter!("seawall_attempts_started_total", "layer" => layer()))
                .increment(1),
            EventKind::AttemptFinished { outcome, .. } => self
                .attempts
                .get(
                    outcome,
                    |o| counter!("seawall_attempts_total", "layer" => layer(), "outcome" => o),
                )
                .increment(1),
            EventKind::RetryScheduled { reason, .. } => self
                .retries
                .get(
                    reason,
                    |r| counter!("seawall_retries_total", "layer" => layer(), "reason" => r),
                )
                .increment(1),
            EventKind::GaveUp { reason, .. } => self
                .give_ups
                .get(
                    reason,
                    |r| counter!("seawall_retry_give_ups_total", "layer" => layer(), "reason" => r),
                )
                .increment(1),
            EventKind::HedgeSent { .. } => self
                .hedges
                .get_or_init(|| counter!("seawall_hedges_total", "layer" => layer()))
                .increment(1),
            EventKind::HedgeWon { .. } => self
                .hedges_won
                .get_or_init(|| counter!("seawall_hedges_won_total", "layer" => layer()))
                .increment(1),
            EventKind::HedgeBudgetExhausted { .. } => self
                .hedge_budget
                .get_or_init(
                    || counter!("seawall_hedge_budget_exhausted_total", "layer" => layer()),
                )
                .increment(1),
            EventKind::HedgeReadinessFailed { .. } => self
                .hedge_readiness
                .get_or_init(
                    || counter!("seawall_hedge_readiness_failures_total", "layer" => layer()),
                )
                .increment(1),
            EventKind::LimitChanged { to, .. } => self.limit(to),
            EventKind::Started { state, limit } => {
                if let Some(state) = state {
                    self.state
                        .get(state, |label| {
                            gauge!("seawall_circuit_state", "layer" => layer(), "state" => label)
                        })
                        .set(1.0);
                }
                if let Some(limit) = limit {
                    self.limit(limit);
                }
            }
            EventKind::StateTransition { from, to } => {
                let state = |s: CircuitState| {
                    self.state.get(s, |label| {
                        gauge!("seawall_circuit_state", "layer" => layer(), "state" => label)
                    })
                };
                state(from).set(0.0);
                state(to).set(1.0);
                self.transitions[from.index() * CircuitState::COUNT + to.index()]
                    .get_or_init(|| {
                        counter!(
                            "seawall_circuit_transitions_total",
                            "layer" => layer(),
                            "from" => from.as_str(),
                            "to" => to.as_str()
                        )
                    })
                    .increment(1);
            }
            EventKind::FallbackUsed { trigger, .. } => self
                .fallbacks
                .get(
                    trigger,
                    |t| counter!("seawall_fallbacks_total", "layer" => layer(), "trigger" => t),
                )
                .increment(1),
            EventKind::KeyEvicted { idle } => self
                .evicted
                .get(
                    idle,
                    |i| counter!("seawall_keys_evicted_total", "layer" => layer(), "idle" => i),
                )
                .increment(1),
            EventKind::StoreHealth { degraded } => self
                .store_degraded
                .get_or_init(|| gauge!("seawall_store_degraded", "layer" => layer()))
                .set(if degraded { 1.0 } else { 0.0 }),
            EventKind::CacheHit { stale } => self
                .cache_hits
                .get(
                    stale,
                    |s| counter!("seawall_cache_hits_total", "layer" => layer(), "stale" => s),
                )
                .increment(1),
            EventKind::CacheMiss { coalesced } => self
                .cache_misses
                .get(coalesced, |c| {
                    counter!("seawall_cache_misses_total", "layer" => layer(), "coalesced" => c)
                })
                .increment(1),
            EventKind::CacheRefresh { early } => self
                .cache_refreshes
                .get(early, |e| {
                    counter!("seawall_cache_refreshes_total", "layer" => layer(), "early" => e)
                })
                .increment(1),
            EventKind::CacheEvicted { entries } => self
                .cache_evictions
                .get_or_init(|| counter!("seawall_cache_evictions_total", "layer" => layer()))
                .increment(entries),
            EventKind::CacheTierFill { fill } => self
                .tier_fills
                .get(fill, |f| {
                    counter!("seawall_cache_tier_fills_total", "layer" => layer(), "fill" => f)
                })
                .increment(1),
            EventKind::CacheTierWrite => self
                .tier_writes
                .get_or_init(|| counter!("seawall_cache_tier_writes_total", "layer" => layer()))
                .increment(1),
            EventKind::CacheTierFailed { op } => self
                .tier_failures
                .get(op, |o| {
                    counter!("seawall_cache_tier_failures_total", "layer" => layer(), "op" => o)
                })
                .increment(1),
            EventKind::EndpointEjected { reason, .. } => {
                self.ejections
                    .get(
                        reason,
                        |r| counter!("seawall_pool_ejections_total", "layer" => layer(), "reason" => r),
                    )
                    .increment(1);
                // A failed probe ejects again an endpoint that never left the count.
                if reason != EjectReason::ProbeFailed {
                    self.ejected().increment(1.0);
                }
            }
            EventKind::EndpointReturned => {
                self.returns
                    .get_or_init(|| counter!("seawall_pool_returns_total", "layer" => layer()))
                    .increment(1);
                self.ejected().decrement(1.0);
            }
            EventKind::EndpointAdded => self.endpoints().increment(1.0),
            EventKind::EndpointRemoved { ejected } => {
                self.endpoints().decrement(1.0);
                if ejected {
                    self.ejected().decrement(1.0);
                }
            }
        }
    }
}

/// How many layers' series one [`MetricsObserver`] (and its clones) keeps: enough for the parts
/// of a stack (`seawall::stack`), which share one observer.
const LAYERS: usize = 8;

/// Records every event as metrics: see the [module docs](self) for the series. Clones share
/// their series.
#[derive(Clone, Default)]
pub struct MetricsObserver {
    /// The series of the first layers to report, each in the first free place, found by name.
    series: Arc<[OnceLock<Box<Series>>; LAYERS]>,
}

impl MetricsObserver {
    /// An observer whose series are registered as they are first used.
    pub fn new() -> Self {
        MetricsObserver::default()
    }
}

impl fmt::Debug for MetricsObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layers: Vec<&str> = self
            .series
            .iter()
            .filter_map(|s| s.get().map(|s| &*s.layer))
            .collect();
        f.debug_struct("MetricsObserver")
            .field("layers", &layers)
            .finish()
    }
}

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        // Places are taken in order and never given up, so the first place that is free or
        // holds this layer's name is this layer's (two layers racing for one place: one takes
        // it, the other goes on to the next).
        for place in self.series.iter() {
            let series = place.get_or_init(|| Box::new(Series::new(event.layer)));
            if *series.layer == *event.layer {
                series.record(event.kind);
                return;
            }
        }
        // More layers than places: the others' series are looked up every time.
        Series::new(event.layer).record(event.kind);
    }
}
