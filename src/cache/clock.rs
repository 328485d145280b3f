//! A clock that a hit can read without a system call: the time as a thread last read it, trusted
//! by a layer only where tokio's clock is the system's.
//!
//! A fresh hit far from its expiry needs to know only that "now" is well before the entry's
//! freshness ends, not when exactly it is; reading the system clock for that costs as much as
//! the rest of a hit. One thread per process (`seawall-clock`, started by the first layer that
//! uses it; it never exits, and wakes every [`TICK`]) reads the monotonic clock and publishes
//! the reading in one atomic word, which hits load. A hit takes the reading as a lower bound on
//! the time and the reading plus [`LAG`] as an upper one, and is served from the reading alone
//! only when the entry is certainly fresh until then; near expiry, stale, or when the reading is
//! not trusted, it reads the clock.
//!
//! Each layer decides whether its hits may use the reading ([`Coarse`]): only once a miss has
//! run on a multi-thread tokio runtime (tokio's paused time exists only on current-thread
//! runtimes), and never again once a miss finds tokio's clock away from the system's (a layer
//! shared with a paused runtime). A reading older than [`STALE`] (the thread descheduled, the
//! process stopped) is withdrawn by the first hit that notices: on each thread, every 64th hit
//! a layer counts checks the reading against the clock.
//!
//! What is left: a clock thread stalled for more than [`LAG`] while a calling thread runs, for
//! fewer than 64 of that thread's hits since its last check, can have an answer served as fresh
//! for as much longer; and a layer shared between a running runtime and a paused one serves the
//! paused one's hits on real time until that runtime's first miss.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

