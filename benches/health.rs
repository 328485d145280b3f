//! What a health snapshot costs: 100 registered components (50 breakers, 50 bulkheads), read into
//! a `Snapshot`, and the same written as JSON (what `/health` answers), and the JSON writer
//! alone. The target is at most 20 µs for the snapshot, and a few times that for the JSON.
//!
//! Whether registering a layer changes its per-call cost is measured beside each layer's own
//! benches: `single/breaker_count_100_registered` and `two_threads/breaker_count_100_registered`
//! in `benches/circuit_breaker.rs`, `bulkhead/registered` and `bulkhead_two_threads/registered`
//! in `benches/bulkhead.rs` (against the same layers unregistered).
//!
//! Run: `cargo bench --bench health --features health`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::health::{Criticality, Registry};

fn benches(c: &mut Criterion) {
    let registry = Registry::new();
    let breakers: Vec<CircuitBreakerLayer> = (0..50).map(|_| CircuitBreakerLayer::new()).collect();
    let bulkheads: Vec<BulkheadLayer> = (0..50).map(|_| BulkheadLayer::new(100)).collect();
    for (i, breaker) in breakers.iter().enumerate() {
        let criticality = if i % 10 == 0 {
            Criticality::Required
        } else {
            Criticality::Informational
        };
        registry
            .register(&format!("breaker-{i}"), &breaker.handle(), criticality)
            .unwrap();
    }
    for (i, bulkhead) in bulkheads.iter().enumerate() {
        registry
            .register(
                &format!("bulkhead-{i}"),
                &bulkhead.handle(),
                Criticality::Informational,
            )
            .unwrap();
    }
    registry.start_serving();
    // A few open, so that the snapshot reads the open breakers' times too.
    for breaker in breakers.iter().step_by(7) {
        breaker.handle().force_open();
    }
    assert_eq!(registry.snapshot().components.len(), 100);

    c.bench_function("health/snapshot_100", |b| {
        b.iter(|| black_box(registry.snapshot()))
    });
    c.bench_function("health/snapshot_100_json", |b| {
        b.iter(|| black_box(registry.snapshot().to_json()))
    });
    // The JSON writer alone (what `snapshot_100_json` adds to `snapshot_100`).
    let snapshot = registry.snapshot();
    c.bench_function("health/json_100", |b| {
        b.iter(|| black_box(black_box(&snapshot).to_json()))
    });
}

criterion_group!(health, benches);
criterion_main!(health);
