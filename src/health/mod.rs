//! One place to see what every layer is doing, and probes that mean something (feature `health`;
//! the HTTP routes with `http` too, a default feature).
//!
//! A [`Registry`] holds the layers' handles by name: breakers, bulkheads, adaptive limiters,
//! throttles, rate limiters (global, keyed and fleet-wide), endpoint pools. [`Registry::snapshot`] reads their
//! state into one [`Snapshot`] (each [`ComponentHealth`] with a [`Status`] and its
//! [`Details`]), which [`Snapshot::to_json`] writes out; with the `http` feature,
//! [`Registry::routes`] serves `/live`, `/ready` and `/health`, and [`Registry::admin_routes`] an
//! opt-in admin API to force a breaker open or closed, reset it, or change a bulkhead's limit.
//! Both are plain tower services over `http` requests: axum mounts them with `route_service` or
//! `nest_service` (no `axum` feature needed), and hyper serves them directly. Neither belongs
//! on a public listener: `/health` shows the service's internals (see `docs/health.md`).
//!
//! The registry costs the layers nothing per call. It keeps weak references, so a layer that is
//! dropped disappears from it (its name can be used again); and it reads the counters the layers
//! keep anyway. The one it added, each layer's count of rejected calls, is written only when a
//! call is rejected. A read writes nothing but what a call would: a breaker with a time window
//! rolls the window forward to now when read, as a call would, so that its counts leave out the
//! calls too old to count.
//!
//! # Readiness is safe by default
//!
//! A component is registered with a [`Criticality`]. [`Informational`](Criticality::Informational),
//! the default, is shown (a component that is down makes the overall status `DEGRADED`) but never
//! fails readiness; only a [`Required`](Criticality::Required) component that is down makes
//! `/ready` answer 503. A breaker around a dependency must stay informational: when the
//! dependency fails, every instance's breaker trips at once, and a readiness probe that followed
//! them would take the whole fleet out of the load balancer together, turning one dependency's
//! outage into a full one. The same holds for a fleet store and for limiters under load. See
//! `docs/health.md` for what each status means and a Kubernetes probe example.
//!
//! # Example
//!
//! ```
//! # #[cfg(all(feature = "circuit-breaker", feature = "bulkhead"))] {
//! use seawall::bulkhead::BulkheadLayer;
//! use seawall::circuit_breaker::CircuitBreakerLayer;
//! use seawall::health::{Criticality, Registry, Status};
//!
//! let breaker = CircuitBreakerLayer::new();
//! let bulkhead = BulkheadLayer::new(100);
//! let registry = Registry::new();
//! registry.register("payments", &breaker.handle(), Criticality::Informational).unwrap();
//! registry.register("inbound", &bulkhead.handle(), Criticality::Informational).unwrap();
//! registry.start_serving(); // startup is over: `/ready` may answer 200
//!
//! breaker.handle().force_open();
//! let snapshot = registry.snapshot();
//! assert_eq!(snapshot.status, Status::Degraded); // shown...
//! assert!(snapshot.ready); // ...but the instance stays in the load balancer
//! # }
//! ```

mod component;
mod json;
#[cfg(feature = "http")]
mod routes;

#[cfg(feature = "http")]
pub use routes::{AdminRoutes, HealthRoutes, ADMIN_HEADER};

use crate::core::CircuitState;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much a component's health matters to the instance's readiness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Criticality {
    /// Shown in the snapshot (a component that is down makes the overall status degraded), but
    /// never fails readiness. The default, and the right choice for a breaker around a
    /// dependency, a limiter, and the fleet store: their trouble is shared by every instance, and
    /// taking them all out of the load balancer together makes an outage total.
    #[default]
    Informational,
    /// A component without which this instance cannot serve while others can: when it is down,
    /// `/ready` answers 503 and the overall status is down.
    Required,
}

impl Criticality {
    /// The name used in JSON: `"informational"` or `"required"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Informational => "informational",
            Criticality::Required => "required",
        }
    }
}

/// A component's health, or the instance's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Working as configured.
    Up,
    /// Working, but turning some calls away or recovering: a half-open breaker, an open one whose
    /// open period is over (its next call probes), a full bulkhead, a throttle that is
    /// throttling, a degraded store failing open (or failing closed, once a probe of it is due).
    /// Overall: some component is not up, and none that is required is down.
    Degraded,
    /// Not letting calls through: an open breaker (during its open period), a forced open one, a
    /// limit of zero, a degraded store failing closed (until a probe of it is due). Overall: a
    /// required component is down.
    Down,
}

