//! The metrics observer: the series each layer's traffic leaves, read back from a recorder.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::{
    CircuitState, Event, EventKind, FallbackTrigger, GiveUpReason, Observer, Outcome, RejectReason,
    RetryReason, TierFill, TierOp, TimeoutCause, TracingObserver,
};
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
            let fallback = FallbackLayer::value(0u32)
                .name("db-fallback")
                .observer(MetricsObserver::new());
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
    expect("seawall_attempts_started_total{layer=db-retry}", "5");
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

/// A breaker's state and an adaptive limiter's limit are gauges from the moment the layer is
/// built, before any traffic, not from their first change.
#[test]
fn state_and_limit_gauges_exist_from_the_start() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let breaker = CircuitBreakerLayer::builder()
            .name("db")
            .observer(MetricsObserver::new())
            .build()
            .unwrap();
        let limiter =
            seawall::limit::AdaptiveLimitLayer::builder(seawall::limit::algorithm::Aimd::default())
                .name("server")
                .observer(MetricsObserver::new())
                .build()
                .unwrap();
        drop((breaker, limiter));
    });
    let series = snapshot(&recorder);
    assert_eq!(
        series
            .get("seawall_circuit_state{layer=db,state=closed}")
            .map(String::as_str),
        Some("1"),
        "{series:#?}"
    );
    assert_eq!(
        series
            .get("seawall_concurrency_limit{layer=server}")
            .map(String::as_str),
        Some("20"),
        "{series:#?}"
    );
    assert!(
        !series
            .keys()
            .any(|s| s.starts_with("seawall_circuit_transitions_total")),
        "building is no transition: {series:#?}"
    );
}

/// Every kind of event, as some layer sends it.
fn every_kind() -> Vec<EventKind> {
    let ms = Duration::from_millis;
    vec![
        EventKind::Permitted,
        EventKind::Rejected {
            reason: RejectReason::CircuitOpen,
        },
        EventKind::Finished {
            outcome: Outcome::Failure,
            latency: Some(ms(3)),
        },
        EventKind::Cancelled,
        EventKind::TimedOut {
            elapsed: ms(50),
            cause: TimeoutCause::Deadline,
        },
        EventKind::AttemptStarted { attempt: 2 },
        EventKind::AttemptFinished {
            attempt: 2,
            outcome: Outcome::Success,
            latency: Some(ms(4)),
        },
        EventKind::RetryScheduled {
            attempt: 3,
            delay: ms(20),
            reason: RetryReason::ServerHint,
        },
        EventKind::GaveUp {
            attempts: 3,
            reason: GiveUpReason::Budget,
        },
        EventKind::LimitChanged { from: 20, to: 18 },
        EventKind::FallbackUsed {
            trigger: FallbackTrigger::Rejected(seawall::error::ErrorKind::TimedOut),
            latency: Some(ms(5)),
        },
        EventKind::KeyEvicted { idle: true },
        EventKind::StoreHealth { degraded: true },
        EventKind::StateTransition {
            from: CircuitState::Closed,
            to: CircuitState::Open,
        },
        EventKind::Started {
            state: Some(CircuitState::HalfOpen),
            limit: None,
        },
        EventKind::Started {
            state: None,
            limit: Some(17),
        },
        EventKind::CacheHit { stale: true },
        EventKind::CacheMiss { coalesced: false },
        EventKind::CacheRefresh { early: true },
        EventKind::CacheEvicted { entries: 3 },
        EventKind::CacheTierFill {
            fill: TierFill::LockWaitExpired,
        },
        EventKind::CacheTierWrite,
        EventKind::CacheTierFailed { op: TierOp::Unlock },
    ]
}

/// The tracing observer and the metrics observer report the same events: each kind leaves a
/// series and one log line, and every label value of the series (the reason, the outcome, the
/// state, the trigger, ...) is in the line too.
#[test]
fn tracing_and_metrics_observers_report_every_event_alike() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let recorder = DebuggingRecorder::new();
    let lines = || {
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect::<Vec<_>>()
    };

    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            let (metrics, tracing) = (MetricsObserver::new(), TracingObserver);
            assert!(
                tracing.wants_latency(),
                "a TRACE subscriber wants latencies"
            );
            for kind in every_kind() {
                let event = Event::new("parity", kind);
                let before = snapshot(&recorder);
                let logged = lines().len();
                metrics.on_event(&event);
                tracing.on_event(&event);
                let after = snapshot(&recorder);
                let changed: Vec<&String> = after
                    .iter()
                    .filter(|(series, value)| before.get(*series) != Some(*value))
                    .map(|(series, _)| series)
                    .collect();
                assert!(!changed.is_empty(), "{kind:?} left no series");
                let new_lines = lines()[logged..].to_vec();
                assert_eq!(new_lines.len(), 1, "{kind:?} logged {new_lines:?}");
                let line = &new_lines[0];
                assert!(line.contains("parity"), "{kind:?}: no layer in {line}");
                for series in changed {
                    assert!(series.contains("layer=parity"), "{series}");
                    let labels = &series[series.find('{').unwrap() + 1..series.len() - 1];
                    for label in labels.split(',').filter(|l| !l.starts_with("layer=")) {
                        let value = label.split_once('=').unwrap().1;
                        assert!(
                            line.contains(value),
                            "{kind:?}: the series {series} has {value}, the log line does not: {line}"
                        );
                    }
                }
            }
        })
    });
}

