//! Adaptive concurrency limit algorithms, after Netflix's `concurrency-limits`: [`Aimd`],
//! [`Gradient2`], [`Vegas`], and a [`Fixed`] limit.
//!
//! An algorithm sees one [`Sample`] per finished call (its round-trip time, how many calls were in
//! flight when it started, and whether it was dropped: failed for want of capacity, or timed out)
//! and returns the new limit. Limits are kept as `f64` and rounded down where a whole number of
//! slots is needed. Every algorithm keeps the limit within its minimum and maximum, whatever the
//! samples (NaN and infinite times included). Bounds the wrong way round (a minimum above the
//! maximum) never panic: the maximum wins.
//!
//! Every algorithm updates on each sample it is given. For services of more than a few hundred
//! calls a second, wrap Gradient2 and Vegas in [`Windowed`], which gives them one sample a second
//! (the average time, the most calls in flight, whether any call was dropped), as Netflix runs
//! them: otherwise their long-term view of latency lasts less than a second.
//!
//! # Where they differ from Netflix's
//!
//! Netflix times every call; the [adaptive limiter](super::AdaptiveLimitLayer) times only a share
//! of them at high rates, but feeds every dropped call, so an algorithm may be given a drop with no
//! time ([`Duration::ZERO`]). Netflix's have no such sample; here:
//!
//! - [`Aimd`] backs off, as for any drop;
//! - [`Vegas`] decreases the limit, as for any drop, without counting the sample towards its next
//!   probe or as a round-trip time;
//! - [`Gradient2`], which Netflix's reads only through times (a drop, a timeout, by its length),
//!   reads it as the slowest time there is: the gradient at its floor (0.5), under the same rule
//!   that a service using less than half its limit says nothing. A timed drop is read by its time,
//!   as Netflix's does.
//!
//! Vegas draws the jitter of its probe period from a generator seeded at random, or by
//! [`Vegas::seed`] for a reproducible run, where Netflix's uses `ThreadLocalRandom`.
//!
//! Drops that end while the limiter is busy feeding the algorithm another call are given to it
//! together, through [`Algorithm::update_dropped`], in one step whatever their number: [`Aimd`],
//! [`Fixed`] and [`Windowed`] count each of them exactly; Gradient2 and Vegas, fed them one by
//! one, at most [`DROPS_AT_ONCE`] of a batch.
//!
//! # Settings
//!
//! [`Algorithm::check`] tells the [adaptive limiter's builder](super::AdaptiveLimitBuilder) which
//! settings cannot work (bounds that are not numbers or the wrong way round, a backoff or a
//! smoothing out of its range, a fixed limit of zero...): the builder refuses them with a typed
//! error. An algorithm given such settings directly still never panics.

use std::time::Duration;
use tokio::time::Instant;

/// One finished call, as an algorithm sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// How long the call took.
    pub rtt: Duration,
    /// How many calls were in flight when it started, itself included.
    pub in_flight: u64,
    /// Whether it was dropped: rejected by the service for want of capacity, or timed out.
    pub dropped: bool,
    /// When it ended.
    pub at: Instant,
}

/// A concurrency limit that follows what the service shows of its load.
///
/// The limiter keeps whatever limit an algorithm gives within what its slots can count: at least
/// one, at most [`MAX_CONCURRENT`](crate::bulkhead::MAX_CONCURRENT) (not a number counts as one).
pub trait Algorithm: Send + 'static {
    /// The limit to start with.
    fn initial(&self) -> f64;

    /// The new limit, given the current one and a finished call.
    fn update(&mut self, limit: f64, sample: &Sample) -> f64;

    /// The new limit after `count` drops like `sample` (untimed, ended at the same moment), in
    /// one step: the limiter calls it for drops that ended while it was feeding the algorithm
    /// another call, so it runs in constant time whatever `count`.
    ///
    /// By default `sample` is fed to [`update`](Self::update) `count` times, but at most
    /// [`DROPS_AT_ONCE`]: an algorithm for which more drops at once mean more should count them
    /// itself.
    fn update_dropped(&mut self, limit: f64, sample: &Sample, count: u64) -> f64 {
        (0..count.min(DROPS_AT_ONCE)).fold(limit, |limit, _| self.update(limit, sample))
    }

    /// Checks the settings, for the limiter's builder, which refuses an algorithm whose settings
    /// cannot work with [`ConfigError::Algorithm`](super::AdaptiveConfigError::Algorithm). By
    /// default every setting is taken.
    fn check(&self) -> Result<(), InvalidSetting> {
        Ok(())
    }
}

