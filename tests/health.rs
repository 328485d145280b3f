//! The health registry: what a snapshot says of each layer, weak references, names, controls, and
//! the probes' status rules over a real axum server on loopback.

use http_body_util::BodyExt;
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::CircuitState;
use seawall::health::{
    Action, Applied, ControlError, Criticality, Details, Phase, RegisterError, Registry, Status,
};
use seawall::limit::rate::{KeyedRateLimitLayer, Quota, RateLimitLayer};
use seawall::limit::ThrottleLayer;
use std::time::Duration;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A service that fails every call.
fn failing() -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone {
    service_fn(|_: u32| async { Err::<u32, _>(std::io::Error::other("down")) })
}

/// Trips a default breaker (20 calls, 50 % failures) with 20 failures.
async fn trip(layer: &CircuitBreakerLayer) {
    let mut service = layer.layer(failing());
    for _ in 0..20 {
        let _ = service.ready().await.unwrap().call(0).await;
    }
    assert_eq!(layer.handle().state(), CircuitState::Open);
}

/// `n` calls through `layer`'s breaker while it rejects them.
async fn rejected_calls(layer: &CircuitBreakerLayer, n: usize) {
    let mut service = layer.layer(failing());
    for _ in 0..n {
        let err = service.ready().await.unwrap().call(0).await.unwrap_err();
        assert!(seawall::error::find(&*err).is_some(), "{err}");
    }
}

/// A breaker whose open period is exactly 5 s (no jitter).
fn steady() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .open_jitter(0.0)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_json_schema_is_fixed() {
    let breaker = steady();
    let bulkhead = BulkheadLayer::new(10);
    let rate = RateLimitLayer::new(Quota::per_second(5));
    let keyed = KeyedRateLimitLayer::builder(Quota::per_second(2), |_: &u32| Some(1u32))
        .build()
        .unwrap();
    let throttle = ThrottleLayer::new();
    let registry = Registry::new();
    let required = Criticality::Required;
    let info = Criticality::Informational;
    registry
        .register("payments", &breaker.handle(), info)
        .unwrap();
    registry
        .register("inbound", &bulkhead.handle(), required)
        .unwrap();
    registry
        .register("outbound-rate", &rate.handle(), info)
        .unwrap();
    registry
        .register("per-client", &keyed.handle(), info)
        .unwrap();
    registry
        .register("throttle", &throttle.handle(), info)
        .unwrap();
    registry.start_serving();

    trip(&breaker).await;
    rejected_calls(&breaker, 3).await;
    tokio::time::advance(Duration::from_secs(2)).await;

    let snapshot = registry.snapshot();
    assert_eq!(snapshot.status, Status::Degraded);
    assert!(snapshot.ready);
    let expected = concat!(
        r#"{"status":"DEGRADED","phase":"serving","ready":true,"components":{"#,
        r#""payments":{"kind":"circuitBreaker","criticality":"informational","status":"DOWN","details":{"#,
        r#""state":"OPEN","failureRate":100,"failureRateThreshold":50,"slowCallRate":null,"#,
        r#""slowCallRateThreshold":null,"slowCallDurationThresholdMs":null,"bufferedCalls":20,"#,
        r#""failedCalls":20,"slowCalls":0,"notPermittedCalls":3,"consecutiveFailures":0,"#,
        r#""probesInFlight":0,"openedAgoMs":2000,"nextProbeInMs":3000,"probeDue":false}},"#,
        r#""inbound":{"kind":"bulkhead","criticality":"required","status":"UP","details":{"#,
        r#""limit":10,"inFlight":0,"queued":0,"rejected":0}},"#,
        r#""outbound-rate":{"kind":"rateLimit","criticality":"informational","status":"UP","details":{"#,
        r#""ratePerSecond":5,"burst":5,"available":5,"waiting":0,"rejected":0}},"#,
        r#""per-client":{"kind":"keyedRateLimit","criticality":"informational","status":"UP","details":{"#,
        r#""ratePerSecond":2,"burst":2,"keys":0,"maxKeys":100000,"waiting":0,"rejected":0}},"#,
        r#""throttle":{"kind":"throttle","criticality":"informational","status":"UP","details":{"#,
        r#""probability":0,"requests":0,"accepts":0,"rejected":0}}}}"#,
    );
    let json = snapshot.to_json();
    assert_eq!(json, expected);
    // And the document through a JSON parser.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let components = value["components"].as_object().unwrap();
    // (serde_json's map is sorted; the order of registration is in the text above.)
    let mut names: Vec<&str> = components.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "inbound",
            "outbound-rate",
            "payments",
            "per-client",
            "throttle"
        ]
    );
    assert_eq!(value["components"]["per-client"]["details"]["rejected"], 0);
    let throttle = &value["components"]["throttle"];
    assert_eq!(throttle["kind"], "throttle");
    assert_eq!(throttle["status"], "UP");
    for field in ["probability", "requests", "accepts", "rejected"] {
        assert!(
            throttle["details"][field].is_number(),
            "{field}: {throttle}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_breaker_reports_when_it_opened_and_when_it_probes_next() {
    let breaker = steady();
    let registry = Registry::new();
    registry
        .register("b", &breaker.handle(), Criticality::Informational)
        .unwrap();
    let details = |registry: &Registry| match &registry.snapshot().components[0].details {
        Details::CircuitBreaker(b) => *b,
        other => panic!("{other:?}"),
    };
    assert_eq!(details(&registry).opened_ago, None);
    trip(&breaker).await;
    tokio::time::advance(Duration::from_millis(1500)).await;
    let open = details(&registry);
    assert_eq!(open.opened_ago, Some(Duration::from_millis(1500)));
    assert_eq!(open.next_probe_in, Some(Duration::from_millis(3500)));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(details(&registry).next_probe_in, Some(Duration::ZERO));
    // Forced open: since when, and no probe.
    breaker.handle().force_open();
    tokio::time::advance(Duration::from_secs(1)).await;
    let forced = details(&registry);
    assert_eq!(forced.state, CircuitState::ForcedOpen);
    assert_eq!(forced.opened_ago, Some(Duration::from_secs(1)));
    assert_eq!(forced.next_probe_in, None);
    breaker.handle().reset();
    assert_eq!(details(&registry).opened_ago, None);
}

/// A required breaker that opened with no traffic left to move it on (the load balancer stopped
/// sending when `/ready` failed) would stay open, and the instance unready, for good: once its
/// open period is over, it is degraded (a probe is due), not down, and the instance ready.
#[tokio::test(start_paused = true)]
async fn a_required_breaker_whose_open_period_is_over_does_not_fail_readiness() {
    let breaker = steady();
    let registry = Registry::new();
    registry
        .register("local-disk", &breaker.handle(), Criticality::Required)
        .unwrap();
    registry.start_serving();
    trip(&breaker).await;
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Down);
    assert_eq!((snapshot.status, snapshot.ready), (Status::Down, false));
    let json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    assert_eq!(
        json["components"]["local-disk"]["details"]["probeDue"],
        false
    );

    // No call comes; the open period (5 s) ends.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(breaker.handle().state(), CircuitState::Open);
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Degraded);
    assert_eq!((snapshot.status, snapshot.ready), (Status::Degraded, true));
    let json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    let details = &json["components"]["local-disk"]["details"];
    assert_eq!(details["state"], "OPEN");
    assert_eq!(details["probeDue"], true);
    assert_eq!(details["nextProbeInMs"], 0);

    // Forced open is an operator's choice: down until forced closed, however long.
    breaker.handle().force_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let snapshot = registry.snapshot();
    assert_eq!((snapshot.status, snapshot.ready), (Status::Down, false));
}

