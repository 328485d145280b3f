//! Atomics, swapped for loom's under `--cfg seawall_loom` so the lock-free parts can be model-checked.

// Which of these a build uses depends on the features enabled.
#[cfg(not(seawall_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};

#[cfg(seawall_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};

pub(crate) use std::sync::atomic::Ordering;

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years): how every layer keeps
/// times in its atomics.
#[inline]
pub(crate) fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(not(seawall_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// A turn of a loop waiting on another thread (one loom can switch threads at, under loom).
#[cfg(not(seawall_loom))]
#[allow(unused_imports)]
pub(crate) use std::hint::spin_loop;

#[cfg(seawall_loom)]
#[allow(unused_imports)]
pub(crate) use loom::hint::spin_loop;

#[cfg(seawall_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

/// Keeps a hot atomic on a cache line of its own, so that writers of one field do not slow down readers
/// of its neighbours (two lines, for CPUs that prefetch in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A small number for the calling thread, handed out in turn to threads as they first ask: what
/// spreads per-thread shards of a counter over threads.
#[inline]
#[allow(dead_code)]
pub(crate) fn thread_index() -> usize {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // Const-initialised, so that reading it needs no check of a lazy initialisation; the number
    // is handed out on the first read instead.
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| match index.get() {
        usize::MAX => {
            let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (usize::MAX - 1);
            index.set(next);
            next
        }
        known => known,
    })
}

/// A SplitMix64 generator (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", 2014) whose state is one atomic, advanced by one addition per draw: shared by
/// every thread without a lock, and reproducible from its seed.
#[cfg(any(feature = "limit", feature = "chaos"))]
pub(crate) struct SplitMix(AtomicU64);

#[cfg(any(feature = "limit", feature = "chaos"))]
impl SplitMix {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(AtomicU64::new(seed))
    }

    /// A uniform draw from `[0, 1)`.
    #[inline]
    pub(crate) fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(Self::GOLDEN, Ordering::Relaxed)
            .wrapping_add(Self::GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How many stripes a [`Striped`] count has.
const COUNT_STRIPES: usize = 8;

/// A count written by many threads and read rarely (calls turned away, callers waiting): one
/// stripe per thread (by [`thread_index`]), each on cache lines of its own, so that threads
/// counting at once never write the same line; a read sums the stripes. Lock-free, and with no
/// allocation of its own.
///
/// A thread may take off what another added (a caller that starts waiting on one thread and
/// stops on another): each stripe wraps, and the sum is right once every change it includes has
/// been made.
///
/// A statistic that orders nothing: its atomics are std's even under loom, so that counting adds
/// nothing to what a model explores.
pub(crate) struct Striped([Padded<std::sync::atomic::AtomicU64>; COUNT_STRIPES]);

impl Striped {
    pub(crate) fn new() -> Self {
        Striped(std::array::from_fn(|_| {
            Padded(std::sync::atomic::AtomicU64::new(0))
        }))
    }

    /// Adds one, on the calling thread's stripe.
    #[inline]
    pub(crate) fn increment(&self) {
        self.0[thread_index() % COUNT_STRIPES].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one off, on the calling thread's stripe (which wraps below zero).
    #[allow(dead_code)]
    #[inline]
    pub(crate) fn decrement(&self) {
        self.0[thread_index() % COUNT_STRIPES].fetch_sub(1, Ordering::Relaxed);
    }

    /// The count: the sum of the stripes. Read while threads count, it may miss their latest
    /// changes, and a gauge (counted up and down on different threads) may then read below zero
    /// for a moment: zero is given instead.
    #[allow(dead_code)]
    pub(crate) fn sum(&self) -> u64 {
        let sum = self.0.iter().fold(0u64, |sum, stripe| {
            sum.wrapping_add(stripe.load(Ordering::Relaxed))
        });
        // Below zero, as a wrapped sum: a change counted on one stripe before its opposite on
        // another was seen.
        if sum > u64::MAX / 2 {
            0
        } else {
            sum
        }
    }
}

impl std::fmt::Debug for Striped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Striped").field(&self.sum()).finish()
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;

    /// Threads counting at once use stripes of their own, and the sum is every thread's count,
    /// also when what one thread added another takes off.
    #[test]
    fn a_striped_count_sums_its_threads_stripes() {
        let count = std::sync::Arc::new(Striped::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        count.increment();
                    }
                    thread_index() % COUNT_STRIPES
                })
            })
            .collect();
        let stripes: std::collections::HashSet<usize> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(count.sum(), 4000);
        assert!(stripes.len() > 1, "every thread counted on one stripe");
        let used = count
            .0
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) > 0)
            .count();
        assert_eq!(used, stripes.len());

        // A gauge: up on this thread, down on another.
        let gauge = std::sync::Arc::new(Striped::new());
        gauge.increment();
        gauge.increment();
        let other = gauge.clone();
        std::thread::spawn(move || other.decrement())
            .join()
            .unwrap();
        assert_eq!(gauge.sum(), 1);
        // Only the decrement seen: read as zero, not as a huge count.
        let down = Striped::new();
        down.decrement();
        assert_eq!(down.sum(), 0);
    }
}