/// The most drops in one batch that [`Algorithm::update_dropped`] feeds, one by one, to an
/// algorithm that does not count them itself.
pub const DROPS_AT_ONCE: u64 = 32;

/// A setting of an algorithm that cannot work, found by [`Algorithm::check`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{algorithm}: {setting} must be {expected}, got {value}")]
pub struct InvalidSetting {
    algorithm: &'static str,
    setting: &'static str,
    value: f64,
    expected: &'static str,
}

impl InvalidSetting {
    /// `algorithm`'s `setting` is `value`, where it must be `expected` (a phrase such as
    /// "in (0, 1)" or "at most max").
    pub fn new(
        algorithm: &'static str,
        setting: &'static str,
        value: f64,
        expected: &'static str,
    ) -> Self {
        InvalidSetting {
            algorithm,
            setting,
            value,
            expected,
        }
    }

    /// The algorithm whose setting it is.
    pub fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    /// The setting, by its field's name.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// The value given.
    pub fn value(&self) -> f64 {
        self.value
    }
}

/// `Ok` if `ok`, else the error that `algorithm`'s `setting` is `value` where it must be
/// `expected`.
fn within(
    algorithm: &'static str,
    setting: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<(), InvalidSetting> {
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting::new(algorithm, setting, value, expected))
    }
}

/// The checks common to every bounded algorithm: the starting limit and the minimum are numbers,
/// the maximum is a number or infinite, and the minimum is at most the maximum.
fn check_bounds(
    algorithm: &'static str,
    initial: f64,
    min: f64,
    max: f64,
) -> Result<(), InvalidSetting> {
    within(algorithm, "initial", initial, !initial.is_nan(), "a number")?;
    within(algorithm, "min", min, min.is_finite(), "a finite number")?;
    within(algorithm, "max", max, !max.is_nan(), "a number")?;
    within(algorithm, "min", min, min <= max, "at most max")
}

/// A smoothing factor of an exponential average: in (0, 1].
fn check_smoothing(algorithm: &'static str, smoothing: f64) -> Result<(), InvalidSetting> {
    within(
        algorithm,
        "smoothing",
        smoothing,
        smoothing > 0.0 && smoothing <= 1.0,
        "in (0, 1]",
    )
}

fn clamp(limit: f64, min: f64, max: f64) -> f64 {
    // Not `f64::clamp`, which panics when the bounds are the wrong way round or not numbers: they
    // are public fields, and a configuration mistake must not panic on every call.
    let limit = if limit.is_nan() { min } else { limit };
    limit.max(min).min(max)
}

/// A limit that never changes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fixed(pub u64);

impl Algorithm for Fixed {
    fn initial(&self) -> f64 {
        self.0 as f64
    }

    fn update(&mut self, _: f64, _: &Sample) -> f64 {
        self.0 as f64
    }

    fn update_dropped(&mut self, _: f64, _: &Sample, _: u64) -> f64 {
        self.0 as f64
    }

    /// A fixed limit is a number of slots: at least 1, at most
    /// [`MAX_CONCURRENT`](crate::bulkhead::MAX_CONCURRENT).
    fn check(&self) -> Result<(), InvalidSetting> {
        let max = crate::bulkhead::MAX_CONCURRENT;
        within(
            "Fixed",
            "limit",
            self.0 as f64,
            (1..=max).contains(&self.0),
            "at least 1 and at most bulkhead::MAX_CONCURRENT",
        )
    }
}

