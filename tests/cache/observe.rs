//! The cache's handle and events: each path (hit, stale hit, miss, coalesced miss, refresh,
//! eviction, stale answer in place of a failure) counted and reported.

use super::{key, Backend, Seen};
use seawall::cache::{CacheLayer, Stats};
use seawall::core::{EventKind, FallbackTrigger};
use std::time::Duration;
use tokio_test::{assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt};

fn stats(hits: u64, misses: u64, stale: u64, refreshes: u64, coalesced: u64) -> Stats {
    let mut stats = Stats::default();
    stats.hits = hits;
    stats.misses = misses;
    stats.stale_served = stale;
    stats.refreshes = refreshes;
    stats.coalesced = coalesced;
    stats
}

#[tokio::test(start_paused = true)]
async fn each_path_is_counted_and_reported() {
    let backend = Backend::new(Duration::from_millis(10));
    let seen = Seen::default();
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(100))
        .early_refresh(0.0)
        .name("catalog")
        .observer(seen.observer("catalog"))
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.name(), "catalog");
    let mut service = layer.layer(backend.service());

    // A miss, and a second caller coalesced on it.
    let mut first = task::spawn(service.call(1));
    let mut second = task::spawn(service.call(1));
    assert!(first.poll().is_pending());
    assert!(second.poll().is_pending());
    assert_eq!(handle.in_flight(), 1, "one call in flight for the key");
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(assert_ready_ok!(first.poll()), 10);
    assert_eq!(assert_ready_ok!(second.poll()), 10);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(
        seen.take(),
        [
            EventKind::CacheMiss { coalesced: false },
            EventKind::CacheMiss { coalesced: true }
        ]
    );
    assert_eq!(handle.stats(), stats(0, 2, 0, 0, 1));

    // A fresh hit.
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(seen.take(), [EventKind::CacheHit { stale: false }]);
    assert_eq!(handle.stats(), stats(1, 2, 0, 0, 1));

    // A stale hit, which starts a background refresh.
    tokio::time::advance(Duration::from_secs(11)).await;
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(
        seen.take(),
        [
            EventKind::CacheRefresh { early: false },
            EventKind::CacheHit { stale: true }
        ]
    );
    assert_eq!(handle.stats(), stats(2, 2, 1, 1, 1));
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Past the stale window, the backend down: a miss answered stale, as a fallback would.
    tokio::time::advance(Duration::from_secs(25)).await;
    backend.set_down(true);
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 10);
    let events = seen.take();
    assert_eq!(events[0], EventKind::CacheMiss { coalesced: false });
    assert!(
        matches!(
            events[1],
            EventKind::FallbackUsed {
                trigger: FallbackTrigger::Error,
                ..
            }
        ),
        "{events:?}"
    );
    assert_eq!(events.len(), 2);
    assert_eq!(handle.stats(), stats(2, 3, 2, 1, 1));
    // Within the revalidation interval: a stale hit, the backend not asked.
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 10);
    assert_eq!(seen.take(), [EventKind::CacheHit { stale: true }]);
    assert_eq!(handle.stats(), stats(3, 3, 3, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_early_refresh_is_reported_as_early() {
    let backend = Backend::new(Duration::from_secs(1));
    let seen = Seen::default();
    let layer = CacheLayer::builder(key)
        .ttl(Duration::from_secs(10))
        .early_refresh(100.0)
        .seed(1)
        .name("catalog")
        .observer(seen.observer("catalog"))
        .build()
        .unwrap();
    let service = layer.layer(backend.service());
    service.clone().oneshot(1).await.unwrap();
    seen.take();
    // delta 1 s, beta 100: refreshed early well before the 10 s expiry.
    tokio::time::advance(Duration::from_secs(5)).await;
    service.clone().oneshot(1).await.unwrap();
    assert_eq!(
        seen.take(),
        [
            EventKind::CacheRefresh { early: true },
            EventKind::CacheHit { stale: false }
        ]
    );
    assert_eq!(layer.handle().stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn evictions_are_reported_as_they_happen() {
    let backend = Backend::new(Duration::ZERO);
    let seen = Seen::default();
    let layer = CacheLayer::builder(key)
        .max_entries(10)
        .name("catalog")
        .observer(seen.observer("catalog"))
        .build()
        .unwrap();
    let service = layer.layer(backend.service());
    for key in 1..200 {
        service.clone().oneshot(key).await.unwrap();
    }
    let reported: u64 = seen
        .take()
        .into_iter()
        .map(|kind| match kind {
            EventKind::CacheEvicted { entries } => entries,
            _ => 0,
        })
        .sum();
    let evictions = layer.handle().stats().evictions;
    assert!(evictions >= 150, "{evictions}");
    assert_eq!(reported, evictions);
}

/// Hits on many threads at once are all counted (each thread counts on its own stripe).
#[test]
fn hits_on_many_threads_are_all_counted() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = Backend::new(Duration::ZERO);
        let layer = CacheLayer::builder(key).early_refresh(0.0).build().unwrap();
        let service = layer.layer(backend.service());
        service.clone().oneshot(1).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        service.clone().oneshot(1).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(layer.handle().stats().hits, 16_000);
        assert_eq!(layer.stats().hits, 16_000);
        assert_eq!(layer.stats().misses, 1);
    });
}