/// State, probes and open times come from one reading of the breaker's state word: a snapshot
/// taken while another thread opens and closes the breaker never mixes two states.
#[test]
fn a_breakers_details_never_mix_two_states() {
    let breaker = CircuitBreakerLayer::new();
    let registry = Registry::new();
    registry
        .register("b", &breaker.handle(), Criticality::Informational)
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let handle = breaker.handle();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                handle.force_open();
                handle.force_closed();
            }
        })
    };
    let mut mixed = None;
    for _ in 0..200_000 {
        let snapshot = registry.snapshot();
        let Details::CircuitBreaker(b) = &snapshot.components[0].details else {
            unreachable!()
        };
        let open = matches!(b.state, CircuitState::Open | CircuitState::ForcedOpen);
        if (!open && b.opened_ago.is_some())
            || (b.state != CircuitState::Open && b.next_probe_in.is_some())
        {
            mixed = Some(*b);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(mixed, None, "a snapshot mixed two states");
}

#[tokio::test(start_paused = true)]
async fn rejected_calls_are_counted_for_breakers_bulkheads_and_rate_limits() {
    let breaker = CircuitBreakerLayer::new();
    let bulkhead = BulkheadLayer::new(1);
    let rate = RateLimitLayer::new(Quota::per_second(1));
    let registry = Registry::new();
    let info = Criticality::Informational;
    registry.register("b", &breaker.handle(), info).unwrap();
    registry.register("h", &bulkhead.handle(), info).unwrap();
    registry.register("r", &rate.handle(), info).unwrap();

    breaker.handle().force_open();
    rejected_calls(&breaker, 2).await;

    // One call holds the bulkhead's slot (its future, not yet polled, holds it); the next is
    // turned away.
    let mut first = bulkhead.layer(service_fn(|_: u32| async { Ok::<_, std::io::Error>(0) }));
    let running = first.ready().await.unwrap().call(0);
    let mut second = bulkhead.layer(service_fn(|_: u32| async { Ok::<_, std::io::Error>(0) }));
    assert!(second.ready().await.unwrap().call(0).await.is_err());
    drop(running);

    let mut limited = rate.layer(service_fn(|_: u32| async { Ok::<_, std::io::Error>(0) }));
    for _ in 0..3 {
        let _ = limited.ready().await.unwrap().call(0).await;
    }

    let snapshot = registry.snapshot();
    let rejected: Vec<u64> = snapshot
        .components
        .iter()
        .map(|c| match &c.details {
            Details::CircuitBreaker(b) => b.not_permitted_calls,
            Details::Bulkhead(l) => l.rejected,
            Details::RateLimit(r) => r.rejected,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(rejected, [2, 1, 2]);
}

#[test]
fn a_dropped_layer_leaves_the_registry_and_frees_its_name() {
    let registry = Registry::new();
    let info = Criticality::Informational;
    let breaker = CircuitBreakerLayer::new();
    registry.register("b", &breaker.handle(), info).unwrap();
    let bulkhead = BulkheadLayer::new(4);
    // A service made by the layer keeps it alive after the layer itself is dropped.
    let service = bulkhead.layer(service_fn(|_: u32| async { Ok::<_, std::io::Error>(0) }));
    registry.register("h", &bulkhead.handle(), info).unwrap();
    drop(bulkhead);
    assert_eq!(registry.snapshot().components.len(), 2);

    drop(breaker);
    let names = |r: &Registry| -> Vec<String> {
        r.snapshot()
            .components
            .iter()
            .map(|c| c.name.to_string())
            .collect()
    };
    assert_eq!(
        names(&registry),
        ["h"],
        "the registry kept no breaker alive"
    );
    drop(service);
    assert!(names(&registry).is_empty());

    // The names are free again.
    let again = CircuitBreakerLayer::new();
    registry.register("b", &again.handle(), info).unwrap();
    assert_eq!(names(&registry), ["b"]);
}

#[test]
fn names_are_unique_and_url_safe() {
    let registry = Registry::new();
    let breaker = CircuitBreakerLayer::new();
    let info = Criticality::default();
    assert_eq!(info, Criticality::Informational);
    registry
        .register("db:primary", &breaker.handle(), info)
        .unwrap();
    let other = BulkheadLayer::new(1);
    assert_eq!(
        registry.register("db:primary", &other.handle(), info),
        Err(RegisterError::Duplicate("db:primary".into()))
    );
    for bad in ["", "a b", "a/b", "ü"] {
        assert_eq!(
            registry.register(bad, &other.handle(), info),
            Err(RegisterError::InvalidName(bad.into()))
        );
    }
    assert!(registry.unregister("db:primary"));
    assert!(!registry.unregister("db:primary"));
    registry
        .register("db:primary", &other.handle(), info)
        .unwrap();
}

#[test]
fn controls_apply_to_the_layers_that_have_them() {
    let registry = Registry::new();
    let info = Criticality::Informational;
    let breaker = CircuitBreakerLayer::new();
    let bulkhead = BulkheadLayer::new(4);
    registry.register("b", &breaker.handle(), info).unwrap();
    registry.register("h", &bulkhead.handle(), info).unwrap();

    registry.control("b", Action::ForceOpen).unwrap();
    assert_eq!(breaker.handle().state(), CircuitState::ForcedOpen);
    registry.control("b", Action::ForceClosed).unwrap();
    assert_eq!(breaker.handle().state(), CircuitState::Closed);
    registry.control("b", Action::ForceOpen).unwrap();
    registry.control("b", Action::Reset).unwrap();
    assert_eq!(breaker.handle().state(), CircuitState::Closed);
    assert_eq!(registry.control("b", Action::Reset), Ok(Applied::Done));
    assert_eq!(
        registry.control("h", Action::SetLimit(9)),
        Ok(Applied::Limit(9))
    );
    assert_eq!(bulkhead.handle().limit(), 9);
    // Capped at the most a bulkhead takes, and said so.
    let max = seawall::bulkhead::MAX_CONCURRENT;
    assert_eq!(
        registry.control("h", Action::SetLimit(u64::MAX)),
        Ok(Applied::Limit(max))
    );
    assert_eq!(bulkhead.handle().limit(), max);
    // The handle says what it applied, capped or not.
    assert_eq!(bulkhead.handle().set_limit(u64::MAX), max);
    assert_eq!(bulkhead.handle().set_limit(4), 4);
    assert_eq!(bulkhead.handle().limit(), 4);

    assert_eq!(
        registry.control("h", Action::ForceOpen),
        Err(ControlError::Unsupported {
            name: "h".into(),
            kind: "bulkhead",
            action: "force-open"
        })
    );
    assert_eq!(
        registry.control("x", Action::Reset),
        Err(ControlError::NotFound("x".into()))
    );
    drop(bulkhead);
    assert_eq!(
        registry.control("h", Action::SetLimit(1)),
        Err(ControlError::NotFound("h".into()))
    );
}

#[test]
fn the_overall_status_follows_the_criticalities() {
    let registry = Registry::new();
    let informational = CircuitBreakerLayer::new();
    let required = BulkheadLayer::new(4);
    registry
        .register("dep", &informational.handle(), Criticality::Informational)
        .unwrap();
    registry
        .register("local", &required.handle(), Criticality::Required)
        .unwrap();
    assert_eq!(registry.phase(), Phase::Starting);
    let snapshot = registry.snapshot();
    assert_eq!((snapshot.status, snapshot.ready), (Status::Up, false));
    registry.start_serving();
    assert!(registry.snapshot().ready);

    informational.handle().force_open();
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Down);
    assert_eq!((snapshot.status, snapshot.ready), (Status::Degraded, true));

    required.handle().set_limit(0);
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[1].status, Status::Down);
    assert_eq!((snapshot.status, snapshot.ready), (Status::Down, false));

    required.handle().set_limit(4);
    registry.drain();
    registry.start_serving(); // no way back from draining
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.phase, Phase::Draining);
    assert_eq!((snapshot.status, snapshot.ready), (Status::Degraded, false));
}

