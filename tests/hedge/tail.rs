//! The two simulations, in paused time: a tail cut by hedging, and a brownout that
//! hedging must not amplify.
//!
//! The backend has 20 workers, each call holding one for 20 to 40 ms (uniform); the extra
//! latency of the tail (1 s for 2 % of attempts, drawn independently) and of the brownout
//! (200 ms for every call) is spent before a worker is taken, as a slow network or a slow
//! dependency of the backend would. Arrivals are a seeded Poisson process at 333 a second.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seawall::hedge::HedgeLayer;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};

const RATE: f64 = 333.0;

#[derive(Clone)]
struct Backend {
    workers: Arc<Semaphore>,
    rng: Arc<Mutex<SmallRng>>,
    calls: Arc<AtomicU64>,
    /// The share of attempts delayed by a second.
    tail: f64,
    /// When every call is 200 ms slower, from the start of the run.
    brownout: Option<(Duration, Duration)>,
    start: Instant,
}

impl Backend {
    fn new(tail: f64, brownout: Option<(Duration, Duration)>) -> Self {
        Backend {
            workers: Arc::new(Semaphore::new(20)),
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(7))),
            calls: Arc::new(AtomicU64::new(0)),
            tail,
            brownout,
            start: Instant::now(),
        }
    }
}

impl Service<()> for Backend {
    type Response = ();
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        let (work, delayed) = {
            let mut rng = self.rng.lock().unwrap();
            (
                Duration::from_micros(rng.random_range(20_000..=40_000)),
                rng.random_bool(self.tail),
            )
        };
        let since = self.start.elapsed();
        let mut extra = if delayed {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        if self
            .brownout
            .is_some_and(|(from, to)| since >= from && since < to)
        {
            extra += Duration::from_millis(200);
        }
        let workers = self.workers.clone();
        Box::pin(async move {
            if !extra.is_zero() {
                tokio::time::sleep(extra).await;
            }
            let _worker = workers.acquire().await?;
            tokio::time::sleep(work).await;
            Ok(())
        })
    }
}

/// What a run measured: when each call that arrived after the warm-up arrived (from the start
/// of the run) and how long it took, how many calls arrived, and how many attempts reached the
/// backend.
struct Run {
    latencies: Vec<(Duration, Duration)>,
    arrivals: u64,
    calls: u64,
}

impl Run {
    fn percentile(&self, q: f64) -> Duration {
        self.percentile_between(q, Duration::ZERO, Duration::MAX)
    }

    /// The percentile of the calls that arrived from `from` to before `to`.
    fn percentile_between(&self, q: f64, from: Duration, to: Duration) -> Duration {
        let mut sorted: Vec<Duration> = self
            .latencies
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, latency)| *latency)
            .collect();
        sorted.sort();
        sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
    }
}

async fn run(
    backend: Backend,
    hedge: Option<HedgeLayer>,
    length: Duration,
    warm_up: Duration,
) -> Run {
    let service: BoxCloneService<(), (), BoxError> = match hedge {
        Some(layer) => BoxCloneService::new(layer.layer(backend.clone())),
        None => BoxCloneService::new(backend.clone()),
    };
    let mut rng = SmallRng::seed_from_u64(11);
    let start = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut at = Duration::ZERO;
    let mut arrivals = 0;
    while at < length {
        tokio::time::sleep_until(start + at).await;
        arrivals += 1;
        let service = service.clone();
        let latencies = latencies.clone();
        let measured = at >= warm_up;
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            service.oneshot(()).await.unwrap();
            if measured {
                latencies.lock().unwrap().push((at, began.elapsed()));
            }
        }));
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        at += Duration::from_secs_f64(-u.ln() / RATE);
    }
    for task in tasks {
        task.await.unwrap();
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Run {
        latencies,
        arrivals,
        calls: backend.calls.load(SeqCst),
    }
}

#[tokio::test(start_paused = true)]
async fn hedging_cuts_the_tail_for_a_few_more_calls() {
    let length = Duration::from_secs(30);
    let warm_up = Duration::from_secs(3);
    let bare = run(Backend::new(0.02, None), None, length, warm_up).await;
    let hedged = run(
        Backend::new(0.02, None),
        Some(HedgeLayer::new()),
        length,
        warm_up,
    )
    .await;
    let (before, after) = (bare.percentile(0.99), hedged.percentile(0.99));
    let load = hedged.calls as f64 / hedged.arrivals as f64;
    println!("p99 {before:?} -> {after:?}, backend calls {load:.3}x arrivals");
    assert!(before >= Duration::from_millis(900), "the tail: {before:?}");
    assert!(
        after <= Duration::from_millis(100),
        "the tail cut: {after:?}"
    );
    assert!(load <= 1.06, "{load:.3}x");
}

#[tokio::test(start_paused = true)]
async fn a_brownout_is_not_amplified() {
    let length = Duration::from_secs(30);
    let (from, to) = (Duration::from_secs(10), Duration::from_secs(20));
    let brownout = Some((from, to));
    let bare = run(Backend::new(0.0, brownout), None, length, Duration::ZERO).await;
    let hedged = run(
        Backend::new(0.0, brownout),
        Some(HedgeLayer::new()),
        length,
        Duration::ZERO,
    )
    .await;
    // The default budget: 5 % of requests, plus a floor of 1 a second.
    let floor = length.as_secs_f64();
    let bound = 1.05 * hedged.arrivals as f64 + floor;
    // The median of the calls that arrived during the brownout: over the whole run, the two
    // thirds of it outside the brownout would set it, whatever hedging did within.
    let p50_bare = bare.percentile_between(0.5, from, to);
    let p50_hedged = hedged.percentile_between(0.5, from, to);
    println!(
        "backend calls {} for {} arrivals (bound {bound:.0}); p50 in the brownout {p50_bare:?} bare, {p50_hedged:?} hedged",
        hedged.calls, hedged.arrivals
    );
    assert!(hedged.calls as f64 <= bound, "{} calls", hedged.calls);
    assert!(
        p50_bare >= Duration::from_millis(200),
        "the brownout's calls are measured: {p50_bare:?}"
    );
    let ratio = p50_hedged.as_secs_f64() / p50_bare.as_secs_f64();
    assert!(
        (0.95..=1.05).contains(&ratio),
        "p50 in the brownout {ratio:.3} of the bare run's"
    );

    // The percentile adapts within a second or two; a fixed delay does not, and the budget
    // alone holds the load (without it, every call of the brownout would be sent twice).
    let fixed = HedgeLayer::builder()
        .delay(Duration::from_millis(50))
        .build()
        .unwrap();
    let hedged = run(
        Backend::new(0.0, brownout),
        Some(fixed),
        length,
        Duration::ZERO,
    )
    .await;
    let bound = 1.05 * hedged.arrivals as f64 + floor;
    println!(
        "fixed delay: backend calls {} (bound {bound:.0})",
        hedged.calls
    );
    assert!(hedged.calls as f64 <= bound, "{} calls", hedged.calls);
}
