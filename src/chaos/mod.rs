//! Fault injection for testing resilience (feature `chaos`): [`ChaosLayer`] fails, delays or
//! answers in place of the service beneath, each fault with its own probability, as Polly's chaos
//! strategies and Envoy's fault filter do.
//!
//! A call first draws for **latency** (it then waits that long before the service beneath is
//! polled), then for an **error** (the call fails with it and the service beneath never runs),
//! then, if no error was drawn, for a **response** (the call answers with it instead of the
//! service). The layer is off until enabled, on its builder or at run time through its
//! [`ChaosHandle`], which also changes every probability while traffic flows. Off, a call costs
//! one relaxed atomic load; no random number is drawn and no clock is read. Draws come from one
//! lock-free generator per layer, seeded from the operating system unless
//! [`seed`](ChaosBuilder::seed) fixes it, so that a test can replay the same faults.
//!
//! ```
//! use seawall::chaos::{ChaosLayer, Injected};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let chaos = ChaosLayer::builder()
//!     .error(0.5)                                  // half the calls fail with `Injected`...
//!     .latency(0.1, Duration::from_millis(200))    // ...a tenth wait 200 ms first
//!     .seed(7)
//!     .enabled(true)
//!     .build()
//!     .unwrap();
//! let handle = chaos.handle();
//! let service = chaos.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//!
//! let mut failed = 0;
//! for i in 0..1000 {
//!     match service.clone().oneshot(i).await {
//!         Ok(x) => assert_eq!(x, i),
//!         Err(err) => {
//!             assert!(err.is::<Injected>());
//!             failed += 1;
//!         }
//!     }
//! }
//! assert!((400..600).contains(&failed));
//! handle.disable(); // back to the plain service
//! assert_eq!(service.oneshot(5).await.unwrap(), 5);
//! # }
//! ```

use crate::sync::{nanos, AtomicBool, AtomicU64, Ordering::Relaxed, SplitMix};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::{BoxError, Layer, Service};

/// The error a [`ChaosLayer`] fails calls with, unless its builder was given another
/// ([`error_with`](ChaosBuilder::error_with)). Not a seawall rejection: it stands for a failure of
/// the service beneath, and layers above treat it as one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("fault injected by seawall::chaos")]
pub struct Injected;

/// A [`ChaosBuilder`] setting out of range.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A probability outside `[0, 1]`, or not a number.
    #[error("a probability must be in [0, 1], got {0}")]
    Probability(f64),
}

fn check(probability: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&probability) {
        Ok(probability)
    } else {
        Err(ConfigError::Probability(probability))
    }
}

/// A probability kept as the bits of an `f64`, changed and read without a lock.
struct Probability(AtomicU64);

impl Probability {
    fn new(p: f64) -> Self {
        Probability(AtomicU64::new(p.to_bits()))
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }

    fn set(&self, p: f64) {
        self.0.store(p.to_bits(), Relaxed)
    }
}

type MakeError = Arc<dyn Fn() -> BoxError + Send + Sync>;

/// What a [`ChaosLayer`] answers with in place of the service: [`NoResponse`] unless built with
/// [`response`](ChaosBuilder::response).
pub trait Substitute<T> {
    /// A response for one call, if there is one to give.
    fn substitute(&self) -> Option<T>;
}

/// No substituted response: the layer only fails and delays calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoResponse;

impl<T> Substitute<T> for NoResponse {
    #[inline]
    fn substitute(&self) -> Option<T> {
        None
    }
}

/// A substituted response made by a function, afresh for each call.
pub struct ResponseFn<F>(Arc<F>);

impl<F> Clone for ResponseFn<F> {
    fn clone(&self) -> Self {
        ResponseFn(self.0.clone())
    }
}

impl<F> fmt::Debug for ResponseFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFn")
    }
}

impl<T, F: Fn() -> T> Substitute<T> for ResponseFn<F> {
    #[inline]
    fn substitute(&self) -> Option<T> {
        Some((self.0)())
    }
}

/// What every service of one layer shares: the switch, the probabilities and the generator.
struct State {
    enabled: AtomicBool,
    error: Probability,
    latency: Probability,
    response: Probability,
    delay: AtomicU64,
    rng: SplitMix,
    injected: [AtomicU64; 3],
}

/// Which fault, for [`ChaosHandle::injected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// A call failed with the layer's error.
    Error,
    /// A call waited before the service beneath ran.
    Latency,
    /// A call was answered with the layer's response.
    Response,
}

impl State {
    fn draw(&self, probability: &Probability) -> bool {
        let p = probability.get();
        p > 0.0 && self.rng.next_f64() < p
    }

