//! The bulkhead's gate deciding in `call`, where the request and its deadline are known
//! ([`Builder::honour_deadlines`](super::Builder::honour_deadlines)), for the bulkhead and the
//! adaptive limiter alike.

use super::error::Full;
use super::state::{Bulkhead, Waiter};
use crate::core::gate::{admit, refuse, Anchor, Shared};
use crate::core::{Classify, Deadline, DeadlineCarrier, ErrorIsFailure, Gate, GuardFuture};
use crate::core::{Observer, RejectReason};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

/// The gates that run on the bulkhead's slots and queue, and so can decide in `call`:
/// [`Bulkhead`] and the adaptive limiter's gate. Sealed: it describes seawall's own gates.
pub trait QueueGate: Gate<Rejection = Full, Waiter = Waiter> + sealed::Sealed {
    /// The slots and the queue.
    #[doc(hidden)]
    fn bulkhead(&self) -> &Bulkhead;

    /// The permit of a call that has just been given its slot.
    #[doc(hidden)]
    fn slotted(&self) -> Self::Permit;

    /// The gate's own rejection for one of the bulkhead's.
    #[doc(hidden)]
    fn refusal(full: Full) -> Full {
        full
    }
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for Bulkhead {}

impl QueueGate for Bulkhead {
    #[inline(always)]
    fn bulkhead(&self) -> &Bulkhead {
        self
    }

