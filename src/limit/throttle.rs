//! Client-side adaptive throttling, as in Google's SRE book ("Handling Overload"): the client
//! counts the calls it made and the calls the service accepted over a sliding time window, and
//! turns calls away itself with probability `max(0, (requests − k × accepts) / (requests + 1))`.

use super::error::Throttled;
use crate::core::gate::{Anchor, Guard, Shared};
use crate::core::window::{Sample, TimeWindow, MAX_BUCKETS};
use crate::core::{Emitter, ErrorIsFailure, Gate, Observer, Outcome, Record, RejectReason};
use crate::sync::{nanos, SplitMix};
use std::borrow::Cow;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::Layer;

/// The throttle's gate: the window of requests and accepts, and the rule.
///
/// A call is counted once, when it ends: as a request, and as an accept too when the classifier
/// calls it a success. A call the throttle turns away counts as a request that was not accepted, so
/// the probability keeps up with the service while the client sends less. Cancelled calls and
/// calls the classifier ignores are not counted.
pub struct Throttle {
    window: TimeWindow,
    k: f64,
    max_probability: f64,
    origin: Instant,
    /// Draws for the throttle's coin.
    rng: SplitMix,
}

impl Throttle {
    fn nanos(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }

    /// The probability of turning a call away, given the window's counts.
    #[inline]
    fn probability_of(&self, requests: u64, accepts: u64) -> f64 {
        let requests = requests as f64;
        let excess = requests - self.k * accepts as f64;
        if excess <= 0.0 {
            return 0.0;
        }
        (excess / (requests + 1.0)).min(self.max_probability)
    }

    fn probability_at(&self, now: Instant) -> f64 {
        let counts = self.window.counts_at(self.nanos(now));
        self.probability_of(counts.calls, counts.calls.saturating_sub(counts.failures))
    }

    /// A uniform draw from `[0, 1)`.
    fn draw(&self) -> f64 {
        self.rng.next_f64()
    }
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.window.counts();
        f.debug_struct("Throttle")
            .field("k", &self.k)
            .field("max_probability", &self.max_probability)
            .field("requests", &counts.calls)
            .field("accepts", &(counts.calls.saturating_sub(counts.failures)))
            .finish()
    }
}

impl Gate for Throttle {
    type Permit = ();
    type Rejection = Throttled;
    type Waiter = ();

    #[inline]
    fn poll_acquire<O: Observer>(
        &self,
        _: &mut Context<'_>,
        _: &mut (),
        _: Emitter<'_, O>,
    ) -> Poll<Result<(), Throttled>> {
        // The counts as of the last call that ended: while they show a healthy service, admitting
        // needs no clock.
        let counts = self.window.counts();
        if self.probability_of(counts.calls, counts.calls.saturating_sub(counts.failures)) == 0.0 {
            return Poll::Ready(Ok(()));
        }
        self.contended()
    }

    #[inline]
    fn complete<O: Observer>(&self, _: (), record: &Record, _: Emitter<'_, O>) {
        let accepted = match record.outcome {
            Outcome::Success => true,
            Outcome::Failure => false,
            Outcome::Ignored => return,
        };
        let now = record.finished.unwrap_or_else(Instant::now);
        self.window
            .record(self.nanos(now), Sample::new(!accepted, false));
    }

