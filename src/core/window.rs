//! Sliding windows with O(1) record and O(1) read, whatever their size or fill.
//!
//! Two shapes, both lock-free and safe to record into from many threads at once:
//!
//! - [`CountWindow`]: the last `N` calls. A ring of one-byte slots and a cursor; recording a call
//!   takes the next slot and adjusts a packed aggregate by the difference between what the slot held
//!   and what it holds now. When the outcome equals what the slot already held, the slot is not
//!   written; when the window is full of plain successes and another one comes, nothing is written at
//!   all (every slot it could replace is the same), so the steady state of a healthy service is one
//!   atomic load per call.
//! - [`TimeWindow`]: the calls of the last `T`, in `B` buckets of `T / B`. Each bucket is one word
//!   holding its epoch and its counts, replaced whole by compare-and-swap when its epoch is over, so
//!   whoever replaces a bucket knows exactly what to take off the running totals. Buckets that no call
//!   touched are swept when time moves past them: at most `B` buckets per bucket period, never a scan
//!   of calls.
//!
//! Both keep running totals, so [`counts`](CountWindow::counts) is a few loads.

use crate::sync::{nanos, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed, Padded};
use std::fmt;
use std::time::Duration;

/// One call as a window sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sample {
    /// The call failed.
    pub failure: bool,
    /// The call was slower than the slow-call threshold.
    pub slow: bool,
}

impl Sample {
    /// A sample from its two flags.
    pub fn new(failure: bool, slow: bool) -> Self {
        Sample { failure, slow }
    }
}

/// The aggregate of a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counts {
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow: u64,
}

impl Counts {
    /// The failure rate in percent, or `None` while fewer than `minimum_calls` are in the window.
    pub fn failure_rate(&self, minimum_calls: u64) -> Option<f64> {
        self.rate(self.failures, minimum_calls)
    }

    /// The slow-call rate in percent, or `None` while fewer than `minimum_calls` are in the window.
    pub fn slow_rate(&self, minimum_calls: u64) -> Option<f64> {
        self.rate(self.slow, minimum_calls)
    }

    fn rate(&self, part: u64, minimum_calls: u64) -> Option<f64> {
        (self.calls > 0 && self.calls >= minimum_calls)
            .then(|| part as f64 * 100.0 / self.calls as f64)
    }
}

// ---- count window -------------------------------------------------------------------------------

/// The largest [`CountWindow`] size: the aggregate packs three 21-bit signed counters in one word.
pub const MAX_COUNT_WINDOW: u32 = 1_000_000;

const SLOT_EMPTY: u8 = 0;
const SLOT_CALL: u8 = 1;
const SLOT_FAILURE: u8 = 2;
const SLOT_SLOW: u8 = 4;

const FIELD: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD) - 1;

#[inline(always)]
fn slot_of(sample: Sample) -> u8 {
    let failure = if sample.failure { SLOT_FAILURE } else { 0 };
    let slow = if sample.slow { SLOT_SLOW } else { 0 };
    SLOT_CALL | failure | slow
}

/// What a slot adds to the packed aggregate: calls in bits 0.., failures in 21.., slow in 42...
#[inline(always)]
fn packed(slot: u8) -> u64 {
    let has = |flag: u8| (slot & flag != 0) as u64;
    has(SLOT_CALL) | has(SLOT_FAILURE) << FIELD | has(SLOT_SLOW) << (2 * FIELD)
}

#[inline(always)]
fn sign_extend(value: u64, bits: u32) -> i64 {
    ((value << (64 - bits)) as i64) >> (64 - bits)
}

/// Decodes three signed fields packed by wrapping addition. A field can dip below zero for a moment
/// when a slot is overwritten before its previous writer has added it in; the borrow is undone here.
fn unpack(v: u64) -> [i64; 3] {
    let f0 = sign_extend(v & FIELD_MASK, FIELD);
    let v1 = v.wrapping_sub(f0 as u64) >> FIELD;
    let f1 = sign_extend(v1 & FIELD_MASK, FIELD);
    let v2 = v1.wrapping_sub(f1 as u64) >> FIELD;
    let f2 = sign_extend(v2, 64 - 2 * FIELD);
    [f0, f1, f2]
}

