//! Atomics, swapped for loom's under `--cfg seawall_loom` so the lock-free parts can be model-checked.

// Which of these a build uses depends on the features enabled.
#[cfg(not(seawall_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8};

#[cfg(seawall_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8};

pub(crate) use std::sync::atomic::Ordering;

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
