//! [`CacheLayer`], its builder and its service.

use super::error::{ConfigError, Shared};
use super::flight::{Flights, Joined};
use super::future::CacheFuture;
use super::store::{Budget, Entry, MemoryStore, Store};
use crate::core::{Classify, ErrorIsFailure, Observer, Outcome, Source};
use crate::fallback::{Select, StorePolicy, StoreSuccesses};
use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// The freshness rules of a cache, for every entry (or, with `http`, the defaults that a
/// response's `Cache-Control` overrides).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Freshness {
    pub(crate) ttl: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
}

/// The largest `-ln(u)` for a `u` drawn in (0, 1] from 53 random bits: the furthest ahead of
/// expiry that early refresh can ever fire, in units of `delta * beta`.
const MAX_DRAW: f64 = 36.8;

/// While a background refresh is in flight, its entry is served up to this many times its last
/// recompute time past its expiry ...
const GRACE_DELTAS: u32 = 10;
/// ... and at least this long (never longer than the ttl).
const MIN_GRACE: Duration = Duration::from_secs(1);

/// What every service of one layer shares.
pub(crate) struct Core<K, V, St, C, P, O> {
    pub(crate) store: St,
    pub(crate) flights: Arc<Flights<K, V>>,
    pub(crate) freshness: Freshness,
    pub(crate) directives: fn(&V, Freshness) -> Option<Freshness>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) beta: f64,
    /// A seeded generator for early refresh, or `None` for the thread's generator.
    pub(crate) seed: Option<AtomicU64>,
    pub(crate) revalidate: Duration,
    pub(crate) select: Select,
    pub(crate) classify: C,
    pub(crate) policy: P,
    pub(crate) mark: fn(&mut V, Duration),
    pub(crate) source: Source<O>,
    pub(crate) counters: Counters,
}

/// Counted on the miss paths only (a hit writes nothing shared).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) coalesced: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a call found in the store.
pub(crate) enum Lookup<V> {
    /// Answer with this (fresh, or stale while revalidating), and refresh the entry given in the
    /// background.
    Hit(Result<V, Shared>, Option<Entry<V>>),
    /// Call the inner service; serve this entry if the call fails.
    Miss(Option<Entry<V>>),
}

