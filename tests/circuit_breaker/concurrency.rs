//! Many tasks on a multi-thread runtime, and futures dropped at random points.

use crate::support::{send, Backend, Call, Ended, Fail};
use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
use seawall::core::{CircuitState, Event, EventKind};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// A backend whose health is switched by the test, counting the calls it receives and the most that
/// were ever in progress at once.
#[derive(Clone, Default)]
struct Flaky {
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Service<()> for Flaky {
    type Response = ();
    type Error = Fail;
    type Future = Pin<Box<dyn Future<Output = Result<(), Fail>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Fail>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.calls.fetch_add(1, SeqCst);
            let now = this.in_flight.fetch_add(1, SeqCst) + 1;
            this.peak.fetch_max(now, SeqCst);
            // Stay in flight across a few scheduling rounds so calls overlap.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            this.in_flight.fetch_sub(1, SeqCst);
            if this.healthy.load(SeqCst) {
                Ok(())
            } else {
                Err(Fail)
            }
        })
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

async fn hammer<S>(service: S, tasks: usize, calls: usize, tally: Arc<Tally>)
where
    S: Service<(), Response = (), Error = tower::BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let service = service.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                for _ in 0..calls {
                    match service.clone().oneshot(()).await {
                        Ok(()) => tally.ok.fetch_add(1, SeqCst),
                        Err(e) if e.is::<Fail>() => tally.failed.fetch_add(1, SeqCst),
                        Err(e) if e.is::<Open>() => tally.rejected.fetch_add(1, SeqCst),
                        Err(e) => panic!("unexpected error {e}"),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_never_exceed_k_probes_and_counts_add_up() {
    const PROBES: u32 = 3;
    let permitted = Arc::new(AtomicU64::new(0));
    let rejected_events = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let (p, r, f) = (permitted.clone(), rejected_events.clone(), finished.clone());
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .half_open_probes(PROBES)
        .open_duration(Duration::from_micros(200))
        .open_backoff(1.0, Duration::from_micros(200))
        .observer(move |e: &Event<'_>| {
            match e.kind {
                EventKind::Permitted => p.fetch_add(1, SeqCst),
                EventKind::Rejected { .. } => r.fetch_add(1, SeqCst),
                EventKind::Finished { .. } => f.fetch_add(1, SeqCst),
                _ => 0,
            };
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let backend = Flaky::default();
    let service = layer.layer(backend.clone());

    // Trip it first, alone, so that every call admitted below while the backend is down is a probe.
    assert!(service.clone().oneshot(()).await.is_err());
    assert_eq!(handle.state(), CircuitState::Open);
    backend.peak.store(0, SeqCst);

    let tally = Arc::new(Tally::default());
    hammer(service.clone(), 16, 2_000, tally.clone()).await;
    assert!(
        backend.peak.load(SeqCst) <= PROBES as usize,
        "at most {PROBES} probes in flight, saw {}",
        backend.peak.load(SeqCst)
    );
    assert_ne!(
        handle.state(),
        CircuitState::Closed,
        "a dead backend never closes the breaker"
    );

    // Recovery: the breaker closes and everything flows.
    backend.healthy.store(true, SeqCst);
    hammer(service.clone(), 16, 2_000, tally.clone()).await;
    assert_eq!(handle.state(), CircuitState::Closed);

    let total = 2 * 16 * 2_000;
    let (ok, failed, rejected) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.rejected.load(SeqCst),
    );
    assert_eq!(
        ok + failed + rejected,
        total,
        "every call ended exactly one way"
    );
    assert_eq!(
        backend.calls.load(SeqCst),
        1 + ok + failed,
        "every admitted call reached the backend"
    );
    assert_eq!(permitted.load(SeqCst), 1 + ok + failed);
    assert_eq!(finished.load(SeqCst), 1 + ok + failed);
    assert_eq!(rejected_events.load(SeqCst), rejected);
    assert!(ok > 0 && rejected > 0);
    assert_eq!(handle.metrics().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn futures_dropped_at_random_points_leave_nothing_behind() {
    use rand::{Rng, SeedableRng};
    let layer = CircuitBreakerLayer::builder()
        .count_window(50)
        .minimum_calls(10)
        .half_open_probes(4)
        .open_duration(Duration::from_millis(100))
        .open_jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(Backend);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    for round in 0..200u64 {
        for _ in 0..10 {
            let mut s = service.clone();
            let fail = rng.random_bool(0.6);
            let work = Duration::from_millis(rng.random_range(0..40));
            let patience = Duration::from_millis(rng.random_range(0..40));
            let call = if fail { Call::fail() } else { Call::ok() }.after(work);
            // Each caller gives up at a random moment: before readiness, mid-call, or never.
            tasks.push(tokio::spawn(async move {
                tokio::time::timeout(patience, send(&mut s, call))
                    .await
                    .ok()
            }));
        }
        tokio::time::advance(Duration::from_millis(10 + round % 7)).await;
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    assert_eq!(handle.metrics().probes_in_flight, 0, "no probe slot leaked");
    // Whatever state it ended in, a healthy backend brings it back to closed within a few rounds.
    let mut s = service.clone();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..4 {
            assert_ne!(send(&mut s, Call::ok()).await, Ended::Failed);
        }
        if handle.state() == CircuitState::Closed {
            break;
        }
    }
    assert_eq!(handle.state(), CircuitState::Closed, "not stuck half-open");
    let m = handle.metrics();
    assert!(m.calls <= 50 && m.failures <= m.calls);
}

/// A backend told per call whether to fail, staying in flight across a few scheduling rounds.
#[derive(Clone, Default)]
struct Told;

impl Service<bool> for Told {
    type Response = ();
    type Error = Fail;
    type Future = Pin<Box<dyn Future<Output = Result<(), Fail>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Fail>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, fail: bool) -> Self::Future {
        Box::pin(async move {
            for _ in 0..2 {
                tokio::task::yield_now().await;
            }
            if fail {
                Err(Fail)
            } else {
                Ok(())
            }
        })
    }
}

/// Polls `future` at most `polls` times, then drops it: `None` if it had not finished.
async fn poll_at_most<F: Future>(future: F, polls: u32) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut left = polls;
    std::future::poll_fn(move |cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending if left <= 1 => Poll::Ready(None),
        Poll::Pending => {
            left -= 1;
            Poll::Pending
        }
    })
    .await
}

/// Calls, outcomes and drops drawn at random by 16 tasks on four threads, for several seeds: the
/// breaker never has more than K probes in flight (watched while it runs), every state change
/// is one its machine allows, and every admitted call is reported finished or cancelled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_calls_outcomes_and_drops_keep_the_invariants() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    const PROBES: u32 = 3;

    for seed in 0..4u64 {
        let counts = Arc::new([const { AtomicU64::new(0) }; 4]); // permitted, rejected, finished, cancelled
        let illegal = Arc::new(AtomicU64::new(0));
        let (c, bad) = (counts.clone(), illegal.clone());
        let layer = CircuitBreakerLayer::builder()
            .count_window(20)
            .minimum_calls(10)
            .failure_rate_threshold(50.0)
            .half_open_probes(PROBES)
            .open_duration(Duration::from_micros(50))
            .open_backoff(1.0, Duration::from_micros(50))
            .observer(move |e: &Event<'_>| {
                let slot = match e.kind {
                    EventKind::Permitted => 0,
                    EventKind::Rejected { .. } => 1,
                    EventKind::Finished { .. } => 2,
                    EventKind::Cancelled => 3,
                    EventKind::StateTransition { from, to } => {
                        use CircuitState::*;
                        let legal = matches!(
                            (from, to),
                            (Closed, Open)
                                | (Open, HalfOpen)
                                | (HalfOpen, Closed)
                                | (HalfOpen, Open)
                        );
                        if !legal {
                            bad.fetch_add(1, SeqCst);
                        }
                        return;
                    }
                    _ => return,
                };
                c[slot].fetch_add(1, SeqCst);
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = layer.layer(Told);

        // A watcher samples the probes in flight while the tasks run.
        let running = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (handle, running) = (handle.clone(), running.clone());
            tokio::spawn(async move {
                let mut most = 0;
                while running.load(SeqCst) {
                    most = most.max(handle.metrics().probes_in_flight);
                    tokio::task::yield_now().await;
                }
                most
            })
        };
        let tasks: Vec<_> = (0..16u64)
            .map(|task| {
                let service = service.clone();
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed * 1_000 + task);
                    let (mut ended, mut dropped) = (0u64, 0u64);
                    for call in 0..1_500u32 {
                        // The backend's failure rate swings between phases: healthy, failing,
                        // flapping.
                        let fail_rate = [0.05, 0.9, 0.5][(call / 250 % 3) as usize];
                        let fail = rng.random_bool(fail_rate);
                        let polls = if rng.random_bool(0.2) {
                            rng.random_range(1..4)
                        } else {
                            100
                        };
                        match poll_at_most(service.clone().oneshot(fail), polls).await {
                            Some(_) => ended += 1,
                            None => dropped += 1,
                        }
                    }
                    (ended, dropped)
                })
            })
            .collect();
        let (mut ended, mut dropped) = (0, 0);
        for t in tasks {
            let (e, d) = t.await.unwrap();
            ended += e;
            dropped += d;
        }
        running.store(false, SeqCst);
        let most = watcher.await.unwrap();

        let [permitted, rejected, finished, cancelled] =
            [0, 1, 2, 3].map(|i| counts[i].load(SeqCst));
        assert_eq!(ended + dropped, 16 * 1_500);
        assert!(
            // How many of each depends on timing: only that each happened is certain.
            dropped > 0 && rejected > 0 && finished > 0,
            "seed {seed}: {dropped} dropped, {rejected} rejected, {finished} finished"
        );
        assert!(
            most <= PROBES,
            "seed {seed}: {most} probes in flight at once"
        );
        assert_eq!(
            illegal.load(SeqCst),
            0,
            "seed {seed}: an illegal transition"
        );
        assert_eq!(
            permitted,
            finished + cancelled,
            "seed {seed}: every admitted call ends once ({permitted} permitted, {finished} finished, {cancelled} cancelled)"
        );
        assert_eq!(handle.metrics().probes_in_flight, 0, "seed {seed}");
        println!("seed {seed}: {finished} finished, {cancelled} cancelled, {rejected} rejected, at most {most} probes");
    }
}
