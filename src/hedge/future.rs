//! The response future of [`Hedge`](super::Hedge).

use super::layer::{Delay, Limits, Shared};
use super::{HedgeLayer, Mark};
use crate::core::anchor::CallAnchor;
use crate::core::observe::Listener;
use crate::core::{Classify, EventKind, Observer, Outcome};
use crate::retry::budget::Budget;
use crate::retry::policy::Policy;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::Service;

pin_project! {
    /// The response future of [`Hedge`](super::Hedge): the first two attempts held in place, the
    /// timer of the next hedge (armed only once the first attempt has not answered at its first
    /// poll), and, for a call that sends a third attempt, room for attempts three to
    /// [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS), allocated then.
    pub struct ResponseFuture<S, Req, C, P, M, O>
    where
        S: Service<Req>,
        O: Observer,
    {
        #[pin]
        first: Option<S::Future>,
        #[pin]
        second: Option<S::Future>,
        more: Option<Pin<Box<More<S::Future>>>>,
        #[pin]
        timer: Option<Sleep>,
        // The service hedges are sent on; `None` once no more hedges will be sent, which gives
        // back at once whatever its readiness reserved.
        service: Option<S>,
        // The request, kept to copy for hedges and to ask the policy about failures; `None` when
        // it cannot be replayed.
        request: Option<Req>,
        // The first attempt's failure, returned if every attempt fails, or at the deadline.
        primary: Option<Result<S::Response, S::Error>>,
        sent: u32,
        // An attempt has failed: a hedge that wins then did a retry's work.
        failed: bool,
        // The delay between hedges and the request's deadline, read at the first pending poll.
        delay: Option<Duration>,
        deadline: Option<Instant>,
        // When the next hedge is due, if not a delay after the first attempt.
        next: Option<Instant>,
        // A server hint: no hedge before then.
        held: Option<Instant>,
        // The service was asked for readiness for the hedge due and is not ready yet: it may
        // hold a place in a queue beneath.
        waiting: bool,
        limits: Limits,
        classify: C,
        policy: P,
        mark: M,
        sample: Sample,
        source: Listener<O>,
    }
}

pin_project! {
    /// Attempts three to five of a call, in place in one allocation.
    struct More<F> {
        #[pin]
        third: Option<F>,
        #[pin]
        fourth: Option<F>,
        #[pin]
        fifth: Option<F>,
    }
}

/// Attempt number `i + 1`'s place.
fn slot<'a, F>(
    first: &'a mut Pin<&mut Option<F>>,
    second: &'a mut Pin<&mut Option<F>>,
    more: &'a mut Option<Pin<Box<More<F>>>>,
    i: usize,
) -> Option<Pin<&'a mut Option<F>>> {
    match i {
        0 => Some(first.as_mut()),
        1 => Some(second.as_mut()),
        _ => {
            let more = more.as_mut()?.as_mut().project();
            Some(match i {
                2 => more.third,
                3 => more.fourth,
                _ => more.fifth,
            })
        }
    }
}

/// What a call's one latency sample is, for a percentile delay: the time from its first
/// attempt's start to its first success. The start is the first attempt's first poll that did not
/// answer, read then; a call whose first attempt answers at its first poll reads no clock and
/// counts as a zero latency (the time of one poll, which is under the delay's 1 ms floor unless
/// the service blocks in `poll`). A call that ends otherwise (every attempt failed, a final
/// answer, or dropped by its caller) counts the time it ran only if that is at least the delay it
/// was hedged after: it would have taken at least that long to succeed, so it is on the right
/// side of the percentile, while a shorter one may not be and is left out (as fast failures are).
/// Recorded on drop if not before.
///
/// It also holds the call's reference to the layer's shared state (window and budget), taken
/// only when the layer has either.
struct Sample {
    shared: Option<CallAnchor<Shared>>,
    // When the call started waiting: read at the first poll at which the first attempt did not
    // answer, if the call may hedge or keeps a window.
    start: Option<Instant>,
    // The delay the call read, when it reads its delay from the window.
    threshold: Option<Duration>,
    taken: bool,
}

impl Sample {
    #[inline]
    fn window(&self) -> Option<&crate::core::histogram::LatencyWindow> {
        self.shared.as_ref()?.window.as_ref()
    }

    #[inline]
    fn budget(&self) -> Option<&Budget> {
        self.shared.as_ref()?.budget.as_ref()
    }

