//! The endpoint pool: selection, ejection, the cap, discovery, configuration; simulated
//! endpoints on paused time.

mod loopback;
mod sim;

use http::{Request, Response, StatusCode};
use seawall::core::{EjectReason, Event, EventKind};
use seawall::error::ErrorKind;
use seawall::http::HttpClassifier;
use seawall::pool::{ConfigError, EndpointState, Pool, PoolHandle};
use sim::{drive, Ep, Replica, Switch, NOT_READY, PANIC_ONCE, PENDING, READY};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::discover::Change;
use tower::{BoxError, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn replicas(n: usize, latency: Duration, origin: Instant) -> Vec<Replica> {
    (0..n).map(|_| Replica::new(latency, origin)).collect()
}

fn share(replica: &Replica, all: &[Replica], from: f64, to: f64) -> f64 {
    let total: u64 = all.iter().map(|r| r.calls_between(from, to)).sum();
    replica.calls_between(from, to) as f64 / total.max(1) as f64
}

type TowerP2c = tower::balance::p2c::Balance<
    tower::load::PeakEwmaDiscover<tower::discover::ServiceList<Vec<Replica>>>,
    Request<()>,
>;

/// tower's p2c over peak-EWMA, with linkerd's defaults, behind a buffer (it is not `Clone`).
fn tower_p2c(
    replicas: &[Replica],
) -> tower::buffer::Buffer<Request<()>, <TowerP2c as Service<Request<()>>>::Future> {
    let discover = tower::load::PeakEwmaDiscover::new(
        tower::discover::ServiceList::new(replicas.to_vec()),
        Duration::from_millis(30),
        Duration::from_secs(10),
        tower::load::CompleteOnResponse::default(),
    );
    tower::buffer::Buffer::new(tower::balance::p2c::Balance::new(discover), 4096)
}

/// What a black-hole run measured of seawall's pool, beside tower's p2c.
struct BlackHole {
    /// Failures the pool's clients saw.
    failures: usize,
    /// The failing replica's ejections.
    ejections: u64,
    /// When the failing replica was first ejected (s), if it was.
    ejected_at: Option<f64>,
    /// Its share of the pool's calls after `from` (s).
    share_after: Box<dyn Fn(f64) -> f64>,
}

/// Black hole: one of ten replicas answers 503 in 1 ms for 10 s, under 600 requests a second,
/// through a pool from `builder`, and through tower's p2c over peak-EWMA fed the same load
/// beside it (a fast 503 looks like a fast answer to it). While it fails, the replica is shown
/// out of the draws (penalised or ejected), never `Available`.
async fn black_hole_run(builder: seawall::pool::Builder) -> BlackHole {
    let origin = Instant::now();
    let ours = replicas(10, MS, origin);
    let theirs = replicas(10, MS, origin);
    let pool = builder
        .classify(HttpClassifier::default())
        .seed(7)
        .build(ours.clone())
        .unwrap();
    let handle = pool.handle();
    let fault = |replicas: &[Replica]| {
        let bad = replicas[0].behaviour.clone();
        move |t: f64| bad.unavailable.store(t < 10.0, SeqCst)
    };
    // What the handle shows of the failing replica during the fault, and when it is first
    // ejected.
    let during = Arc::new(Mutex::new(Vec::new()));
    let ejected_at = Arc::new(Mutex::new(None));
    let watch = {
        let (handle, during, ejected_at) = (handle.clone(), during.clone(), ejected_at.clone());
        let fault = fault(&ours);
        move |t: f64| {
            fault(t);
            let state = handle.endpoints()[0].state;
            if (1.0..10.0).contains(&t) {
                during.lock().unwrap().push(state);
            }
            let mut ejected_at = ejected_at.lock().unwrap();
            if ejected_at.is_none() && matches!(state, EndpointState::Ejected { .. }) {
                *ejected_at = Some(t);
            }
        }
    };
    let run = Duration::from_secs(60);
    let (seen, tower_seen) = tokio::join!(
        drive(pool.clone(), 600, run, origin, watch),
        drive(tower_p2c(&theirs), 600, run, origin, fault(&theirs)),
    );
    let failures = seen.failures.len();
    let ejections = handle.endpoints()[0].ejections;
    let tower_share = share(&theirs[0], &theirs, 0.0, 10.0);
    println!(
        "failures seen: seawall {failures} (ejections {ejections}), tower p2c {}; share of the \
         calls to the failing replica during the fault: seawall {:.4} ({} calls), tower p2c \
         {tower_share:.4} ({} calls; fair share 0.1)",
        tower_seen.failures.len(),
        share(&ours[0], &ours, 0.0, 10.0),
        ours[0].calls_between(0.0, 10.0),
        theirs[0].calls_between(0.0, 10.0),
    );
    // A 503 in 1 ms looks like the fastest answer to tower's p2c: it sends the failing replica
    // more than its fair share (0.1), about 0.2 in these runs (0.1965 to 0.2013). tower's p2c
    // draws from an unseeded generator, so the bound is the fair share itself, well below that.
    assert!(
        tower_share > 0.1,
        "tower's p2c sent the failing replica a share of {tower_share:.4}"
    );
    assert!(
        share(&ours[0], &ours, 0.0, 10.0) * 10.0 <= tower_share,
        "seawall sent the failing replica {} calls, tower {}",
        ours[0].calls_between(0.0, 10.0),
        theirs[0].calls_between(0.0, 10.0)
    );
    let during = during.lock().unwrap().clone();
    assert!(
        !during.is_empty()
            && during.iter().all(|s| matches!(
                s,
                EndpointState::Penalised { .. }
                    | EndpointState::Ejected { .. }
                    | EndpointState::Probing
            )),
        "the failing replica was shown {:?} during the fault",
        during.iter().find(|s| **s == EndpointState::Available)
    );
    pool.clone().oneshot(Request::new(())).await.unwrap();
    let ejected_at = *ejected_at.lock().unwrap();
    BlackHole {
        failures,
        ejections,
        ejected_at,
        share_after: Box::new(move |from| share(&ours[0], &ours, from, run.as_secs_f64())),
    }
}

/// Black hole with the defaults: the first 503 penalises the replica (its estimate becomes 5 s),
/// which keeps it out of the draws until its recheck one ejection time (30 s) later, after the
/// fault: no rule ejects it, and clients see exactly the one failure (no recheck falls in the
/// fault). The recheck succeeds and the replica is back to at least half its fair share within
/// the ejection time plus 20 s.
#[tokio::test(start_paused = true)]
async fn black_hole() {
    let seen = black_hole_run(Pool::builder()).await;
    // The replica's recheck comes one ejection time (30 s) after its first failure, after the
    // 10 s fault: the first failure is the only one.
    assert_eq!(seen.ejections, 0);
    assert_eq!(seen.failures, 1, "clients saw {} failures", seen.failures);
    // Back by the recheck (30 s after its one failure, in the first second) plus 20 s.
    let back = (seen.share_after)(31.0 + 20.0);
    assert!(back >= 0.05, "share after its recheck + 20 s: {back:.4}");
}

/// Black hole with the failure penalty off: the consecutive-failures rule ejects the replica at
/// its fifth failure, and clients see at most those 5 plus one per probe (each ejection ends in
/// one). Its probe after the fault brings it back to at least half its fair share within the
/// ejection time (30 s, + 10 % jitter) plus 20 s of its ejection.
#[tokio::test(start_paused = true)]
async fn black_hole_without_the_failure_penalty() {
    let seen = black_hole_run(Pool::builder().no_failure_penalty()).await;
    let ejected_at = seen.ejected_at.expect("ejected");
    // Probes within the fault: none (the first ejection lasts at least 27 s).
    let probes = seen.ejections as usize - 1;
    assert_eq!(seen.ejections, 1);
    assert!(
        seen.failures <= 5 + probes,
        "clients saw {} failures (ejections: {})",
        seen.failures,
        seen.ejections
    );
    let back_by = ejected_at + 33.0 + 20.0;
    assert!(back_by <= 60.0, "ejected at {ejected_at:.2} s");
    let back = (seen.share_after)(back_by);
    assert!(back >= 0.05, "share after {back_by:.1} s: {back:.4}");
}

/// Gray failure: one replica five times slower gets at most 30 % of its fair share, and the
/// clients' p99 stays within 1.5x of an all-healthy pool's.
#[tokio::test(start_paused = true)]
async fn gray_failure() {
    let origin = Instant::now();
    let healthy = replicas(10, MS, origin);
    let gray = replicas(10, MS, origin);
    gray[0].behaviour.latency_us.store(5_000, SeqCst);
    let build = |replicas: &[Replica]| {
        Pool::builder()
            .classify(HttpClassifier::default())
            .seed(11)
            .build(replicas.to_vec())
            .unwrap()
    };
    let run = Duration::from_secs(20);
    let (baseline, seen) = tokio::join!(
        drive(build(&healthy), 600, run, origin, |_| {}),
        drive(build(&gray), 600, run, origin, |_| {}),
    );
    let slow_share = share(&gray[0], &gray, 0.0, 20.0);
    let (p99_base, p99) = (baseline.percentile(0.99), seen.percentile(0.99));
    println!("slow replica's share {slow_share:.4}; p99 {p99} us (all healthy: {p99_base} us)");
    assert!(slow_share <= 0.3 * 0.1, "slow replica got {slow_share:.4}");
    assert!(
        p99 as f64 <= 1.5 * p99_base as f64,
        "p99 {p99} us against {p99_base} us"
    );
    assert!(seen.failures.is_empty() && baseline.failures.is_empty());
}

fn states(handle: &PoolHandle) -> (usize, usize) {
    let endpoints = handle.endpoints();
    let ejected = endpoints
        .iter()
        .filter(|e| {
            matches!(
                e.state,
                EndpointState::Ejected { .. } | EndpointState::Probing
            )
        })
        .count();
    let held = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Held)
        .count();
    (ejected, held)
}

