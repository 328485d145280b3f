//! The admission gate: one [`Service`] and one response future for every layer that admits or rejects
//! calls (circuit breaker today; bulkhead and limiters reuse it).
//!
//! A [`Gate`] is a policy. It decides in [`poll_acquire`](Gate::poll_acquire) whether a call may go
//! ahead, and learns in [`complete`](Gate::complete) how it went. [`Guard`] is the `Service` that
//! drives any gate: it reserves a permit in `poll_ready`, moves it into [`GuardFuture`] in `call`,
//! classifies the inner result, and hands the permit back through [`cancel`](Gate::cancel) if the
//! future or the service is dropped first, so a cancelled call never counts as a failure and never
//! leaks a slot.
//!
//! Implement [`Gate`] to add a policy of your own; wrap it with [`GateLayer`].

pub(crate) use super::anchor::Anchor;
use super::anchor::CallAnchor;
use super::{
    Classify, Emitter, ErrorIsFailure, EventKind, Observer, Outcome, Record, RejectReason, Source,
};
use crate::sync::Striped;
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// An admission policy: circuit breaker, bulkhead, adaptive limiter, rate limiter, throttle.
///
/// The methods are called concurrently from every clone of every service built from one layer, so
/// state lives in atomics. None of them may block.
///
/// # Example
///
/// A gate that admits at most `max` calls in its lifetime:
///
/// ```
/// use seawall::core::{Emitter, Gate, GateLayer, Observer, Record};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::task::{Context, Poll};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("quota used up")]
/// struct QuotaUsedUp;
///
/// struct Quota { left: AtomicU64 }
///
/// impl Gate for Quota {
///     type Permit = ();
///     type Rejection = QuotaUsedUp;
///     type Waiter = ();
///
///     fn poll_acquire<O: Observer>(
///         &self,
///         _: &mut Context<'_>,
///         _: &mut (),
///         _: Emitter<'_, O>,
///     ) -> Poll<Result<(), QuotaUsedUp>> {
///         let taken = self.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
///         Poll::Ready(taken.map(drop).map_err(|_| QuotaUsedUp))
///     }
///     fn complete<O: Observer>(&self, _: (), _: &Record, _: Emitter<'_, O>) {}
///     fn cancel<O: Observer>(&self, _: (), _: Emitter<'_, O>) {
///         self.left.fetch_add(1, Ordering::AcqRel);
///     }
///     fn wants_latency(&self) -> bool { false }
/// }
///
/// let layer = GateLayer::new("quota", Quota { left: AtomicU64::new(1000) });
/// # drop(layer);
/// ```
pub trait Gate: Send + Sync + 'static {
    /// Carried by an admitted call until it ends.
    type Permit: Send + 'static;
    /// Why a call was not admitted; returned (boxed) from the response future.
    type Rejection: std::error::Error + Send + Sync + 'static;
    /// What one service keeps while it waits for a permit: its place in a queue, its timer. `()`
    /// for gates that never make callers wait. Dropping it (with the service) leaves the queue.
    type Waiter: Default + Send + 'static;

    /// Admits the call (`Ready(Ok(permit))`), rejects it (`Ready(Err(rejection))`), or, for gates that
    /// queue, keeps the caller's place in `waiter`, registers `cx`'s waker and returns `Pending`.
    fn poll_acquire<O: Observer>(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Self::Waiter,
        emit: Emitter<'_, O>,
    ) -> Poll<Result<Self::Permit, Self::Rejection>>;

    /// An admitted call finished.
    fn complete<O: Observer>(&self, permit: Self::Permit, record: &Record, emit: Emitter<'_, O>);

    /// An admitted call was dropped before it finished: give back what it held and count nothing.
    fn cancel<O: Observer>(&self, permit: Self::Permit, emit: Emitter<'_, O>);

    /// A permit reserved in `poll_ready` was never used: the service was dropped, or its inner
    /// service failed readiness, before any call was made (as when a layer above refuses the
    /// request, or axum drops its per-request clone). Give back what it held. The default is
    /// [`cancel`](Gate::cancel); gates whose `cancel` keeps something on purpose, because a call
    /// that started may have reached the service, give it back here.
    fn release_unused<O: Observer>(&self, permit: Self::Permit, emit: Emitter<'_, O>) {
        self.cancel(permit, emit)
    }

    /// The call `permit` admits is being made now: the service beneath is ready and the request
    /// is handed to it. For a gate that times its calls from here rather than from admission,
    /// which may come long before (while the caller waits for the service beneath to be ready,
    /// a buffer or a bulkhead further down). Does nothing by default.
    #[inline(always)]
    fn calling(&self, permit: &mut Self::Permit) {
        let _ = permit;
    }

    /// The key of the call `permit` admits, which the events that end the call (`Finished`,
    /// `Cancelled`) carry: asked just before [`complete`](Gate::complete) or
    /// [`cancel`](Gate::cancel), and only when the observer listens. `None`, the default, for a
    /// gate whose calls have no key (a gate with one state per key, as the keyed breaker, says
    /// which).
    fn key_of(&self, permit: &Self::Permit) -> Option<impl fmt::Debug + Send + 'static> {
        let _ = permit;
        None::<()>
    }

    /// Whether any rule needs call timing. When neither this nor the observer wants it, the clock is
    /// never read on the call path.
    fn wants_latency(&self) -> bool;

    /// Whether admitted calls come back to the gate: [`complete`](Gate::complete) when they end,
    /// [`cancel`](Gate::cancel) when they are dropped first. A gate that settles everything when it
    /// admits a call, and does nothing in those two, says `false`: unless the observer wants events,
    /// its response futures then keep no reference to it, which saves two atomic operations a call.
    const FOLLOWS_CALLS: bool = true;

    /// Whether a permit reserved earlier still answers for the gate's state now. A service that
    /// holds one and is polled again asks this, and gives the permit back and asks the gate anew
    /// when it does not (a breaker's permit from a closed period that has since ended). Only
    /// repeated polls ask: the one `poll_ready` before each `call` never does. `true` by default.
    fn still_valid(&self, permit: &Self::Permit) -> bool {
        let _ = permit;
        true
    }

    /// Whether a rejection stays with the service until `call` even if the service is polled
    /// again, instead of the gate being asked anew. `false` by default: a rejection answers for the
    /// moment it was found. A gate whose refusal is a random draw that it records (the client-side
    /// throttle) says `true`: asking again would draw again, until some draw admitted the call, and
    /// count one request many times.
    const KEEPS_REJECTION: bool = false;

    /// Whether [`Record::retry_after`] should be filled in for failures.
    fn wants_retry_after(&self) -> bool {
        false
    }

    /// The reason reported to observers for a rejection.
    fn reject_reason(rejection: &Self::Rejection) -> RejectReason {
        let _ = rejection;
        RejectReason::Other
    }
}