    /// The call succeeded now: timed if it waited, a zero latency if it answered at its first
    /// poll (no clock read).
    #[inline]
    fn success(&mut self) {
        self.taken = true;
        if let Some(window) = self.window() {
            match self.start {
                Some(start) => {
                    let now = Instant::now();
                    window.record(now.saturating_duration_since(start), now);
                }
                None => window.record_zero(),
            }
        }
    }

    /// The call ended without a success (or was dropped).
    #[inline]
    fn ended(&mut self) {
        self.taken = true;
        if let (Some(window), Some(threshold), Some(start)) =
            (self.window(), self.threshold, self.start)
        {
            let now = Instant::now();
            let ran = now.saturating_duration_since(start);
            if ran >= threshold {
                window.record(ran, now);
            }
        }
    }
}

impl Drop for Sample {
    #[inline]
    fn drop(&mut self) {
        if !self.taken {
            self.ended();
        }
    }
}

/// What a finished attempt means for its call.
enum Verdict {
    /// A success: it wins.
    Won,
    /// A final answer: it ends the call.
    Final,
    /// A failure the policy would retry: the next hedge goes at once.
    Next,
    /// A failure the policy declined without ending the call: no more hedges.
    NoMore,
    /// A failure the policy declined because the body cannot be sent now: hedges wait for it
    /// (and with no attempt left in flight, the call ends).
    Later,
}

impl<S, Req, C, P, M, O> ResponseFuture<S, Req, C, P, M, O>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    P: Policy<Req, S::Response, S::Error> + Clone,
    M: Mark<Req> + Clone,
    O: Observer,
{
    #[inline]
    pub(super) fn start(mut service: S, req: Req, layer: &HedgeLayer<C, P, M, O>) -> Self {
        let request = if layer.limits.max_attempts > 1 {
            layer.policy.replay(&req)
        } else {
            None
        };
        if let Some(budget) = &layer.budget {
            budget.record_request();
        }
        // No clock read: a call answered at its first poll needs none, and one that waits reads
        // it then.
        let future = service.call(req);
        ResponseFuture {
            first: Some(future),
            second: None,
            more: None,
            timer: None,
            service: request.is_some().then_some(service),
            request,
            primary: None,
            sent: 1,
            failed: false,
            delay: None,
            deadline: None,
            next: None,
            held: None,
            waiting: false,
            limits: layer.limits,
            classify: layer.classify.clone(),
            policy: layer.policy.clone(),
            mark: layer.mark.clone(),
            sample: Sample {
                shared: (layer.shared.window.is_some() || layer.shared.budget.is_some())
                    .then(|| layer.shared.call()),
                start: None,
                threshold: None,
                taken: false,
            },
            source: Listener::new(&layer.source),
        }
    }
}

