//! Reading a pool's state: [`PoolHandle`].

use super::state::Shared;
use crate::core::Observer;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Where an endpoint stands, in an [`EndpointStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointState {
    /// In rotation.
    Available,
    /// In rotation, but its last answer was a failure: the failure penalty (see
    /// [`Builder::failure_penalty`](super::Builder::failure_penalty)) keeps the balancer from
    /// choosing it until `recheck_in` has passed, when it is given one call again. Only until
    /// then: once its recheck is due it is shown `Available` (it waits for a call to draw it,
    /// and an idle pool's endpoint does not stay penalised for ever). An endpoint
    /// that fails fast is in this state long before a consecutive-failures rule ejects it (with
    /// the penalty it draws so few calls that reaching the count can take minutes), so it is
    /// shown apart from `Available`: it takes almost no traffic.
    Penalised {
        /// How long until its recheck (never zero: a due recheck is shown `Available`).
        recheck_in: Duration,
    },
    /// In rotation although a rule would eject it: the cap on ejections (`max_ejection_percent`)
    /// held it in.
    Held,
    /// Out of rotation for `remaining` more (zero: its probe is due); its connection is kept.
    Ejected {
        /// How long until its probe is due.
        remaining: Duration,
    },
    /// Out of rotation, its one probe in flight.
    Probing,
    /// Discovery removed it (seen only by a handle that read it as it left).
    Removed,
}

/// One endpoint of a pool, as its handle read it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint's key, as `Debug` prints it (static endpoints: their place, `0`, `1`, ...).
    pub key: String,
    /// Where it stands.
    pub state: EndpointState,
    /// The load the balancer compares, in seconds: the peak-EWMA round-trip time times (calls in
    /// flight + 1).
    pub load: f64,
    /// The peak-EWMA round-trip time now.
    pub rtt: Duration,
    /// Calls in flight.
    pub in_flight: u32,
    /// How many times it has been ejected.
    pub ejections: u64,
    /// Upstream failures in a row now.
    pub consecutive_failures: u32,
    /// Local-origin failures in a row now.
    pub consecutive_local_failures: u32,
    /// Calls that succeeded or failed (ignored ones are not counted).
    pub calls: u64,
    /// Calls that failed, of either origin.
    pub failures: u64,
    /// Local-origin failures: calls that failed with the service's own error, and failed
    /// readiness (no call, so counted here but not in `calls` or `failures`).
    pub local_failures: u64,
}

/// What a handle reads a pool through, whatever its key and service types: so that a handle is
/// one type, which a registry can keep beside other layers'.
pub(crate) trait Inspect: Send + Sync {
    fn name(&self) -> &str;
    fn endpoints(&self) -> Vec<EndpointStatus>;
    fn counts(&self) -> (u32, u32, u32);
}

impl<K, S, O> Inspect for Shared<K, S, O>
where
    K: fmt::Debug + Send + Sync,
    S: Send + Sync,
    O: Observer,
{
    fn name(&self) -> &str {
        self.source.name()
    }

    fn endpoints(&self) -> Vec<EndpointStatus> {
        let list = Shared::endpoints(self);
        let now = self.now();
        list.iter().map(|e| e.status(now, &self.config)).collect()
    }

    fn counts(&self) -> (u32, u32, u32) {
        Shared::counts(self)
    }
}

/// A pool's state, for dashboards, health checks and tests: each endpoint's state, load and
/// ejections. Cheap to clone; every clone reads the same pool. Made by
/// [`Pool::handle`](super::Pool::handle). Nothing it reads costs a call anything.
#[derive(Clone)]
pub struct PoolHandle {
    inner: Arc<dyn Inspect>,
}

impl PoolHandle {
    pub(crate) fn new<K, S, O>(shared: Arc<Shared<K, S, O>>) -> Self
    where
        K: fmt::Debug + Send + Sync + 'static,
        S: Send + Sync + 'static,
        O: Observer,
    {
        PoolHandle { inner: shared }
    }

    /// The name given to the pool.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Every endpoint now, in the pool's order.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner.endpoints()
    }

    /// How many endpoints the pool has.
    pub fn len(&self) -> usize {
        self.inner.counts().0 as usize
    }

    /// Whether the pool has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many endpoints are ejected now (their probes in flight included).
    pub fn ejected(&self) -> usize {
        self.inner.counts().1 as usize
    }

    /// How many endpoints a rule would eject but the cap holds in rotation.
    pub fn held(&self) -> usize {
        self.inner.counts().2 as usize
    }

    /// How many endpoints are [penalised](EndpointState::Penalised): in rotation, but kept out
    /// of the draws by a failure penalty until their recheck. Walks the endpoints.
    pub fn penalised(&self) -> usize {
        self.endpoints()
            .iter()
            .filter(|e| matches!(e.state, EndpointState::Penalised { .. }))
            .count()
    }

    /// How many endpoints are healthy: in rotation, and not held in by the cap (penalised ones
    /// included, as the pool counts them: it still draws them, and panics only when none is
    /// left).
    pub fn healthy(&self) -> usize {
        let (members, ejected, held) = self.inner.counts();
        members.saturating_sub(ejected + held) as usize
    }
}

/// A pool's handle that does not keep the pool alive: what the health registry watches.
#[cfg(feature = "health")]
pub(crate) struct WeakPoolHandle(std::sync::Weak<dyn Inspect>);

#[cfg(feature = "health")]
impl WeakPoolHandle {
    /// The handle, while any clone of the pool, its futures or its handles remain.
    pub(crate) fn upgrade(&self) -> Option<PoolHandle> {
        self.0.upgrade().map(|inner| PoolHandle { inner })
    }

    /// Whether the pool is still there: a look at its reference count, reading nothing.
    pub(crate) fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

#[cfg(feature = "health")]
impl PoolHandle {
    pub(crate) fn downgrade(&self) -> WeakPoolHandle {
        WeakPoolHandle(Arc::downgrade(&self.inner))
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (members, ejected, held) = self.inner.counts();
        f.debug_struct("PoolHandle")
            .field("name", &self.name())
            .field("endpoints", &members)
            .field("ejected", &ejected)
            .field("held", &held)
            .finish()
    }
}