/// The cap: four of ten failing with a 30 % cap ejects exactly three (the fourth is held in
/// rotation). The failure penalty is off, so that only ejection keeps calls away.
#[tokio::test(start_paused = true)]
async fn cap_ejects_no_more_than_allowed() {
    let origin = Instant::now();
    let all = replicas(10, MS, origin);
    for r in &all[..4] {
        r.behaviour.unavailable.store(true, SeqCst);
    }
    let pool = Pool::builder()
        .classify(HttpClassifier::default())
        .no_failure_penalty()
        .initial_rtt(MS)
        .max_ejection_percent(30.0)
        .seed(3)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    let seen = drive(pool, 600, Duration::from_secs(5), origin, |_| {}).await;
    assert_eq!(states(&handle), (3, 1), "{:?}", handle.endpoints());
    assert_eq!(handle.ejected(), 3);
    assert_eq!(handle.held(), 1);
    assert_eq!(handle.healthy(), 6);
    assert!(!seen.failures.is_empty());
}

/// Every replica failing, in panic mode (the default): at most the cap is ejected, and calls
/// spread over every replica, the ejected ones included.
#[tokio::test(start_paused = true)]
async fn all_failing_panics_over_every_endpoint() {
    let origin = Instant::now();
    let all = replicas(10, MS, origin);
    for r in &all {
        r.behaviour.unavailable.store(true, SeqCst);
    }
    let pool = Pool::builder()
        .classify(HttpClassifier::default())
        .no_failure_penalty()
        .initial_rtt(MS)
        .max_ejection_percent(30.0)
        .seed(5)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    let seen = drive(pool, 600, Duration::from_secs(5), origin, |_| {}).await;
    assert_eq!(handle.ejected(), 3);
    assert_eq!(handle.healthy(), 0);
    assert!(seen.errors.is_empty(), "panic mode refuses nothing");
    for (i, r) in all.iter().enumerate() {
        assert!(
            r.calls_between(4.0, 5.0) > 0,
            "replica {i} takes calls in panic"
        );
    }
}

/// Every replica failing, failing fast: calls are refused with `NoHealthyEndpoint`, a 503.
#[tokio::test(start_paused = true)]
async fn all_failing_fails_fast() {
    let origin = Instant::now();
    let all = replicas(10, MS, origin);
    for r in &all {
        r.behaviour.unavailable.store(true, SeqCst);
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = events.clone();
    let pool = Pool::builder()
        .classify(HttpClassifier::default())
        .no_failure_penalty()
        .initial_rtt(MS)
        .max_ejection_percent(30.0)
        .fail_fast()
        .observer(move |e: &Event<'_>| recorded.lock().unwrap().push(e.kind))
        .seed(5)
        .build(all.clone())
        .unwrap();
    let seen = drive(pool.clone(), 600, Duration::from_secs(5), origin, |_| {}).await;
    assert!(!seen.errors.is_empty());
    let calls_late: u64 = all.iter().map(|r| r.calls_between(4.0, 5.0)).sum();
    assert_eq!(
        calls_late, 0,
        "nothing is sent while no endpoint is healthy"
    );
    let err = pool.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(ErrorKind::NoHealthyEndpoint)
    );
    assert_eq!(
        seawall::http::status(ErrorKind::NoHealthyEndpoint),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| matches!(
        e,
        EventKind::Rejected {
            reason: seawall::core::RejectReason::NoHealthyEndpoint
        }
    )));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, EventKind::EndpointEjected { .. }))
            .count(),
        3
    );
}

