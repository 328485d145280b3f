//! The endpoint pool: selection, ejection, the cap, discovery, configuration; simulated
//! endpoints on paused time.

mod loopback;
mod review_r24;
mod sim;

use http::{Request, Response, StatusCode};
use seawall::core::{EjectReason, Event, EventKind};
use seawall::error::ErrorKind;
use seawall::http::HttpClassifier;
use seawall::pool::{ConfigError, EndpointState, Pool, PoolHandle};
use sim::{drive, Replica};
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

/// Black hole: one of ten replicas answers 503 in 1 ms for 10 s, under 600 requests a second.
/// The pool's clients see at most 5 failures plus one per probe; tower's p2c over peak-EWMA,
/// fed the same load beside it, sends the failing replica far more (a fast 503 looks like a
/// fast answer to it). Once the fault clears, the replica is back to half its fair share
/// within its ejection time (30 s) plus 20 s.
#[tokio::test(start_paused = true)]
async fn black_hole() {
    let origin = Instant::now();
    let ours = replicas(10, MS, origin);
    let theirs = replicas(10, MS, origin);
    let pool = Pool::builder()
        .classify(HttpClassifier::default())
        .seed(7)
        .build(ours.clone())
        .unwrap();
    let handle = pool.handle();
    let fault = |replicas: &[Replica]| {
        let bad = replicas[0].behaviour.clone();
        move |t: f64| bad.unavailable.store(t < 10.0, SeqCst)
    };
    let run = Duration::from_secs(60);
    let (seen, tower_seen) = tokio::join!(
        drive(pool, 600, run, origin, fault(&ours)),
        drive(tower_p2c(&theirs), 600, run, origin, fault(&theirs)),
    );
    let failures = seen.failures.len();
    let probes = handle.endpoints()[0].ejections as usize;
    let ours_during = ours[0].calls_between(0.0, 10.0);
    let theirs_during = theirs[0].calls_between(0.0, 10.0);
    println!(
        "failures seen: seawall {failures} (ejections {probes}), tower p2c {}; \
         calls to the failing replica during the fault: seawall {ours_during}, tower {theirs_during}",
        tower_seen.failures.len()
    );
    assert!(
        failures <= 5 + probes + 1,
        "clients saw {failures} failures (ejections: {probes})"
    );
    assert!(
        ours_during * 10 <= theirs_during,
        "seawall sent the failing replica {ours_during} calls, tower {theirs_during}"
    );
    // Back within the ejection time + 20 s of the fault clearing: at least half its fair share.
    let back = share(&ours[0], &ours, 55.0, 60.0);
    println!("share of the replica 45-50 s after the fault: {back:.3}");
    assert!(back >= 0.05, "back to {back:.3} of the calls");
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
            Pool::builder().honor_retry_after(Duration::ZERO),
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