/// How often the clock thread reads the clock.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// How far behind the time a trusted reading may be: a hit takes the time to be at most this
/// after the reading (25 ticks: room for a clock thread that runs late, or a process throttled
/// for a CPU quota's period).
pub(crate) const LAG: Duration = Duration::from_millis(250);
const LAG_NANOS: u64 = LAG.as_nanos() as u64;
/// A reading older than this is withdrawn by the hit that checks it.
const STALE: Duration = Duration::from_millis(100);
/// Every this many fast hits, a thread checks the reading against the clock.
const CHECK_EVERY: u64 = 64;

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

    /// Whether the reading `nanos` is at most [`STALE`] old; if not, withdraws it (if it is
    /// still the one published) until the next tick.
    #[cold]
    fn current(&self, nanos: u64) -> bool {
        let now = std::time::Instant::now().saturating_duration_since(self.base);
        if now <= Duration::from_nanos(nanos) + STALE {
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

/// [`Coarse::latest`] on `ticker`'s reading.
#[inline]
fn latest_on(ticker: &Ticker, count: u64) -> Option<u64> {
    let state = ticker.state.load(Ordering::Relaxed);
    if state & TRUSTED == 0 {
        return None;
    }
    let reading = state >> 1;
    if count % CHECK_EVERY == 0 && !ticker.current(reading) {
        return None;
    }
    Some(reading + LAG_NANOS)
}

/// Not decided yet: the layer's hits read the clock.
const UNDECIDED: u8 = 0;
/// The layer's hits may use readings.
const ENABLED: u8 = 1;
/// The layer's hits never use readings again.
const DISABLED: u8 = 2;
/// Set by hand (tests of the hit path): as `ENABLED`, and left alone by misses.
#[cfg(test)]
const FORCED: u8 = 3;

/// One layer's say on whether its hits may use the process's reading: see the module's
/// documentation.
#[derive(Debug, Default)]
pub(crate) struct Coarse {
    state: AtomicU8,
    /// A reading set by hand, in place of the clock thread's (tests of the hit path).
    #[cfg(test)]
    fake: std::sync::Mutex<Option<Instant>>,
}

impl Coarse {
    pub(crate) fn new() -> Self {
        Coarse::default()
    }

    /// The latest the time can be, in nanoseconds since the clock thread started (the reading
    /// plus [`LAG`]), if this layer's hits may judge on a reading: one load of the layer's
    /// word and one of the reading. `count` is how many hits the calling thread has counted on
    /// the layer: on one in [`CHECK_EVERY`], the reading is checked against the clock.
    #[inline]
    pub(crate) fn latest(&self, count: u64) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        #[cfg(test)]
        if let Some(fake) = *self.fake.lock().unwrap() {
            return Some(self.nanos(fake) + LAG_NANOS);
        }
        latest_on(TICKER.get()?.as_ref()?, count)
    }

    /// The instant `nanos` after the clock thread started (`None` before it started).
    pub(crate) fn instant(nanos: u64) -> Option<Instant> {
        let ticker = TICKER.get()?.as_ref()?;
        Some(Instant::from_std(ticker.base + Duration::from_nanos(nanos)))
    }

    /// `at` in nanoseconds since the clock thread started: 0 (not known) while this layer's
    /// hits do not use readings, or for an instant before the thread started.
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        if !self.enabled() {
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

    /// Whether this layer's hits may use readings.
    #[inline]
    fn enabled(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        #[cfg(test)]
        if state == FORCED {
            return true;
        }
        state == ENABLED
    }

    /// Called on a miss: enables readings for the layer on a multi-thread runtime whose clock
    /// is the system's, and disables them for good when tokio's clock is not the system's.
    #[inline]
    pub(crate) fn missed(&self) {
        match self.state.load(Ordering::Relaxed) {
            DISABLED | ENABLED => {}
            UNDECIDED => self.decide(),
            // Set by hand.
            _ => return,
        }
        if self.state.load(Ordering::Relaxed) == ENABLED {
            // Checked on every miss: a runtime paused later, or another one, shares the layer.
            self.check();
        }
    }

    /// Whether tokio's clock reads between two reads of the system's (as it always does where
    /// it is the system's, and almost never where it is paused); if not, disables readings.
    #[cold]
    fn check(&self) -> bool {
        let before = std::time::Instant::now();
        let tokio = Instant::now().into_std();
        let after = std::time::Instant::now();
        if before <= tokio && tokio <= after {
            return true;
        }
        self.state.store(DISABLED, Ordering::Relaxed);
        false
    }

    #[cold]
    fn decide(&self) {
        if !self.check() {
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

    /// The layer's state, by name (tests).
    #[cfg(test)]
    pub(crate) fn state_for_tests(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            UNDECIDED => "undecided",
            ENABLED => "enabled",
            DISABLED => "disabled",
            _ => "forced",
        }
    }

    /// Sets the reading by hand and enables it (tests of the hit path).
    #[cfg(test)]
    pub(crate) fn set(&self, reading: Option<Instant>) {
        ticker().expect("a clock thread");
        *self.fake.lock().unwrap() = reading;
        self.state.store(
            if reading.is_some() { FORCED } else { DISABLED },
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
        clock.missed();
        assert_eq!(clock.latest(1), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_a_layer_reads_the_clock() {
        let clock = Coarse::new();
        clock.missed();
        assert_eq!(clock.latest(1), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_miss_under_paused_time_disables_readings_for_good() {
        let clock = Coarse::new();
        clock.missed();
        assert_eq!(clock.state.load(Ordering::Relaxed), DISABLED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_a_multi_thread_runtime_readings_bound_the_time() {
        let clock = Coarse::new();
        clock.missed();
        assert_eq!(clock.state.load(Ordering::Relaxed), ENABLED);
        // The clock thread publishes within a tick of starting (bounded wait: a loaded machine
        // may take longer).
        let mut tries = 0;
        let latest = loop {
            if let Some(latest) = clock.latest(1) {
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
        // Misses keep it on here.
        clock.missed();
        assert!(clock.latest(1).is_some());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_layer_shared_with_a_paused_runtime_is_disabled_at_its_first_miss_there() {
        let clock = Coarse::new();
        // As if enabled by a miss on another, running runtime.
        clock.state.store(ENABLED, Ordering::Relaxed);
        clock.missed();
        assert_eq!(clock.latest(1), None);
        assert_eq!(clock.nanos(Instant::now()), 0);
        assert_eq!(clock.state.load(Ordering::Relaxed), DISABLED, "for good");
    }

    #[test]
    fn a_stale_reading_is_withdrawn_by_the_next_check() {
        // A clock of the test's own (the process's is shared with the other tests), whose
        // reading is as old as a stopped thread would leave it: older than `STALE`.
        let ticker = Ticker {
            base: std::time::Instant::now() - STALE - TICK,
            state: AtomicU64::new(0),
        };
        ticker.publish(ticker.base);
        // Believed until a count comes due ...
        assert_eq!(latest_on(&ticker, 1), Some(LAG_NANOS));
        // ... which checks it against the clock and withdraws it, until the next tick.
        assert_eq!(latest_on(&ticker, CHECK_EVERY), None);
        assert_eq!(latest_on(&ticker, 1), None);
        // A current reading is kept through the check.
        ticker.publish(std::time::Instant::now());
        assert!(latest_on(&ticker, CHECK_EVERY).is_some());
    }
}