/// A gate with its name and observer: the state every service made by one layer shares.
pub(crate) struct Shared<G, O> {
    pub(crate) gate: G,
    pub(crate) source: Source<O>,
    /// Calls turned away, counted when a rejection is handed to its caller (what `health`
    /// reports). Written only on that cold path, on lines of their own so that those writes
    /// never slow the admitted calls' reads of the gate, and striped by thread so that the
    /// threads of a surge, rejecting at once, do not write one line.
    rejected: Striped,
}

impl<G, O> Shared<G, O> {
    pub(crate) fn new(name: Cow<'static, str>, gate: G, observer: O) -> Self {
        Shared::from_source(gate, Source::new(name, observer))
    }

    pub(crate) fn from_source(gate: G, source: Source<O>) -> Self {
        Shared {
            gate,
            source,
            rejected: Striped::new(),
        }
    }

    /// Counts one call turned away.
    #[cold]
    pub(crate) fn count_rejected(&self) {
        self.rejected.increment();
    }

    /// Calls turned away since the layer was built.
    #[cfg_attr(
        not(all(
            feature = "health",
            any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
        )),
        allow(dead_code)
    )]
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.sum()
    }

    #[inline(always)]
    pub(crate) fn emitter(&self) -> Emitter<'_, O> {
        self.source.emitter()
    }

    pub(crate) fn name(&self) -> &str {
        self.source.name()
    }
}

/// The permit of a call in flight; gives it back to the gate if dropped before the call finished.
pub(crate) struct PermitGuard<G: Gate, O: Observer> {
    shared: CallAnchor<Shared<G, O>>,
    permit: Option<G::Permit>,
}

impl<G: Gate, O: Observer> PermitGuard<G, O> {
    #[inline]
    fn complete(&mut self, record: Record) {
        if let Some(permit) = self.permit.take() {
            let shared = &*self.shared;
            let emit = shared.emitter();
            let key = O::ENABLED.then(|| shared.gate.key_of(&permit)).flatten();
            shared.gate.complete(permit, &record, emit);
            let finished = EventKind::Finished {
                outcome: record.outcome,
                latency: record.latency,
            };
            match &key {
                Some(key) => emit.emit_keyed(finished, key),
                None => emit.emit(finished),
            }
        }
    }
}