/// Additive increase, multiplicative decrease: one more slot after a call that used at least half
/// the limit, `backoff` times the limit after a dropped call or one slower than `timeout`.
///
/// Defaults, Netflix's: initial 20, minimum 20, maximum 200, backoff 0.9, timeout 5 s.
///
/// ```
/// use seawall::limit::algorithm::{Aimd, Algorithm, Sample};
/// use std::time::Duration;
///
/// let mut aimd = Aimd::default();
/// let at = tokio::time::Instant::now();
/// let busy = Sample { rtt: Duration::from_millis(10), in_flight: 15, dropped: false, at };
/// assert_eq!(aimd.update(20.0, &busy), 21.0);
/// let dropped = Sample { dropped: true, ..busy };
/// assert_eq!(aimd.update(100.0, &dropped), 90.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aimd {
    /// The limit to start with.
    pub initial: f64,
    /// The smallest limit.
    pub min: f64,
    /// The largest limit.
    pub max: f64,
    /// What the limit is multiplied by after a drop, in `(0, 1)`.
    pub backoff: f64,
    /// A call at least this slow counts as a drop.
    pub timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            initial: 20.0,
            min: 20.0,
            max: 200.0,
            backoff: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Algorithm for Aimd {
    fn initial(&self) -> f64 {
        clamp(self.initial, self.min, self.max)
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        let next = if sample.dropped || sample.rtt >= self.timeout {
            limit * self.backoff
        } else if sample.in_flight as f64 * 2.0 >= limit {
            limit + 1.0
        } else {
            limit
        };
        clamp(next, self.min, self.max)
    }

    /// `backoff` to the power of `count`: each drop backs off, as one by one.
    fn update_dropped(&mut self, limit: f64, sample: &Sample, count: u64) -> f64 {
        if count == 0 {
            return limit;
        }
        // The first as one (which brings a limit from outside the bounds within them), then the
        // others at once: from within the bounds, the limit only moves one way, so clamping once
        // at the end is clamping after each. An exponent past i32 is as good as infinite.
        let first = self.update(limit, sample);
        let factor = self.backoff.powi((count - 1).min(i32::MAX as u64) as i32);
        clamp(first * factor, self.min, self.max)
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        check_bounds("Aimd", self.initial, self.min, self.max)?;
        let backoff = self.backoff;
        within(
            "Aimd",
            "backoff",
            backoff,
            backoff > 0.0 && backoff < 1.0,
            "in (0, 1)",
        )?;
        let timeout = self.timeout.as_secs_f64();
        within("Aimd", "timeout", timeout, timeout > 0.0, "more than zero")
    }
}

/// An exponential moving average that starts as a plain average over its first samples.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ExpAvg {
    window: f64,
    warmup: u32,
    count: u32,
    value: f64,
}

impl ExpAvg {
    fn new(window: u32, warmup: u32) -> Self {
        ExpAvg {
            window: window as f64,
            warmup,
            count: 0,
            value: 0.0,
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.value += (sample - self.value) / self.count as f64;
        } else {
            let factor = 2.0 / (self.window + 1.0);
            self.value = self.value * (1.0 - factor) + sample * factor;
        }
        self.value
    }
}

/// Follows the ratio of a long-term average round-trip time to the latest one: the limit shrinks
/// (to no less than half) as latency rises above its usual level, and grows by a small queue
/// allowance otherwise; smoothed, and left alone while the service uses less than half of it.
/// A drop is read by its time; a drop that was not timed as the slowest time (see the
/// [module docs](self)).
///
/// Defaults, Netflix's: initial 20, minimum 20, maximum 200, smoothing 0.2, tolerance 1.5, long
/// window 600 samples (10 of warm-up), queue allowance 4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gradient2 {
    /// The limit to start with.
    pub initial: f64,
    /// The smallest limit.
    pub min: f64,
    /// The largest limit.
    pub max: f64,
    /// How much of each new estimate is taken, in `(0, 1]`.
    pub smoothing: f64,
    /// How much slower than usual the latest call may be before the limit shrinks.
    pub tolerance: f64,
    /// Slots added to the estimate, so that a small queue can form.
    pub queue: f64,
    long: ExpAvg,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2::new(600)
    }
}