    #[inline(always)]
    fn slotted(&self) {}
}

/// The service of a bulkhead (or, as
/// [`DeadlineAdaptiveLimit`](crate::limit::DeadlineAdaptiveLimit), of an adaptive limiter) built
/// with [`honour_deadlines`](super::Builder::honour_deadlines): admission is decided in `call`,
/// where the request's [`Deadline`] can be read.
///
/// It is as ready as the service beneath and reserves nothing in `poll_ready`. A call that finds
/// a slot free (and nobody queued) is made at once, as under [`BulkheadService`](super::BulkheadService).
/// One that must queue waits in its response future, for as long as controlled delay and
/// `max_wait` allow and never past its deadline, and fails with [`Full`] (`waited_too_long`;
/// 503 and `Retry-After`) when that time is up, never with a timeout; once it has its slot, it
/// is made on a clone of the inner service made ready for it (so the inner service must be
/// `Clone`): the service made ready in `poll_ready` is given back for the wait, so that what its
/// readiness reserved beneath is not held by a call that only queues. If the deadline passes
/// while that clone readies, the slot goes to the next in the queue and the call fails with
/// `Full` (`waited_too_long`) all the same. A call that must queue and whose deadline has
/// passed fails at once with `Full` (`waited_too_long`, having waited zero), taking no place in
/// the queue. The deadline is read only by a call that must queue: one that finds a slot free
/// waits for nothing, and is made whatever its deadline (no look-up in the request, no clock
/// read), as under `BulkheadService`. Dropped while it queues, a call leaves the queue at once; dropped once it
/// has its slot but before it was made, it gives the slot back, to the next in the queue.
///
/// ```
/// use seawall::bulkhead::{error::Full, BulkheadLayer, Codel};
/// use seawall::core::{Deadline, DeadlineCarrier};
/// use std::time::Duration;
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// /// A request with the deadline its caller gave it (`http::Request` carries one, with feature
/// /// `http`, put there by a propagating `TimeoutLayer` or a `ReadDeadlineLayer` above).
/// struct Query(Option<Deadline>);
///
/// impl DeadlineCarrier for Query {
///     fn deadline(&self) -> Option<Deadline> {
///         self.0
///     }
///     fn set_deadline(&mut self, deadline: Deadline) {
///         self.0 = Some(deadline);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let bulkhead = BulkheadLayer::builder()
///     .max_concurrent(1)
///     .queue(32)
///     .codel(Codel::default()) // up to 100 ms in the queue...
///     .honour_deadlines() // ...but never past the request's deadline
///     .build()
///     .unwrap();
/// let mut service = bulkhead.layer(service_fn(|_: Query| async {
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     Ok::<_, std::io::Error>("done")
/// }));
/// let within = |ms| Query(Some(Deadline::after(Duration::from_millis(ms))));
/// let slow = service.ready().await.unwrap().call(within(5_000)); // holds the only slot
/// let err = service.ready().await.unwrap().call(within(30)).await.unwrap_err();
/// assert_eq!(err.downcast_ref::<Full>().unwrap().waited(), Duration::from_millis(30));
/// # drop(slow);
/// # }
/// ```
pub struct DeadlineBulkhead<S, C = ErrorIsFailure, O: 'static = (), G: 'static = Bulkhead> {
    inner: S,
    shared: Anchor<Shared<G, O>>,
    classify: C,
}

impl<S, C, O, G> DeadlineBulkhead<S, C, O, G> {
    pub(crate) fn new(inner: S, shared: Anchor<Shared<G, O>>, classify: C) -> Self {
        DeadlineBulkhead {
            inner,
            shared,
            classify,
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

    /// Consumes the service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A clone shares the gate, and holds no reservation: this service never holds one.
impl<S: Clone, C: Clone, O, G> Clone for DeadlineBulkhead<S, C, O, G> {
    fn clone(&self) -> Self {
        DeadlineBulkhead {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, O, G> fmt::Debug for DeadlineBulkhead<S, C, O, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineBulkhead")
            .field("name", &self.shared.name())
            .field("inner", &self.inner)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, C, O, G, Req> Service<Req> for DeadlineBulkhead<S, C, O, G>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
    G: QueueGate,
    Req: DeadlineCarrier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S, C, O, G, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // A call that finds a slot free waits for nothing, so its deadline caps nothing: it is
        // not read (no look-up in the request, no clock), and this path costs what the
        // `poll_ready` one does.
        let gate = &self.shared.gate;
        if gate.bulkhead().try_admit() {
            let permit = gate.slotted();
            let inner = &mut self.inner;
            return DeadlineFuture::called(admit(
                &self.shared,
                permit,
                self.classify.clone(),
                || inner.call(req),
            ));
        }
        self.queue(req)
    }
}

impl<S, C, O, G> DeadlineBulkhead<S, C, O, G>
where
    C: Clone,
    O: Observer,
    G: QueueGate,
{
    /// Every slot taken, or callers queued: joins the queue (never past the request's deadline),
    /// or is refused at once. The deadline is read here, and only here.
    #[inline(never)]
    fn queue<Req>(&mut self, req: Req) -> DeadlineFuture<S, C, O, G, Req>
    where
        S: Service<Req> + Clone,
        Req: DeadlineCarrier,
    {
        // The clock is read only for a request that carries a deadline.
        let deadline = req.deadline();
        if deadline.is_some_and(Deadline::is_expired) {
            return self.refuse(Full::new(RejectReason::QueueTimeout, Duration::ZERO));
        }
        let gate = &self.shared.gate;
        let mut waiter = Waiter::default();
        match gate
            .bulkhead()
            .join(&mut waiter, None, deadline.map(Deadline::instant))
        {
            // A slot freed meanwhile.
            Some(Ok(())) => {
                let permit = gate.slotted();
                let inner = &mut self.inner;
                DeadlineFuture::called(admit(&self.shared, permit, self.classify.clone(), || {
                    inner.call(req)
                }))
            }
            Some(Err(full)) => self.refuse(G::refusal(full)),
            None => {
                let since = waiter.since().expect("queued");
                let timer = waiter.until().map(tokio::time::sleep_until);
                let service = waiting_service(&mut self.inner);
                DeadlineFuture {
                    state: State::Queued {
                        queued: Box::pin(Queued {
                            shared: self.shared.clone(),
                            waiter,
                            since,
                            deadline,
                            timer,
                            slot: None,
                            pending: Some((service, req)),
                            classify: self.classify.clone(),
                        }),
                    },
                }
            }
        }
    }

    /// Refuses a call: what readiness reserved beneath is given back, and the refusal counted
    /// and reported. Dropping the service made ready is the only way tower has to give that
    /// back, so the clone that replaces it stays: kept, a refused caller that holds its service
    /// idle would hold a reservation further down (a slot of a bulkhead beneath) with no call.
    #[cold]
    #[inline(never)]
    fn refuse<Req>(&mut self, full: Full) -> DeadlineFuture<S, C, O, G, Req>
    where
        S: Service<Req> + Clone,
    {
        let fresh = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, fresh));
        DeadlineFuture::called(refuse(&self.shared, full))
    }
}

/// The service a call that queues is made on once it has its slot: a clone, made ready then.
/// The one made ready now is dropped, so that what its readiness reserved beneath (a slot of a
/// bulkhead further down) is not held through the wait; and `inner` keeps a clone for the next
/// call, so a client that makes its calls one after another on one service never holds two
/// reservations.
fn waiting_service<S: Clone>(inner: &mut S) -> S {
    let fresh = inner.clone();
    drop(std::mem::replace(inner, fresh));
    inner.clone()
}

pin_project! {
    /// A call in the queue, then with its slot until it is made; boxed, so that only calls that
    /// queue pay for its size (its timer's too).
    struct Queued<S, C, O, G, Req>
    where
        O: Observer,
        G: QueueGate,
    {
        shared: Anchor<Shared<G, O>>,
        // The call's place in the queue, left when dropped.
        waiter: Waiter,
        // When it joined the queue.
        since: Instant,
        deadline: Option<Deadline>,
        // Until the slot comes, the end of the wait the queue allows (controlled delay,
        // `max_wait`, the deadline); then the deadline, until the call is made.
        #[pin]
        timer: Option<Sleep>,
        // The call's slot once the queue gave it, until the call is made: given back if dropped
        // first (the call went away, the service beneath failed readiness, or the deadline
        // passed while it readied).
        slot: Option<G::Permit>,
        // The service the call is made on (made ready once the slot came), and the request.
        pending: Option<(S, Req)>,
        classify: C,
    }

    impl<S, C, O, G, Req> PinnedDrop for Queued<S, C, O, G, Req>
    where
        O: Observer,
        G: QueueGate,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(permit) = this.slot.take() {
                // Never made: no call to report, as for a reservation given back unused.
                this.shared.gate.release_unused(permit, this.shared.emitter());
            }
        }
    }
}

/// How a queued call's turn ends: the call made (or refused by the gate), or the service
/// beneath failed.
type Turn<S, C, O, G, Req> = Result<GuardFuture<<S as Service<Req>>::Future, G, C, O>, BoxError>;

pin_project! {
    /// The response future of [`DeadlineBulkhead`]: the call made at once (or its refusal), or a
    /// wait in the queue followed by the call.
    pub struct DeadlineFuture<S, C, O, G, Req>
    where
        S: Service<Req>,
        O: Observer,
        G: QueueGate,
    {
        #[pin]
        state: State<S, C, O, G, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, C, O, G, Req>
    where
        S: Service<Req>,
        O: Observer,
        G: QueueGate,
    {
        Called {
            #[pin]
            future: GuardFuture<S::Future, G, C, O>,
        },
        Queued {
            queued: Pin<Box<Queued<S, C, O, G, Req>>>,
        },
        Done,
    }
}

impl<S, C, O, G, Req> DeadlineFuture<S, C, O, G, Req>
where
    S: Service<Req>,
    O: Observer,
    G: QueueGate,
{
    #[inline(always)]
    fn called(future: GuardFuture<S::Future, G, C, O>) -> Self {
        DeadlineFuture {
            state: State::Called { future },
        }
    }
}

impl<S, C, O, G, Req> fmt::Debug for DeadlineFuture<S, C, O, G, Req>
where
    S: Service<Req>,
    O: Observer,
    G: QueueGate,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Queued { queued } if queued.slot.is_none() => "queued",
            State::Queued { .. } => "readying",
            State::Done => "done",
        };
        f.debug_struct("DeadlineFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, C, O, G, Req> Future for DeadlineFuture<S, C, O, G, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
    G: QueueGate,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let queued = match this.state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx),
                StateProj::Queued { queued } => queued.as_mut(),
                StateProj::Done => panic!("DeadlineFuture polled after completion"),
            };
            match ready!(queued.poll_turn(cx)) {
                Ok(future) => this.state.set(State::Called { future }),
                Err(error) => {
                    // The slot goes back as the wait is dropped.
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

impl<S, C, O, G, Req> Queued<S, C, O, G, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Clone,
    O: Observer,
    G: QueueGate,
{
    /// Waits for the slot, then for the service beneath; makes the call then (`Ok`), or fails:
    /// refused by the gate (a future failing with its rejection), or the service beneath failed
    /// (`Err`). Neither wait goes past the request's deadline.
    #[inline(never)]
    fn poll_turn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Turn<S, C, O, G, Req>> {
        let mut this = self.project();
        let shared = &*this.shared;
        let gate = &shared.gate;
        if this.slot.is_none() {
            let expired = match this.timer.as_mut().as_pin_mut() {
                Some(timer) => timer.poll(cx).is_ready(),
                None => false,
            };
            if let Err(full) = ready!(gate.bulkhead().poll_queued(cx, this.waiter, expired)) {
                return Poll::Ready(Ok(refuse(shared, G::refusal(full))));
            }
            // A slot that comes at or after the deadline is of no use: the call could only time
            // out. It goes back, to the next in the queue, and the call fails as one that waited
            // its time.
            if this.deadline.is_some_and(Deadline::is_expired) {
                gate.bulkhead().release();
                return Poll::Ready(Ok(Self::too_late(shared, *this.since)));
            }
            *this.slot = Some(gate.slotted());
            // From now on the deadline alone bounds the wait, for the service beneath.
            match this.deadline {
                Some(deadline) => match this.timer.as_mut().as_pin_mut() {
                    Some(timer) => timer.reset(deadline.instant()),
                    None => this
                        .timer
                        .set(Some(tokio::time::sleep_until(deadline.instant()))),
                },
                None => this.timer.set(None),
            }
        }
        let (service, _) = this.pending.as_mut().expect("polled after completion");
        let ready = match service.poll_ready(cx) {
            Poll::Ready(ready) => ready,
            Poll::Pending => {
                let expired = match this.timer.as_mut().as_pin_mut() {
                    Some(timer) => timer.poll(cx).is_ready(),
                    None => false,
                };
                if !expired {
                    return Poll::Pending;
                }
                // The deadline passed while the service beneath readied: the slot goes back, to
                // the next in the queue, unused.
                if let Some(permit) = this.slot.take() {
                    gate.release_unused(permit, shared.emitter());
                }
                return Poll::Ready(Ok(Self::too_late(shared, *this.since)));
            }
        };
        if let Err(error) = ready {
            // No call is made: the slot goes back as the future ends.
            return Poll::Ready(Err(error.into()));
        }
        let (mut service, req) = this.pending.take().expect("checked above");
        let permit = this.slot.take().expect("given above");
        Poll::Ready(Ok(admit(shared, permit, this.classify.clone(), || {
            service.call(req)
        })))
    }

    /// The refusal of a call whose deadline came before it could be made.
    #[cold]
    fn too_late(shared: &Anchor<Shared<G, O>>, since: Instant) -> GuardFuture<S::Future, G, C, O> {
        let full = Full::new(RejectReason::QueueTimeout, since.elapsed());
        refuse(shared, G::refusal(full))
    }
}
