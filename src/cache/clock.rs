//! A clock that a hit can read without a system call: the time as a thread last read it, trusted
//! by a layer only where tokio's clock is the system's.
//!
//! A fresh hit far from its expiry needs to know only that "now" is well before the entry's
//! freshness ends, not when exactly it is; reading the system clock for that costs as much as
//! the rest of a hit. One thread per process (`seawall-clock`, started by the first cache that
//! uses it) reads the monotonic clock every [`TICK`] and publishes the reading in one atomic
//! word, which hits load. A hit takes the reading as a lower bound on the time and adds [`LAG`]
//! for the upper one, so it is served from the reading alone only when the entry is certainly
//! fresh until then; near expiry, stale, or when the reading is not trusted, it reads the clock.
//!
//! Each layer decides whether its hits may use the reading ([`Coarse`]): only once a miss has
//! run on a multi-thread tokio runtime (tokio's paused time exists only on current-thread
//! runtimes, so there tokio's clock is the system's), and never again once a miss has found
//! tokio's clock away from the system's (a layer shared with a paused runtime). A reading older
//! than [`LAG`] (the thread descheduled, the process stopped) is withdrawn by the first hit that
//! notices: every 64th fast hit on a thread checks the reading against the clock.
//!
//! What is left: between two of those checks, a thread starved for more than [`LAG`] can let up
//! to 63 hits on one calling thread serve an answer as fresh for as much longer; and a layer
//! shared between a running runtime and a paused one serves the paused one's hits on real time
//! until that runtime's first miss.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

/// How often the clock thread reads the clock.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// How far behind the time a trusted reading may be: a hit takes the time to be at most this
/// after the reading (five ticks; the rest is room for a clock thread that runs late).
pub(crate) const LAG: Duration = Duration::from_millis(50);
const LAG_NANOS: u64 = 50_000_000;
/// How far tokio's clock and the system's may differ, at a miss, for a layer to use readings.
const TOLERANCE: Duration = Duration::from_millis(1);
/// Every this many fast hits, a thread checks the reading against the clock.
const CHECK_EVERY: u32 = 64;

/// Set while the reading is trusted.
const TRUSTED: u64 = 1;

/// The process's clock thread and its reading.
struct Ticker {
    /// When the thread started: readings are counted from it.
    base: std::time::Instant,
    /// `nanoseconds since base << 1 | TRUSTED`.
    state: AtomicU64,
}

impl Ticker {
    fn publish(&self, now: std::time::Instant) {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX).min(u64::MAX >> 1);
        self.state.store(nanos << 1 | TRUSTED, Ordering::Relaxed);
    }

    /// Whether the reading `nanos` is at most [`LAG`] old; if not, withdraws it (if it is still
    /// the one published) until the next tick.
    #[cold]
    fn current(&self, nanos: u64) -> bool {
        let now = std::time::Instant::now().saturating_duration_since(self.base);
        if now <= Duration::from_nanos(nanos) + LAG {
            return true;
        }
        let _ = self.state.compare_exchange(
            nanos << 1 | TRUSTED,
            nanos << 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        false
    }
}

static TICKER: OnceLock<Option<Ticker>> = OnceLock::new();