/// A lock-free sliding window over the last `size` calls.
///
/// ```
/// use seawall::core::window::{CountWindow, Sample};
///
/// let window = CountWindow::new(10);
/// for _ in 0..1000 {
///     window.record(Sample::new(false, false));
/// }
/// for _ in 0..5 {
///     window.record(Sample::new(true, false));
/// }
/// let counts = window.counts();
/// assert_eq!((counts.calls, counts.failures), (10, 5));
/// assert_eq!(counts.failure_rate(10), Some(50.0));
/// ```
pub struct CountWindow {
    cursor: Padded<AtomicU64>,
    aggregate: Padded<AtomicU64>,
    slots: Box<[AtomicU8]>,
    size: u32,
    /// `u64::MAX / size + 1`: turns `position % size` into two multiplications (Lemire's fastmod).
    magic: u64,
}

impl CountWindow {
    /// A window over the last `size` calls, clamped to `1..=`[`MAX_COUNT_WINDOW`].
    pub fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW);
        CountWindow {
            cursor: Padded(AtomicU64::new(0)),
            aggregate: Padded(AtomicU64::new(0)),
            slots: (0..size).map(|_| AtomicU8::new(SLOT_EMPTY)).collect(),
            size,
            magic: (u64::MAX / size as u64).wrapping_add(1),
        }
    }

    /// The window's size in calls.
    pub fn size(&self) -> u32 {
        self.size
    }

    #[inline(always)]
    fn index(&self, position: u64) -> usize {
        // The cursor's low 32 bits: the ring restarts its order once every 2^32 calls, which at worst
        // keeps a few calls one lap longer. Never out of bounds.
        let low = self.magic.wrapping_mul(position as u32 as u64);
        ((low as u128 * self.size as u128) >> 64) as usize
    }

    /// Records one call, pushing the oldest out once the window is full. Returns whether the
    /// aggregate changed (it does not when the call replaces one with the same outcome).
    #[inline]
    pub fn record(&self, sample: Sample) -> bool {
        // A full window of plain successes absorbs another one without a write: whichever slot it
        // would replace holds a plain success too, so the last `size` calls read the same either
        // way. (A call recorded concurrently by another thread is simply ordered after this one.)
        // A healthy service's calls thus cost one read of a line nobody writes.
        if sample == Sample::default() && self.aggregate.load(Relaxed) == self.size as u64 {
            return false;
        }
        let new = slot_of(sample);
        let position = self.cursor.fetch_add(1, Relaxed);
        let slot = &self.slots[self.index(position)];
        // The slot belongs to this position until the ring comes round again, so a plain read tells
        // whether anything changes. Skipping the write is safe even in a race: the aggregate always
        // matches what the slots hold, because every change of a slot goes through `swap` below.
        if slot.load(Relaxed) == new {
            return false;
        }
        let old = slot.swap(new, Relaxed);
        if old == new {
            return false;
        }
        self.aggregate
            .fetch_add(packed(new).wrapping_sub(packed(old)), Relaxed);
        true
    }

    /// The calls, failures and slow calls now in the window.
    #[inline]
    pub fn counts(&self) -> Counts {
        let [calls, failures, slow] = unpack(self.aggregate.load(Relaxed));
        let clamp = |v: i64| v.clamp(0, self.size as i64) as u64;
        Counts {
            calls: clamp(calls),
            failures: clamp(failures),
            slow: clamp(slow),
        }
    }

    /// Empties the window. O(size); meant for state transitions, not for the call path.
    pub fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(SLOT_EMPTY, Relaxed);
            if old != SLOT_EMPTY {
                self.aggregate
                    .fetch_add(0u64.wrapping_sub(packed(old)), Relaxed);
            }
        }
    }
}

impl fmt::Debug for CountWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountWindow")
            .field("size", &self.size)
            .field("counts", &self.counts())
            .finish()
    }
}

// ---- time window --------------------------------------------------------------------------------

/// The most buckets a [`TimeWindow`] may have.
pub const MAX_BUCKETS: u32 = 256;

/// The most calls one bucket of a [`TimeWindow`] counts; later calls in the same bucket are left out,
/// so the window then measures a sample of the bucket's first calls. Use more, shorter buckets for
/// rates above this many calls per bucket.
pub const MAX_BUCKET_CALLS: u64 = (1 << 18) - 1;

const TAG_BITS: u32 = 10;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const COUNT_BITS: u32 = 18;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const CALLS_SHIFT: u32 = TAG_BITS;
const FAILURES_SHIFT: u32 = TAG_BITS + COUNT_BITS;
const SLOW_SHIFT: u32 = TAG_BITS + 2 * COUNT_BITS;

#[inline(always)]
fn bucket_counts(word: u64) -> [i64; 3] {
    [
        ((word >> CALLS_SHIFT) & COUNT_MASK) as i64,
        ((word >> FAILURES_SHIFT) & COUNT_MASK) as i64,
        ((word >> SLOW_SHIFT) & COUNT_MASK) as i64,
    ]
}

