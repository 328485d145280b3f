//! How long to wait before each retry: [`Backoff`] and [`Jitter`].
//!
//! The formulas are those of the AWS Architecture Blog's "Exponential Backoff And Jitter". For retry
//! `n` (1 before the first retry), a backoff's *nominal* delay is
//!
//! | kind | nominal delay before the cap |
//! |---|---|
//! | [`constant(d)`](Backoff::constant) | `d` |
//! | [`linear(base, step)`](Backoff::linear) | `base + (n - 1) × step` |
//! | [`exponential(base)`](Backoff::exponential) | `base × factor^(n - 1)` (factor 2 unless [set](Backoff::factor)) |
//! | [`decorrelated(base)`](Backoff::decorrelated) | `3 × previous delay` (`base` before the first), at least `base` |
//!
//! The cap ([`max`](Backoff::max), 30 s unless set) is applied to the nominal delay *before* the
//! jitter, so that during a long outage clients keep spreading out below the cap instead of all
//! waiting exactly the cap. With `t` the capped delay, the jitter draws the delay:
//!
//! | jitter | delay |
//! |---|---|
//! | [`Jitter::None`] | `t` |
//! | [`Jitter::Full`] | uniform in `[0, t]` |
//! | [`Jitter::Equal`] | uniform in `[t/2, t]` |
//! | [`Jitter::Decorrelated`] | uniform in `[base, t]` (AWS's "decorrelated jitter"; `t` is then `min(cap, 3 × previous)`) |
//!
//! Arithmetic saturates: no attempt number, however large, overflows or panics.

use super::config::ConfigError;
use crate::sync::nanos;
use rand::Rng;
use std::time::Duration;

/// The default cap on a delay.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

/// How a retry's delay is randomised; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// The capped delay itself: every client retries in step. Only for tests and single clients.
    None,
    /// Uniform between zero and the capped delay: the widest spread.
    Full,
    /// Uniform between half the capped delay and all of it: a spread that never retries at once.
    Equal,
    /// Uniform between the base delay and three times the previous delay, capped.
    Decorrelated,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Constant(Duration),
    Linear { base: Duration, step: Duration },
    Exponential { base: Duration, factor: f64 },
    Decorrelated { base: Duration },
}

/// The delays between attempts; see the [module docs](self) for the formulas.
///
/// ```
/// use seawall::retry::backoff::{Backoff, Jitter};
/// use std::time::Duration;
///
/// // 100 ms, 200 ms, 400 ms, ... capped at 5 s, then drawn uniformly in [0, that].
/// let backoff = Backoff::exponential(Duration::from_millis(100))
///     .max(Duration::from_secs(5))
///     .jitter(Jitter::Full);
/// let mut rng = rand::rng();
/// let delay = backoff.delay(3, Duration::ZERO, &mut rng);
/// assert!(delay <= Duration::from_millis(400));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    kind: Kind,
    cap: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// Exponential from 100 ms, doubling, capped at 30 s, with full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100)).jitter(Jitter::Full)
    }
}

impl Backoff {
    fn new(kind: Kind, jitter: Jitter) -> Self {
        Backoff {
            kind,
            cap: DEFAULT_MAX_DELAY,
            jitter,
        }
    }

    /// The same delay before every retry, without jitter unless [set](Self::jitter).
    pub fn constant(delay: Duration) -> Self {
        Self::new(Kind::Constant(delay), Jitter::None)
    }

    /// `base`, then `step` more before each further retry, without jitter unless
    /// [set](Self::jitter).
    pub fn linear(base: Duration, step: Duration) -> Self {
        Self::new(Kind::Linear { base, step }, Jitter::None)
    }

    /// `base`, doubling before each further retry (see [`factor`](Self::factor)), with full jitter
    /// unless [set](Self::jitter).
    pub fn exponential(base: Duration) -> Self {
        Self::new(Kind::Exponential { base, factor: 2.0 }, Jitter::Full)
    }

    /// AWS's decorrelated jitter: each delay uniform between `base` and three times the previous
    /// one, capped.
    pub fn decorrelated(base: Duration) -> Self {
        Self::new(Kind::Decorrelated { base }, Jitter::Decorrelated)
    }

    /// The growth factor of an exponential backoff (at least 1; default 2). Ignored by other kinds.
    pub fn factor(mut self, factor: f64) -> Self {
        if let Kind::Exponential { factor: f, .. } = &mut self.kind {
            *f = factor;
        }
        self
    }

    /// The longest delay, applied before the jitter (default 30 s).
    pub fn max(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The cap on delays.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The smallest delay: what the jitter draws from, for the decorrelated kinds.
    fn base(&self) -> Duration {
        match self.kind {
            Kind::Constant(base)
            | Kind::Linear { base, .. }
            | Kind::Exponential { base, .. }
            | Kind::Decorrelated { base } => base,
        }
    }

    /// Checks the values a builder was given.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Kind::Exponential { factor, .. } = self.kind {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(ConfigError::BackoffFactor(factor));
            }
        }
        if self.base() > self.cap {
            return Err(ConfigError::BackoffCap {
                base: self.base(),
                cap: self.cap,
            });
        }
        Ok(())
    }

    /// The delay before retry `retry` (1 before the first), capped, before the jitter. `previous`
    /// is the delay drawn before the previous retry (zero before the first); only the decorrelated
    /// kinds use it.
    pub fn nominal(&self, retry: u32, previous: Duration) -> Duration {
        let n = retry.max(1) - 1;
        let uncapped = match self.kind {
            Kind::Constant(delay) => delay,
            Kind::Linear { base, step } => base.saturating_add(step.saturating_mul(n)),
            Kind::Exponential { base, factor } => {
                let nanos = base.as_nanos() as f64 * factor.powi(n.min(i32::MAX as u32) as i32);
                // NaN (0 × inf) is below the cap, and only when the base is zero.
                if nanos.is_nan() {
                    Duration::ZERO
                } else if nanos >= self.cap.as_nanos() as f64 {
                    self.cap
                } else {
                    Duration::from_nanos(nanos as u64)
                }
            }
            Kind::Decorrelated { base } => self.decorrelated_bound(base, previous),
        };
        uncapped.min(self.cap)
    }

    fn decorrelated_bound(&self, base: Duration, previous: Duration) -> Duration {
        let previous = if previous.is_zero() { base } else { previous };
        previous.saturating_mul(3).max(base).min(self.cap)
    }

    /// The delay before retry `retry` (1 before the first), drawn from `rng`; `previous` is the
    /// delay drawn before the previous retry (zero before the first).
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, previous: Duration, rng: &mut R) -> Duration {
        let t = match self.jitter {
            Jitter::Decorrelated => self.decorrelated_bound(self.base(), previous),
            _ => self.nominal(retry, previous),
        };
        match self.jitter {
            Jitter::None => t,
            Jitter::Full => uniform(rng, Duration::ZERO, t),
            Jitter::Equal => uniform(rng, t / 2, t),
            Jitter::Decorrelated => uniform(rng, self.base().min(t), t),
        }
    }
}

/// Uniform in `[low, high]`, to the nanosecond; `low` must not exceed `high`.
fn uniform<R: Rng + ?Sized>(rng: &mut R, low: Duration, high: Duration) -> Duration {
    let low = nanos(low);
    let high = nanos(high);
    Duration::from_nanos(rng.random_range(low..=high))
}
