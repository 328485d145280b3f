//! Manual control and sharing through `Handle`.

use crate::support::{self, rejection, send, Backend, Call, Ended};
use seawall::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use seawall::core::CircuitState;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn tripping() -> CircuitBreakerLayer {
    support::tripping(1).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn force_open_rejects_until_closed() {
    let layer = tripping();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    handle.force_open();
    assert_eq!(handle.state(), CircuitState::ForcedOpen);
    let open = rejection(&mut service).await;
    assert!(open.is_forced());
    assert_eq!(open.retry_after(), None);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        send(&mut service, Call::ok()).await,
        Ended::Rejected,
        "no timeout ends it"
    );
    handle.force_closed();
    assert_eq!(send(&mut service, Call::ok()).await, Ended::Ok);
}

#[tokio::test(start_paused = true)]
async fn force_closed_empties_the_window_but_keeps_growth() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .open_jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    send(&mut service, Call::fail()).await;
    assert_eq!(handle.state(), CircuitState::Open);
    handle.force_closed();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().calls, 0);
    send(&mut service, Call::fail()).await;
    let open = rejection(&mut service).await;
    assert_eq!(
        open.retry_after(),
        Some(Duration::from_secs(2)),
        "the second trip since the last real recovery"
    );
    handle.reset();
    send(&mut service, Call::fail()).await;
    let open = rejection(&mut service).await;
    assert_eq!(
        open.retry_after(),
        Some(Duration::from_secs(1)),
        "reset forgets earlier trips"
    );
}

#[tokio::test(start_paused = true)]
async fn disabled_admits_and_measures_nothing() {
    let layer = tripping();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    handle.disable();
    for _ in 0..10 {
        assert_eq!(send(&mut service, Call::fail()).await, Ended::Failed);
    }
    assert_eq!(handle.state(), CircuitState::Disabled);
    assert_eq!(handle.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_measures_but_never_rejects() {
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(5)
        .count_window(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    handle.metrics_only();
    for _ in 0..10 {
        assert_eq!(send(&mut service, Call::fail()).await, Ended::Failed);
    }
    let metrics = handle.metrics();
    assert_eq!(metrics.state, CircuitState::MetricsOnly);
    assert_eq!((metrics.calls, metrics.failures), (10, 10));
    assert_eq!(metrics.failure_rate, Some(100.0));
    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn every_service_and_clone_shares_one_breaker() {
    let layer = tripping();
    let handle = layer.handle();
    let mut a = layer.layer(Backend);
    let mut b = layer.layer(Backend);
    let mut c = a.clone();
    send(&mut a, Call::fail()).await;
    assert_eq!(send(&mut b, Call::ok()).await, Ended::Rejected);
    assert_eq!(send(&mut c, Call::ok()).await, Ended::Rejected);
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn layers_from_one_handle_share_one_breaker() {
    let layer = tripping();
    let handle = layer.handle();
    let reads = CircuitBreakerLayer::from_handle(&handle);
    let mut writes = CircuitBreaker::new(Backend, &handle);
    let mut reads = reads.layer(Backend);
    send(&mut writes, Call::fail()).await;
    assert_eq!(send(&mut reads, Call::ok()).await, Ended::Rejected);
    assert_eq!(handle.name(), "circuit-breaker");
    let _ = CircuitBreaker::<Backend>::layer(&handle);
}

#[tokio::test(start_paused = true)]
async fn a_static_breaker_behaves_like_a_counted_one() {
    let layer = support::tripping(1).build_static().unwrap();
    let handle = layer.handle();
    let mut a = layer.layer(Backend);
    let mut b = layer.clone().layer(Backend);
    send(&mut a, Call::fail()).await;
    assert_eq!(send(&mut b, Call::ok()).await, Ended::Rejected);
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = b
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(Duration::from_secs(5)));
    assert_eq!(handle.metrics().probes_in_flight, 1);
    drop(probe);
    assert_eq!(
        handle.metrics().probes_in_flight,
        0,
        "cancellation gives the probe back"
    );
    assert_eq!(send(&mut a, Call::ok()).await, Ended::Ok);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_permit_from_a_period_that_has_ended_is_not_used() {
    // Polled ready while closed, polled again after the breaker was opened: the second answer is
    // for now, and the call is rejected instead of reaching the backend.
    let layer = tripping();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    service.ready().await.unwrap();
    handle.force_open();
    service.ready().await.unwrap();
    let err = service.call(Call::ok()).await.unwrap_err();
    assert!(
        err.is::<seawall::circuit_breaker::error::Open>(),
        "rejected, not sent: {err}"
    );
    // And a permit kept across a change that still admits is exchanged for one of now.
    handle.force_closed();
    service.ready().await.unwrap();
    handle.reset();
    service.ready().await.unwrap();
    assert_eq!(send(&mut service, Call::fail()).await, Ended::Failed);
    assert_eq!(handle.state(), CircuitState::Open, "the failure counted");
}
