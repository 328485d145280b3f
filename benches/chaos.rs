//! Per-call cost of the chaos layer: switched off (what it costs to leave in a build), and on
//! with every probability at zero (each fault drawn and not injected), beside a bare service.
//!
//! Run: `cargo bench --bench chaos --features chaos`

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::chaos::ChaosLayer;
use tower::Layer;

#[path = "support/mod.rs"]
mod support;

use support::{single, Noop};

fn chaos(c: &mut Criterion) {
    single(c, "chaos/bare", Noop);
    let off = ChaosLayer::builder().error(0.5).build().unwrap();
    single(c, "chaos/off", off.layer(Noop));
    let drawing = ChaosLayer::builder()
        .error(1e-9)
        .latency(1e-9, std::time::Duration::from_millis(1))
        .response(1e-9, || 0u32)
        .enabled(true)
        .build()
        .unwrap();
    single(c, "chaos/on_drawing_three_faults", drawing.layer(Noop));
}

criterion_group!(benches, chaos);
criterion_main!(benches);
