//! What the limiters that decide in `call` share: the keyed limiter, and the global one when it
//! honours deadlines. A call that cannot go ahead at once takes a slot given back by a caller
//! that left ([`Holes`]) or reserves the next one, as far ahead as the limit's maximum wait and
//! the request's deadline allow; its response future waits for the slot, then makes the call in
//! it on the service that was made ready for it, and gives the slot back if dropped before the
//! call is made.

use super::gcra::{Decision, Rule, Slot};
use super::holes::{Hole, Holes};
use super::Held;
use crate::core::Deadline;
use crate::limit::error::RateLimited;
use crate::sync::AtomicU64;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// What becomes of one call decided in `call`.
pub(crate) enum Verdict {
    /// Go ahead now, in this slot.
    Admit(Slot),
    /// Wait for this slot, then go ahead.
    Wait(Hole),
    /// Refused: a call could go ahead this many nanoseconds from now.
    Reject(u64),
}

/// How long a request carrying `deadline` has left, in nanoseconds (`None`: no deadline). Reads
/// the clock only for a request that carries one.
#[inline]
pub(crate) fn time_left(deadline: Option<Deadline>) -> Option<u64> {
    deadline.map(|deadline| crate::sync::nanos(deadline.remaining()))
}

/// The last time on the limiter's clock a call at `now` may be given a slot: the sooner of the
/// limit's maximum wait and the request's deadline, `left` nanoseconds from now. A slot due at the
/// deadline itself is too late, so the last slot the call may have is one nanosecond before it.
/// `None` when no time is left (a deadline at or before now has passed): the call may have no
/// slot at all, not even one due now.
pub(crate) fn last_slot(now: u64, max_wait: u64, left: Option<u64>) -> Option<u64> {
    let most = now.saturating_add(max_wait);
    match left {
        Some(0) => None,
        Some(left) => Some(most.min(now.saturating_add(left - 1))),
        None => Some(most),
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

/// A slot taken for a call made at once, given back if the call is not made after all: the
/// observer told of it, or the inner call, panicked. Given back exactly when no later slot was
/// taken meanwhile, as a slot reserved in `poll_ready` and never used ([`Rule::undo`]).
pub(crate) struct Unused<'a> {
    tat: &'a AtomicU64,
    slot: Slot,
}

impl<'a> Unused<'a> {
    #[inline(always)]
    pub(crate) fn new(tat: &'a AtomicU64, slot: Slot) -> Self {
        Unused { tat, slot }
    }

    /// The call was made in the slot.
    #[inline(always)]
    pub(crate) fn used(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unused<'_> {
    fn drop(&mut self) {
        Rule::undo(self.tat, self.slot);
    }
}

/// How a limiter reports a wait dropped before its slot: `Cancelled`, since the call was reported
/// `Permitted` when its slot was reserved and would otherwise count as admitted.
pub(crate) trait Report: Send + 'static {
    /// Sends the `Cancelled` event.
    fn cancelled(self);
}

/// A call's reserved slot while it waits for it, and until the call is made in it. Dropped
/// before then (the call went away while it waited, or while the service beneath was made ready
/// once the slot came, or that service failed), it gives the slot back, then has `report` say so
/// (not while a panic unwinds: a second panic in the observer would abort the process).
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

    /// The call is made in the slot.
    fn used(&mut self) {
        if let Some(held) = self.held.take() {
            held.used();
        }
    }

    /// Waits `nanos` for the slot; the call is then made in it (see [`Turn::used`]), and
    /// dropped first, the wait gives the slot back.
    pub(crate) fn wait(self, nanos: u64) -> Wait {
        Box::pin(Slotted {
            sleep: tokio::time::sleep(Duration::from_nanos(nanos)),
            waiting: self,
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

pin_project! {
    /// A reserved slot and the sleep until it is due.
    struct Slotted<R: Report> {
        #[pin]
        sleep: Sleep,
        waiting: Waiting<R>,
    }
}

impl<R: Report> Turn for Slotted<R> {
    fn poll_turn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RateLimited>> {
        self.project().sleep.poll(cx).map(Ok)
    }

    fn used(self: Pin<&mut Self>) {
        self.project().waiting.used();
    }
}

/// A call's wait for its turn: done when the call may go ahead, or failed when it may not. What
/// the turn holds (a reserved slot) stays held until the call is made in it ([`Turn::used`]),
/// and is given back if the turn is dropped first.
pub(crate) trait Turn: Send {
    /// Ready once the call may go ahead (`Ok`), or may not (`Err`).
    fn poll_turn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RateLimited>>;

    /// The call is made: what the turn holds is used. Nothing by default (a turn that holds
    /// nothing once it is done).
    fn used(self: Pin<&mut Self>) {}
}

/// A future is a turn that holds nothing once done (the fleet limiter's wait for a lease).
impl<F: Future<Output = Result<(), RateLimited>> + Send> Turn for F {
    fn poll_turn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RateLimited>> {
        self.poll(cx)
    }
}

/// A call's wait for its turn, boxed (only calls that wait have one).
pub(crate) type Wait = Pin<Box<dyn Turn>>;