impl<G: Gate, O: Observer> Drop for PermitGuard<G, O> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let shared = &*self.shared;
            let emit = shared.emitter();
            let key = O::ENABLED.then(|| shared.gate.key_of(&permit)).flatten();
            shared.gate.cancel(permit, emit);
            match &key {
                Some(key) => emit.emit_keyed_from_drop(EventKind::Cancelled, key),
                None => emit.emit_from_drop(EventKind::Cancelled),
            }
        }
    }
}

/// A service's hold on its gate, with the permit `poll_ready` reserved and `call` has not used
/// yet; gives that permit back if dropped first.
///
/// The permit stays a bare `G::Permit` until `call` wraps it with its own reference to the gate:
/// `call` then moves one small value, written and read at the same width, instead of a whole
/// [`PermitGuard`] just written field by field (a wide read of narrow fresh writes stalls the CPU).
struct Reserved<G: Gate, O: Observer> {
    shared: Anchor<Shared<G, O>>,
    permit: Option<G::Permit>,
}

impl<G: Gate, O: Observer> Reserved<G, O> {
    /// Gives a reserved permit back to the gate. No event: the permit was never reported
    /// `Permitted` (that is sent by `call`), and a slot given back unused (a layer above refused the
    /// request, the service was dropped or polled again) is no call, admitted or cancelled.
    fn give_back(&mut self) {
        if let Some(permit) = self.permit.take() {
            let shared = &*self.shared;
            shared.gate.release_unused(permit, shared.emitter());
        }
    }

    /// Gives the reserved permit back if it no longer answers for the gate's state. Out of line:
    /// only a service polled again before its call gets here.
    #[cold]
    #[inline(never)]
    fn recheck(&mut self) {
        if let Some(permit) = &self.permit {
            if !self.shared.gate.still_valid(permit) {
                self.give_back();
            }
        }
    }
}

impl<G: Gate, O: Observer> Drop for Reserved<G, O> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The one `Service` behind every gate layer: reserves a permit from its [`Gate`] in `poll_ready`,
/// moves it into [`GuardFuture`] in `call`, classifies the result, and gives the permit back if the
/// future or the service is dropped first.
pub struct Guard<S, G: Gate, C, O: Observer> {
    inner: S,
    classify: C,
    // The permit is kept apart from the rejection rather than as one `Option<Result<..>>`, so the
    // common path moves the permit alone, not the rejection's bytes too.
    reserved: Reserved<G, O>,
    rejected: Option<G::Rejection>,
    waiter: G::Waiter,
}

