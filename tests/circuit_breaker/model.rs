//! The breaker against a simple reference model, over random sequences of calls, completions,
//! cancellations and time.

use proptest::prelude::*;
use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
use seawall::core::{CircuitState, Outcome};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_test::task;
use tower::{BoxError, Layer, Service};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Success,
    Failure,
    Ignored,
}

#[derive(Clone, Debug)]
enum Op {
    /// A call that finishes at once.
    Call(Kind),
    /// A call that stays in flight until `Finish` or `Cancel`.
    Start(Kind),
    Finish(usize),
    Cancel(usize),
    Advance(u64),
}

#[derive(Clone, Debug)]
struct Cfg {
    /// The count window's size; with `time`, only an upper bound for `minimum`.
    window: usize,
    /// A time window instead: bucket length in milliseconds, and buckets.
    time: Option<(u64, u64)>,
    /// The slow-call rule: percent, and the duration in milliseconds.
    slow: Option<(u32, u64)>,
    minimum: usize,
    rate: u32,
    consecutive: Option<u32>,
    probes: u32,
    open_ms: u64,
    max_open_ms: u64,
    max_wait_ms: u64,
}

/// What the test's backend answers: the receiver says the outcome.
#[derive(Clone)]
struct Remote;

impl Service<oneshot::Receiver<Kind>> for Remote {
    type Response = Kind;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<Kind, &'static str>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, rx: oneshot::Receiver<Kind>) -> Self::Future {
        Box::pin(async move {
            match rx.await.expect("the test answers or drops the call") {
                Kind::Failure => Err("failed"),
                other => Ok(other),
            }
        })
    }
}

fn classify(result: &Result<Kind, &'static str>) -> Outcome {
    match result {
        Ok(Kind::Ignored) => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Closed,
    Open { until: u64 },
    HalfOpen(Trial),
}

/// A half-open trial's tallies.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Trial {
    since: u64,
    admitted: u32,
    completed: u32,
    failed: u32,
    slow: u32,
}

#[derive(Clone, Copy, Debug)]
struct Ticket {
    generation: u64,
    probe: bool,
    started: u64,
}

/// A finished call in the window.
#[derive(Clone, Copy, Debug)]
struct Entry {
    at: u64,
    failed: bool,
    slow: bool,
}

