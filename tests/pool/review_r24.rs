//! Review r24: tests that confirm suspected defects (expected to FAIL on main's HEAD).

use super::sim::Replica;
use http::Request;
use seawall::pool::{EndpointState, Pool};
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// An endpoint whose readiness may stay pending for good (a full buffer, a connect that hangs).
#[derive(Clone)]
struct Ep {
    stuck: bool,
}

impl Service<u32> for Ep {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.stuck {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

/// One endpoint's readiness pending must not stall a call while another endpoint is ready.
#[tokio::test(start_paused = true)]
async fn r24_a_pending_endpoint_does_not_stall_the_pool() {
    let mut stalled = 0;
    for seed in 0..20 {
        // A fresh pool per seed: the first call's draw (both estimates equal) decides.
        let pool = Pool::builder()
            .seed(seed)
            .build([Ep { stuck: true }, Ep { stuck: false }])
            .unwrap();
        // (A timeout's own wake-up re-polls the call, which then finds the other endpoint:
        // measure the time taken instead.)
        let start = Instant::now();
        let call = pool.clone().oneshot(seed as u32);
        let _ = tokio::time::timeout(Duration::from_secs(60), call).await;
        if start.elapsed() >= Duration::from_secs(1) {
            stalled += 1;
        }
    }
    assert_eq!(
        stalled, 0,
        "{stalled} of 20 calls waited 60 s on the pending endpoint"
    );
}

/// An endpoint held in by the cap whose readiness fails must not stall calls while two
/// healthy endpoints are ready.
#[tokio::test(start_paused = true)]
async fn r24_a_held_endpoint_whose_readiness_fails_does_not_stall_calls() {
    let origin = Instant::now();
    let all: Vec<Replica> = (0..4)
        .map(|_| Replica::new(Duration::from_millis(1), origin))
        .collect();
    all[0].behaviour.not_ready.store(true, SeqCst);
    all[1].behaviour.not_ready.store(true, SeqCst);
    let pool = Pool::builder()
        .max_ejection_percent(25.0) // cap 1 of 4
        .initial_rtt(Duration::from_micros(1))
        .seed(2)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    let mut stalled = 0;
    for _ in 0..50 {
        let start = Instant::now();
        let call = pool.clone().oneshot(Request::new(()));
        let _ = tokio::time::timeout(Duration::from_secs(60), call).await;
        if start.elapsed() >= Duration::from_secs(1) {
            stalled += 1;
        }
    }
    println!("{:?}", handle.endpoints());
    assert_eq!((handle.ejected(), handle.held()), (1, 1));
    assert_eq!(
        stalled, 0,
        "{stalled} of 50 calls waited > 1 s with 2 healthy endpoints"
    );
}

/// A clone that claimed a probe in `poll_ready` and is never called holds it: no other clone
/// can probe, and the endpoint stays out for as long as the idle clone lives.
#[tokio::test(start_paused = true)]
async fn r24_an_idle_ready_clone_holds_the_probe_forever() {
    let origin = Instant::now();
    let all: Vec<Replica> = (0..2)
        .map(|_| Replica::new(Duration::from_millis(1), origin))
        .collect();
    all[0].behaviour.erroring.store(true, SeqCst);
    let pool = Pool::builder()
        .no_failure_penalty()
        .consecutive_local_failures(1)
        .ejection_jitter(0.0)
        .seed(3)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    while handle.ejected() == 0 {
        let _ = pool.clone().oneshot(Request::new(())).await;
    }
    all[0].behaviour.erroring.store(false, SeqCst);
    tokio::time::advance(Duration::from_secs(31)).await;
    let mut idle = pool.clone();
    // Ready: the due probe (ranked first) is claimed by this clone, which then sits idle.
    futures::future::poll_fn(|cx| idle.poll_ready(cx))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    for _ in 0..100 {
        pool.clone().oneshot(Request::new(())).await.unwrap();
    }
    assert_ne!(
        handle.endpoints()[0].state,
        EndpointState::Probing,
        "an hour on, still probing: {:?}",
        handle.endpoints()[0]
    );
    drop(idle);
}