/// Failing fast with every endpoint ejected, refusals skip the walk of the endpoints until the
/// first ejection ends or something changes; neither is missed: the probe goes out when it is
/// due, and one given back (dropped) is claimed again by the very next call.
#[tokio::test(start_paused = true)]
async fn fail_fast_refusals_do_not_delay_probes() {
    let eps = [Switch::default(), Switch::default(), Switch::default()];
    let pool = one_failure_ejects()
        .max_ejection_percent(100.0)
        .fail_fast()
        .seed(9)
        .build(eps.to_vec())
        .unwrap();
    let handle = pool.handle();
    // The first ejected 5 s before the others: its probe is due alone.
    eps[0].fail(true);
    while handle.ejected() < 1 {
        let _ = pool.clone().oneshot(1).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    for ep in &eps {
        ep.fail(true);
    }
    while handle.ejected() < 3 {
        let _ = pool.clone().oneshot(1).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let sent = |eps: &[Switch]| eps.iter().map(Switch::calls).sum::<u64>();
    let polled = |eps: &[Switch]| eps.iter().map(Switch::polls).sum::<u64>();
    let before = sent(&eps);
    let polls = polled(&eps);
    let first_polls = eps[0].polls();
    let refused = |e: BoxError| seawall::error::kind(&*e) == Some(ErrorKind::NoHealthyEndpoint);
    // Refused, again and again, up to a moment before the first ejection (30 s) ends, with no
    // endpoint polled: nothing is due.
    for _ in 0..100 {
        assert!(refused(pool.clone().oneshot(1).await.unwrap_err()));
    }
    tokio::time::advance(Duration::from_millis(19_990)).await;
    assert!(refused(pool.clone().oneshot(1).await.unwrap_err()));
    assert_eq!(sent(&eps), before);
    assert_eq!(
        polled(&eps),
        polls,
        "an endpoint polled before its probe was due"
    );
    // The first ejection's end: its probe is claimed by a clone made ready; the next call is
    // refused (the claim holds for a second), and finds nothing due before its takeover.
    for ep in &eps {
        ep.fail(false);
    }
    tokio::time::advance(Duration::from_millis(10)).await;
    let mut dropped = pool.clone();
    futures::future::poll_fn(|cx| dropped.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    // The due probe's endpoint, and it alone, was polled (the refusals before did not skip it).
    assert_eq!(polled(&eps), polls + 1, "polls");
    assert_eq!(
        eps[0].polls(),
        first_polls + 1,
        "the first endpoint's probe polled"
    );
    assert!(refused(pool.clone().oneshot(1).await.unwrap_err()));
    // The clone dropped unsent gives the probe back: the very next call must take it, not
    // trust the quiet time the refusal found.
    drop(dropped);
    pool.clone().oneshot(1).await.unwrap();
    assert_eq!(sent(&eps), before + 1, "the probe went out");
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    assert_eq!(handle.ejected(), 2);
    pool.clone().oneshot(1).await.unwrap();
}

/// With the failure penalty on (the default), one failure takes an endpoint out of the draws
/// long before the consecutive rule ejects it: the handle shows it `Penalised` until its recheck
/// is due (one ejection time later), and `Available` from then on.
#[tokio::test(start_paused = true)]
async fn an_endpoint_kept_out_by_the_penalty_is_shown_penalised() {
    let eps = [Switch::default(), Switch::default()];
    let mut pool = Pool::builder()
        .initial_rtt(MS)
        .seed(5)
        .build(eps.to_vec())
        .unwrap();
    let handle = pool.handle();
    eps[0].fail(true);
    // Calls until endpoint 0 has failed once.
    while eps[0].calls() == 0 {
        let _ = pool.ready().await.unwrap().call(1).await;
    }
    let status = &handle.endpoints()[0];
    assert_eq!(
        status.state,
        EndpointState::Penalised {
            recheck_in: Duration::from_secs(30)
        }
    );
    assert_eq!(
        (status.consecutive_local_failures, status.ejections),
        (1, 0)
    );
    assert_eq!(
        (handle.penalised(), handle.healthy(), handle.ejected()),
        (1, 2, 0)
    );
    // It draws no call until its recheck, which is counted down.
    for _ in 0..50 {
        pool.ready().await.unwrap().call(1).await.unwrap();
    }
    assert_eq!(eps[0].calls(), 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        handle.endpoints()[0].state,
        EndpointState::Penalised {
            recheck_in: Duration::from_secs(20)
        }
    );
    // Healed; its recheck, 30 s after the failure, brings it back.
    eps[0].fail(false);
    tokio::time::advance(Duration::from_secs(20)).await;
    // Its recheck due, an idle pool shows it available (it waits for a call to draw it), not
    // penalised for ever.
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    assert_eq!(handle.penalised(), 0);
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    while eps[0].calls() == 1 {
        pool.ready().await.unwrap().call(1).await.unwrap();
    }
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    assert_eq!(handle.penalised(), 0);
}

/// Consecutive failures eject; when the ejection ends exactly one probe goes to the endpoint;
/// a failed probe ejects it again for longer; a successful one brings it back.
#[tokio::test(start_paused = true)]
async fn ejection_then_one_probe() {
    let origin = Instant::now();
    let all = replicas(2, MS, origin);
    all[0].behaviour.erroring.store(true, SeqCst);
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = events.clone();
    let pool = Pool::builder()
        .no_failure_penalty()
        .initial_rtt(MS)
        .ejection_jitter(0.0)
        .observer(move |e: &Event<'_>| {
            if let Some(key) = e.key {
                recorded.lock().unwrap().push((format!("{key:?}"), e.kind))
            }
        })
        .seed(1)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    // 100 calls a second for 2 s: the erroring replica is ejected after 5 local failures.
    let seen = drive(pool.clone(), 100, Duration::from_secs(2), origin, |_| {}).await;
    assert_eq!(seen.failures.len(), 5, "five failures in a row eject");
    assert!(matches!(
        handle.endpoints()[0].state,
        EndpointState::Ejected { .. }
    ));
    let ejected_calls = all[0].calls();
    // Past the 30 s ejection, still failing: one probe, then ejected for 60 s.
    tokio::time::advance(Duration::from_secs(29)).await;
    let seen = drive(pool.clone(), 100, Duration::from_secs(2), origin, |_| {}).await;
    assert_eq!(all[0].calls(), ejected_calls + 1, "exactly one probe");
    assert_eq!(seen.failures.len(), 1);
    match handle.endpoints()[0].state {
        EndpointState::Ejected { remaining } => assert!(
            remaining > Duration::from_secs(55),
            "ejected again for longer: {remaining:?}"
        ),
        other => panic!("ejected again, not {other:?}"),
    }
    // Healed: the next probe brings it back.
    all[0].behaviour.erroring.store(false, SeqCst);
    tokio::time::advance(Duration::from_secs(60)).await;
    let seen = drive(pool.clone(), 100, Duration::from_secs(2), origin, |_| {}).await;
    assert!(seen.failures.is_empty());
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    let kinds: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(key, _)| key == "0")
        .map(|(_, kind)| format!("{kind:?}"))
        .collect();
    assert!(
        kinds.iter().any(|k| k.contains("ConsecutiveLocalFailures")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k.contains("ProbeFailed")), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "EndpointReturned"), "{kinds:?}");
}

/// A clone that claimed a probe in `poll_ready` and is never called does not hold it: another
/// clone takes the claim over, and the endpoint comes back.
#[tokio::test(start_paused = true)]
async fn an_idle_ready_clone_does_not_hold_the_probe() {
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

/// A claim taken over is the new claimant's: the clone that lost it, called late while the
/// endpoint is still ejected, sends nothing and fails with `EndpointUnavailable` (safe to retry).
#[tokio::test(start_paused = true)]
async fn a_probe_claim_taken_over_is_not_sent_by_the_clone_that_lost_it() {
    let eps = [Switch::default(), Switch::default()];
    let pool = one_failure_ejects().seed(16).build(eps.clone()).unwrap();
    let handle = pool.handle();
    eject_until_probe_due(&pool, &handle, &eps, false).await;
    let mut idle = pool.clone();
    futures::future::poll_fn(|cx| idle.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    // Within a second the claim is the idle clone's: others do not probe.
    tokio::time::advance(Duration::from_millis(900)).await;
    pool.clone().oneshot(1).await.unwrap();
    assert_eq!(eps[0].calls(), 1, "no second probe");
    // After it, another clone takes the claim over; its probe fails again.
    tokio::time::advance(Duration::from_millis(200)).await;
    let _ = pool.clone().oneshot(1).await;
    assert_eq!(eps[0].calls(), 2, "the probe taken over");
    assert!(matches!(
        handle.endpoints()[0].state,
        EndpointState::Ejected { .. }
    ));
    let err = idle.call(1).await.unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(ErrorKind::EndpointUnavailable)
    );
    assert_eq!(eps[0].calls(), 2, "nothing sent by the clone that lost it");
}

/// The probe-claim timeout is the builder's: with 5 s, a claim held by an idle clone is not
/// taken over after 4.9 s, and is at 5 s.
#[tokio::test(start_paused = true)]
async fn the_probe_claim_timeout_is_configurable() {
    let eps = [Switch::default(), Switch::default()];
    let pool = one_failure_ejects()
        .probe_claim_timeout(Duration::from_secs(5))
        .seed(16)
        .build(eps.clone())
        .unwrap();
    let handle = pool.handle();
    eject_until_probe_due(&pool, &handle, &eps, false).await;
    let mut idle = pool.clone();
    futures::future::poll_fn(|cx| idle.poll_ready(cx))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(4_900)).await;
    pool.clone().oneshot(1).await.unwrap();
    assert_eq!(eps[0].calls(), 1, "the idle clone's claim still holds");
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    tokio::time::advance(Duration::from_millis(100)).await;
    let _ = pool.clone().oneshot(1).await;
    assert_eq!(eps[0].calls(), 2, "the probe taken over at 5 s");
    drop(idle);
}

/// A claimed probe is given back whatever unwinds: an endpoint readiness that panics right after
/// the claim, or an observer that panics in `call`. The endpoint is probed by the next call.
#[tokio::test(start_paused = true)]
async fn a_probe_claim_is_given_back_when_something_panics() {
    let eps = [Switch::default(), Switch::default()];
    let panicking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let armed = panicking.clone();
    let pool = one_failure_ejects()
        .observer(move |e: &Event<'_>| {
            if matches!(e.kind, EventKind::Permitted) && armed.load(SeqCst) {
                panic!("observer panicked");
            }
        })
        .seed(17)
        .build(eps.clone())
        .unwrap();
    let handle = pool.handle();
    eject_until_probe_due(&pool, &handle, &eps, true).await;
    let poll_ready = |pool: &mut Pool<usize, Switch, _, _>| {
        let mut cx = task::spawn(());
        cx.enter(|cx, _| pool.poll_ready(cx))
    };
    // The endpoint's readiness panics once, right after its probe was claimed.
    eps[0].set(PANIC_ONCE);
    let mut a = pool.clone();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_ready(&mut a)));
    assert!(unwound.is_err());
    assert!(
        matches!(handle.endpoints()[0].state, EndpointState::Ejected { .. }),
        "{:?}",
        handle.endpoints()[0]
    );
    // The observer panics as the probe's call is made.
    let mut b = pool.clone();
    assert!(matches!(poll_ready(&mut b), Poll::Ready(Ok(()))));
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    panicking.store(true, SeqCst);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.call(1)));
    assert!(unwound.is_err());
    panicking.store(false, SeqCst);
    assert!(
        matches!(handle.endpoints()[0].state, EndpointState::Ejected { .. }),
        "{:?}",
        handle.endpoints()[0]
    );
    // Nothing leaked: the next call probes the endpoint and brings it back.
    let before = eps[0].calls();
    pool.clone().oneshot(1).await.unwrap();
    assert_eq!(eps[0].calls(), before + 1);
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
}