impl<K, V, St, C, P, O> Core<K, V, St, C, P, O>
where
    K: Hash + Eq + Clone,
    V: Clone,
    St: Store<K, V>,
    O: Observer,
{
    /// Reads the store for `key` at `now`: the hit path.
    #[inline]
    pub(crate) fn lookup(&self, key: &K, now: Instant) -> Lookup<V> {
        let Some(entry) = self.store.get(key) else {
            return Lookup::Miss(None);
        };
        if now < entry.fresh_until {
            if self.beta > 0.0 && now >= entry.revalidate_at && self.early(&entry, now) {
                return Lookup::Hit(entry.value.clone(), Some(entry));
            }
            return Lookup::Hit(entry.value, None);
        }
        if entry.negative {
            return Lookup::Miss(None);
        }
        if now < entry.stale_until {
            bump(&self.counters.stale);
            if now >= entry.revalidate_at {
                return Lookup::Hit(self.marked(entry.clone(), now), Some(entry));
            }
            return Lookup::Hit(self.marked(entry, now), None);
        }
        if now < entry.error_until {
            if now < entry.revalidate_at {
                // A revalidation failed a moment ago: serve stale without asking again.
                bump(&self.counters.stale);
                return Lookup::Hit(self.marked(entry, now), None);
            }
            return Lookup::Miss(Some(entry));
        }
        if now >= entry.useful_until() {
            self.store.remove(key);
        }
        Lookup::Miss(None)
    }

    /// The stale entry's value, marked with its age.
    pub(crate) fn marked(&self, entry: Entry<V>, now: Instant) -> Result<V, Shared> {
        let age = now.saturating_duration_since(entry.stored);
        entry.value.map(|mut value| {
            (self.mark)(&mut value, age);
            value
        })
    }

    /// XFetch (Vattani, Chierichetti and Lowenstein, PVLDB 2015): refresh early when
    /// `now - delta * beta * ln(u) >= expiry`, `u` uniform in (0, 1]. The draw is skipped while
    /// expiry is further away than any draw could reach, so most hits draw nothing.
    #[inline]
    fn early(&self, entry: &Entry<V>, now: Instant) -> bool {
        let reach = entry.delta.mul_f64(self.beta * MAX_DRAW);
        if now + reach < entry.fresh_until {
            return false;
        }
        let u = self.uniform();
        let gap = entry.delta.mul_f64(self.beta * -u.ln());
        now + gap >= entry.fresh_until
    }

    /// A uniform draw in (0, 1].
    fn uniform(&self) -> f64 {
        let bits = match &self.seed {
            Some(state) => {
                // SplitMix64 over a shared counter: only drawn near expiry, so rarely written.
                let mut z = state
                    .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
                    .wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
            None => rand::random::<u64>(),
        };
        ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Decides what a finished inner call leaves in the store and what it answers: stores a
    /// storable success, or a failure as a negative entry if negative caching is on, or, when
    /// the failure is one `select` answers and `stale` may still serve it, answers `stale`
    /// (and asks the backend again only after the revalidation interval). Returns the answer and
    /// whether it was stale.
    pub(crate) fn complete<Req, E>(
        &self,
        key: &K,
        memo: &P::Memo,
        result: Result<V, E>,
        delta: Duration,
        stale: Option<Entry<V>>,
    ) -> (Result<V, BoxError>, bool)
    where
        C: Classify<V, E>,
        P: StorePolicy<Req, V>,
        E: Into<BoxError>,
    {
        let now = Instant::now();
        let outcome = self.classify.classify(&result);
        let result = result.map_err(Into::into);
        if outcome != Outcome::Failure {
            if let Ok(value) = &result {
                self.offer(key, memo, value, now, delta);
            }
            return (result, false);
        }
        let failed = self.select.answers_failed_responses() && result.is_ok();
        let triggered = crate::fallback::select(self.select, failed, &result).is_some();
        if let (true, Some(mut entry)) = (triggered, stale) {
            if now < entry.error_until {
                entry.revalidate_at = now + self.revalidate;
                bump(&self.counters.stale);
                let answer = self.marked(entry.clone(), now);
                self.store.insert(key.clone(), entry);
                return (answer.map_err(Into::into), true);
            }
        }
        let Some(ttl) = self.negative_ttl else {
            return (result, false);
        };
        let value = match result {
            Ok(value) => Ok(value),
            Err(error) => Err(Shared::new(error)),
        };
        let until = now + ttl;
        let entry = Entry {
            value: value.clone(),
            stored: now,
            fresh_until: until,
            stale_until: until,
            error_until: until,
            delta,
            negative: true,
            revalidate_at: now,
        };
        self.store.insert(key.clone(), entry);
        (value.map_err(Into::into), false)
    }

    /// Stores a good answer if the store policy and its directives allow.
    fn offer<Req>(&self, key: &K, memo: &P::Memo, value: &V, now: Instant, delta: Duration)
    where
        P: StorePolicy<Req, V>,
    {
        if !self.policy.may_store(memo, value) {
            return;
        }
        let Some(freshness) = (self.directives)(value, self.freshness) else {
            return;
        };
        let fresh_until = now + freshness.ttl;
        let entry = Entry {
            value: Ok(value.clone()),
            stored: now,
            fresh_until,
            stale_until: fresh_until + freshness.stale_while_revalidate,
            error_until: fresh_until + freshness.stale_if_error,
            delta,
            negative: false,
            revalidate_at: now,
        };
        self.store.insert(key.clone(), entry);
    }
}

/// Caches a service's answers per key. See the [module docs](super).
pub struct CacheLayer<
    F,
    K,
    V,
    C = ErrorIsFailure,
    O = (),
    P = StoreSuccesses,
    St = MemoryStore<K, V>,
> {
    pub(crate) core: Arc<Core<K, V, St, C, P, O>>,
    pub(crate) key: F,
}

/// What `build` returns.
type Built<F, K, V, C, O, P, St> = Result<CacheLayer<F, K, V, C, O, P, St>, ConfigError>;

/// The store a [`CacheBuilder`] makes unless given one: a [`MemoryStore`] bounded by
/// [`max_entries`](CacheBuilder::max_entries) or [`max_weight`](CacheBuilder::max_weight).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory;

/// A store given to [`CacheBuilder::store`].
#[derive(Clone, Copy, Debug)]
pub struct Given<St>(St);

/// Builds a [`CacheLayer`]; see [`CacheLayer::builder`].
pub struct CacheBuilder<F, V, C = ErrorIsFailure, O = (), P = StoreSuccesses, St = Memory> {
    key: F,
    freshness: Freshness,
    directives: fn(&V, Freshness) -> Option<Freshness>,
    negative_ttl: Option<Duration>,
    beta: f64,
    seed: Option<u64>,
    revalidate: Duration,
    select: Select,
    classify: C,
    name: Cow<'static, str>,
    observer: O,
    policy: P,
    mark: fn(&mut V, Duration),
    max_entries: usize,
    max_weight: Budget<V>,
    store: St,
}

fn as_is<V>(_: &V, freshness: Freshness) -> Option<Freshness> {
    Some(freshness)
}

fn unmarked<V>(_: &mut V, _: Duration) {}

impl CacheLayer<(), (), ()> {
    /// Starts a builder for a cache of the answers to requests with a key: `key` takes it from
    /// each request, or says `None` for a request to pass by the cache (a `POST`, a request with
    /// credentials the key does not cover).
    ///
    /// Defaults: 10,000 entries in memory, fresh for 60 s, no stale serving, no negative
    /// caching, early refresh with `beta` 1, failures as [`ErrorIsFailure`] says, every response
    /// the classifier calls a success stored ([`StoreSuccesses`]), stale answers unmarked.
    pub fn builder<F, V>(key: F) -> CacheBuilder<F, V> {
        CacheBuilder {
            key,
            freshness: Freshness {
                ttl: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            directives: as_is::<V>,
            negative_ttl: None,
            beta: 1.0,
            seed: None,
            revalidate: Duration::from_secs(1),
            select: Select::all(),
            classify: ErrorIsFailure,
            name: Cow::Borrowed("cache"),
            observer: (),
            policy: StoreSuccesses,
            mark: unmarked::<V>,
            max_entries: 10_000,
            max_weight: None,
            store: Memory,
        }
    }
}

impl<F, V, C, O, P, St> CacheBuilder<F, V, C, O, P, St> {
    /// Answers are fresh for `ttl` after they are stored (default 60 s; more than zero, or
    /// [`build`](Self::build) fails with [`ConfigError::Ttl`]): a fresh answer is served without
    /// calling the inner service.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.freshness.ttl = ttl;
        self
    }

    /// For `window` after an answer stops being fresh, serve it at once and refresh it in the
    /// background: one refresh per key at a time, on a clone of the inner service, spawned on
    /// the current tokio runtime (none is spawned outside a runtime). Default zero: off.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.freshness.stale_while_revalidate = window;
        self
    }

    /// For `window` after an answer stops being fresh, serve it in place of a live call that
    /// fails in a way [`when`](Self::when) selects (an error, a timeout or a rejection by a
    /// breaker or a limiter, a response the classifier calls a failure). After a failed
    /// revalidation the backend is asked again only once per
    /// [`revalidate_interval`](Self::revalidate_interval); calls in between are answered stale
    /// at once. Default zero: off.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.freshness.stale_if_error = window;
        self
    }

    /// How often, at most, a key whose revalidation failed is asked again while its stale answer
    /// is served (default 1 s; more than zero, or [`build`](Self::build) fails with
    /// [`ConfigError::RevalidateInterval`]).
    pub fn revalidate_interval(mut self, interval: Duration) -> Self {
        self.revalidate = interval;
        self
    }

    /// Caches failures too, for `ttl` (negative caching; default off; more than zero, or
    /// [`build`](Self::build) fails with [`ConfigError::NegativeTtl`]): a result the classifier
    /// calls a failure (an error, shared as [`Shared`], or a failed response such as a `404`)
    /// is answered again until `ttl` has passed. Failures that stale-if-error answers are not
    /// cached. Keep `ttl` short.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// The `beta` of probabilistic early refresh (XFetch; default 1, on). Each hit on a fresh
    /// answer refreshes it in the background with a probability that grows as its expiry nears,
    /// sooner for answers that took longer to compute (`delta`, measured per entry) and for a
    /// larger `beta`, so that a hot key is recomputed once, before it expires, instead of by
    /// every caller at once after. 0 turns it off; negative or not a number, and
    /// [`build`](Self::build) fails with [`ConfigError::Beta`].
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Draws early refresh's random numbers from a generator seeded with `seed` (for tests),
    /// instead of each thread's own.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Serves stale answers only on the failures `select` chooses (default: every failure).
    pub fn when(mut self, select: Select) -> Self {
        self.select = select;
        self
    }

    /// Marks a stale answer with `mark`, given its age, before it is served (default: not at
    /// all).
    pub fn mark(mut self, mark: fn(&mut V, Duration)) -> Self {
        self.mark = mark;
        self
    }

    /// Keeps at most `max` entries in memory (default 10,000; at least 1, or
    /// [`build`](CacheBuilder::build) fails with [`ConfigError::MaxEntries`]). With
    /// [`max_weight`](Self::max_weight), the number of entries expected instead. Not used with a
    /// store of your own.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Bounds the memory store by weight rather than by count: at most `max` in all, each entry
    /// weighing what `weigh` says of its value (bytes, say; at least 1 each). `max` must be at
    /// least 1, or [`build`](CacheBuilder::build) fails with [`ConfigError::MaxWeight`]. Not used
    /// with a store of your own.
    pub fn max_weight(mut self, max: u64, weigh: fn(&V) -> u64) -> Self {
        self.max_weight = Some((max, weigh));
        self
    }

    /// Keeps the answers in `store` instead of a [`MemoryStore`].
    pub fn store<St2>(self, store: St2) -> CacheBuilder<F, V, C, O, P, Given<St2>> {
        CacheBuilder {
            key: self.key,
            freshness: self.freshness,
            directives: self.directives,
            negative_ttl: self.negative_ttl,
            beta: self.beta,
            seed: self.seed,
            revalidate: self.revalidate,
            select: self.select,
            classify: self.classify,
            name: self.name,
            observer: self.observer,
            policy: self.policy,
            mark: self.mark,
            max_entries: self.max_entries,
            max_weight: self.max_weight,
            store: Given(store),
        }
    }

    /// Decides with `classify` which results are successes (stored), and which failures (served
    /// stale, or cached as negative entries).
    pub fn classify<C2>(self, classify: C2) -> CacheBuilder<F, V, C2, O, P, St> {
        CacheBuilder {
            key: self.key,
            freshness: self.freshness,
            directives: self.directives,
            negative_ttl: self.negative_ttl,
            beta: self.beta,
            seed: self.seed,
            revalidate: self.revalidate,
            select: self.select,
            classify,
            name: self.name,
            observer: self.observer,
            policy: self.policy,
            mark: self.mark,
            max_entries: self.max_entries,
            max_weight: self.max_weight,
            store: self.store,
        }
    }

    /// Decides with `policy` which good answers may be stored (default [`StoreSuccesses`]:
    /// every one; fallback's [`HttpStore`](crate::fallback::HttpStore) refuses what may not be
    /// shared).
    pub fn store_policy<P2>(self, policy: P2) -> CacheBuilder<F, V, C, O, P2, St> {
        CacheBuilder {
            key: self.key,
            freshness: self.freshness,
            directives: self.directives,
            negative_ttl: self.negative_ttl,
            beta: self.beta,
            seed: self.seed,
            revalidate: self.revalidate,
            select: self.select,
            classify: self.classify,
            name: self.name,
            observer: self.observer,
            policy,
            mark: self.mark,
            max_entries: self.max_entries,
            max_weight: self.max_weight,
            store: self.store,
        }
    }

    /// The layer's name, in events (default `"cache"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends the cache's events to `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> CacheBuilder<F, V, C, O2, P, St> {
        CacheBuilder {
            key: self.key,
            freshness: self.freshness,
            directives: self.directives,
            negative_ttl: self.negative_ttl,
            beta: self.beta,
            seed: self.seed,
            revalidate: self.revalidate,
            select: self.select,
            classify: self.classify,
            name: self.name,
            observer,
            policy: self.policy,
            mark: self.mark,
            max_entries: self.max_entries,
            max_weight: self.max_weight,
            store: self.store,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.freshness.ttl.is_zero() {
            return Err(ConfigError::Ttl);
        }
        if self.negative_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(ConfigError::NegativeTtl);
        }
        if !self.beta.is_finite() || self.beta < 0.0 {
            return Err(ConfigError::Beta);
        }
        if self.revalidate.is_zero() {
            return Err(ConfigError::RevalidateInterval);
        }
        Ok(())
    }

    fn finish<K, St2>(
        self,
        make: impl FnOnce(St, usize, Budget<V>) -> Result<St2, ConfigError>,
    ) -> Built<F, K, V, C, O, P, St2>
    where
        K: Hash + Eq + Clone,
        V: Clone,
    {
        self.check()?;
        let store = make(self.store, self.max_entries, self.max_weight)?;
        let core = Core {
            store,
            flights: Arc::new(Flights::new()),
            freshness: self.freshness,
            directives: self.directives,
            negative_ttl: self.negative_ttl,
            beta: self.beta,
            seed: self.seed.map(AtomicU64::new),
            revalidate: self.revalidate,
            select: self.select,
            classify: self.classify,
            policy: self.policy,
            mark: self.mark,
            source: Source::new(self.name, self.observer),
            counters: Counters::default(),
        };
        Ok(CacheLayer {
            core: Arc::new(core),
            key: self.key,
        })
    }
}

