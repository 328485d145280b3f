//! Building a retry layer: [`Builder`] and [`ConfigError`].

use super::backoff::Backoff;
use super::budget::Budget;
use super::policy::{Cloned, RetryIf};
use super::RetryLayer;
use crate::core::{ErrorIsFailure, Observer, Source};
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// A mistake in a retry layer's configuration (or a budget's), found when it is built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The exponential backoff's factor is below 1 or not finite.
    #[error("backoff factor must be a finite number of at least 1, got {0}")]
    BackoffFactor(f64),
    /// The backoff's base delay is longer than its cap.
    #[error("backoff base delay ({base:?}) is longer than its cap ({cap:?})")]
    BackoffCap {
        /// The base delay.
        base: Duration,
        /// The cap.
        cap: Duration,
    },
    /// The maximum number of retries is above the largest supported.
    #[error("max retries must be at most {max}, got {retries}")]
    MaxRetries {
        /// The number given.
        retries: u32,
        /// The largest supported.
        max: u32,
    },
    /// The maximum total time is zero: no retry could ever start.
    #[error("max elapsed time must be greater than zero")]
    MaxElapsed,
    /// A ratio budget's ratio is not a number in `[0, 10]`.
    #[error("budget ratio must be a number in [0, 10], got {0}")]
    BudgetRatio(f64),
    /// A ratio budget's time to live is shorter than ten nanoseconds or longer than a day.
    #[error("budget time to live must be between 10 ns and a day, got {0:?}")]
    BudgetTtl(Duration),
    /// A token bucket's retry cost is zero or larger than its capacity.
    #[error("token bucket retry cost must be in 1..={capacity}, got {retry_cost}")]
    BudgetTokens {
        /// The capacity given.
        capacity: u32,
        /// The retry cost given.
        retry_cost: u32,
    },
}

/// The largest number of retries a layer may be configured with.
pub const MAX_RETRIES: u32 = 100;

/// What every future of one layer needs to decide on retries, copied into each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_retries: u32,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) max_hint: Duration,
    pub(crate) backoff: Backoff,
}

/// Builds a [`RetryLayer`]; start from [`RetryLayer::builder`].
///
/// | setting | default | Polly | resilience4j |
/// |---|---|---|---|
/// | [`max_retries`](Self::max_retries) | 3 | 3 | 2 (3 attempts) |
/// | [`backoff`](Self::backoff) | exponential from 100 ms, doubling, full jitter, at most 30 s | constant 2 s, no jitter | constant 500 ms |
/// | [`budget`](Self::budget) | 20 % of the last 10 s of requests plus 10 per second (Finagle's) | none | none |
/// | [`max_elapsed`](Self::max_elapsed) | none | none | none |
/// | [`max_hint`](Self::max_hint) | 60 s: a longer `Retry-After` gives up | | |
/// | [`classify`](Self::classify) | every `Err` is retried | every exception | every exception |
///
/// ```
/// use seawall::retry::{backoff::Backoff, budget::Budget, RetryLayer};
/// use std::time::Duration;
///
/// let layer = RetryLayer::builder()
///     .name("search")
///     .max_retries(2)
///     .backoff(Backoff::exponential(Duration::from_millis(50)).max(Duration::from_secs(2)))
///     .budget(Budget::ratio(0.1, 5, Duration::from_secs(10)).unwrap())
///     .max_elapsed(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// # drop(layer);
/// ```
///
/// The HTTP and gRPC settings are where a builder starts ([`RetryLayer::http`],
/// [`RetryLayer::grpc`]), not steps after other settings, so they never replace a classifier or
/// a policy given before them.
#[derive(Debug)]
pub struct Builder<C = ErrorIsFailure, P = Cloned, O = ()> {
    name: Cow<'static, str>,
    limits: Limits,
    budget: Option<Budget>,
    seed: Option<u64>,
    classify: C,
    policy: P,
    observer: O,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("retry"),
            limits: Limits {
                max_retries: 3,
                max_elapsed: None,
                max_hint: Duration::from_secs(60),
                backoff: Backoff::default(),
            },
            budget: Some(Budget::default()),
            seed: None,
            classify: ErrorIsFailure,
            policy: Cloned,
            observer: (),
        }
    }
}