impl Status {
    /// The name used in JSON: `"UP"`, `"DEGRADED"` or `"DOWN"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Degraded => "DEGRADED",
            Status::Down => "DOWN",
        }
    }
}

/// Where the instance is in its life, as set by [`Registry::start_serving`] and
/// [`Registry::drain`]; `/ready` answers 503 unless it is serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not ready yet: startup has not called [`Registry::start_serving`].
    Starting,
    /// Serving.
    Serving,
    /// Shutting down after [`Registry::drain`]: still serving what comes, but asking the load
    /// balancer to send nothing more.
    Draining,
}

impl Phase {
    /// The name used in JSON: `"starting"`, `"serving"` or `"draining"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }

    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }
}

/// Every registered component's health at one moment, from [`Registry::snapshot`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The overall status: down if a required component is down, degraded if any component is
    /// not up, up otherwise.
    pub status: Status,
    /// The instance's phase.
    pub phase: Phase,
    /// Whether `/ready` answers 200: serving, and no required component down.
    pub ready: bool,
    /// The components, in the order they were registered.
    pub components: Vec<ComponentHealth>,
}

impl Snapshot {
    /// The snapshot as JSON (the schema is in `docs/health.md`):
    ///
    /// ```json
    /// {"status":"DEGRADED","phase":"serving","ready":true,"components":{"payments":{...}}}
    /// ```
    pub fn to_json(&self) -> String {
        json::snapshot(self)
    }
}

/// One component's health.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// The name it was registered under.
    pub name: Arc<str>,
    /// How much it matters to readiness.
    pub criticality: Criticality,
    /// Its status (see [`Details::status`]).
    pub status: Status,
    /// What its layer reports.
    pub details: Details,
}

/// What a layer reports, by kind of layer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Details {
    /// A circuit breaker.
    CircuitBreaker(BreakerDetails),
    /// A bulkhead.
    Bulkhead(LimiterDetails),
    /// An adaptive concurrency limiter.
    AdaptiveLimit(LimiterDetails),
    /// A client-side throttle.
    Throttle(ThrottleDetails),
    /// A rate limiter.
    RateLimit(RateLimitDetails),
    /// A keyed rate limiter.
    KeyedRateLimit(KeyedDetails),
    /// A fleet-wide rate limiter and its store.
    FleetRateLimit(FleetDetails),
    /// An endpoint pool (`seawall::pool`) and each of its endpoints.
    Pool(PoolDetails),
}

impl Details {
    /// The kind of layer, as named in JSON (`"circuitBreaker"`, `"bulkhead"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Details::CircuitBreaker(_) => "circuitBreaker",
            Details::Bulkhead(_) => "bulkhead",
            Details::AdaptiveLimit(_) => "adaptiveLimit",
            Details::Throttle(_) => "throttle",
            Details::RateLimit(_) => "rateLimit",
            Details::KeyedRateLimit(_) => "keyedRateLimit",
            Details::FleetRateLimit(_) => "fleetRateLimit",
            Details::Pool(_) => "pool",
        }
    }

    /// The component's status:
    ///
    /// | layer | up | degraded | down |
    /// |---|---|---|---|
    /// | breaker | closed, disabled, metrics only | half-open; open with its open period over (a probe is due) | open, during its open period; forced open |
    /// | bulkhead, adaptive limiter | room for more calls | full (every slot taken, or callers queued) | limit zero |
    /// | throttle | turning nothing away | turning calls away | |
    /// | rate limiter | calls available | none available now | |
    /// | keyed rate limiter | always | | |
    /// | fleet rate limiter | store healthy | store degraded: failing open; failing closed with a probe of the store due | store degraded, failing closed, until a probe of the store is due |
    /// | pool | every endpoint in rotation, fewer than half penalised | some endpoint ejected, probing or held in only by the cap; or at least half penalised (kept out of the draws by a failure penalty until their recheck) | no endpoint healthy (or none at all) |
    pub fn status(&self) -> Status {
        match self {
            Details::CircuitBreaker(b) => match b.state {
                CircuitState::HalfOpen => Status::Degraded,
                // Nothing moves an open breaker on but a call: one that stayed down once its open
                // period is over would keep a required breaker's instance out of the load
                // balancer, with no call coming to probe, for good.
                CircuitState::Open if b.probe_due => Status::Degraded,
                CircuitState::Open | CircuitState::ForcedOpen => Status::Down,
                _ => Status::Up,
            },
            Details::Bulkhead(l) | Details::AdaptiveLimit(l) => {
                if l.limit == 0 {
                    Status::Down
                } else if l.in_flight >= l.limit || l.queued > 0 {
                    Status::Degraded
                } else {
                    Status::Up
                }
            }
            Details::Throttle(t) if t.probability > 0.0 => Status::Degraded,
            Details::RateLimit(r) if r.available == 0 => Status::Degraded,
            // No endpoint healthy: a pool that fails fast refuses calls, one in panic spreads
            // them over endpoints it would rather not use. None at all: nothing to call.
            Details::Pool(p) if p.healthy == 0 => Status::Down,
            // A penalised endpoint draws almost no calls until its recheck, but one failure
            // penalises it: the pool is degraded for penalised endpoints only when they are at
            // least half of it (the share the default cap lets ejection take).
            Details::Pool(p)
                if p.ejected > 0 || p.held > 0 || 2 * p.penalised >= p.endpoints.len() as u64 =>
            {
                Status::Degraded
            }
            Details::FleetRateLimit(f) if f.degraded => {
                // As for an open breaker: only a call probes the store, and none comes to a
                // required limiter's instance while it is down, which would be for good.
                if f.fails_closed && !f.probe_due {
                    Status::Down
                } else {
                    Status::Degraded
                }
            }
            _ => Status::Up,
        }
    }
}

