//! The health registry: what a snapshot says of each layer, weak references, names, controls, and
//! the probes' status rules over a real axum server on loopback.

use http_body_util::BodyExt;
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::CircuitState;
use seawall::health::{
    Action, ControlError, Criticality, Details, Phase, RegisterError, Registry, Status,
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
        r#""probesInFlight":0,"openedAgoMs":2000,"nextProbeInMs":3000}},"#,
        r#""inbound":{"kind":"bulkhead","criticality":"required","status":"UP","details":{"#,
        r#""limit":10,"inFlight":0,"queued":0,"rejected":0}},"#,
        r#""outbound-rate":{"kind":"rateLimit","criticality":"informational","status":"UP","details":{"#,
        r#""ratePerSecond":5,"burst":5,"available":5,"rejected":0}},"#,
        r#""per-client":{"kind":"keyedRateLimit","criticality":"informational","status":"UP","details":{"#,
        r#""ratePerSecond":2,"burst":2,"keys":0,"maxKeys":100000,"rejected":0}},"#,
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
    registry.control("h", Action::SetLimit(9)).unwrap();
    assert_eq!(bulkhead.handle().limit(), 9);

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
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http::<http_body_util::Empty<axum::body::Bytes>>();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::new())
            .unwrap();
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

        let post = |path: &'static str| request(addr, Method::POST, path);
        assert_eq!(post("/admin/b/force-open").await.0, StatusCode::NO_CONTENT);
        assert_eq!(breaker.handle().state(), CircuitState::ForcedOpen);
        assert_eq!(
            post("/admin/b/force-closed").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(breaker.handle().state(), CircuitState::Closed);
        assert_eq!(post("/admin/b/reset").await.0, StatusCode::NO_CONTENT);
        assert_eq!(post("/admin/h/limit/7").await.0, StatusCode::NO_CONTENT);
        assert_eq!(bulkhead.handle().limit(), 7);

        assert_eq!(post("/admin/h/limit/many").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(post("/admin/b/limit/7").await.0, StatusCode::CONFLICT);
        assert_eq!(post("/admin/x/reset").await.0, StatusCode::NOT_FOUND);
        assert_eq!(post("/admin/b/explode").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(addr, "/admin/b/force-open").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(breaker.handle().state(), CircuitState::Closed);
        // And the probes take no writes.
        assert_eq!(
            request(addr, Method::POST, "/ready").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