/// Whether a bucket tagged `tag` already holds epoch `epoch` or a later one.
#[inline(always)]
fn is_current(tag: u64, epoch: u64) -> bool {
    (tag.wrapping_sub(epoch) & TAG_MASK) < (1 << (TAG_BITS - 1))
}

/// A lock-free sliding window over the calls of the last `duration`, in buckets.
///
/// Times are given by the caller as nanoseconds since any fixed origin, so the window itself never
/// reads a clock.
///
/// ```
/// use seawall::core::window::{Sample, TimeWindow};
/// use std::time::Duration;
///
/// let window = TimeWindow::new(Duration::from_secs(10), 10);
/// let second = 1_000_000_000;
/// window.record(0, Sample::new(true, false));
/// window.record(5 * second, Sample::new(false, false));
/// assert_eq!(window.counts_at(9 * second).calls, 2);
/// // Ten seconds after the first call, it has left the window.
/// assert_eq!(window.counts_at(10 * second).calls, 1);
/// ```
pub struct TimeWindow {
    /// The newest epoch (time in bucket lengths) the window has moved to.
    head: Padded<AtomicU64>,
    totals: Padded<[AtomicI64; 3]>,
    buckets: Box<[AtomicU64]>,
    bucket_nanos: u64,
    /// `u128::MAX / buckets + 1`: turns `epoch % buckets` into multiplications (Lemire's fastmod).
    magic: u128,
}

/// `a % d`, given `magic = u128::MAX / d + 1` (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019): four multiplications instead of a 64-bit division.
#[inline(always)]
fn fastmod(a: u64, d: u64, magic: u128) -> u64 {
    let low = magic.wrapping_mul(a as u128);
    let (hi, lo) = (low >> 64, low as u64 as u128);
    ((hi * d as u128 + ((lo * d as u128) >> 64)) >> 64) as u64
}

