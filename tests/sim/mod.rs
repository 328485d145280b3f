//! A deterministic surge simulation in paused tokio time, for any client-side stack of layers.
//!
//! - [`Backend`]: a service with a fixed number of workers, each call holding one for a service time
//!   drawn from a seeded uniform distribution; calls beyond the workers wait in its FIFO queue, so
//!   latency grows with the queue. The queue is unbounded unless `queue_limit` is set, in which case
//!   the backend refuses calls beyond it at once with [`Busy`] (an HTTP 503).
//! - [`Load`]: open-loop arrivals, as from a crowd of independent virtual users (a Poisson process),
//!   or in synchronised bursts, or from on-off sources ([`Pattern`]), at a base rate with a surge
//!   of some multiple of the backend's capacity for a while. Arrivals do not wait for answers, as
//!   real users do not.
//! - [`run`]: sends the load through a stack over the backend and returns a [`Report`] of what
//!   happened to the calls that arrived during the surge.
//!
//! Everything is seeded and runs on a current-thread runtime with paused time, so a run gives the
//! same numbers every time, in a fraction of the simulated time.
#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

/// The backend refused a call: its queue was full.
#[derive(Debug)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend busy (503)")
    }
}

impl std::error::Error for Busy {}

/// A backend's shape.
#[derive(Clone, Copy, Debug)]
pub struct BackendConfig {
    /// How many calls it works on at once.
    pub workers: usize,
    /// The shortest and longest service time of one call (uniform in between).
    pub service_time: (Duration, Duration),
    /// How many calls may wait for a worker; more are refused with [`Busy`]. `None`: no bound.
    pub queue_limit: Option<usize>,
}

impl BackendConfig {
    /// 20 workers at 20 to 40 ms a call (30 ms on average): about 667 calls a second.
    pub const STANDARD: BackendConfig = BackendConfig {
        workers: 20,
        service_time: (Duration::from_millis(20), Duration::from_millis(40)),
        queue_limit: None,
    };

    /// Calls a second it completes when busy.
    pub fn capacity(&self) -> f64 {
        let mean = (self.service_time.0 + self.service_time.1).as_secs_f64() / 2.0;
        self.workers as f64 / mean
    }
}

/// The simulated backend; clones share its workers and queue.
#[derive(Clone)]
pub struct Backend {
    config: BackendConfig,
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    rng: Arc<Mutex<SmallRng>>,
    /// Calls that reached the backend.
    pub received: Arc<AtomicU64>,
}

impl Backend {
    pub fn new(config: BackendConfig, seed: u64) -> Self {
        Backend {
            config,
            workers: Arc::new(Semaphore::new(config.workers)),
            waiting: Arc::new(AtomicUsize::new(0)),
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))),
            received: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Service<()> for Backend {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A server accepts every connection; calls queue inside it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.received.fetch_add(1, Ordering::Relaxed);
        let (low, high) = self.config.service_time;
        let work = self.rng.lock().unwrap().random_range(low..=high);
        let queue_limit = self.config.queue_limit;
        let workers = self.workers.clone();
        let waiting = self.waiting.clone();
        Box::pin(async move {
            let worker = match workers.try_acquire() {
                Ok(worker) => worker,
                Err(_) => {
                    if queue_limit.is_some_and(|limit| waiting.load(Ordering::Relaxed) >= limit) {
                        return Err(Busy.into());
                    }
                    waiting.fetch_add(1, Ordering::Relaxed);
                    let worker = workers.acquire().await;
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    worker.expect("never closed")
                }
            };
            tokio::time::sleep(work).await;
            drop(worker);
            Ok(())
        })
    }
}

/// How the calls of a [`Load`] arrive, at the same average rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// Each user is a Poisson process with a share of the rate: the crowd's arrivals are Poisson.
    Poisson,
    /// Synchronised bursts: every `every`, a burst of the calls of that period arrives at once
    /// (users sending in step: a cron job, clients retrying together, an HTTP/2 fan-out).
    Bursts {
        /// The time between bursts.
        every: Duration,
    },
    /// On-off sources: each user is on for `on`, then off for `off`, from a random phase, and
    /// while on sends as a Poisson process at `(on + off) / on` times its share of the rate.
    OnOff {
        /// How long a user sends.
        on: Duration,
        /// How long it is quiet.
        off: Duration,
    },
}

