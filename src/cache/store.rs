//! Where a cache keeps its answers: the [`Store`] trait, the [`Entry`] it holds per key, and the
//! bounded, sharded [`MemoryStore`].

use super::error::Shared;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One stored answer and its freshness: what a [`Store`] keeps per key.
///
/// An entry is *fresh* until [`fresh_until`](Self::fresh_until); after that it may still be
/// served while it is revalidated in the background until [`stale_until`](Self::stale_until), and
/// in place of a failed live call until [`error_until`](Self::error_until). It also carries how
/// long the answer took to compute ([`delta`](Self::delta)), which probabilistic early refresh
/// reads.
#[derive(Clone, Debug)]
pub struct Entry<V> {
    pub(crate) value: Result<V, Shared>,
    pub(crate) stored: Instant,
    pub(crate) fresh_until: Instant,
    pub(crate) stale_until: Instant,
    pub(crate) error_until: Instant,
    pub(crate) delta: Duration,
    pub(crate) negative: bool,
    /// No live revalidation before this (set after a failed one, so that an outage is asked at
    /// most once per key per revalidation interval).
    pub(crate) revalidate_at: Instant,
}

impl<V> Entry<V> {
    /// The stored answer: a response, or for a negative entry the failure that was cached.
    pub fn value(&self) -> Result<&V, &Shared> {
        self.value.as_ref()
    }

    /// When the answer was stored.
    pub fn stored(&self) -> Instant {
        self.stored
    }

    /// Until when the answer is fresh.
    pub fn fresh_until(&self) -> Instant {
        self.fresh_until
    }

    /// Until when the answer may be served stale while it is revalidated in the background.
    pub fn stale_until(&self) -> Instant {
        self.stale_until
    }

    /// Until when the answer may be served stale in place of a failed live call.
    pub fn error_until(&self) -> Instant {
        self.error_until
    }

    /// How long computing the answer took (the inner call's latency).
    pub fn delta(&self) -> Duration {
        self.delta
    }

    /// Whether this is a cached failure (negative caching).
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Until when the entry is worth keeping at all.
    pub(crate) fn useful_until(&self) -> Instant {
        self.stale_until.max(self.error_until)
    }
}

/// Where a [`CacheLayer`](super::CacheLayer) keeps its answers, shared by every service the layer
/// makes.
///
/// `get` is on the hit path of every call: keep it free of locks and of writes to memory other
/// threads read, and let it clone the stored value (an `Arc` or a `Bytes` clone, ideally) rather
/// than anything around it. [`MemoryStore`] is the default.
pub trait Store<K, V>: Send + Sync + 'static {
    /// The entry stored under `key`, if any (expired or not: the cache reads its freshness).
    fn get(&self, key: &K) -> Option<Entry<V>>;

    /// Stores `entry` under `key`, replacing what was there. A bounded store may evict another
    /// entry to make room, or refuse this one.
    fn insert(&self, key: K, entry: Entry<V>);

    /// Forgets `key`.
    fn remove(&self, key: &K);

    /// How many entries are stored (some may have expired and not been removed yet).
    fn len(&self) -> usize;

    /// Whether nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries were evicted to make room, since the store was made.
    fn evictions(&self) -> u64 {
        0
    }
}

/// A weight budget and the function that weighs a value against it.
pub(crate) type Budget<V> = Option<(u64, fn(&V) -> u64)>;

/// Weighs entries for [`MemoryStore`]: one unit each, or what the user's weigher says.
#[derive(Clone)]
pub(crate) struct Weigh<V> {
    weigh: Option<fn(&V) -> u64>,
}

impl<K, V> quick_cache::Weighter<K, Entry<V>> for Weigh<V> {
    #[inline]
    fn weight(&self, _: &K, entry: &Entry<V>) -> u64 {
        match (&self.weigh, &entry.value) {
            // A zero weight would pin the entry in quick_cache: count at least one.
            (Some(weigh), Ok(value)) => weigh(value).max(1),
            _ => 1,
        }
    }
}

/// Counts evictions; written only when the store evicts, which is on the miss path.
///
/// quick_cache reports the value a key's new one replaces through the same hook as an
/// eviction: the insert says which key it stores (by hash), and what goes out under that key
/// is not counted.
#[derive(Clone, Default)]
pub(crate) struct Evictions {
    count: Arc<AtomicU64>,
    hasher: RandomState,
}

/// What one insert saw go out: the hash of the key it stores, and how many other keys went.
#[derive(Default)]
pub(crate) struct Evicted {
    inserting: u64,
    count: u64,
}

impl<K: Hash, V> quick_cache::Lifecycle<K, V> for Evictions {
    type RequestState = Evicted;

    #[inline]
    fn on_evict(&self, state: &mut Evicted, key: K, _: V) {
        if self.hasher.hash_one(&key) != state.inserting {
            state.count += 1;
        }
    }
}

type Inner<K, V> =
    quick_cache::sync::Cache<K, Entry<V>, Weigh<V>, quick_cache::DefaultHashBuilder, Evictions>;

/// The default [`Store`]: bounded in entries (or in a weight of your own, bytes say), sharded, with
/// a scan-resistant eviction policy.
///
/// It is [`quick_cache`](https://docs.rs/quick_cache)'s concurrent cache (CLOCK-PRO / S3-FIFO-like:
/// new keys enter a small probationary queue, and a flood of keys asked for once evicts each other
/// rather than the hot ones), built with its sharded read lock: a hit takes a read lock on its
/// thread's own stripe of the shard's lock (no cache line written that another reader writes),
/// bumps the entry's reference counter only while it is below its small maximum (so a hot key's
/// hits write nothing shared), and clones the stored value.
pub struct MemoryStore<K, V> {
    cache: Inner<K, V>,
    evictions: Evictions,
}

impl<K, V> MemoryStore<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// A store of at most `max_entries` entries (at least 1).
    pub(crate) fn new(max_entries: usize, max_weight: Budget<V>) -> Self {
        let evictions = Evictions::default();
        let (capacity, weigh) = match max_weight {
            Some((max, weigh)) => (max, Some(weigh)),
            None => (max_entries as u64, None),
        };
        let cache = Inner::with(
            max_entries,
            capacity,
            Weigh { weigh },
            quick_cache::DefaultHashBuilder::default(),
            evictions.clone(),
        );
        MemoryStore { cache, evictions }
    }
}

impl<K, V> Store<K, V> for MemoryStore<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get(&self, key: &K) -> Option<Entry<V>> {
        self.cache.get(key)
    }

    fn insert(&self, key: K, entry: Entry<V>) {
        let mut evicted = Evicted {
            inserting: self.evictions.hasher.hash_one(&key),
            count: 0,
        };
        self.cache.insert_with_lifecycle(key, entry, &mut evicted);
        if evicted.count > 0 {
            self.evictions
                .count
                .fetch_add(evicted.count, Ordering::Relaxed);
        }
    }

    fn remove(&self, key: &K) {
        self.cache.remove(key);
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn evictions(&self) -> u64 {
        self.evictions.count.load(Ordering::Relaxed)
    }
}

impl<K, V> fmt::Debug for MemoryStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("evictions", &self.evictions.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