/// `Retry-After` on a 503 ejects the endpoint for that long (capped).
#[tokio::test(start_paused = true)]
async fn retry_after_ejects_for_the_hint() {
    let hinted = tower::service_fn(|_: Request<()>| async {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        Ok::<_, std::io::Error>(response)
    });
    let fine =
        tower::service_fn(|_: Request<()>| async { Ok::<_, std::io::Error>(Response::new(())) });
    let pool = Pool::builder()
        .classify(HttpClassifier::default())
        .seed(2)
        .build([
            tower::util::BoxCloneSyncService::new(hinted),
            tower::util::BoxCloneSyncService::new(fine),
        ])
        .unwrap();
    let handle = pool.handle();
    for _ in 0..20 {
        pool.clone().oneshot(Request::new(())).await.unwrap();
        if handle.ejected() == 1 {
            break;
        }
    }
    match handle.endpoints()[0].state {
        EndpointState::Ejected { remaining } => {
            assert!(remaining <= Duration::from_secs(7) && remaining > Duration::from_secs(6))
        }
        other => panic!("ejected for the hint, not {other:?}"),
    }
}

/// An endpoint whose readiness fails is ejected, not the pool: the pool stays ready on the
/// others, and tries the endpoint again when its ejection ends.
#[tokio::test(start_paused = true)]
async fn readiness_errors_are_not_final() {
    let origin = Instant::now();
    let all = replicas(2, MS, origin);
    all[0].behaviour.not_ready.store(true, SeqCst);
    let pool = Pool::builder()
        .ejection_jitter(0.0)
        .seed(4)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    let seen = drive(pool.clone(), 100, Duration::from_secs(1), origin, |_| {}).await;
    assert!(seen.failures.is_empty(), "{:?}", seen.errors);
    assert_eq!(all[0].calls(), 0);
    assert_eq!(handle.ejected(), 1);
    all[0].behaviour.not_ready.store(false, SeqCst);
    tokio::time::advance(Duration::from_secs(31)).await;
    drive(pool.clone(), 100, Duration::from_secs(2), origin, |_| {}).await;
    assert_eq!(handle.ejected(), 0);
    assert!(all[0].calls() > 0, "the endpoint is back");
    // Every endpoint's readiness failing: the pool waits (panic mode skips endpoints whose
    // readiness failed until their time), never fails for good.
    for r in &all {
        r.behaviour.not_ready.store(true, SeqCst);
    }
    let mut t = task::spawn(pool.clone().oneshot(Request::new(())));
    for _ in 0..4 {
        assert_pending!(t.poll());
    }
    for r in &all {
        r.behaviour.not_ready.store(false, SeqCst);
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::task::yield_now().await;
    assert!(t.is_woken(), "woken when an ejection ends");
    assert_pending!(t.poll(), "the call is made, and takes its time");
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_ready!(t.poll()).unwrap();
}

/// A pool whose endpoints are ejected by one failure (no penalty, no jitter).
fn one_failure_ejects() -> seawall::pool::Builder {
    Pool::builder()
        .no_failure_penalty()
        .consecutive_local_failures(1)
        .ejection_jitter(0.0)
}

/// Ejects the first of `eps` by failing its calls, then waits until its probe is due (healed
/// first if `heal`).
async fn eject_until_probe_due<P>(pool: &P, handle: &PoolHandle, eps: &[Switch], heal: bool)
where
    P: Service<u32, Response = u32, Error = BoxError> + Clone,
{
    eps[0].fail(true);
    while handle.ejected() == 0 {
        let _ = pool.clone().oneshot(1).await;
    }
    if heal {
        eps[0].fail(false);
    }
    tokio::time::advance(Duration::from_secs(31)).await;
}

/// One endpoint's readiness pending must not stall a call while another endpoint is ready.
#[tokio::test(start_paused = true)]
async fn a_pending_endpoint_is_passed_over_for_a_ready_one() {
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

/// Two endpoints, the first ejected (healed) and due its probe, both with their readiness
/// pending; also how many calls the first has had.
async fn probe_due_all_pending() -> (
    impl Service<u32, Response = u32, Error = BoxError> + Clone,
    PoolHandle,
    [Switch; 2],
    u64,
) {
    let eps = [Switch::default(), Switch::default()];
    let pool = one_failure_ejects().seed(13).build(eps.clone()).unwrap();
    let handle = pool.handle();
    eject_until_probe_due(&pool, &handle, &eps, true).await;
    eps[0].set(PENDING);
    eps[1].set(PENDING);
    let before = eps[0].calls();
    (pool, handle, eps, before)
}

/// Every endpoint pending: the call waits with no call counted, holding the probe it claimed
/// (another clone may take it over after a second), without waking itself, and is woken by the
/// endpoint it kept waiting on.
#[tokio::test(start_paused = true)]
async fn every_endpoint_pending_waits_with_no_call_counted() {
    let (pool, handle, eps, before) = probe_due_all_pending().await;
    let mut t = task::spawn(pool.clone().oneshot(7));
    assert_pending!(t.poll());
    assert!(
        !t.is_woken(),
        "a pending probe must not make the call wake itself"
    );
    for e in handle.endpoints() {
        assert_eq!(e.in_flight, 0, "{e:?}");
    }
    assert_eq!(
        handle.endpoints()[0].state,
        EndpointState::Probing,
        "the pending endpoint's probe is held by the waiting call"
    );
    eps[0].set(READY);
    eps[1].set(READY);
    assert!(t.is_woken());
    assert_eq!(assert_ready!(t.poll()).unwrap(), 7);
    assert_eq!(eps[0].calls(), before + 1, "the held probe went out");
}

/// An endpoint whose readiness is per clone, as a client's connection set-up is: a clone's
/// first `poll_ready` starts it (counted in `starts`), and it is ready once the test opens the
/// gate; a fresh clone starts over.
#[derive(Clone)]
struct Warming {
    gate: Arc<WarmingGate>,
    started: bool,
}

#[derive(Default)]
struct WarmingGate {
    open: std::sync::atomic::AtomicBool,
    starts: std::sync::atomic::AtomicU64,
    wakers: Mutex<Vec<std::task::Waker>>,
}

impl WarmingGate {
    fn open(&self) {
        self.open.store(true, SeqCst);
        for w in self.wakers.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

impl Service<u32> for Warming {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !std::mem::replace(&mut self.started, true) {
            self.gate.starts.fetch_add(1, SeqCst);
        }
        if self.gate.open.load(SeqCst) {
            return Poll::Ready(Ok(()));
        }
        self.gate.wakers.lock().unwrap().push(cx.waker().clone());
        Poll::Pending
    }
    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

/// Every endpoint tried and found pending is kept, not only the first, up to four (a fixed
/// array): woken again and again, a waiting call starts no kept endpoint's readiness over (a
/// review's finding: the others were dropped and restarted at each wake), and whichever gets
/// ready first takes the call. Past four, a pending endpoint is not kept: it is tried again (its
/// readiness started over) at each poll.
#[tokio::test(start_paused = true)]
async fn every_pending_endpoint_tried_is_kept() {
    let gates: Vec<Arc<WarmingGate>> = (0..6).map(|_| Arc::default()).collect();
    let eps = gates.iter().map(|gate| Warming {
        gate: gate.clone(),
        started: false,
    });
    let pool = Pool::builder().seed(2).build(eps).unwrap();
    let mut t = task::spawn(pool.clone().oneshot(7));
    let starts = |gates: &[Arc<WarmingGate>]| -> Vec<u64> {
        gates.iter().map(|g| g.starts.load(SeqCst)).collect()
    };
    let sorted = |gates: &[Arc<WarmingGate>]| -> Vec<u64> {
        let mut starts = starts(gates);
        starts.sort_unstable();
        starts
    };
    // One poll tries three endpoints, all pending, all kept.
    assert_pending!(t.poll());
    assert_eq!(sorted(&gates), [0, 0, 0, 1, 1, 1], "three tried");
    // The next keeps those three and tries the three others: the array's fourth place takes
    // one, and the fifth and sixth pending endpoints are not kept.
    assert_pending!(t.poll());
    assert_eq!(sorted(&gates), [1, 1, 1, 1, 1, 1], "every endpoint tried");
    // Polled again and again (as a wake by another endpoint's state would): the four kept are
    // never started over; the two past the array are, at each poll.
    for _ in 0..5 {
        assert_pending!(t.poll());
    }
    assert_eq!(sorted(&gates), [1, 1, 1, 1, 6, 6], "{:?}", starts(&gates));
    // A kept endpoint gets ready: its kept clone takes the call, nothing started over.
    let kept = starts(&gates).iter().position(|&n| n == 1).unwrap();
    let before = starts(&gates);
    gates[kept].open();
    assert!(t.is_woken());
    assert_eq!(assert_ready!(t.poll()).unwrap(), 7);
    assert_eq!(starts(&gates), before);
}

/// Issue 24: calls waiting on a pending probe (and the clones beside them) stop waking
/// themselves, so that paused time can move on, and are woken by the endpoints' readiness.
#[tokio::test(start_paused = true)]
async fn a_pending_probe_does_not_busy_loop_its_waiting_calls() {
    let (pool, handle, eps, before) = probe_due_all_pending().await;
    let mut a = task::spawn(pool.clone().oneshot(1));
    let mut b = task::spawn(pool.clone().oneshot(2));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let mut polls = 0;
    while (a.is_woken() || b.is_woken()) && polls < 100 {
        if a.is_woken() {
            assert_pending!(a.poll());
        }
        if b.is_woken() {
            assert_pending!(b.poll());
        }
        polls += 1;
    }
    assert!(
        !a.is_woken() && !b.is_woken(),
        "still waking after {polls} polls: {:?}",
        handle.endpoints()
    );
    // Nothing wakes them while time passes (less than the claim's takeover time)...
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!a.is_woken() && !b.is_woken());
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    // ...until an endpoint gets ready: the one holding the probe sends it.
    eps[0].set(READY);
    assert!(a.is_woken());
    assert_eq!(assert_ready!(a.poll()).unwrap(), 1);
    assert_eq!(eps[0].calls(), before + 1);
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    eps[1].set(READY);
    assert!(b.is_woken());
    assert_eq!(assert_ready!(b.poll()).unwrap(), 2);
}

/// Two probes due and every endpoint pending: the call keeps one probe and gives back any other
/// it claimed without waking itself.
#[tokio::test(start_paused = true)]
async fn a_second_pending_probe_is_given_back_quietly() {
    for seed in 0..20 {
        let eps: [Switch; 4] = Default::default();
        let pool = one_failure_ejects().seed(seed).build(eps.clone()).unwrap();
        let handle = pool.handle();
        eps[0].fail(true);
        eps[1].fail(true);
        while handle.ejected() < 2 {
            let _ = pool.clone().oneshot(1).await;
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        for e in &eps {
            e.set(PENDING);
        }
        let mut t = task::spawn(pool.clone().oneshot(1));
        assert_pending!(t.poll());
        assert!(!t.is_woken(), "seed {seed}: woke itself");
        let probing = handle
            .endpoints()
            .iter()
            .filter(|e| e.state == EndpointState::Probing)
            .count();
        assert_eq!(probing, 1, "seed {seed}: {:?}", handle.endpoints());
    }
}

/// An endpoint held in by the cap whose readiness fails must not stall calls while two
/// healthy endpoints are ready.
#[tokio::test(start_paused = true)]
async fn a_held_endpoint_whose_readiness_fails_is_passed_over() {
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

/// A readiness error counts as a local failure with the failure penalty (but as no call): an
/// endpoint the cap holds in draws no load for it, and is never failed for the pool.
#[tokio::test(start_paused = true)]
async fn a_readiness_error_counts_as_a_penalised_failure() {
    let eps = [Switch::default(), Switch::default(), Switch::default()];
    let pool = Pool::builder()
        .max_ejection_percent(34.0) // cap 1 of 3
        .initial_rtt(MS)
        .seed(14)
        .build(eps.clone())
        .unwrap();
    let handle = pool.handle();
    eps[0].set(NOT_READY);
    eps[1].set(NOT_READY);
    for _ in 0..20 {
        assert_eq!(pool.clone().oneshot(3).await.unwrap(), 3);
    }
    assert_eq!((handle.ejected(), handle.held()), (1, 1));
    let held = handle
        .endpoints()
        .into_iter()
        .find(|e| e.state == EndpointState::Held)
        .unwrap();
    assert!(held.local_failures >= 1, "{held:?}");
    // Its readiness errors are no calls: nothing in its calls, failures or window.
    let i: usize = held.key.parse().unwrap();
    assert_eq!(held.calls, eps[i].calls(), "{held:?}");
    assert_eq!(held.failures, 0, "{held:?}");
    assert!(
        held.rtt >= Duration::from_millis(4900),
        "penalised: {held:?}"
    );
    assert_eq!(eps[0].calls() + eps[1].calls(), 0);
    assert_eq!(eps[2].calls(), 20);
}

/// An endpoint the cap holds in wakes the clones waiting for a change: with it no endpoint
/// may be healthy, and a pool that fails fast then refuses at once.
#[tokio::test(start_paused = true)]
async fn an_endpoint_becoming_held_wakes_waiting_clones() {
    let eps = [Switch::default(), Switch::default()];
    let pool = Pool::builder()
        .fail_fast()
        .no_failure_penalty()
        .consecutive_local_failures(1)
        .seed(15)
        .build(eps.clone())
        .unwrap();
    let handle = pool.handle();
    // The first endpoint's readiness fails: ejected (the cap, one of two, is reached).
    eps[0].set(NOT_READY);
    while handle.ejected() == 0 {
        pool.clone().oneshot(1).await.unwrap();
    }
    let mut b = pool.clone();
    futures::future::poll_fn(|cx| b.poll_ready(cx))
        .await
        .unwrap();
    // The other endpoint's readiness now pends: a new call waits on it.
    eps[1].set(PENDING);
    eps[1].fail(true);
    let mut t = task::spawn(pool.clone().oneshot(2));
    assert_pending!(t.poll());
    assert!(!t.is_woken());
    // `b`'s call fails: the endpoint would be ejected, and the cap holds it in instead.
    b.call(1).await.unwrap_err();
    assert_eq!(handle.held(), 1);
    assert!(t.is_woken(), "the waiting call is told");
    let err = assert_ready!(t.poll()).unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(ErrorKind::NoHealthyEndpoint)
    );
}

/// The load: a slow endpoint's estimate is its own time, a failure's the penalty.
#[tokio::test(start_paused = true)]
async fn load_is_peak_ewma_times_in_flight() {
    let origin = Instant::now();
    let all = replicas(2, Duration::from_millis(10), origin);
    let pool = Pool::builder()
        .initial_rtt(Duration::from_millis(5))
        .seed(9)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    let before = handle.endpoints();
    assert_eq!(
        before[0].rtt,
        Duration::from_millis(5),
        "the initial estimate"
    );
    drive(pool.clone(), 50, Duration::from_secs(1), origin, |_| {}).await;
    for e in handle.endpoints() {
        assert!(
            e.rtt >= Duration::from_millis(9) && e.rtt <= Duration::from_millis(21),
            "{e:?}"
        );
        assert_eq!(e.in_flight, 0);
    }
    all[1].behaviour.erroring.store(true, SeqCst);
    let mut p = pool.clone();
    for _ in 0..40 {
        let _ = p.ready().await.unwrap().call(Request::new(())).await;
        if handle.endpoints()[1].failures > 0 {
            break;
        }
    }
    let penalised = &handle.endpoints()[1];
    assert!(
        penalised.rtt >= Duration::from_millis(4900),
        "{penalised:?}"
    );
    assert!(penalised.load > 4.9);
}

/// Discovery churn: endpoints inserted and removed under load; no call reaches a removed
/// endpoint, nothing panics, every call ends and nothing stays counted in flight.
#[tokio::test(start_paused = true)]
async fn discovery_churn() {
    let origin = Instant::now();
    let (changes, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|change| (Ok::<_, std::io::Error>(change), rx))
    });
    let (pool, driver) = Pool::builder()
        .classify(HttpClassifier::default())
        .seed(8)
        .build_discover(Box::pin(stream))
        .unwrap();
    let handle = pool.handle();
    let driver = tokio::spawn(driver);
    let mut live: Vec<(u32, Replica)> = Vec::new();
    let mut all: Vec<Replica> = Vec::new();
    for key in 0..5u32 {
        let replica = Replica::new(MS, origin);
        changes.send(Change::Insert(key, replica.clone())).unwrap();
        live.push((key, replica.clone()));
        all.push(replica);
    }
    // Ready waits for discovery, then serves.
    let mut waiting = pool.clone();
    tokio::task::yield_now().await;
    waiting.ready().await.unwrap();
    let churn = {
        let handle = handle.clone();
        let all_len = all.len() as u32;
        let mut next_key = all_len;
        let mut removed_keys = Vec::new();
        let mut pending_removal: Option<(u32, Replica)> = None;
        let mut live = live;
        let mut new = Vec::new();
        let mut last = 0.0;
        move |t: f64| {
            // A removal applied by the driver: from now on no call may reach it.
            if let Some((key, replica)) = &pending_removal {
                let gone = !handle
                    .endpoints()
                    .iter()
                    .any(|e| e.key == format!("{key:?}"));
                if gone {
                    replica.behaviour.removed.store(true, SeqCst);
                    removed_keys.push(*key);
                    pending_removal = None;
                }
            }
            if t - last >= 0.25 && pending_removal.is_none() {
                last = t;
                let (key, replica) = live.remove(0);
                changes.send(Change::Remove(key)).unwrap();
                pending_removal = Some((key, replica));
                let replica = Replica::new(MS, origin);
                changes
                    .send(Change::Insert(next_key, replica.clone()))
                    .unwrap();
                live.push((next_key, replica.clone()));
                new.push(replica);
                next_key += 1;
            }
        }
    };
    let seen = drive(pool.clone(), 600, Duration::from_secs(5), origin, churn).await;
    assert!(
        seen.failures.is_empty(),
        "{:?}",
        &seen.errors[..seen.errors.len().min(3)]
    );
    for r in &all {
        assert_eq!(
            r.behaviour.after_removal.load(SeqCst),
            0,
            "a call reached a removed endpoint"
        );
    }
    for e in handle.endpoints() {
        assert_eq!(e.in_flight, 0, "{e:?}");
    }
    assert_eq!(handle.len(), 5);
    // Removed endpoints are dropped: only the test's copies of the first ones remain.
    drop(waiting);
    for r in &all {
        if r.behaviour.removed.load(SeqCst) {
            assert_eq!(
                Arc::strong_count(&r.behaviour),
                1,
                "a removed endpoint is freed"
            );
        }
    }
    drop(pool);
    drop(handle);
    // The stream ended with the test's sender: the driver with it.
    driver.await.unwrap().unwrap();
}

/// No request goes to a removed endpoint: a clone made ready on an endpoint that discovery
/// then removes fails its call with `EndpointUnavailable` (a 503, safe to retry) and sends
/// nothing; the next call chooses again.
#[tokio::test(start_paused = true)]
async fn a_call_after_its_endpoint_was_removed_is_refused() {
    let (changes, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|change| (Ok::<_, std::io::Error>(change), rx))
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = events.clone();
    let (pool, driver) = Pool::builder()
        .observer(move |e: &Event<'_>| recorded.lock().unwrap().push(e.kind))
        .seed(18)
        .build_discover(Box::pin(stream))
        .unwrap();
    let handle = pool.handle();
    tokio::spawn(driver);
    let (gone, kept) = (Switch::default(), Switch::default());
    changes.send(Change::Insert(0u32, gone.clone())).unwrap();
    let mut a = pool.clone();
    a.ready().await.unwrap();
    changes.send(Change::Insert(1u32, kept.clone())).unwrap();
    changes.send(Change::Remove(0u32)).unwrap();
    while handle.len() != 1 || handle.endpoints()[0].key != "1" {
        tokio::task::yield_now().await;
    }
    let err = a.call(5).await.unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(ErrorKind::EndpointUnavailable)
    );
    assert_eq!(
        seawall::http::status(ErrorKind::EndpointUnavailable),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        EventKind::Rejected {
            reason: seawall::core::RejectReason::EndpointUnavailable
        }
    )));
    assert_eq!(gone.calls(), 0, "nothing reached the removed endpoint");
    assert_eq!(a.ready().await.unwrap().call(6).await.unwrap(), 6);
    assert_eq!(kept.calls(), 1);
}