impl Gradient2 {
    /// Netflix's defaults with a long-term average over `long_window` samples.
    pub fn new(long_window: u32) -> Self {
        Gradient2 {
            initial: 20.0,
            min: 20.0,
            max: 200.0,
            smoothing: 0.2,
            tolerance: 1.5,
            queue: 4.0,
            long: ExpAvg::new(long_window.max(1), 10),
        }
    }
}

impl Algorithm for Gradient2 {
    fn initial(&self) -> f64 {
        clamp(self.initial, self.min, self.max)
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        let short = sample.rtt.as_nanos() as f64;
        if short <= 0.0 {
            // Untimed: only a drop says anything, and it is read as the slowest time there is.
            if !sample.dropped || (sample.in_flight as f64) < limit / 2.0 {
                return clamp(limit, self.min, self.max);
            }
            return self.toward(limit, MIN_GRADIENT);
        }
        let long = self.long.add(short);
        // After a lasting rise in latency the long average would lag for long: let it catch up.
        if long / short > 2.0 {
            self.long.value *= 0.95;
        }
        // A service that uses less than half its limit says nothing about the limit.
        if (sample.in_flight as f64) < limit / 2.0 {
            return clamp(limit, self.min, self.max);
        }
        let gradient = (self.tolerance * long / short).clamp(MIN_GRADIENT, 1.0);
        self.toward(limit, gradient)
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        check_bounds("Gradient2", self.initial, self.min, self.max)?;
        let (smoothing, tolerance, queue) = (self.smoothing, self.tolerance, self.queue);
        check_smoothing("Gradient2", smoothing)?;
        within(
            "Gradient2",
            "tolerance",
            tolerance,
            tolerance.is_finite() && tolerance >= 1.0,
            "at least 1",
        )?;
        within(
            "Gradient2",
            "queue",
            queue,
            queue.is_finite() && queue >= 0.0,
            "a number, at least 0",
        )
    }
}

/// The least gradient [`Gradient2`] applies: it never takes more than half the limit at once.
const MIN_GRADIENT: f64 = 0.5;

impl Gradient2 {
    /// The limit moved towards `limit × gradient + queue`, smoothed.
    fn toward(&self, limit: f64, gradient: f64) -> f64 {
        let estimate = limit * gradient + self.queue;
        let next = limit * (1.0 - self.smoothing) + estimate * self.smoothing;
        clamp(next, self.min, self.max)
    }
}

/// TCP Vegas for concurrency: estimates the queue from the latest round-trip time against the
/// smallest seen (`queue = limit × (1 − rtt_min / rtt)`), grows the limit while the queue is short
/// and shrinks it when it is long or a call is dropped, as Netflix's `VegasLimit` does.
///
/// With `l = max(1, ⌊log10 limit⌋)`: a queue of at most `l` grows the limit by `6l`, under `3l` by
/// `l`, over `6l` shrinks it by `l`, and so does a drop. A sample with a new smallest time only
/// records it, leaving the limit. The smallest time is measured afresh, from one sample, after
/// `jitter × probe × limit` samples, with `jitter` drawn anew each time in `[0.5, 1)`, so that it
/// can rise with the service and limiters started together do not probe together. Defaults,
/// Netflix's: initial 20, maximum 1000, smoothing 1, probe 30; the jitter from a generator seeded
/// at random ([`seed`](Vegas::seed) to choose).
///
/// ```
/// use seawall::limit::algorithm::{Algorithm, Sample, Vegas};
/// use std::time::Duration;
///
/// let mut vegas = Vegas::default().seed(7);
/// let at = tokio::time::Instant::now();
/// let call = |ms, in_flight| Sample { rtt: Duration::from_millis(ms), in_flight, dropped: false, at };
/// assert_eq!(vegas.update(20.0, &call(10, 20)), 20.0); // the first smallest time
/// assert_eq!(vegas.update(20.0, &call(10, 20)), 26.0); // no queue: up by 6
/// assert_eq!(vegas.update(26.0, &call(20, 26)), 25.0); // a queue of 13: down by 1
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vegas {
    /// The limit to start with.
    pub initial: f64,
    /// The smallest limit.
    pub min: f64,
    /// The largest limit.
    pub max: f64,
    /// How much of each new estimate is taken, in `(0, 1]`.
    pub smoothing: f64,
    /// The smallest round-trip time is measured again after `jitter × probe × limit` samples.
    pub probe: f64,
    rtt_min: Option<f64>,
    since_probe: f64,
    /// This probe period's jitter, in `[0.5, 1)`.
    jitter: f64,
    /// The state of the SplitMix64 generator the jitter is drawn from.
    rng: u64,
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas {
            initial: 20.0,
            min: 1.0,
            max: 1000.0,
            smoothing: 1.0,
            probe: 30.0,
            rtt_min: None,
            since_probe: 0.0,
            jitter: 1.0,
            rng: 0,
        }
        .seed(rand::random())
    }
}

