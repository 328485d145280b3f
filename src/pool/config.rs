//! Building a pool: [`Builder`] and [`ConfigError`].

use super::discover::Driver;
use super::state::Shared;
use super::Pool;
use crate::circuit_breaker::Schedule;
use crate::core::{ErrorIsFailure, Observer, Source};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower::discover::Discover;

/// A mistake in a pool's configuration, found by [`Builder::build`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The initial round-trip time is zero.
    #[error("initial round-trip time must be greater than zero")]
    InitialRtt,
    /// The EWMA's decay is zero.
    #[error("EWMA decay must be greater than zero")]
    Decay,
    /// The failure penalty is zero.
    #[error("failure penalty must be greater than zero")]
    FailurePenalty,
    /// A consecutive-failures rule was given zero.
    #[error("consecutive failures must be at least 1")]
    ConsecutiveFailures,
    /// The failure-percentage threshold is not a percentage in `(0, 100]`.
    #[error("failure percentage threshold must be in (0, 100], got {0}")]
    FailurePercentage(f64),
    /// A rule's minimum number of calls is zero.
    #[error("minimum calls must be at least 1")]
    MinimumCalls,
    /// A rule's minimum number of endpoints is zero.
    #[error("minimum endpoints must be at least 1")]
    MinimumEndpoints,
    /// The success-rate rule's factor of standard deviations is negative or not finite.
    #[error("success rate standard deviation factor must be finite and at least 0, got {0}")]
    StdevFactor(f64),
    /// The interval is shorter than a millisecond.
    #[error("interval must be at least one millisecond, got {0:?}")]
    Interval(Duration),
    /// The ejection time is zero.
    #[error("ejection time must be greater than zero")]
    EjectionTime,
    /// The longest ejection time is shorter than the first.
    #[error("maximum ejection time ({max:?}) is shorter than the ejection time ({base:?})")]
    MaxEjectionTime {
        /// The ejection time of a first ejection.
        base: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// The ejection-time multiplier is below 1 or not finite.
    #[error("ejection time multiplier must be a finite number of at least 1, got {0}")]
    EjectionMultiplier(f64),
    /// The jitter is not a fraction in `[0, 1]`.
    #[error("ejection time jitter must be a fraction in [0, 1], got {0}")]
    EjectionJitter(f64),
    /// The cap on a server's `Retry-After` hint is zero.
    #[error("maximum Retry-After must be greater than zero")]
    MaxRetryAfter,
    /// The probe-claim timeout is zero.
    #[error("probe claim timeout must be greater than zero")]
    ProbeClaimTimeout,
    /// The probe-claim timeout is longer than the ejection time: an idle clone's claim would
    /// keep an endpoint out longer than its ejection did.
    #[error(
        "probe claim timeout ({timeout:?}) must not exceed the ejection time ({ejection_time:?})"
    )]
    ProbeClaimTimeoutAboveEjectionTime {
        /// The probe-claim timeout given.
        timeout: Duration,
        /// The ejection time of a first ejection.
        ejection_time: Duration,
    },
    /// `max_ejection_percent` is not a percentage in `(0, 100]`.
    #[error("max ejection percent must be in (0, 100], got {0}")]
    MaxEjectionPercent(f64),
}

/// What a pool does when no endpoint is healthy (every one ejected, or held in rotation only by
/// the cap on ejections although a rule would eject it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WhenUnhealthy {
    /// Spread calls over every endpoint, ejected or not, as Envoy's panic mode does: some may
    /// succeed, and failing calls are no worse than refused ones. The default.
    #[default]
    Panic,
    /// Refuse calls at once with [`NoHealthyEndpoint`](super::error::NoHealthyEndpoint) (503,
    /// `UNAVAILABLE`), except the probes that may bring an endpoint back.
    FailFast,
}

/// The failure-percentage rule's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FailurePercentage {
    pub(crate) threshold_ppm: u64,
    pub(crate) minimum_calls: u32,
    pub(crate) minimum_endpoints: u32,
}

/// The success-rate rule's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SuccessRate {
    pub(crate) stdev_factor: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) minimum_endpoints: u32,
}