/// A breaker's state and window. The JSON names are resilience4j's where it has one
/// (`failureRate`, `bufferedCalls`, `notPermittedCalls`, ...).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerDetails {
    /// The breaker's state (`state`).
    pub state: CircuitState,
    /// The failure rate in percent; `None` until the window holds the minimum number of calls
    /// (`failureRate`).
    pub failure_rate: Option<f64>,
    /// The failure rate at which it opens, in percent; `None` if that rule is off
    /// (`failureRateThreshold`).
    pub failure_rate_threshold: Option<f64>,
    /// The slow-call rate in percent; `None` until the window holds the minimum number of calls,
    /// or if the slow-call rule is off (`slowCallRate`).
    pub slow_call_rate: Option<f64>,
    /// The slow-call rate at which it opens, in percent; `None` if that rule is off
    /// (`slowCallRateThreshold`).
    pub slow_call_rate_threshold: Option<f64>,
    /// How long a call must take to count as slow; `None` if the slow-call rule is off
    /// (`slowCallDurationThresholdMs`).
    pub slow_call_duration_threshold: Option<Duration>,
    /// Calls in the window (`bufferedCalls`).
    pub buffered_calls: u64,
    /// Failed calls in the window (`failedCalls`).
    pub failed_calls: u64,
    /// Slow calls in the window (`slowCalls`).
    pub slow_calls: u64,
    /// Calls rejected since the breaker was built (`notPermittedCalls`).
    pub not_permitted_calls: u64,
    /// Failures in a row, when that rule is on (`consecutiveFailures`).
    pub consecutive_failures: u32,
    /// Half-open probes running (`probesInFlight`).
    pub probes_in_flight: u32,
    /// How long ago it opened, while open or forced open (`openedAgoMs`).
    pub opened_ago: Option<Duration>,
    /// How long until it lets the next probe through, while open; zero once the open period is
    /// over and the next call will probe (`nextProbeInMs`).
    pub next_probe_in: Option<Duration>,
    /// Open, with its open period over: the next call probes (`probeDue`). The breaker stays
    /// open until a call comes, so it is degraded then, not down.
    pub probe_due: bool,
}

/// A bulkhead's or adaptive limiter's occupancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimiterDetails {
    /// How many calls may run at once (`limit`).
    pub limit: u64,
    /// How many hold a slot (`inFlight`).
    pub in_flight: u64,
    /// How many callers wait in the queue (`queued`).
    pub queued: u64,
    /// Calls rejected since the layer was built (`rejected`).
    pub rejected: u64,
}

/// A client-side throttle's window.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ThrottleDetails {
    /// The probability of turning a call away now (`probability`).
    pub probability: f64,
    /// Requests in the window (`requests`).
    pub requests: u64,
    /// Accepted requests in the window (`accepts`).
    pub accepts: u64,
    /// Calls turned away since the layer was built (`rejected`).
    pub rejected: u64,
}