/// An open-loop load: a base rate, then a surge, then the base rate again.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// How the calls arrive (Poisson unless set).
    pub pattern: Pattern,
    /// How many virtual users the arrivals are spread over (each sends a call now and then).
    pub users: u32,
    /// Calls a second before and after the surge.
    pub base_rate: f64,
    /// Calls a second during the surge.
    pub surge_rate: f64,
    /// How long the base rate runs before the surge.
    pub before: Duration,
    /// How long the surge lasts.
    pub surge: Duration,
    /// How long the base rate runs after the surge.
    pub after: Duration,
}

impl Load {
    /// 1000 users at half the backend's capacity, surging to five times it for ten seconds.
    pub fn standard(capacity: f64) -> Self {
        Load {
            pattern: Pattern::Poisson,
            users: 1000,
            base_rate: capacity / 2.0,
            surge_rate: capacity * 5.0,
            before: Duration::from_secs(5),
            surge: Duration::from_secs(10),
            after: Duration::from_secs(5),
        }
    }

    /// The same users at the base rate all along, with no surge.
    pub fn unloaded(capacity: f64) -> Self {
        Load {
            surge_rate: capacity / 2.0,
            ..Load::standard(capacity)
        }
    }

    /// When the surge starts and ends, from the start of the run.
    pub fn surge_window(&self) -> (Duration, Duration) {
        (self.before, self.before + self.surge)
    }

    /// The arrival times of every user's calls, merged, following the [`Pattern`].
    pub fn arrivals(&self, seed: u64) -> Vec<Duration> {
        match self.pattern {
            Pattern::Poisson => self.poisson(seed, None),
            Pattern::Bursts { every } => self.bursts(every),
            Pattern::OnOff { on, off } => self.poisson(seed, Some((on, off))),
        }
    }

    /// Bursts every `every`, each of the calls of its period at the rate then.
    fn bursts(&self, every: Duration) -> Vec<Duration> {
        let end = self.before + self.surge + self.after;
        let (surge_from, surge_to) = self.surge_window();
        let mut all = Vec::new();
        let mut owed = 0.0;
        let mut t = Duration::ZERO;
        while t < end {
            let rate = if (surge_from..surge_to).contains(&t) {
                self.surge_rate
            } else {
                self.base_rate
            };
            owed += rate * every.as_secs_f64();
            let n = owed.floor();
            owed -= n;
            all.extend(std::iter::repeat_n(t, n as usize));
            t += every;
        }
        all
    }

    /// Each user a Poisson process with a share of the current rate; with `on_off`, only while
    /// the user is on, at a rate raised to keep the average.
    fn poisson(&self, seed: u64, on_off: Option<(Duration, Duration)>) -> Vec<Duration> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let cycle = on_off.map(|(on, off)| (on.as_secs_f64(), (on + off).as_secs_f64()));
        let boost = cycle.map_or(1.0, |(on, period)| period / on);
        let end = (self.before + self.surge + self.after).as_secs_f64();
        let (surge_from, surge_to) = self.surge_window();
        let (surge_from, surge_to) = (surge_from.as_secs_f64(), surge_to.as_secs_f64());
        let rate_at = |t: f64| {
            if (surge_from..surge_to).contains(&t) {
                self.surge_rate
            } else {
                self.base_rate
            }
        };
        let peak = self.base_rate.max(self.surge_rate) * boost / self.users as f64;
        let mut all = Vec::new();
        for _ in 0..self.users {
            let phase = cycle.map_or(0.0, |(_, period)| rng.random::<f64>() * period);
            let on = |t: f64| cycle.is_none_or(|(on, period)| (t + phase) % period < on);
            // Thinning: candidates at the peak rate, each kept with the current rate's share.
            let mut t = 0.0;
            loop {
                t += -(1.0 - rng.random::<f64>()).ln() / peak;
                if t >= end {
                    break;
                }
                let share = if on(t) {
                    rate_at(t) * boost / self.users as f64
                } else {
                    0.0
                };
                if rng.random::<f64>() * peak < share {
                    all.push(Duration::from_secs_f64(t));
                }
            }
        }
        all.sort();
        all
    }
}

