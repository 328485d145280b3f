//! The shared core beneath every seawall layer: outcomes and their classification, sliding windows,
//! the admission gate and its one `Service`, and the observer hook.
//!
//! Most users never touch this module; it is the toolkit for writing a [`Gate`] of your own and the
//! home of the types every layer shares ([`Outcome`], [`Classify`], [`Observer`], [`Event`]).

pub(crate) mod anchor;
mod classify;
mod deadline;
mod fail_fast;
pub(crate) mod gate;
#[cfg(feature = "hedge")]
pub(crate) mod histogram;
#[cfg(all(feature = "hedge", seawall_loom))]
#[doc(hidden)]
pub use histogram::LoomLatencyWindow;
#[cfg(any(feature = "limit", feature = "circuit-breaker"))]
pub(crate) mod keys;
pub(crate) mod observe;
mod outcome;
pub mod window;

pub use classify::{Classify, ErrorIsFailure};
pub use deadline::{CarriedDeadline, Deadline, DeadlineCarrier, NoDeadline, RequestTimeout};
pub use fail_fast::FailFast;
pub use gate::{Gate, GateBuilder, GateLayer, Guard, GuardFuture};
pub use observe::{
    CircuitState, EjectReason, Emitter, Event, EventKind, FallbackTrigger, GiveUpReason, Observer,
    RejectReason, RetryReason, Source, TierFill, TierOp, TimeoutCause, TracingObserver,
};
pub use outcome::{Outcome, Record};