impl<S, G: Gate, C, O: Observer> Guard<S, G, C, O> {
    pub(crate) fn from_shared(inner: S, shared: Anchor<Shared<G, O>>, classify: C) -> Self {
        Guard {
            inner,
            classify,
            reserved: Reserved {
                shared,
                permit: None,
            },
            rejected: None,
            waiter: G::Waiter::default(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the guard, returning the inner service. A reserved permit is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, G: Gate, C: Clone, O: Observer> Clone for Guard<S, G, C, O> {
    /// A clone shares the gate but never the original's reservation.
    fn clone(&self) -> Self {
        Guard::from_shared(
            self.inner.clone(),
            self.reserved.shared.clone(),
            self.classify.clone(),
        )
    }
}

impl<S: fmt::Debug, G: Gate, C: fmt::Debug, O: Observer> fmt::Debug for Guard<S, G, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.reserved.shared.name())
            .field("inner", &self.inner)
            .field("classify", &self.classify)
            .field("reserved", &self.reserved.permit.is_some())
            .field("rejected", &self.rejected.is_some())
            .finish()
    }
}

impl<S, G, C, O, Req> Service<Req> for Guard<S, G, C, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    G: Gate,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = GuardFuture<S::Future, G, C, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.reserved.permit.is_some() {
            // Polled again while holding a permit: keep it only if it still answers for now.
            self.reserved.recheck();
        }
        if self.reserved.permit.is_none() {
            if G::KEEPS_REJECTION && self.rejected.is_some() {
                return Poll::Ready(Ok(()));
            }
            // A rejection found by an earlier `poll_ready` answers for the state then: a caller
            // that polls readiness long before it calls (a balancer, `ReadyCache`, `select!`) asks
            // the gate again, and is rejected only if the gate still says no.
            self.rejected = None;
            let shared = &*self.reserved.shared;
            let emit = shared.emitter();
            match ready!(shared.gate.poll_acquire(cx, &mut self.waiter, emit)) {
                // Reported `Permitted` when `call` uses it: a permit given back unused (a layer
                // above refused the request in its `call`) admitted nobody.
                Ok(permit) => self.reserved.permit = Some(permit),
                Err(rejection) => {
                    // A rejection is ready at once and fails in the future, so readiness counts
                    // once and the layer works under axum, which assumes services are always ready.
                    // It is reported when `call` hands it out: a service polled again, or dropped
                    // without a call, rejected nobody.
                    self.rejected = Some(rejection);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        if let Err(e) = ready!(self.inner.poll_ready(cx)) {
            self.reserved.give_back();
            return Poll::Ready(Err(e.into()));
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if self.reserved.permit.is_some() {
            let anchor = &self.reserved.shared;
            // Nothing to report to a gate that does not follow calls, or to an observer that
            // ignores events: the permit ends here.
            let follow = G::FOLLOWS_CALLS || O::ENABLED;
            let shared = &**anchor;
            let start =
                follow && (shared.gate.wants_latency() || shared.source.observer().wants_latency());
            let start = start.then(Instant::now);
            let classify = self.classify.clone();
            if let Some(permit) = &mut self.reserved.permit {
                shared.gate.calling(permit);
            }
            // The inner call is made while the service still holds the permit: if it panics (an
            // inner layer's observer, say), the service gives the permit back when dropped.
            let future = self.inner.call(req);
            // Sent once the inner call is made, while the service still holds the permit: an
            // observer that panics cannot leak it (the service gives it back when dropped), and a
            // panic of the inner call caught above (a catch-panic layer) leaves a permit that was
            // never reported, so the next call reports it once.
            anchor.emitter().emit(EventKind::Permitted);
            let Some(permit) = self.reserved.permit.take() else {
                unreachable!("held above, and the inner service cannot reach it");
            };
            let admitted = |permit| GuardFuture {
                kind: Kind::Admitted {
                    future,
                    permit,
                    classify,
                    start,
                },
            };
            if !follow {
                return admitted(None);
            }
            // The whole future built around the reference, in place (see `Anchor::with_call`).
            return anchor.with_call(|shared| {
                admitted(Some(PermitGuard {
                    shared,
                    permit: Some(permit),
                }))
            });
        }
        let rejection = self
            .rejected
            .take()
            .expect("poll_ready must be called first");
        self.reserved.shared.count_rejected();
        self.reserved.shared.emitter().emit(EventKind::Rejected {
            reason: G::reject_reason(&rejection),
        });
        GuardFuture {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Guard`]: the inner call with its permit, or a rejection.
    pub struct GuardFuture<F, G: Gate, C, O: Observer> {
        #[pin]
        kind: Kind<F, G, C, O>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, G: Gate, C, O: Observer> {
        Admitted {
            #[pin]
            future: F,
            permit: Option<PermitGuard<G, O>>,
            classify: C,
            start: Option<Instant>,
        },
        Rejected {
            rejection: Option<G::Rejection>,
        },
    }
}

impl<F, G: Gate, C, O: Observer> GuardFuture<F, G, C, O> {
    /// The future of a call admitted with `permit` by a layer that decides in `call` (the keyed
    /// breaker): `make` makes the inner call once the permit is held, so that a panic there gives
    /// the permit back.
    #[cfg(feature = "circuit-breaker")]
    #[inline]
    pub(crate) fn admitted(
        anchor: &Anchor<Shared<G, O>>,
        permit: G::Permit,
        classify: C,
        start: Option<Instant>,
        make: impl FnOnce() -> F,
    ) -> Self {
        anchor.with_call(|shared| {
            let guard = PermitGuard {
                shared,
                permit: Some(permit),
            };
            let future = make();
            GuardFuture {
                kind: Kind::Admitted {
                    future,
                    permit: Some(guard),
                    classify,
                    start,
                },
            }
        })
    }

    /// The future of a call `rejection` turned away.
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn rejected(rejection: G::Rejection) -> Self {
        GuardFuture {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

impl<F, G: Gate, C, O: Observer> fmt::Debug for GuardFuture<F, G, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Admitted { .. } => "admitted",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("GuardFuture").field("kind", &kind).finish()
    }
}

impl<F, G, C, O, T, E> Future for GuardFuture<F, G, C, O>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    G: Gate,
    C: Classify<T, E>,
    O: Observer,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted {
                future,
                permit,
                classify,
                start,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit {
                    let outcome = classify.classify(&result);
                    let mut record = Record::new(outcome);
                    if let Some(start) = *start {
                        let now = Instant::now();
                        record = record.with_timing(now.saturating_duration_since(start), now);
                    }
                    if outcome == Outcome::Failure && permit.shared.gate.wants_retry_after() {
                        record.retry_after = classify.retry_after(&result);
                    }
                    permit.complete(record);
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { rejection } => Poll::Ready(Err(rejection
                .take()
                .expect("GuardFuture polled after completion")
                .into())),
        }
    }
}

/// Makes a call a gate admitted outside [`Guard`] (a layer that decides in `call`, such as a
/// bulkhead honouring deadlines), as `Guard::call` does: `permit` is held while `call` makes the
/// inner call and `Permitted` is sent, and given back unused if either panics; then it moves
/// into the response future, which classifies the result and completes the permit.
#[cfg_attr(not(feature = "bulkhead"), allow(dead_code))]
#[inline]
pub(crate) fn admit<F, G: Gate, C, O: Observer>(
    anchor: &Anchor<Shared<G, O>>,
    mut permit: G::Permit,
    classify: C,
    call: impl FnOnce() -> F,
) -> GuardFuture<F, G, C, O> {
    let shared = &**anchor;
    let follow = G::FOLLOWS_CALLS || O::ENABLED;
    let start = follow && (shared.gate.wants_latency() || shared.source.observer().wants_latency());
    let start = start.then(Instant::now);
    shared.gate.calling(&mut permit);
    let mut held = Unused {
        shared,
        permit: Some(permit),
    };
    let future = call();
    shared.emitter().emit(EventKind::Permitted);
    let Some(permit) = held.permit.take() else {
        unreachable!("held above");
    };
    let admitted = |permit| GuardFuture {
        kind: Kind::Admitted {
            future,
            permit,
            classify,
            start,
        },
    };
    if !follow {
        return admitted(None);
    }
    anchor.with_call(|shared| {
        admitted(Some(PermitGuard {
            shared,
            permit: Some(permit),
        }))
    })
}

/// Refuses a call outside [`Guard`] (a layer that decides in `call`): counts and reports the
/// rejection, as `Guard::call` does when it hands one out, and returns the future that fails
/// with it.
#[cfg_attr(not(feature = "bulkhead"), allow(dead_code))]
#[cold]
pub(crate) fn refuse<F, G: Gate, C, O: Observer>(
    shared: &Shared<G, O>,
    rejection: G::Rejection,
) -> GuardFuture<F, G, C, O> {
    shared.count_rejected();
    shared.emitter().emit(EventKind::Rejected {
        reason: G::reject_reason(&rejection),
    });
    GuardFuture {
        kind: Kind::Rejected {
            rejection: Some(rejection),
        },
    }
}

/// A permit held while its call is being made ([`admit`]): given back unused if that panics.
struct Unused<'a, G: Gate, O: Observer> {
    shared: &'a Shared<G, O>,
    permit: Option<G::Permit>,
}

impl<G: Gate, O: Observer> Drop for Unused<'_, G, O> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared
                .gate
                .release_unused(permit, self.shared.emitter());
        }
    }
}

/// A [`Layer`] for any [`Gate`]: the way to use a gate of your own.
///
/// The gate is created once and shared by every service the layer makes.
pub struct GateLayer<G: 'static, C = ErrorIsFailure, O: 'static = ()> {
    shared: Anchor<Shared<G, O>>,
    classify: C,
}

impl<G: Gate> GateLayer<G> {
    /// A layer over `gate`, named `name`, with the default classifier and no observer.
    pub fn new(name: impl Into<Cow<'static, str>>, gate: G) -> Self {
        GateLayer {
            shared: Anchor::counted(Shared::new(name.into(), gate, ())),
            classify: ErrorIsFailure,
        }
    }

    /// A layer over `gate` whose events go to `observer`.
    #[deprecated(note = "use `GateLayer::builder(gate).name(name).observer(observer).build()`")]
    pub fn with_observer<O: Observer>(
        name: impl Into<Cow<'static, str>>,
        gate: G,
        observer: O,
    ) -> GateLayer<G, ErrorIsFailure, O> {
        GateLayer {
            shared: Anchor::counted(Shared::new(name.into(), gate, observer)),
            classify: ErrorIsFailure,
        }
    }

    /// Starts a [`GateBuilder`] over `gate`: named `"gate"`, the default classifier, no observer,
    /// as [`name`](GateBuilder::name), [`observer`](GateBuilder::observer) and
    /// [`classify`](GateBuilder::classify) change; [`build`](GateBuilder::build) or
    /// [`build_static`](GateBuilder::build_static) make the layer.
    ///
    /// ```
    /// use seawall::core::{Emitter, Event, Gate, GateLayer, Observer, Record};
    /// use std::task::{Context, Poll};
    ///
    /// /// Admits every call.
    /// struct Open;
    ///
    /// impl Gate for Open {
    ///     type Permit = ();
    ///     type Rejection = std::convert::Infallible;
    ///     type Waiter = ();
    ///
    ///     fn poll_acquire<O: Observer>(
    ///         &self,
    ///         _: &mut Context<'_>,
    ///         _: &mut (),
    ///         _: Emitter<'_, O>,
    ///     ) -> Poll<Result<(), std::convert::Infallible>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///     fn complete<O: Observer>(&self, _: (), _: &Record, _: Emitter<'_, O>) {}
    ///     fn cancel<O: Observer>(&self, _: (), _: Emitter<'_, O>) {}
    ///     fn wants_latency(&self) -> bool { false }
    /// }
    ///
    /// let layer = GateLayer::builder(Open)
    ///     .name("quota")
    ///     .observer(|event: &Event<'_>| println!("{:?}", event.kind))
    ///     .build();
    /// # drop(layer);
    /// ```
    pub fn builder(gate: G) -> GateBuilder<G> {
        GateBuilder {
            gate,
            name: Cow::Borrowed("gate"),
            classify: ErrorIsFailure,
            observer: (),
        }
    }

    /// Like [`new`](Self::new), for a gate that lives as long as the process: it is leaked on purpose
    /// (never freed), and in exchange admitted calls never touch a reference count. Build such
    /// layers once, at start-up, never per request.
    pub fn new_static(name: impl Into<Cow<'static, str>>, gate: G) -> Self {
        GateLayer {
            shared: Anchor::leaked(Shared::new(name.into(), gate, ())),
            classify: ErrorIsFailure,
        }
    }
}

/// Builds a [`GateLayer`] with a name, an observer and a classifier: see
/// [`GateLayer::builder`]. Nothing in it can be wrong, so its `build`s return the layer.
#[derive(Debug)]
pub struct GateBuilder<G, C = ErrorIsFailure, O = ()> {
    gate: G,
    name: Cow<'static, str>,
    classify: C,
    observer: O,
}

impl<G: Gate, C, O: Observer> GateBuilder<G, C, O> {
    /// The layer's name, in events (default `"gate"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends the layer's events to `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> GateBuilder<G, C, O2> {
        GateBuilder {
            gate: self.gate,
            name: self.name,
            classify: self.classify,
            observer,
        }
    }

    /// Classifies the calls' results (default: an `Err` is a failure).
    pub fn classify<C2>(self, classify: C2) -> GateBuilder<G, C2, O> {
        GateBuilder {
            gate: self.gate,
            name: self.name,
            classify,
            observer: self.observer,
        }
    }

    /// The layer, its gate shared by every service it makes.
    pub fn build(self) -> GateLayer<G, C, O> {
        GateLayer {
            shared: Anchor::counted(Shared::new(self.name, self.gate, self.observer)),
            classify: self.classify,
        }
    }

    /// The layer, its gate leaked on purpose, as [`GateLayer::new_static`] does: build it once,
    /// at start-up.
    pub fn build_static(self) -> GateLayer<G, C, O> {
        GateLayer {
            shared: Anchor::leaked(Shared::new(self.name, self.gate, self.observer)),
            classify: self.classify,
        }
    }
}

impl<G: Gate, C, O: Observer> GateLayer<G, C, O> {
    /// Replaces the classifier.
    pub fn classify<C2>(self, classify: C2) -> GateLayer<G, C2, O> {
        GateLayer {
            shared: self.shared,
            classify,
        }
    }

    /// The gate.
    pub fn gate(&self) -> &G {
        &self.shared.gate
    }
}

impl<G, C: Clone, O> Clone for GateLayer<G, C, O> {
    fn clone(&self) -> Self {
        GateLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<G, C: fmt::Debug, O> fmt::Debug for GateLayer<G, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateLayer")
            .field("name", &self.shared.name())
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, G: Gate, C: Clone, O: Observer> Layer<S> for GateLayer<G, C, O> {
    type Service = Guard<S, G, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::from_shared(inner, self.shared.clone(), self.classify.clone())
    }
}
