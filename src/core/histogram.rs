//! A lock-free log-linear latency histogram over a sliding window of time, and the percentile it
//! keeps up to date: what a hedge's delay is read from.
//!
//! Latencies are kept in microseconds, in buckets eight to a power of two (a bucket is at most
//! 12.5 % wide), from 1 µs to about nine and a half hours (longer ones go in the last bucket).
//! The window is ten slots of one second; a record adds one to its bucket in the slot of the
//! current second (clearing the slot first if it last held a second ten or more ago): two atomic
//! adds, no lock, no allocation. About once a second the first record (or read) of a new second
//! computes the percentile over the slots of the last ten seconds and stores it, so reading it
//! costs one load.
//!
//! A slot being cleared for a new second drops the records that race with the clearing, and a
//! record that read the slot just before it was cleared may land in the new second: the counts are
//! approximate by a few calls at each second's turn, which a percentile over thousands does not
//! notice.

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Buckets per power of two (as a shift: 2^3 = 8).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The largest exponent kept: 2^35 µs, about 9.5 hours.
const MAX_EXP: u32 = 35;
/// Buckets: the first `SUB` are 0..SUB µs one by one, then `SUB` per power of two.
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;
/// Slots of the window, and how long each covers.
const SLOTS: usize = 10;
const SLOT_NANOS: u128 = 1_000_000_000;
/// A slot's tag while it is being cleared.
const CLEARING: u64 = u64::MAX;
/// The stored percentile when there is none (too few samples).
const NONE: u64 = u64::MAX;