/// The reference: the documented behaviour, written as plainly as possible.
struct Model {
    cfg: Cfg,
    state: State,
    generation: u64,
    /// Finished calls, oldest first.
    window: VecDeque<Entry>,
    consecutive: u32,
    trips: u32,
    now: u64,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Model {
            cfg,
            state: State::Closed,
            generation: 0,
            window: VecDeque::new(),
            consecutive: 0,
            trips: 0,
            now: 0,
        }
    }

    fn trip(&mut self) {
        self.trips += 1;
        let grown = self
            .cfg
            .open_ms
            .saturating_mul(1u64 << (self.trips - 1).min(40));
        self.state = State::Open {
            until: self.now + grown.min(self.cfg.max_open_ms),
        };
        self.generation += 1;
    }

    fn ticket(&self, probe: bool) -> Ticket {
        Ticket {
            generation: self.generation,
            probe,
            started: self.now,
        }
    }

    /// `Ok(ticket)` if admitted, `Err(retry_after_ms)` if rejected.
    fn acquire(&mut self) -> Result<Ticket, Option<u64>> {
        match self.state {
            State::Closed => Ok(self.ticket(false)),
            State::Open { until } if self.now < until => Err(Some(until - self.now)),
            State::Open { .. } => {
                self.generation += 1;
                self.state = State::HalfOpen(Trial {
                    since: self.now,
                    admitted: 1,
                    completed: 0,
                    failed: 0,
                    slow: 0,
                });
                Ok(self.ticket(true))
            }
            State::HalfOpen(trial) => {
                if trial.admitted < self.cfg.probes {
                    self.state = State::HalfOpen(Trial {
                        admitted: trial.admitted + 1,
                        ..trial
                    });
                    Ok(self.ticket(true))
                } else if self.now - trial.since >= self.cfg.max_wait_ms {
                    self.trip();
                    match self.state {
                        State::Open { until } => Err(Some(until - self.now)),
                        _ => unreachable!(),
                    }
                } else {
                    Err(None)
                }
            }
        }
    }

    /// Whether `part` of `total` reaches `percent`.
    fn reaches(part: u64, total: u64, percent: u32) -> bool {
        part * 100 >= percent as u64 * total
    }

    fn complete(&mut self, t: Ticket, kind: Kind) {
        if t.generation != self.generation {
            return;
        }
        let slow = self
            .cfg
            .slow
            .is_some_and(|(_, ms)| self.now - t.started >= ms);
        match (self.state, t.probe) {
            (State::Closed, false) => {
                let failed = match kind {
                    Kind::Ignored => return,
                    Kind::Failure => true,
                    Kind::Success => false,
                };
                let mut trip = false;
                if let Some(limit) = self.cfg.consecutive {
                    if failed {
                        self.consecutive += 1;
                        trip = self.consecutive >= limit;
                    } else {
                        self.consecutive = 0;
                    }
                }
                self.window.push_back(Entry {
                    at: self.now,
                    failed,
                    slow,
                });
                if self.cfg.time.is_none() && self.window.len() > self.cfg.window {
                    self.window.pop_front();
                }
                let (calls, failures, slow_calls) = self.counts();
                if calls >= self.cfg.minimum as u64 {
                    trip |= Self::reaches(failures, calls, self.cfg.rate);
                    if let Some((percent, _)) = self.cfg.slow {
                        trip |= Self::reaches(slow_calls, calls, percent);
                    }
                }
                if trip {
                    self.trip();
                }
            }
            (State::HalfOpen(trial), true) => {
                if kind == Kind::Ignored {
                    self.state = State::HalfOpen(Trial {
                        admitted: trial.admitted - 1,
                        ..trial
                    });
                    return;
                }
                let trial = Trial {
                    completed: trial.completed + 1,
                    failed: trial.failed + (kind == Kind::Failure) as u32,
                    slow: trial.slow + slow as u32,
                    ..trial
                };
                let probes = self.cfg.probes as u64;
                let slow_fails = self
                    .cfg
                    .slow
                    .is_some_and(|(percent, _)| Self::reaches(trial.slow as u64, probes, percent));
                if trial.completed < self.cfg.probes {
                    self.state = State::HalfOpen(trial);
                } else if !Self::reaches(trial.failed as u64, probes, self.cfg.rate) && !slow_fails
                {
                    self.state = State::Closed;
                    self.generation += 1;
                    self.window.clear();
                    self.consecutive = 0;
                    self.trips = 0;
                } else {
                    self.trip();
                }
            }
            _ => {}
        }
    }

    /// Calls, failures and slow calls in the window now: the last `window` calls, or the calls whose
    /// bucket is one of the last `buckets` buckets up to now.
    fn counts(&self) -> (u64, u64, u64) {
        let in_reach = |at: u64| match self.cfg.time {
            Some((bucket_ms, buckets)) => {
                at / bucket_ms >= (self.now / bucket_ms + 1).saturating_sub(buckets)
            }
            None => true,
        };
        let (mut calls, mut failures, mut slow) = (0, 0, 0);
        for e in self.window.iter().filter(|e| in_reach(e.at)) {
            calls += 1;
            failures += e.failed as u64;
            slow += e.slow as u64;
        }
        (calls, failures, slow)
    }

    fn cancel(&mut self, t: Ticket) {
        if let (State::HalfOpen(trial), true) = (self.state, t.probe) {
            if t.generation == self.generation {
                self.state = State::HalfOpen(Trial {
                    admitted: trial.admitted - 1,
                    ..trial
                });
            }
        }
    }
}

fn cfg() -> impl Strategy<Value = Cfg> {
    let time = proptest::option::of((1u64..30, 1u64..8));
    // Round durations, so that calls often take exactly the slow-call duration.
    let slow = proptest::option::of((1u32..100, (1u64..12).prop_map(|n| n * 5)));
    (
        (
            1usize..12,
            time,
            slow,
            1u32..100,
            proptest::option::of(1u32..5),
        ),
        (1u32..4, 1u64..50, 0u64..4, 1u64..200),
    )
        .prop_flat_map(
            |((window, time, slow, rate, consecutive), (probes, open_ms, growth, max_wait_ms))| {
                (1..=window).prop_map(move |minimum| Cfg {
                    window,
                    time,
                    slow,
                    minimum,
                    rate,
                    consecutive,
                    probes,
                    open_ms,
                    max_open_ms: open_ms << growth,
                    max_wait_ms,
                })
            },
        )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let kind =
        prop_oneof![4 => Just(Kind::Success), 4 => Just(Kind::Failure), 1 => Just(Kind::Ignored)];
    let op = prop_oneof![
        6 => kind.clone().prop_map(Op::Call),
        2 => kind.prop_map(Op::Start),
        2 => (0usize..8).prop_map(Op::Finish),
        1 => (0usize..8).prop_map(Op::Cancel),
        2 => prop_oneof![(1u64..80), (1u64..6).prop_map(|n| n * 5)].prop_map(Op::Advance),
    ];
    proptest::collection::vec(op, 1..120)
}

