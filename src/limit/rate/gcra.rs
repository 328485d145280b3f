//! The generic cell rate algorithm on one atomic word, and the quota it enforces.

use crate::sync::{nanos, AtomicU64, Ordering::Relaxed};
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

    /// Checks that the quota lets some call through.
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
        Ok(())
    }
}

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
}

/// What the algorithm says of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go ahead now.
    Admit,
    /// A slot is reserved this many nanoseconds from now: wait, then go ahead.
    Wait(u64),
    /// No room: the call would be let through this many nanoseconds from now.
    Reject(u64),
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
        let interval = self.interval.load(Relaxed);
        let tolerance = self.tolerance.load(Relaxed);
        let mut current = tat.load(Relaxed);
        loop {
            let next = current.max(now).saturating_add(interval);
            let ahead = next - now;
            let decision = if ahead <= tolerance {
                Decision::Admit
            } else if ahead - tolerance <= max_wait {
                Decision::Wait(ahead - tolerance)
            } else {
                return Decision::Reject(ahead - tolerance);
            };
            match tat.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return decision,
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back one interval the cell reserved for a call that was not made. Later
    /// reservations keep their times; the next caller finds the slot free.
    pub(crate) fn give_back(&self, tat: &AtomicU64) {
        let interval = self.interval.load(Relaxed);
        let _ = tat.fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(interval)));
    }

    /// How many calls the cell would admit at once at `now`.
    pub(crate) fn available(&self, tat: &AtomicU64, now: u64) -> u64 {
        let interval = self.interval.load(Relaxed);
        let tolerance = self.tolerance.load(Relaxed);
        let used = tat.load(Relaxed).saturating_sub(now);
        tolerance.saturating_sub(used) / interval
    }
}

/// Takes up to `want` calls at once from the cell `tat` at `now`, for a quota of `interval` and
/// `tolerance` (see [`Rule::decide`]), reserving slots up to `max_wait` ahead: as many as fit,
/// `k` such that `max(tat, now) + k × interval − now ≤ tolerance + max_wait`. Returns how many
/// were taken and how long until the first of them is due (0: now); when none could be, how
/// long until one could be taken without waiting.
#[cfg_attr(not(feature = "fleet"), allow(dead_code))]
pub(crate) fn take(
    tat: &AtomicU64,
    now: u64,
    interval: u64,
    tolerance: u64,
    want: u64,
    max_wait: u64,
) -> (u64, u64) {
    let interval = interval.max(1);
    let mut current = tat.load(Relaxed);
    loop {
        let base = current.max(now);
        let used = base - now;
        let wait = (used + interval).saturating_sub(tolerance);
        let room = tolerance.saturating_add(max_wait).saturating_sub(used) / interval;
        let granted = room.min(want);
        if granted == 0 {
            return (0, wait);
        }
        let next = base.saturating_add(granted * interval);
        match tat.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return (granted, wait),
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

    #[test]
    fn burst_then_one_per_interval() {
        let rule = Rule::new(&Quota::per_second(10).burst(3));
        let tat = AtomicU64::new(0);
        for _ in 0..3 {
            assert_eq!(rule.decide(&tat, 0, 0), Decision::Admit);
        }
        assert_eq!(rule.decide(&tat, 0, 0), Decision::Reject(100 * MS));
        assert_eq!(rule.decide(&tat, 99 * MS, 0), Decision::Reject(MS));
        assert_eq!(rule.decide(&tat, 100 * MS, 0), Decision::Admit);
        assert_eq!(rule.decide(&tat, 100 * MS, 0), Decision::Reject(100 * MS));
        // Waiting: the slot 100 ms on is reserved, and the next 200 ms on.
        assert_eq!(
            rule.decide(&tat, 100 * MS, 250 * MS),
            Decision::Wait(100 * MS)
        );
        assert_eq!(
            rule.decide(&tat, 100 * MS, 250 * MS),
            Decision::Wait(200 * MS)
        );
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
            assert_eq!(rule.decide(&one, 0, 0), Decision::Admit);
        }
        assert_eq!(rule.decide(&one, 0, 0), Decision::Reject(100 * MS));
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