/// A repeated `poll_ready` answers for now: an endpoint ejected since is given up for another.
#[tokio::test(start_paused = true)]
async fn repeated_poll_ready_answers_for_now() {
    let origin = Instant::now();
    let all = replicas(1, MS, origin);
    let pool = Pool::builder()
        .fail_fast()
        .no_failure_penalty()
        .consecutive_local_failures(1)
        .seed(6)
        .build(all.clone())
        .unwrap();
    let mut a = pool.clone();
    let mut cx = task::spawn(());
    assert_ready!(cx.enter(|cx, _| a.poll_ready(cx))).unwrap();
    // Another clone's failure ejects the only endpoint.
    all[0].behaviour.erroring.store(true, SeqCst);
    let _ = pool.clone().oneshot(Request::new(())).await;
    assert_eq!(pool.handle().ejected(), 1);
    assert_ready!(cx.enter(|cx, _| a.poll_ready(cx))).unwrap();
    let err = a.call(Request::new(())).await.unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(ErrorKind::NoHealthyEndpoint)
    );
}

/// Bad configuration is a typed error, never a panic.
#[test]
fn bad_configuration_is_an_error() {
    let build = |b: seawall::pool::Builder| b.build(Vec::<Replica>::new()).map(drop);
    let d = Duration::from_secs(1);
    let cases: Vec<(seawall::pool::Builder, ConfigError)> = vec![
        (
            Pool::builder().max_ejection_percent(150.0),
            ConfigError::MaxEjectionPercent(150.0),
        ),
        (
            Pool::builder().max_ejection_percent(0.0),
            ConfigError::MaxEjectionPercent(0.0),
        ),
        (
            Pool::builder().max_ejection_percent(f64::NAN),
            ConfigError::MaxEjectionPercent(f64::NAN),
        ),
        (
            Pool::builder().consecutive_failures(0),
            ConfigError::ConsecutiveFailures,
        ),
        (
            Pool::builder().probe_claim_timeout(Duration::ZERO),
            ConfigError::ProbeClaimTimeout,
        ),
        (
            Pool::builder()
                .ejection_time(Duration::from_secs(2))
                .probe_claim_timeout(Duration::from_millis(2001)),
            ConfigError::ProbeClaimTimeoutAboveEjectionTime {
                timeout: Duration::from_millis(2001),
                ejection_time: Duration::from_secs(2),
            },
        ),
        (
            Pool::builder().consecutive_local_failures(0),
            ConfigError::ConsecutiveFailures,
        ),
        (
            Pool::builder().failure_percentage(101.0, 50, 5),
            ConfigError::FailurePercentage(101.0),
        ),
        (
            Pool::builder().failure_percentage(85.0, 0, 5),
            ConfigError::MinimumCalls,
        ),
        (
            Pool::builder().failure_percentage(85.0, 50, 0),
            ConfigError::MinimumEndpoints,
        ),
        (
            Pool::builder().success_rate(-1.0, 100, 5),
            ConfigError::StdevFactor(-1.0),
        ),
        (
            Pool::builder().success_rate(1.9, 0, 5),
            ConfigError::MinimumCalls,
        ),
        (
            Pool::builder().interval(Duration::ZERO),
            ConfigError::Interval(Duration::ZERO),
        ),
        (
            Pool::builder().ejection_time(Duration::ZERO),
            ConfigError::EjectionTime,
        ),
        (
            Pool::builder()
                .ejection_time(d * 10)
                .ejection_backoff(2.0, d),
            ConfigError::MaxEjectionTime {
                base: d * 10,
                max: d,
            },
        ),
        (
            Pool::builder().ejection_backoff(0.5, d * 300),
            ConfigError::EjectionMultiplier(0.5),
        ),
        (
            Pool::builder().ejection_jitter(1.5),
            ConfigError::EjectionJitter(1.5),
        ),
        (
            Pool::builder().honour_retry_after(Duration::ZERO),
            ConfigError::MaxRetryAfter,
        ),
        (
            Pool::builder().initial_rtt(Duration::ZERO),
            ConfigError::InitialRtt,
        ),
        (Pool::builder().decay(Duration::ZERO), ConfigError::Decay),
        (
            Pool::builder().failure_penalty(Duration::ZERO),
            ConfigError::FailurePenalty,
        ),
    ];
    for (builder, expected) in cases {
        let error = build(builder).unwrap_err();
        // NaN is never equal to itself: compare the message.
        assert_eq!(error.to_string(), expected.to_string());
    }
    assert!(build(Pool::builder()).is_ok());
    // The default probe-claim timeout (1 s) is shortened to a shorter ejection time; one given
    // may equal it.
    let short = Duration::from_millis(500);
    assert!(build(Pool::builder().ejection_time(short)).is_ok());
    assert!(build(
        Pool::builder()
            .ejection_time(short)
            .probe_claim_timeout(short)
    )
    .is_ok());
}

