//! Building a circuit breaker: [`Builder`] and [`ConfigError`].

use super::state::{Breaker, MAX_PROBES};
use super::CircuitBreakerLayer;
use crate::core::gate::{Anchor, Shared};
use crate::core::window::{MAX_BUCKETS, MAX_COUNT_WINDOW};
use crate::core::{ErrorIsFailure, EventKind, Observer};
use std::borrow::Cow;
use std::time::Duration;

/// A mistake in a circuit breaker's configuration, found by [`Builder::build`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The failure-rate threshold is not a percentage in `(0, 100]`.
    #[error("failure rate threshold must be a percentage in (0, 100], got {0}")]
    FailureRateThreshold(f64),
    /// The slow-call-rate threshold is not a percentage in `(0, 100]`.
    #[error("slow call rate threshold must be a percentage in (0, 100], got {0}")]
    SlowCallRateThreshold(f64),
    /// The slow-call duration is zero: every call would be slow.
    #[error("slow call duration must be greater than zero")]
    SlowCallDuration,
    /// The consecutive-failures rule was given zero.
    #[error("consecutive failures must be at least 1")]
    ConsecutiveFailures,
    /// The count window is empty or larger than the largest supported.
    #[error("count window size must be in 1..={max}, got {size}")]
    CountWindowSize {
        /// The size given.
        size: u32,
        /// The largest supported.
        max: u32,
    },
    /// The time window is shorter than its number of buckets in nanoseconds, or zero.
    #[error("time window must be at least one nanosecond per bucket, got {0:?}")]
    TimeWindowDuration(Duration),
    /// The time window has no buckets or more than the largest supported number.
    #[error("time window buckets must be in 1..={max}, got {buckets}")]
    TimeWindowBuckets {
        /// The number given.
        buckets: u32,
        /// The largest supported.
        max: u32,
    },
    /// `minimum_calls` is zero.
    #[error("minimum calls must be at least 1")]
    MinimumCalls,
    /// `minimum_calls` is larger than the count window, so no rate rule could ever trip.
    #[error("minimum calls ({minimum}) exceeds the count window size ({size}); no rate rule could ever trip")]
    MinimumCallsExceedsWindow {
        /// The minimum given.
        minimum: u64,
        /// The window size.
        size: u32,
    },
    /// Half-open probes are zero or more than the largest supported number.
    #[error("half-open probes must be in 1..={max}, got {probes}")]
    HalfOpenProbes {
        /// The number given.
        probes: u32,
        /// The largest supported.
        max: u32,
    },
    /// The open duration is zero.
    #[error("open duration must be greater than zero")]
    OpenDuration,
    /// The longest open duration is shorter than the first.
    #[error("maximum open duration ({max:?}) is shorter than the open duration ({base:?})")]
    MaxOpenDuration {
        /// The open duration of a first trip.
        base: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// The open-duration multiplier is below 1 or not finite.
    #[error("open duration multiplier must be a finite number of at least 1, got {0}")]
    OpenMultiplier(f64),
    /// The jitter is not a fraction in `[0, 1]`.
    #[error("open duration jitter must be a fraction in [0, 1], got {0}")]
    OpenJitter(f64),
    /// The maximum wait in half-open is zero.
    #[error("maximum half-open wait must be greater than zero")]
    MaxHalfOpenWait,
    /// The cap on a server's `Retry-After` hint is zero.
    #[error("maximum Retry-After must be greater than zero")]
    MaxRetryAfter,
    /// A keyed breaker was given no keys, or more than the largest supported number.
    #[error("a keyed breaker's max_keys must be in 1..={max}, got {max_keys}")]
    MaxKeys {
        /// The number given.
        max_keys: usize,
        /// The largest supported.
        max: usize,
    },
    /// A keyed breaker's idle timeout is zero.
    #[error("a keyed breaker's idle timeout must be greater than zero")]
    IdleTimeout,
    /// No rule could ever open the breaker.
    #[error("no trip rule is enabled: set a failure rate, slow call rate, consecutive failures or honour Retry-After")]
    NoTripRule,
}

/// The shape of the sliding window the rate rules read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowKind {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `duration`, in `buckets` buckets.
    Time {
        /// How far back the window reaches.
        duration: Duration,
        /// How many buckets it is split into.
        buckets: u32,
    },
}

