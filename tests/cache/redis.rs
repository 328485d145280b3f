//! The cache's Redis tier over a real Redis server on loopback, in real time (Redis keeps its
//! own clock, and the connection is a real socket). Each test starts its own `redis-server`, or
//! skips with a message when it cannot (CI sets `SEAWALL_REQUIRE_REDIS`, which makes that fail).

use super::redis_server::RedisServer;
use super::{key, Backend, Seen};
use seawall::cache::redis::{RedisStore, U64Codec};
use seawall::cache::{CacheLayer, Store as _};
use seawall::core::{CircuitState, Event, EventKind, TierFill, TierOp};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};
use tower::{BoxError, Layer, Service, ServiceExt};

type Store = RedisStore<u32, u64, U64Codec>;

/// What a store's observer saw (its own events and its default breaker's), counted.
impl Seen {
    fn count(&self, kind: EventKind) -> usize {
        self.all().iter().filter(|k| **k == kind).count()
    }

    fn fills(&self, fill: TierFill) -> usize {
        self.count(EventKind::CacheTierFill { fill })
    }
}

/// One instance of the service: its own store (own memory tier, own connection) over the shared
/// Redis, a cache over it, and the fill service over `backend`.
async fn instance(
    server: &RedisServer,
    backend: &Backend,
) -> (
    Store,
    impl Service<u32, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static,
    Seen,
) {
    let events = Seen::default();
    let store: Store = RedisStore::builder(server.url(), U64Codec)
        .observer(events.observer("cache.redis"))
        .prefix(format!("test:{}:", std::process::id()))
        .timeout(Duration::from_millis(100))
        .lock_wait(Duration::from_secs(2), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    let cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(300))
        .store(store.clone())
        .build()
        .unwrap();
    let service = cache.layer(store.fill(key).layer(backend.service()));
    (store, service, events)
}

/// Waits (real time, at most 2 s) until `store` has written `n` entries to Redis.
async fn written(store: &Store, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.writes() < n {
        assert!(
            Instant::now() < deadline,
            "{} writes, not {n}",
            store.writes()
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// An answer one instance computed is served by another from Redis: the backend is asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_entries_through_redis() {
    let Some(server) = RedisServer::start("two_instances_share_entries_through_redis") else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(5));
    let (one, a, one_events) = instance(&server, &backend).await;
    let (two, b, two_events) = instance(&server, &backend).await;
    assert_eq!(a.clone().oneshot(7).await.unwrap(), 70);
    written(&one, 1).await;
    assert_eq!(b.clone().oneshot(7).await.unwrap(), 70);
    assert_eq!(backend.calls(), 1, "the second instance asked the backend");
    assert_eq!(two.loads(), 1);
    // Kept with the freshness and the recompute time it was stored with, not a fresh ttl from
    // when the second instance read it: both instances' copies expire together.
    let (mine, theirs) = (one.get(&7).unwrap(), two.get(&7).unwrap());
    let apart = |x: Instant, y: Instant| x.max(y) - x.min(y);
    assert!(apart(mine.stored(), theirs.stored()) < Duration::from_millis(20));
    assert!(apart(mine.fresh_until(), theirs.fresh_until()) < Duration::from_millis(20));
    assert!(apart(mine.error_until(), theirs.error_until()) < Duration::from_millis(20));
    assert_eq!(mine.delta().as_micros(), theirs.delta().as_micros());
    assert!(mine.delta() >= Duration::from_millis(5));
    // Now a hit in both memory tiers.
    assert_eq!(b.oneshot(7).await.unwrap(), 70);
    assert_eq!(a.oneshot(7).await.unwrap(), 70);
    assert_eq!(backend.calls(), 1);
    assert_eq!(one.failures() + two.failures(), 0);
    // What each instance's observer saw: the first computed the key under its lock and wrote
    // it; the second was answered from Redis. No failure, no change of health.
    assert_eq!(one_events.fills(TierFill::Locked), 1);
    assert_eq!(one_events.count(EventKind::CacheTierWrite), 1);
    assert_eq!(two_events.fills(TierFill::Shared), 1);
    for (events, fills) in [(&one_events, 1), (&two_events, 1)] {
        let all = events.all();
        let tier: Vec<_> = all
            .iter()
            .filter(|k| matches!(k, EventKind::CacheTierFill { .. }))
            .collect();
        assert_eq!(tier.len(), fills, "{all:?}");
        assert!(
            !all.iter().any(|k| matches!(
                k,
                EventKind::CacheTierFailed { .. } | EventKind::StoreHealth { .. }
            )),
            "{all:?}"
        );
        // The default breaker reports under the store's name, from the start.
        assert_eq!(
            all.first(),
            Some(&EventKind::Started {
                state: Some(CircuitState::Closed),
                limit: None
            })
        );
    }
    assert_eq!(two_events.count(EventKind::CacheTierWrite), 0);
}

/// Two instances missing one key at once make one backend call between them: one takes the
/// key's Redis lock and calls, the other waits for its answer to appear in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_missing_one_key_at_once_make_one_backend_call() {
    let Some(server) =
        RedisServer::start("two_instances_missing_one_key_at_once_make_one_backend_call")
    else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(200));
    let (one, a, one_events) = instance(&server, &backend).await;
    let (two, b, two_events) = instance(&server, &backend).await;
    let first = tokio::spawn(a.oneshot(3));
    let second = tokio::spawn(b.oneshot(3));
    assert_eq!(first.await.unwrap().unwrap(), 30);
    assert_eq!(second.await.unwrap().unwrap(), 30);
    assert_eq!(backend.calls(), 1, "both instances called the backend");
    assert_eq!(one.loads() + two.loads(), 1);
    assert_eq!(one.backend_calls() + two.backend_calls(), 1);
    let fills = |fill| one_events.fills(fill) + two_events.fills(fill);
    assert_eq!(
        (fills(TierFill::Locked), fills(TierFill::Shared)),
        (1, 1),
        "one: {:?}, two: {:?}",
        one_events.all(),
        two_events.all()
    );
    assert_eq!(
        fills(TierFill::LockWaitExpired) + fills(TierFill::Unavailable),
        0
    );
}

