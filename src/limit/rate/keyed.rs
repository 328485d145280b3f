//! Per-key rate limits: one GCRA cell per key, in a table of fixed size.

use super::clock::{Clock, TokioClock};
use super::gcra::{Decision, Quota, TIME};
use super::holes::Holes;
use super::wait::{self, Report, Unused, Verdict, Wait, Waiting};
use super::{settings_setters, ConfigError, Limits, Settings};
pub(crate) use crate::core::keys::{Cell, Place, Table, MAX_KEYS};
use crate::core::{Deadline, DeadlineCarrier, EventKind, Observer, RejectReason, Source};
use crate::limit::error::RateLimited;
use crate::sync::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Striped};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tower::{BoxError, Layer, Service};

/// A GCRA cell: the key's theoretical arrival time, in the low bits ([`TIME`]), and in the top
/// four how many keys the cell has held (modulo 16).
impl Cell for AtomicU64 {
    fn new() -> Self {
        AtomicU64::new(0)
    }

    /// Starts the cell afresh for a new key, and counts one more key in its top bits: a decision
    /// for the key it held, read before and swapped after, then fails, since the cell no longer
    /// holds the value it read (see [`Rule::decide_keyed`](super::gcra::Rule::decide_keyed)).
    /// Released after the tag was taken from the old key: whoever reads the new value sees that
    /// the tag changed.
    fn clear(&self) {
        let mut current = self.load(Relaxed);
        loop {
            let next = (current & !TIME).wrapping_add(TIME + 1);
            match self.compare_exchange_weak(current, next, AcqRel, Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn rank(&self, now: u64) -> (u8, u64) {
        match self.load(Relaxed) & TIME {
            tat if tat <= now => (1, 0),
            tat => (2, tat),
        }
    }
}

pub(crate) struct Keyed<Clk, O> {
    table: Table,
    limits: Limits<Clk>,
    source: Source<O>,
    /// Slots given back by callers that stopped waiting for them (waiting mode only).
    holes: Arc<Holes>,
    /// Calls turned away (what `health` reports); written only when one is, striped by thread.
    pub(crate) rejected: Striped,
}

impl<Clk: Clock, O: Observer> Keyed<Clk, O> {
    /// Decides a call of the key at `place` at `now` that has `left` nanoseconds before its
    /// deadline (`None`: no deadline); returns the index of the key's cell with the verdict.
    ///
    /// Each decision is made on the key's cell only while the cell holds the key (see
    /// [`Rule::decide_keyed`](super::gcra::Rule::decide_keyed)): if the key loses its cell to
    /// another meanwhile, nothing is charged to that other key, and the call is decided again
    /// in the key's new cell.
    #[inline]
    fn decide(&self, place: Place, now: u64, left: Option<u64>) -> (usize, Verdict) {
        let table = &self.table;
        let rule = &self.limits.rule;
        let max_wait = self.limits.max_wait;
        loop {
            let index = table.entry(place, || now, self.source.emitter());
            let slot = table.slot(index);
            let holds = || slot.tag.load(Acquire) == place.tag;
            let not_before = match rule.decide_keyed(&slot.cell, now, 0, holds) {
                None => continue,
                Some(Decision::Admit(taken)) => return (index, Verdict::Admit(taken)),
                Some(Decision::Reject(nanos) | Decision::Wait(nanos, _)) => nanos,
            };
            // Not at once: how long the call may wait, the sooner of the limit's maximum and
            // the request's deadline.
            let until = match wait::last_slot(now, max_wait, left) {
                Some(until) if max_wait != 0 => until,
                _ => return (index, Verdict::Reject(not_before)),
            };
            let decide = |wait| rule.decide_keyed(&slot.cell, now, wait, holds);
            let cell = (index, place.tag);
            if let Some(verdict) = wait::reserve(&self.holes, cell, &slot.cell, now, until, decide)
            {
                return (index, verdict);
            }
        }
    }

    /// The refusal of a call of the key at `place` at `now` whose deadline has passed: it takes
    /// nothing (not even a place in the table), and is told when the key could go ahead.
    #[cold]
    #[inline(never)]
    fn expired(&self, place: Place, now: u64) -> RateLimited {
        let table = &self.table;
        let not_before = table.find(place).map_or(0, |index| {
            self.limits.rule.not_before(&table.slot(index).cell, now)
        });
        RateLimited {
            retry_after: Duration::from_nanos(not_before),
        }
    }
}

/// Takes the service made ready for a call out of `inner`, leaving a clone in its place, made
/// ready for the next call: a call refused drops it, giving back what its readiness reserved
/// beneath (a bulkhead's slot), rather than keep it reserved until the next call.
#[inline]
pub(crate) fn ready_service<S: Clone>(inner: &mut S) -> S {
    let fresh = inner.clone();
    std::mem::replace(inner, fresh)
}

/// The service a call that waits for its slot makes it on: a clone, made ready when the slot
/// comes. The one made ready now is dropped, so that what its readiness reserved beneath (a
/// bulkhead's or an adaptive limiter's slot) is not held through a wait of up to `max_wait`,
/// during which other keys' calls would queue behind a call that only sleeps; and `inner` keeps a
/// clone for the next call, so a client that makes its calls one after another on one service
/// never holds two reservations.
#[inline]
pub(crate) fn waiting_service<S: Clone>(inner: &mut S) -> S {
    drop(ready_service(inner));
    inner.clone()
}

/// How a keyed rate limiter reads the [`Deadline`] a request carries: a call whose slot would
/// come after its deadline fails at once with [`RateLimited`] instead of taking the slot.
/// [`NoDeadline`] (the default) reads none; [`CarriedDeadline`] reads a
/// [`DeadlineCarrier`]'s (an `http::Request`'s, with feature `http`). The two also mark whether
/// a global [`RateLimitLayer`](super::RateLimitLayer) honours deadlines.
pub trait ReadDeadline<Req> {
    /// The deadline `req` carries, if any.
    fn deadline(&self, req: &Req) -> Option<Deadline>;
}

// The markers are the core's, shared with the bulkhead and the adaptive limiter, which can
// honour deadlines too.
pub use crate::core::{CarriedDeadline, NoDeadline};

impl<Req> ReadDeadline<Req> for NoDeadline {
    #[inline(always)]
    fn deadline(&self, _: &Req) -> Option<Deadline> {
        None
    }
}

impl<Req: DeadlineCarrier> ReadDeadline<Req> for CarriedDeadline {
    #[inline]
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        req.deadline()
    }
}

/// Limits the rate of calls per key: a key taken from each request by a closure (a client
/// address, an API key, a tenant) gets its own [`Quota`], in a table of at most `max_keys` keys
/// whose memory is allocated once. See the [module docs](super).
///
/// The closure returns `None` for requests the limit does not apply to (health checks, say);
/// they pass without being counted.
///
/// The limit is decided in `call`, once the request is known. A call over its key's quota fails
/// with [`RateLimited`]; with [`max_wait`](KeyedBuilder::max_wait), a call that can have a slot
/// within that time waits for it in its response future, and is then made on the inner service
/// made ready for it, this service keeping a clone for its next call (which is why the inner
/// service must be `Clone`); a call refused gives back what readiness reserved beneath.
///
/// Because the key is decided in `call`, after this service's `poll_ready` waited for the
/// service beneath to be ready, a call over its key's quota above a limiter with a queue (an
/// [`AdaptiveLimitLayer`](crate::limit::AdaptiveLimitLayer) with `.queue(..)`, as `ServerStack`
/// has) is refused only once the limiter beneath gave it a slot: while that limiter is full, it
/// waits in the queue first (as long as any call would) and takes a place there that another
/// client's call may then not find. Its slot goes back unused, and the limit beneath does not
/// move. Key only the calls that need it, keep that queue's waits short, or give it no queue; see
/// docs/back-pressure.md ("With a keyed rate limiter").
///
/// ```
/// use http::{Request, Response};
/// use seawall::limit::rate::{KeyedRateLimitLayer, Quota};
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // One request a second per API key, in a bounded table of 100,000 keys.
/// let layer = KeyedRateLimitLayer::builder(Quota::per_second(1), |req: &Request<()>| {
///     req.headers().get("x-api-key").cloned()
/// })
/// .max_keys(100_000)
/// .build()
/// .unwrap();
/// let mut service = layer.layer(service_fn(|_: Request<()>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(()))
/// }));
/// let request = |key: &str| Request::builder().header("x-api-key", key).body(()).unwrap();
/// assert!(service.ready().await.unwrap().call(request("a")).await.is_ok());
/// assert!(service.ready().await.unwrap().call(request("b")).await.is_ok());
/// assert!(service.ready().await.unwrap().call(request("a")).await.is_err());
/// # }
/// ```
pub struct KeyedRateLimitLayer<F, Clk: 'static = TokioClock, O: 'static = (), D = NoDeadline> {
    shared: Arc<Keyed<Clk, O>>,
    key: F,
    deadline: D,
}

/// Builds a [`KeyedRateLimitLayer`].
pub struct KeyedBuilder<F, Clk = TokioClock, O = (), D = NoDeadline> {
    settings: Settings<Clk, O>,
    key: F,
    max_keys: usize,
    deadline: D,
}

impl<F> KeyedRateLimitLayer<F> {
    /// Starts a builder for a limit of `quota` per key, the key taken from each request by `key`.
    /// Room for 100,000 keys by default.
    pub fn builder(quota: Quota, key: F) -> KeyedBuilder<F> {
        KeyedBuilder {
            settings: Settings::new(quota, "keyed_rate_limit"),
            key,
            max_keys: 100_000,
            deadline: NoDeadline,
        }
    }
}

impl<F, Clk, O, D> KeyedBuilder<F, Clk, O, D> {
    settings_setters!(KeyedBuilder<F, Clk, O, D>);

    /// Honours the [`Deadline`] each request carries (see [`DeadlineCarrier`]; a propagating
    /// `TimeoutLayer` above puts one in): a call that cannot go
    /// ahead at once waits only for a slot due by its deadline, and fails at once with
    /// [`RateLimited`] (and the time to come back) when there is none, rather than taking a
    /// slot it cannot use. A request whose deadline has passed is refused even when its key has
    /// room: the deadline is then read on every call, and the clock for it only when the request
    /// carries one.
    pub fn honour_deadlines(self) -> KeyedBuilder<F, Clk, O, CarriedDeadline> {
        KeyedBuilder {
            settings: self.settings,
            key: self.key,
            max_keys: self.max_keys,
            deadline: CarriedDeadline,
        }
    }

    /// The most keys kept (default 100,000, rounded up to a multiple of 8): 16 bytes each,
    /// allocated when the layer is built. Allow a quarter more than the keys you expect to be
    /// busy at once: with 80% of the slots holding busy keys, about one new key in ten thousand
    /// takes the slot of a busy one; at 90%, about one in a hundred.
    ///
    /// Between 1 and 2^28 (268,435,456): `build` refuses others with [`ConfigError::MaxKeys`]
    /// or [`ConfigError::TooManyKeys`].
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Reads the time from `clock` (default: tokio's).
    pub fn clock<Clk2: Clock>(self, clock: Clk2) -> KeyedBuilder<F, Clk2, O, D> {
        KeyedBuilder {
            settings: self.settings.clock(clock),
            key: self.key,
            max_keys: self.max_keys,
            deadline: self.deadline,
        }
    }

    /// Sends the layer's events to `observer`: permitted and rejected (reason `RateLimited`),
    /// each with its key, and `KeyEvicted`.
    pub fn observer<O2: Observer>(self, observer: O2) -> KeyedBuilder<F, Clk, O2, D> {
        KeyedBuilder {
            settings: self.settings.observer(observer),
            key: self.key,
            max_keys: self.max_keys,
            deadline: self.deadline,
        }
    }

    /// Checks the settings and builds the layer, allocating its table of keys. Every mistake is
    /// an error, never a panic: an invalid quota ([`QuotaError`](super::QuotaError)), a maximum
    /// wait of more than about nine years, no keys or more than 2^28.
    pub fn build(self) -> Result<KeyedRateLimitLayer<F, Clk, O, D>, ConfigError>
    where
        Clk: Clock,
        O: Observer,
    {
        let (limits, source) = self.settings.build()?;
        if self.max_keys == 0 {
            return Err(ConfigError::MaxKeys);
        }
        if self.max_keys > MAX_KEYS {
            return Err(ConfigError::TooManyKeys);
        }
        Ok(KeyedRateLimitLayer {
            shared: Arc::new(Keyed {
                table: Table::new(self.max_keys),
                limits,
                source,
                holes: Arc::new(Holes::new(64)),
                rejected: Striped::new(),
            }),
            key: self.key,
            deadline: self.deadline,
        })
    }
}

impl<F, Clk, O, D> fmt::Debug for KeyedBuilder<F, Clk, O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("settings", &self.settings)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl<F, Clk, O, D> KeyedRateLimitLayer<F, Clk, O, D> {
    /// A handle on this layer's limits.
    pub fn handle(&self) -> KeyedHandle<Clk, O> {
        KeyedHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<F: Clone, Clk, O, D: Clone> Clone for KeyedRateLimitLayer<F, Clk, O, D> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            shared: self.shared.clone(),
            key: self.key.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

impl<F, Clk, O, D> fmt::Debug for KeyedRateLimitLayer<F, Clk, O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("name", &self.shared.source.name())
            .field("keys", &self.shared.table.keys())
            .finish()
    }
}

impl<S, F: Clone, Clk, O, D: Clone> Layer<S> for KeyedRateLimitLayer<F, Clk, O, D> {
    type Service = KeyedRateLimit<S, F, Clk, O, D>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

/// The service of [`KeyedRateLimitLayer`].
pub struct KeyedRateLimit<S, F, Clk: 'static = TokioClock, O: 'static = (), D = NoDeadline> {
    inner: S,
    shared: Arc<Keyed<Clk, O>>,
    key: F,
    deadline: D,
}

impl<S: Clone, F: Clone, Clk, O, D: Clone> Clone for KeyedRateLimit<S, F, Clk, O, D> {
    fn clone(&self) -> Self {
        KeyedRateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

impl<S: fmt::Debug, F, Clk, O, D> fmt::Debug for KeyedRateLimit<S, F, Clk, O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("name", &self.shared.source.name())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, F, K, Clk, O, D, Req> Service<Req> for KeyedRateLimit<S, F, Clk, O, D>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> Option<K>,
    K: Hash + fmt::Debug,
    Clk: Clock,
    O: Observer,
    D: ReadDeadline<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return KeyedResponseFuture::called(self.inner.call(req));
        };
        let shared = &*self.shared;
        let emit = shared.source.emitter();
        let now = shared.limits.now();
        let place = shared.table.locate(&key);
        // Honouring deadlines, the deadline is read on every call, the clock for it only when
        // the request carries one: a request with no time left is refused, taking nothing.
        let left = wait::time_left(self.deadline.deadline(&req));
        let (index, verdict) = match left {
            Some(0) => (0, Verdict::Reject(0)),
            _ => shared.decide(place, now, left),
        };
        match verdict {
            Verdict::Admit(slot) => {
                // Given back if the observer or the inner call panics before the call is made.
                let unused = Unused::new(&shared.table.slot(index).cell, slot);
                emit.emit_keyed(EventKind::Permitted, &key);
                let future = self.inner.call(req);
                unused.used();
                KeyedResponseFuture::called(future)
            }
            Verdict::Wait(hole) => {
                // The slot is held (given back if the call goes away) before anyone hears of
                // it: an observer that panics at `Permitted` leaves nothing reserved.
                let report = O::ENABLED.then(|| KeyReport(self.shared.clone(), format!("{key:?}")));
                let held = Waiting::new(&shared.holes, hole, report);
                emit.emit_keyed(EventKind::Permitted, &key);
                // What readiness reserved beneath is given back for the wait; a clone, made
                // ready when the slot comes, makes the call (see `waiting_service`).
                let ready = waiting_service(&mut self.inner);
                KeyedResponseFuture::waiting(held.wait(hole.due - now), ready, req)
            }
            Verdict::Reject(nanos) => {
                shared.rejected.increment();
                let limited = match left {
                    Some(0) => shared.expired(place, now),
                    _ => RateLimited {
                        retry_after: Duration::from_nanos(nanos),
                    },
                };
                // What readiness reserved beneath is given back before the refusal is reported.
                drop(ready_service(&mut self.inner));
                emit.emit_keyed(
                    EventKind::Rejected {
                        reason: RejectReason::RateLimited,
                    },
                    &key,
                );
                KeyedResponseFuture::failed(limited)
            }
        }
    }
}

/// How a keyed wait dropped before its slot is reported: `Cancelled`, with its key. Holds the
/// limiter and the key's `Debug` form.
struct KeyReport<Clk: 'static, O>(Arc<Keyed<Clk, O>>, String);

impl<Clk: Send + Sync + 'static, O: Observer> Report for KeyReport<Clk, O> {
    fn cancelled(self) {
        let KeyReport(shared, key) = self;
        shared
            .source
            .emitter()
            .emit_keyed(EventKind::Cancelled, &Written(&key));
    }
}

/// A key's `Debug` form, written as it is.
struct Written<'a>(&'a str);

impl fmt::Debug for Written<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

pin_project! {
    /// The response future of [`KeyedRateLimit`], of [`DeadlineRateLimit`](super::DeadlineRateLimit)
    /// (a global limiter that honours deadlines) and of the fleet-wide limiter: the inner call, a
    /// wait for a reserved slot followed by the call, or the failure of a call over its quota.
    pub struct KeyedResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Called {
            #[pin]
            future: S::Future,
        },
        // Waiting for the turn (`due` false), then for the service made ready for the call to
        // say it still is; the turn (its slot) is held until the call is made.
        // Fields drop in this order: the service (and what its readiness reserved beneath)
        // before the turn, whose drop reports `Cancelled`, so that an observer hearing of it
        // finds the capacity beneath given back.
        Waiting {
            pending: Option<(S, Req)>,
            wait: Wait,
            due: bool,
        },
        Failed {
            error: Option<RateLimited>,
        },
    }
}

