//! A lock-free log-linear latency histogram over a sliding window of time, and the percentile it
//! keeps up to date: what a hedge's delay is read from.
//!
//! Latencies are kept in microseconds, in buckets eight to a power of two (a bucket is at most
//! 12.5 % wide), from 1 µs to about nine and a half hours (longer ones go in the last bucket).
//! The window is ten slots of one second; a record adds one to its bucket in the slot of the
//! current second (clearing the slot first if it last held a second ten or more ago): one atomic
//! add, no lock, no allocation, no scan.
//!
//! A zero latency (a call answered at its first poll, which the hedge layer does not time) is
//! recorded without a clock read ([`LatencyWindow::record_zero`]): in the slot of the latest
//! second any reader or timed record of the window saw, and every [`ZERO_CLOCK_EVERY`]th zero
//! record in a slot reads the clock to move that second on. At most that many zero records less
//! one are counted in an earlier second than theirs, after a time with no clock read (they leave
//! the window early, which can only raise the percentile a little, never lower it).
//!
//! The percentile is computed by readers, not by records: the first read in a new second sums the
//! buckets of the slots of the last ten seconds (about 2,700 relaxed loads, a few microseconds,
//! once a second, by a call that is already waiting for its first attempt) and publishes it with
//! the second it was computed for, in one word; every other read is one load. A refresh claims
//! its second by moving that word's second on, and publishes its result only if no later second
//! was claimed meanwhile, so a slow refresh never overwrites a newer one.
//!
//! A slot being cleared for a new second drops the records that race with the clearing, and a
//! record that read the slot just before it was cleared may land in the new second: the counts are
//! approximate by a few calls at each second's turn, which a percentile over thousands does not
//! notice. A record is never counted twice, and the total a percentile is ranked against is the
//! sum of the very counts it scans, so a racing record cannot push the rank past them.

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Buckets per power of two (as a shift: 2^3 = 8).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The largest exponent kept: 2^35 µs, about 9.5 hours (2^4 µs in the loom models, whose
/// atomics are costly to explore).
#[cfg(not(seawall_loom))]
const MAX_EXP: u32 = 35;
#[cfg(seawall_loom)]
const MAX_EXP: u32 = 4;
/// Buckets: the first `SUB` are 0..SUB µs one by one, then `SUB` per power of two.
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;
/// Slots of the window (3 in the loom models), one second each.
#[cfg(not(seawall_loom))]
const SLOTS: usize = 10;
#[cfg(seawall_loom)]
const SLOTS: usize = 3;
/// A slot's tag while it is being cleared.
const CLEARING: u64 = u64::MAX;
/// Zero records in a slot between two clock reads that date them (a power of two).
pub(crate) const ZERO_CLOCK_EVERY: u32 = 16;

/// The published percentile: the second it was computed for in the high bits, and below them
/// the bucket it fell in, or [`NONE`] when there were too few samples.
const CODE_BITS: u32 = 16;
const CODE_MASK: u64 = (1 << CODE_BITS) - 1;
const NONE: u64 = CODE_MASK;
/// The last second a published word can name (about nine million years).
const MAX_SECOND: u64 = u64::MAX >> CODE_BITS;
const _: () = assert!((BUCKETS as u64) < NONE);

#[inline]
fn pack(second: u64, code: u64) -> u64 {
    (second << CODE_BITS) | code
}

#[inline]
fn second_of(word: u64) -> u64 {
    word >> CODE_BITS
}

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

/// `duration` in whole microseconds, saturating; without the 128-bit arithmetic of
/// `Duration::as_micros`.
#[inline]
fn micros(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(duration.subsec_micros()))
}

struct Slot {
    /// One more than the second whose calls the slot counts (0: never used), or [`CLEARING`].
    tag: AtomicU64,
    counts: [AtomicU32; BUCKETS],
}

impl Slot {
    /// Whether the slot counts a second in the window of `second`.
    #[inline]
    fn live_at(&self, second: u64) -> bool {
        let tag = self.tag.load(Ordering::Acquire);
        tag != CLEARING && tag != 0 && tag <= second + 1 && second + 1 - tag < SLOTS as u64
    }
}