/// The error and its mapping to statuses.
#[test]
fn no_healthy_endpoint_maps_to_503() {
    assert_eq!(ErrorKind::NoHealthyEndpoint.as_str(), "no_healthy_endpoint");
    assert_eq!(
        seawall::http::status(ErrorKind::NoHealthyEndpoint),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        seawall::tonic::code(ErrorKind::NoHealthyEndpoint),
        tonic::Code::Unavailable
    );
    let _: Poll<()> = Poll::Pending;
    let _: Option<BoxError> = None;
}

/// The endpoints of `handle` ejected for `reason` (by key), as the observer saw them.
fn ejected_for(events: &Mutex<Vec<(String, EventKind)>>, reason: EjectReason) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, kind)| matches!(kind, EventKind::EndpointEjected { reason: r, .. } if *r == reason))
        .map(|(key, _)| key.clone())
        .collect()
}

/// A pool whose only ejection rules are the ones the test adds (no consecutive failures, no
/// penalty), recording each keyed event.
fn rules_only(
    events: &Arc<Mutex<Vec<(String, EventKind)>>>,
) -> seawall::pool::Builder<HttpClassifier, impl seawall::core::Observer> {
    let recorded = events.clone();
    Pool::builder()
        .classify(HttpClassifier::default())
        .no_consecutive_failures()
        .no_consecutive_local_failures()
        .no_failure_percentage()
        .no_failure_penalty()
        .initial_rtt(MS)
        .ejection_jitter(0.0)
        .observer(move |e: &Event<'_>| {
            if let Some(key) = e.key {
                recorded.lock().unwrap().push((format!("{key:?}"), e.kind))
            }
        })
        .seed(12)
}

