//! Watching and steering a bulkhead: [`Handle`].

use super::state::Bulkhead;
use crate::core::gate::{Anchor, Shared};
use std::fmt;

/// A cloneable handle to one bulkhead: how many calls run and wait, and its limit, which can be
/// changed while it runs.
///
/// ```
/// use seawall::bulkhead::BulkheadLayer;
///
/// let layer = BulkheadLayer::new(10);
/// let handle = layer.handle();
/// handle.set_limit(20); // more room: queued callers get the new slots at once
/// assert_eq!(handle.limit(), 20);
/// assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
/// ```
pub struct Handle<O: 'static = ()> {
    pub(crate) shared: Anchor<Shared<Bulkhead, O>>,
}

impl<O> Handle<O> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// How many calls may run at once.
    pub fn limit(&self) -> u64 {
        self.shared.gate.inner.limit()
    }

    /// Changes how many calls may run at once, and returns the limit applied: `limit`, or
    /// [`MAX_CONCURRENT`](super::MAX_CONCURRENT) if it asked for more. Raising it gives the new
    /// slots to queued callers at once; lowering it takes effect as running calls finish (none
    /// is interrupted). Zero stops new calls altogether until it is raised again.
    pub fn set_limit(&self, limit: u64) -> u64 {
        let limit = limit.min(super::config::MAX_CONCURRENT);
        self.shared.gate.inner.set_limit(limit);
        limit
    }

    /// How many calls hold a slot now (reserved in `poll_ready` or running).
    pub fn in_flight(&self) -> u64 {
        self.shared.gate.inner.in_flight()
    }

    /// How many callers wait in the queue now.
    pub fn queued(&self) -> u64 {
        self.shared.gate.inner.queued()
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
            .field("name", &self.name())
            .field("bulkhead", &self.shared.gate)
            .finish()
    }
}