impl<S, Req, C, P, M, O> fmt::Debug for ResponseFuture<S, Req, C, P, M, O>
where
    S: Service<Req>,
    O: Observer,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("sent", &self.sent)
            .field("hedging", &self.service.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P, M, O> Future for ResponseFuture<S, Req, C, P, M, O>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    P: Policy<Req, S::Response, S::Error>,
    M: Mark<Req>,
    O: Observer,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (mut first, mut second, more) = (this.first, this.second, this.more);
        let mut timer = this.timer;
        loop {
            // The clock, read at most once an iteration, when first needed.
            let mut clock = None;
            // Every attempt in flight, in the order they were sent.
            for i in 0..*this.sent as usize {
                let Some(mut place) = slot(&mut first, &mut second, more, i) else {
                    continue;
                };
                let Some(future) = place.as_mut().as_pin_mut() else {
                    continue;
                };
                let Poll::Ready(result) = future.poll(cx) else {
                    continue;
                };
                place.set(None);
                let attempt = i as u32 + 1;
                let verdict = match this.classify.classify(&result) {
                    Outcome::Success => Verdict::Won,
                    Outcome::Ignored => Verdict::Final,
                    Outcome::Failure => match this.request.as_ref() {
                        // Not hedged: the one attempt's failure is the answer.
                        None => Verdict::Next,
                        Some(request) if this.policy.should_retry(request, &result) => {
                            Verdict::Next
                        }
                        // Another attempt may be sending the body: this one could not, and
                        // its failure says nothing of the others.
                        Some(request) if !this.policy.can_replay(request) => Verdict::Later,
                        Some(request) if !this.policy.ends_call(request, &result) => {
                            Verdict::NoMore
                        }
                        Some(_) => Verdict::Final,
                    },
                };
                match verdict {
                    Verdict::Won | Verdict::Final => {
                        // The attempts still running are dropped now, and so is the service.
                        first.set(None);
                        second.set(None);
                        *more = None;
                        *this.service = None;
                        *this.primary = None;
                        if let Verdict::Won = verdict {
                            this.sample.success();
                            if let Some(budget) = this.sample.budget() {
                                // A token bucket's refund: a winning hedge sent after a failure
                                // did a retry's work and gives its cost back, as a retry would;
                                // one sent only because the call was slow is paid for, and the
                                // call refunds as one that succeeded at once.
                                budget.record_success(if *this.failed { attempt - 1 } else { 0 });
                            }
                            if attempt > 1 {
                                // The call is settled first: an observer that panics here
                                // leaves it ended, not cancelled.
                                this.source.done_with(EventKind::HedgeWon { attempt });
                            }
                        } else {
                            this.sample.ended();
                        }
                        this.source.done();
                        return Poll::Ready(result);
                    }
                    Verdict::Next => {
                        // The next hedge goes at once, unless the server asked to wait: past
                        // `max_hint`, the server is not waited for, and no more hedges go.
                        let now = read(&mut clock);
                        *this.next = Some(now);
                        if let Some(hint) = this.classify.retry_after(&result) {
                            match now.checked_add(hint) {
                                Some(until) if hint <= this.limits.max_hint => {
                                    *this.held = Some(this.held.map_or(until, |h| h.max(until)))
                                }
                                _ => *this.service = None,
                            }
                        }
                    }
                    Verdict::NoMore => *this.service = None,
                    Verdict::Later => {}
                }
                *this.failed = true;
                if attempt == 1 {
                    *this.primary = Some(result);
                }
            }
            let in_flight = first.is_some()
                || second.is_some()
                || more
                    .as_ref()
                    .is_some_and(|m| m.third.is_some() || m.fourth.is_some() || m.fifth.is_some());
            if *this.sent >= this.limits.max_attempts {
                *this.service = None;
            }
            // With no attempt in flight, a request whose copy cannot be sent now never will be
            // (its body was too large to keep): the call ends now, not a delay later.
            if !in_flight
                && this.service.is_some()
                && this
                    .request
                    .as_ref()
                    .is_some_and(|request| !this.policy.can_replay(request))
            {
                *this.service = None;
            }
            // The first attempt has not answered at its first poll: the call starts waiting now,
            // the base of the hedge delay and of its latency sample.
            if this.sample.start.is_none()
                && (this.service.is_some() || this.sample.window().is_some())
            {
                this.sample.start = Some(read(&mut clock));
            }
            let Some(service) = this.service.as_mut() else {
                if in_flight {
                    // The first attempt's failure is in hand: it is the answer at the deadline,
                    // which a timeout above would otherwise replace with its own error.
                    let Some(deadline) = this.deadline.filter(|_| this.primary.is_some()) else {
                        return Poll::Pending;
                    };
                    if arm(timer.as_mut(), deadline, cx).is_pending() {
                        return Poll::Pending;
                    }
                    first.set(None);
                    second.set(None);
                    *more = None;
                }
                // Every attempt failed, or the deadline came: the first one's answer.
                let Some(primary) = this.primary.take() else {
                    panic!("a hedge's response future was polled after it returned");
                };
                this.sample.ended();
                this.source.done();
                return Poll::Ready(primary);
            };
            let request = this
                .request
                .as_ref()
                .expect("a call is hedged only if its request can be replayed");
            let start = this
                .sample
                .start
                .expect("a call that may hedge has started waiting");
            // When the next hedge is due: read once, when the first attempt is still running.
            let delay = match *this.delay {
                Some(delay) => delay,
                None => {
                    let window = this.sample.window();
                    let delay = match this.limits.delay {
                        Delay::Fixed(delay) => Some(delay),
                        Delay::Percentile => window.and_then(|w| w.percentile(start)),
                    };
                    let Some(delay) = delay else {
                        // Too few latencies known yet: no hedging.
                        *this.service = None;
                        continue;
                    };
                    *this.delay = Some(delay);
                    if window.is_some() {
                        this.sample.threshold = Some(delay);
                    }
                    *this.deadline = this.policy.deadline(request).map(|d| d.instant());
                    delay
                }
            };
            let due = match this.next {
                Some(next) => Some(*next),
                None => start.checked_add(delay),
            };
            let due = due.map(|due| this.held.map_or(due, |held| due.max(held)));
            let due = match (due, *this.deadline) {
                // Nothing is hedged at or past the deadline.
                (Some(due), Some(deadline)) if due >= deadline => None,
                (due, _) => due,
            };
            let Some(due) = due else {
                *this.service = None;
                continue;
            };
            let now = read(&mut clock);
            // A hedge already due (after a failure, or one polled late) goes without the timer,
            // which would only fire at the timer driver's next turn.
            if due > now {
                if *this.waiting {
                    // The hedge waited for readiness and is no longer due (a server hint moved
                    // it): a fresh clone of the service holds no place beneath.
                    *service = service.clone();
                    *this.waiting = false;
                }
                if arm(timer.as_mut(), due, cx).is_pending() {
                    return Poll::Pending;
                }
            }
            let attempt = *this.sent + 1;
            // The cheap checks first: the service's readiness may reserve capacity beneath.
            if this.deadline.is_some_and(|deadline| now >= deadline) {
                *this.service = None;
                continue;
            }
            if !this.policy.can_replay(request) {
                // Another attempt is still sending the body: look again a delay later. With
                // no attempt left to send it, it never will be.
                match now.checked_add(delay) {
                    Some(later) if in_flight => *this.next = Some(later),
                    _ => *this.service = None,
                }
                continue;
            }
            if this.sample.budget().is_some_and(|b| !b.has_one()) {
                *this.service = None;
                this.source
                    .emit(EventKind::HedgeBudgetExhausted { attempt });
                continue;
            }
            match service.poll_ready(cx) {
                Poll::Pending => {
                    *this.waiting = true;
                    // Past the deadline the hedge will not be sent: be woken then, to give
                    // back the place it waits in.
                    if let Some(deadline) = *this.deadline {
                        if arm(timer.as_mut(), deadline, cx).is_ready() {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                // The service cannot take another attempt: the ones in flight decide.
                Poll::Ready(Err(_)) => {
                    *this.service = None;
                    *this.waiting = false;
                    this.source
                        .emit(EventKind::HedgeReadinessFailed { attempt });
                    continue;
                }
                Poll::Ready(Ok(())) => *this.waiting = false,
            }
            // Ready: what it reserved is used now, or given back now.
            let now = Instant::now();
            if this.deadline.is_some_and(|deadline| now >= deadline) {
                *this.service = None;
                continue;
            }
            if !this.policy.can_replay(request) {
                *service = service.clone();
                continue;
            }
            // The copy first: a hedge the policy will not copy costs nothing.
            let Some(mut req) = this.policy.replay(request) else {
                *this.service = None;
                continue;
            };
            if this.sample.budget().is_some_and(|b| !b.try_withdraw()) {
                *this.service = None;
                this.source
                    .emit(EventKind::HedgeBudgetExhausted { attempt });
                continue;
            }
            this.mark.mark(&mut req, attempt);
            let future = service.call(req);
            let i = *this.sent as usize;
            if i >= 2 && more.is_none() {
                *more = Some(Box::pin(More {
                    third: None,
                    fourth: None,
                    fifth: None,
                }));
            }
            slot(&mut first, &mut second, more, i)
                .expect("room for every attempt up to MAX_ATTEMPTS")
                .set(Some(future));
            *this.sent = attempt;
            match now.checked_add(delay) {
                Some(next) => *this.next = Some(next),
                None => *this.service = None,
            }
            this.source.emit(EventKind::HedgeSent { attempt });
        }
    }
}

/// The clock as read in this iteration, reading it if not yet.
#[inline]
fn read(clock: &mut Option<Instant>) -> Instant {
    *clock.get_or_insert_with(Instant::now)
}

/// Sets `timer` to fire at `at` (creating it the first time) and polls it.
fn arm(mut timer: Pin<&mut Option<Sleep>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    match timer.as_mut().as_pin_mut() {
        Some(sleep) => {
            if sleep.deadline() != at {
                sleep.reset(at);
            }
        }
        None => timer.set(Some(tokio::time::sleep_until(at))),
    }
    match timer.as_pin_mut() {
        Some(sleep) => sleep.poll(cx),
        None => Poll::Ready(()),
    }
}