impl Vegas {
    /// The same algorithm, with the probe jitter drawn from a generator seeded with `seed`: the same
    /// seed gives the same probe periods, for tests and simulations. By default the seed is random,
    /// so that limiters started together probe at different times.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = seed;
        self.jitter = self.draw_jitter();
        self
    }

    /// A draw from `[0.5, 1)` (SplitMix64: Steele, Lea and Flood, 2014).
    fn draw_jitter(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        0.5 + 0.5 * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// The limit after a step from `limit` to `next`, smoothed and kept within bounds.
    fn step(&self, limit: f64, next: f64) -> f64 {
        let next = clamp(next, self.min, self.max);
        clamp(
            limit * (1.0 - self.smoothing) + next * self.smoothing,
            self.min,
            self.max,
        )
    }
}

impl Algorithm for Vegas {
    fn initial(&self) -> f64 {
        clamp(self.initial, self.min, self.max)
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        let log = limit.max(1.0).log10().floor().max(1.0);
        let rtt = sample.rtt.as_nanos() as f64;
        if rtt <= 0.0 {
            // Untimed: only a drop says anything, and a drop always takes the limit down.
            if sample.dropped {
                return self.step(limit, limit - log);
            }
            return clamp(limit, self.min, self.max);
        }
        self.since_probe += 1.0;
        if self.jitter * self.probe * limit.max(1.0) <= self.since_probe {
            // Measure the smallest time again, from this sample.
            self.since_probe = 0.0;
            self.jitter = self.draw_jitter();
            self.rtt_min = Some(rtt);
            return clamp(limit, self.min, self.max);
        }
        let rtt_min = match self.rtt_min {
            Some(min) if rtt >= min => min,
            // A new smallest time is recorded, and says nothing of the queue yet.
            _ => {
                self.rtt_min = Some(rtt);
                return clamp(limit, self.min, self.max);
            }
        };
        let next = if sample.dropped {
            limit - log
        } else if (sample.in_flight as f64) * 2.0 < limit {
            return clamp(limit, self.min, self.max);
        } else {
            let queue = (limit * (1.0 - rtt_min / rtt)).ceil();
            if queue <= log {
                limit + 6.0 * log
            } else if queue < 3.0 * log {
                limit + log
            } else if queue > 6.0 * log {
                limit - log
            } else {
                return clamp(limit, self.min, self.max);
            }
        };
        self.step(limit, next)
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        check_bounds("Vegas", self.initial, self.min, self.max)?;
        let (smoothing, probe) = (self.smoothing, self.probe);
        check_smoothing("Vegas", smoothing)?;
        within(
            "Vegas",
            "probe",
            probe,
            probe.is_finite() && probe > 0.0,
            "a number above 0",
        )
    }
}