    fn count(&self, fault: Fault) {
        self.injected[fault as usize].fetch_add(1, Relaxed);
    }
}

/// Builds a [`ChaosLayer`]. Every probability defaults to 0, and the layer to off.
pub struct ChaosBuilder<M = NoResponse> {
    enabled: bool,
    error: f64,
    latency: f64,
    delay: Duration,
    response: f64,
    substitute: M,
    make_error: Option<MakeError>,
    seed: Option<u64>,
}

impl ChaosLayer {
    /// Starts a builder.
    pub fn builder() -> ChaosBuilder {
        ChaosBuilder {
            enabled: false,
            error: 0.0,
            latency: 0.0,
            delay: Duration::ZERO,
            response: 0.0,
            substitute: NoResponse,
            make_error: None,
            seed: None,
        }
    }
}

impl<M> ChaosBuilder<M> {
    /// Whether the layer starts on (default off: it injects nothing until enabled here or
    /// through its handle).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Fails calls with [`Injected`] (or the error of [`error_with`](Self::error_with)) with
    /// probability `probability`.
    pub fn error(mut self, probability: f64) -> Self {
        self.error = probability;
        self
    }

    /// Fails calls with what `make` returns, with probability `probability`.
    pub fn error_with<E, F>(mut self, probability: f64, make: F) -> Self
    where
        F: Fn() -> E + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.error = probability;
        self.make_error = Some(Arc::new(move || make().into()));
        self
    }

    /// Delays calls by `delay` before the service beneath is polled, with probability
    /// `probability`. The service's future is made at once (some services start work there) and
    /// polled once the delay is over.
    pub fn latency(mut self, probability: f64, delay: Duration) -> Self {
        self.latency = probability;
        self.delay = delay;
        self
    }

    /// Answers calls with what `make` returns instead of calling the service, with probability
    /// `probability`.
    pub fn response<F>(self, probability: f64, make: F) -> ChaosBuilder<ResponseFn<F>> {
        ChaosBuilder {
            enabled: self.enabled,
            error: self.error,
            latency: self.latency,
            delay: self.delay,
            response: probability,
            substitute: ResponseFn(Arc::new(make)),
            make_error: self.make_error,
            seed: self.seed,
        }
    }

    /// Seeds the generator, so that the same calls draw the same faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the layer, or says which probability is out of range.
    pub fn build(self) -> Result<ChaosLayer<M>, ConfigError> {
        let state = State {
            enabled: AtomicBool::new(self.enabled),
            error: Probability::new(check(self.error)?),
            latency: Probability::new(check(self.latency)?),
            response: Probability::new(check(self.response)?),
            delay: AtomicU64::new(nanos(self.delay)),
            rng: SplitMix::new(self.seed.unwrap_or_else(rand::random)),
            injected: Default::default(),
        };
        Ok(ChaosLayer {
            state: Arc::new(state),
            substitute: self.substitute,
            make_error: self.make_error,
        })
    }
}

impl<M> fmt::Debug for ChaosBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosBuilder")
            .field("enabled", &self.enabled)
            .field("error", &self.error)
            .field("latency", &self.latency)
            .field("delay", &self.delay)
            .field("response", &self.response)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// Injects faults into the calls of the services it makes. See the [module docs](self).
///
/// Its state (the switch, the probabilities, the generator) is created with the layer and shared
/// by every service it makes and every clone.
pub struct ChaosLayer<M = NoResponse> {
    state: Arc<State>,
    substitute: M,
    make_error: Option<MakeError>,
}

impl<M> ChaosLayer<M> {
    /// A handle to switch the layer on and off and change its probabilities at run time.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            state: self.state.clone(),
        }
    }
}

impl<M: Clone> Clone for ChaosLayer<M> {
    fn clone(&self) -> Self {
        ChaosLayer {
            state: self.state.clone(),
            substitute: self.substitute.clone(),
            make_error: self.make_error.clone(),
        }
    }
}

impl<M> fmt::Debug for ChaosLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("handle", &self.handle())
            .finish()
    }
}

impl<S, M: Clone> Layer<S> for ChaosLayer<M> {
    type Service = Chaos<S, M>;

    fn layer(&self, inner: S) -> Chaos<S, M> {
        Chaos {
            inner,
            layer: self.clone(),
        }
    }
}

/// Switches a [`ChaosLayer`] on and off and changes its probabilities while it runs.
#[derive(Clone)]
pub struct ChaosHandle {
    state: Arc<State>,
}

impl ChaosHandle {
    /// Starts injecting faults.
    pub fn enable(&self) {
        self.state.enabled.store(true, Relaxed);
    }

    /// Stops injecting faults: calls go to the service as they would without the layer.
    pub fn disable(&self) {
        self.state.enabled.store(false, Relaxed);
    }

