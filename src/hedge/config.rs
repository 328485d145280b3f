//! Building a hedge layer: [`Builder`] and [`ConfigError`].

use super::layer::{Delay, Limits, Shared};
use super::HedgeLayer;
use crate::core::anchor::Anchor;
use crate::core::histogram::LatencyWindow;
use crate::core::{ErrorIsFailure, Observer, Source};
use crate::retry::budget::Budget;
use crate::retry::policy::Cloned;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// A mistake in a hedge layer's configuration, found when it is built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The number of attempts is zero or above the largest supported.
    #[error("max attempts must be in 1..={max}, got {attempts}")]
    MaxAttempts {
        /// The number given.
        attempts: u32,
        /// The largest supported.
        max: u32,
    },
    /// The extra load is not a number in `(0, 1)`.
    #[error("max extra load must be a number in (0, 1), got {0}")]
    MaxExtraLoad(f64),
    /// The percentile delay would never be computed: `min_samples` is zero.
    #[error("min samples must be at least 1")]
    MinSamples,
    /// The default budget could not be made (see [`retry::ConfigError`](crate::retry::ConfigError)).
    #[error("budget: {0}")]
    Budget(#[from] crate::retry::ConfigError),
}

/// The largest number of attempts (the first included) a call may make, as in gRPC's hedging.
pub const MAX_ATTEMPTS: u32 = 5;

/// The floor of the default budget: hedges a second allowed however few the requests.
const BUDGET_FLOOR: u32 = 1;

enum BudgetChoice {
    Default,
    Given(Budget),
    None,
}

/// Builds a [`HedgeLayer`]; start from [`HedgeLayer::builder`].
///
/// | setting | default |
/// |---|---|
/// | delay | the `1 - max_extra_load` percentile of the last 10 s of latencies, at least 1 ms, once 100 are known ([`max_extra_load`](Self::max_extra_load), [`delay`](Self::delay) for a fixed one) |
/// | [`max_extra_load`](Self::max_extra_load) | 5 % |
/// | [`min_samples`](Self::min_samples) | 100 in the last 10 s: no hedging under 10 calls a second |
/// | [`max_attempts`](Self::max_attempts) | 2 (one hedge), at most 5 |
/// | [`max_hint`](Self::max_hint) | 60 s: a longer server hint stops further hedges |
/// | [`budget`](Self::budget) | `max_extra_load` of the last 10 s of requests, plus 1 per second |
/// | [`classify`](Self::classify) | every `Err` is a failure that sends the next hedge at once |
/// | [`policy`](Self::policy) | any `Clone` request is hedged |
///
/// ```
/// use seawall::hedge::HedgeLayer;
/// use std::time::Duration;
///
/// let layer = HedgeLayer::builder()
///     .name("search")
///     .delay(Duration::from_millis(50))
///     .max_attempts(3)
///     .build()
///     .unwrap();
/// # drop(layer);
/// ```
pub struct Builder<C = ErrorIsFailure, P = Cloned, M = (), O = ()> {
    name: Cow<'static, str>,
    delay: Option<Duration>,
    max_extra_load: f64,
    min_samples: u32,
    max_attempts: u32,
    max_hint: Duration,
    budget: BudgetChoice,
    classify: C,
    policy: P,
    mark: M,
    observer: O,
}

impl<C: std::fmt::Debug, P: std::fmt::Debug, M, O> std::fmt::Debug for Builder<C, P, M, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("delay", &self.delay)
            .field("max_extra_load", &self.max_extra_load)
            .field("max_attempts", &self.max_attempts)
            .field("max_hint", &self.max_hint)
            .field("classify", &self.classify)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("hedge"),
            delay: None,
            max_extra_load: 0.05,
            min_samples: 100,
            max_attempts: 2,
            max_hint: Duration::from_secs(60),
            budget: BudgetChoice::Default,
            classify: ErrorIsFailure,
            policy: Cloned,
            mark: (),
            observer: (),
        }
    }
}

impl<C, P, M, O> Builder<C, P, M, O> {
    /// The layer's name, in events (default `"hedge"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends a hedge once an attempt has been outstanding for `delay` (and the next after as long
    /// again), instead of at the percentile of recent latencies.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The share of calls that may be hedged (default 0.05): the delay is the `1 - load`
    /// percentile of the latencies of the last 10 s (unless [`delay`](Self::delay) fixes it), and
    /// the default budget allows that share of requests as hedges.
    pub fn max_extra_load(mut self, load: f64) -> Self {
        self.max_extra_load = load;
        self
    }

    /// How many latencies the window must hold before the percentile delay is used (default
    /// 100); until then no call is hedged. The window holds the last 10 s, so with the default a
    /// layer whose calls come at under 10 a second never holds enough, and hedges nothing: lower
    /// it for such a client (a percentile over few samples is coarse), or fix the
    /// [`delay`](Self::delay).
    pub fn min_samples(mut self, samples: u32) -> Self {
        self.min_samples = samples;
        self
    }

