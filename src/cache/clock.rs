//! A clock that a hit can read without a system call: tokio's time as a background task last
//! read it, trusted only while that task ticks in real time.
//!
//! A fresh hit far from its expiry needs to know only that "now" is well before the entry's
//! freshness ends, not when exactly it is; reading the system clock for that costs as much as
//! the rest of a hit. The cache keeps one [`Coarse`] clock per layer: a task spawned on the
//! first miss made inside a tokio runtime reads tokio's clock every [`TICK`] and publishes the
//! reading in one atomic word, which hits load. A hit trusts the reading only as a lower bound
//! on the time, and only with [`LAG`] added to it, so a reading is never taken for later than it
//! is; it is served from the reading alone when the entry is certainly fresh until then, and
//! reads the real clock otherwise (near expiry, stale, or whenever the reading is not trusted).
//!
//! The reading is trusted only while tokio's clock agrees with the system's: the ticker checks
//! both at every tick and trusts only after two ticks in a row found them within
//! [`TOLERANCE`]. Under tokio's paused time (tests) they never agree for long, so a paused
//! runtime's hits always read the clock, and `tokio::time::advance` is seen at once. A runtime
//! that shuts down drops the ticker, which withdraws the reading. What is left: a ticker that
//! runs more than [`LAG`] late (a starved runtime) lets a hit serve an answer as fresh up to
//! that lateness less [`LAG`] past its freshness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How often the ticker reads the clock.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// How far behind the real time a trusted reading may be: a hit takes the time to be at most
/// this after the reading (five ticks; the rest is room for a ticker that runs late).
pub(crate) const LAG: Duration = Duration::from_millis(50);
/// How far tokio's clock and the system's may differ for a tick to count as real time.
const TOLERANCE: Duration = Duration::from_millis(1);

/// Set while a ticker is running for the clock.
const RUNNING: u64 = 1;
/// Set while the reading is trusted.
const TRUSTED: u64 = 2;
/// The reading, in nanoseconds since the clock's base, is kept above these two bits.
const SHIFT: u32 = 2;

/// One layer's coarse clock: see the module's documentation.
#[derive(Debug)]
pub(crate) struct Coarse {
    /// When the clock was made: readings are counted from it.
    base: Instant,
    /// `nanoseconds << SHIFT | TRUSTED | RUNNING`.
    state: AtomicU64,
}

impl Coarse {
    pub(crate) fn new() -> Self {
        Coarse {
            base: Instant::now(),
            state: AtomicU64::new(0),
        }
    }

    /// The last trusted reading, if there is one: a lower bound on the time, at most [`LAG`]
    /// behind it. One load of a word written once a tick.
    #[inline]
    pub(crate) fn recent(&self) -> Option<Instant> {
        let state = self.state.load(Ordering::Relaxed);
        if state & TRUSTED == 0 {
            return None;
        }
        Some(self.base + Duration::from_nanos(state >> SHIFT))
    }

    /// Starts the ticker on the current tokio runtime if none runs: called on a miss (the
    /// paths that store), so a cache used outside a runtime never has one, and its hits read
    /// the clock.
    #[inline]
    pub(crate) fn ensure_ticking(self: &Arc<Self>) {
        if self.state.load(Ordering::Relaxed) & RUNNING != 0 {
            return;
        }
        self.start();
    }

    #[cold]
    fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.state.fetch_or(RUNNING, Ordering::Relaxed) & RUNNING != 0 {
            return;
        }
        runtime.spawn(tick(Arc::downgrade(self)));
    }

    /// Sets the reading by hand (tests of the hit path).
    #[cfg(test)]
    pub(crate) fn set(&self, reading: Instant, trusted: bool) {
        self.publish(reading, trusted);
    }

    /// Publishes a reading taken at `now`.
    fn publish(&self, now: Instant, trusted: bool) {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos)
            .unwrap_or(u64::MAX)
            .min(u64::MAX >> SHIFT);
        let flags = RUNNING | if trusted { TRUSTED } else { 0 };
        self.state.store(nanos << SHIFT | flags, Ordering::Relaxed);
    }
}

/// Withdraws the reading when the ticker stops (its clock gone, or its runtime shut down and
/// its task dropped), so that a later miss starts another.
struct Stopped(Weak<Coarse>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(clock) = self.0.upgrade() {
            clock.state.store(0, Ordering::Relaxed);
        }
    }
}

/// The ticker: reads the clock every [`TICK`] while its clock lives.
async fn tick(clock: Weak<Coarse>) {
    let _stopped = Stopped(clock.clone());
    // Consecutive ticks at which tokio's clock read as the system's.
    let mut agreed = 0u32;
    loop {
        let Some(coarse) = clock.upgrade() else {
            return;
        };
        let now = Instant::now();
        let system = std::time::Instant::now();
        let gap = system
            .checked_duration_since(now.into_std())
            .unwrap_or_else(|| now.into_std().duration_since(system));
        agreed = if gap <= TOLERANCE {
            agreed.saturating_add(1)
        } else {
            0
        };
        coarse.publish(now, agreed >= 2);
        drop(coarse);
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_without_a_ticker_is_not_trusted() {
        let clock = Arc::new(Coarse::new());
        // No runtime: no ticker starts.
        clock.ensure_ticking();
        assert_eq!(clock.recent(), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn paused_time_is_never_trusted() {
        let clock = Arc::new(Coarse::new());
        clock.ensure_ticking();
        for _ in 0..20 {
            tokio::time::sleep(TICK).await;
            assert_eq!(clock.recent(), None);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(clock.recent(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn real_time_is_trusted_within_the_lag_and_withdrawn_with_the_runtime() {
        let clock = Arc::new(Coarse::new());
        clock.ensure_ticking();
        // Bounded: the reading is trusted after two ticks in agreement (a loaded machine may
        // need a few more).
        let mut waited = Duration::ZERO;
        while clock.recent().is_none() {
            assert!(waited < Duration::from_secs(10), "never trusted");
            tokio::time::sleep(TICK).await;
            waited += TICK;
        }
        let reading = clock.recent().unwrap();
        let now = Instant::now();
        assert!(reading <= now, "a reading is never ahead of the time");
        // The ticker may have been descheduled for a moment on a loaded machine; the bound is
        // what a hit assumes, with room.
        assert!(
            now - reading < Duration::from_secs(2),
            "{:?}",
            now - reading
        );
    }

    #[test]
    fn a_runtime_shut_down_withdraws_the_reading() {
        let clock = Arc::new(Coarse::new());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            clock.ensure_ticking();
            let mut waited = Duration::ZERO;
            while clock.recent().is_none() && waited < Duration::from_secs(10) {
                tokio::time::sleep(TICK).await;
                waited += TICK;
            }
        });
        assert!(clock.recent().is_some(), "trusted while the runtime runs");
        drop(runtime);
        assert_eq!(clock.recent(), None);
        assert_eq!(clock.state.load(Ordering::Relaxed) & RUNNING, 0);
    }
}