    #[inline]
    fn cancel<O: Observer>(&self, _: (), _: Emitter<'_, O>) {}

    #[inline]
    fn wants_latency(&self) -> bool {
        false
    }

    fn reject_reason(_: &Throttled) -> RejectReason {
        RejectReason::Throttled
    }

    // A refusal is a draw, recorded as a request: a service polled again keeps it.
    const KEEPS_REJECTION: bool = true;
}

impl Throttle {
    /// The window showed a struggling service: look again as of now, and draw.
    #[inline(never)]
    fn contended(&self) -> Poll<Result<(), Throttled>> {
        let now = Instant::now();
        let probability = self.probability_at(now);
        if probability > 0.0 && self.draw() < probability {
            self.window
                .record(self.nanos(now), Sample::new(true, false));
            return Poll::Ready(Err(Throttled { probability }));
        }
        Poll::Ready(Ok(()))
    }
}

/// A service behind a client-side throttle.
pub type ThrottleService<S, C = ErrorIsFailure, O = ()> = Guard<S, Throttle, C, O>;

/// Client-side adaptive throttling (Google SRE book, "Handling Overload"): when the service
/// beneath accepts too few of the calls sent to it, the client stops sending some of them, and
/// fails them at once with [`Throttled`] instead.
///
/// Over a sliding window (two minutes by default) the throttle counts `requests`, every call that
/// ended, and `accepts`, those the classifier calls a success (by default every `Ok`), and turns a
/// call away with probability
///
/// ```text
/// max(0, (requests − k × accepts) / (requests + 1))
/// ```
///
/// With `k = 2` (the default) a client keeps sending up to twice what the service accepts, so it
/// learns quickly when the service recovers, and spends little of the service's capacity on
/// rejections while it does not. Smaller `k` (down to 1) throttles harder. Calls the throttle turns
/// away count as requests, so the probability follows the service even when few calls are sent.
///
/// While the service accepts enough, admitting a call reads no clock; each call that ends reads it
/// once.
///
/// Put a timeout beneath the throttle, so that a service that stops answering counts as not
/// accepting; and classify only the service's overload answers (HTTP 429 and 503, gRPC
/// `RESOURCE_EXHAUSTED` and `UNAVAILABLE`) as failures if other errors say nothing about load.
///
/// ```
/// use seawall::limit::error::Throttled;
/// use seawall::limit::ThrottleLayer;
/// use tower::{service_fn, Service, ServiceExt};
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = ThrottleLayer::builder().k(2.0).seed(7).build().unwrap();
/// let handle = layer.handle();
/// // A service that turns every call away.
/// let mut client = layer.layer(service_fn(|_: ()| async { Err::<(), _>("overloaded") }));
/// let mut throttled = 0;
/// for _ in 0..100 {
///     let err = client.ready().await.unwrap().call(()).await.unwrap_err();
///     throttled += err.is::<Throttled>() as u32;
/// }
/// assert!(throttled > 80, "{throttled}");
/// assert!(handle.probability() > 0.9);
/// # }
/// ```
pub struct ThrottleLayer<C = ErrorIsFailure, O: 'static = ()> {
    shared: Anchor<Shared<Throttle, O>>,
    classify: C,
}

/// A mistake in a throttle's configuration, found by [`ThrottleBuilder::build`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `k` is below 1 or not finite: below 1, a service that accepts every call would be throttled.
    #[error("k must be a finite number of at least 1, got {0}")]
    K(f64),
    /// The window is empty.
    #[error("the window must be longer than zero")]
    Window,
    /// The number of buckets is outside `1..=256`.
    #[error("buckets must be in 1..={max}, got {0}", max = MAX_BUCKETS)]
    Buckets(u32),
    /// The maximum probability is outside `(0, 1]`.
    #[error("the maximum probability must be in (0, 1], got {0}")]
    MaxProbability(f64),
}

/// Builds a [`ThrottleLayer`].
#[derive(Debug)]
pub struct ThrottleBuilder<O = ()> {
    name: Cow<'static, str>,
    k: f64,
    window: Duration,
    buckets: u32,
    max_probability: f64,
    seed: Option<u64>,
    observer: O,
}

impl ThrottleLayer {
    /// A throttle with the defaults: `k = 2`, a two-minute window in 120 buckets of one second, no
    /// cap on the probability.
    pub fn new() -> Self {
        ThrottleLayer::builder()
            .build()
            .expect("the defaults are valid")
    }

    /// Starts a builder with the defaults.
    pub fn builder() -> ThrottleBuilder {
        ThrottleBuilder {
            name: Cow::Borrowed("throttle"),
            k: 2.0,
            window: Duration::from_secs(120),
            buckets: 120,
            max_probability: 1.0,
            seed: None,
            observer: (),
        }
    }
}

impl Default for ThrottleLayer {
    fn default() -> Self {
        ThrottleLayer::new()
    }
}