/// A key expired in both instances at once is recomputed once for the fleet: both serve it
/// stale at once and refresh in the background; one takes the lock and calls the backend, the
/// other serves stale meanwhile and then takes the new answer from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refreshed_once_for_the_fleet() {
    let Some(server) = RedisServer::start("an_expired_key_is_refreshed_once_for_the_fleet") else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(100));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store: Store = RedisStore::builder(server.url(), U64Codec)
            .lock_wait(Duration::from_secs(2), Duration::from_millis(10))
            .connect()
            .await
            .unwrap();
        let cache = CacheLayer::builder(key)
            .ttl(Duration::from_millis(500))
            .stale_while_revalidate(Duration::from_secs(30))
            .early_refresh(0.0)
            .store(store.clone())
            .build()
            .unwrap();
        let service = cache.layer(store.fill(key).layer(backend.service()));
        instances.push((store, service));
    }
    let (one, a) = &instances[0];
    let (two, b) = &instances[1];
    a.clone().oneshot(5).await.unwrap();
    written(one, 1).await;
    b.clone().oneshot(5).await.unwrap();
    assert_eq!(backend.calls(), 1);
    let first = one.get(&5).unwrap().stored();

    sleep(Duration::from_millis(600)).await;
    // Both stale: answered at once, each refreshing in the background.
    let (x, y) = tokio::join!(a.clone().oneshot(5), b.clone().oneshot(5));
    assert_eq!((x.unwrap(), y.unwrap()), (50, 50));
    // Until the refresh lands, stale answers go on; then both hold the new answer.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        a.clone().oneshot(5).await.unwrap();
        b.clone().oneshot(5).await.unwrap();
        let (mine, theirs) = (one.get(&5).unwrap(), two.get(&5).unwrap());
        // Through Redis a copy's stored time is rounded to the millisecond: a copy of the first
        // answer may read a little after `first`, so a newer version must be clearly newer.
        let newer = first + Duration::from_millis(50);
        if mine.stored() > newer && theirs.stored() > newer {
            let apart = mine.stored().max(theirs.stored()) - mine.stored().min(theirs.stored());
            assert!(
                apart < Duration::from_millis(20),
                "two versions: {apart:?} apart"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refresh never reached both instances"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        backend.calls(),
        2,
        "the fleet recomputed the key more than once"
    );
}

