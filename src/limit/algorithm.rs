//! Adaptive concurrency limit algorithms, after Netflix's `concurrency-limits`: [`Aimd`],
//! [`Gradient2`], [`Vegas`], and a [`Fixed`] limit.
//!
//! An algorithm sees one [`Sample`] per finished call (its round-trip time, how many calls were in
//! flight when it started, and whether it was dropped: failed for want of capacity, or timed out)
//! and returns the new limit. Limits are kept as `f64` and rounded down where a whole number of
//! slots is needed. Every algorithm keeps the limit within its minimum and maximum, whatever the
//! samples (NaN and infinite times included).

use std::time::Duration;

/// One finished call, as an algorithm sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// How long the call took.
    pub rtt: Duration,
    /// How many calls were in flight when it started, itself included.
    pub in_flight: u64,
    /// Whether it was dropped: rejected by the service for want of capacity, or timed out.
    pub dropped: bool,
}

/// A concurrency limit that follows what the service shows of its load.
pub trait Algorithm: Send + 'static {
    /// The limit to start with.
    fn initial(&self) -> f64;

    /// The new limit, given the current one and a finished call.
    fn update(&mut self, limit: f64, sample: &Sample) -> f64;
}

fn clamp(limit: f64, min: f64, max: f64) -> f64 {
    if limit.is_nan() {
        min
    } else {
        limit.clamp(min, max)
    }
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
/// let busy = Sample { rtt: Duration::from_millis(10), in_flight: 15, dropped: false };
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
            return clamp(limit, self.min, self.max);
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
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let estimate = limit * gradient + self.queue;
        let next = limit * (1.0 - self.smoothing) + estimate * self.smoothing;
        clamp(next, self.min, self.max)
    }
}

/// TCP Vegas for concurrency: estimates the queue from the latest round-trip time against the
/// smallest seen (`queue = limit × (1 − rtt_min / rtt)`), grows the limit while the queue is short
/// and shrinks it when it is long or a call is dropped. The smallest time is measured afresh every
/// `probe` × limit samples, so that it can rise with the service.
///
/// With `l = max(1, ⌊log10 limit⌋)`: a queue of at most `l` grows the limit by `6l`, under `3l` by
/// `l`, over `6l` shrinks it by `l`. Defaults, Netflix's: initial 20, maximum 1000, smoothing 1,
/// probe every 30 × limit samples.
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
    /// The smallest round-trip time is measured again every `probe × limit` samples.
    pub probe: f64,
    rtt_min: Option<f64>,
    since_probe: f64,
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
        }
    }
}

impl Algorithm for Vegas {
    fn initial(&self) -> f64 {
        clamp(self.initial, self.min, self.max)
    }

    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        let rtt = sample.rtt.as_nanos() as f64;
        if rtt <= 0.0 {
            return clamp(limit, self.min, self.max);
        }
        self.since_probe += 1.0;
        if self.since_probe >= self.probe * limit.max(1.0) {
            // Measure the smallest time again, from this sample.
            self.since_probe = 0.0;
            self.rtt_min = Some(rtt);
            return clamp(limit, self.min, self.max);
        }
        let rtt_min = *self.rtt_min.get_or_insert(rtt);
        let rtt_min = rtt_min.min(rtt);
        self.rtt_min = Some(rtt_min);
        let log = limit.max(1.0).log10().floor().max(1.0);
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
        let next = clamp(next, self.min, self.max);
        clamp(
            limit * (1.0 - self.smoothing) + next * self.smoothing,
            self.min,
            self.max,
        )
    }
}