/// The bucket of `micros`.
#[inline]
fn bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let micros = micros.min((1 << (MAX_EXP + 1)) - 1);
    let exp = 63 - micros.leading_zeros(); // at least SUB_BITS
    let sub = (micros >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The largest value (µs, exclusive) bucket `index` holds.
fn upper(index: usize) -> u64 {
    if index < SUB as usize {
        return index as u64 + 1;
    }
    let exp = (index / SUB as usize) as u32 + SUB_BITS - 1;
    let sub = (index % SUB as usize) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    ((SUB + sub) << (exp - SUB_BITS)) + width
}

struct Slot {
    /// One more than the second whose calls the slot counts (0: never used), or [`CLEARING`].
    tag: AtomicU64,
    total: AtomicU32,
    counts: [AtomicU32; BUCKETS],
}

/// Latencies of the last ten seconds and a percentile of them; see the [module docs](self).
pub(crate) struct LatencyWindow {
    origin: Instant,
    /// The percentile kept, in `(0, 1)`.
    quantile: f64,
    /// Fewer samples in the window than this: no percentile.
    min_samples: u32,
    floor: Duration,
    /// The second the percentile was last computed in.
    refreshed: AtomicU64,
    /// The percentile in nanoseconds, or [`NONE`].
    value: AtomicU64,
    slots: [Slot; SLOTS],
}

impl std::fmt::Debug for LatencyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyWindow")
            .field("quantile", &self.quantile)
            .field("min_samples", &self.min_samples)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

impl LatencyWindow {
    /// A window keeping the `quantile` of its latencies, never under `floor`, once it holds at
    /// least `min_samples`.
    pub(crate) fn new(quantile: f64, min_samples: u32, floor: Duration) -> Self {
        LatencyWindow {
            origin: Instant::now(),
            quantile,
            min_samples,
            floor,
            refreshed: AtomicU64::new(0),
            value: AtomicU64::new(NONE),
            slots: std::array::from_fn(|_| Slot {
                tag: AtomicU64::new(0),
                total: AtomicU32::new(0),
                counts: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        }
    }

    #[inline]
    fn second(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos / SLOT_NANOS).unwrap_or(u64::MAX - 1)
    }

    /// Records one latency, measured at `now`.
    #[inline]
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let second = self.second(now);
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let tag = slot.tag.load(Ordering::Acquire);
        if tag != second + 1 {
            // A slot of an older second (or never used): the first to see it clears it. A record
            // that finds it being cleared, or already of a later second, is dropped.
            if tag == CLEARING
                || tag > second + 1
                || slot
                    .tag
                    .compare_exchange(tag, CLEARING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return;
            }
            for count in &slot.counts {
                count.store(0, Ordering::Relaxed);
            }
            slot.total.store(0, Ordering::Relaxed);
            slot.tag.store(second + 1, Ordering::Release);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slot.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        slot.total.fetch_add(1, Ordering::Relaxed);
        self.refresh(second);
    }

    /// The percentile as of `now`: `None` while the window holds too few samples.
    #[inline]
    pub(crate) fn percentile(&self, now: Instant) -> Option<Duration> {
        self.refresh(self.second(now));
        match self.value.load(Ordering::Acquire) {
            NONE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Computes the percentile again if it was last computed in an earlier second: once a
    /// second, by the one caller that moves `refreshed` on.
    #[inline]
    fn refresh(&self, second: u64) {
        let last = self.refreshed.load(Ordering::Relaxed);
        if second <= last
            || self
                .refreshed
                .compare_exchange(last, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.value.store(self.compute(second), Ordering::Release);
    }

    #[cold]
    fn compute(&self, second: u64) -> u64 {
        let live = |slot: &Slot| {
            let tag = slot.tag.load(Ordering::Acquire);
            tag != CLEARING && tag != 0 && tag <= second + 1 && second + 1 - tag < SLOTS as u64
        };
        let total: u64 = self
            .slots
            .iter()
            .filter(|s| live(s))
            .map(|s| u64::from(s.total.load(Ordering::Relaxed)))
            .sum();
        if total == 0 || total < u64::from(self.min_samples) {
            return NONE;
        }
        let rank = ((total as f64 * self.quantile).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for index in 0..BUCKETS {
            seen += self
                .slots
                .iter()
                .filter(|s| live(s))
                .map(|s| u64::from(s.counts[index].load(Ordering::Relaxed)))
                .sum::<u64>();
            if seen >= rank {
                let value = Duration::from_micros(upper(index)).max(self.floor);
                return crate::sync::nanos(value);
            }
        }
        // Counts moved under the sums (a slot cleared meanwhile): the largest bucket.
        crate::sync::nanos(Duration::from_micros(upper(BUCKETS - 1)).max(self.floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut last = 0;
        for micros in (0..5000).chain([1 << 20, (1 << 20) + 12_345, 1 << 35, u64::MAX]) {
            let index = bucket(micros);
            assert!(index < BUCKETS);
            assert!(index >= last || micros > 5000, "monotonic at {micros}");
            if micros < 1 << 36 {
                assert!(micros < upper(index), "{micros} under its bucket's bound");
                let lower = if index == 0 { 0 } else { upper(index - 1) };
                assert!(micros >= lower, "{micros} above the bucket below");
                // At most 12.5 % wide.
                assert!(upper(index) - lower <= (lower / 8).max(1));
            }
            last = index;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn percentile_over_the_window() {
        let window = LatencyWindow::new(0.95, 100, Duration::from_millis(1));
        let now = Instant::now();
        for i in 0..1000u64 {
            window.record(Duration::from_millis(10 + i % 100), now);
        }
        // Not computed until the next second.
        assert_eq!(window.percentile(now), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let p = window.percentile(Instant::now()).unwrap();
        assert!(
            p >= Duration::from_millis(104) && p <= Duration::from_millis(110),
            "{p:?}"
        );
        // Ten seconds later those samples have left the window.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(window.percentile(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_and_min_samples() {
        let window = LatencyWindow::new(0.5, 10, Duration::from_millis(1));
        let now = Instant::now();
        for _ in 0..9 {
            window.record(Duration::from_micros(20), now);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(window.percentile(Instant::now()), None, "too few samples");
        window.record(Duration::from_micros(20), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            window.percentile(Instant::now()),
            Some(Duration::from_millis(1)),
            "never under the floor"
        );
    }
}