/// What happened to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The backend answered.
    Served,
    /// The backend refused it ([`Busy`]).
    Refused,
    /// A client-side layer did not send it.
    NotSent,
}

/// One call, as the client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub arrived: Duration,
    pub latency: Duration,
    pub fate: Fate,
}

/// The calls that arrived during the surge.
#[derive(Debug)]
pub struct Report {
    pub calls: Vec<Call>,
    /// When the surge started, from the start of the run.
    pub surge_from: Duration,
    pub surge: Duration,
    /// Calls that reached the backend, over the whole run.
    pub backend_received: u64,
    /// Calls that arrived, over the whole run.
    pub arrived: u64,
}

impl Report {
    /// Successful answers within `slo`, per second of surge.
    pub fn goodput(&self, slo: Duration) -> f64 {
        let good = self
            .calls
            .iter()
            .filter(|c| c.fate == Fate::Served && c.latency <= slo)
            .count();
        good as f64 / self.surge.as_secs_f64()
    }

    fn latencies(&self, filter: impl Fn(&Call) -> bool) -> Vec<Duration> {
        let mut sent: Vec<Duration> = self
            .calls
            .iter()
            .filter(|c| c.fate != Fate::NotSent && filter(c))
            .map(|c| c.latency)
            .collect();
        sent.sort();
        sent
    }

    /// The `q` quantile (nearest rank) of the latency of the calls that were sent.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies(|_| true), q)
    }

    /// The `q` quantile of the latency of the sent calls that arrived in each second of the surge.
    pub fn quantile_per_second(&self, q: f64) -> Vec<Duration> {
        let from = self.surge_from;
        let seconds = self.surge.as_secs() as u32;
        (0..seconds)
            .map(|s| {
                let start = from + Duration::from_secs(s.into());
                let end = start + Duration::from_secs(1);
                quantile(
                    &self.latencies(|c| c.arrived >= start && c.arrived < end),
                    q,
                )
            })
            .collect()
    }

    /// The share of the calls that arrived during the surge that were not sent.
    pub fn not_sent(&self) -> f64 {
        let n = self
            .calls
            .iter()
            .filter(|c| c.fate == Fate::NotSent)
            .count();
        n as f64 / self.calls.len().max(1) as f64
    }

    /// The share of the calls that arrived during the surge that the backend refused.
    pub fn refused(&self) -> f64 {
        let n = self
            .calls
            .iter()
            .filter(|c| c.fate == Fate::Refused)
            .count();
        n as f64 / self.calls.len().max(1) as f64
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `load` through `client` (a stack of layers over `backend`) and reports on the calls that
/// arrived during the surge. Must run on a current-thread runtime with paused time.
pub async fn run<S>(load: &Load, seed: u64, backend: &Backend, client: S) -> Report
where
    S: Service<(), Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let arrivals = load.arrivals(seed);
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::with_capacity(arrivals.len())));
    let mut tasks = tokio::task::JoinSet::new();
    for &arrived in &arrivals {
        tokio::time::sleep_until(start + arrived).await;
        let client = client.clone();
        let calls = calls.clone();
        tasks.spawn(async move {
            let result = client.oneshot(()).await;
            let fate = match result {
                Ok(()) => Fate::Served,
                Err(e) if e.is::<Busy>() => Fate::Refused,
                Err(_) => Fate::NotSent,
            };
            let latency = start.elapsed() - arrived;
            calls.lock().unwrap().push(Call {
                arrived,
                latency,
                fate,
            });
        });
    }
    while tasks.join_next().await.is_some() {}
    let (from, to) = load.surge_window();
    let mut calls = std::mem::take(&mut *calls.lock().unwrap());
    calls.retain(|c| c.arrived >= from && c.arrived < to);
    calls.sort_by_key(|c| c.arrived);
    Report {
        calls,
        surge_from: from,
        surge: load.surge,
        backend_received: backend.received.load(Ordering::Relaxed),
        arrived: arrivals.len() as u64,
    }
}