impl<C, P, O> Builder<C, P, O> {
    /// The layer's name, in events (default `"retry"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How many times a failed call may be retried (default 3: four attempts in all). Zero turns
    /// retries off.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.limits.max_retries = retries;
        self
    }

    /// The delays between attempts (see [`Backoff`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.limits.backoff = backoff;
        self
    }

    /// Shares `budget` with this layer: every retry takes from it, and no retry happens when it is
    /// empty. Pass clones of one budget to several layers to make them share it.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only the other limits bound retries. Under an outage every request is then
    /// sent `1 + max_retries` times.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// No retry may end later than `max` after the call started. Off by default; when set, the
    /// clock is read once per call.
    pub fn max_elapsed(mut self, max: Duration) -> Self {
        self.limits.max_elapsed = Some(max);
        self
    }

    /// The longest server hint (`Retry-After`) obeyed: a longer one ends the retries (default 60 s).
    pub fn max_hint(mut self, max: Duration) -> Self {
        self.limits.max_hint = max;
        self
    }

    /// Draws every session's delays from generators seeded from `seed` and the session's number,
    /// instead of from the thread's entropy: sessions still differ from each other, and a run can be
    /// repeated. For tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Decides which results are failures to retry, and reads server hints (see
    /// [`Classify::retry_after`](crate::core::Classify::retry_after)). By default every `Err` is.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, P, O> {
        self.with_hooks(|_, policy, observer| (classify, policy, observer))
    }

    /// Replaces the policy that copies requests for retries and may decline them (see
    /// [`Policy`](super::policy::Policy)).
    pub fn policy<P2>(self, policy: P2) -> Builder<C, P2, O> {
        self.with_hooks(|classify, _, observer| (classify, policy, observer))
    }

    /// Makes a failed call that the retry budget would not retry end in
    /// [`BudgetExhausted`](super::policy::BudgetExhausted) (wrapping the last attempt's error), so
    /// that servers and fallbacks can tell "the dependency is failing for everyone" from the
    /// failure itself: it maps to 503 and gRPC `UNAVAILABLE`. The service's error type must take
    /// it (`BoxError` does). A failed *response* (an HTTP 503, say) is returned as it is.
    pub fn report_budget(self) -> Builder<C, super::policy::ReportBudget<P>, O> {
        self.with_hooks(|classify, policy, observer| {
            (classify, super::policy::ReportBudget::new(policy), observer)
        })
    }

    /// Retries a failure only if `predicate(request, result)` also says so.
    ///
    /// ```
    /// use seawall::retry::RetryLayer;
    ///
    /// // Retry errors, except for requests the caller marked as final.
    /// let layer = RetryLayer::builder()
    ///     .retry_if(|req: &(u32, bool), _: &Result<u32, std::io::Error>| !req.1)
    ///     .build()
    ///     .unwrap();
    /// # drop(layer);
    /// ```
    pub fn retry_if<F>(self, predicate: F) -> Builder<C, RetryIf<P, F>, O> {
        self.with_hooks(|classify, policy, observer| {
            (classify, RetryIf::new(policy, predicate), observer)
        })
    }

    /// Sends the layer's events to `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> Builder<C, P, O2> {
        self.with_hooks(|classify, policy, _| (classify, policy, observer))
    }

    fn with_hooks<C2, P2, O2>(
        self,
        hooks: impl FnOnce(C, P, O) -> (C2, P2, O2),
    ) -> Builder<C2, P2, O2> {
        let (classify, policy, observer) = hooks(self.classify, self.policy, self.observer);
        Builder {
            name: self.name,
            limits: self.limits,
            budget: self.budget,
            seed: self.seed,
            classify,
            policy,
            observer,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<RetryLayer<C, P, O>, ConfigError>
    where
        O: Observer,
    {
        self.limits.backoff.validate()?;
        if self.limits.max_retries > MAX_RETRIES {
            return Err(ConfigError::MaxRetries {
                retries: self.limits.max_retries,
                max: MAX_RETRIES,
            });
        }
        if self.limits.max_elapsed == Some(Duration::ZERO) {
            return Err(ConfigError::MaxElapsed);
        }
        Ok(RetryLayer {
            limits: self.limits,
            budget: self.budget,
            sessions: self.seed.map(|seed| (seed, Arc::new(AtomicU64::new(0)))),
            classify: self.classify,
            policy: self.policy,
            source: Arc::new(Source::new(self.name, self.observer)),
        })
    }
}
