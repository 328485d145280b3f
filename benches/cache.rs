//! The cache's hit path beside what it is measured against, in one run: a bare ready service, a
//! bare `quick_cache` lookup (the store beneath `MemoryStore`, with the same hasher), moka's sync
//! cache, and tower-resilience's cache layer; and two threads hitting one hot key.
//!
//! Keys are `u64`, values `Arc<[u8]>` (a clone is one reference count), every cache warmed with
//! the keys asked for and a ttl of an hour, so that every call measured is a fresh hit. The
//! `static_bytes` runs answer a static `Bytes` instead, whose clone writes nothing: on two
//! threads, what they cost is the store's own, without the value's shared reference count.
//!
//! Run: `cargo bench --all-features --bench cache -- --warm-up-time 1 --measurement-time 2 --noplot`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use seawall::cache::CacheLayer;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{Layer, Service};

#[path = "support/mod.rs"]
mod support;

use support::call_once;

/// The value type: cloning it is one atomic increment, as an `Arc` or a `Bytes` is.
type Value = Arc<[u8]>;

/// How many keys the rotating benches ask for (all warm).
const KEYS: u64 = 1_000;

const TTL: Duration = Duration::from_secs(3600);

/// A value whose clone writes nothing (a static `Bytes`: its clone reads a vtable), to tell the
/// store's own cost on two threads from the value's reference count.
type Quiet = bytes::Bytes;

/// A ready service that answers at once with a clone of its value.
#[derive(Clone)]
struct Noop<T = Value>(T);

impl<T: Clone> Service<u64> for Noop<T> {
    type Response = T;
    type Error = Infallible;
    type Future = Ready<Result<T, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u64) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

fn value() -> Value {
    Arc::from(&b"a cached answer of a few dozen bytes, shared"[..])
}

fn quiet() -> Quiet {
    bytes::Bytes::from_static(b"a cached answer of a few dozen bytes, shared")
}

/// Warms `service` with every key of `keys`, then gives seawall's clock thread (started by the
/// first miss made in a multi-thread runtime) the tick it takes to publish a reading.
fn warm<S>(service: &mut S, keys: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for key in 0..keys {
        call_once(service, &mut cx, key);
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// The runtime a service runs in: seawall's cache judges fresh hits on its coarse clock only
/// for a layer whose misses ran in a multi-thread runtime, as a server's do. The benches enter
/// it and call from their own threads.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("a runtime")
}

/// Calls through `service`, one task: one hot key, then keys rotating over [`KEYS`].
fn service_bench<S>(c: &mut Criterion, name: &str, mut service: S)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    warm(&mut service, KEYS);
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(&format!("cache/hit/{name}/one_key"), |b| {
        b.iter(|| call_once(&mut service, &mut cx, black_box(7)))
    });
    let mut key = 0u64;
    c.bench_function(&format!("cache/hit/{name}/1000_keys"), |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            call_once(&mut service, &mut cx, black_box(key))
        })
    });
}

/// Lookups through `get`, one task: one hot key, then keys rotating over [`KEYS`].
fn lookup_bench(c: &mut Criterion, name: &str, get: impl Fn(u64) -> Option<Value>) {
    c.bench_function(&format!("cache/hit/{name}/one_key"), |b| {
        b.iter(|| black_box(get(black_box(7)).expect("warm")))
    });
    let mut key = 0u64;
    c.bench_function(&format!("cache/hit/{name}/1000_keys"), |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(get(black_box(key)).expect("warm"))
        })
    });
}

/// Two threads, each calling `call` for one hot key as fast as it can: wall time per call per
/// thread. `call` is a function pointer, so every contender pays the same indirect call.
fn two_threads<T: Clone + Send + 'static>(
    c: &mut Criterion,
    name: &str,
    state: T,
    call: fn(&mut T, &mut Context<'_>),
) {
    support::two_threads_with(
        c,
        &format!("cache/two_threads_one_key/{name}"),
        state,
        move |state, cx, _| call(state, cx),
    );
}