impl<F, V, C, O, P> CacheBuilder<F, V, C, O, P, Memory> {
    /// Checks the settings and builds the layer and its [`MemoryStore`], shared by every service
    /// it makes.
    pub fn build<K>(self) -> Result<CacheLayer<F, K, V, C, O, P>, ConfigError>
    where
        K: Hash + Eq + Clone,
        V: Clone,
    {
        self.finish(|_, max_entries, max_weight| {
            if max_entries == 0 {
                return Err(ConfigError::MaxEntries);
            }
            if max_weight.is_some_and(|(max, _)| max == 0) {
                return Err(ConfigError::MaxWeight);
            }
            Ok(MemoryStore::new(max_entries, max_weight))
        })
    }
}

impl<F, V, C, O, P, St> CacheBuilder<F, V, C, O, P, Given<St>> {
    /// Checks the settings and builds the layer over the store given.
    pub fn build<K>(self) -> Built<F, K, V, C, O, P, St>
    where
        K: Hash + Eq + Clone,
        V: Clone,
        St: Store<K, V>,
    {
        self.finish(|Given(store), _, _| Ok(store))
    }
}

impl<F, K, V, C, O, P, St> CacheLayer<F, K, V, C, O, P, St>
where
    St: Store<K, V>,
{
    /// How many entries the store holds (some may have expired and not been removed yet).
    pub fn len(&self) -> usize {
        self.core.store.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.core.store.is_empty()
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> Stats {
        let counters = &self.core.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            misses: read(&counters.misses),
            stale_served: read(&counters.stale),
            refreshes: read(&counters.refreshes),
            coalesced: read(&counters.coalesced),
            evictions: self.core.store.evictions(),
        }
    }
}