/// Early refresh works through Redis: an instance refreshing a fresh answer early is not
/// answered with the copy of that same answer Redis holds (the fill service asks Redis for a
/// newer one), but calls the backend, and writes the new answer to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refresh_reaches_the_backend_through_redis() {
    let Some(server) = RedisServer::start("an_early_refresh_reaches_the_backend_through_redis")
    else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(20));
    let store: Store = RedisStore::builder(server.url(), U64Codec)
        .connect()
        .await
        .unwrap();
    // A beta so large that the first hit after the answer is stored refreshes it.
    let cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .early_refresh(1e6)
        .store(store.clone())
        .build()
        .unwrap();
    let a = cache.layer(store.fill(key).layer(backend.service()));
    a.clone().oneshot(9).await.unwrap();
    written(&store, 1).await;
    let first = store.get(&9).unwrap().stored();
    a.clone().oneshot(9).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.get(&9).unwrap().stored() == first {
        assert!(
            Instant::now() < deadline,
            "the early refresh was answered from Redis: {} backend calls",
            backend.calls()
        );
        sleep(Duration::from_millis(5)).await;
    }
    assert!(backend.calls() >= 2);
    written(&store, 2).await;
    assert_eq!(store.loads(), 0);
}

/// Redis killed in the middle of a run: every request the memory tier can answer is answered,
/// and new keys go to the backend without failing; Redis restarted on the same port: the tier
/// shares entries again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_and_restarted() {
    let Some(mut server) = RedisServer::start("redis_killed_mid_run_and_restarted") else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(1));
    let (one, a, one_events) = instance(&server, &backend).await;
    let (two, b, two_events) = instance(&server, &backend).await;
    for k in 1..=20 {
        a.clone().oneshot(k).await.unwrap();
        b.clone().oneshot(k).await.unwrap();
    }
    assert_eq!(backend.calls(), 20);

    server.stop();
    let calls = backend.calls();
    let failures = one.failures();
    let start = Instant::now();
    for round in 0..5 {
        for k in 1..=20 {
            let answer = timeout(Duration::from_secs(1), a.clone().oneshot(k)).await;
            assert_eq!(
                answer.expect("a hit waited on Redis").unwrap(),
                u64::from(k) * 10
            );
        }
        // A new key: Redis is down, so the backend answers, within the Redis timeout.
        let k = 100 + round;
        let answer = timeout(Duration::from_secs(1), b.clone().oneshot(k)).await;
        assert_eq!(answer.expect("a miss hung").unwrap(), u64::from(k) * 10);
    }
    assert_eq!(
        backend.calls(),
        calls + 5,
        "a memory hit reached the backend"
    );
    assert_eq!(one.failures(), failures, "a memory hit asked Redis");
    assert!(two.failures() > 0, "the misses did not try Redis");
    // The observer saw Redis go: once degraded, each miss sent to the backend without it, each
    // failed call by what it was, and the breaker opening.
    let seen = two_events.all();
    let degraded = |d| EventKind::StoreHealth { degraded: d };
    assert_eq!(two_events.count(degraded(true)), 1, "{seen:?}");
    assert_eq!(two_events.count(degraded(false)), 0, "{seen:?}");
    assert_eq!(two_events.fills(TierFill::Unavailable), 5, "{seen:?}");
    assert!(
        two_events.count(EventKind::CacheTierFailed { op: TierOp::Read }) >= 1,
        "{seen:?}"
    );
    let failed = seen
        .iter()
        .filter(|k| matches!(k, EventKind::CacheTierFailed { .. }))
        .count();
    // At least each miss's read (its write, in the background, may still be going).
    assert!(failed >= 5, "{seen:?}");
    assert!(
        seen.contains(&EventKind::StateTransition {
            from: CircuitState::Closed,
            to: CircuitState::Open
        }),
        "{seen:?}"
    );
    assert!(
        !one_events.all().contains(&degraded(true)),
        "a memory hit asked Redis"
    );
    println!(
        "Redis down: {:?} for 100 hits and 5 misses",
        start.elapsed()
    );

    server.restart().unwrap();
    // Within 15 s (the breaker's open spell, doubling to 10 s at most, and a reconnection),
    // an answer computed by one instance is served by the other from Redis again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut k = 1_000;
    loop {
        k += 1;
        let writes = one.writes();
        a.clone().oneshot(k).await.unwrap();
        let before = backend.calls();
        // Give the background write a moment.
        let wrote = Instant::now() + Duration::from_millis(200);
        while one.writes() == writes && Instant::now() < wrote {
            sleep(Duration::from_millis(5)).await;
        }
        b.clone().oneshot(k).await.unwrap();
        if backend.calls() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Redis tier did not come back"
        );
        sleep(Duration::from_millis(200)).await;
    }
    // The second instance was answered from Redis: it saw the tier come back.
    let seen = two_events.all();
    assert!(two_events.count(degraded(false)) >= 1, "{seen:?}");
    let last_health = seen
        .iter()
        .rev()
        .find(|k| matches!(k, EventKind::StoreHealth { .. }));
    assert_eq!(last_health, Some(&degraded(false)), "{seen:?}");
    assert!(two_events.fills(TierFill::Shared) >= 1, "{seen:?}");
}