/// The failure-percentage rule (85 % over at least 50 calls in 10 s, with at least 5
/// endpoints): of five replicas, the one failing 90 % of its calls is ejected, the one failing
/// 80 % is not, and neither by any other rule.
#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_the_endpoint_above_the_threshold() {
    let origin = Instant::now();
    let all = replicas(5, MS, origin);
    all[0].behaviour.fail_percent.store(90, SeqCst);
    all[1].behaviour.fail_percent.store(80, SeqCst);
    let events = Arc::new(Mutex::new(Vec::new()));
    let pool = rules_only(&events)
        .failure_percentage(85.0, 50, 5)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    let seen = drive(pool, 200, Duration::from_secs(5), origin, |_| {}).await;
    assert!(!seen.failures.is_empty());
    let endpoints = handle.endpoints();
    assert!(
        matches!(endpoints[0].state, EndpointState::Ejected { .. }),
        "{endpoints:?}"
    );
    assert!(
        endpoints[0].calls >= 50,
        "not before 50 calls: {endpoints:?}"
    );
    assert_eq!(endpoints[1].state, EndpointState::Available, "80 % < 85 %");
    assert!(endpoints[1].calls >= 50 && endpoints[1].failures * 100 >= endpoints[1].calls * 75);
    assert_eq!(handle.ejected(), 1);
    assert_eq!(
        ejected_for(&events, EjectReason::FailurePercentage),
        vec!["0".to_string()]
    );
}

/// The failure-percentage rule needs `minimum_endpoints`: four replicas, one answering only
/// 503s, are not enough for a rule that wants five, and are for one that wants four.
#[tokio::test(start_paused = true)]
async fn failure_percentage_needs_the_minimum_of_endpoints() {
    for (minimum, ejected) in [(5, false), (4, true)] {
        let origin = Instant::now();
        let all = replicas(4, MS, origin);
        all[0].behaviour.unavailable.store(true, SeqCst);
        let events = Arc::new(Mutex::new(Vec::new()));
        let pool = rules_only(&events)
            .failure_percentage(85.0, 50, minimum)
            .build(all.clone())
            .unwrap();
        let handle = pool.handle();
        drive(pool, 200, Duration::from_secs(5), origin, |_| {}).await;
        let failing = &handle.endpoints()[0];
        assert!(failing.failures >= 50, "{failing:?}");
        assert_eq!(handle.ejected(), usize::from(ejected), "minimum {minimum}");
        assert_eq!(
            ejected_for(&events, EjectReason::FailurePercentage).len(),
            usize::from(ejected),
            "minimum {minimum}"
        );
    }
}

/// The success-rate rule (opt-in; mean − 1.9 σ over at least 100 calls, with at least 5
/// endpoints): of six replicas, the one succeeding on 40 % of its calls is ejected at the end
/// of the interval; the one succeeding on 95 % is not.
#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_outlier() {
    let origin = Instant::now();
    let all = replicas(6, MS, origin);
    all[0].behaviour.fail_percent.store(60, SeqCst);
    all[1].behaviour.fail_percent.store(5, SeqCst);
    let events = Arc::new(Mutex::new(Vec::new()));
    let pool = rules_only(&events)
        .success_rate(1.9, 100, 5)
        .build(all.clone())
        .unwrap();
    let handle = pool.handle();
    // Before the interval ends, the rule has not looked.
    drive(pool.clone(), 300, Duration::from_secs(9), origin, |_| {}).await;
    assert_eq!(handle.ejected(), 0);
    drive(pool, 300, Duration::from_secs(3), origin, |_| {}).await;
    let endpoints = handle.endpoints();
    assert!(
        matches!(endpoints[0].state, EndpointState::Ejected { .. }),
        "{endpoints:?}"
    );
    assert!(endpoints[1..]
        .iter()
        .all(|e| e.state == EndpointState::Available));
    assert_eq!(
        ejected_for(&events, EjectReason::SuccessRate),
        vec!["0".to_string()]
    );
}

/// The success-rate rule needs `minimum_endpoints` with enough calls: with four replicas, an
/// outlier a factor of 1 would eject is left alone by a rule that wants five, and ejected by
/// one that wants four. Off by default: the same pool without the rule ejects nothing.
#[tokio::test(start_paused = true)]
async fn success_rate_needs_the_minimum_of_endpoints_and_is_opt_in() {
    for (rule, ejected) in [(Some(5), false), (Some(4), true), (None, false)] {
        let origin = Instant::now();
        let all = replicas(4, MS, origin);
        all[0].behaviour.fail_percent.store(60, SeqCst);
        let events = Arc::new(Mutex::new(Vec::new()));
        let builder = rules_only(&events);
        let builder = match rule {
            Some(minimum) => builder.success_rate(1.0, 100, minimum),
            None => builder,
        };
        let pool = builder.build(all.clone()).unwrap();
        let handle = pool.handle();
        drive(pool, 300, Duration::from_secs(12), origin, |_| {}).await;
        assert!(handle.endpoints()[0].calls >= 100);
        assert_eq!(handle.ejected(), usize::from(ejected), "{rule:?}");
        assert_eq!(
            ejected_for(&events, EjectReason::SuccessRate).len(),
            usize::from(ejected),
            "{rule:?}"
        );
    }
}

