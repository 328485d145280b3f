//! The generic cell rate algorithm on one atomic word, and the quota it enforces.

use crate::sync::{nanos, AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::fmt;
use std::time::Duration;

/// How many calls a rate limiter lets through: `count` per `period`, spread evenly (one every
/// `period / count`), with up to `burst` at once after a quiet spell.
///
/// The burst defaults to `count`, so `Quota::per_second(5)` lets 5 calls through at once, then one
/// every 200 ms.
///
/// ```
/// use seawall::limit::rate::Quota;
/// use std::time::Duration;
///
/// let quota = Quota::per_second(5).burst(10);
/// assert_eq!(quota.interval(), Duration::from_millis(200));
/// assert_eq!(quota.burst_size(), 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `count` calls per `period`, with a burst of `count`.
    pub fn new(count: u32, period: Duration) -> Self {
        Quota {
            count,
            period,
            burst: count,
        }
    }

    /// `count` calls a second.
    pub fn per_second(count: u32) -> Self {
        Quota::new(count, Duration::from_secs(1))
    }

    /// `count` calls a minute.
    pub fn per_minute(count: u32) -> Self {
        Quota::new(count, Duration::from_secs(60))
    }

    /// `count` calls an hour.
    pub fn per_hour(count: u32) -> Self {
        Quota::new(count, Duration::from_secs(3600))
    }

    /// Up to `burst` calls at once after a quiet spell (at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The time between two calls at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos())
    }

    /// The most calls let through at once.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    pub(crate) fn interval_nanos(&self) -> u64 {
        let period = nanos(self.period);
        (period / u64::from(self.count.max(1))).max(1)
    }

    /// Checks that the quota lets some call through, at the rate it says, within the times a
    /// limiter can keep.
    pub(crate) fn validate(&self) -> Result<(), QuotaError> {
        if self.count == 0 {
            return Err(QuotaError::Count);
        }
        if self.period.is_zero() {
            return Err(QuotaError::Period);
        }
        if self.burst == 0 {
            return Err(QuotaError::Burst);
        }
        if nanos(self.period) < u64::from(self.count) {
            return Err(QuotaError::Interval);
        }
        let (_, tolerance) = Rule::parts(self);
        if nanos(self.period) > MAX_SPAN || tolerance > MAX_SPAN {
            return Err(QuotaError::TooLong);
        }
        Ok(())
    }
}

/// The longest time a limiter keeps, in nanoseconds (2^58, about nine years): a quota's period,
/// its burst's worth of intervals, a maximum wait. Limits keep times in the low 60 bits of a
/// word (see [`TIME`]), and sums of these stay within them for decades of uptime.
pub(crate) const MAX_SPAN: u64 = 1 << 58;

/// The bits of a keyed cell that hold its theoretical arrival time; the top four count the
/// keys the cell has held (see `keyed::Table`), so that a decision made for an evicted key
/// cannot land on the cell of the key that replaced it. A global limiter's cell keeps them zero.
pub(crate) const TIME: u64 = (1 << 60) - 1;

/// A quota that lets nothing through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The count of calls per period is zero.
    #[error("a quota must allow at least one call per period")]
    Count,
    /// The period is zero.
    #[error("a quota's period must be longer than zero")]
    Period,
    /// The burst is zero.
    #[error("a quota's burst must be at least 1")]
    Burst,
    /// The period is shorter than one nanosecond per call (`count` nanoseconds): the interval
    /// between calls would round to nothing.
    #[error("a quota's period must be at least one nanosecond per call")]
    Interval,
    /// The period, or the burst's worth of intervals, is longer than a limiter keeps (about nine
    /// years).
    #[error("a quota's period and burst must span at most about nine years")]
    TooLong,
}

/// What the algorithm says of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go ahead now, in this slot.
    Admit(Slot),
    /// This slot is reserved this many nanoseconds from now: wait, then go ahead.
    Wait(u64, Slot),
    /// No room: the call would be let through this many nanoseconds from now.
    Reject(u64),
}

/// The slot a rate limiter gave a call: the permit of [`RateLimiter`](super::RateLimiter),
/// which gives it back if no call is made in it and no later slot was given since.
// The value the cell held before, and the value the taking wrote. While the cell still holds
// `after`, no later call has been decided on it, and the slot can be given back exactly by
// writing `before` again (see `Rule::undo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub(crate) before: u64,
    pub(crate) after: u64,
}