/// An observer that panics at the fill service's event fails that one call and leaves nothing
/// behind: the key's Redis lock, taken before the event, is let go as the panic unwinds, so the
/// next call takes it at once (rather than waiting `lock_wait` for a holder that is gone), and
/// the tier keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_panicking_at_a_fill_fails_only_that_call() {
    let Some(server) = RedisServer::start("an_observer_panicking_at_a_fill_fails_only_that_call")
    else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(1));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let trigger = armed.clone();
    let events = Seen::default();
    let log = events.observer("cache.redis");
    let store: Store = RedisStore::builder(server.url(), U64Codec)
        .observer(move |event: &Event<'_>| {
            log(event);
            if matches!(event.kind, EventKind::CacheTierFill { .. })
                && trigger.swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("the observer panics at a fill");
            }
        })
        .lock_wait(Duration::from_secs(10), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    let service = cached(&store, &backend);
    let first = tokio::spawn(service.clone().oneshot(4)).await;
    assert!(first.unwrap_err().is_panic());
    assert!(!armed.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(events.fills(TierFill::Locked), 1);
    let second = timeout(Duration::from_secs(2), service.clone().oneshot(4)).await;
    assert_eq!(second.expect("the lock was left taken").unwrap(), 40);
    assert_eq!(events.fills(TierFill::Locked), 2, "{:?}", events.all());
    assert_eq!(backend.calls(), 1);
    assert_eq!(service.clone().oneshot(4).await.unwrap(), 40);
    assert_eq!(backend.calls(), 1, "the answer was not kept");
    written(&store, 1).await;
}

/// A fill cancelled while its backend call runs under the key's lock lets the lock go: the
/// next miss for the key takes it at once instead of waiting out `lock_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fill_lets_the_keys_lock_go() {
    let Some(server) = RedisServer::start("a_cancelled_fill_lets_the_keys_lock_go") else {
        return;
    };
    let events = Seen::default();
    // A lock kept would hold for a minute, and a miss would wait for it for ten seconds.
    let store: Store = RedisStore::builder(server.url(), U64Codec)
        .observer(events.observer("cache.redis"))
        .lock_ttl(Duration::from_secs(60))
        .lock_wait(Duration::from_secs(10), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    // The first call never answers; later ones answer at once.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let backend = tower::service_fn(move |key: u32| {
        let first = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            if first {
                std::future::pending::<()>().await;
            }
            Ok::<u64, BoxError>(u64::from(key) * 10)
        }
    });
    let cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .store(store.clone())
        .build()
        .unwrap();
    let service = cache.layer(store.fill(key).layer(backend));
    let first = tokio::spawn(service.clone().oneshot(6));
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first call never started");
        sleep(Duration::from_millis(2)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let second = timeout(Duration::from_secs(5), service.clone().oneshot(6)).await;
    assert_eq!(second.expect("the lock was left taken").unwrap(), 60);
    assert_eq!(events.fills(TierFill::Locked), 2, "{:?}", events.all());
    assert_eq!(events.fills(TierFill::LockWaitExpired), 0);
    written(&store, 1).await;
}