#[cfg(feature = "fleet")]
#[tokio::test(start_paused = true)]
async fn a_fleet_store_that_fails_is_degraded_since_its_first_failure() {
    use seawall::limit::fleet::{FleetRateLimitLayer, Grant, Take};
    let down = service_fn(|_: Take| async { Err::<Grant, tower::BoxError>("store down".into()) });
    let layer = FleetRateLimitLayer::builder(down, Quota::per_second(10), |n: &u32| Some(*n))
        .build()
        .unwrap();
    let registry = Registry::new();
    registry
        .register("fleet", &layer.handle(), Criticality::Informational)
        .unwrap();
    let fleet = |registry: &Registry| {
        let snapshot = registry.snapshot();
        let component = &snapshot.components[0];
        match &component.details {
            Details::FleetRateLimit(f) => (component.status, *f),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(fleet(&registry).0, Status::Up);
    let mut service = layer.layer(service_fn(|_: u32| async { Ok::<_, std::io::Error>(()) }));
    // The first call of a key asks the store, which fails: the store is degraded from then on.
    let _ = service.ready().await.unwrap().call(1).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let degraded_at = tokio::time::Instant::now();
    tokio::time::advance(Duration::from_millis(1500)).await;
    let (status, details) = fleet(&registry);
    assert!(details.degraded, "{details:?}");
    assert!(!details.fails_closed);
    assert_eq!(status, Status::Degraded, "failing open to local limits");
    assert_eq!(details.degraded_for, Some(degraded_at.elapsed()));
    assert!(details.store_failures >= 1);
}

/// A required fleet limiter failing closed is down while its store is degraded; but the store
/// is tried again only by a call (its probe), and no call comes while `/ready` fails: once a
/// probe is due it is degraded, not down, so that the instance is ready again and a call can
/// probe the store.
#[cfg(feature = "fleet")]
#[tokio::test(start_paused = true)]
async fn a_required_fleet_limiter_failing_closed_is_degraded_once_a_probe_is_due() {
    use seawall::limit::fleet::{FleetRateLimitLayer, MemoryStore, Take};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let down = Arc::new(AtomicBool::new(true));
    let memory = MemoryStore::new();
    let store = {
        let down = down.clone();
        service_fn(move |take: Take| {
            let mut memory = memory.clone();
            let down = down.load(Ordering::Relaxed);
            async move {
                if down {
                    Err("store down".into())
                } else {
                    memory.call(take).await
                }
            }
        })
    };
    let layer = FleetRateLimitLayer::builder(store, Quota::per_second(10), |n: &u32| Some(*n))
        .fail_closed()
        .build()
        .unwrap();
    let registry = Registry::new();
    registry
        .register("fleet", &layer.handle(), Criticality::Required)
        .unwrap();
    registry.start_serving();
    let fleet = |registry: &Registry| {
        let snapshot = registry.snapshot();
        let json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
        let probe_due = json["components"]["fleet"]["details"]["probeDue"].clone();
        (snapshot.components[0].status, snapshot.ready, probe_due)
    };
    assert_eq!(fleet(&registry), (Status::Up, true, false.into()));
    let mut service = layer.layer(answer());
    // The first call asks the store, which fails: degraded, failing closed, down.
    let _ = service.ready().await.unwrap().call(1).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(layer.handle().degraded());
    assert_eq!(fleet(&registry), (Status::Down, false, false.into()));

    // No call comes; the probe (every 200 ms by default) becomes due.
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(fleet(&registry), (Status::Degraded, true, true.into()));

    // The store is back; the next call probes it (and is refused: it fails closed), and its
    // answer ends the degraded state.
    down.store(false, Ordering::Relaxed);
    assert!(service.ready().await.unwrap().call(1).await.is_err());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!layer.handle().degraded());
    assert_eq!(fleet(&registry), (Status::Up, true, false.into()));
}

/// The `waiting` detail of the component `name`, from the JSON.
fn waiting(registry: &Registry, name: &str) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(&registry.snapshot().to_json()).unwrap();
    json["components"][name]["details"]["waiting"].clone()
}

