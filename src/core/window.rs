//! Sliding windows with O(1) record and O(1) read, whatever their size or fill.
//!
//! Two shapes, both lock-free and safe to record into from many threads at once:
//!
//! - [`CountWindow`]: the last `N` calls. A ring of slots and a cursor; recording a call takes the
//!   next slot and adjusts a packed aggregate by the difference between what the slot held and what
//!   it holds now. When the outcome equals what the slot already held, the slot is not written; when
//!   the window is full of plain successes and another one comes, nothing is written at all (every
//!   slot it could replace is the same), so the steady state of a healthy service is one atomic load
//!   per call. A reset begins a new generation instead of clearing the slots: each slot and the
//!   aggregate carry the generation that wrote them, and slots of an earlier one read as empty, so a
//!   reset costs O(1) whatever the size.
//! - [`TimeWindow`]: the calls of the last `T`, in `B` buckets of `T / B`. Each bucket is one word
//!   holding its epoch and its counts, replaced whole by compare-and-swap when its epoch is over, so
//!   whoever replaces a bucket knows exactly what to take off the running totals. Buckets that no call
//!   touched are swept when time moves past them: at most `B` buckets per bucket period, never a scan
//!   of calls.
//!
//! Both keep running totals, so [`counts`](CountWindow::counts) is a few loads.

use crate::sync::{
    nanos, AtomicI64, AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
    Padded,
};
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

/// The largest [`CountWindow`] size: the counts are 21-bit signed fields of one word.
pub const MAX_COUNT_WINDOW: u32 = 1_000_000;

// A slot: the outcome in its low three bits, the generation it was written in above them.
const SLOT_EMPTY: u32 = 0;
const SLOT_CALL: u32 = 1;
const SLOT_FAILURE: u32 = 2;
const SLOT_SLOW: u32 = 4;
const SLOT_OUTCOME: u32 = 0b111;
const SLOT_GEN_SHIFT: u32 = 3;
const SLOT_GEN_BITS: u32 = 32 - SLOT_GEN_SHIFT;

// The cursor: the position within the generation in the low bits, the generation above.
const POS_BITS: u32 = 34;
const POS_MASK: u64 = (1 << POS_BITS) - 1;
const CURSOR_GEN_BITS: u32 = 64 - POS_BITS;
/// Positions at or past this are brought back by a multiple of the size (the slot each maps to
/// stays the same), long before they could carry into the generation.
const POS_REWIND_AT: u64 = 1 << 31;

// The aggregate: failures and slow calls (21-bit signed fields), whether the generation has filled
// the window, and the generation.
const FIELD: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD) - 1;
const FULL: u64 = 1 << (2 * FIELD);
const AGG_GEN_SHIFT: u32 = 2 * FIELD + 1;
const AGG_GEN_BITS: u32 = 64 - AGG_GEN_SHIFT;

#[inline(always)]
fn slot_of(sample: Sample) -> u32 {
    let failure = if sample.failure { SLOT_FAILURE } else { 0 };
    let slow = if sample.slow { SLOT_SLOW } else { 0 };
    SLOT_CALL | failure | slow
}

/// The generation's low `bits` bits.
#[inline(always)]
fn low(generation: u64, bits: u32) -> u64 {
    generation & ((1 << bits) - 1)
}

/// Whether generation `a` is later than `b`, both kept to `bits` bits (and less than half their
/// range apart).
#[inline(always)]
fn later(a: u64, b: u64, bits: u32) -> bool {
    let ahead = low(a.wrapping_sub(b), bits);
    ahead != 0 && ahead < 1 << (bits - 1)
}

#[inline(always)]
fn sign_extend(value: u64, bits: u32) -> i64 {
    ((value << (64 - bits)) as i64) >> (64 - bits)
}

/// The failures and slow calls an aggregate word holds.
#[inline(always)]
fn unpack(word: u64) -> (i64, i64) {
    (
        sign_extend(word & FIELD_MASK, FIELD),
        sign_extend((word >> FIELD) & FIELD_MASK, FIELD),
    )
}

#[inline(always)]
fn pack(generation: u64, failures: i64, slow: i64, full: bool) -> u64 {
    low(generation, AGG_GEN_BITS) << AGG_GEN_SHIFT
        | if full { FULL } else { 0 }
        | (slow as u64 & FIELD_MASK) << FIELD
        | failures as u64 & FIELD_MASK
}