/// The validated settings of one breaker.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Thresholds in parts per million; `None` when the rule is off.
    pub(crate) failure_rate_ppm: Option<u64>,
    pub(crate) slow_rate_ppm: Option<u64>,
    pub(crate) slow_call_duration: Duration,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) minimum_calls: u64,
    pub(crate) window: WindowKind,
    pub(crate) half_open_probes: u32,
    pub(crate) max_half_open_wait: Duration,
    pub(crate) open_duration: Duration,
    pub(crate) max_open_duration: Duration,
    pub(crate) open_multiplier: f64,
    pub(crate) open_jitter: f64,
    pub(crate) max_retry_after: Option<Duration>,
    pub(crate) seed: Option<u64>,
}

/// Builds a [`CircuitBreakerLayer`]. Start from [`CircuitBreakerLayer::builder`].
///
/// Defaults, beside resilience4j's and Polly's:
///
/// | setting | seawall | resilience4j | Polly v8 |
/// |---|---|---|---|
/// | failure-rate threshold | 50 % | 50 % | 10 % (failure ratio 0.1) |
/// | window | last 100 calls | last 100 calls | last 30 s |
/// | minimum calls | 20 | 100 | 100 |
/// | slow-call rule | off | 100 % over 60 s (off in effect) | none |
/// | consecutive failures | off | none | none (v7 had it) |
/// | open duration | 5 s, doubling per repeated trip up to 2 min, up to 10 % shorter at random | 60 s fixed | 5 s fixed |
/// | half-open probes | 10 | 10 | 1 |
/// | longest half-open wait | 30 s | unbounded | n/a (one probe) |
/// | `Retry-After` opens the breaker | off | n/a | via a break-duration generator |
///
/// Each setter replaces the one default it names; [`build`](Builder::build) checks them all and
/// returns a [`ConfigError`] for the first mistake.
///
/// ```
/// use seawall::circuit_breaker::CircuitBreakerLayer;
/// use std::time::Duration;
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("payments")
///     .failure_rate_threshold(25.0)
///     .slow_call_rate_threshold(50.0, Duration::from_millis(500))
///     .consecutive_failures(5)
///     .time_window(Duration::from_secs(30))
///     .minimum_calls(10)
///     .open_duration(Duration::from_secs(2))
///     .half_open_probes(3)
///     .build()
///     .expect("valid configuration");
/// # drop(layer);
/// ```
#[derive(Clone, Debug)]
pub struct Builder<C = ErrorIsFailure, O = ()> {
    settings: Settings,
    classify: C,
    observer: O,
}

#[derive(Clone, Debug)]
struct Settings {
    name: Cow<'static, str>,
    failure_rate: Option<f64>,
    slow_rate: Option<(f64, Duration)>,
    consecutive_failures: Option<u32>,
    minimum_calls: u64,
    window: WindowKind,
    half_open_probes: u32,
    max_half_open_wait: Duration,
    open_duration: Duration,
    max_open_duration: Duration,
    open_multiplier: f64,
    open_jitter: f64,
    max_retry_after: Option<Duration>,
    seed: Option<u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            settings: Settings {
                name: Cow::Borrowed("circuit-breaker"),
                failure_rate: Some(50.0),
                slow_rate: None,
                consecutive_failures: None,
                minimum_calls: 20,
                window: WindowKind::Count(100),
                half_open_probes: 10,
                max_half_open_wait: Duration::from_secs(30),
                open_duration: Duration::from_secs(5),
                max_open_duration: Duration::from_secs(120),
                open_multiplier: 2.0,
                open_jitter: 0.1,
                max_retry_after: None,
                seed: None,
            },
            classify: ErrorIsFailure,
            observer: (),
        }
    }
}