fn answer() -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone {
    service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) })
}

#[tokio::test(start_paused = true)]
async fn rate_limiters_report_their_waiting_callers() {
    use tokio_test::{assert_pending, assert_ready};
    let wait = Duration::from_secs(10);
    let quota = || Quota::per_second(1).burst(1);
    // In `poll_ready` (the global limiter), and in the response future (deciding in `call`:
    // keyed, and the global one honouring deadlines).
    let rate = RateLimitLayer::builder(quota())
        .max_wait(wait)
        .build()
        .unwrap();
    let keyed = KeyedRateLimitLayer::builder(quota(), |_: &u32| Some(1u32))
        .max_wait(wait)
        .build()
        .unwrap();
    let registry = Registry::new();
    let info = Criticality::Informational;
    registry.register("rate", &rate.handle(), info).unwrap();
    registry.register("keyed", &keyed.handle(), info).unwrap();
    assert_eq!(waiting(&registry, "rate"), 0);
    assert_eq!(waiting(&registry, "keyed"), 0);

    let mut first = rate.layer(answer());
    first.ready().await.unwrap().call(0).await.unwrap();
    // Each service waits for its slot in `poll_ready` (and holds it there).
    let mut a = tokio_test::task::spawn(rate.layer(answer()).ready_oneshot());
    let mut b = tokio_test::task::spawn(rate.layer(answer()).ready_oneshot());
    assert!(a.poll().is_pending());
    assert!(b.poll().is_pending());
    assert_eq!(waiting(&registry, "rate"), 2);
    drop(b); // a caller that leaves (its service dropped) no longer waits
    assert_eq!(waiting(&registry, "rate"), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(a.is_woken());
    let mut ready = assert_ready!(a.poll()).unwrap();
    assert_eq!(waiting(&registry, "rate"), 0);
    ready.call(1).await.unwrap();

    let mut service = keyed.layer(answer());
    service.ready().await.unwrap().call(0).await.unwrap();
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(1));
    assert_pending!(call.poll());
    assert_eq!(waiting(&registry, "keyed"), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(assert_ready!(call.poll()).unwrap(), 1);
    assert_eq!(waiting(&registry, "keyed"), 0);
}

#[cfg(feature = "fleet")]
#[tokio::test(start_paused = true)]
async fn a_fleet_limiter_reports_the_callers_waiting_for_a_lease() {
    use seawall::limit::fleet::{FleetRateLimitLayer, Grant, Take};
    use tokio_test::assert_pending;
    // A store that never answers: a key's first call waits for its first lease.
    let silent = service_fn(|_: Take| std::future::pending::<Result<Grant, tower::BoxError>>());
    let layer = FleetRateLimitLayer::builder(silent, Quota::per_second(10), |n: &u32| Some(*n))
        .build()
        .unwrap();
    let registry = Registry::new();
    registry
        .register("fleet", &layer.handle(), Criticality::Informational)
        .unwrap();
    assert_eq!(waiting(&registry, "fleet"), 0);
    let mut service = layer.layer(answer());
    let mut call = tokio_test::task::spawn(service.ready().await.unwrap().call(1));
    assert_pending!(call.poll());
    assert_eq!(waiting(&registry, "fleet"), 1);
    drop(call);
    assert_eq!(waiting(&registry, "fleet"), 0);
}

// Over loopback: a real axum server and a real HTTP client. Nothing waits on time; each request
// is bounded so that a stuck server fails the test instead of hanging it.

mod loopback {
    use super::*;
    use axum::Router;
    use http::{Method, StatusCode};

    /// Serves the registry's routes (and its admin routes under `/admin`) on a loopback port.
    async fn serve(registry: &Registry) -> std::net::SocketAddr {
        let routes = registry.routes();
        let app = Router::new()
            .route_service("/live", routes.clone())
            .route_service("/ready", routes.clone())
            .route_service("/health", routes)
            .nest_service("/admin", registry.admin_routes());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// One request on a fresh connection: the status and the body.
    async fn request(
        addr: std::net::SocketAddr,
        method: Method,
        path: &str,
    ) -> (StatusCode, String) {
        request_with(addr, method, path, &[]).await
    }

    /// One request with `headers` on a fresh connection: the status and the body.
    async fn request_with(
        addr: std::net::SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http::<http_body_util::Empty<axum::body::Bytes>>();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Empty::new()).unwrap();
        let exchange = async {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .expect("the server answers")
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String) {
        request(addr, Method::GET, path).await
    }

    #[tokio::test]
    async fn ready_is_503_while_starting_and_from_the_request_after_drain() {
        let registry = Registry::new();
        let addr = serve(&registry).await;
        assert_eq!(get(addr, "/live").await.0, StatusCode::OK);
        assert_eq!(
            get(addr, "/ready").await,
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        );
        registry.start_serving();
        assert_eq!(get(addr, "/ready").await.0, StatusCode::OK);
        registry.drain();
        assert_eq!(
            get(addr, "/ready").await,
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        );
        // Still alive while draining, and the health of the components is unchanged.
        assert_eq!(get(addr, "/live").await.0, StatusCode::OK);
        let (status, body) = get(addr, "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#""phase":"draining","ready":false"#),
            "{body}"
        );
    }

    #[tokio::test]
    async fn an_informational_breaker_that_is_open_is_degraded_and_ready() {
        let registry = Registry::new();
        let breaker = CircuitBreakerLayer::new();
        registry
            .register("payments", &breaker.handle(), Criticality::Informational)
            .unwrap();
        registry.start_serving();
        let addr = serve(&registry).await;
        trip(&breaker).await;

        assert_eq!(get(addr, "/ready").await.0, StatusCode::OK);
        let (status, body) = get(addr, "/health").await;
        assert_eq!(status, StatusCode::OK);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["status"], "DEGRADED");
        assert_eq!(value["components"]["payments"]["status"], "DOWN");
        assert_eq!(value["components"]["payments"]["details"]["state"], "OPEN");
    }

    #[tokio::test]
    async fn a_required_component_that_is_down_fails_readiness_and_health() {
        let registry = Registry::new();
        let local = CircuitBreakerLayer::new();
        let dependency = CircuitBreakerLayer::new();
        registry
            .register("local-disk", &local.handle(), Criticality::Required)
            .unwrap();
        registry
            .register("payments", &dependency.handle(), Criticality::Informational)
            .unwrap();
        registry.start_serving();
        let addr = serve(&registry).await;
        assert_eq!(get(addr, "/health").await.0, StatusCode::OK);

        trip(&local).await;
        assert_eq!(
            get(addr, "/ready").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "required components down: local-disk\n".into()
            )
        );
        let (status, body) = get(addr, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with(r#"{"status":"DOWN","#), "{body}");

        local.handle().reset();
        assert_eq!(get(addr, "/ready").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_admin_routes_steer_the_layers() {
        let registry = Registry::new();
        let breaker = CircuitBreakerLayer::new();
        let bulkhead = BulkheadLayer::new(4);
        let info = Criticality::Informational;
        registry.register("b", &breaker.handle(), info).unwrap();
        registry.register("h", &bulkhead.handle(), info).unwrap();
        let addr = serve(&registry).await;

        let admin = [("seawall-admin", "1")];
        let post = |path: &'static str| request_with(addr, Method::POST, path, &admin);
        assert_eq!(post("/admin/b/force-open").await.0, StatusCode::NO_CONTENT);
        assert_eq!(breaker.handle().state(), CircuitState::ForcedOpen);
        assert_eq!(
            post("/admin/b/force-closed").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(breaker.handle().state(), CircuitState::Closed);
        assert_eq!(post("/admin/b/reset").await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            post("/admin/h/limit/7").await,
            (
                StatusCode::OK,
                r#"{"limit":7,"requested":7,"capped":false}"#.into()
            )
        );
        assert_eq!(bulkhead.handle().limit(), 7);

        assert_eq!(post("/admin/h/limit/many").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(post("/admin/b/limit/7").await.0, StatusCode::CONFLICT);
        assert_eq!(post("/admin/x/reset").await.0, StatusCode::NOT_FOUND);
        assert_eq!(post("/admin/b/explode").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            request_with(addr, Method::GET, "/admin/b/force-open", &admin)
                .await
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(breaker.handle().state(), CircuitState::Closed);
        // And the probes take no writes.
        assert_eq!(
            request(addr, Method::POST, "/ready").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// A limit above the most a bulkhead takes is capped, and the answer says so.
    #[tokio::test]
    async fn the_admin_routes_say_when_a_limit_was_capped() {
        let registry = Registry::new();
        let bulkhead = BulkheadLayer::new(4);
        registry
            .register("h", &bulkhead.handle(), Criticality::Informational)
            .unwrap();
        let addr = serve(&registry).await;
        let max = seawall::bulkhead::MAX_CONCURRENT;
        let path = format!("/admin/h/limit/{}", u64::MAX);
        let admin = [("seawall-admin", "1")];
        let (status, body) = request_with(addr, Method::POST, &path, &admin).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            format!(
                r#"{{"limit":{max},"requested":{},"capped":true}}"#,
                u64::MAX
            )
        );
        assert_eq!(bulkhead.handle().limit(), max);
    }

    /// A limit must be plain digits, and not zero (a bulkhead's builder refuses zero too: a
    /// bulkhead with a limit of zero takes no call, and a typo must not do that to a service).
    #[tokio::test]
    async fn the_admin_routes_refuse_a_limit_of_zero_or_not_plain_digits() {
        let registry = Registry::new();
        let bulkhead = BulkheadLayer::new(4);
        registry
            .register("h", &bulkhead.handle(), Criticality::Informational)
            .unwrap();
        let addr = serve(&registry).await;
        let admin = [("seawall-admin", "1")];
        for limit in ["0", "00", "+5", "-1", "5.0", "0x5"] {
            let path = format!("/admin/h/limit/{limit}");
            let (status, body) = request_with(addr, Method::POST, &path, &admin).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{limit:?}: {body}");
            assert_eq!(bulkhead.handle().limit(), 4, "{limit:?}");
        }
        let (status, body) = request_with(addr, Method::POST, "/admin/h/limit/05", &admin).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(bulkhead.handle().limit(), 5);
    }

    /// A plain POST, what a browser's cross-site form can send, does nothing: the admin routes
    /// want a header that only a script allowed by CORS, or a tool, can add.
    #[tokio::test]
    async fn the_admin_routes_refuse_a_request_a_cross_site_form_could_send() {
        let registry = Registry::new();
        let breaker = CircuitBreakerLayer::new();
        registry
            .register("b", &breaker.handle(), Criticality::Informational)
            .unwrap();
        let addr = serve(&registry).await;
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let (status, body) = request_with(addr, Method::POST, "/admin/b/force-open", &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(
            request(addr, Method::POST, "/admin/b/force-open").await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(breaker.handle().state(), CircuitState::Closed);
    }
}

/// An endpoint pool registers like any layer: `UP` while every endpoint is in rotation,
/// `DEGRADED` once one is ejected, `DOWN` when none is healthy (a required pool then fails
/// readiness), with each endpoint's state in the details and the JSON; and it leaves the registry
/// when dropped.
#[cfg(feature = "pool")]
#[tokio::test(start_paused = true)]
async fn a_pool_reports_each_endpoint_and_is_down_when_none_is_healthy() {
    use seawall::pool::Pool;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;

    let failing: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let endpoints = failing.iter().map(|fails| {
        let fails = fails.clone();
        service_fn(move |x: u32| {
            let fails = fails.load(SeqCst);
            async move {
                if fails {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(x)
                }
            }
        })
    });
    let pool = Pool::builder()
        .name("replicas")
        .consecutive_local_failures(1)
        .no_failure_penalty()
        .ejection_jitter(0.0)
        .max_ejection_percent(100.0)
        .seed(3)
        .build(endpoints)
        .unwrap();
    let registry = Registry::new();
    registry
        .register("replicas", &pool.handle(), Criticality::Required)
        .unwrap();
    registry.start_serving();
    let details = |registry: &Registry| match &registry.snapshot().components[0].details {
        Details::Pool(p) => p.clone(),
        other => panic!("a pool's details, not {other:?}"),
    };

    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Up);
    assert_eq!(snapshot.components[0].details.kind(), "pool");
    let p = details(&registry);
    assert_eq!((p.healthy, p.ejected, p.held), (3, 0, 0));
    assert!(p.endpoints.iter().all(|e| e.state == "AVAILABLE"));

    // One endpoint fails: its first failure ejects it.
    failing[0].store(true, SeqCst);
    while pool.handle().ejected() == 0 {
        let _ = pool.clone().oneshot(1).await;
    }
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Degraded);
    assert!(snapshot.ready);
    let p = details(&registry);
    assert_eq!((p.healthy, p.ejected, p.held), (2, 1, 0));
    let e = &p.endpoints[0];
    assert_eq!((e.key.as_str(), e.state), ("0", "EJECTED"));
    assert_eq!(e.ejected_for, Some(Duration::from_secs(30)));
    assert_eq!((e.ejections, e.failures, e.local_failures), (1, 1, 1));
    let json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    let component = &json["components"]["replicas"];
    assert_eq!(component["kind"], "pool");
    assert_eq!(component["status"], "DEGRADED");
    assert_eq!(component["details"]["ejected"], 1);
    let endpoint = &component["details"]["endpoints"][0];
    assert_eq!(endpoint["key"], "0");
    assert_eq!(endpoint["state"], "EJECTED");
    assert_eq!(endpoint["ejectedForMs"], 30_000);
    assert_eq!(endpoint["localFailures"], 1);
    assert_eq!(component["details"]["endpoints"][1]["state"], "AVAILABLE");
    assert!(component["details"]["endpoints"][1]["ejectedForMs"].is_null());
    assert!(component["details"]["endpoints"][1]["rttMs"].is_number());

    // With the failure penalty (the default), one failure takes an endpoint out of the draws
    // before any rule ejects it, and shows it `PENALISED` until its recheck is due: a pool with
    // at least half its endpoints penalised is degraded.
    let penalised = Pool::builder()
        .seed(4)
        .build(vec![service_fn(|_: u32| async {
            Err::<u32, _>(std::io::Error::other("down"))
        })]);
    let penalised = penalised.unwrap();
    registry
        .register("penalised", &penalised.handle(), Criticality::Informational)
        .unwrap();
    let _ = penalised.clone().oneshot(1).await;
    let snapshot = registry.snapshot();
    let component = &snapshot.components[1];
    assert_eq!(component.status, Status::Degraded);
    match &component.details {
        Details::Pool(p) => {
            assert_eq!((p.healthy, p.ejected, p.held, p.penalised), (1, 0, 0, 1));
            assert_eq!(p.endpoints[0].state, "PENALISED");
            assert_eq!(p.endpoints[0].recheck_in, Some(Duration::from_secs(30)));
            assert_eq!(p.endpoints[0].ejected_for, None);
        }
        other => panic!("a pool's details, not {other:?}"),
    }
    let json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    let component = &json["components"]["penalised"];
    assert_eq!(component["details"]["penalised"], 1);
    let endpoint = &component["details"]["endpoints"][0];
    assert_eq!(endpoint["recheckInMs"], 30_000);
    assert!(endpoint["ejectedForMs"].is_null());
    // The endpoint's fields, fixed.
    let mut fields: Vec<&str> = endpoint
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "calls",
            "consecutiveFailures",
            "consecutiveLocalFailures",
            "ejectedForMs",
            "ejections",
            "failures",
            "inFlight",
            "key",
            "load",
            "localFailures",
            "recheckInMs",
            "rttMs",
            "state"
        ]
    );
    // Its recheck due, an idle pool is up again: the endpoint is available, waiting for a call.
    tokio::time::advance(Duration::from_secs(30)).await;
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[1].status, Status::Up);
    match &snapshot.components[1].details {
        Details::Pool(p) => assert_eq!((p.penalised, p.endpoints[0].state), (0, "AVAILABLE")),
        other => panic!("a pool's details, not {other:?}"),
    }
    drop(penalised);

    // One penalised endpoint of three is less than half: the pool stays up.
    let fails = Arc::new(AtomicBool::new(false));
    let three = (0..3).map(|i| {
        let fails = fails.clone();
        service_fn(move |x: u32| {
            let fail = i == 0 && fails.load(SeqCst);
            async move {
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(x)
                }
            }
        })
    });
    let three = Pool::builder().seed(6).build(three).unwrap();
    let registered = Registry::new();
    registered
        .register("three", &three.handle(), Criticality::Informational)
        .unwrap();
    fails.store(true, SeqCst);
    while three.handle().penalised() == 0 {
        let _ = three.clone().oneshot(1).await;
    }
    let snapshot = registered.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Up);
    drop(three);

    // Every endpoint fails: none is healthy, and a required pool fails readiness.
    for fails in &failing {
        fails.store(true, SeqCst);
    }
    while pool.handle().ejected() < 3 {
        let _ = pool.clone().oneshot(1).await;
    }
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.components[0].status, Status::Down);
    assert_eq!(snapshot.status, Status::Down);
    assert!(!snapshot.ready);
    assert_eq!(details(&registry).healthy, 0);
    assert_eq!(
        registry.control("replicas", Action::Reset),
        Err(ControlError::Unsupported {
            name: "replicas".into(),
            kind: "pool",
            action: "reset",
        })
    );

    // The registry keeps no pool alive.
    drop(pool);
    assert!(registry.snapshot().components.is_empty());
}
