//! The fleet rate limiter against a real Redis on loopback (a `redis-server` of the bench's own;
//! without one, only the in-memory store is measured, and the bench says so).
//!
//! - Round trips: one key called 2,000 times a second for 3 s, paced, leases of 1 to 64. The
//!   store should see about `rate ÷ lease` calls a second (31 at lease 64) plus the renewals
//!   that grow the lease; the count is taken from the limiter and from Redis's own statistics.
//! - Local path (criterion): a call admitted from a lease, one key, one task, with renewals in
//!   the background on a runtime thread. Quotas are too large to limit any call; a call that
//!   finds the lease spent before its renewal lands waits for it, and the waits are counted.
//!
//! Run: `cargo bench --bench fleet --features redis`

use criterion::{black_box, Criterion};
use seawall::limit::fleet::redis::RedisStore;
use seawall::limit::fleet::{FleetRateLimitLayer, MemoryStore, Store};
use seawall::limit::rate::Quota;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

#[path = "../tests/fleet/server.rs"]
#[allow(dead_code)]
mod server;
#[path = "support/mod.rs"]
mod support;

use support::Noop;

type KeyFn = fn(&u32) -> Option<&'static str>;
const KEY: KeyFn = |_| Some("tenant");

/// Calls `key` at `rate` a second for `run`; returns the limiter's store calls.
async fn paced<St: Store>(store: St, rate: u32, run: Duration) -> (u64, u64) {
    let layer = FleetRateLimitLayer::builder(store, Quota::per_second(rate * 10), KEY)
        .lease(1, 64)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Noop);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut admitted = 0;
    let end = tokio::time::Instant::now() + run;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        if service.ready().await.unwrap().call(1).await.is_ok() {
            admitted += 1;
        }
    }
    (admitted, handle.store_calls())
}

async fn evalsha_calls(url: &str) -> u64 {
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Polls calls through `service` on this thread; a call that has to wait is driven to its end
/// (blocking this thread) and counted.
fn local_path<S>(c: &mut Criterion, name: &str, service: &mut S) -> u64
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut waits = 0;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                assert!(service.poll_ready(&mut cx).is_ready());
                let mut future = pin!(service.call(i as u32));
                match future.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => {
                        black_box(r.expect("call failed"));
                    }
                    Poll::Pending => {
                        waits += 1;
                        black_box(futures::executor::block_on(future).expect("call failed"));
                    }
                }
            }
            start.elapsed()
        })
    });
    waits
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server::RedisServer::start("fleet bench");
    let redis = server.as_ref().map(|server| {
        let url = server.url();
        let store = runtime.block_on(RedisStore::connect(url.clone())).unwrap();
        (url, store)
    });

    println!("Round trips: one key at 2,000 calls a second for 3 s, leases 1 to 64 (rate / lease = 31/s)");
    let (admitted, calls) =
        runtime.block_on(paced(MemoryStore::new(), 2_000, Duration::from_secs(3)));
    println!(
        "  memory store: {admitted} admitted, {calls} store calls ({:.1}/s)",
        calls as f64 / 3.0
    );
    if let Some((url, store)) = &redis {
        let before = runtime.block_on(evalsha_calls(url));
        let (admitted, calls) =
            runtime.block_on(paced(store.clone(), 2_000, Duration::from_secs(3)));
        let seen = runtime.block_on(evalsha_calls(url)) - before;
        println!(
            "  redis store:  {admitted} admitted, {calls} store calls ({:.1}/s); Redis counted {seen} script calls",
            calls as f64 / 3.0
        );
    }

    let _entered = runtime.enter();
    let mut c = Criterion::default().configure_from_args();
    let quota = Quota::per_second(1_000_000).burst(u32::MAX);
    let layer = |store| {
        FleetRateLimitLayer::builder(store, quota, KEY)
            .lease(4_096, 65_536)
            .build()
            .unwrap()
    };
    let memory = layer(MemoryStore::new());
    let waits = local_path(&mut c, "fleet/local_path/memory", &mut memory.layer(Noop));
    println!(
        "  memory store: {waits} waits, {} store calls",
        memory.handle().store_calls()
    );
    if let Some((_, store)) = redis {
        let layer = FleetRateLimitLayer::builder(store, quota, KEY)
            .lease(4_096, 65_536)
            .build()
            .unwrap();
        let waits = local_path(&mut c, "fleet/local_path/redis", &mut layer.layer(Noop));
        println!(
            "  redis store: {waits} waits, {} store calls",
            layer.handle().store_calls()
        );
    }
    c.final_summary();
}