/// What a [`CacheLayer`] has done since it was built, from [`CacheLayer::stats`]. Hits are not
/// counted here (a hit writes nothing shared): count them with an observer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls that found no answer to serve and called the inner service, or waited on a call.
    pub misses: u64,
    /// Stale answers served (while revalidating, or in place of a failure).
    pub stale_served: u64,
    /// Background refreshes started (stale-while-revalidate and early refresh).
    pub refreshes: u64,
    /// Misses that waited on another caller's call for the same key instead of making their own.
    pub coalesced: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
}

impl<F: Clone, K, V, C, O, P, St> Clone for CacheLayer<F, K, V, C, O, P, St> {
    fn clone(&self) -> Self {
        CacheLayer {
            core: self.core.clone(),
            key: self.key.clone(),
        }
    }
}

impl<F, K, V, C, O, P, St> fmt::Debug for CacheLayer<F, K, V, C, O, P, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.core.source.name())
            .field("freshness", &self.core.freshness)
            .field("negative_ttl", &self.core.negative_ttl)
            .field("beta", &self.core.beta)
            .finish()
    }
}

impl<F, V, C, O, P, St> fmt::Debug for CacheBuilder<F, V, C, O, P, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("freshness", &self.freshness)
            .field("negative_ttl", &self.negative_ttl)
            .field("beta", &self.beta)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl<S, F: Clone, K, V, C, O, P, St> Layer<S> for CacheLayer<F, K, V, C, O, P, St> {
    type Service = Cache<S, F, K, V, C, O, P, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`CacheLayer`]: always ready; answers hits from the store, and makes misses
