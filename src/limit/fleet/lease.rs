//! One key's lease in one instance: admissions taken from the store and not spent yet.

use super::Grant;
use crate::limit::rate::gcra::TIME;
use crate::limit::rate::keyed::Cell;
use crate::sync::nanos;
use crate::sync::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use tokio::sync::Notify;

/// The value in [`Lease::remaining`] and in a lease's `reserved`, `due` and `denied_until`;
/// their top four bits count the keys the lease has served.
pub(super) const COUNT: u64 = TIME;

/// How many waiting calls a renewal mark's holder wakes, at most, one by one; past this, waking
/// them all costs less.
const WAKE_ONE_BY_ONE: u64 = 64;

/// Whom the holder of a key's renewal mark wakes as it takes the mark off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// Every call waiting on the lease, to decide again: the holder brought no admissions, or a
    /// denial, a reservation or a failure that each of them must be told of.
    All,
    /// As many as the holder added admissions to the lease: only they can proceed. Those that
    /// find the admissions taken by others wait again; the rest are woken by the next holder,
    /// which the call that takes the lease's last admission starts (or, when none can start,
    /// that call wakes them all).
    Only(u64),
}

/// What a [`Lease::take`] found.
pub(super) enum Spent {
    /// One admission, with this many left, taken while the lease had served this many keys (in
    /// the top bits, as [`Lease::generation`] reads it): what [`Lease::give_back`] needs.
    Taken(u64, u64),
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
    /// after then ([`COUNT`]; the keys served in the top bits, as in `remaining`).
    pub(super) reserved: AtomicU64,
    /// When the reserved admissions are due (on the limiter's clock; the keys served in the top
    /// bits).
    pub(super) due: AtomicU64,
    /// How many to ask for next (0 before the first renewal: the smallest lease).
    size: AtomicU64,
    /// The mark of the renewal in flight, or of a call moving the due reservation to the lease
    /// ([`Lease::mark`]), 0 if none: it names the key and its tenure of the slot, so that its
    /// holder takes off its own mark only, even if its key lost the slot meanwhile and took it
    /// back.
    pub(super) renewing: AtomicU64,
    /// Until when the store said there is no room (on the limiter's clock; 0: not denied; the
    /// keys served in the top bits).
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
                Ok(_) => return Spent::Taken((current - 1) & COUNT, current & !COUNT),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back one admission taken by [`Lease::take`] while the lease had served
    /// `generation` keys, for a call that was not made after all, and wakes a call waiting on
    /// the lease to take it. Only while the lease still serves that key: once the slot has been
    /// cleared for another key (its count of keys served bumped), the admission goes to nobody,
    /// as any leased to an evicted key. Returns whether it was given back.
    pub(super) fn give_back(&self, generation: u64) -> bool {
        let back = Self::put(&self.remaining, generation, |left| left + 1);
        if back {
            self.notify.notify_one();
        }
        back
    }

    /// The admissions left.
    pub(super) fn left(&self) -> u64 {
        self.remaining.load(Relaxed) & COUNT
    }

    /// The admissions reserved and not due yet (read before [`Lease::due()`]: a reservation is
    /// published after its due time).
    pub(super) fn reserved(&self) -> u64 {
        self.reserved.load(Acquire) & COUNT
    }

    /// When the reserved admissions are due.
    pub(super) fn due(&self) -> u64 {
        self.due.load(Relaxed) & COUNT
    }

    /// Until when the store said there is no room (0: not denied).
    pub(super) fn denied_until(&self) -> u64 {
        self.denied_until.load(Relaxed) & COUNT
    }

    /// The keys the lease has served, modulo 16, in the top bits: read by a renewal as it starts,
    /// before it checks that the slot holds its key (see [`Lease::credit`]).
    pub(super) fn generation(&self) -> u64 {
        self.remaining.load(Acquire) & !COUNT
    }

    /// Takes the reserved admissions (their due time has come) if they were reserved while the
    /// lease had served `generation` keys, with that count in the top bits, for
    /// [`Lease::add_reserved`]; 0 if there are none of that count's.
    pub(super) fn take_reserved(&self, generation: u64) -> u64 {
        let mut current = self.reserved.load(Acquire);
        loop {
            if current & !COUNT != generation || current & COUNT == 0 {
                return 0;
            }
            match self
                .reserved
                .compare_exchange_weak(current, generation, Relaxed, Acquire)
            {
                Ok(_) => return current,
                Err(actual) => current = actual,
            }
        }
    }

    /// The renewal mark of the key tagged `tag` in its tenure of the slot that began when the
    /// lease had served `generation` keys ([`Lease::generation`]): the tag with the count in
    /// bits 4 to 7. Still odd (a tag is), so never 0; another tenure's mark differs unless the
    /// slot changed hands a multiple of 16 times meanwhile.
    pub(super) fn mark(tag: u64, generation: u64) -> u64 {
        tag ^ (generation >> 56)
    }