    /// Whether the layer injects faults.
    pub fn is_enabled(&self) -> bool {
        self.state.enabled.load(Relaxed)
    }

    /// Sets the probability of an error.
    pub fn set_error(&self, probability: f64) -> Result<(), ConfigError> {
        self.state.error.set(check(probability)?);
        Ok(())
    }

    /// Sets the probability and the length of a delay.
    pub fn set_latency(&self, probability: f64, delay: Duration) -> Result<(), ConfigError> {
        self.state.latency.set(check(probability)?);
        self.state.delay.store(nanos(delay), Relaxed);
        Ok(())
    }

    /// Sets the probability of a substituted response (a layer built without
    /// [`response`](ChaosBuilder::response) has none to give, and never answers in place of the
    /// service).
    pub fn set_response(&self, probability: f64) -> Result<(), ConfigError> {
        self.state.response.set(check(probability)?);
        Ok(())
    }

    /// How many calls got `fault` since the layer was built.
    pub fn injected(&self, fault: Fault) -> u64 {
        self.state.injected[fault as usize].load(Relaxed)
    }
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = &self.state;
        f.debug_struct("ChaosHandle")
            .field("enabled", &state.enabled.load(Relaxed))
            .field("error", &state.error.get())
            .field("latency", &state.latency.get())
            .field("delay", &Duration::from_nanos(state.delay.load(Relaxed)))
            .field("response", &state.response.get())
            .finish()
    }
}

/// The service of a [`ChaosLayer`].
pub struct Chaos<S, M = NoResponse> {
    inner: S,
    layer: ChaosLayer<M>,
}

impl<S: Clone, M: Clone> Clone for Chaos<S, M> {
    fn clone(&self) -> Self {
        Chaos {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for Chaos<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, M, Req> Service<Req> for Chaos<S, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: Substitute<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ChaosFuture<S::Future, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let state = &*self.layer.state;
        if !state.enabled.load(Relaxed) {
            return ChaosFuture {
                delay: None,
                kind: Kind::Call {
                    future: self.inner.call(req),
                },
            };
        }
        self.inject(req)
    }
}

impl<S, M> Chaos<S, M> {
    /// The call of an enabled layer: draws its faults.
    #[inline(never)]
    fn inject<Req>(&mut self, req: Req) -> ChaosFuture<S::Future, S::Response>
    where
        S: Service<Req>,
        M: Substitute<S::Response>,
    {
        let state = &*self.layer.state;
        let delay = state.draw(&state.latency).then(|| {
            state.count(Fault::Latency);
            Box::pin(tokio::time::sleep(Duration::from_nanos(
                state.delay.load(Relaxed),
            )))
        });
        let kind = if state.draw(&state.error) {
            state.count(Fault::Error);
            let error = match &self.layer.make_error {
                Some(make) => make(),
                None => Box::new(Injected),
            };
            Kind::Fail { error: Some(error) }
        } else if let Some(response) = state
            .draw(&state.response)
            .then(|| self.layer.substitute.substitute())
            .flatten()
        {
            state.count(Fault::Response);
            Kind::Respond {
                response: Some(response),
            }
        } else {
            Kind::Call {
                future: self.inner.call(req),
            }
        };
        ChaosFuture { delay, kind }
    }
}

pin_project! {
    /// The response future of [`Chaos`].
    pub struct ChaosFuture<F, Res> {
        // Boxed: a delay is the rare case, and an unboxed timer would make every call's future
        // larger.
        delay: Option<Pin<Box<Sleep>>>,
        #[pin]
        kind: Kind<F, Res>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Res> {
        Call { #[pin] future: F },
        Fail { error: Option<BoxError> },
        Respond { response: Option<Res> },
    }
}

impl<F, Res> fmt::Debug for ChaosFuture<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Call { .. } => "call",
            Kind::Fail { .. } => "fail",
            Kind::Respond { .. } => "respond",
        };
        f.debug_struct("ChaosFuture")
            .field("delayed", &self.delay.is_some())
            .field("kind", &kind)
            .finish()
    }
}

impl<F, Res, E> Future for ChaosFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(delay) = this.delay {
            ready!(delay.as_mut().poll(cx));
            *this.delay = None;
        }
        match this.kind.project() {
            KindProj::Call { future } => future.poll(cx).map_err(Into::into),
            KindProj::Fail { error } => Poll::Ready(Err(error
                .take()
                .expect("ChaosFuture polled after it finished"))),
            KindProj::Respond { response } => Poll::Ready(Ok(response
                .take()
                .expect("ChaosFuture polled after it finished"))),
        }
    }
}
