//! Watching and steering a breaker by hand: [`Handle`].

use super::state::Breaker;
use crate::core::gate::{Anchor, Shared};
use crate::core::{CircuitState, Observer};
use std::fmt;

/// A cloneable handle to one breaker, for reading its state and metrics and for steering it by hand.
///
/// Get one from [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle); build more layers
/// over the same breaker with [`CircuitBreakerLayer::from_handle`](super::CircuitBreakerLayer::from_handle).
///
/// ```
/// use seawall::circuit_breaker::CircuitBreakerLayer;
/// use seawall::core::CircuitState;
///
/// let layer = CircuitBreakerLayer::new();
/// let handle = layer.handle();
///
/// handle.force_open(); // for maintenance: reject everything
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.reset(); // back to closed, with an empty window and no memory of earlier trips
/// assert_eq!(handle.state(), CircuitState::Closed);
/// assert_eq!(handle.metrics().failure_rate, None); // unknown until `minimum_calls` calls
/// ```
pub struct Handle<O: 'static = ()> {
    pub(crate) shared: Anchor<Shared<Breaker, O>>,
}

/// A snapshot of a breaker's window and counters, from [`Handle::metrics`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The breaker's state.
    pub state: CircuitState,
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// The failure rate in percent; `None` until the window holds `minimum_calls` calls.
    pub failure_rate: Option<f64>,
    /// The slow-call rate in percent; `None` until the window holds `minimum_calls` calls.
    pub slow_call_rate: Option<f64>,
    /// Failures in a row, when the consecutive-failures rule is on (otherwise 0).
    pub consecutive_failures: u32,
    /// Half-open probes admitted and not yet finished (0 unless half-open).
    pub probes_in_flight: u32,
}

impl<O: Observer> Handle<O> {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The breaker's state. An open breaker whose open period has ended reads as open until the next
    /// call makes it half-open.
    pub fn state(&self) -> CircuitState {
        self.shared.gate.state()
    }

    /// The window's counts and rates, and the state.
    pub fn metrics(&self) -> Metrics {
        let breaker = &self.shared.gate;
        let counts = breaker.counts();
        let minimum = breaker.config().minimum_calls;
        Metrics {
            state: breaker.state(),
            calls: counts.calls,
            failures: counts.failures,
            slow_calls: counts.slow,
            failure_rate: counts.failure_rate(minimum),
            slow_call_rate: counts.slow_rate(minimum),
            consecutive_failures: breaker.consecutive_failures(),
            probes_in_flight: breaker.probes_in_flight(),
        }
    }

    /// Rejects every call until [`force_closed`](Self::force_closed) or [`reset`](Self::reset).
    /// Rejections carry no `retry_after`.
    pub fn force_open(&self) {
        self.to(CircuitState::ForcedOpen, false)
    }

    /// Closes the breaker now, with an empty window. The rules apply again from here, and the open
    /// duration of the next trips keeps growing from where it was; use [`reset`](Self::reset) to
    /// forget earlier trips too.
    pub fn force_closed(&self) {
        self.to(CircuitState::Closed, false)
    }

    /// Admits every call and measures nothing, until [`force_closed`](Self::force_closed) or
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.to(CircuitState::Disabled, false)
    }

    /// Admits every call and measures it (see [`metrics`](Self::metrics)), but never rejects or trips:
    /// for trying a configuration out in production.
    pub fn metrics_only(&self) {
        self.to(CircuitState::MetricsOnly, false)
    }

    /// Back to the state of a new breaker: closed, an empty window, and no memory of earlier trips.
    pub fn reset(&self) {
        self.to(CircuitState::Closed, true)
    }

    fn to(&self, state: CircuitState, forget_trips: bool) {
        let emit = self.shared.emitter();
        self.shared.gate.transition(state, forget_trips, emit)
    }
}

impl<O> Clone for Handle<O> {
    fn clone(&self) -> Self {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl<O> fmt::Debug for Handle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.shared.name())
            .field("breaker", &self.shared.gate)
            .finish()
    }
}
