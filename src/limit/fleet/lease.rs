//! One key's lease in one instance: admissions taken from the store and not spent yet.

use super::Grant;
use crate::limit::rate::gcra::TIME;
use crate::limit::rate::keyed::Cell;
use crate::sync::nanos;
use crate::sync::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use tokio::sync::Notify;

/// The count in [`Lease::remaining`]; its top four bits count the keys the lease has served.
pub(super) const COUNT: u64 = TIME;

/// What a [`Lease::take`] found.
pub(super) enum Spent {
    /// One admission, with this many left.
    Taken(u64),
    /// None left.
    Empty,
    /// The slot no longer holds the key: nothing was taken.
    Lost,
}

/// A key's lease, the renewal in flight for it, and its local limit for when the store is
/// degraded.
pub(super) struct Lease {
    /// Admissions taken from the store and not spent ([`COUNT`]), and in the top four bits how
    /// many keys the slot has held (modulo 16), as in a keyed GCRA cell: a take decided for the
    /// key the slot held fails once the slot is cleared for another.
    pub(super) remaining: AtomicU64,
    /// Admissions reserved by the store, due at `due`: moved to `remaining` by the first call
    /// after then.
    pub(super) reserved: AtomicU64,
    /// When the reserved admissions are due (on the limiter's clock).
    pub(super) due: AtomicU64,
    /// How many to ask for next (0 before the first renewal: the smallest lease).
    size: AtomicU64,
    /// The tag of the key whose renewal is in flight, 0 if none: a renewal ends its own mark
    /// only, even if its key lost the slot to another meanwhile.
    pub(super) renewing: AtomicU64,
    /// Until when the store said there is no room (on the limiter's clock; 0: not denied).
    pub(super) denied_until: AtomicU64,
    /// When the last renewal ended.
    renewed_at: AtomicU64,
    /// The local limit's GCRA cell, used while the store is degraded (a keyed cell: the keys it
    /// served in its top bits).
    pub(super) local: AtomicU64,
    /// Wakes the calls waiting for a renewal.
    pub(super) notify: Notify,
}

impl Lease {
    /// Spends one admission of the key the slot holds while `holds` says so. The slot may have
    /// been handed to another key since the caller found it: the count is read, then `holds`
    /// checked, and the count changed only if it is still the one read. Clearing the slot for a
    /// new key changes the top bits after the slot's tag has changed, so a take never spends an
    /// admission of the new key; a take that the clearing follows spent the old key's own.
    #[inline]
    pub(super) fn take(&self, holds: impl Fn() -> bool) -> Spent {
        let mut current = self.remaining.load(Acquire);
        loop {
            if current & COUNT == 0 {
                return Spent::Empty;
            }
            if !holds() {
                return Spent::Lost;
            }
            match self
                .remaining
                .compare_exchange_weak(current, current - 1, Relaxed, Acquire)
            {
                Ok(_) => return Spent::Taken((current - 1) & COUNT),
                Err(actual) => current = actual,
            }
        }
    }

    /// The admissions left.
    pub(super) fn left(&self) -> u64 {
        self.remaining.load(Relaxed) & COUNT
    }

    /// How many admissions the lease should hold.
    pub(super) fn size(&self, min: u64) -> u64 {
        self.size.load(Relaxed).max(min)
    }

    /// At or below how many admissions left the next lease is asked for: a quarter of the lease
    /// (rounded up), so an instance holds at most `size + ⌈size / 4⌉`.
    #[inline]
    pub(super) fn low_water(&self, min: u64) -> u64 {
        self.size(min).div_ceil(4)
    }

    /// Credits a renewal's `grant` (of `want` asked for) at `now`, and sizes the next lease. A
    /// key the store could not serve in full at once is over its quota: its lease halves, so that
    /// instances sharing a saturated key take slots in small turns (a share in proportion to the
    /// lease would otherwise stay with whoever grew the largest), and the store sees at most the
    /// key's rate in calls. Otherwise a lease that lasted less than half of `lasts` doubles the
    /// next, and one that lasted more than twice `lasts` halves it; always within `min..=max`.
    pub(super) fn credit(&self, grant: Grant, want: u64, now: u64, bounds: (u64, u64), lasts: u64) {
        let granted = u64::from(grant.granted);
        let wait = nanos(grant.wait);
        if granted == 0 {
            self.denied_until
                .store(now.saturating_add(wait.max(1)), Relaxed);
        } else if wait == 0 {
            self.denied_until.store(0, Relaxed);
            self.remaining.fetch_add(granted, Relaxed);
        } else {
            // No renewal starts while slots are reserved, so this is the only reservation.
            self.denied_until.store(0, Relaxed);
            self.due.store(now.saturating_add(wait), Relaxed);
            self.reserved.store(granted, Release);
        }
        let (min, max) = bounds;
        let last = self.renewed_at.swap(now, Relaxed);
        let size = self.size(min);
        let next = if granted < want || wait > 0 {
            size / 2
        } else if last != 0 && now.saturating_sub(last) < lasts / 2 {
            size.saturating_mul(2)
        } else if last == 0 || now.saturating_sub(last) > lasts.saturating_mul(2) {
            size / 2
        } else {
            size
        };
        self.size.store(next.clamp(min, max), Relaxed);
    }
}

impl Cell for Lease {
    fn new() -> Self {
        Lease {
            remaining: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            due: AtomicU64::new(0),
            size: AtomicU64::new(0),
            renewing: AtomicU64::new(0),
            denied_until: AtomicU64::new(0),
            renewed_at: AtomicU64::new(0),
            local: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    /// Empties the lease for a new key, and counts one more key in the top bits of the
    /// admissions left and of the local cell (see [`Lease::take`] and
    /// [`Rule::decide_keyed`](crate::limit::rate::gcra::Rule::decide_keyed)).
    fn clear(&self) {
        Cell::clear(&self.remaining);
        self.reserved.store(0, Relaxed);
        self.due.store(0, Relaxed);
        self.size.store(0, Relaxed);
        self.renewing.store(0, Relaxed);
        self.denied_until.store(0, Relaxed);
        self.renewed_at.store(0, Relaxed);
        Cell::clear(&self.local);
    }

    /// A key with nothing leased or reserved, nothing in flight and its local limit idle loses
    /// nothing when dropped; one with a renewal in flight is kept if at all possible; others go
    /// oldest first.
    fn rank(&self, now: u64) -> (u8, u64) {
        if self.renewing.load(Relaxed) != 0 {
            (3, 0)
        } else if self.left() == 0
            && self.reserved.load(Relaxed) == 0
            && self.local.load(Relaxed) & TIME <= now
        {
            (1, 0)
        } else {
            (2, self.renewed_at.load(Relaxed))
        }
    }
}