/// The clock thread, started on first use; `None` where no thread could be started.
fn ticker() -> Option<&'static Ticker> {
    TICKER
        .get_or_init(|| {
            let base = std::time::Instant::now();
            let spawned = std::thread::Builder::new()
                .name("seawall-clock".into())
                .spawn(|| {
                    // The thread waits for the cell to be set (by the call that spawned it).
                    let ticker = loop {
                        if let Some(ticker) = TICKER.get() {
                            break ticker.as_ref();
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    };
                    let Some(ticker) = ticker else { return };
                    loop {
                        ticker.publish(std::time::Instant::now());
                        std::thread::sleep(TICK);
                    }
                });
            spawned.ok().map(|_| Ticker {
                base,
                state: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Not decided yet: the layer's hits read the clock.
const UNDECIDED: u8 = 0;
/// The layer's hits may use readings.
const ENABLED: u8 = 1;
/// The layer's hits never use readings again.
const DISABLED: u8 = 2;

/// One layer's say on whether its hits may use the process's reading: see the module's
/// documentation.
#[derive(Debug, Default)]
pub(crate) struct Coarse {
    state: AtomicU8,
    /// A reading set by hand, in place of the clock thread's (tests of the hit path).
    #[cfg(test)]
    fake: std::sync::Mutex<Option<Instant>>,
}

thread_local! {
    /// Fast hits on this thread since the reading was last checked against the clock.
    static SINCE_CHECK: Cell<u32> = const { Cell::new(0) };
}

impl Coarse {
    pub(crate) fn new() -> Self {
        Coarse::default()
    }

    /// The latest the time can be, in nanoseconds since the clock thread started (the reading
    /// plus [`LAG`]), if this layer's hits may judge on a reading: one load of the layer's
    /// word and one of the reading, and on one call in [`CHECK_EVERY`] a read of the clock.
    #[inline]
    pub(crate) fn latest(&self) -> Option<u64> {
        if self.state.load(Ordering::Relaxed) != ENABLED {
            return None;
        }
        #[cfg(test)]
        if let Some(fake) = *self.fake.lock().unwrap() {
            return Some(self.nanos(fake) + LAG_NANOS);
        }
        let ticker = TICKER.get()?.as_ref()?;
        let state = ticker.state.load(Ordering::Relaxed);
        if state & TRUSTED == 0 {
            return None;
        }
        let reading = state >> 1;
        let due = SINCE_CHECK.with(|since| {
            let count = since.get() + 1;
            since.set(if count >= CHECK_EVERY { 0 } else { count });
            count >= CHECK_EVERY
        });
        if due && !ticker.current(reading) {
            return None;
        }
        Some(reading + LAG_NANOS)
    }

    /// The instant `nanos` after the clock thread started (`None` before it started).
    pub(crate) fn instant(nanos: u64) -> Option<Instant> {
        let ticker = TICKER.get()?.as_ref()?;
        Some(Instant::from_std(ticker.base + Duration::from_nanos(nanos)))
    }

    /// `at` in nanoseconds since the clock thread started: 0 (not known) while this layer's
    /// hits do not use readings, or for an instant before the thread started.
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        if self.state.load(Ordering::Relaxed) != ENABLED {
            return 0;
        }
        let Some(Some(ticker)) = TICKER.get() else {
            return 0;
        };
        let nanos = at
            .into_std()
            .saturating_duration_since(ticker.base)
            .as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX).min(u64::MAX >> 2)
    }

    /// Called on a miss that read tokio's clock at `now`: enables readings for the layer on a
    /// multi-thread runtime whose clock is the system's, and disables them for good when
    /// tokio's clock is not the system's.
    #[inline]
    pub(crate) fn missed(&self, now: Instant) {
        if self.state.load(Ordering::Relaxed) == DISABLED {
            return;
        }
        self.decide(now);
    }

    #[cold]
    fn decide(&self, now: Instant) {
        let system = std::time::Instant::now();
        let now = now.into_std();
        let gap = system
            .checked_duration_since(now)
            .unwrap_or_else(|| now.duration_since(system));
        if gap > TOLERANCE {
            self.state.store(DISABLED, Ordering::Relaxed);
            return;
        }
        if self.state.load(Ordering::Relaxed) != UNDECIDED {
            return;
        }
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if multi_thread && ticker().is_some() {
            let _ = self.state.compare_exchange(
                UNDECIDED,
                ENABLED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Sets the reading by hand and enables it (tests of the hit path).
    #[cfg(test)]
    pub(crate) fn set(&self, reading: Option<Instant>) {
        ticker().expect("a clock thread");
        *self.fake.lock().unwrap() = reading;
        self.state.store(
            if reading.is_some() { ENABLED } else { DISABLED },
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_a_layer_reads_the_clock() {
        let clock = Coarse::new();
        clock.missed(Instant::now());
        assert_eq!(clock.latest(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_a_layer_reads_the_clock() {
        let clock = Coarse::new();
        clock.missed(Instant::now());
        assert_eq!(clock.latest(), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_miss_under_paused_time_disables_readings_for_good() {
        let clock = Coarse::new();
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.missed(Instant::now());
        assert_eq!(clock.state.load(Ordering::Relaxed), DISABLED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_a_multi_thread_runtime_readings_bound_the_time() {
        let clock = Coarse::new();
        let before = Instant::now();
        clock.missed(before);
        assert_eq!(clock.state.load(Ordering::Relaxed), ENABLED);
        // The clock thread publishes within a tick of starting (bounded wait: a loaded machine
        // may take longer).
        let mut tries = 0;
        let latest = loop {
            if let Some(latest) = clock.latest() {
                break latest;
            }
            tries += 1;
            assert!(tries < 1_000, "never trusted");
            std::thread::sleep(Duration::from_millis(1));
        };
        let now = Instant::now();
        let earliest = Coarse::instant(latest - LAG_NANOS).unwrap();
        assert!(earliest <= now, "a reading is never ahead of the time");
        assert_eq!(Coarse::instant(latest).unwrap() - earliest, LAG);
        // Instants and nanoseconds convert both ways (to the nanosecond).
        let back = clock.nanos(Coarse::instant(latest).unwrap());
        assert!(back.abs_diff(latest) <= 1, "{back} against {latest}");
        // A miss that finds tokio's clock away from the system's disables the layer.
        clock.missed(now + Duration::from_secs(1));
        assert_eq!(clock.latest(), None);
        assert_eq!(clock.nanos(now), 0);
        clock.missed(Instant::now());
        assert_eq!(clock.latest(), None, "disabled for good");
    }

    #[test]
    fn a_reading_older_than_the_lag_is_withdrawn_by_the_next_check() {
        let ticker = ticker().expect("a clock thread");
        let clock = Coarse::new();
        clock.state.store(ENABLED, Ordering::Relaxed);
        // A reading from long ago, as a stopped clock thread would leave it: the oldest there
        // can be is the thread's start, so wait until that is older than the lag. (The thread
        // publishes a fresh reading within a tick, which is fine too: what must not happen is
        // the stale one served through a whole round of checks.)
        std::thread::sleep(
            (ticker.base + LAG + TICK).saturating_duration_since(std::time::Instant::now()),
        );
        ticker.publish(ticker.base);
        let served_stale = (0..CHECK_EVERY)
            .filter_map(|_| clock.latest())
            .filter(|&latest| latest <= LAG_NANOS + 1_000_000)
            .count();
        assert!(served_stale < CHECK_EVERY as usize, "never withdrawn");
    }
}