/// A rate limiter's quota and what it allows now.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RateLimitDetails {
    /// The sustained rate, in calls a second (`ratePerSecond`).
    pub rate_per_second: f64,
    /// The most calls let through at once (`burst`).
    pub burst: u32,
    /// How many calls would be let through at once now (`available`).
    pub available: u64,
    /// How many callers wait for a slot they were given, with a maximum wait (`waiting`).
    pub waiting: u64,
    /// Calls rejected since the layer was built (`rejected`).
    pub rejected: u64,
}

/// A keyed rate limiter's quota and table.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct KeyedDetails {
    /// Each key's sustained rate, in calls a second (`ratePerSecond`).
    pub rate_per_second: f64,
    /// Each key's burst (`burst`).
    pub burst: u32,
    /// Keys in the table (`keys`).
    pub keys: u64,
    /// The most keys kept (`maxKeys`).
    pub max_keys: u64,
    /// How many callers, of every key, wait for a slot they were given, with a maximum wait
    /// (`waiting`).
    pub waiting: u64,
    /// Calls rejected since the layer was built (`rejected`).
    pub rejected: u64,
}

/// A fleet-wide rate limiter and the health of its store.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct FleetDetails {
    /// Each key's sustained rate across the fleet, in calls a second (`ratePerSecond`).
    pub rate_per_second: f64,
    /// Each key's burst (`burst`).
    pub burst: u32,
    /// Whether the store is degraded: its last call failed (`degraded`).
    pub degraded: bool,
    /// How long it has been degraded (`degradedForMs`).
    pub degraded_for: Option<Duration>,
    /// Degraded, and the time has come to try the store again: the next call without a lease
    /// probes it (`probeDue`). Only a call probes, so a limiter failing closed is degraded
    /// then, not down.
    pub probe_due: bool,
    /// Whether calls without a lease fail while the store is degraded (`failsClosed`).
    pub fails_closed: bool,
    /// Calls this instance made to the store (`storeCalls`).
    pub store_calls: u64,
    /// How many of them failed or timed out (`storeFailures`).
    pub store_failures: u64,
    /// Keys this instance holds state for (`keys`).
    pub keys: u64,
    /// How many calls wait for a lease (`waiting`).
    pub waiting: u64,
    /// Calls rejected since the layer was built (`rejected`).
    pub rejected: u64,
}

/// An endpoint pool's counts, and each endpoint as its handle reads it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PoolDetails {
    /// Endpoints in rotation and not held in by the cap, penalised ones included (`healthy`).
    pub healthy: u64,
    /// Endpoints ejected, their probes in flight included (`ejected`).
    pub ejected: u64,
    /// Endpoints a rule would eject but the cap on ejections holds in rotation (`held`).
    pub held: u64,
    /// Of the healthy endpoints, those whose last answer was a failure, kept out of the draws by
    /// the failure penalty until their recheck, not yet due (`penalised`).
    pub penalised: u64,
    /// Each endpoint, in the pool's order (`endpoints`).
    pub endpoints: Vec<PoolEndpointDetails>,
}

/// One endpoint of a pool, in [`PoolDetails`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PoolEndpointDetails {
    /// Its key, as `Debug` prints it (`key`).
    pub key: String,
    /// Where it stands: `AVAILABLE`, `PENALISED`, `HELD`, `EJECTED`, `PROBING` or `REMOVED`
    /// (`state`).
    pub state: &'static str,
    /// While ejected, how long until its probe is due; zero once it is due (`ejectedForMs`).
    pub ejected_for: Option<Duration>,
    /// While penalised, how long until its recheck (`recheckInMs`).
    pub recheck_in: Option<Duration>,
    /// The load the balancer compares, in seconds: the peak-EWMA round-trip time × (calls in
    /// flight + 1) (`load`).
    pub load: f64,
    /// The peak-EWMA round-trip time (`rttMs`, in milliseconds with a fraction).
    pub rtt: Duration,
    /// Calls in flight (`inFlight`).
    pub in_flight: u32,
    /// How many times it has been ejected (`ejections`).
    pub ejections: u64,
    /// Calls that succeeded or failed (`calls`).
    pub calls: u64,
    /// Calls that failed, of either origin (`failures`).
    pub failures: u64,
    /// Local-origin failures: calls that failed with the service's own error, and failed
    /// readiness, which is no call and not in `calls` or `failures` (`localFailures`).
    pub local_failures: u64,
    /// Upstream failures in a row now (`consecutiveFailures`).
    pub consecutive_failures: u32,
    /// Local-origin failures in a row now (`consecutiveLocalFailures`).
    pub consecutive_local_failures: u32,
}