/// The validated settings of one pool.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) initial_rtt: Duration,
    /// The EWMA's time constant, in nanoseconds.
    pub(crate) tau: f64,
    pub(crate) penalty: Option<Duration>,
    pub(crate) consecutive: Option<u32>,
    pub(crate) consecutive_local: Option<u32>,
    pub(crate) failure_percentage: Option<FailurePercentage>,
    pub(crate) success_rate: Option<SuccessRate>,
    pub(crate) interval: Duration,
    pub(crate) schedule: Schedule,
    pub(crate) max_retry_after: Option<Duration>,
    pub(crate) max_ejection_ppm: u64,
    pub(crate) when_unhealthy: WhenUnhealthy,
    /// How long a probe claimed in `poll_ready` waits for its call before another pool clone may
    /// take it over, in nanoseconds (never zero).
    pub(crate) claim_timeout: u64,
    pub(crate) seed: Option<u64>,
}

#[derive(Clone, Debug)]
struct Settings {
    name: Cow<'static, str>,
    initial_rtt: Duration,
    decay: Duration,
    penalty: Option<Duration>,
    consecutive: Option<u32>,
    consecutive_local: Option<u32>,
    failure_percentage: Option<(f64, u32, u32)>,
    success_rate: Option<(f64, u32, u32)>,
    interval: Duration,
    ejection_time: Duration,
    max_ejection_time: Duration,
    multiplier: f64,
    jitter: f64,
    max_retry_after: Option<Duration>,
    max_ejection_percent: f64,
    when_unhealthy: WhenUnhealthy,
    /// `None`: the default, 1 s or the ejection time if shorter.
    claim_timeout: Option<Duration>,
    seed: Option<u64>,
}

/// Builds a [`Pool`]. Start from [`Pool::builder`].
///
/// Defaults, and where they come from:
///
/// | setting | default | after |
/// |---|---|---|
/// | load | peak-EWMA round-trip time × (calls in flight + 1) | linkerd, Finagle |
/// | initial round-trip time, decay | 30 ms, 10 s | linkerd |
/// | failure penalty | a failure counts as max(5 s, its own time) | linkerd |
/// | consecutive failures (upstream; local-origin apart) | 5 (5) | Envoy `consecutive_5xx`, `consecutive_local_origin_failure` |
/// | failure percentage | 85 % over at least 50 calls in the interval, with at least 5 endpoints | Envoy `failure_percentage_*` |
/// | success-rate outliers | off; mean − 1.9 σ over at least 100 calls, 5 endpoints | Envoy `success_rate_*`, gRPC A50 |
/// | interval | 10 s | Envoy, gRPC A50 |
/// | ejection time | 30 s, doubling per ejection in a row up to 300 s, up to 10 % shorter at random | Envoy (`base_ejection_time`, `max_ejection_time`), the breaker's schedule |
/// | `Retry-After` on a 429 or 503 | ejects for that long, at most 300 s | |
/// | max ejection percent | 50 % (at least one endpoint) | gRPC A50 (Envoy: 10 %) |
/// | when no endpoint is healthy | panic: spread over all | Envoy |
/// | probe-claim timeout | 1 s | |
///
/// ```
/// use seawall::pool::Pool;
/// use std::time::Duration;
/// use tower::service_fn;
///
/// let endpoints = (0..3).map(|n| service_fn(move |x: u32| async move { Ok::<_, std::io::Error>(x + n) }));
/// let pool = Pool::builder()
///     .name("inventory")
///     .consecutive_failures(3)
///     .ejection_time(Duration::from_secs(10))
///     .max_ejection_percent(34.0)
///     .fail_fast()
///     .build(endpoints)
///     .expect("valid configuration");
/// # drop(pool);
/// ```
#[derive(Clone)]
pub struct Builder<C = ErrorIsFailure, O = ()> {
    settings: Settings,
    classify: C,
    observer: O,
}

impl<C, O> fmt::Debug for Builder<C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The default settings, validated (for unit tests).
#[cfg(test)]
pub(crate) fn default_config() -> Config {
    Builder::default()
        .settings
        .validate()
        .expect("the default settings are valid")
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            settings: Settings {
                name: Cow::Borrowed("pool"),
                initial_rtt: Duration::from_millis(30),
                decay: Duration::from_secs(10),
                penalty: Some(Duration::from_secs(5)),
                consecutive: Some(5),
                consecutive_local: Some(5),
                failure_percentage: Some((85.0, 50, 5)),
                success_rate: None,
                interval: Duration::from_secs(10),
                ejection_time: Duration::from_secs(30),
                max_ejection_time: Duration::from_secs(300),
                multiplier: 2.0,
                jitter: 0.1,
                max_retry_after: Some(Duration::from_secs(300)),
                max_ejection_percent: 50.0,
                when_unhealthy: WhenUnhealthy::Panic,
                claim_timeout: None,
                seed: None,
            },
            classify: ErrorIsFailure,
            observer: (),
        }
    }
}

