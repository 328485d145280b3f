//! The response future of [`Retry`](super::Retry).

use super::budget::{Budget, BudgetCall};
use super::config::Limits;
use super::policy::Policy;
use super::RetryLayer;
use crate::core::observe::Listener;
use crate::core::{Classify, EventKind, GiveUpReason, Observer, Outcome, RetryReason};
use pin_project_lite::pin_project;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::Service;

pin_project! {
    /// The response future of [`Retry`](super::Retry): the current attempt, a backoff, or the wait
    /// for the inner service's readiness before the next attempt.
    #[project = Proj]
    pub struct ResponseFuture<S, Req, C, P, O>
    where
        S: Service<Req>,
        O: Observer,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // A copy of the request for the next attempt; `None` when it may not be retried.
        request: Option<Req>,
        // The failed attempt being retried, kept while the retry has a time limit (the request's
        // deadline, the layer's `max_elapsed`): should the limit come before the next attempt can
        // start, the caller gets this answer. With a deadline it is kept through the next attempt
        // too: should the deadline end that attempt, the caller gets this answer, not a timeout.
        last: Option<Result<S::Response, S::Error>>,
        // That limit, and the reason to give up when it comes.
        limit: Option<(Instant, GiveUpReason)>,
        // The request's deadline, when the retry scheduled is bounded by one.
        deadline: Option<Instant>,
        attempt: u32,
        previous_delay: Duration,
        // Set when a rule or the observer needs time.
        start: Option<Instant>,
        attempt_start: Option<Instant>,
        rng: Option<SmallRng>,
        seed: Option<u64>,
        limits: Limits,
        classify: C,
        policy: P,
        budget: Option<BudgetCall>,
        source: Listener<O>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
            // The request's deadline, while the answer of the attempt before is kept: when it
            // passes with this attempt unfinished, that answer is the call's.
            #[pin]
            cutoff: Option<Sleep>,
        },
        // The backoff, then (`readying`) the wait for the inner service's readiness, which `sleep`
        // (reset to it) bounds by the retry's time limit when it has one.
        Waiting {
            #[pin]
            sleep: Sleep,
            readying: bool,
        },
    }
}

/// What to do after a failed attempt.
enum Next {
    /// Wait `delay` (until the instant), for this reason, before the time limit if there is one
    /// (and the request's deadline, if it has one).
    Retry(
        Duration,
        RetryReason,
        Instant,
        Option<(Instant, GiveUpReason)>,
        Option<Instant>,
    ),
    GiveUp(GiveUpReason),
}

/// The time limit came while the next attempt waited for the inner service: the caller gets the
/// answer of the attempt that failed last.
fn give_up_at_limit<S, Req, C, P, O>(
    this: &mut Proj<'_, S, Req, C, P, O>,
) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
    P: Policy<Req, S::Response, S::Error>,
    O: Observer,
{
    let reason = this
        .limit
        .map_or(GiveUpReason::Deadline, |(_, reason)| reason);
    give_up_with_last(this, reason)
}

/// Ends the call with the answer of the attempt that failed last, kept for this, giving up for
/// `reason`.
fn give_up_with_last<S, Req, C, P, O>(
    this: &mut Proj<'_, S, Req, C, P, O>,
    reason: GiveUpReason,
) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
    P: Policy<Req, S::Response, S::Error>,
    O: Observer,
{
    let attempts = *this.attempt;
    // The call is settled first: an observer that panics here leaves it ended, not cancelled.
    this.source
        .done_with(EventKind::GaveUp { attempts, reason });
    match this.last.take() {
        Some(last) => this.policy.give_up(reason, attempts, last),
        // Not reached: a limit is only set together with the answer it keeps.
        None => unreachable!("a retry gives up at its limit only with the answer it kept"),
    }
}

impl<S, Req, C, P, O> ResponseFuture<S, Req, C, P, O>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    P: Policy<Req, S::Response, S::Error> + Clone,
    O: Observer,
{
    #[inline]
    pub(super) fn start(mut service: S, req: Req, layer: &RetryLayer<C, P, O>) -> Self {
        let request = if layer.limits.max_retries > 0 {
            layer.policy.replay(&req)
        } else {
            None
        };
        if let Some(budget) = &layer.budget {
            budget.record_request();
        }
        let source = Listener::new(&layer.source);
        let timed = source.wants_latency();
        let start = (timed || layer.limits.max_elapsed.is_some()).then(Instant::now);
        source.emit(EventKind::AttemptStarted { attempt: 1 });
        let future = service.call(req);
        ResponseFuture {
            state: State::Calling {
                future,
                cutoff: None,
            },
            service,
            request,
            last: None,
            limit: None,
            deadline: None,
            attempt: 1,
            previous_delay: Duration::ZERO,
            start,
            attempt_start: if timed { start } else { None },
            rng: None,
            seed: layer
                .sessions
                .as_ref()
                .map(|(seed, sessions)| session_seed(*seed, sessions)),
            limits: layer.limits,
            classify: layer.classify.clone(),
            policy: layer.policy.clone(),
            budget: layer.budget.as_ref().map(Budget::call),
            source,
        }
    }
}