/// A backend call under the key's lock that fails, or whose answer the cache does not store
/// (its classifier calls it a failure), lets the lock go: the next miss takes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_not_stored_lets_the_keys_lock_go() {
    let Some(server) = RedisServer::start("an_answer_not_stored_lets_the_keys_lock_go") else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(1));
    let events = Seen::default();
    // A lock kept would hold for a minute (the tier's own release too), and a miss would wait
    // for it for ten seconds.
    let store: Store = RedisStore::builder(server.url(), U64Codec)
        .observer(events.observer("cache.redis"))
        .lock_ttl(Duration::from_secs(60))
        .release_after(Duration::from_secs(60))
        .lock_wait(Duration::from_secs(10), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    // Key 8's answer is a failure to the cache: never stored.
    let service = rejecting(&store, &backend, 80, None);
    backend.set_down(true);
    assert!(service.clone().oneshot(5).await.is_err());
    backend.set_down(false);
    let next = timeout(Duration::from_secs(5), service.clone().oneshot(5)).await;
    assert_eq!(next.expect("a failed call kept the lock").unwrap(), 50);
    assert_eq!(events.fills(TierFill::Locked), 2, "{:?}", events.all());

    assert_eq!(service.clone().oneshot(8).await.unwrap(), 80);
    let started = Instant::now();
    let next = timeout(Duration::from_secs(5), service.clone().oneshot(8)).await;
    assert_eq!(
        next.expect("an answer not stored kept the lock").unwrap(),
        80
    );
    // Let go as soon as the cache settled the call (`Store::settled`): the tier's own release,
    // for an answer that never reaches the cache, would come after a minute.
    println!("the next miss took {:?}", started.elapsed());
    assert_eq!(events.fills(TierFill::Locked), 4, "{:?}", events.all());

    // Stored as a negative entry (negative caching on): not shared, and the lock goes with it.
    let service = rejecting(&store, &backend, 90, Some(Duration::from_millis(50)));
    assert_eq!(service.clone().oneshot(9).await.unwrap(), 90);
    sleep(Duration::from_millis(100)).await;
    let next = timeout(Duration::from_secs(5), service.clone().oneshot(9)).await;
    assert_eq!(next.expect("a negative entry kept the lock").unwrap(), 90);
    assert_eq!(events.fills(TierFill::Locked), 6, "{:?}", events.all());
    assert_eq!(events.fills(TierFill::LockWaitExpired), 0);
}

/// A request the cache may not answer from its store (its policy says so: with `http`, a
/// `no-cache` request or a keyed method other than `GET`) is not answered from Redis either:
/// the fill sends it to the backend, though Redis holds a fresh answer under its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_cache_may_not_answer_from_its_store_is_not_answered_from_redis() {
    let Some(server) = RedisServer::start(
        "a_request_the_cache_may_not_answer_from_its_store_is_not_answered_from_redis",
    ) else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(1));
    let (one, a, _) = instance(&server, &backend).await;
    a.clone().oneshot(7).await.unwrap();
    a.clone().oneshot(8).await.unwrap();
    written(&one, 2).await;
    assert_eq!(backend.calls(), 2);

    let events = Seen::default();
    let two: Store = RedisStore::builder(server.url(), U64Codec)
        .observer(events.observer("cache.redis"))
        .prefix(format!("test:{}:", std::process::id()))
        .connect()
        .await
        .unwrap();
    let cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .store_policy(NotServed(7))
        .store(two.clone())
        .build()
        .unwrap();
    let b = cache.layer(two.fill(key).layer(backend.service()));
    assert_eq!(b.clone().oneshot(7).await.unwrap(), 70);
    assert_eq!(backend.calls(), 3, "answered from Redis");
    assert_eq!(two.loads(), 0);
    // Nothing of the fill's was done for it: no read, no lock, no fill event.
    let fills = |events: &Seen| {
        let all = events.all();
        all.iter()
            .filter(|k| matches!(k, EventKind::CacheTierFill { .. }))
            .count()
    };
    assert_eq!(fills(&events), 0, "{:?}", events.all());
    // Another key, which the policy lets the cache answer, is answered from Redis.
    assert_eq!(b.clone().oneshot(8).await.unwrap(), 80);
    assert_eq!(backend.calls(), 3);
    assert_eq!((two.loads(), fills(&events)), (1, 1), "{:?}", events.all());
}

/// A store policy that serves no stored answer to one key (as one does to a write or a
/// `no-cache` request), and stores every answer.
struct NotServed(u32);