#[cfg(all(test, not(seawall_loom)))]
thread_local! {
    /// How many slots `reset` touched on this thread: what shows it is O(1).
    static RESET_TOUCHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one slot touched by `reset` (in unit tests only; nothing otherwise).
#[inline(always)]
fn reset_touched() {
    #[cfg(all(test, not(seawall_loom)))]
    RESET_TOUCHED.with(|n| n.set(n.get() + 1));
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
    /// The generation (one per [`reset`](Self::reset)) and the next position in it.
    cursor: Padded<AtomicU64>,
    /// The failures and slow calls of the current generation's slots, and whether it has filled
    /// the window; tagged with the generation, so that a call of an earlier one adds nothing.
    aggregate: Padded<AtomicU64>,
    /// Each slot: an outcome and the generation that wrote it. Only slots of the current
    /// generation count; the others read as empty.
    slots: Box<[AtomicU32]>,
    size: u32,
    /// `u64::MAX / size + 1`: turns `position % size` into two multiplications (Lemire's fastmod).
    magic: u64,
    /// What a position is brought back by once it reaches `POS_REWIND_AT`: a multiple of the size.
    rewind: u64,
}

impl CountWindow {
    /// A window over the last `size` calls, clamped to `1..=`[`MAX_COUNT_WINDOW`].
    pub fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW);
        CountWindow {
            cursor: Padded(AtomicU64::new(0)),
            aggregate: Padded(AtomicU64::new(0)),
            slots: (0..size).map(|_| AtomicU32::new(SLOT_EMPTY)).collect(),
            size,
            magic: (u64::MAX / size as u64).wrapping_add(1),
            rewind: (1 << 30) / size as u64 * size as u64,
        }
    }

    /// The window's size in calls.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `position % size`, for positions below 2^32 (which `rewind` keeps them).
    #[inline(always)]
    fn index(&self, position: u64) -> usize {
        let low = self.magic.wrapping_mul(position as u32 as u64);
        ((low as u128 * self.size as u128) >> 64) as usize
    }

    /// Records one call, pushing the oldest out once the window is full. Returns whether the
    /// counts changed (they do not when the call replaces one with the same outcome).
    #[inline]
    pub fn record(&self, sample: Sample) -> bool {
        // A full window of plain successes absorbs another one without a write: whichever slot it
        // would replace holds a plain success too, so the last `size` calls read the same either
        // way. (A call recorded concurrently by another thread is simply ordered after this one.)
        // A healthy service's calls thus cost one read of a line nobody writes.
        if sample == Sample::default()
            && self.aggregate.load(Relaxed) & (FULL | FIELD_MASK << FIELD | FIELD_MASK) == FULL
        {
            return false;
        }
        self.record_slot(sample)
    }

    #[inline]
    fn record_slot(&self, sample: Sample) -> bool {
        let cursor = self.cursor.fetch_add(1, Relaxed);
        let generation = cursor >> POS_BITS;
        let position = cursor & POS_MASK;
        if position >= POS_REWIND_AT {
            self.rewind(generation);
        }
        let slot = &self.slots[self.index(position)];
        let tag = low(generation, SLOT_GEN_BITS);
        let new = (tag as u32) << SLOT_GEN_SHIFT | slot_of(sample);
        // The slot belongs to this position until the ring comes round again, so a plain read
        // tells whether anything changes. Every change of a slot goes through the exchange below
        // and is then added to the aggregate, so the aggregate always matches what the current
        // generation's slots hold, whatever order racing calls land in.
        let mut word = slot.load(Relaxed);
        let old = loop {
            if word == new {
                break new;
            }
            if later((word >> SLOT_GEN_SHIFT) as u64, tag, SLOT_GEN_BITS) {
                // A reset came between taking the position and writing: the call belongs to the
                // window before it, which is gone.
                return false;
            }
            match slot.compare_exchange_weak(word, new, Relaxed, Relaxed) {
                Ok(_) => break word,
                Err(actual) => word = actual,
            }
        };
        let live = if (old >> SLOT_GEN_SHIFT) as u64 == tag {
            old & SLOT_OUTCOME
        } else {
            SLOT_EMPTY
        };
        let has = |slot: u32, flag: u32| (slot & flag != 0) as i64;
        let failures = has(new, SLOT_FAILURE) - has(live, SLOT_FAILURE);
        let slow = has(new, SLOT_SLOW) - has(live, SLOT_SLOW);
        // The call at the last position of the first lap marks the window full.
        let fills = position + 1 == self.size as u64;
        if failures != 0 || slow != 0 || fills {
            self.add(generation, failures, slow, fills);
        }
        position < self.size as u64 || failures != 0 || slow != 0
    }

    /// Adds to the counts of `generation`: nothing if a later one has begun; starting from zero
    /// if the reset that began it has not yet reached the aggregate.
    #[inline]
    fn add(&self, generation: u64, failures: i64, slow: i64, fills: bool) {
        let generation = low(generation, AGG_GEN_BITS);
        let mut word = self.aggregate.load(Relaxed);
        loop {
            let current = word >> AGG_GEN_SHIFT;
            let next = if current == generation {
                let (f, s) = unpack(word);
                pack(
                    generation,
                    f + failures,
                    s + slow,
                    fills || word & FULL != 0,
                )
            } else if later(current, generation, AGG_GEN_BITS) {
                return;
            } else {
                pack(generation, failures, slow, fills)
            };
            if next == word {
                return;
            }
            match self
                .aggregate
                .compare_exchange_weak(word, next, Release, Relaxed)
            {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Brings the position back by a multiple of the size, which maps every position to the same
    /// slot and keeps it past the first lap. Once every 2^30 or so calls.
    #[cold]
    fn rewind(&self, generation: u64) {
        let mut cursor = self.cursor.load(Relaxed);
        while cursor >> POS_BITS == generation && cursor & POS_MASK >= POS_REWIND_AT {
            match self
                .cursor
                .compare_exchange_weak(cursor, cursor - self.rewind, Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cursor = actual,
            }
        }
    }

    /// The calls, failures and slow calls now in the window.
    #[inline]
    pub fn counts(&self) -> Counts {
        let word = self.aggregate.load(Acquire);
        let (failures, slow) = unpack(word);
        let size = self.size as u64;
        let clamp = |v: i64| v.clamp(0, self.size as i64) as u64;
        let calls = if word & FULL != 0 {
            size
        } else {
            let cursor = self.cursor.load(Relaxed);
            let calls = (cursor & POS_MASK).min(size);
            if low(cursor >> POS_BITS, AGG_GEN_BITS) != word >> AGG_GEN_SHIFT {
                // A reset has begun a generation the aggregate has not reached yet: none of its
                // calls has added a failure or a slow call so far.
                return Counts {
                    calls,
                    failures: 0,
                    slow: 0,
                };
            }
            calls
        };
        Counts {
            calls,
            failures: clamp(failures),
            slow: clamp(slow),
        }
    }

    /// Empties the window, in O(1) whatever its size: it begins a new generation, and slots
    /// written in earlier ones read as empty. Calls racing the reset are counted before it (and so
    /// emptied) or after it, whole.
    pub fn reset(&self) {
        let mut cursor = self.cursor.load(Relaxed);
        let generation = loop {
            let generation = low((cursor >> POS_BITS).wrapping_add(1), CURSOR_GEN_BITS);
            match self
                .cursor
                .compare_exchange_weak(cursor, generation << POS_BITS, AcqRel, Relaxed)
            {
                Ok(_) => break generation,
                Err(actual) => cursor = actual,
            }
        };
        self.add(generation, 0, 0, false);
        self.sweep(generation);
    }

    /// Retags one slot (a different one each generation, in turn) as an empty slot of
    /// `generation`, unless it already holds that one or a later one. Every slot is thus rewritten
    /// at least once every `size` generations or so, so that no slot's generation is old enough
    /// to be mistaken for a current one, whatever the number of resets: comparing generations by
    /// their low bits stays exact.
    fn sweep(&self, generation: u64) {
        let slot = &self.slots[(generation % self.size as u64) as usize];
        reset_touched();
        let tag = low(generation, SLOT_GEN_BITS);
        let mut word = slot.load(Relaxed);
        loop {
            let held = (word >> SLOT_GEN_SHIFT) as u64;
            if held == tag || later(held, tag, SLOT_GEN_BITS) {
                return;
            }
            match slot.compare_exchange_weak(
                word,
                (tag as u32) << SLOT_GEN_SHIFT | SLOT_EMPTY,
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
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
    fn counts_pack_and_unpack_with_their_sign() {
        for (f, s) in [(0, 0), (-1, 2), (1_000_000, -3), (-1_000_000, 1_000_000)] {
            for full in [false, true] {
                let word = pack(5, f, s, full);
                assert_eq!(unpack(word), (f, s));
                assert_eq!(word & FULL != 0, full);
                assert_eq!(word >> AGG_GEN_SHIFT, 5);
            }
        }
        assert!(later(0, (1 << AGG_GEN_BITS) - 1, AGG_GEN_BITS));
        assert!(!later(3, 3, AGG_GEN_BITS));
        assert!(!later(2, 3, AGG_GEN_BITS));
    }

    /// A window of `size` whose current generation is `generation`, as if reset that many times.
    fn at_generation(size: u32, generation: u64) -> CountWindow {
        let w = CountWindow::new(size);
        w.cursor.0.store(generation << POS_BITS, Relaxed);
        w.aggregate.0.store(pack(generation, 0, 0, false), Relaxed);
        let before = low(generation.wrapping_sub(1), SLOT_GEN_BITS) as u32;
        for slot in w.slots.iter() {
            slot.store(before << SLOT_GEN_SHIFT | SLOT_CALL | SLOT_FAILURE, Relaxed);
        }
        w
    }

    #[test]
    fn generations_wrap_around_exactly() {
        let w = at_generation(3, (1 << CURSOR_GEN_BITS) - 2);
        assert_eq!(w.counts(), Counts::default());
        for round in 0..5 {
            for i in 0..4 {
                w.record(Sample::new(i % 2 == round % 2, i == 0));
            }
            // The last three of four calls: one failure in even rounds, two in odd ones; the one
            // slow call (the first) has left.
            let failures = if round % 2 == 0 { 1 } else { 2 };
            assert_eq!(
                w.counts(),
                Counts {
                    calls: 3,
                    failures,
                    slow: 0
                },
                "round {round}"
            );
            w.reset();
            assert_eq!(w.counts(), Counts::default(), "round {round}");
            w.record(Sample::new(true, true));
            assert_eq!(
                w.counts(),
                Counts {
                    calls: 1,
                    failures: 1,
                    slow: 1
                }
            );
            w.reset();
        }
        assert!(w.cursor.load(Relaxed) >> POS_BITS < 10, "wrapped round");
    }

    #[test]
    fn positions_are_brought_back_without_changing_the_order() {
        let w = CountWindow::new(7);
        for i in 0..7 {
            w.record(Sample::new(i == 0, false));
        }
        // Far into the generation: the next call takes position 2^31, and brings the cursor back.
        let position = POS_REWIND_AT;
        assert_eq!(w.index(position), (position % 7) as usize);
        // Fill the slots so that the position about to be taken holds the oldest call.
        w.cursor.0.store(position, Relaxed);
        let oldest = w.index(position);
        w.slots[oldest].store(SLOT_CALL | SLOT_FAILURE, Relaxed);
        for (i, slot) in w.slots.iter().enumerate() {
            if i != oldest {
                slot.store(SLOT_CALL, Relaxed);
            }
        }
        w.aggregate.0.store(pack(0, 1, 0, true), Relaxed);
        w.record(Sample::default());
        let cursor = w.cursor.load(Relaxed);
        assert!((7..POS_REWIND_AT).contains(&cursor), "{cursor}");
        assert_eq!(w.index(cursor), w.index(position + 1));
        assert_eq!(w.counts().failures, 0);
        // The ring goes on in order: the next six calls replace the six oldest, then this one.
        for _ in 0..6 {
            w.record(Sample::new(true, false));
        }
        assert_eq!(w.counts().failures, 6);
        w.record(Sample::new(true, false));
        assert_eq!(w.counts().failures, 7);
        w.record(Sample::default());
        assert_eq!(w.counts().failures, 6);
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
    fn reset_touches_a_bounded_number_of_slots_whatever_the_size() {
        let w = CountWindow::new(MAX_COUNT_WINDOW);
        for i in 0..MAX_COUNT_WINDOW as u64 + 7 {
            w.record(Sample::new(i % 3 == 0, i % 7 == 0));
        }
        assert_eq!(w.counts().calls, MAX_COUNT_WINDOW as u64);
        for _ in 0..3 {
            RESET_TOUCHED.with(|n| n.set(0));
            w.reset();
            let touched = RESET_TOUCHED.with(|n| n.get());
            assert!(touched <= 2, "reset touched {touched} slots");
            assert_eq!(w.counts(), Counts::default());
            // The window starts again from nothing and counts exactly.
            for i in 0..1000 {
                w.record(Sample::new(i < 10, i < 3));
            }
            assert_eq!(
                w.counts(),
                Counts {
                    calls: 1000,
                    failures: 10,
                    slow: 3
                }
            );
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