impl<O> ThrottleBuilder<O> {
    /// The layer's name, in events.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The multiplier of accepts (default 2, at least 1): how many calls the client may send per
    /// call the service accepts before it starts to throttle.
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// How far back requests and accepts are counted (default two minutes).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Into how many buckets the window is cut (default 120, at most 256): the window slides a
    /// bucket at a time.
    pub fn buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }

    /// Caps the probability of turning a call away (default 1: no cap), so that some calls always
    /// reach a service that has been turning everything away, and find out sooner when it is back.
    pub fn max_probability(mut self, max: f64) -> Self {
        self.max_probability = max;
        self
    }

    /// Seeds the random draws, for reproducible runs (default: seeded from the operating system).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sends the layer's events (a `Rejected` with reason `Throttled` for each call turned away)
    /// to `observer`.
    pub fn observer<O2: Observer>(self, observer: O2) -> ThrottleBuilder<O2> {
        ThrottleBuilder {
            name: self.name,
            k: self.k,
            window: self.window,
            buckets: self.buckets,
            max_probability: self.max_probability,
            seed: self.seed,
            observer,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<ThrottleLayer<ErrorIsFailure, O>, ConfigError>
    where
        O: Observer,
    {
        if !(self.k.is_finite() && self.k >= 1.0) {
            return Err(ConfigError::K(self.k));
        }
        if self.window.is_zero() {
            return Err(ConfigError::Window);
        }
        if !(1..=MAX_BUCKETS).contains(&self.buckets) {
            return Err(ConfigError::Buckets(self.buckets));
        }
        if !(self.max_probability > 0.0 && self.max_probability <= 1.0) {
            return Err(ConfigError::MaxProbability(self.max_probability));
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let gate = Throttle {
            window: TimeWindow::new(self.window, self.buckets),
            k: self.k,
            max_probability: self.max_probability,
            origin: Instant::now(),
            rng: SplitMix::new(seed),
        };
        Ok(ThrottleLayer {
            shared: Anchor::counted(Shared::new(self.name, gate, self.observer)),
            classify: ErrorIsFailure,
        })
    }
}

impl<C, O: Observer> ThrottleLayer<C, O> {
    /// A handle on this layer's throttle.
    pub fn handle(&self) -> ThrottleHandle<O> {
        ThrottleHandle {
            shared: self.shared.clone(),
        }
    }

    /// The same throttle, with another classifier: what counts as accepted (a success).
    pub fn classify<C2>(self, classify: C2) -> ThrottleLayer<C2, O> {
        ThrottleLayer {
            shared: self.shared,
            classify,
        }
    }
}

impl<C: Clone, O> Clone for ThrottleLayer<C, O> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C: fmt::Debug, O> fmt::Debug for ThrottleLayer<C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("name", &self.shared.name())
            .field("throttle", &self.shared.gate)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, C: Clone, O: Observer> Layer<S> for ThrottleLayer<C, O> {
    type Service = ThrottleService<S, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), self.classify.clone())
    }
}

/// A handle on a throttle: the counts in its window and the probability they give.
pub struct ThrottleHandle<O: 'static = ()> {
    pub(crate) shared: Anchor<Shared<Throttle, O>>,
}

impl<O> ThrottleHandle<O> {
    /// The probability with which a call would be turned away now.
    pub fn probability(&self) -> f64 {
        self.shared.gate.probability_at(Instant::now())
    }

    /// The calls counted as requests in the window, as of the last call that ended.
    pub fn requests(&self) -> u64 {
        self.shared.gate.window.counts().calls
    }

    /// The calls counted as accepted in the window, as of the last call that ended.
    pub fn accepts(&self) -> u64 {
        let counts = self.shared.gate.window.counts();
        counts.calls.saturating_sub(counts.failures)
    }
}

impl<O> Clone for ThrottleHandle<O> {
    fn clone(&self) -> Self {
        ThrottleHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<O> fmt::Debug for ThrottleHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleHandle")
            .field("requests", &self.requests())
            .field("accepts", &self.accepts())
            .field("probability", &self.probability())
            .finish()
    }
}