impl TimeWindow {
    /// A window over the last `duration`, in `buckets` buckets (clamped to `1..=`[`MAX_BUCKETS`];
    /// the bucket length is at least one nanosecond).
    pub fn new(duration: Duration, buckets: u32) -> Self {
        let buckets = buckets.clamp(1, MAX_BUCKETS);
        let nanos = nanos(duration);
        TimeWindow {
            head: Padded(AtomicU64::new(0)),
            totals: Padded([AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)]),
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            bucket_nanos: (nanos / buckets as u64).max(1),
            magic: (u128::MAX / buckets as u128).wrapping_add(1),
        }
    }

    /// The number of buckets.
    pub fn buckets(&self) -> u32 {
        self.buckets.len() as u32
    }

    /// The length of one bucket.
    pub fn bucket_duration(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos)
    }

    #[inline(always)]
    fn bucket(&self, epoch: u64) -> &AtomicU64 {
        &self.buckets[fastmod(epoch, self.buckets.len() as u64, self.magic) as usize]
    }

    /// The epoch of `now_nanos`, moving the head there if it is newer. Calls in the head's bucket (the
    /// common case) need no division.
    #[inline(always)]
    fn epoch(&self, now_nanos: u64) -> u64 {
        let head = self.head.load(Relaxed);
        match now_nanos.checked_sub(head.wrapping_mul(self.bucket_nanos)) {
            Some(into) if into < self.bucket_nanos => head,
            _ => {
                let epoch = now_nanos / self.bucket_nanos;
                self.advance(epoch);
                epoch
            }
        }
    }

    fn adjust(&self, delta: [i64; 3]) {
        for (total, d) in self.totals.iter().zip(delta) {
            if d != 0 {
                total.fetch_add(d, Relaxed);
            }
        }
    }

    /// Records one call made at `now_nanos`. Returns `false` only when the call's bucket is full
    /// (see [`MAX_BUCKET_CALLS`]).
    pub fn record(&self, now_nanos: u64, sample: Sample) -> bool {
        let epoch = self.epoch(now_nanos);
        let add = [1, sample.failure as i64, sample.slow as i64];
        let add_word = 1 << CALLS_SHIFT
            | (sample.failure as u64) << FAILURES_SHIFT
            | (sample.slow as u64) << SLOW_SHIFT;
        let bucket = self.bucket(epoch);
        let mut word = bucket.load(Relaxed);
        loop {
            let (next, replaced) = if is_current(word & TAG_MASK, epoch) {
                if (word >> CALLS_SHIFT) & COUNT_MASK == MAX_BUCKET_CALLS {
                    return false;
                }
                (word + add_word, None)
            } else {
                ((epoch & TAG_MASK) | add_word, Some(bucket_counts(word)))
            };
            match bucket.compare_exchange_weak(word, next, Relaxed, Relaxed) {
                Ok(_) => {
                    if let Some([c, f, s]) = replaced {
                        self.adjust([add[0] - c, add[1] - f, add[2] - s]);
                    } else {
                        self.adjust(add);
                    }
                    return true;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Moves the window's head to `epoch`, emptying the buckets it passes over.
    fn advance(&self, epoch: u64) {
        let mut head = self.head.load(Relaxed);
        while epoch > head {
            match self
                .head
                .compare_exchange_weak(head, epoch, Relaxed, Relaxed)
            {
                Ok(_) => {
                    let len = self.buckets.len() as u64;
                    let from = (head + 1).max((epoch + 1).saturating_sub(len));
                    for e in from..=epoch {
                        self.retag(e, false);
                    }
                    return;
                }
                Err(actual) => head = actual,
            }
        }
    }

    /// Makes the bucket of `epoch` hold `epoch` with nothing counted, unless it already holds it or a
    /// later epoch (or, with `force`, whatever it holds).
    fn retag(&self, epoch: u64, force: bool) {
        let bucket = self.bucket(epoch);
        let mut word = bucket.load(Relaxed);
        loop {
            if !force && is_current(word & TAG_MASK, epoch) {
                return;
            }
            match bucket.compare_exchange_weak(word, epoch & TAG_MASK, Relaxed, Relaxed) {
                Ok(_) => {
                    let [c, f, s] = bucket_counts(word);
                    self.adjust([-c, -f, -s]);
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// The counts as of the last recorded call (buckets that expired since are still included).
    #[inline]
    pub fn counts(&self) -> Counts {
        let [c, f, s] = [0, 1, 2].map(|i| self.totals[i].load(Relaxed).max(0) as u64);
        Counts {
            calls: c,
            failures: f,
            slow: s,
        }
    }

    /// The counts at `now_nanos`, after dropping the buckets that time has moved past.
    pub fn counts_at(&self, now_nanos: u64) -> Counts {
        self.epoch(now_nanos);
        self.counts()
    }

    /// Empties the window as of `now_nanos`. O(buckets); meant for state transitions.
    pub fn reset(&self, now_nanos: u64) {
        let epoch = self.epoch(now_nanos);
        let len = self.buckets.len() as u64;
        for e in (epoch + 1).saturating_sub(len)..=epoch {
            self.retag(e, true);
        }
    }
}

impl fmt::Debug for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeWindow")
            .field("buckets", &self.buckets.len())
            .field("bucket_duration", &self.bucket_duration())
            .field("counts", &self.counts())
            .finish()
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;

    #[test]
    fn unpack_undoes_borrows() {
        let v = packed(SLOT_CALL | SLOT_SLOW)
            .wrapping_sub(packed(SLOT_CALL | SLOT_FAILURE))
            .wrapping_sub(packed(SLOT_CALL | SLOT_FAILURE));
        assert_eq!(unpack(v), [-1, -2, 1]);
        assert_eq!(unpack(0), [0, 0, 0]);
    }

    #[test]
    fn index_is_position_mod_size() {
        for size in [1, 2, 3, 7, 10, 100, 999, MAX_COUNT_WINDOW] {
            let w = CountWindow::new(size);
            for p in (0..5000u64).chain([u32::MAX as u64 - 3, u32::MAX as u64]) {
                assert_eq!(w.index(p), (p as u32 % size) as usize, "size {size} p {p}");
            }
        }
    }

    #[test]
    fn fastmod_is_remainder() {
        let values = [
            0,
            1,
            2,
            63,
            64,
            255,
            256,
            1 << 32,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        for d in [1u64, 2, 3, 7, 60, 64, 100, 255, 256] {
            let magic = (u128::MAX / d as u128).wrapping_add(1);
            for a in values.into_iter().chain((0..10_000).map(|i| i * 7919 + d)) {
                assert_eq!(fastmod(a, d, magic), a % d, "{a} % {d}");
            }
        }
    }

    #[test]
    fn time_window_is_exact_per_bucket() {
        let w = TimeWindow::new(Duration::from_secs(4), 4);
        let s = 1_000_000_000;
        for t in 0..4 {
            w.record(t * s, Sample::new(t % 2 == 0, false));
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        w.record(4 * s + 1, Sample::new(false, true));
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts_at(100 * s).calls, 0);
        w.record(100 * s, Sample::default());
        w.reset(100 * s);
        assert_eq!(w.counts(), Counts::default());
    }
}