/// wait, in their own future, for a clone of the inner service to be ready.
pub struct Cache<S, F, K, V, C = ErrorIsFailure, O = (), P = StoreSuccesses, St = MemoryStore<K, V>>
{
    inner: S,
    layer: CacheLayer<F, K, V, C, O, P, St>,
}

impl<S, F, K, V, C, O, P, St> Cache<S, F, K, V, C, O, P, St> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, this one dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, F: Clone, K, V, C, O, P, St> Clone for Cache<S, F, K, V, C, O, P, St> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, F, K, V, C, O, P, St> fmt::Debug for Cache<S, F, K, V, C, O, P, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, F, K, C, O, P, St, Req> Service<Req> for Cache<S, F, K, S::Response, C, O, P, St>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Clone + Send + Sync + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    O: Observer,
    P: StorePolicy<Req, S::Response> + Send + Sync + 'static,
    P::Memo: Send + 'static,
    St: Store<K, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CacheFuture<S, Req, K, S::Response, St, C, P, O>;

    /// Always ready: a hit needs nothing of the inner service, and a miss waits for a clone of
    /// it inside its own future.
    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let core = &self.layer.core;
        let Some(key) = (self.layer.key)(&req) else {
            return CacheFuture::bypass(self.inner.clone(), req);
        };
        match core.lookup(&key, Instant::now()) {
            Lookup::Hit(value, refresh) => {
                if let Some(entry) = refresh {
                    self.refresh(key, req, entry);
                }
                CacheFuture::hit(value)
            }
            Lookup::Miss(stale) => {
                bump(&core.counters.misses);
                let memo = core.policy.memo(&req);
                match core.flights.join(&key) {
                    Joined::Lead(leader) => CacheFuture::lead(
                        self.inner.clone(),
                        req,
                        core.clone(),
                        leader,
                        key,
                        memo,
                        stale,
                    ),
                    Joined::Wait(waiter) => {
                        bump(&core.counters.coalesced);
                        CacheFuture::wait(
                            self.inner.clone(),
                            req,
                            core.clone(),
                            waiter,
                            key,
                            memo,
                            stale,
                        )
                    }
                }
            }
        }
    }
}