/// A quota as the algorithm uses it: the emission interval and the tolerance (`burst × interval`),
/// each in its own atomic so that the quota can change at run time. A call that races a change may
/// see the old interval with the new tolerance, or the reverse; either is a quota that one of the
/// two allows for that one call.
pub(crate) struct Rule {
    interval: AtomicU64,
    tolerance: AtomicU64,
}

impl Rule {
    pub(crate) fn new(quota: &Quota) -> Self {
        let (interval, tolerance) = Rule::parts(quota);
        Rule {
            interval: AtomicU64::new(interval),
            tolerance: AtomicU64::new(tolerance),
        }
    }

    /// A quota's emission interval and tolerance (`burst × interval`), in nanoseconds.
    pub(crate) fn parts(quota: &Quota) -> (u64, u64) {
        let interval = quota.interval_nanos();
        (interval, interval.saturating_mul(quota.burst.into()))
    }

    pub(crate) fn set(&self, quota: &Quota) {
        let (interval, tolerance) = Rule::parts(quota);
        self.interval.store(interval, Relaxed);
        self.tolerance.store(tolerance, Relaxed);
    }

    /// Decides one call at `now` against the cell `tat` (its theoretical arrival time: when the
    /// cell's next call would be due at the sustained rate), and moves the cell when the call is
    /// admitted or a slot reserved. `max_wait` is how long a call may wait for a slot (0: never).
    ///
    /// A call is admitted when `max(tat, now) + interval − now ≤ tolerance`; it then moves `tat` to
    /// `max(tat, now) + interval`. Every admission is one compare-and-swap of the cell, so
    /// concurrent calls are admitted exactly as if one at a time. (The cell is a plain counter,
    /// read and written only through itself, so relaxed ordering suffices.)
    #[inline]
    pub(crate) fn decide(&self, tat: &AtomicU64, now: u64, max_wait: u64) -> Decision {
        match self.decide_as::<false>(tat, now, max_wait, || true) {
            Some(decision) => decision,
            None => unreachable!("a global cell is never moved"),
        }
    }

    /// [`decide`](Self::decide) for a call that may only go ahead now: admits it, or leaves the
    /// cell as it is and says when it could go ahead.
    #[inline]
    pub(crate) fn admit(&self, tat: &AtomicU64, now: u64) -> Result<Slot, u64> {
        match self.decide(tat, now, 0) {
            Decision::Admit(slot) => Ok(slot),
            Decision::Wait(after, _) | Decision::Reject(after) => Err(after),
        }
    }

    /// [`decide`](Self::decide) on a cell of a keyed table: the cell's top bits (outside
    /// [`TIME`]) are kept as they are, and `holds` (whether the cell still holds the caller's
    /// key) is asked after each read of the cell, before anything is decided on what was read
    /// (a refusal as much as a swap). `None` when the cell no longer holds the key: nothing was
    /// decided on it.
    ///
    /// A swap succeeds only if the cell still holds the value read, top bits included; the table
    /// changes them (and then the tag, which `holds` reads) whenever it hands the cell to another
    /// key. So a swap that succeeds was decided on the state of the key `holds` vouched for:
    /// never on another key's.
    #[inline]
    pub(crate) fn decide_keyed(
        &self,
        tat: &AtomicU64,
        now: u64,
        max_wait: u64,
        holds: impl Fn() -> bool,
    ) -> Option<Decision> {
        self.decide_as::<true>(tat, now, max_wait, holds)
    }

