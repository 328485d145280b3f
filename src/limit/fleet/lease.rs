//! One key's lease in one instance: admissions taken from the store and not spent yet.

use super::Grant;
use crate::limit::rate::keyed::Cell;
use crate::sync::nanos;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::Release};
use tokio::sync::Notify;

/// A key's lease, the renewal in flight for it, and its local limit for when the store is
/// degraded.
pub(super) struct Lease {
    /// Admissions taken from the store and not spent.
    pub(super) remaining: AtomicU64,
    /// Admissions reserved by the store, due at `due`: moved to `remaining` by the first call
    /// after then.
    pub(super) reserved: AtomicU64,
    /// When the reserved admissions are due (on the limiter's clock).
    pub(super) due: AtomicU64,
    /// How many to ask for next (0 before the first renewal: the smallest lease).
    size: AtomicU64,
    /// Whether a renewal is in flight.
    pub(super) renewing: AtomicBool,
    /// Until when the store said there is no room (on the limiter's clock; 0: not denied).
    pub(super) denied_until: AtomicU64,
    /// When the last renewal ended.
    renewed_at: AtomicU64,
    /// The local limit's GCRA cell, used while the store is degraded.
    pub(super) local: AtomicU64,
    /// Wakes the calls waiting for a renewal.
    pub(super) notify: Notify,
}

impl Lease {
    /// Spends one admission; returns how many are left, or `None` if there was none.
    #[inline]
    pub(super) fn take(&self) -> Option<u64> {
        self.remaining
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1))
            .ok()
            .map(|before| before - 1)
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
            renewing: AtomicBool::new(false),
            denied_until: AtomicU64::new(0),
            renewed_at: AtomicU64::new(0),
            local: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    fn clear(&self) {
        self.remaining.store(0, Relaxed);
        self.reserved.store(0, Relaxed);
        self.due.store(0, Relaxed);
        self.size.store(0, Relaxed);
        self.renewing.store(false, Relaxed);
        self.denied_until.store(0, Relaxed);
        self.renewed_at.store(0, Relaxed);
        self.local.store(0, Relaxed);
    }

    /// A key with nothing leased or reserved, nothing in flight and its local limit idle loses
    /// nothing when dropped; one with a renewal in flight is kept if at all possible; others go
    /// oldest first.
    fn rank(&self, now: u64) -> (u8, u64) {
        if self.renewing.load(Relaxed) {
            (3, 0)
        } else if self.remaining.load(Relaxed) == 0
            && self.reserved.load(Relaxed) == 0
            && self.local.load(Relaxed) <= now
        {
            (1, 0)
        } else {
            (2, self.renewed_at.load(Relaxed))
        }
    }
}