impl<S, F, K, V, C, O, P, St> Cache<S, F, K, V, C, O, P, St> {
    /// Refreshes `key` in the background with `req`, unless a call for it is in progress or no
    /// tokio runtime is there to run it.
    fn refresh<Req>(&self, key: K, req: Req, mut entry: Entry<V>)
    where
        S: Service<Req, Response = V> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        S::Future: Send + 'static,
        Req: Send + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        C: Classify<V, S::Error> + Send + Sync + 'static,
        O: Observer,
        P: StorePolicy<Req, V> + Send + Sync + 'static,
        P::Memo: Send + 'static,
        St: Store<K, V>,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = self.layer.core.clone();
        let Some(leader) = core.flights.lead(&key) else {
            return;
        };
        bump(&core.counters.refreshes);
        // Until the refresh lands, serve the entry rather than make callers wait on it, even a
        // little past its expiry.
        let grace = entry
            .delta
            .saturating_mul(GRACE_DELTAS)
            .max(MIN_GRACE)
            .min(core.freshness.ttl);
        if entry.stale_until < entry.fresh_until + grace {
            entry.stale_until = entry.fresh_until + grace;
            core.store.insert(key.clone(), entry.clone());
        }
        let memo = core.policy.memo(&req);
        let mut inner = self.inner.clone();
        runtime.spawn(async move {
            let stale = Some(entry);
            let mut start = Instant::now();
            let result = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => {
                    start = Instant::now();
                    inner.call(req).await
                }
                Err(error) => Err(error),
            };
            let delta = start.elapsed();
            let (answer, _) = core.complete(&key, &memo, result, delta, stale);
            let _ = leader.finish(answer);
        });
    }
}