impl<C, O> Builder<C, O> {
    /// The name reported to observers (default `"circuit-breaker"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// Opens the breaker when at least this percentage of the calls in the window failed
    /// (default 50).
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.settings.failure_rate = Some(percent);
        self
    }

    /// Turns the failure-rate rule off (another rule must then be on).
    pub fn no_failure_rate(mut self) -> Self {
        self.settings.failure_rate = None;
        self
    }

    /// Opens the breaker when at least `percent` of the calls in the window took `duration` or longer,
    /// whether they succeeded or not. Off by default.
    pub fn slow_call_rate_threshold(mut self, percent: f64, duration: Duration) -> Self {
        self.settings.slow_rate = Some((percent, duration));
        self
    }

    /// Opens the breaker after `n` failures in a row, whatever the window says. Off by default.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.settings.consecutive_failures = Some(n);
        self
    }

    /// Rate rules stay silent until the window holds this many calls (default 20); until then the
    /// rates read as unknown.
    pub fn minimum_calls(mut self, n: u64) -> Self {
        self.settings.minimum_calls = n;
        self
    }

    /// Rates over the last `n` calls (the default, with `n` = 100).
    pub fn count_window(mut self, n: u32) -> Self {
        self.settings.window = WindowKind::Count(n);
        self
    }

    /// Rates over the calls of the last `duration`: in one-second buckets from ten seconds up
    /// (at most 256 buckets, longer ones beyond 256 seconds), in ten buckets of equal length below,
    /// so that a short window slides a tenth of its length at a time rather than emptying at once.
    pub fn time_window(mut self, duration: Duration) -> Self {
        let buckets = match duration.as_secs() {
            // A window of under ten nanoseconds, which `build` refuses unless it has one bucket
            // per nanosecond at least, gets one per nanosecond.
            0..10 => duration.as_nanos().clamp(1, 10) as u32,
            secs => secs.min(MAX_BUCKETS as u64) as u32,
        };
        self.settings.window = WindowKind::Time { duration, buckets };
        self
    }

    /// Rates over the calls of the last `duration`, in `buckets` buckets of equal length.
    pub fn time_window_buckets(mut self, duration: Duration, buckets: u32) -> Self {
        self.settings.window = WindowKind::Time { duration, buckets };
        self
    }

    /// How long the breaker stays open after a first trip (default 5 s).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.settings.open_duration = duration;
        self
    }

    /// Each trip that follows a failed half-open trial multiplies the open duration by `multiplier`,
    /// up to `max` (default: doubling, up to 2 min). `multiplier` 1 keeps it fixed.
    pub fn open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.settings.open_multiplier = multiplier;
        self.settings.max_open_duration = max;
        self
    }

    /// Shortens each open duration by a random fraction of up to `fraction` (default 0.1), so that
    /// breakers that tripped together do not all probe at the same instant. 0 turns jitter off.
    pub fn open_jitter(mut self, fraction: f64) -> Self {
        self.settings.open_jitter = fraction;
        self
    }

    /// Seeds the jitter's random generator, for reproducible tests. By default it is seeded from the
    /// operating system.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// How many probe calls half-open admits (default 10). The breaker closes when their failure
    /// rate (and slow-call rate, if that rule is on) is under the threshold, and opens again otherwise.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.settings.half_open_probes = n;
        self
    }

    /// When probes have not all finished this long after the breaker went half-open, it opens again
    /// instead of waiting for them (default 30 s), so it can never stay stuck half-open.
    pub fn max_half_open_wait(mut self, duration: Duration) -> Self {
        self.settings.max_half_open_wait = duration;
        self
    }

    /// A failed call that carries a server hint (an HTTP 429 or 503 with `Retry-After`, through a
    /// classifier that reads it) opens the breaker for the hinted time, capped at `max`.
    /// Off by default.
    pub fn honour_retry_after(mut self, max: Duration) -> Self {
        self.settings.max_retry_after = Some(max);
        self
    }

    /// Sets the classifier that decides which results are failures (default:
    /// [`ErrorIsFailure`]).
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, O> {
        Builder {
            settings: self.settings,
            classify,
            observer: self.observer,
        }
    }

    /// Sets the observer that receives the breaker's events (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> Builder<C, O2> {
        Builder {
            settings: self.settings,
            classify: self.classify,
            observer,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, O>, ConfigError>
    where
        O: Observer,
    {
        self.build_with(false)
    }

    /// Like [`build`](Self::build), for a breaker that lives as long as the process: its state is
    /// leaked on purpose (a few hundred bytes plus one byte per count-window slot or eight per
    /// time-window bucket, never freed), and in exchange no admitted call touches a reference count.
    /// That saves two atomic operations per call, and under contention the cache line they share
    /// between threads.
    ///
    /// Use it for breakers built once at start-up. Do not call it in a loop or per request: each
    /// call leaks a new breaker.
    ///
    /// ```
    /// use seawall::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let breaker = CircuitBreakerLayer::builder().name("db").build_static().unwrap();
    /// # drop(breaker);
    /// ```
    pub fn build_static(self) -> Result<CircuitBreakerLayer<C, O>, ConfigError>
    where
        O: Observer,
    {
        self.build_with(true)
    }

    /// The validated settings, the name, the classifier and the observer: what a keyed breaker
    /// makes each key's breaker from.
    pub(crate) fn into_parts(self) -> Result<(Config, Cow<'static, str>, C, O), ConfigError> {
        let config = self.settings.validate()?;
        Ok((config, self.settings.name, self.classify, self.observer))
    }

    fn build_with(self, leak: bool) -> Result<CircuitBreakerLayer<C, O>, ConfigError>
    where
        O: Observer,
    {
        let config = self.settings.validate()?;
        let shared = Shared::new(self.settings.name, Breaker::new(config), self.observer);
        shared.emitter().emit(EventKind::Started {
            state: Some(shared.gate.state()),
            limit: None,
        });
        let anchor = if leak {
            Anchor::leaked(shared)
        } else {
            Anchor::counted(shared)
        };
        Ok(CircuitBreakerLayer::from_parts(anchor, self.classify))
    }
}