    /// Takes `mark` off the lease if it is still there (a clearing for another key, or that key's
    /// own mark since, stays), and wakes the calls waiting on the lease: `wake` of them, or all
    /// if the mark was no longer there (the slot changed hands: its waiters start over).
    pub(super) fn unmark(&self, mark: u64, wake: Wake) {
        let ours = self
            .renewing
            .compare_exchange(mark, 0, Release, Relaxed)
            .is_ok();
        match wake {
            Wake::Only(n) if ours && n <= WAKE_ONE_BY_ONE => {
                for _ in 0..n {
                    self.notify.notify_one();
                }
            }
            _ => self.notify.notify_waiters(),
        }
    }

    /// Adds admissions taken by [`Lease::take_reserved`] to the lease, unless the slot was
    /// cleared for another key in between: they go to the key they were reserved for or to
    /// nobody. They are added only while the lease still counts the key they were reserved
    /// under (see [`Lease::credit`] for why the counts of the two fields agree: `clear` bumps
    /// `remaining` before `reserved`, so a reservation taken under the old count finds the new
    /// one in `remaining`, or is added before the bump, which wipes it).
    pub(super) fn add_reserved(&self, taken: u64) {
        let count = taken & COUNT;
        if count != 0 {
            Self::put(&self.remaining, taken & !COUNT, |left| left + count);
        }
    }

    /// Replaces the value of `field` by `with(value)` while its top bits still count
    /// `generation`; false, changing nothing, once the lease has been cleared for another key.
    fn put(field: &AtomicU64, generation: u64, with: impl Fn(u64) -> u64) -> bool {
        let mut current = field.load(Relaxed);
        loop {
            if current & !COUNT != generation {
                return false;
            }
            let next = generation | (with(current & COUNT) & COUNT);
            match field.compare_exchange_weak(current, next, Release, Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
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
    ///
    /// The grant is for the key whose renewal read `generation` ([`Lease::generation`]) as it
    /// started, and is credited only while the lease still serves that key: the slot may be
    /// handed to another key after the renewal last saw its own there. Every field the grant
    /// writes (`denied_until`, `due`, `reserved`, `remaining`) counts the keys served in its top
    /// bits; [`Cell::clear`] bumps the count of each, once per new key, after taking the tag
    /// from the old key and before releasing the new one; and each write here is a
    /// compare-and-swap that succeeds only while its field still counts `generation`. So:
    ///
    /// - `generation` is a count of this key's: the renewal read it before checking that the
    ///   slot holds its key. Had a clearing for another key set it, the check would find that
    ///   clearing's mark or a later tag, its own only if its key took the slot back since; that
    ///   clearing bumped every field past `generation` before releasing the tag, and the
    ///   renewal, which started after, finds none at `generation` again: it writes nothing.
    /// - In each field, in that field's own order of changes, a write either comes before the
    ///   next clearing's bump, which then wipes it along with the old key's state, or after it,
    ///   where it finds the count changed and writes nothing. No interleaving with `clear`, at
    ///   any step of it, gives the new key any of the grant.
    ///
    /// The count wraps at 16: a renewal would have to stay in flight while its slot changed
    /// hands 16 times for this to fail, as for [`Lease::take`].
    ///
    /// A grant that finds its key gone is dropped, and the rest of it with it: those admissions
    /// are lost, as any leased to an evicted key. Returns whether the grant was credited. Sizing the next lease (`size`, `renewed_at`)
    /// comes after the grant only if all of it was credited; a clearing that slips in between
    /// leaves the new key a size within the bounds and an older renewal time, which only
    /// change how much its first lease asks for and which key is evicted first, not what the
    /// store grants it.
    pub(super) fn credit(
        &self,
        generation: u64,
        grant: Grant,
        want: u64,
        now: u64,
        bounds: (u64, u64),
        lasts: u64,
    ) -> bool {
        let granted = u64::from(grant.granted);
        let wait = nanos(grant.wait);
        let put = |field, value: u64| Self::put(field, generation, |_| value.min(COUNT));
        let credited = if granted == 0 {
            put(&self.denied_until, now.saturating_add(wait.max(1)))
        } else if wait == 0 {
            put(&self.denied_until, 0)
                && Self::put(&self.remaining, generation, |left| left + granted)
        } else {
            // No renewal starts while slots are reserved, so this is the only reservation; its
            // due time is in place before it is (`reserved` is read first).
            put(&self.denied_until, 0)
                && put(&self.due, now.saturating_add(wait))
                && put(&self.reserved, granted)
        };
        if !credited {
            return false;
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
        true
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
    /// admissions left, of the reservation and the denial (see [`Lease::take`] and
    /// [`Lease::credit`]) and of the local cell (see
    /// [`Rule::decide_keyed`](crate::limit::rate::gcra::Rule::decide_keyed)).
    fn clear(&self) {
        Cell::clear(&self.remaining);
        Cell::clear(&self.reserved);
        Cell::clear(&self.due);
        self.size.store(0, Relaxed);
        self.renewing.store(0, Relaxed);
        Cell::clear(&self.denied_until);
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
            && self.reserved.load(Relaxed) & COUNT == 0
            && self.local.load(Relaxed) & TIME <= now
        {
            (1, 0)
        } else {
            (2, self.renewed_at.load(Relaxed))
        }
    }
}