impl<S: Service<Req>, Req> KeyedResponseFuture<S, Req> {
    pub(crate) fn called(future: S::Future) -> Self {
        KeyedResponseFuture {
            state: State::Called { future },
        }
    }

    /// Waits for `wait`, then calls `service` (made ready for this call, and asked again once
    /// the wait is over) with `req`.
    pub(crate) fn waiting(wait: Wait, service: S, req: Req) -> Self {
        KeyedResponseFuture {
            state: State::Waiting {
                wait,
                due: false,
                pending: Some((service, req)),
            },
        }
    }

    pub(crate) fn failed(error: RateLimited) -> Self {
        KeyedResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for KeyedResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Waiting { due: false, .. } => "waiting",
            State::Waiting { due: true, .. } => "readying",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("KeyedResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, Req> Future for KeyedResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Waiting { wait, due, pending } => {
                    if !*due {
                        if let Err(error) = ready!(wait.as_mut().poll_turn(cx)) {
                            this.state.set(State::Failed { error: Some(error) });
                            continue;
                        }
                        *due = true;
                    }
                    let (service, _) = pending.as_mut().expect("polled after completion");
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        // No call is made: the turn's slot goes back as the state is left.
                        this.state.set(State::Failed { error: None });
                        return Poll::Ready(Err(error.into()));
                    }
                    let (mut service, req) = pending.take().expect("checked above");
                    // The call is made before its slot counts as used: a call that panics
                    // leaves the slot to be given back with the turn.
                    let future = service.call(req);
                    wait.as_mut().used();
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// A handle on a keyed rate limiter: its quota, changeable at run time, and its keys.
pub struct KeyedHandle<Clk: 'static = TokioClock, O: 'static = ()> {
    pub(crate) shared: Arc<Keyed<Clk, O>>,
}

impl<Clk: Clock, O> KeyedHandle<Clk, O> {
    /// The quota each key gets.
    pub fn quota(&self) -> Quota {
        self.shared.limits.quota()
    }

    /// Replaces every key's quota, from the next call on.
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.shared.limits.set_quota(quota)
    }

    /// How many slots of the table hold a key (idle keys included): at most
    /// [`max_keys`](Self::max_keys).
    pub fn keys(&self) -> u64 {
        self.shared.table.keys()
    }

    /// The most keys kept.
    pub fn max_keys(&self) -> usize {
        self.shared.table.capacity()
    }

    /// The memory the table of keys takes, in bytes: fixed when the layer is built.
    pub fn memory(&self) -> usize {
        self.shared.table.memory()
    }

    /// How many calls `key` would be let through at once now (its whole burst for a key not in
    /// the table).
    pub fn available<K: Hash>(&self, key: &K) -> u64 {
        let shared = &*self.shared;
        let place = shared.table.locate(key);
        match shared.table.find(place) {
            Some(index) => shared.limits.available(&shared.table.slot(index).cell),
            None => shared.limits.available(&AtomicU64::new(0)),
        }
    }

    /// How many callers, of every key, wait for a slot they were given (with
    /// [`max_wait`](KeyedBuilder::max_wait)), from when it is reserved until their
    /// call is made in it or they leave. Counted only by callers that wait.
    pub fn waiting(&self) -> u64 {
        self.shared.holes.waiting()
    }
}

impl<Clk, O> Clone for KeyedHandle<Clk, O> {
    fn clone(&self) -> Self {
        KeyedHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<Clk, O> fmt::Debug for KeyedHandle<Clk, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("name", &self.shared.source.name())
            .field("keys", &self.shared.table.keys())
            .finish()
    }
}