impl<C, O> Builder<C, O> {
    /// The name reported to observers (default `"pool"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// The round-trip time assumed for an endpoint before its first answer (default 30 ms).
    pub fn initial_rtt(mut self, rtt: Duration) -> Self {
        self.settings.initial_rtt = rtt;
        self
    }

    /// The time constant of the peak-EWMA latency (default 10 s): how long an estimate takes to
    /// fall by a factor e once answers come faster, or while no call is made.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.settings.decay = decay;
        self
    }

    /// A failed call counts in its endpoint's latency as `max(penalty, its own time)` (default
    /// 5 s), so that an endpoint that fails fast does not draw load for answering quickly. An
    /// endpoint kept without calls by a penalty for the ejection time gets one call again.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.settings.penalty = Some(penalty);
        self
    }

    /// Failed calls count in the latency with their own time only.
    pub fn no_failure_penalty(mut self) -> Self {
        self.settings.penalty = None;
        self
    }

    /// Ejects an endpoint after `n` upstream failures in a row (answers the classifier calls
    /// failures, such as 5xx; default 5).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.settings.consecutive = Some(n);
        self
    }

    /// Turns the consecutive upstream failures rule off.
    pub fn no_consecutive_failures(mut self) -> Self {
        self.settings.consecutive = None;
        self
    }

    /// Ejects an endpoint after `n` local-origin failures in a row (the service's own errors:
    /// connect, reset, timeout; default 5). Counted apart from upstream failures.
    pub fn consecutive_local_failures(mut self, n: u32) -> Self {
        self.settings.consecutive_local = Some(n);
        self
    }

    /// Turns the consecutive local-origin failures rule off.
    pub fn no_consecutive_local_failures(mut self) -> Self {
        self.settings.consecutive_local = None;
        self
    }

    /// Ejects an endpoint when at least `percent` of its calls in the last interval failed, once
    /// it has made `minimum_calls` there, in a pool of at least `minimum_endpoints` (default 85 %,
    /// 50 calls, 5 endpoints).
    pub fn failure_percentage(
        mut self,
        percent: f64,
        minimum_calls: u32,
        minimum_endpoints: u32,
    ) -> Self {
        self.settings.failure_percentage = Some((percent, minimum_calls, minimum_endpoints));
        self
    }

    /// Turns the failure-percentage rule off.
    pub fn no_failure_percentage(mut self) -> Self {
        self.settings.failure_percentage = None;
        self
    }

    /// Ejects, once an interval, the endpoints whose success rate over the interval is below the
    /// mean of the others' by more than `stdev_factor` standard deviations, counting only
    /// endpoints with `minimum_calls` in the interval, and only when there are
    /// `minimum_endpoints` of those (Envoy's and gRPC's success-rate ejection: 1.9, 100, 5). Off
    /// by default.
    pub fn success_rate(
        mut self,
        stdev_factor: f64,
        minimum_calls: u32,
        minimum_endpoints: u32,
    ) -> Self {
        self.settings.success_rate = Some((stdev_factor, minimum_calls, minimum_endpoints));
        self
    }

    /// The interval of the failure-percentage and success-rate rules (default 10 s); an ejection
    /// in a row is also forgiven per interval an endpoint stays in rotation.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.settings.interval = interval;
        self
    }

    /// How long a first ejection lasts (default 30 s).
    pub fn ejection_time(mut self, duration: Duration) -> Self {
        self.settings.ejection_time = duration;
        self
    }

    /// Each ejection in a row multiplies the ejection time by `multiplier`, up to `max` (default:
    /// doubling, up to 300 s).
    pub fn ejection_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.settings.multiplier = multiplier;
        self.settings.max_ejection_time = max;
        self
    }

    /// Shortens each ejection by a random fraction of up to `fraction` (default 0.1), so that
    /// endpoints ejected together are not probed at the same instant. 0 turns jitter off.
    pub fn ejection_jitter(mut self, fraction: f64) -> Self {
        self.settings.jitter = fraction;
        self
    }

    /// A failed call with a server's hint (a 429 or 503 with `Retry-After`, through a classifier
    /// that reads it, such as [`HttpClassifier`](crate::http::HttpClassifier)) ejects its
    /// endpoint for the hinted time, at most `max` (default: on, at most 300 s).
    pub fn honour_retry_after(mut self, max: Duration) -> Self {
        self.settings.max_retry_after = Some(max);
        self
    }

    /// Server hints are not read.
    pub fn ignore_retry_after(mut self) -> Self {
        self.settings.max_retry_after = None;
        self
    }

    /// At most this percentage of the endpoints may be ejected at once (default 50), and at least
    /// one. An endpoint a rule would eject beyond it is held in rotation (its failures still
    /// weigh on its load).
    pub fn max_ejection_percent(mut self, percent: f64) -> Self {
        self.settings.max_ejection_percent = percent;
        self
    }

    /// When no endpoint is healthy, refuse calls at once (see [`WhenUnhealthy::FailFast`]).
    pub fn fail_fast(mut self) -> Self {
        self.settings.when_unhealthy = WhenUnhealthy::FailFast;
        self
    }

    /// When no endpoint is healthy, spread calls over every endpoint (the default; see
    /// [`WhenUnhealthy::Panic`]).
    pub fn panic_mode(mut self) -> Self {
        self.settings.when_unhealthy = WhenUnhealthy::Panic;
        self
    }

    /// How long the probe of an endpoint whose ejection is over, claimed by a pool clone's
    /// `poll_ready`, waits for that clone's `call` before another clone may take it over
    /// (default 1 s, or the ejection time if shorter). A clone made ready and then left idle (as
    /// a server keeps one per connection) would otherwise hold the endpoint's one probe, and
    /// with it the endpoint out of rotation, for as long as it idles. Shorter brings an endpoint back sooner past idle
    /// clones; it should stay well above the time between a `poll_ready` and its `call` (a
    /// clone that loses its claim fails its call with
    /// [`EndpointUnavailable`](super::error::EndpointUnavailable)). Zero is
    /// [`ConfigError::ProbeClaimTimeout`]; longer than the ejection time
    /// ([`ejection_time`](Self::ejection_time)) is
    /// [`ConfigError::ProbeClaimTimeoutAboveEjectionTime`]: a claim left by an idle clone would
    /// then keep the endpoint out longer than its ejection, and a fail-fast pool's refusals
    /// would wait on it. The check is against the base ejection time only: an ejection that
    /// jitter made shorter, or one a `Retry-After` hint set, may still be shorter than the
    /// timeout, and an idle clone's claim may then keep that endpoint out up to the timeout.
    pub fn probe_claim_timeout(mut self, timeout: Duration) -> Self {
        self.settings.claim_timeout = Some(timeout);
        self
    }

    /// Seeds the pool's random choices (the endpoints drawn, the ejection jitter), for
    /// reproducible tests. By default they are seeded from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// Sets the classifier that decides which results are failures (default:
    /// [`ErrorIsFailure`]). An `Err` the classifier calls a failure is a local-origin failure;
    /// an answer it calls one is an upstream failure.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, O> {
        Builder {
            settings: self.settings,
            classify,
            observer: self.observer,
        }
    }

    /// Sets the observer that receives the pool's events (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> Builder<C, O2> {
        Builder {
            settings: self.settings,
            classify: self.classify,
            observer,
        }
    }

    /// Checks the settings and builds a pool over a fixed set of endpoints, keyed by their
    /// place in `endpoints` (0, 1, ...).
    pub fn build<S, I>(self, endpoints: I) -> Result<Pool<usize, S, C, O>, ConfigError>
    where
        I: IntoIterator<Item = S>,
        O: Observer,
    {
        let config = self.settings.validate()?;
        let shared = Arc::new(Shared::new(
            config,
            Source::new(self.settings.name, self.observer),
        ));
        for (key, service) in endpoints.into_iter().enumerate() {
            shared.insert(key, service);
        }
        Ok(Pool::from_shared(shared, self.classify))
    }

    /// Checks the settings and builds a pool whose endpoints come from `discover`, and the
    /// [`Driver`] that applies its changes: spawn it (`tokio::spawn(driver)`). Until it runs,
    /// the pool has no endpoint and its readiness waits.
    #[allow(clippy::type_complexity)]
    pub fn build_discover<D>(
        self,
        discover: D,
    ) -> Result<(Pool<D::Key, D::Service, C, O>, Driver<D, O>), ConfigError>
    where
        D: Discover,
        D::Key: fmt::Debug + PartialEq + Send + Sync + 'static,
        O: Observer,
    {
        let config = self.settings.validate()?;
        let shared = Arc::new(Shared::new(
            config,
            Source::new(self.settings.name, self.observer),
        ));
        let driver = Driver::new(discover, Arc::downgrade(&shared));
        Ok((Pool::from_shared(shared, self.classify), driver))
    }
}