/// An observer that panics at an ejection must not leave the clones waiting for a change
/// asleep: they are woken before the observer hears of it.
#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_lose_the_wake_up() {
    use futures::FutureExt;
    let eps = [Switch::default(), Switch::default()];
    let pool = one_failure_ejects()
        .seed(3)
        .observer(|e: &Event<'_>| {
            if matches!(e.kind, EventKind::EndpointEjected { .. }) {
                panic!("observer panics at an ejection");
            }
        })
        .build(eps.clone())
        .unwrap();
    let handle = pool.handle();
    let mut b = pool.clone();
    futures::future::poll_fn(|cx| b.poll_ready(cx))
        .await
        .unwrap();
    for e in &eps {
        e.set(PENDING);
        e.fail(true);
    }
    let mut t = task::spawn(pool.clone().oneshot(2));
    assert_pending!(t.poll());
    assert!(!t.is_woken());
    let call = std::panic::AssertUnwindSafe(b.call(1)).catch_unwind().await;
    assert!(call.is_err(), "the observer's panic reaches the caller");
    assert_eq!(handle.ejected(), 1);
    assert!(
        t.is_woken(),
        "the waiting call is told, the observer's panic notwithstanding"
    );
}

/// When one kept endpoint takes the call, a probe claimed on another kept one is given back with
/// a wake: a clone waiting on other endpoints (with no timer, since it waits on them) ranks the
/// probe first, and claims it (a review's finding: given back silently, it slept while the probe
/// was free). Earlier, the opposite: dropping it woke them all, which is what it should do.
#[tokio::test(start_paused = true)]
async fn a_kept_probe_given_back_when_another_endpoint_takes_the_call_wakes_the_waiting() {
    let eps: [Switch; 3] = Default::default();
    let pool = one_failure_ejects().seed(4).build(eps.clone()).unwrap();
    let handle = pool.handle();
    eject_until_probe_due(&pool, &handle, &eps, true).await;
    for e in &eps {
        e.set(PENDING);
    }
    // `a` claims the first endpoint's probe and waits on all three; `w` and `last` wait on
    // the other two (`last` polled last: the endpoints wake it, not `w`).
    let mut a = task::spawn(pool.clone().oneshot(1));
    assert_pending!(a.poll());
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    let mut w = task::spawn(pool.clone().oneshot(2));
    assert_pending!(w.poll());
    let mut last = task::spawn(pool.clone().oneshot(3));
    assert_pending!(last.poll());
    eps[1].set(READY);
    assert!(!w.is_woken());
    // `a`'s kept second endpoint takes its call; its probe claim is given back, and the
    // waiting clones are told.
    assert_eq!(assert_ready!(a.poll()).unwrap(), 1);
    assert_eq!(
        handle.endpoints()[0].state,
        EndpointState::Ejected {
            remaining: Duration::ZERO
        }
    );
    assert!(
        w.is_woken(),
        "a waiting clone was not told of the probe given back"
    );
    // `w` claims the probe (its kept endpoints still pending) and sends it once it is ready.
    eps[1].set(PENDING);
    assert_pending!(w.poll());
    assert_eq!(handle.endpoints()[0].state, EndpointState::Probing);
    let before = eps[0].calls();
    eps[0].set(READY);
    assert!(w.is_woken());
    assert_eq!(assert_ready!(w.poll()).unwrap(), 2);
    assert_eq!(eps[0].calls(), before + 1, "the probe went out");
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    eps[1].set(READY);
    eps[2].set(READY);
    assert_eq!(assert_ready!(last.poll()).unwrap(), 3);
}

/// A [`Switch`] whose readiness poll first runs a hook, unless the hook is running already.
#[derive(Clone)]
struct Hooked {
    switch: Switch,
    hook: Hook,
}

type Hook = Arc<Mutex<Option<Box<dyn FnMut() + Send>>>>;

impl Service<u32> for Hooked {
    type Response = u32;
    type Error = std::io::Error;
    type Future = <Switch as Service<u32>>::Future;
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Ok(mut hook) = self.hook.try_lock() {
            if let Some(hook) = hook.as_mut() {
                hook();
            }
        }
        self.switch.poll_ready(cx)
    }
    fn call(&mut self, x: u32) -> Self::Future {
        self.switch.call(x)
    }
}

/// Review r24 (fix 3): two clones each holding a pending endpoint's probe, and a third probe
/// due: neither claims the third (only to give it back, counting a change). A change counted by
/// one clone while another polls makes that one look again and wake itself, so two workers
/// polling at once woke each other for ever. Here `b`'s poll runs inside `a`'s (from the
/// readiness polls of `a`'s endpoints), as another thread's would, between `a`'s reading of the
/// change count and its check.
#[tokio::test(start_paused = true)]
async fn clones_holding_probes_do_not_wake_each_other() {
    let eps: [Switch; 3] = Default::default();
    let hook = Hook::default();
    let hooked = eps.iter().map(|switch| Hooked {
        switch: switch.clone(),
        hook: hook.clone(),
    });
    let pool = one_failure_ejects()
        .max_ejection_percent(100.0)
        .fail_fast()
        .seed(1)
        .build(hooked)
        .unwrap();
    let handle = pool.handle();
    for e in &eps {
        e.fail(true);
    }
    while handle.ejected() < 3 {
        let _ = pool.clone().oneshot(1).await;
    }
    for e in &eps {
        e.fail(false);
        e.set(PENDING);
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    let mut a = task::spawn(pool.clone().oneshot(1));
    let mut b = task::spawn(pool.clone().oneshot(2));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let probing = || {
        handle
            .endpoints()
            .iter()
            .filter(|e| e.state == EndpointState::Probing)
            .count()
    };
    assert_eq!(probing(), 2, "{:?}", handle.endpoints());
    assert!(!a.is_woken() && !b.is_woken());
    // From now on each readiness poll of `a`'s endpoints polls `b` first.
    *hook.lock().unwrap() = Some(Box::new(move || {
        let _ = b.poll();
    }));
    assert_pending!(a.poll());
    let mut wakes = 0;
    while a.is_woken() && wakes < 100 {
        assert_pending!(a.poll());
        wakes += 1;
    }
    assert_eq!(wakes, 0, "`a` woke itself: {:?}", handle.endpoints());
    assert_eq!(probing(), 2, "{:?}", handle.endpoints());
    hook.lock().unwrap().take();
    for e in &eps {
        e.set(READY);
    }
    assert!(a.is_woken());
    assert_eq!(assert_ready!(a.poll()).unwrap(), 1);
}

/// The same for a return: a probe's success wakes the waiting clones before an observer that
/// panics at `EndpointReturned` hears of it.
#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_lose_the_return_wake_up() {
    use futures::FutureExt;
    let eps = [Switch::default(), Switch::default()];
    let pool = one_failure_ejects()
        .seed(3)
        .observer(|e: &Event<'_>| {
            if matches!(e.kind, EventKind::EndpointReturned) {
                panic!("observer panics at a return");
            }
        })
        .build(eps.clone())
        .unwrap();
    let handle = pool.handle();
    eject_until_probe_due(&pool, &handle, &eps, true).await;
    // A clone made ready on the probe (a draw ranks a due probe first).
    let mut b = loop {
        let mut b = pool.clone();
        futures::future::poll_fn(|cx| b.poll_ready(cx))
            .await
            .unwrap();
        if handle.endpoints()[0].state == EndpointState::Probing {
            break b;
        }
    };
    eps[1].set(PENDING);
    let mut t = task::spawn(pool.clone().oneshot(2));
    assert_pending!(t.poll());
    assert!(!t.is_woken());
    let call = std::panic::AssertUnwindSafe(b.call(1)).catch_unwind().await;
    assert!(call.is_err(), "the observer's panic reaches the caller");
    assert_eq!(handle.endpoints()[0].state, EndpointState::Available);
    assert!(t.is_woken(), "the waiting call is told of the return");
}