    /// How many attempts a call may make, the first included (default 2: one hedge; at most
    /// [`MAX_ATTEMPTS`]). One turns hedging off.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The longest server hint (`Retry-After`, `grpc-retry-pushback-ms`) obeyed, as retry's
    /// [`max_hint`](crate::retry::Builder::max_hint) (default 60 s): a longer one stops further
    /// hedges. The attempts in flight may still answer; with none left, the call returns the
    /// first attempt's answer at once rather than wait out the hint.
    pub fn max_hint(mut self, max: Duration) -> Self {
        self.max_hint = max;
        self
    }

    /// Every hedge takes one retry from `budget`, and none is sent when it is empty. Give a retry
    /// layer the same budget to bound its retries and these hedges together; when one of the two
    /// layers is inside the other, give the inner one
    /// [`budget.withdraw_only()`](Budget::withdraw_only), so that a request makes its deposit
    /// once.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = BudgetChoice::Given(budget);
        self
    }

    /// No budget: only the delay and `max_attempts` bound hedges. Under a brownout, every call
    /// is then sent `max_attempts` times.
    pub fn no_budget(mut self) -> Self {
        self.budget = BudgetChoice::None;
        self
    }

    /// Decides which results are successes (the first wins), failures (the next hedge goes at
    /// once) or final answers ([`Outcome::Ignored`](crate::core::Outcome::Ignored): returned at
    /// once), and reads server hints, which hold further hedges back.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, P, M, O> {
        self.with_hooks(|_, policy, mark, observer| (classify, policy, mark, observer))
    }

    /// Replaces the policy that copies requests for hedges (see
    /// [`retry::policy::Policy`](crate::retry::policy::Policy)): a request it will not
    /// [`replay`](crate::retry::policy::Policy::replay) is sent once; a hedge waits while its copy
    /// cannot be sent whole ([`can_replay`](crate::retry::policy::Policy::can_replay)); a failure
    /// it will not [`retry`](crate::retry::policy::Policy::should_retry) ends the call, or only
    /// stops further hedges where [`ends_call`](crate::retry::policy::Policy::ends_call) says
    /// so; its [`deadline`](crate::retry::policy::Policy::deadline) bounds every hedge.
    pub fn policy<P2>(self, policy: P2) -> Builder<C, P2, M, O> {
        self.with_hooks(|classify, _, mark, observer| (classify, policy, mark, observer))
    }

    /// Tells each hedge its attempt number (see [`Mark`](super::Mark)), so that a load balancer
    /// beneath can send it elsewhere. The HTTP and gRPC settings put an
    /// [`Attempt`](super::Attempt) in the request's extensions.
    pub fn mark<M2>(self, mark: M2) -> Builder<C, P, M2, O> {
        self.with_hooks(|classify, policy, _, observer| (classify, policy, mark, observer))
    }

    /// Sends the layer's events to `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> Builder<C, P, M, O2> {
        self.with_hooks(|classify, policy, mark, _| (classify, policy, mark, observer))
    }

    fn with_hooks<C2, P2, M2, O2>(
        self,
        hooks: impl FnOnce(C, P, M, O) -> (C2, P2, M2, O2),
    ) -> Builder<C2, P2, M2, O2> {
        let (classify, policy, mark, observer) =
            hooks(self.classify, self.policy, self.mark, self.observer);
        Builder {
            name: self.name,
            delay: self.delay,
            max_extra_load: self.max_extra_load,
            min_samples: self.min_samples,
            max_attempts: self.max_attempts,
            max_hint: self.max_hint,
            budget: self.budget,
            classify,
            policy,
            mark,
            observer,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<HedgeLayer<C, P, M, O>, ConfigError>
    where
        O: Observer,
    {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(ConfigError::MaxAttempts {
                attempts: self.max_attempts,
                max: MAX_ATTEMPTS,
            });
        }
        let load = self.max_extra_load;
        if !(load.is_finite() && load > 0.0 && load < 1.0) {
            return Err(ConfigError::MaxExtraLoad(load));
        }
        if self.min_samples == 0 {
            return Err(ConfigError::MinSamples);
        }
        let budget = match self.budget {
            BudgetChoice::Default => {
                Some(Budget::ratio(load, BUDGET_FLOOR, Duration::from_secs(10))?)
            }
            BudgetChoice::Given(budget) => Some(budget),
            BudgetChoice::None => None,
        };
        let (delay, window) = match self.delay {
            Some(delay) => (Delay::Fixed(delay), None),
            None => (
                Delay::Percentile,
                Some(LatencyWindow::new(
                    1.0 - load,
                    self.min_samples,
                    Duration::from_millis(1),
                )),
            ),
        };
        Ok(HedgeLayer {
            limits: Limits {
                max_attempts: self.max_attempts,
                max_hint: self.max_hint,
                delay,
            },
            budget: budget.clone(),
            shared: Anchor::counted(Shared { window, budget }),
            classify: self.classify,
            policy: self.policy,
            mark: self.mark,
            source: Arc::new(Source::new(self.name, self.observer)),
        })
    }
}
