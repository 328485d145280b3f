//! Where a rate limiter reads the time: [`Clock`], with [`TokioClock`] (the default, which follows
//! tokio's paused time in tests), [`ManualClock`] (moved by hand) and, with the `quanta` feature,
//! `QuantaClock` (the CPU's time-stamp counter, for the hottest paths).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A monotonic clock, read as nanoseconds since an origin of its own.
///
/// ```
/// use seawall::limit::rate::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// assert_eq!(clock.now(), 0);
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now(), 5_000_000);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the clock's origin; never less than an earlier reading.
    fn now(&self) -> u64;
}

/// tokio's clock (`tokio::time::Instant`), so that limits follow paused and advanced time in
/// tests. Its origin is when it was made.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> u64 {
        crate::sync::nanos(self.origin.elapsed())
    }
}

/// A clock that moves only when told to; clones share it. For tests that drive a limiter's time
/// while the rest runs in real time (a server on loopback, say).
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = crate::sync::nanos(by);
        self.nanos.fetch_add(by, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &Duration::from_nanos(self.now()))
            .finish()
    }
}

/// The CPU's time-stamp counter, read through the [`quanta`] crate and scaled to nanoseconds
/// (feature `quanta`). Its origin is when it was made; clones share it.
///
/// Reading it costs a few nanoseconds where tokio's clock (the system clock, behind tokio's
/// test-time switch) costs twenty or more, which is most of what a rate limiter admitting a call
/// costs. It does not follow tokio's paused time: keep [`TokioClock`] (the default) where tests
/// drive time. Where the CPU has no usable counter, `quanta` reads the system's monotonic clock
/// instead. On machines whose cores' counters drift apart, a reading on one core may lag one just
/// taken on another; a limiter given a time earlier than the true one lets fewer calls through,
/// never more.
///
/// ```
/// use seawall::limit::rate::{Quota, QuantaClock, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder(Quota::per_second(10_000))
///     .clock(QuantaClock::new())
///     .build()
///     .unwrap();
/// # drop(layer);
/// ```
#[cfg(feature = "quanta")]
#[derive(Clone, Debug)]
pub struct QuantaClock {
    clock: quanta::Clock,
    origin: u64,
}

#[cfg(feature = "quanta")]
impl QuantaClock {
    /// A clock whose origin is now. The first one made in a process calibrates the counter
    /// against the system clock, which takes a few milliseconds.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        QuantaClock { clock, origin }
    }
}

#[cfg(feature = "quanta")]
impl Default for QuantaClock {
    fn default() -> Self {
        QuantaClock::new()
    }
}

#[cfg(feature = "quanta")]
impl Clock for QuantaClock {
    #[inline]
    fn now(&self) -> u64 {
        // Zero for a reading at or before the origin (another core's counter may lag).
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}