/// The seed of the next session of a seeded layer: sessions differ, runs repeat.
fn session_seed(seed: u64, sessions: &std::sync::atomic::AtomicU64) -> u64 {
    let session = sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    seed ^ session.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<S, Req, C, P, O> fmt::Debug for ResponseFuture<S, Req, C, P, O>
where
    S: Service<Req>,
    O: Observer,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Calling { .. } => "calling",
            State::Waiting {
                readying: false, ..
            } => "waiting",
            State::Waiting { .. } => "readying",
        };
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .field("state", &state)
            .finish()
    }
}

impl<S, Req, C, P, O> Future for ResponseFuture<S, Req, C, P, O>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    P: Policy<Req, S::Response, S::Error>,
    O: Observer,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future, cutoff } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            // The deadline passed with the attempt unfinished: the answer in hand
                            // is the call's (a timeout above would otherwise replace it). The cut
                            // attempt is reported finished, neither failed nor succeeded, so that
                            // every attempt started is one finished.
                            if let Some(sleep) = cutoff.as_pin_mut() {
                                if sleep.poll(cx).is_ready() {
                                    this.source.emit(EventKind::AttemptFinished {
                                        attempt: *this.attempt,
                                        outcome: Outcome::Ignored,
                                        latency: this.attempt_start.map(|t| t.elapsed()),
                                    });
                                    return Poll::Ready(give_up_with_last(
                                        &mut this,
                                        GiveUpReason::Deadline,
                                    ));
                                }
                            }
                            return Poll::Pending;
                        }
                    };
                    let attempt = *this.attempt;
                    let outcome = this.classify.classify(&result);
                    this.source.emit(EventKind::AttemptFinished {
                        attempt,
                        outcome,
                        latency: this.attempt_start.map(|t| t.elapsed()),
                    });
                    // An attempt that failed once the deadline had passed was cut by it (by a
                    // timeout beneath): the answer of the attempt before is the call's.
                    let cut = this.last.is_some()
                        && cutoff
                            .as_ref()
                            .get_ref()
                            .as_ref()
                            .is_some_and(|sleep| sleep.deadline() <= Instant::now());
                    if outcome == Outcome::Failure && cut {
                        return Poll::Ready(give_up_with_last(&mut this, GiveUpReason::Deadline));
                    }
                    *this.last = None;
                    if outcome != Outcome::Failure {
                        if outcome == Outcome::Success {
                            if let Some(budget) = this.budget {
                                budget.record_success(attempt - 1);
                            }
                        }
                        this.source.done();
                        return Poll::Ready(result);
                    }
                    match decide(&mut this, &result) {
                        Next::Retry(delay, reason, resume, limit, deadline) => {
                            *this.previous_delay = delay;
                            this.source.emit(EventKind::RetryScheduled {
                                attempt: attempt + 1,
                                delay,
                                reason,
                            });
                            *this.limit = limit;
                            *this.deadline = deadline;
                            if limit.is_some() {
                                *this.last = Some(result);
                            }
                            let sleep = tokio::time::sleep_until(resume);
                            this.state.set(State::Waiting {
                                sleep,
                                readying: false,
                            });
                        }
                        Next::GiveUp(reason) => {
                            // Settled first, as in `give_up_with_last`.
                            this.source.done_with(EventKind::GaveUp {
                                attempts: attempt,
                                reason,
                            });
                            return Poll::Ready(this.policy.give_up(reason, attempt, result));
                        }
                    }
                }
                StateProj::Waiting {
                    mut sleep,
                    readying,
                } => {
                    let limit = *this.limit;
                    if !*readying {
                        ready!(sleep.as_mut().poll(cx));
                        *readying = true;
                        if let Some((at, _)) = limit {
                            // The wait for readiness ends at the time limit at the latest.
                            sleep.as_mut().reset(at);
                        }
                    }
                    // Capacity is asked for only now, after the backoff, never held through it.
                    match this.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            this.source.done();
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            if limit.is_some() && sleep.poll(cx).is_ready() {
                                return Poll::Ready(give_up_at_limit(&mut this));
                            }
                            return Poll::Pending;
                        }
                    }
                    // Ready, but maybe only after the limit: an attempt then could not finish.
                    if limit.is_some_and(|(at, _)| at <= Instant::now()) {
                        return Poll::Ready(give_up_at_limit(&mut this));
                    }
                    // Past this point only a deadline keeps the answer in hand (see `cutoff`).
                    *this.limit = None;
                    let cutoff = match this.deadline.take() {
                        Some(at) if this.last.is_some() => Some(tokio::time::sleep_until(at)),
                        _ => {
                            *this.last = None;
                            None
                        }
                    };
                    *this.attempt += 1;
                    let req = this
                        .request
                        .take()
                        .expect("a retry is only scheduled with a copy of its request");
                    // The last attempt sends the copy itself; others keep another for the next
                    // (if the policy cannot make one, this attempt is the last).
                    if *this.attempt <= this.limits.max_retries {
                        *this.request = this.policy.replay(&req);
                    }
                    this.source.emit(EventKind::AttemptStarted {
                        attempt: *this.attempt,
                    });
                    if this.attempt_start.is_some() {
                        *this.attempt_start = Some(Instant::now());
                    }
                    let future = this.service.call(req);
                    this.state.set(State::Calling { future, cutoff });
                }
            }
        }
    }
}

