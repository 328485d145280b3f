//! Atomics, swapped for loom's under `--cfg seawall_loom` so the lock-free parts can be model-checked.

// Which of these a build uses depends on the features enabled.
#[cfg(not(seawall_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};

#[cfg(seawall_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};

pub(crate) use std::sync::atomic::Ordering;

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
    thread_local! {
        static INDEX: Cell<usize> =
            Cell::new(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    }
    INDEX.with(Cell::get)
}