fn percent_to_ppm(percent: f64) -> Option<u64> {
    (percent > 0.0 && percent <= 100.0).then(|| (percent * 10_000.0).round() as u64)
}

impl Settings {
    fn validate(&self) -> Result<Config, ConfigError> {
        let failure_rate_ppm = match self.failure_rate {
            Some(p) => Some(percent_to_ppm(p).ok_or(ConfigError::FailureRateThreshold(p))?),
            None => None,
        };
        let (slow_rate_ppm, slow_call_duration) = match self.slow_rate {
            Some((p, d)) => {
                let ppm = percent_to_ppm(p).ok_or(ConfigError::SlowCallRateThreshold(p))?;
                if d.is_zero() {
                    return Err(ConfigError::SlowCallDuration);
                }
                (Some(ppm), d)
            }
            None => (None, Duration::MAX),
        };
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::ConsecutiveFailures);
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::MinimumCalls);
        }
        match self.window {
            WindowKind::Count(size) => {
                if size == 0 || size > MAX_COUNT_WINDOW {
                    return Err(ConfigError::CountWindowSize {
                        size,
                        max: MAX_COUNT_WINDOW,
                    });
                }
                if self.minimum_calls > size as u64 {
                    return Err(ConfigError::MinimumCallsExceedsWindow {
                        minimum: self.minimum_calls,
                        size,
                    });
                }
            }
            WindowKind::Time { duration, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(ConfigError::TimeWindowBuckets {
                        buckets,
                        max: MAX_BUCKETS,
                    });
                }
                if duration.as_nanos() < buckets as u128 {
                    return Err(ConfigError::TimeWindowDuration(duration));
                }
            }
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_PROBES {
            return Err(ConfigError::HalfOpenProbes {
                probes: self.half_open_probes,
                max: MAX_PROBES,
            });
        }
        if self.max_half_open_wait.is_zero() {
            return Err(ConfigError::MaxHalfOpenWait);
        }
        if self.open_duration.is_zero() {
            return Err(ConfigError::OpenDuration);
        }
        if self.max_open_duration < self.open_duration {
            return Err(ConfigError::MaxOpenDuration {
                base: self.open_duration,
                max: self.max_open_duration,
            });
        }
        if !(self.open_multiplier.is_finite() && self.open_multiplier >= 1.0) {
            return Err(ConfigError::OpenMultiplier(self.open_multiplier));
        }
        if !(0.0..=1.0).contains(&self.open_jitter) {
            return Err(ConfigError::OpenJitter(self.open_jitter));
        }
        if self.max_retry_after.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::MaxRetryAfter);
        }
        if failure_rate_ppm.is_none()
            && slow_rate_ppm.is_none()
            && self.consecutive_failures.is_none()
            && self.max_retry_after.is_none()
        {
            return Err(ConfigError::NoTripRule);
        }
        Ok(Config {
            failure_rate_ppm,
            slow_rate_ppm,
            slow_call_duration,
            consecutive_failures: self.consecutive_failures,
            minimum_calls: self.minimum_calls,
            window: self.window,
            half_open_probes: self.half_open_probes,
            max_half_open_wait: self.max_half_open_wait,
            open_duration: self.open_duration,
            max_open_duration: self.max_open_duration,
            open_multiplier: self.open_multiplier,
            open_jitter: self.open_jitter,
            max_retry_after: self.max_retry_after,
            seed: self.seed,
        })
    }
}