    #[inline(always)]
    fn decide_as<const KEYED: bool>(
        &self,
        tat: &AtomicU64,
        now: u64,
        max_wait: u64,
        holds: impl Fn() -> bool,
    ) -> Option<Decision> {
        let interval = self.interval.load(Relaxed);
        let tolerance = self.tolerance.load(Relaxed);
        let (load, fail) = if KEYED {
            (Acquire, Acquire)
        } else {
            (Relaxed, Relaxed)
        };
        let mut current = tat.load(load);
        loop {
            // Whatever this read leads to, a refusal included, is decided on the key's state
            // only if the cell still held the key when it was read: a cell just handed to a
            // busy new key would otherwise refuse the caller with that key's time to come back.
            if KEYED && !holds() {
                return None;
            }
            let (epoch, time) = if KEYED {
                (current & !TIME, current & TIME)
            } else {
                (0, current)
            };
            let next = time.max(now).saturating_add(interval);
            let ahead = next - now;
            let wait = if ahead <= tolerance {
                0
            } else if ahead - tolerance <= max_wait {
                ahead - tolerance
            } else {
                return Some(Decision::Reject(ahead - tolerance));
            };
            let next = if KEYED { epoch | next.min(TIME) } else { next };
            match tat.compare_exchange_weak(current, next, Relaxed, fail) {
                Ok(_) => {
                    let slot = Slot {
                        before: current,
                        after: next,
                    };
                    return Some(match wait {
                        0 => Decision::Admit(slot),
                        wait => Decision::Wait(wait, slot),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives `slot`, taken from the cell `tat`, back, if no later call has been decided on the
    /// cell: then the cell is exactly as if the slot had never been taken. Returns whether it
    /// was given back. A slot with later ones taken after it is not: moving the cell back one
    /// interval would let a caller take a slot next to those already promised, a call more in
    /// some window than the quota allows.
    pub(crate) fn undo(tat: &AtomicU64, slot: Slot) -> bool {
        tat.compare_exchange(slot.after, slot.before, Relaxed, Relaxed)
            .is_ok()
    }

    /// How long from `now` until the cell would admit a call at once (0: now), deciding nothing.
    pub(crate) fn not_before(&self, tat: &AtomicU64, now: u64) -> u64 {
        let interval = self.interval.load(Relaxed);
        let tolerance = self.tolerance.load(Relaxed);
        let next = (tat.load(Relaxed) & TIME).max(now).saturating_add(interval);
        (next - now).saturating_sub(tolerance)
    }

    /// How many calls the cell would admit at once at `now`.
    pub(crate) fn available(&self, tat: &AtomicU64, now: u64) -> u64 {
        let interval = self.interval.load(Relaxed);
        let tolerance = self.tolerance.load(Relaxed);
        let used = (tat.load(Relaxed) & TIME).saturating_sub(now);
        tolerance.saturating_sub(used) / interval
    }
}

/// Takes up to `want` calls at once from the keyed cell `tat` at `now`, for a quota of
/// `interval` and `tolerance` (see [`Rule::decide`]), reserving slots up to `max_wait` ahead: as
/// many as fit, `k` such that `max(tat, now) + k × interval − now ≤ tolerance + max_wait`.
/// Returns how many were taken and how long until the first of them is due (0: now); when none
/// could be, how long until one could be taken without waiting. `None` when the cell no longer
/// holds the key (`holds`; see [`Rule::decide_keyed`]): nothing was taken.
#[cfg_attr(not(feature = "fleet"), allow(dead_code))]
pub(crate) fn take(
    tat: &AtomicU64,
    now: u64,
    (interval, tolerance): (u64, u64),
    want: u64,
    max_wait: u64,
    holds: impl Fn() -> bool,
) -> Option<(u64, u64)> {
    let interval = interval.max(1);
    let mut current = tat.load(Acquire);
    loop {
        // Checked after every read, before anything is decided on it, a refusal included.
        if !holds() {
            return None;
        }
        let (epoch, time) = (current & !TIME, current & TIME);
        let base = time.max(now);
        let used = base - now;
        let wait = (used + interval).saturating_sub(tolerance);
        let room = tolerance.saturating_add(max_wait).saturating_sub(used) / interval;
        let granted = room.min(want);
        if granted == 0 {
            return Some((0, wait));
        }
        let next = epoch | base.saturating_add(granted * interval).min(TIME);
        match tat.compare_exchange_weak(current, next, Relaxed, Acquire) {
            Ok(_) => return Some((granted, wait)),
            Err(actual) => current = actual,
        }
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field(
                "interval",
                &Duration::from_nanos(self.interval.load(Relaxed)),
            )
            .field(
                "tolerance",
                &Duration::from_nanos(self.tolerance.load(Relaxed)),
            )
            .finish()
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn take(tat: &AtomicU64, now: u64, i: u64, t: u64, want: u64, wait: u64) -> (u64, u64) {
        super::take(tat, now, (i, t), want, wait, || true).unwrap()
    }

    #[test]
    fn burst_then_one_per_interval() {
        let rule = Rule::new(&Quota::per_second(10).burst(3));
        let tat = AtomicU64::new(0);
        for _ in 0..3 {
            assert!(matches!(rule.decide(&tat, 0, 0), Decision::Admit(_)));
        }
        assert_eq!(rule.decide(&tat, 0, 0), Decision::Reject(100 * MS));
        assert_eq!(rule.decide(&tat, 99 * MS, 0), Decision::Reject(MS));
        assert!(matches!(rule.decide(&tat, 100 * MS, 0), Decision::Admit(_)));
        assert_eq!(rule.decide(&tat, 100 * MS, 0), Decision::Reject(100 * MS));
        // Waiting: the slot 100 ms on is reserved, and the next 200 ms on.
        assert!(matches!(
            rule.decide(&tat, 100 * MS, 250 * MS),
            Decision::Wait(wait, _) if wait == 100 * MS
        ));
        assert!(matches!(
            rule.decide(&tat, 100 * MS, 250 * MS),
            Decision::Wait(wait, _) if wait == 200 * MS
        ));
        assert_eq!(
            rule.decide(&tat, 100 * MS, 250 * MS),
            Decision::Reject(300 * MS)
        );
        // A quiet spell refills the burst, and no more.
        assert_eq!(rule.available(&tat, 10_000 * MS), 3);
    }

    #[test]
    fn take_grants_what_fits_and_says_when_more_will() {
        let tat = AtomicU64::new(0);
        // 10 a second, burst 3: three at once, then one per 100 ms.
        assert_eq!(take(&tat, 0, 100 * MS, 300 * MS, 5, 0), (3, 0));
        assert_eq!(take(&tat, 0, 100 * MS, 300 * MS, 5, 0), (0, 100 * MS));
        assert_eq!(take(&tat, 150 * MS, 100 * MS, 300 * MS, 5, 0), (1, 0));
        assert_eq!(take(&tat, 150 * MS, 100 * MS, 300 * MS, 1, 0), (0, 50 * MS));
        // Reserving ahead: the next two slots, the first due in 50 ms, the second 150 ms on.
        assert_eq!(
            take(&tat, 150 * MS, 100 * MS, 300 * MS, 5, 150 * MS),
            (2, 50 * MS)
        );
        assert_eq!(
            take(&tat, 150 * MS, 100 * MS, 300 * MS, 5, 150 * MS),
            (0, 250 * MS)
        );
        assert_eq!(take(&tat, 10_000 * MS, 100 * MS, 300 * MS, 2, 0), (2, 0));
        // The same calls one at a time through `decide` take the same slots.
        let rule = Rule::new(&Quota::per_second(10).burst(3));
        let one = AtomicU64::new(0);
        for _ in 0..3 {
            assert!(matches!(rule.decide(&one, 0, 0), Decision::Admit(_)));
        }
        assert_eq!(rule.decide(&one, 0, 0), Decision::Reject(100 * MS));
    }

    #[test]
    fn a_keyed_cell_that_no_longer_holds_the_key_decides_nothing_even_a_refusal() {
        // 10 a second, burst 1: the cell's key (another's now) has just used its burst.
        let rule = Rule::new(&Quota::per_second(10).burst(1));
        let tat = AtomicU64::new(100 * MS);
        // Over quota on that cell: without the tag check, the caller would be refused with
        // the other key's time to come back.
        assert_eq!(rule.decide_keyed(&tat, 0, 0, || false), None);
        assert_eq!(rule.decide_keyed(&tat, 0, 50 * MS, || false), None);
        assert_eq!(
            rule.decide_keyed(&tat, 0, 0, || true),
            Some(Decision::Reject(100 * MS))
        );
        // A take with no room is told the same way.
        assert_eq!(
            super::take(&tat, 0, (100 * MS, 100 * MS), 1, 0, || false),
            None
        );
        assert_eq!(
            super::take(&tat, 0, (100 * MS, 100 * MS), 1, 0, || true),
            Some((0, 100 * MS))
        );
        assert_eq!(tat.load(Relaxed), 100 * MS);
    }

    #[test]
    fn interval_is_period_over_count() {
        assert_eq!(Quota::per_minute(60).interval(), Duration::from_secs(1));
        assert_eq!(Quota::per_hour(1).burst_size(), 1);
        assert_eq!(Quota::per_second(0).validate(), Err(QuotaError::Count));
        assert_eq!(
            Quota::new(1, Duration::ZERO).validate(),
            Err(QuotaError::Period)
        );
        assert_eq!(
            Quota::per_second(1).burst(0).validate(),
            Err(QuotaError::Burst)
        );
    }
}