/// Feeds another algorithm one sample per window of time instead of one per call, as Netflix's
/// `WindowedLimit` does: the window's average round-trip time, the most calls in flight during it,
/// and whether any call in it was dropped.
///
/// A window lasts twice its shortest round-trip time, kept between `min_time` and `max_time`
/// (both one second by default), and is used only if it holds at least `min_samples` calls (10);
/// calls faster than `min_rtt` (100 µs), such as answers from a cache, are left out unless dropped.
///
/// ```
/// use seawall::limit::algorithm::{Algorithm, Gradient2, Sample, Windowed};
/// use std::time::Duration;
///
/// let mut windowed = Windowed::new(Gradient2::default());
/// let start = tokio::time::Instant::now();
/// let mut limit = windowed.initial();
/// for i in 0..2_000u64 {
///     let at = start + Duration::from_millis(i);
///     let sample = Sample { rtt: Duration::from_millis(30), in_flight: 20, dropped: false, at };
///     limit = windowed.update(limit, &sample);
/// }
/// // Two seconds of calls, one window closed: Gradient2 saw one sample and grew by a little.
/// assert!(limit > 20.0 && limit < 21.0, "{limit}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Windowed<A> {
    /// The algorithm fed one sample per window.
    pub inner: A,
    /// The shortest window.
    pub min_time: Duration,
    /// The longest window.
    pub max_time: Duration,
    /// The fewest calls a window must hold to be used.
    pub min_samples: u32,
    /// Calls faster than this are left out, unless dropped.
    pub min_rtt: Duration,
    window: Window,
    next_update: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Window {
    samples: u32,
    timed: u32,
    rtt_sum: f64,
    rtt_min: Option<Duration>,
    max_in_flight: u64,
    dropped: bool,
}

impl<A: Algorithm> Windowed<A> {
    /// Windows of one second of at least 10 calls, over `inner`.
    pub fn new(inner: A) -> Self {
        Windowed {
            inner,
            min_time: Duration::from_secs(1),
            max_time: Duration::from_secs(1),
            min_samples: 10,
            min_rtt: Duration::from_micros(100),
            window: Window::default(),
            next_update: None,
        }
    }
}

impl<A: Algorithm> Algorithm for Windowed<A> {
    fn initial(&self) -> f64 {
        self.inner.initial()
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        if !sample.dropped && sample.rtt < self.min_rtt {
            return limit;
        }
        let w = &mut self.window;
        w.samples = w.samples.saturating_add(1);
        w.dropped |= sample.dropped;
        w.max_in_flight = w.max_in_flight.max(sample.in_flight);
        // Untimed drops (zero time) say nothing about latency.
        if !sample.rtt.is_zero() {
            w.timed += 1;
            w.rtt_sum += sample.rtt.as_nanos() as f64;
            w.rtt_min = Some(w.rtt_min.map_or(sample.rtt, |m| m.min(sample.rtt)));
        }
        let min_time = self.min_time.min(self.max_time);
        let next = *self.next_update.get_or_insert(sample.at + min_time);
        if sample.at < next {
            return limit;
        }
        let w = std::mem::take(&mut self.window);
        let length = w
            .rtt_min
            .map_or(min_time, |m| m.saturating_mul(2))
            .clamp(min_time, self.max_time);
        self.next_update = Some(sample.at + length);
        if w.samples < self.min_samples || w.timed == 0 {
            return limit;
        }
        let aggregate = Sample {
            rtt: Duration::from_nanos((w.rtt_sum / w.timed as f64) as u64),
            in_flight: w.max_in_flight,
            dropped: w.dropped,
            at: sample.at,
        };
        self.inner.update(limit, &aggregate)
    }

    /// The first drop as one call; the others join the window then open, which has room for
    /// them (it ends later), as one by one.
    fn update_dropped(&mut self, limit: f64, sample: &Sample, count: u64) -> f64 {
        if count == 0 {
            return limit;
        }
        let limit = self.update(limit, sample);
        if self.next_update.is_some_and(|next| sample.at >= next) {
            // A window of no length (`max_time` zero): one by one, each would close a window of
            // its own, holding no time, which feeds the algorithm nothing.
            return limit;
        }
        let rest = u32::try_from(count - 1).unwrap_or(u32::MAX);
        let w = &mut self.window;
        w.samples = w.samples.saturating_add(rest);
        if rest > 0 {
            w.dropped = true;
            w.max_in_flight = w.max_in_flight.max(sample.in_flight);
        }
        limit
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        self.inner.check()
    }
}
