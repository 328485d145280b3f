//! The response future of [`Hedge`](super::Hedge).

use super::layer::{Delay, Limits, Shared};
use super::{HedgeLayer, Mark};
use crate::core::anchor::CallAnchor;
use crate::core::observe::Listener;
use crate::core::{Classify, EventKind, Observer, Outcome};
use crate::retry::budget::{Budget, BudgetCall};
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
    /// The response future of [`Hedge`](super::Hedge): the attempts in flight (at most
    /// [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS), held in place, none boxed), and the timer of the
    /// next hedge, armed only once the first attempt has not answered at its first poll.
    pub struct ResponseFuture<S, Req, C, P, M, O>
    where
        S: Service<Req>,
        O: Observer,
    {
        #[pin]
        a1: Option<S::Future>,
        #[pin]
        a2: Option<S::Future>,
        #[pin]
        a3: Option<S::Future>,
        #[pin]
        a4: Option<S::Future>,
        #[pin]
        a5: Option<S::Future>,
        #[pin]
        timer: Option<Sleep>,
        service: S,
        // The request, kept to copy for hedges and to ask the policy about failures; `None` when
        // it cannot be replayed.
        request: Option<Req>,
        // No more hedges will be sent.
        stopped: bool,
        // The first attempt's failure, returned if every attempt fails.
        primary: Option<Result<S::Response, S::Error>>,
        start: Instant,
        starts: [Instant; 5],
        sent: u32,
        // The delay between hedges and the request's deadline, read at the first pending poll.
        delay: Option<Duration>,
        deadline: Option<Instant>,
        // When the next hedge is due, if not a delay after the last attempt sent.
        next: Option<Instant>,
        // A server hint: no hedge before then.
        held: Option<Instant>,
        // The budget paid for the hedge that waits for the service's readiness.
        withdrawn: bool,
        limits: Limits,
        classify: C,
        policy: P,
        mark: M,
        shared: CallAnchor<Shared>,
        budget: Option<BudgetCall>,
        source: Listener<O>,
    }
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
        let start = Instant::now();
        let future = service.call(req);
        ResponseFuture {
            a1: Some(future),
            a2: None,
            a3: None,
            a4: None,
            a5: None,
            timer: None,
            service,
            request,
            stopped: false,
            primary: None,
            start,
            starts: [start; 5],
            sent: 1,
            delay: None,
            deadline: None,
            next: None,
            held: None,
            withdrawn: false,
            limits: layer.limits,
            classify: layer.classify.clone(),
            policy: layer.policy.clone(),
            mark: layer.mark.clone(),
            shared: layer.shared.call(),
            budget: layer.budget.as_ref().map(Budget::call),
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
            .field("hedging", &(self.request.is_some() && !self.stopped))
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P, M, O> Future for ResponseFuture<S, Req, C, P, M, O>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    P: Policy<Req, S::Response, S::Error>,
    M: Mark<Req>,
    O: Observer,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut slots = [this.a1, this.a2, this.a3, this.a4, this.a5];
        let mut timer = this.timer;
        let window = this.shared.window.as_ref();
        loop {
            // Every attempt in flight, in the order they were sent.
            for i in 0..*this.sent as usize {
                let Some(future) = slots[i].as_mut().as_pin_mut() else {
                    continue;
                };
                let Poll::Ready(result) = future.poll(cx) else {
                    continue;
                };
                slots[i].set(None);
                let attempt = i as u32 + 1;
                let outcome = this.classify.classify(&result);
                let retryable = outcome == Outcome::Failure
                    && match this.request.as_ref() {
                        Some(request) => this.policy.should_retry(request, &result),
                        // Not hedged: the one attempt's failure is the answer.
                        None => true,
                    };
                if retryable {
                    // The next hedge goes at once, unless the server asked to wait.
                    let now = Instant::now();
                    *this.next = Some(now);
                    if let Some(hint) = this.classify.retry_after(&result) {
                        match now.checked_add(hint) {
                            Some(until) => {
                                *this.held = Some(this.held.map_or(until, |h| h.max(until)))
                            }
                            None => *this.stopped = true,
                        }
                    }
                    if attempt == 1 {
                        *this.primary = Some(result);
                    }
                    continue;
                }
                // A success wins; a final answer (ignored, or a failure the policy will not
                // retry) ends the call. Either way the attempts still running are dropped now.
                let success = outcome == Outcome::Success;
                let now = window.filter(|_| success).map(|_| Instant::now());
                for (j, slot) in slots.iter_mut().enumerate() {
                    if slot.is_some() {
                        slot.set(None);
                        // A loser, cancelled: it took at least this long.
                        if let (Some(window), Some(now)) = (window, now) {
                            window.record(now.saturating_duration_since(this.starts[j]), now);
                        }
                    }
                }
                if let (Some(window), Some(now)) = (window, now) {
                    window.record(now.saturating_duration_since(this.starts[i]), now);
                }
                if success {
                    if let Some(budget) = this.budget {
                        // As for a retry: a winning hedge gives its cost back to a token bucket.
                        budget.record_success(attempt - 1);
                    }
                    if attempt > 1 {
                        this.source.emit(EventKind::HedgeWon { attempt });
                    }
                }
                this.source.done();
                return Poll::Ready(result);
            }
            let in_flight = slots.iter().any(|slot| slot.is_some());
            if this.request.is_none() || *this.stopped || *this.sent >= this.limits.max_attempts {
                if in_flight {
                    return Poll::Pending;
                }
                // Every attempt failed: the first one's answer.
                this.source.done();
                return Poll::Ready(
                    this.primary
                        .take()
                        .expect("the first attempt's failure is kept until the call ends"),
                );
            }
            // When the next hedge is due: read once, when the first attempt is still running.
            let delay = match *this.delay {
                Some(delay) => delay,
                None => {
                    let delay = match this.limits.delay {
                        Delay::Fixed(delay) => Some(delay),
                        Delay::Percentile => window.and_then(|w| w.percentile(*this.start)),
                    };
                    let Some(delay) = delay else {
                        // Too few latencies known yet: no hedging.
                        *this.stopped = true;
                        continue;
                    };
                    *this.delay = Some(delay);
                    *this.deadline = this
                        .request
                        .as_ref()
                        .and_then(|r| this.policy.deadline(r))
                        .map(|d| d.instant());
                    delay
                }
            };
            let due = match this.next {
                Some(next) => Some(*next),
                None => this.start.checked_add(delay),
            };
            let due = due.map(|due| this.held.map_or(due, |held| due.max(held)));
            let due = match (due, *this.deadline) {
                // Nothing is hedged at or past the deadline.
                (Some(due), Some(deadline)) if due >= deadline => None,
                (due, _) => due,
            };
            let Some(due) = due else {
                *this.stopped = true;
                continue;
            };
            // A hedge already due (after a failure, or one polled late) goes without the timer,
            // which would only fire at the timer driver's next turn.
            if due > Instant::now() {
                match timer.as_mut().as_pin_mut() {
                    Some(sleep) => {
                        if sleep.deadline() != due {
                            sleep.reset(due);
                        }
                    }
                    None => timer.set(Some(tokio::time::sleep_until(due))),
                }
                if let Some(sleep) = timer.as_mut().as_pin_mut() {
                    if sleep.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
            let attempt = *this.sent + 1;
            if !*this.withdrawn {
                if let Some(budget) = this.budget {
                    if !budget.try_withdraw() {
                        *this.stopped = true;
                        this.source
                            .emit(EventKind::HedgeBudgetExhausted { attempt });
                        continue;
                    }
                }
                *this.withdrawn = true;
            }
            // Capacity is asked for only now that the hedge is due, and used at once.
            match this.service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                // The service cannot take another attempt: the ones in flight decide.
                Poll::Ready(Err(_)) => {
                    *this.stopped = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            let now = Instant::now();
            if this.deadline.is_some_and(|deadline| now >= deadline) {
                *this.stopped = true;
                continue;
            }
            let Some(mut req) = this.request.as_ref().and_then(|r| this.policy.replay(r)) else {
                *this.stopped = true;
                continue;
            };
            this.mark.mark(&mut req, attempt);
            let i = *this.sent as usize;
            slots[i].set(Some(this.service.call(req)));
            this.starts[i] = now;
            *this.sent = attempt;
            *this.withdrawn = false;
            match now.checked_add(delay) {
                Some(next) => *this.next = Some(next),
                None => *this.stopped = true,
            }
            this.source.emit(EventKind::HedgeSent { attempt });
        }
    }
}
