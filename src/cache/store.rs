//! Where a cache keeps its answers: the [`Store`] trait, the [`Entry`] it holds per key, and the
//! bounded, sharded [`MemoryStore`].

use super::error::Shared;
use crate::sync::Padded;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thread_local::ThreadLocal;
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
    /// [`fresh_until`](Self::fresh_until) on the cache's coarse clock (nanoseconds since its
    /// thread started); 0 when not known (the hit then works it out from the instant).
    pub(crate) fresh_ns: u64,
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

    /// Reads the entry stored under `key`, if there is one: what a hit calls, so that a store
    /// able to lend its entry in place (`Cow::Borrowed`) spares the hit a clone of anything but
    /// what `read` takes (for a fresh hit, the value). By default, `read` is given
    /// [`get`](Self::get)'s clone (`Cow::Owned`).
    #[inline]
    fn read<R>(&self, key: &K, read: impl FnOnce(Cow<'_, Entry<V>>) -> R) -> Option<R>
    where
        Self: Sized,
        V: Clone,
    {
        self.get(key).map(|entry| read(Cow::Owned(entry)))
    }

    /// Stores `entry` under `key`, replacing what was there. A bounded store may evict another
    /// entry to make room, or refuse this one.
    fn insert(&self, key: K, entry: Entry<V>);

    /// Forgets `key`.
    fn remove(&self, key: &K);

    /// The cache has dealt with the answer of its call for `key` (stored it, or not: a status
    /// or a request its policy does not keep, a failure, a stale entry put back in its place):
    /// called after its last `insert` or `remove` for the call. A store that holds something
    /// while a call is made (the Redis tier's lock on the key) lets go of what is left. The
    /// default does nothing: a store that wraps another must forward it.
    fn settled(&self, key: &K) {
        let _ = key;
    }

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

/// How many entries each thread keeps near (a power of two): see [`MemoryStore`].
const NEAR_SLOTS: usize = 32;
/// How many generation counters the keys are spread over (a power of two).
const GENERATIONS: usize = 256;

/// One thread's near copy of an entry, valid while its key's generation is the one it was
/// copied at.
struct Near<K, V> {
    key: K,
    generation: u64,
    entry: Entry<V>,
    /// The store's eviction count when the shared store last saw a hit on this key.
    touched: Cell<u64>,
    /// What the entry weighs (1 without a weigher).
    weight: u64,
}

/// One thread's near copies, by the key's hash.
struct Nears<K, V> {
    copies: Box<[Option<Near<K, V>>]>,
    /// Per slot, the hash of the last key read from the shared store for it: a slot holding
    /// another key's copy is given to a key only when it is read twice in a row, so keys
    /// that take turns at a slot do not copy themselves over each other on every hit.
    candidates: Box<[u64]>,
    /// What the copies weigh in all.
    weight: u64,
}

impl<K, V> Nears<K, V> {
    /// Drops the copy in `slot`, if any.
    fn drop_copy(&mut self, slot: usize) {
        if let Some(near) = self.copies[slot].take() {
            self.weight -= near.weight;
        }
    }
}

/// The default [`Store`]: bounded in entries (or in a weight of your own, bytes say), sharded, with
/// a scan-resistant eviction policy.
///
/// It is [`quick_cache`](https://docs.rs/quick_cache)'s concurrent cache (CLOCK-PRO / S3-FIFO-like:
/// new keys enter a small probationary queue, and a flood of keys asked for once evicts each other
/// rather than the hot ones), built with its sharded read lock, in front of which each thread
/// keeps near copies of the entries it hit last (32 a thread, one per slot of the key's hash),
/// so that a repeated hit takes no lock and writes nothing another thread reads:
///
/// - A near copy is valid while its key's *generation* is unchanged: every insert and remove
///   moves the generation of the keys that share the key's counter (one of 256), after the
///   shared store is written, and a hit compares it (one load). A hit that finds no valid
///   copy reads the shared store (its thread's stripe of the shard's read lock) and leaves a
///   copy of what it found (the key and the entry cloned: once per key, thread and write),
///   in an empty slot at once, in place of another key's copy only when read twice in a row
///   (so that keys taking turns at a slot do not copy themselves over each other every hit).
/// - A hit on a near copy also reads the shared store when the store has evicted since the
///   copy was last shown to it, so that its eviction policy (which moves only when it evicts)
///   sees the key hit as often as it would without the copy. A store that is not full, or
///   not evicting, answers every repeated hit from the copies.
/// - Besides what the bound allows, each thread that has hit keeps at most 32 entries alive
///   (with a weigher, weighing at most a thousandth of the budget in all), for as long as the
///   store lives: a copy of an entry evicted or removed goes when its thread next reads the
///   key, or when its slot is taken; the copies of a thread that exited are reused by the next
///   thread to start. A thread's first hit allocates its slots.
pub struct MemoryStore<K: Send, V: Send> {
    cache: Inner<K, V>,
    evictions: Evictions,
    hasher: quick_cache::DefaultHashBuilder,
    generations: Box<[AtomicU64]>,
    /// Padded: a hit writes its thread's `RefCell` flag, and the threads' cells are side by side.
    nears: ThreadLocal<Padded<RefCell<Nears<K, V>>>>,
    /// The heaviest entry kept near (`u64::MAX` without a weigher).
    near_weight: u64,
    weigh: Weigh<V>,
}

impl<K, V> MemoryStore<K, V>
where
    K: Hash + Eq + Clone + Send,
    V: Clone + Send,
{
    /// A store of at most `max_entries` entries (at least 1).
    pub(crate) fn new(max_entries: usize, max_weight: Budget<V>) -> Self {
        let evictions = Evictions::default();
        let (capacity, weigh) = match max_weight {
            Some((max, weigh)) => (max, Some(weigh)),
            None => (max_entries as u64, None),
        };
        let near_weight = match weigh {
            Some(_) => capacity / 1024,
            None => u64::MAX,
        };
        let cache = Inner::with(
            max_entries,
            capacity,
            Weigh { weigh },
            quick_cache::DefaultHashBuilder::default(),
            evictions.clone(),
        );
        MemoryStore {
            cache,
            evictions,
            hasher: quick_cache::DefaultHashBuilder::default(),
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
            nears: ThreadLocal::new(),
            near_weight,
            weigh: Weigh { weigh },
        }
    }

    /// The generation counter of a key of hash `hash`.
    #[inline]
    fn generation(&self, hash: u64) -> &AtomicU64 {
        &self.generations[(hash as usize) & (GENERATIONS - 1)]
    }

    /// A read that found no valid near copy: the shared store, and a copy of what it has.
    #[inline(never)]
    fn read_shared<R>(
        &self,
        key: &K,
        hash: u64,
        read: impl FnOnce(Cow<'_, Entry<V>>) -> R,
    ) -> Option<R> {
        let slot = near_slot(hash);
        // Read the generation before the shared store: a copy is never newer than its mark.
        let seen = self.generation(hash).load(Ordering::Acquire);
        let evicted = self.evictions.count.load(Ordering::Relaxed);
        let Some(entry) = self.cache.get(key) else {
            // Gone from the shared store (evicted, or removed): so is any copy of it here.
            if let Some(nears) = self.nears.get() {
                if let Ok(mut nears) = nears.try_borrow_mut() {
                    if nears.copies[slot]
                        .as_ref()
                        .is_some_and(|near| near.key == *key)
                    {
                        nears.drop_copy(slot);
                    }
                }
            }
            return None;
        };
        let weight = quick_cache::Weighter::<K, Entry<V>>::weight(&self.weigh, key, &entry);
        let nears = self.nears.get_or(|| {
            Padded(RefCell::new(Nears {
                copies: (0..NEAR_SLOTS).map(|_| None).collect(),
                candidates: vec![0; NEAR_SLOTS].into_boxed_slice(),
                weight: 0,
            }))
        });
        if let Ok(mut nears) = nears.try_borrow_mut() {
            let copy = match &nears.copies[slot] {
                // The same key: a fresh copy if its generation moved, else it was only shown
                // to the shared store, which has now seen it hit. A copy stands for hits the
                // store did not see: shown once more, as the store's policy counts a key read
                // more than once between evictions (it saturates at two).
                Some(near) if near.key == *key => {
                    near.touched.set(evicted);
                    if near.generation == seen {
                        let _ = self.cache.get(key);
                        false
                    } else {
                        // Its entry was replaced: the old copy goes, whether or not the new
                        // one is kept.
                        nears.drop_copy(slot);
                        true
                    }
                }
                // Another key's: only for a key read twice in a row.
                Some(_) => nears.candidates[slot] == hash,
                None => true,
            };
            // With a weigher, a thread's copies weigh at most `near_weight` in all: the slot's
            // present copy gives way only if the new one fits in its place.
            let room = nears.weight - nears.copies[slot].as_ref().map_or(0, |near| near.weight);
            if copy && room.saturating_add(weight) <= self.near_weight {
                let near = Near {
                    key: key.clone(),
                    generation: seen,
                    entry: entry.clone(),
                    // The store saw this read: the copy's first hit is shown to it too (as if
                    // an eviction had come between), so that a key read twice counts twice
                    // there, as it would without the copy.
                    touched: Cell::new(evicted.wrapping_sub(1)),
                    weight,
                };
                nears.drop_copy(slot);
                nears.weight += weight;
                nears.copies[slot] = Some(near);
            } else if !copy {
                nears.candidates[slot] = hash;
            }
        }
        Some(read(Cow::Owned(entry)))
    }

    /// Marks every near copy of the keys sharing `hash`'s counter stale: after the shared store
    /// is written, so that a copy made at the new generation is of the new entry.
    #[inline]
    fn moved(&self, hash: u64) {
        self.generation(hash).fetch_add(1, Ordering::Release);
    }
}

/// The slot of a key of hash `hash` among a thread's near copies.
#[inline]
fn near_slot(hash: u64) -> usize {
    (hash >> 32) as usize & (NEAR_SLOTS - 1)
}

impl<K, V> Store<K, V> for MemoryStore<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get(&self, key: &K) -> Option<Entry<V>> {
        self.read(key, |entry| entry.into_owned())
    }

    #[inline]
    fn read<R>(&self, key: &K, read: impl FnOnce(Cow<'_, Entry<V>>) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let generation = self.generation(hash);
        let slot = near_slot(hash);
        if let Some(nears) = self.nears.get() {
            if let Ok(nears) = nears.try_borrow() {
                if let Some(near) = &nears.copies[slot] {
                    if near.key == *key && near.generation == generation.load(Ordering::Acquire) {
                        // The shared store's eviction policy must see the key hit at least once
                        // between two evictions, as it would without the copy.
                        let evicted = self.evictions.count.load(Ordering::Relaxed);
                        if near.touched.get() == evicted {
                            return Some(read(Cow::Borrowed(&near.entry)));
                        }
                    }
                }
            }
        }
        self.read_shared(key, hash, read)
    }

    fn insert(&self, key: K, entry: Entry<V>) {
        let hash = self.hasher.hash_one(&key);
        let mut evicted = Evicted {
            inserting: self.evictions.hasher.hash_one(&key),
            count: 0,
        };
        self.cache.insert_with_lifecycle(key, entry, &mut evicted);
        self.moved(hash);
        if evicted.count > 0 {
            self.evictions
                .count
                .fetch_add(evicted.count, Ordering::Relaxed);
        }
    }

    fn remove(&self, key: &K) {
        self.cache.remove(key);
        self.moved(self.hasher.hash_one(key));
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn evictions(&self) -> u64 {
        self.evictions.count.load(Ordering::Relaxed)
    }
}

impl<K: Send, V: Send> fmt::Debug for MemoryStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("evictions", &self.evictions.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::time::Instant;

    fn entry(value: u64) -> Entry<u64> {
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        Entry {
            value: Ok(value),
            stored: now,
            fresh_until: later,
            stale_until: later,
            error_until: later,
            delta: Duration::ZERO,
            negative: false,
            revalidate_at: now,
            fresh_ns: 0,
        }
    }

    fn value(store: &MemoryStore<u64, u64>, key: u64) -> Option<u64> {
        store.get(&key).map(|entry| *entry.value().unwrap())
    }

    #[test]
    fn a_near_copy_is_never_served_after_its_key_is_written() {
        let store = MemoryStore::<u64, u64>::new(1_000, None);
        store.insert(1, entry(10));
        // Hit enough to be answered from this thread's near copy.
        for _ in 0..40 {
            assert_eq!(value(&store, 1), Some(10));
        }
        store.insert(1, entry(11));
        assert_eq!(value(&store, 1), Some(11));
        for _ in 0..40 {
            assert_eq!(value(&store, 1), Some(11));
        }
        store.remove(&1);
        assert_eq!(value(&store, 1), None);
        // Keys sharing a slot displace each other's copies and are each answered right.
        let (a, b) = (2..)
            .flat_map(|a| (a + 1..a + 2_000).map(move |b| (a, b)))
            .find(|&(a, b)| {
                near_slot(store.hasher.hash_one(a)) == near_slot(store.hasher.hash_one(b))
            })
            .unwrap();
        store.insert(a, entry(a * 10));
        store.insert(b, entry(b * 10));
        for _ in 0..40 {
            assert_eq!(value(&store, a), Some(a * 10));
            assert_eq!(value(&store, b), Some(b * 10));
        }
    }

    /// A writer publishes each version of a key after storing it; readers on other threads,
    /// which keep near copies, must never answer an older version than one published before
    /// their read. Bounded: 20,000 writes, and each reader reads at least 20,000 times.
    #[test]
    fn readers_on_other_threads_see_every_write_published_before_their_read() {
        const KEYS: u64 = 8;
        const READS: u64 = 20_000;
        let store = Arc::new(MemoryStore::<u64, u64>::new(1_000, None));
        let published: Arc<Vec<AtomicU64>> =
            Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        for key in 0..KEYS {
            store.insert(key, entry(0));
        }
        let done = Arc::new(AtomicBool::new(false));
        let start = Arc::new(std::sync::Barrier::new(3));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (store, published, done, start) = (
                    store.clone(),
                    published.clone(),
                    done.clone(),
                    start.clone(),
                );
                std::thread::spawn(move || {
                    start.wait();
                    let mut reads = 0u64;
                    while reads < READS || !done.load(Ordering::Acquire) {
                        for key in 0..KEYS {
                            let floor = published[key as usize].load(Ordering::Acquire);
                            let seen = value(&store, key).expect("never removed");
                            assert!(seen >= floor, "key {key}: read {seen} after {floor}");
                            reads += 1;
                        }
                    }
                })
            })
            .collect();
        start.wait();
        for version in 1..=20_000u64 {
            let key = version % KEYS;
            store.insert(key, entry(version));
            published[key as usize].fetch_max(version, Ordering::Release);
            if version % 64 == 0 {
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            reader.join().expect("a reader failed");
        }
    }

    #[test]
    fn a_copy_of_an_evicted_entry_is_not_served() {
        let store = MemoryStore::<u64, u64>::new(20, None);
        let cold = u64::MAX;
        store.insert(cold, entry(1));
        // Copied on this thread.
        assert_eq!(value(&store, cold), Some(1));
        assert_eq!(value(&store, cold), Some(1));
        // Keys asked for again and again push it out; none of them shares its generation
        // counter or its slot, so only the eviction tells its copy apart.
        let hash = |key: u64| store.hasher.hash_one(key);
        let apart = |key: u64| {
            hash(key) as usize & (GENERATIONS - 1) != hash(cold) as usize & (GENERATIONS - 1)
                && near_slot(hash(key)) != near_slot(hash(cold))
        };
        let keys: Vec<u64> = (0..).filter(|&key| apart(key)).take(2_000).collect();
        for (i, &key) in keys.iter().enumerate() {
            store.insert(key, entry(key));
            for &again in &keys[i.saturating_sub(30)..=i] {
                value(&store, again);
            }
        }
        assert!(store.cache.peek(&cold).is_none(), "evicted");
        for _ in 0..10 {
            assert_eq!(value(&store, cold), None);
        }
    }

    #[test]
    fn a_hot_key_answered_from_near_copies_stays_hot_through_a_flood() {
        let store = MemoryStore::<u64, u64>::new(100, None);
        let hot = u64::MAX;
        store.insert(hot, entry(1));
        for flood in 0..20_000u64 {
            // Keys that are asked for again too, so that they compete for the main queue
            // rather than pass through the probationary one.
            store.insert(flood, entry(flood));
            for again in flood.saturating_sub(10)..=flood {
                value(&store, again);
            }
            for _ in 0..4 {
                assert!(
                    value(&store, hot).is_some(),
                    "hot key evicted after {flood} keys"
                );
            }
        }
        assert!(store.len() <= 100);
    }

    #[test]
    fn with_a_weigher_only_light_entries_are_kept_near() {
        fn weigh(value: &u64) -> u64 {
            *value
        }
        let store = MemoryStore::<u64, u64>::new(1_000, Some((1 << 20, weigh)));
        assert_eq!(store.near_weight, 1 << 10);
        // Too heavy alone; then two that fit alone but not together (in slots of their own).
        let slot = |key: u64| near_slot(store.hasher.hash_one(key));
        let other = (3..).find(|&key| slot(key) != slot(2)).unwrap();
        store.insert(1, entry(1 << 12));
        store.insert(2, entry(600));
        store.insert(other, entry(600));
        assert_eq!(value(&store, 1), Some(1 << 12));
        assert_eq!(value(&store, 2), Some(600));
        assert_eq!(value(&store, other), Some(600));
        let nears = store.nears.get().unwrap().borrow();
        let kept: Vec<u64> = nears.copies.iter().flatten().map(|near| near.key).collect();
        assert_eq!(kept, vec![2]);
        assert_eq!(nears.weight, 600);
    }
}