type Future_ = task::Spawn<
    seawall::circuit_breaker::future::ResponseFuture<
        Pin<Box<dyn Future<Output = Result<Kind, &'static str>> + Send>>,
        fn(&Result<Kind, &'static str>) -> Outcome,
    >,
>;

struct Held {
    future: Future_,
    answer: oneshot::Sender<Kind>,
    kind: Kind,
    ticket: Ticket,
}

fn run(cfg: Cfg, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut builder = CircuitBreakerLayer::builder()
            .minimum_calls(cfg.minimum as u64)
            .failure_rate_threshold(cfg.rate as f64)
            .half_open_probes(cfg.probes)
            .open_duration(Duration::from_millis(cfg.open_ms))
            .open_backoff(2.0, Duration::from_millis(cfg.max_open_ms))
            .open_jitter(0.0)
            .max_half_open_wait(Duration::from_millis(cfg.max_wait_ms));
        if let Some(n) = cfg.consecutive {
            builder = builder.consecutive_failures(n);
        }
        if let Some((percent, ms)) = cfg.slow {
            builder = builder.slow_call_rate_threshold(percent as f64, Duration::from_millis(ms));
        }
        builder = match cfg.time {
            Some((bucket_ms, buckets)) => builder
                .time_window_buckets(Duration::from_millis(bucket_ms * buckets), buckets as u32),
            None => builder.count_window(cfg.window as u32),
        };
        let layer = builder
            .classify(classify as fn(&Result<Kind, &'static str>) -> Outcome)
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = layer.layer(Remote);
        let mut model = Model::new(cfg.clone());
        let mut held: Vec<Held> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now += ms;
                }
                Op::Call(kind) | Op::Start(kind) => {
                    let expected = model.acquire();
                    let mut s = service.clone();
                    let mut ready = task::spawn(());
                    assert!(ready.enter(|cx, _| s.poll_ready(cx)).is_ready());
                    let (tx, rx) = oneshot::channel();
                    let mut future = task::spawn(s.call(rx));
                    match (future.poll(), expected) {
                        (Poll::Ready(Err(e)), Err(retry)) => {
                            let open = e.downcast_ref::<Open>().expect("an Open rejection");
                            prop_assert_eq!(
                                open.retry_after(),
                                retry.map(Duration::from_millis),
                                "step {}",
                                step
                            );
                        }
                        (Poll::Pending, Ok(ticket)) => {
                            let mut h = Held {
                                future,
                                answer: tx,
                                kind,
                                ticket,
                            };
                            if matches!(op, Op::Call(_)) {
                                finish(&mut model, h)?;
                            } else {
                                h.kind = kind;
                                held.push(h);
                            }
                        }
                        (got, want) => {
                            return Err(TestCaseError::fail(format!(
                                "step {step}: breaker said {:?}, model said {want:?}",
                                got.map(|r| r.map_err(|e| e.to_string()))
                            )))
                        }
                    }
                }
                Op::Finish(i) if i < held.len() => {
                    let h = held.remove(i);
                    finish(&mut model, h)?;
                }
                Op::Cancel(i) if i < held.len() => {
                    let h = held.remove(i);
                    model.cancel(h.ticket);
                    drop(h);
                }
                Op::Finish(_) | Op::Cancel(_) => {}
            }
            let state = match model.state {
                State::Closed => CircuitState::Closed,
                State::Open { .. } => CircuitState::Open,
                State::HalfOpen(_) => CircuitState::HalfOpen,
            };
            let metrics = handle.metrics();
            prop_assert_eq!(metrics.state, state, "step {}", step);
            if model.state == State::Closed {
                prop_assert_eq!(
                    (metrics.calls, metrics.failures, metrics.slow_calls),
                    model.counts(),
                    "step {}",
                    step
                );
            }
            let in_flight = match model.state {
                State::HalfOpen(trial) => trial.admitted - trial.completed,
                _ => 0,
            };
            prop_assert_eq!(metrics.probes_in_flight, in_flight, "step {}", step);
        }
        Ok(())
    })
}

fn finish(model: &mut Model, mut h: Held) -> Result<(), TestCaseError> {
    h.answer.send(h.kind).unwrap();
    prop_assert!(h.future.is_woken());
    let result: Result<Kind, BoxError> = match h.future.poll() {
        Poll::Ready(r) => r,
        Poll::Pending => return Err(TestCaseError::fail("an answered call did not finish")),
    };
    prop_assert_eq!(result.is_err(), h.kind == Kind::Failure);
    model.complete(h.ticket, h.kind);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(cfg in cfg(), ops in ops()) {
        run(cfg, ops)?;
    }
}
