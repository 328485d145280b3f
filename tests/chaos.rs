//! Fault injection: each fault at its probability, the switch and the probabilities changed at
//! run time, delays in paused time, cancellation, and a breaker and a timeout seeing the faults.

use seawall::chaos::{ChaosLayer, ConfigError, Fault, Injected};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A service that counts its calls and echoes its request.
fn counted() -> (
    Arc<AtomicUsize>,
    impl Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let service = service_fn(move |x: u32| {
        seen.fetch_add(1, SeqCst);
        async move { Ok::<_, BoxError>(x) }
    });
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn off_by_default_it_changes_nothing() {
    let layer = ChaosLayer::builder().error(1.0).build().unwrap();
    assert!(!layer.handle().is_enabled());
    let (calls, inner) = counted();
    let service = layer.layer(inner);
    for i in 0..100 {
        assert_eq!(service.clone().oneshot(i).await.unwrap(), i);
    }
    assert_eq!(calls.load(SeqCst), 100);
    assert_eq!(layer.handle().injected(Fault::Error), 0);
}

#[tokio::test(start_paused = true)]
async fn an_injected_error_never_reaches_the_service() {
    let layer = ChaosLayer::builder()
        .error(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let (calls, inner) = counted();
    let err = layer.layer(inner).oneshot(1).await.unwrap_err();
    assert!(err.is::<Injected>(), "{err}");
    assert_eq!(calls.load(SeqCst), 0);
    assert_eq!(layer.handle().injected(Fault::Error), 1);
}

#[tokio::test(start_paused = true)]
async fn a_custom_error_is_made_for_each_call() {
    let layer = ChaosLayer::builder()
        .error_with(1.0, || {
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")
        })
        .enabled(true)
        .build()
        .unwrap();
    let (_, inner) = counted();
    let err = layer.layer(inner).oneshot(1).await.unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the custom error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn a_substituted_response_replaces_the_call() {
    let layer = ChaosLayer::builder()
        .response(1.0, || 42u32)
        .enabled(true)
        .build()
        .unwrap();
    let (calls, inner) = counted();
    assert_eq!(layer.layer(inner).oneshot(1).await.unwrap(), 42);
    assert_eq!(calls.load(SeqCst), 0);
    assert_eq!(layer.handle().injected(Fault::Response), 1);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_the_call_then_an_error_ends_it() {
    let layer = ChaosLayer::builder()
        .latency(1.0, Duration::from_millis(250))
        .enabled(true)
        .build()
        .unwrap();
    let (calls, inner) = counted();
    let start = Instant::now();
    assert_eq!(layer.layer(inner.clone()).oneshot(7).await.unwrap(), 7);
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(calls.load(SeqCst), 1);

    // Delay and error together: the error comes after the delay, as Envoy's fault filter does.
    layer.handle().set_error(1.0).unwrap();
    let start = Instant::now();
    let err = layer.layer(inner).oneshot(7).await.unwrap_err();
    assert!(err.is::<Injected>());
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(layer.handle().injected(Fault::Latency), 2);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_call_dropped_early_never_runs_the_service() {
    let layer = ChaosLayer::builder()
        .latency(1.0, Duration::from_secs(1))
        .enabled(true)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = ran.clone();
    let mut service = layer.layer(service_fn(move |x: u32| {
        let seen = seen.clone();
        // The work happens when the future is polled, as with most services.
        async move {
            seen.fetch_add(1, SeqCst);
            Ok::<_, BoxError>(x)
        }
    }));
    let call = service.ready().await.unwrap().call(1);
    let outcome = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(outcome.is_err(), "still waiting when dropped");
    assert_eq!(ran.load(SeqCst), 0, "the service's future was never polled");
}

#[tokio::test(start_paused = true)]
async fn faults_come_at_their_probabilities_and_replay_from_a_seed() {
    async fn run(seed: u64) -> (Vec<bool>, u64, u64) {
        let layer = ChaosLayer::builder()
            .error(0.3)
            .response(0.5, || u32::MAX)
            .seed(seed)
            .enabled(true)
            .build()
            .unwrap();
        let (_, inner) = counted();
        let service = layer.layer(inner);
        let mut failed = Vec::new();
        for i in 0..10_000 {
            failed.push(service.clone().oneshot(i).await.is_err());
        }
        let handle = layer.handle();
        (
            failed,
            handle.injected(Fault::Error),
            handle.injected(Fault::Response),
        )
    }
    let (first, errors, responses) = run(11).await;
    // 10,000 draws at 0.3: the mean is 3,000 and the standard deviation about 46.
    assert!((2_800..3_200).contains(&errors), "{errors} errors");
    // Responses are drawn among the calls that did not fail: 0.5 of about 7,000.
    assert!((3_300..3_700).contains(&responses), "{responses} responses");
    assert_eq!(first.iter().filter(|f| **f).count() as u64, errors);
    let (again, _, _) = run(11).await;
    assert_eq!(first, again, "the same seed, the same faults");
    let (other, _, _) = run(12).await;
    assert_ne!(first, other);
}

#[tokio::test(start_paused = true)]
async fn the_handle_switches_and_tunes_a_running_layer() {
    let layer = ChaosLayer::builder().build().unwrap();
    let handle = layer.handle();
    let (calls, inner) = counted();
    let service = layer.layer(inner);
    handle.set_error(1.0).unwrap();
    assert!(service.clone().oneshot(1).await.is_ok(), "still off");
    handle.enable();
    assert!(service.clone().oneshot(1).await.is_err());
    handle.set_error(0.0).unwrap();
    assert!(service.clone().oneshot(1).await.is_ok());
    handle.set_latency(1.0, Duration::from_millis(40)).unwrap();
    let start = Instant::now();
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    handle.disable();
    let start = Instant::now();
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // A layer built without a response has none to give, whatever its probability.
    handle.enable();
    handle.set_latency(0.0, Duration::ZERO).unwrap();
    handle.set_response(1.0).unwrap();
    assert_eq!(service.clone().oneshot(9).await.unwrap(), 9);
    assert_eq!(handle.injected(Fault::Response), 0);
    assert_eq!(
        calls.load(SeqCst),
        5,
        "every call but the failed one reached the service"
    );
}

#[test]
fn probabilities_out_of_range_are_refused() {
    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let err = ChaosLayer::builder().error(bad).build().unwrap_err();
        assert!(matches!(err, ConfigError::Probability(_)), "{bad}");
        let handle = ChaosLayer::builder().build().unwrap().handle();
        assert!(handle.set_error(bad).is_err());
        assert!(handle.set_latency(bad, Duration::ZERO).is_err());
        assert!(handle.set_response(bad).is_err());
    }
    assert!(ChaosLayer::builder()
        .latency(2.0, Duration::ZERO)
        .build()
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opens_on_injected_errors_and_a_timeout_cuts_injected_latency() {
    use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer};
    use seawall::core::CircuitState;
    use seawall::timeout::TimeoutLayer;
    use tower::ServiceBuilder;

    let chaos = ChaosLayer::builder()
        .error(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let (calls, inner) = counted();
    let service = ServiceBuilder::new()
        .layer(breaker)
        .layer(chaos.clone())
        .service(inner.clone());
    for _ in 0..3 {
        assert!(service
            .clone()
            .oneshot(1)
            .await
            .unwrap_err()
            .is::<Injected>());
    }
    assert_eq!(breaker_handle.state(), CircuitState::Open);
    assert!(service.clone().oneshot(1).await.unwrap_err().is::<Open>());
    assert_eq!(calls.load(SeqCst), 0);

    let slow = ChaosLayer::builder()
        .latency(1.0, Duration::from_secs(5))
        .enabled(true)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(300)))
        .layer(slow)
        .service(inner);
    let start = Instant::now();
    let err = service.oneshot(1).await.unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(seawall::error::ErrorKind::TimedOut)
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}
