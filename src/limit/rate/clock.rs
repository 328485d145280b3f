//! Where a rate limiter reads the time: [`Clock`], with [`TokioClock`] (the default, which follows
//! tokio's paused time in tests) and [`ManualClock`] (moved by hand).

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
