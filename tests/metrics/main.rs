//! The metrics observer: the series each layer's traffic leaves, read back from a recorder.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::fallback::FallbackLayer;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::metrics::MetricsObserver;
use seawall::retry::backoff::Backoff;
use seawall::retry::RetryLayer;
use std::collections::BTreeMap;
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// Every series as `name{label=value,...}`, with its value.
fn snapshot(recorder: &DebuggingRecorder) -> BTreeMap<String, String> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key_ref = key.key();
            let mut labels: Vec<String> = key_ref
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key_ref.name(), labels.join(","));
            let value = match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => n.to_string(),
                (MetricKind::Gauge, DebugValue::Gauge(g)) => g.into_inner().to_string(),
                (MetricKind::Histogram, DebugValue::Histogram(h)) => format!("{} samples", h.len()),
                _ => "?".to_string(),
            };
            (name, value)
        })
        .collect()
}

#[test]
fn traffic_through_each_layer_leaves_its_series() {
    let recorder = DebuggingRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let breaker = CircuitBreakerLayer::builder()
                .name("db")
                .consecutive_failures(2)
                .observer(MetricsObserver::new())
                .build()
                .unwrap();
            let retry = RetryLayer::builder()
                .name("db-retry")
                .max_retries(1)
                .backoff(Backoff::constant(Duration::from_millis(10)))
                .no_budget()
                .observer(MetricsObserver::new())
                .build()
                .unwrap();
            let fallback =
                FallbackLayer::value(0u32).observer("db-fallback", MetricsObserver::new());
            let limit = RateLimitLayer::builder(Quota::per_second(3))
                .name("db-rate")
                .observer(MetricsObserver::new())
                .build()
                .unwrap();
            let service = ServiceBuilder::new()
                .layer(fallback)
                .layer(breaker)
                .layer(retry)
                .layer(limit)
                .service(service_fn(|n: u32| async move {
                    if n == 0 {
                        Err::<u32, BoxError>("down".into())
                    } else {
                        Ok(n)
                    }
                }));
            // One success. A failing call, retried once: the rate limit's burst of 3 is spent. A
            // second failing call: both its attempts are rate limited, and its failure opens the
            // breaker. A call the open breaker rejects. Every failure falls back to 0.
            assert_eq!(service.clone().oneshot(7).await.unwrap(), 7);
            assert_eq!(service.clone().oneshot(0).await.unwrap(), 0);
            assert_eq!(service.clone().oneshot(0).await.unwrap(), 0);
            assert_eq!(service.clone().oneshot(7).await.unwrap(), 0);
        })
    });
    let series = snapshot(&recorder);
    let expect = |name: &str, value: &str| {
        assert_eq!(
            series.get(name).map(String::as_str),
            Some(value),
            "{name} in {series:#?}"
        );
    };
    expect("seawall_calls_total{layer=db,outcome=success}", "1");
    expect("seawall_calls_total{layer=db,outcome=failure}", "2");
    expect("seawall_permitted_total{layer=db}", "3");
    expect("seawall_rejected_total{layer=db,reason=circuit_open}", "1");
    expect(
        "seawall_circuit_transitions_total{from=closed,layer=db,to=open}",
        "1",
    );
    expect("seawall_circuit_state{layer=db,state=open}", "1");
    expect("seawall_circuit_state{layer=db,state=closed}", "0");
    expect(
        "seawall_call_duration_seconds{layer=db,outcome=success}",
        "1 samples",
    );
    expect(
        "seawall_attempts_total{layer=db-retry,outcome=failure}",
        "4",
    );
    expect(
        "seawall_attempts_total{layer=db-retry,outcome=success}",
        "1",
    );
    expect("seawall_retries_total{layer=db-retry,reason=backoff}", "2");
    expect(
        "seawall_retry_give_ups_total{layer=db-retry,reason=attempts}",
        "2",
    );
    expect("seawall_permitted_total{layer=db-rate}", "3");
    expect(
        "seawall_rejected_total{layer=db-rate,reason=rate_limited}",
        "2",
    );
    expect(
        "seawall_fallbacks_total{layer=db-fallback,trigger=error}",
        "1",
    );
    expect(
        "seawall_fallbacks_total{layer=db-fallback,trigger=rate_limited}",
        "1",
    );
    expect(
        "seawall_fallbacks_total{layer=db-fallback,trigger=circuit_open}",
        "1",
    );
}

#[test]
fn one_observer_shared_by_two_layers_records_both() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let observer = MetricsObserver::new();
        let a = seawall::bulkhead::BulkheadLayer::builder()
            .name("a")
            .observer(observer.clone())
            .build()
            .unwrap();
        let b = seawall::bulkhead::BulkheadLayer::builder()
            .name("b")
            .observer(observer)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ok = service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
            a.layer(ok).ready().await.unwrap().call(1).await.unwrap();
            b.layer(ok).ready().await.unwrap().call(1).await.unwrap();
        });
    });
    let series = snapshot(&recorder);
    assert_eq!(series["seawall_permitted_total{layer=a}"], "1");
    assert_eq!(series["seawall_permitted_total{layer=b}"], "1");
}