fn percent_to_ppm(percent: f64) -> Option<u64> {
    (percent > 0.0 && percent <= 100.0).then(|| (percent * 10_000.0).round() as u64)
}

impl Settings {
    fn validate(&self) -> Result<Config, ConfigError> {
        if self.initial_rtt.is_zero() {
            return Err(ConfigError::InitialRtt);
        }
        if self.decay.is_zero() {
            return Err(ConfigError::Decay);
        }
        if self.penalty.is_some_and(|p| p.is_zero()) {
            return Err(ConfigError::FailurePenalty);
        }
        if self.consecutive == Some(0) || self.consecutive_local == Some(0) {
            return Err(ConfigError::ConsecutiveFailures);
        }
        let failure_percentage = match self.failure_percentage {
            Some((percent, calls, endpoints)) => {
                let threshold_ppm =
                    percent_to_ppm(percent).ok_or(ConfigError::FailurePercentage(percent))?;
                if calls == 0 {
                    return Err(ConfigError::MinimumCalls);
                }
                if endpoints == 0 {
                    return Err(ConfigError::MinimumEndpoints);
                }
                Some(FailurePercentage {
                    threshold_ppm,
                    minimum_calls: calls,
                    minimum_endpoints: endpoints,
                })
            }
            None => None,
        };
        let success_rate = match self.success_rate {
            Some((factor, calls, endpoints)) => {
                if !(factor.is_finite() && factor >= 0.0) {
                    return Err(ConfigError::StdevFactor(factor));
                }
                if calls == 0 {
                    return Err(ConfigError::MinimumCalls);
                }
                if endpoints == 0 {
                    return Err(ConfigError::MinimumEndpoints);
                }
                Some(SuccessRate {
                    stdev_factor: factor,
                    minimum_calls: calls,
                    minimum_endpoints: endpoints,
                })
            }
            None => None,
        };
        if self.interval < Duration::from_millis(1) {
            return Err(ConfigError::Interval(self.interval));
        }
        if self.ejection_time.is_zero() {
            return Err(ConfigError::EjectionTime);
        }
        if self.max_ejection_time < self.ejection_time {
            return Err(ConfigError::MaxEjectionTime {
                base: self.ejection_time,
                max: self.max_ejection_time,
            });
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::EjectionMultiplier(self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::EjectionJitter(self.jitter));
        }
        if self.max_retry_after.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::MaxRetryAfter);
        }
        // Given, it is checked; by default it is shortened to a shorter ejection time.
        let claim_timeout = match self.claim_timeout {
            Some(timeout) if timeout.is_zero() => return Err(ConfigError::ProbeClaimTimeout),
            Some(timeout) if timeout > self.ejection_time => {
                return Err(ConfigError::ProbeClaimTimeoutAboveEjectionTime {
                    timeout,
                    ejection_time: self.ejection_time,
                })
            }
            Some(timeout) => timeout,
            None => Duration::from_secs(1).min(self.ejection_time),
        };
        let max_ejection_ppm = percent_to_ppm(self.max_ejection_percent)
            .ok_or(ConfigError::MaxEjectionPercent(self.max_ejection_percent))?;
        Ok(Config {
            initial_rtt: self.initial_rtt,
            tau: self.decay.as_nanos() as f64,
            penalty: self.penalty,
            consecutive: self.consecutive,
            consecutive_local: self.consecutive_local,
            failure_percentage,
            success_rate,
            interval: self.interval,
            schedule: Schedule {
                base: self.ejection_time,
                multiplier: self.multiplier,
                max: self.max_ejection_time,
                jitter: self.jitter,
            },
            max_retry_after: self.max_retry_after,
            max_ejection_ppm,
            when_unhealthy: self.when_unhealthy,
            claim_timeout: crate::sync::nanos(claim_timeout).max(1),
            seed: self.seed,
        })
    }
}