/// A change made by hand through [`Registry::control`] (or the admin routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A breaker rejects every call until forced closed or reset.
    ForceOpen,
    /// A breaker closes now, with an empty window.
    ForceClosed,
    /// A breaker goes back to the state of a new one.
    Reset,
    /// A bulkhead's limit becomes this, capped at `bulkhead::MAX_CONCURRENT`. Only a bulkhead
    /// has a limit to set: an adaptive limiter's is its algorithm's to move.
    SetLimit(u64),
}

/// What [`Registry::control`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The action, as asked.
    Done,
    /// A bulkhead's limit was set to this: what [`Action::SetLimit`] asked, or the most a
    /// bulkhead takes if it asked for more.
    Limit(u64),
}

impl Action {
    /// The action's name, as in the admin routes: `force-open`, `force-closed`, `reset`, `limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ForceOpen => "force-open",
            Action::ForceClosed => "force-closed",
            Action::Reset => "reset",
            Action::SetLimit(_) => "limit",
        }
    }
}

/// Why [`Registry::register`] refused a component.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Another live component has this name.
    #[error("a component named {0:?} is already registered")]
    Duplicate(String),
    /// The name is empty, or has a character other than ASCII letters, digits, `-`, `_`, `.`
    /// and `:` (names appear in JSON and in the admin routes' paths).
    #[error("invalid component name {0:?}: use ASCII letters, digits, '-', '_', '.' and ':'")]
    InvalidName(String),
}

/// Why [`Registry::control`] did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No live component has this name.
    #[error("no component named {0:?}")]
    NotFound(String),
    /// The component's kind of layer has no such control (forcing a bulkhead open, setting a
    /// breaker's limit, ...).
    #[error("component {name:?} ({kind}) does not support {action}")]
    Unsupported {
        /// The component.
        name: String,
        /// Its kind of layer.
        kind: &'static str,
        /// The action asked for.
        action: &'static str,
    },
}

/// A handle the registry can watch: every layer's handle (breaker, bulkhead, adaptive limiter,
/// throttle, rate limiters, fleet rate limiter, endpoint pool's). Sealed: the registry knows how
/// to read each.
pub trait Component: private::Sealed {}

pub(crate) mod private {
    use super::{Action, Applied, Details};
    use std::sync::Arc;

    /// What a handle gives the registry: a watch that does not keep the layer alive.
    pub trait Sealed {
        /// A weak watch on the handle's layer.
        fn watch(&self) -> Arc<dyn Watch>;
    }

    /// A weak watch on one layer.
    pub trait Watch: Send + Sync + 'static {
        /// The layer's details, or `None` once it has been dropped.
        fn read(&self) -> Option<Details>;
        /// Applies `action`: `Some(Some(applied))` if done, `Some(None)` if this kind of layer
        /// has no such control, `None` once the layer has been dropped.
        fn control(&self, action: Action) -> Option<Option<Applied>>;
        /// Whether the layer is still there: a look at its reference count, reading nothing.
        fn alive(&self) -> bool;
        /// The kind of layer, as [`Details::kind`] names it.
        fn kind(&self) -> &'static str;
    }
}

use private::Watch;

#[derive(Clone)]
struct Entry {
    name: Arc<str>,
    criticality: Criticality,
    watch: Arc<dyn Watch>,
}

/// The registered components, replaced whole by each change: a snapshot takes the list and
/// reads the layers after the lock is let go, so that what a read drops (the last reference to a
/// layer, whose `Drop` may do anything) is never dropped under it.
type Entries = Arc<[Entry]>;

struct Inner {
    entries: Mutex<Entries>,
    phase: AtomicU8,
}

