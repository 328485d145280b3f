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