/// The key function: the request is the key.
type Key = fn(&u64) -> Option<u64>;

fn seawall_layer<V: Clone + Send + Sync + 'static>() -> CacheLayer<Key, u64, V> {
    CacheLayer::builder((|key: &u64| Some(*key)) as Key)
        .ttl(TTL)
        .max_entries(10_000)
        .build()
        .unwrap()
}

/// quick_cache as `MemoryStore` builds it: the sync cache, its bundled hasher, sharded lock.
type Quick<V = Value> =
    quick_cache::sync::Cache<u64, V, quick_cache::UnitWeighter, quick_cache::DefaultHashBuilder>;

fn quick() -> Arc<Quick> {
    quick_with(value)
}

fn quick_with<V: Clone>(value: fn() -> V) -> Arc<Quick<V>> {
    let cache = Quick::with(
        10_000,
        10_000,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder::default(),
        Default::default(),
    );
    for key in 0..KEYS {
        cache.insert(key, value());
    }
    Arc::new(cache)
}

fn moka() -> moka::sync::Cache<u64, Value> {
    let cache = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(TTL)
        .build();
    for key in 0..KEYS {
        cache.insert(key, value());
    }
    cache
}

fn tower_resilience() -> tower_resilience_cache::SharedCacheLayer<u64, u64, Value> {
    tower_resilience_cache::SharedCacheLayer::builder()
        .max_size(10_000)
        .ttl(TTL)
        .key_extractor(|key: &u64| *key)
        .build()
        .unwrap()
}

fn hits(c: &mut Criterion) {
    let runtime = runtime();
    let _entered = runtime.enter();
    // What one read of the clock costs here: a hit near its expiry (or stale) reads it once;
    // a fresh hit far from expiry reads the cache's coarse clock instead.
    c.bench_function("cache/clock/tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    // tokio's clock is std's unless its `test-util` feature is on, as it is here (the dev-
    // dependencies turn it on for the benches too): then it first looks for a paused clock.
    c.bench_function("cache/clock/std_instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    service_bench(c, "bare_service", Noop(value()));
    service_bench(c, "seawall", seawall_layer().layer(Noop(value())));
    service_bench(
        c,
        "seawall_static_bytes",
        seawall_layer().layer(Noop(quiet())),
    );
    let quick = quick();
    lookup_bench(c, "quick_cache", |key| quick.get(&key));
    let moka = moka();
    lookup_bench(c, "moka", |key| moka.get(&key));
    service_bench(
        c,
        "tower_resilience",
        tower_resilience().layer(Noop(value())),
    );
}

fn hot_key(c: &mut Criterion) {
    let runtime = runtime();
    let _entered = runtime.enter();
    // The single-task figure for the same key, beside it, in the same group of runs.
    let mut seawall = seawall_layer().layer(Noop(value()));
    warm(&mut seawall, 8);
    two_threads(c, "seawall", seawall, |service, cx| {
        call_once(service, cx, black_box(7))
    });
    two_threads(c, "quick_cache", quick(), |cache, _| {
        black_box(cache.get(&black_box(7)).expect("warm"));
    });
    // The same with a value whose clone writes nothing: what is left is the stores' own.
    let mut seawall = seawall_layer().layer(Noop(quiet()));
    warm(&mut seawall, 8);
    two_threads(c, "seawall_static_bytes", seawall, |service, cx| {
        call_once(service, cx, black_box(7))
    });
    two_threads(
        c,
        "quick_cache_static_bytes",
        quick_with(quiet),
        |cache, _| {
            black_box(cache.get(&black_box(7)).expect("warm"));
        },
    );
    two_threads(c, "moka", moka(), |cache, _| {
        black_box(cache.get(&black_box(7)).expect("warm"));
    });
    let mut resilience = tower_resilience().layer(Noop(value()));
    warm(&mut resilience, 8);
    two_threads(c, "tower_resilience", resilience, |service, cx| {
        call_once(service, cx, black_box(7))
    });
}

criterion_group!(benches, hits, hot_key);
criterion_main!(benches);
