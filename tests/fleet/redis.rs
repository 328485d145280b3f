//! The fleet limiter over a real Redis server on loopback, in real time (Redis keeps its own
//! clock). Each test starts its own `redis-server`, or skips with a message when it cannot.

use super::server::RedisServer;
use super::{admitted, load, ok, KEY};
use seawall::limit::fleet::redis::{RedisError, RedisStore};
use seawall::limit::fleet::{FleetRateLimitLayer, Take};
use seawall::limit::rate::Quota;
use std::time::Duration;
use tokio::time::{sleep, Instant};
use tower::{service_fn, Layer, ServiceExt};

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Three independent limiters (three stores, three connections, as three processes would have)
/// share 20 calls a second through one Redis: over 5 s of concurrent load the total stays within
/// 20 × 5 + burst + the three largest leases, comes close to it, and each instance gets a share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_limit_through_redis() {
    let Some(server) = RedisServer::start("three_instances_share_one_limit_through_redis") else {
        return;
    };
    let (burst, max_lease) = (5, 4);
    let mut handles = Vec::new();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::connect(server.url()).await.unwrap();
        let layer = FleetRateLimitLayer::builder(store, Quota::per_second(20).burst(burst), KEY)
            .lease(1, max_lease)
            .build()
            .unwrap();
        handles.push(layer.handle());
        instances.push((0..4).map(|_| layer.layer(service_fn(ok))).collect());
    }
    let each = load(instances, "tenant", Duration::from_secs(5)).await;
    let total: u64 = each.iter().sum();
    let bound = 20 * 5 + u64::from(burst) + 3 * u64::from(max_lease + max_lease.div_ceil(4));
    println!("admitted {each:?} = {total} (bound {bound})");
    assert!(total <= bound, "admitted {total} > {bound} ({each:?})");
    assert!(total >= 90, "admitted only {total} ({each:?})");
    for n in &each {
        assert!(*n >= total / 10, "an instance starved: {each:?}");
    }
    for handle in &handles {
        assert_eq!(handle.store_failures(), 0);
        assert!(!handle.degraded());
    }
    // A key over its quota costs at most about one store call per admission, whatever the
    // number of instances (slots are reserved ahead, not polled for).
    let calls: u64 = handles.iter().map(|h| h.store_calls()).sum();
    println!("{calls} store calls");
    assert!(
        calls <= total + 3 * 10,
        "{calls} store calls for {total} admissions"
    );
}

/// Redis killed in the middle of a run: no call hangs or panics, the local limit applies within
/// the store timeout, and the store is marked degraded; Redis restarted on the same port: the
/// limiter goes back to the shared limit by itself within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted() {
    let Some(mut server) = RedisServer::start("redis_stopped_and_restarted") else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let layer = FleetRateLimitLayer::builder(store, Quota::per_second(1_000), KEY)
        .store_timeout(Duration::from_millis(100))
        .fail_open(Quota::per_second(50).burst(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(ok));
    for _ in 0..50 {
        assert!(admitted(&mut service, "k").await);
        sleep(Duration::from_millis(2)).await;
    }
    assert!(!handle.degraded());

    server.stop();
    let stopped = Instant::now();
    // Calls go on (within `admitted`'s one-second bound each); the store is marked degraded once
    // the leases left are spent and the next renewal fails or times out.
    let mut during = 0;
    let mut calls = 0;
    while stopped.elapsed() < Duration::from_secs(1) {
        let start = Instant::now();
        during += admitted(&mut service, "k").await as u32;
        calls += 1;
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "a call took {:?}",
            start.elapsed()
        );
        sleep(Duration::from_millis(5)).await;
    }
    assert!(handle.degraded(), "not degraded after Redis stopped");
    // At most what was leased before the stop, plus the local limit: burst 5 and 50 a second.
    assert!(
        during <= 32 + 5 + 50 + 1,
        "admitted {during} of {calls} with Redis down"
    );
    assert!(
        during >= 5,
        "admitted only {during} of {calls}: the local limit did not apply"
    );

    server.restart().unwrap();
    let restarted = Instant::now();
    while handle.degraded() {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "still degraded 5 s after Redis came back"
        );
        admitted(&mut service, "k").await;
        sleep(Duration::from_millis(10)).await;
    }
    println!("recovered {:?} after the restart", restarted.elapsed());
    // Back on the shared limit: the quota of 1,000 a second admits calls beyond the local 50.
    let mut after = 0;
    for _ in 0..100 {
        after += admitted(&mut service, "k").await as u32;
    }
    assert!(after >= 90, "admitted {after} of 100 after recovery");
}

/// Keys are apart in Redis, each expires once idle, and a flushed script is loaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_isolated_expire_and_survive_a_script_flush() {
    let Some(server) = RedisServer::start("keys_are_isolated_expire_and_survive_a_script_flush")
    else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .prefix("test:")
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(2, Duration::from_millis(200));
    let take = |key: &str, want| store.clone().oneshot(Take::new(key, want, quota));
    assert_eq!(take("a", 5).await.unwrap().granted, 2);
    let refused = take("a", 1).await.unwrap();
    assert_eq!(refused.granted, 0);
    assert!(refused.wait > Duration::ZERO && refused.wait <= Duration::from_millis(100));
    assert_eq!(take("b", 5).await.unwrap().granted, 2);

    let mut raw = raw(&server).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("test:a")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((1..=201).contains(&ttl), "PTTL {ttl}");
    sleep(Duration::from_millis(300)).await;
    let left: i64 = redis::cmd("EXISTS")
        .arg("test:a")
        .arg("test:b")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 0, "idle keys were not expired");

    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(take("a", 1).await.unwrap().granted, 1);
}

/// An unreachable server at start is an error, quickly, not a panic; so is a bad URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let err = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            err,
            RedisError::Unreachable { .. } | RedisError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    let err = RedisStore::connect("http://nowhere").await.unwrap_err();
    assert!(matches!(err, RedisError::Url(_)), "{err:?}");
}