impl seawall::fallback::StorePolicy<u32, u64> for NotServed {
    type Memo = bool;
    fn memo(&self, key: &u32) -> bool {
        *key != self.0
    }
    fn may_store(&self, _: &bool, _: &u64) -> bool {
        true
    }
    fn may_serve(&self, serve: &bool) -> bool {
        *serve
    }
}

/// The answer to a request the cache may not answer from its store, stored in the instance's
/// memory, leaves what the tier keeps for another call of the key alone: a fill's answered call
/// whose answer the cache has not stored yet keeps its lock, and its write is still to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_cache_may_not_answer_leaves_another_calls_lock_alone() {
    let Some(server) =
        RedisServer::start("a_request_the_cache_may_not_answer_leaves_another_calls_lock_alone")
    else {
        return;
    };
    let backend = Backend::new(Duration::from_millis(1));
    let prefix = format!("test:{}:", std::process::id());
    let store: Store = RedisStore::builder(server.url(), U64Codec)
        .prefix(prefix.clone())
        .lock_ttl(Duration::from_secs(60))
        .release_after(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    // A fill's call, answered, its answer not in any cache yet (there is none above it).
    let fill = store.fill(key).layer(backend.service());
    assert_eq!(fill.oneshot(5).await.unwrap(), 50);
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lock = format!("{prefix}l:5");
    let held: Option<String> = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(held.is_some(), "the fill took the key's lock");

    let cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .store_policy(NotServed(5))
        .store(store.clone())
        .build()
        .unwrap();
    let service = cache.layer(store.fill(key).layer(backend.service()));
    assert_eq!(service.oneshot(5).await.unwrap(), 50);
    assert_eq!(backend.calls(), 2);
    assert!(store.get(&5).is_some(), "kept in memory");
    sleep(Duration::from_millis(100)).await;
    let still: Option<String> = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(still, held, "the other call's lock was let go");
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{prefix}v:5"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        value.is_none(),
        "written to Redis with the other call's token"
    );
}

/// A cache with a minute's ttl over `store`, filled from Redis, over `backend`, whose
/// classifier calls an error or the answer `failure` a failure, cached for `negative` if given.
fn rejecting(
    store: &Store,
    backend: &Backend,
    failure: u64,
    negative: Option<Duration>,
) -> impl Service<u32, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let mut cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .classify(move |result: &Result<u64, BoxError>| match result {
            Ok(value) if *value != failure => seawall::core::Outcome::Success,
            _ => seawall::core::Outcome::Failure,
        });
    if let Some(ttl) = negative {
        cache = cache.negative_ttl(ttl);
    }
    let cache = cache.store(store.clone()).build().unwrap();
    cache.layer(store.fill(key).layer(backend.service()))
}

/// A cache with a minute's ttl over `store`, filled from Redis, over `backend`.
fn cached(
    store: &Store,
    backend: &Backend,
) -> impl Service<u32, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let cache = CacheLayer::builder(key)
        .ttl(Duration::from_secs(60))
        .store(store.clone())
        .build()
        .unwrap();
    cache.layer(store.fill(key).layer(backend.service()))
}

#[cfg(feature = "http")]
mod codec {
    use bytes::Bytes;
    use proptest::prelude::*;
    use seawall::cache::redis::{Codec, HttpCodec};

    fn header_name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,20}"
    }

    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(32u8..127, 0..64)
    }

    proptest! {
        /// Status, headers (in order, repeated names kept) and body survive the trip.
        #[test]
        fn an_http_response_round_trips(
            status in 100u16..1000,
            headers in proptest::collection::vec((header_name(), header_value()), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut response = http::Response::new(Bytes::from(body.clone()));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (name, value) in &headers {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(value).unwrap(),
                );
            }
            let bytes = HttpCodec.encode(&response).unwrap();
            let back = HttpCodec.decode(&bytes).unwrap();
            prop_assert_eq!(back.status(), response.status());
            prop_assert_eq!(back.headers(), response.headers());
            prop_assert_eq!(back.body(), response.body());
            // Cut short anywhere in the head, it reads as nothing rather than as a wrong answer.
            let head = bytes.len() - body.len();
            for cut in 0..head {
                let short = HttpCodec.decode(&bytes[..cut]);
                prop_assert!(short.is_none(), "read {:?} from {} bytes", short, cut);
            }
        }
    }
}
