//! What the limiters that decide in `call` share: the keyed limiter, and the global one when it
//! honours deadlines. A call that cannot go ahead at once takes a slot given back by a caller
//! that left ([`Holes`]) or reserves the next one, as far ahead as the limit's maximum wait and
//! the request's deadline allow; its response future waits for the slot, and gives it back if
//! dropped first.

use super::gcra::{Decision, Slot};
use super::holes::{Hole, Holes};
use super::Held;
use crate::core::Deadline;
use crate::limit::error::RateLimited;
use crate::sync::AtomicU64;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What becomes of one call decided in `call`.
pub(crate) enum Verdict {
    /// Go ahead now, in this slot.
    Admit(Slot),
    /// Wait for this slot, then go ahead.
    Wait(Hole),
    /// Refused: a call could go ahead this many nanoseconds from now.
    Reject(u64),
}

/// The last time on the limiter's clock a call at `now` may be given a slot: the sooner of the
/// limit's maximum wait and the request's deadline. A slot due at the deadline itself is too
/// late (a deadline at or before now has passed: no time is left for the call), so the last slot
/// the call may have is one nanosecond before it.
pub(crate) fn last_slot(now: u64, max_wait: u64, deadline: Option<Deadline>) -> u64 {
    let most = now.saturating_add(max_wait);
    match deadline {
        Some(deadline) => {
            let left = crate::sync::nanos(deadline.remaining());
            most.min(now.saturating_add(left.saturating_sub(1)))
        }
        None => most,
    }
}

/// For a call at `now` that could not go ahead at once on the cell `tat` (its `cell` index and
/// key `tag` in `holes`), and may be given a slot up to `until`: the earliest slot a caller gave
/// back by then, else a new slot reserved by then, else a refusal. `decide(max_wait)` decides on
/// the cell itself; `None` (from it, and so from here) when the cell no longer holds the call's
/// key: nothing was decided.
#[inline]
pub(crate) fn reserve(
    holes: &Holes,
    (cell, tag): (usize, u64),
    tat: &AtomicU64,
    now: u64,
    until: u64,
    decide: impl FnOnce(u64) -> Option<Decision>,
) -> Option<Verdict> {
    if let Some(hole) = holes.take(cell, tag, tat, now, until) {
        return Some(Verdict::Wait(hole));
    }
    Some(match decide(until - now)? {
        Decision::Admit(slot) => Verdict::Admit(slot),
        Decision::Wait(nanos, slot) => Verdict::Wait(Hole {
            cell,
            tag,
            due: now + nanos,
            slot,
        }),
        Decision::Reject(nanos) => Verdict::Reject(nanos),
    })
}

/// How a limiter reports a wait dropped before its slot: `Cancelled`, since the call was reported
/// `Permitted` when its slot was reserved and would otherwise count as admitted.
pub(crate) trait Report: Send + 'static {
    /// Sends the `Cancelled` event.
    fn cancelled(self);
}

/// A call's reserved slot while it waits for it. Dropped before the slot is due (the call went
/// away), it gives the slot back, then has `report` say so (not while a panic unwinds: a second
/// panic in the observer would abort the process).
pub(crate) struct Waiting<R: Report> {
    held: Option<Held>,
    /// Kept only for an observer that listens.
    report: Option<R>,
}

impl<R: Report> Waiting<R> {
    pub(crate) fn new(holes: &Arc<Holes>, hole: Hole, report: Option<R>) -> Self {
        Waiting {
            held: Some(Held::new(holes, hole)),
            report,
        }
    }

    /// The slot is due and the call goes ahead in it.
    fn used(mut self) {
        if let Some(held) = self.held.take() {
            held.used();
        }
    }

    /// Waits `nanos` for the slot, then goes ahead in it; dropped first, gives it back.
    pub(crate) fn wait(self, nanos: u64) -> Wait {
        let sleep = tokio::time::sleep(Duration::from_nanos(nanos));
        Box::pin(async move {
            sleep.await;
            self.used();
            Ok(())
        })
    }
}

impl<R: Report> Drop for Waiting<R> {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        // State first (the slot given back), then the event.
        drop(held);
        if let Some(report) = self.report.take() {
            if !std::thread::panicking() {
                report.cancelled();
            }
        }
    }
}

/// A call's wait for its turn: done when the call may go ahead, or failed when it may not.
pub(crate) type Wait = Pin<Box<dyn Future<Output = Result<(), RateLimited>> + Send>>;
