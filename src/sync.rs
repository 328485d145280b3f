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