/// The layers of a service by name, for one snapshot of their state and for liveness, readiness
/// and health probes. Cloning it is cheap; clones share the registry. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<Arc<str>> = self.entries().iter().map(|e| e.name.clone()).collect();
        f.debug_struct("Registry")
            .field("phase", &self.phase())
            .field("components", &names)
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Registry {
    /// An empty registry, in the [`Starting`](Phase::Starting) phase: `/ready` answers 503 until
    /// [`start_serving`](Self::start_serving).
    pub fn new() -> Self {
        Registry {
            inner: Arc::new(Inner {
                entries: Mutex::new(Arc::new([])),
                phase: AtomicU8::new(0),
            }),
        }
    }

    /// The list of components now.
    fn entries(&self) -> Entries {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the list of components with what `change` makes of it (or leaves it if `change`
    /// fails). The list replaced is dropped after the lock is let go.
    fn change<T>(
        &self,
        change: impl FnOnce(&[Entry]) -> Result<(Entries, T), RegisterError>,
    ) -> Result<T, RegisterError> {
        let mut entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (new, out) = change(&entries)?;
        let old = std::mem::replace(&mut *entries, new);
        drop(entries);
        drop(old);
        Ok(out)
    }

    /// Watches `component` (a layer's handle) under `name`. The registry keeps no layer alive: a
    /// layer whose handles, services and layer values are all dropped leaves it, and its name
    /// can be registered again. Registering changes nothing on the layer's call path.
    ///
    /// Names are unique among live components, and made of ASCII letters, digits, `-`, `_`, `.`
    /// and `:`.
    pub fn register<C: Component>(
        &self,
        name: &str,
        component: &C,
        criticality: Criticality,
    ) -> Result<(), RegisterError> {
        if !valid_name(name) {
            return Err(RegisterError::InvalidName(name.to_owned()));
        }
        let entry = Entry {
            name: name.into(),
            criticality,
            watch: component.watch(),
        };
        self.change(|entries| {
            // A dropped layer's entry gives its name up: found by its reference count alone.
            if entries.iter().any(|e| *e.name == *name && e.watch.alive()) {
                return Err(RegisterError::Duplicate(name.to_owned()));
            }
            let live = entries.iter().filter(|e| e.watch.alive()).cloned();
            Ok((live.chain([entry]).collect(), ()))
        })
    }

    /// Stops watching the component named `name`; `false` if there was none.
    pub fn unregister(&self, name: &str) -> bool {
        self.change(|entries| {
            let kept: Entries = entries
                .iter()
                .filter(|e| *e.name != *name)
                .cloned()
                .collect();
            let removed = kept.len() != entries.len();
            Ok((kept, removed))
        })
        .unwrap_or(false)
    }

    /// Forgets the components whose layers have been dropped.
    fn forget_dropped(&self) {
        let _ = self.change(|entries| {
            Ok((
                entries
                    .iter()
                    .filter(|e| e.watch.alive())
                    .cloned()
                    .collect(),
                (),
            ))
        });
    }

    /// Startup is over: `/ready` answers 200 from now on (while no required component is down),
    /// until [`drain`](Self::drain). Does nothing once draining.
    pub fn start_serving(&self) {
        let _ = self
            .inner
            .phase
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Shutdown has begun: `/ready` answers 503 from the next request on, so the load balancer
    /// stops sending traffic while the requests in flight finish. There is no way back.
    pub fn drain(&self) {
        self.inner.phase.store(2, Ordering::Release);
    }

    /// The instance's phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// Every live component's health, and the overall status. Dropped layers are forgotten here.
    ///
    /// The layers are read outside the registry's lock: a read holds its layer for a moment,
    /// and if every other reference went meanwhile the layer is dropped by the read, which must
    /// not find the registry locked (an observer's `Drop` may use it).
    pub fn snapshot(&self) -> Snapshot {
        let phase = self.phase();
        let mut status = Status::Up;
        let entries = self.entries();
        let mut components = Vec::with_capacity(entries.len());
        let mut dropped = false;
        for entry in entries.iter() {
            let Some(details) = entry.watch.read() else {
                dropped = true;
                continue;
            };
            let own = details.status();
            let counts = match (own, entry.criticality) {
                (Status::Down, Criticality::Informational) => Status::Degraded,
                (own, _) => own,
            };
            status = status.max(counts);
            components.push(ComponentHealth {
                name: entry.name.clone(),
                criticality: entry.criticality,
                status: own,
                details,
            });
        }
        if dropped {
            self.forget_dropped();
        }
        Snapshot {
            status,
            phase,
            ready: phase == Phase::Serving && status != Status::Down,
            components,
        }
    }

    /// Applies `action` to the component named `name`: force a breaker open or closed, reset
    /// it, or set a bulkhead's limit (only a bulkhead's: [`ControlError::Unsupported`] for any
    /// other). What the admin routes call. Says what was applied: a limit above
    /// `bulkhead::MAX_CONCURRENT` is capped there.
    pub fn control(&self, name: &str, action: Action) -> Result<Applied, ControlError> {
        let not_found = || ControlError::NotFound(name.to_owned());
        let entries = self.entries();
        let watch = entries
            .iter()
            .find(|e| *e.name == *name)
            .map(|e| &e.watch)
            .ok_or_else(not_found)?;
        // Outside the lock: a breaker's change by hand tells its observer.
        match watch.control(action) {
            Some(Some(applied)) => Ok(applied),
            Some(None) => Err(ControlError::Unsupported {
                name: name.to_owned(),
                kind: watch.kind(),
                action: action.as_str(),
            }),
            None => Err(not_found()),
        }
    }

    /// The liveness, readiness and health routes, as one service for axum (see [`HealthRoutes`]).
    #[cfg(feature = "http")]
    pub fn routes(&self) -> HealthRoutes {
        HealthRoutes::new(self.clone())
    }

    /// The admin routes (see [`AdminRoutes`]): they change the layers' behaviour, so they must
    /// sit behind the service's own authentication.
    #[cfg(feature = "http")]
    pub fn admin_routes(&self) -> AdminRoutes {
        AdminRoutes::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::private::Sealed;
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A layer the test controls: whether it is alive, how often it was read, and a check run at
    /// each read (where a real watch drops the layer state it upgraded).
    struct Fake {
        alive: AtomicBool,
        reads: AtomicUsize,
        on_read: Mutex<Option<Box<dyn Fn() + Send>>>,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                alive: AtomicBool::new(true),
                reads: AtomicUsize::new(0),
                on_read: Mutex::new(None),
            })
        }
    }

    struct FakeHandle(Arc<Fake>);

    impl Watch for Fake {
        fn read(&self) -> Option<Details> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if let Some(check) = &*self.on_read.lock().unwrap() {
                check();
            }
            self.alive
                .load(Ordering::Relaxed)
                .then_some(Details::Bulkhead(LimiterDetails {
                    limit: 1,
                    in_flight: 0,
                    queued: 0,
                    rejected: 0,
                }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            self.alive.load(Ordering::Relaxed)
        }

        fn kind(&self) -> &'static str {
            "bulkhead"
        }
    }

    impl Sealed for FakeHandle {
        fn watch(&self) -> Arc<dyn Watch> {
            self.0.clone()
        }
    }

    impl Component for FakeHandle {}

    /// Reading a layer upgrades its weak reference; if every other holder went meanwhile, the
    /// read drops the layer's state, and whatever its `Drop` does (an observer's, say) must not
    /// find the registry locked.
    #[test]
    fn layers_are_read_outside_the_registrys_lock() {
        let registry = Registry::new();
        let fake = Fake::new();
        let locked = Arc::new(AtomicBool::new(false));
        {
            let registry = registry.clone();
            let locked = locked.clone();
            *fake.on_read.lock().unwrap() = Some(Box::new(move || {
                if registry.inner.entries.try_lock().is_err() {
                    locked.store(true, Ordering::Relaxed);
                }
            }));
        }
        registry
            .register("a", &FakeHandle(fake.clone()), Criticality::Informational)
            .unwrap();
        assert_eq!(registry.snapshot().components.len(), 1);
        // Break the cycle (the check holds the registry).
        *fake.on_read.lock().unwrap() = None;
        assert!(
            !locked.load(Ordering::Relaxed),
            "a layer was read under the lock"
        );
    }

    /// `register` looks for dropped layers (to free their names) without reading them.
    #[test]
    fn register_reads_no_layer() {
        let registry = Registry::new();
        let a = Fake::new();
        let b = Fake::new();
        let info = Criticality::Informational;
        registry
            .register("a", &FakeHandle(a.clone()), info)
            .unwrap();
        registry
            .register("b", &FakeHandle(b.clone()), info)
            .unwrap();
        assert_eq!(a.reads.load(Ordering::Relaxed), 0);
        // A dropped layer still frees its name.
        a.alive.store(false, Ordering::Relaxed);
        registry
            .register("a", &FakeHandle(Fake::new()), info)
            .unwrap();
        assert_eq!(a.reads.load(Ordering::Relaxed), 0);
        assert_eq!(b.reads.load(Ordering::Relaxed), 0);
    }
}