/// Latencies of the last ten seconds and a percentile of them; see the [module docs](self).
pub(crate) struct LatencyWindow {
    origin: Instant,
    /// The percentile kept, in `(0, 1)`.
    quantile: f64,
    /// Fewer samples in the window than this: no percentile.
    min_samples: u32,
    floor: Duration,
    /// The percentile and the second it was computed (or is being computed) for: [`pack`].
    published: AtomicU64,
    /// The latest second a clock read of a record or a reader saw: where zero records go. A hint
    /// that orders nothing: std's atomic even under loom.
    latest: std::sync::atomic::AtomicU64,
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
            published: AtomicU64::new(pack(0, NONE)),
            latest: std::sync::atomic::AtomicU64::new(0),
            slots: std::array::from_fn(|_| Slot {
                tag: AtomicU64::new(0),
                counts: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        }
    }

    /// The second of the window `now` falls in.
    #[inline]
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin)
            .as_secs()
            .min(MAX_SECOND)
    }

    /// Notes that the clock read `second`: zero records go there from now on.
    #[inline]
    fn note(&self, second: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.latest.load(Relaxed) < second {
            self.latest.fetch_max(second, Relaxed);
        }
    }

    /// Records one latency, measured at `now`.
    #[inline]
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let second = self.second(now);
        self.note(second);
        self.record_in(second, micros(latency));
    }

    /// Records a zero latency without reading the clock (but every [`ZERO_CLOCK_EVERY`]th time
    /// in a slot, or when the slot of the latest second known is not to be written): see the
    /// [module docs](self).
    #[inline]
    pub(crate) fn record_zero(&self) {
        let second = self.latest.load(std::sync::atomic::Ordering::Relaxed);
        match self.record_in(second, 0) {
            Some(before) if before % ZERO_CLOCK_EVERY != ZERO_CLOCK_EVERY - 1 => {}
            _ => self.note(self.second(Instant::now())),
        }
    }

    /// Counts `micros` in `second`'s slot: the bucket's count before, or `None` if dropped.
    #[inline]
    fn record_in(&self, second: u64, micros: u64) -> Option<u32> {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let tag = slot.tag.load(Ordering::Acquire);
        if tag != second + 1 && !self.rotate(slot, tag, second) {
            return None;
        }
        Some(slot.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed))
    }

    /// Clears `slot`, last seen tagged `tag`, for `second`: whether the caller may record there.
    /// The first to see a slot of an older second (or never used) clears it; a record that
    /// finds it being cleared, or already of a later second, is dropped.
    #[cold]
    fn rotate(&self, slot: &Slot, tag: u64, second: u64) -> bool {
        if tag == CLEARING
            || tag > second + 1
            || slot
                .tag
                .compare_exchange(tag, CLEARING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        for count in &slot.counts {
            count.store(0, Ordering::Relaxed);
        }
        slot.tag.store(second + 1, Ordering::Release);
        true
    }

    /// The percentile as of `now`: `None` while the window holds too few samples.
    #[inline]
    pub(crate) fn percentile(&self, now: Instant) -> Option<Duration> {
        let second = self.second(now);
        self.note(second);
        self.percentile_in(second)
    }

    #[inline]
    fn percentile_in(&self, second: u64) -> Option<Duration> {
        let word = self.published.load(Ordering::Acquire);
        let word = if second_of(word) < second {
            self.refresh(word, second)
        } else {
            word
        };
        match word & CODE_MASK {
            NONE => None,
            index => Some(Duration::from_micros(upper(index as usize)).max(self.floor)),
        }
    }

    /// Computes the percentile for `second`, newer than the one `seen` was computed for, if no
    /// other reader has claimed it (or a later one) first: the published word to read.
    #[cold]
    fn refresh(&self, seen: u64, second: u64) -> u64 {
        // Claim the second, still showing the percentile there is.
        let claim = pack(second, seen & CODE_MASK);
        if let Err(now) =
            self.published
                .compare_exchange(seen, claim, Ordering::AcqRel, Ordering::Acquire)
        {
            // Another reader claimed this second or a later one: its word, or the last
            // published until it has done.
            return now;
        }
        let computed = pack(second, self.compute(second));
        // Published only if no later second was claimed meanwhile.
        match self
            .published
            .compare_exchange(claim, computed, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => computed,
            Err(newer) => newer,
        }
    }

    /// The bucket of the percentile over the slots live at `second`, or [`NONE`].
    fn compute(&self, second: u64) -> u64 {
        // One pass over the counts, copied: the rank is taken of the very counts scanned.
        let mut sums = [0u64; BUCKETS];
        for slot in self.slots.iter().filter(|slot| slot.live_at(second)) {
            for (sum, count) in sums.iter_mut().zip(&slot.counts) {
                *sum += u64::from(count.load(Ordering::Relaxed));
            }
        }
        let total: u64 = sums.iter().sum();
        if total == 0 || total < u64::from(self.min_samples) {
            return NONE;
        }
        let rank = ((total as f64 * self.quantile).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (index, sum) in sums.iter().enumerate() {
            seen += sum;
            if seen >= rank {
                return index as u64;
            }
        }
        // Not reached: the rank is at most the sum of the counts.
        (BUCKETS - 1) as u64
    }
}

/// A latency window driven by seconds rather than instants, for the loom models in
/// `tests/loom.rs`: not part of the API.
#[cfg(seawall_loom)]
#[doc(hidden)]
#[derive(Debug)]
pub struct LoomLatencyWindow(LatencyWindow);

#[cfg(seawall_loom)]
#[allow(missing_docs)]
impl LoomLatencyWindow {
    /// Seconds a sample stays in the window.
    pub const SECONDS: u64 = SLOTS as u64;

    pub fn new(quantile: f64, min_samples: u32) -> Self {
        LoomLatencyWindow(LatencyWindow::new(quantile, min_samples, Duration::ZERO))
    }

    pub fn record(&self, second: u64, latency: Duration) {
        let _ = self.0.record_in(second, micros(latency));
    }

    pub fn percentile(&self, second: u64) -> Option<Duration> {
        self.0.percentile_in(second)
    }

    /// The samples the window holds as of `second`.
    pub fn samples(&self, second: u64) -> u64 {
        self.0
            .slots
            .iter()
            .filter(|slot| slot.live_at(second))
            .flat_map(|slot| &slot.counts)
            .map(|count| u64::from(count.load(Ordering::Relaxed)))
            .sum()
    }
}

#[cfg(all(test, not(seawall_loom)))]
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
    async fn records_leave_the_percentile_to_readers() {
        // The scan of the window is a reader's, once a second: a record only counts.
        let window = LatencyWindow::new(0.5, 1, Duration::ZERO);
        window.record(Duration::from_millis(10), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        window.record(Duration::from_millis(10), Instant::now());
        assert_eq!(
            second_of(window.published.load(Ordering::Relaxed)),
            0,
            "a record computed the percentile"
        );
        assert!(window.percentile(Instant::now()).is_some());
        assert_eq!(second_of(window.published.load(Ordering::Relaxed)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_records_count_in_the_second_they_are_made() {
        let window = LatencyWindow::new(0.5, 1, Duration::ZERO);
        let zero = Some(Duration::from_micros(1));
        window.record(Duration::from_millis(10), Instant::now());
        // Thirty seconds without a clock read: the window's latest second is 0. Zero records
        // find it out within `ZERO_CLOCK_EVERY` of them, and the rest count in second 30.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..3 * ZERO_CLOCK_EVERY {
            window.record_zero();
        }
        assert_eq!(window.latest.load(Ordering::Relaxed), 30);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(window.percentile(Instant::now()), zero);
        // With the clock read by a reader, they go in its second at once: 2 zeros, 1 of 10 ms.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            window.percentile(Instant::now()),
            None,
            "the window is empty"
        );
        window.record_zero();
        window.record_zero();
        window.record(Duration::from_millis(10), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(window.percentile(Instant::now()), zero);
        // And leave it ten seconds later.
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