#[test]
fn the_tracing_observer_wants_no_latency_when_nobody_listens_at_trace() {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        assert!(
            !TracingObserver.wants_latency(),
            "no clock reads for nobody"
        );
    });
}

/// One `MetricsObserver` given to a server stack and a client stack: each part the stacks make
/// leaves its series, under the stack's name and the part's.
#[test]
fn the_stacks_parts_leave_their_series_under_their_names() {
    use seawall::stack::{ClientStack, ServerStack};
    let recorder = DebuggingRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let observer = MetricsObserver::new();
            let server = ServerStack::new()
                .rate_limit(Quota::per_second(100))
                .timeout(Duration::from_secs(2))
                .observer(observer.clone());
            let client = ClientStack::new()
                .without_deadlines()
                .total_timeout(Duration::from_millis(2500))
                .attempt_timeout(Duration::from_secs(1))
                .name("catalog")
                .observer(observer);
            // Attempts cut at 1 s, until the server's 2 s end the call.
            let hang = service_fn(|_: u32| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<u32, BoxError>(0)
            });
            let server = server.layer(client.layer(hang));
            server.oneshot(1).await.unwrap_err();
        });
    });
    let series = snapshot(&recorder);
    for (name, value) in [
        (
            "seawall_permitted_total{layer=server.rate_limit}",
            Some("1"),
        ),
        ("seawall_concurrency_limit{layer=server.concurrency}", None),
        (
            "seawall_permitted_total{layer=server.concurrency}",
            Some("1"),
        ),
        (
            "seawall_timeouts_total{cause=timeout,layer=server.timeout}",
            Some("1"),
        ),
        (
            "seawall_circuit_state{layer=catalog.breaker,state=closed}",
            Some("1"),
        ),
        ("seawall_permitted_total{layer=catalog.breaker}", None),
        ("seawall_attempts_started_total{layer=catalog.retry}", None),
        (
            "seawall_timeouts_total{cause=timeout,layer=catalog.attempt_timeout}",
            None,
        ),
    ] {
        let found = series.get(name).map(String::as_str);
        match value {
            Some(value) => assert_eq!(found, Some(value), "{name}: {series:#?}"),
            None => assert!(found.is_some(), "{name}: {series:#?}"),
        }
    }
}

#[path = "../fleet/server.rs"]
mod redis_server;

/// A cache's Redis tier with a metrics observer, over a real Redis on loopback: a miss computed
/// under the key's lock and written, then Redis stopped and a miss sent to the backend without
/// it, leave the tier's series (and the default breaker's) under the store's name.
#[test]
fn a_redis_cache_tier_leaves_its_series() {
    use seawall::cache::redis::{RedisStore, U64Codec};
    use seawall::cache::CacheLayer;
    let Some(mut server) = redis_server::RedisServer::start("a_redis_cache_tier_leaves_its_series")
    else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    // One thread: the recorder is this thread's, and so are the store's background writes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let store: RedisStore<u32, u64, U64Codec> = RedisStore::builder(server.url(), U64Codec)
                .name("catalog.redis")
                .observer(MetricsObserver::new())
                .timeout(Duration::from_millis(200))
                .connect()
                .await
                .unwrap();
            let key = |k: &u32| Some(*k);
            let cache = CacheLayer::builder(key)
                .ttl(Duration::from_secs(60))
                .store(store.clone())
                .build()
                .unwrap();
            let backend = service_fn(|k: u32| async move { Ok::<u64, BoxError>(u64::from(k)) });
            let service = cache.layer(store.fill(key).layer(backend));
            assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while store.writes() == 0 {
                assert!(tokio::time::Instant::now() < deadline, "never written");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            server.stop();
            assert_eq!(service.clone().oneshot(2).await.unwrap(), 2);
        })
    });
    let series = snapshot(&recorder);
    let value = |name: &str| series.get(name).map(String::as_str);
    let layer = "layer=catalog.redis";
    assert_eq!(
        value(&format!(
            "seawall_cache_tier_fills_total{{fill=locked,{layer}}}"
        )),
        Some("1"),
        "{series:#?}"
    );
    assert_eq!(
        value(&format!(
            "seawall_cache_tier_fills_total{{fill=unavailable,{layer}}}"
        )),
        Some("1"),
        "{series:#?}"
    );
    assert_eq!(
        value(&format!("seawall_cache_tier_writes_total{{{layer}}}")),
        Some("1"),
        "{series:#?}"
    );
    assert_eq!(
        value(&format!(
            "seawall_cache_tier_failures_total{{{layer},op=read}}"
        )),
        Some("1"),
        "{series:#?}"
    );
    assert_eq!(
        value(&format!("seawall_store_degraded{{{layer}}}")),
        Some("1"),
        "{series:#?}"
    );
    assert_eq!(
        value(&format!("seawall_circuit_state{{{layer},state=closed}}")),
        Some("1"),
        "{series:#?}"
    );
}