/// Whether and when to retry a failed attempt: the limits in the order of their cost, the budget
/// last, so that it is only drawn on for a retry that will happen.
fn decide<S, Req, C, P, O, T, E>(
    this: &mut Proj<'_, S, Req, C, P, O>,
    result: &Result<T, E>,
) -> Next
where
    S: Service<Req, Response = T, Error = E>,
    C: Classify<T, E>,
    P: Policy<Req, T, E>,
    O: Observer,
{
    let retry = *this.attempt; // the number of the retry to come
    if retry > this.limits.max_retries {
        return Next::GiveUp(GiveUpReason::Attempts);
    }
    let Some(request) = this.request.as_ref() else {
        return Next::GiveUp(GiveUpReason::NotRetryable);
    };
    if !this.policy.should_retry(request, result) {
        return Next::GiveUp(GiveUpReason::NotRetryable);
    }
    let rng = this.rng.get_or_insert_with(|| match this.seed {
        Some(seed) => SmallRng::seed_from_u64(*seed),
        None => SmallRng::from_rng(&mut rand::rng()),
    });
    let (delay, reason) = match this.classify.retry_after(result) {
        Some(hint) if hint > this.limits.max_hint => {
            return Next::GiveUp(GiveUpReason::HintTooLong);
        }
        // Never earlier than the server asked, and spread over half as long again.
        Some(hint) => {
            let spread = u64::try_from(hint.as_nanos() / 2).unwrap_or(u64::MAX);
            let extra = Duration::from_nanos(rng.random_range(0..=spread));
            (hint.saturating_add(extra), RetryReason::ServerHint)
        }
        None => (
            this.limits.backoff.delay(retry, *this.previous_delay, rng),
            RetryReason::Backoff,
        ),
    };
    let now = Instant::now();
    let Some(resume) = now.checked_add(delay) else {
        // Beyond the clock's range: no deadline or limit could be met.
        return Next::GiveUp(GiveUpReason::Elapsed);
    };
    let mut limit = None;
    let deadline = this.policy.deadline(request).map(|d| d.instant());
    if let Some(deadline) = deadline {
        if resume >= deadline {
            return Next::GiveUp(GiveUpReason::Deadline);
        }
        limit = Some((deadline, GiveUpReason::Deadline));
    }
    if let (Some(max), Some(start)) = (this.limits.max_elapsed, *this.start) {
        if resume.saturating_duration_since(start) >= max {
            return Next::GiveUp(GiveUpReason::Elapsed);
        }
        // The earlier of the two limits bounds the wait for readiness.
        if let Some(end) = start.checked_add(max) {
            if limit.is_none_or(|(at, _)| end < at) {
                limit = Some((end, GiveUpReason::Elapsed));
            }
        }
    }
    if let Some(budget) = this.budget {
        if !budget.try_withdraw() {
            return Next::GiveUp(GiveUpReason::Budget);
        }
    }
    Next::Retry(delay, reason, resume, limit, deadline)
}
