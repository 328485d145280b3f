//! Stale-if-error: [`StaleIfErrorLayer`] keeps the last good response per key and serves it,
//! marked, when the live call fails.
//!
//! The store is cut into shards, each locked briefly and bounded in entries and in bytes. A shard
//! keeps its entries in one list from the oldest stored to the newest (a slab of slots linked by
//! index, so moving or removing an entry is O(1)): storing a key again moves it to the newest end,
//! eviction takes the oldest, and since every entry has the same maximum age, the expired ones
//! are at the oldest end too, where each store and lookup removes a few. The key is held once,
//! behind an `Arc` shared by the map and the slot.

use super::{select, ConfigError, Options, Select, StorePolicy, StoreSuccesses};
use crate::core::{Classify, ErrorIsFailure, EventKind, Observer, Outcome, Source};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::marker::PhantomData;
use std::mem::size_of;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// How many independently locked parts the store is cut into, at most.
const SHARDS: usize = 16;
/// The fewest entries a shard is given: smaller stores have fewer shards.
const SHARD_MIN_ENTRIES: usize = 64;
/// The fewest bytes a shard is given: smaller budgets have fewer shards, so that one shard's share
/// (the most one entry may weigh) is not needlessly small.
const SHARD_MIN_BYTES: usize = 64 * 1024;
/// How many expired entries one store or lookup removes from its shard, at most: bounded work per
/// call, and more than the one entry a store adds, so expired entries cannot pile up.
const COMPACT: usize = 4;
/// No slot: the end of a list.
const NIL: usize = usize::MAX;

/// The default byte budget: 64 MiB.
const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The stored responses, with what decides what is stored and how it is served.
struct Store<K, Res, P> {
    shards: Box<[Mutex<Shard<K, Res>>]>,
    hasher: RandomState,
    max_age: Duration,
    /// The most one entry may weigh: the smallest shard's budget.
    max_weight: usize,
    policy: P,
    may_store: fn(&Res) -> bool,
    weigh: fn(&Res) -> usize,
    mark: fn(&mut Res, Duration),
    /// Makes the copy that is stored (`None`: a clone).
    keep: Option<fn(&Res) -> Res>,
}

/// One locked part of the store.
struct Shard<K, Res> {
    max_entries: usize,
    max_bytes: usize,
    /// The total weight of the entries.
    bytes: usize,
    index: HashMap<Arc<K>, usize>,
    slots: Vec<Slot<K, Res>>,
    /// The first free slot; free slots are chained through `next`.
    free: usize,
    oldest: usize,
    newest: usize,
}

struct Slot<K, Res> {
    entry: Option<Entry<K, Res>>,
    /// The next older entry.
    prev: usize,
    /// The next newer entry (or, for a free slot, the next free slot).
    next: usize,
}

struct Entry<K, Res> {
    key: Arc<K>,
    response: Res,
    at: Instant,
    /// How long after `at` it may be served: at most the store's `max_age`.
    serve_for: Duration,
    weight: usize,
}

/// A hasher that only counts the bytes it is fed: what a key holds, roughly, wherever it holds it.
struct CountBytes(usize);

impl Hasher for CountBytes {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// What a key weighs: its inline size and the bytes it hashes (a `String`'s text, say).
fn key_weight<K: Hash>(key: &K) -> usize {
    let mut count = CountBytes(0);
    key.hash(&mut count);
    size_of::<K>() + count.0
}

impl<K: Hash + Eq, Res> Shard<K, Res> {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Shard {
            max_entries,
            max_bytes,
            bytes: 0,
            index: HashMap::new(),
            slots: Vec::new(),
            free: NIL,
            oldest: NIL,
            newest: NIL,
        }
    }

    fn entry(&self, slot: usize) -> &Entry<K, Res> {
        self.slots[slot]
            .entry
            .as_ref()
            .expect("a linked slot holds an entry")
    }

    fn unlink(&mut self, slot: usize) {
        let Slot { prev, next, .. } = self.slots[slot];
        match prev {
            NIL => self.oldest = next,
            prev => self.slots[prev].next = next,
        }
        match next {
            NIL => self.newest = prev,
            next => self.slots[next].prev = prev,
        }
    }

    fn link_newest(&mut self, slot: usize) {
        self.slots[slot].prev = self.newest;
        self.slots[slot].next = NIL;
        match self.newest {
            NIL => self.oldest = slot,
            newest => self.slots[newest].next = slot,
        }
        self.newest = slot;
    }

    /// Takes the entry out of `slot`, which becomes free.
    fn remove(&mut self, slot: usize) -> Entry<K, Res> {
        self.unlink(slot);
        let entry = self.slots[slot]
            .entry
            .take()
            .expect("a linked slot holds an entry");
        self.slots[slot].next = self.free;
        self.free = slot;
        self.index.remove(&*entry.key);
        self.bytes -= entry.weight;
        entry
    }

    /// Removes up to [`COMPACT`] entries older than `max_age` at `now`, oldest first.
    fn compact(&mut self, now: Instant, max_age: Duration) {
        for _ in 0..COMPACT {
            if self.oldest == NIL
                || now.saturating_duration_since(self.entry(self.oldest).at) <= max_age
            {
                return;
            }
            self.remove(self.oldest);
        }
    }

    /// Stores `response` under `key`, weighing `weight` (at most the shard's budget), to be
    /// served for at most `serve_for`, as the newest entry; then evicts the oldest until the
    /// shard is within its bounds.
    fn put(&mut self, key: K, response: Res, weight: usize, serve_for: Duration, now: Instant) {
        match self.index.get(&key) {
            Some(&slot) => {
                let entry = self.slots[slot]
                    .entry
                    .as_mut()
                    .expect("an indexed slot holds an entry");
                self.bytes = self.bytes - entry.weight + weight;
                entry.weight = weight;
                entry.at = now;
                entry.serve_for = serve_for;
                entry.response = response;
                self.unlink(slot);
                self.link_newest(slot);
            }
            None => {
                let key = Arc::new(key);
                let entry = Entry {
                    key: key.clone(),
                    response,
                    at: now,
                    serve_for,
                    weight,
                };
                let slot = match self.free {
                    NIL => {
                        self.slots.push(Slot {
                            entry: Some(entry),
                            prev: NIL,
                            next: NIL,
                        });
                        self.slots.len() - 1
                    }
                    free => {
                        self.free = self.slots[free].next;
                        self.slots[free].entry = Some(entry);
                        free
                    }
                };
                self.index.insert(key, slot);
                self.bytes += weight;
                self.link_newest(slot);
            }
        }
        while (self.index.len() > self.max_entries || self.bytes > self.max_bytes)
            && self.oldest != NIL
        {
            self.remove(self.oldest);
        }
    }
}

impl<K: Hash + Eq, Res: Clone, P> Store<K, Res, P> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_entries: usize,
        max_bytes: usize,
        max_age: Duration,
        policy: P,
        may_store: fn(&Res) -> bool,
        weigh: fn(&Res) -> usize,
        mark: fn(&mut Res, Duration),
        keep: Option<fn(&Res) -> Res>,
    ) -> Self {
        let shards = SHARDS
            .min(max_entries / SHARD_MIN_ENTRIES)
            .min(max_bytes / SHARD_MIN_BYTES)
            .max(1);
        // The shards' bounds add up to the store's.
        let share = |total: usize, i: usize| total / shards + usize::from(i < total % shards);
        Store {
            shards: (0..shards)
                .map(|i| Mutex::new(Shard::new(share(max_entries, i), share(max_bytes, i))))
                .collect(),
            hasher: RandomState::new(),
            max_age,
            max_weight: max_bytes / shards,
            policy,
            may_store,
            weigh,
            mark,
            keep,
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, Res>> {
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What an entry of `key` and `response` weighs: the weigher's count of the response, the
    /// key's weight, and the entry's bookkeeping (its slot, its place in the map, the `Arc`).
    fn weight(&self, key: &K, response: &Res) -> usize {
        const ARC_COUNTS: usize = 2 * size_of::<usize>();
        let bookkeeping = size_of::<Slot<K, Res>>() + size_of::<(Arc<K>, usize)>() + ARC_COUNTS;
        (self.weigh)(response)
            .saturating_add(key_weight(key))
            .saturating_add(bookkeeping)
    }

    /// Stores a copy of `response`, a success, under `key` if the policy, the predicate and
    /// the budget let it. A good answer the policy refuses to store (`no-store`, say) removes
    /// the stored one: it is what the origin says now, and the older answer must not be served
    /// in its place.
    fn offer<Req>(&self, key: K, memo: &P::Memo, response: &Res)
    where
        P: StorePolicy<Req, Res>,
    {
        if !(self.may_store)(response) {
            return;
        }
        if !self.policy.may_store(memo, response) {
            if self.policy.evicts(memo, response) {
                self.evict(&key);
            }
            return;
        }
        let serve_for = match self.policy.serve_for(response) {
            Some(limit) if limit.is_zero() => {
                self.evict(&key);
                return;
            }
            Some(limit) => limit.min(self.max_age),
            None => self.max_age,
        };
        // The copy is weighed, not the response: it may hold less (see `keep_http`).
        let response = match self.keep {
            Some(keep) => keep(response),
            None => response.clone(),
        };
        let weight = self.weight(&key, &response);
        if weight > self.max_weight {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(&key);
        shard.compact(now, self.max_age);
        shard.put(key, response, weight, serve_for, now);
    }

    /// Removes what is stored under `key`, if anything.
    fn evict(&self, key: &K) {
        let mut shard = self.shard(key);
        if let Some(&slot) = shard.index.get(key) {
            shard.remove(slot);
        }
    }

    /// The stored response for `key` and its age at `now`, if it is not too old.
    fn get(&self, key: &K, now: Instant) -> Option<(Res, Duration)> {
        let mut shard = self.shard(key);
        shard.compact(now, self.max_age);
        let slot = *shard.index.get(key)?;
        let entry = shard.entry(slot);
        let age = now.saturating_duration_since(entry.at);
        if age > entry.serve_for {
            shard.remove(slot);
            return None;
        }
        Some((entry.response.clone(), age))
    }

    fn totals(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(entries, bytes), shard| {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            (entries + shard.index.len(), bytes + shard.bytes)
        })
    }
}

/// Keeps the last good response per key, and serves it when the live call fails: a stale answer,
/// marked as such, instead of an error.
///
/// <div class="warning">
///
/// **The key decides who is served what.** A stored answer is served to *any* request with the
/// same key, from any user. Key only on what makes two requests' answers the same for everyone
/// who may send them: a public catalog page by its method, host, path and query, yes; a user's
/// `/me` by its path, never (add the user's identity to the key, or give such requests no key).
/// Never key on the path alone: it drops the query (a `?access_token=` in it would share one
/// user's answer with the next) and the host. With [`http`](StaleIfErrorLayer::http), answers
/// that say they are private (`Set-Cookie`, `Cache-Control: private` or `no-store`), answers to
/// requests with `Authorization` or `Cookie`, and answers that `Vary` on headers the key does
/// not cover are not stored unless you say the key covers them; but credentials are seen only
/// there, in the request as it reaches this layer: a token in the query, in a header of your
/// own (`X-Api-Key`) or added by a layer beneath this one is invisible, and only the key can
/// keep those users apart. With [`builder`](StaleIfErrorLayer::builder), nothing is known of the
/// response type and the key alone must keep users apart.
///
/// </div>
///
/// What is stored: a response the classifier calls a success, that the store policy accepts
/// ([`StoreSuccesses`]: every one, for [`builder`](StaleIfErrorLayer::builder);
/// [`HttpStore`](super::HttpStore): a whole, shareable answer (`200`, `203`, `204`) to a `GET`,
/// served only to a `GET`, for [`http`](StaleIfErrorLayer::http)), and that the predicate set with
/// [`may_store`](StaleIfErrorBuilder::may_store) accepts (every one by default). A response that
/// is not stored leaves the last stored one in place: a `500` or a `404` never replaces the good
/// answer. But a good answer the store policy refuses only because it may not be kept
/// ([`StorePolicy::evicts`](super::StorePolicy::evicts): with `http`, a whole answer to a `GET`
/// with `Cache-Control: no-store`, say, or `stale-if-error=0` and no freshness) removes it: it is
/// what the origin says now. Requests with no key are neither stored nor served.
///
/// The store holds at most `max_entries` (default 10,000) and `max_bytes` (default 64 MiB, as
/// weighed: see [`weigh`](StaleIfErrorBuilder::weigh)); past either, the oldest stored go
/// first. An entry older than `max_age` (default five minutes) is never served, and is removed
/// as the store is used: each store or lookup removes a few expired entries of its shard, so a
/// client churning keys cannot grow the store and no call scans it.
///
/// When a call fails in a way [`Select`] chooses and a response for its key is stored, it is
/// served after `mark` has marked it, with a `FallbackUsed` event. [`http`](StaleIfErrorLayer::http)
/// marks it with an `Age` header and a [`StaleResponse`] extension (see its docs).
///
/// Responses must be `Clone`: buffer HTTP bodies first (`http::Response<Bytes>`, `String`).
/// Storing costs the checks, a clone (for [`http`](StaleIfErrorLayer::http), a copy of the body
/// and the header values), a clock read and a short lock (and, for a key not stored yet, an
/// `Arc` for it); serving a stale answer, a short lock and a clone.
///
/// ```
/// use seawall::fallback::StaleIfErrorLayer;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // The key is the product id: every user may see any product.
/// let layer = StaleIfErrorLayer::builder(
///     |product: &(u32, bool)| Some(product.0),
///     |answer: &mut String, age| answer.push_str(&format!(" (stale, {age:?} old)")),
/// )
/// .build()
/// .unwrap();
/// let service = layer.layer(service_fn(|(product, up): (u32, bool)| async move {
///     if up { Ok(format!("product {product}")) } else { Err("down") }
/// }));
/// assert_eq!(service.clone().oneshot((7, true)).await.unwrap(), "product 7");
/// assert_eq!(service.clone().oneshot((7, false)).await.unwrap(), "product 7 (stale, 0ns old)");
/// assert!(service.oneshot((8, false)).await.is_err(), "nothing stored for product 8");
/// # }
/// ```
pub struct StaleIfErrorLayer<F, K, Res, C = ErrorIsFailure, O = (), P = StoreSuccesses> {
    store: Arc<Store<K, Res, P>>,
    key: F,
    select: Select,
    classify: C,
    source: Arc<Source<O>>,
}

/// Builds a [`StaleIfErrorLayer`].
pub struct StaleIfErrorBuilder<F, Res, C = ErrorIsFailure, O = (), P = StoreSuccesses> {
    key: F,
    mark: fn(&mut Res, Duration),
    may_store: fn(&Res) -> bool,
    weigh: fn(&Res) -> usize,
    keep: Option<fn(&Res) -> Res>,
    policy: P,
    max_entries: usize,
    max_bytes: usize,
    max_age: Duration,
    options: Options<C, O>,
}

/// The default predicate: every response the policy accepts may be stored.
fn any<Res>(_: &Res) -> bool {
    true
}

/// The default weigher of [`StaleIfErrorLayer::builder`]: nothing beyond the response's inline
/// size, which the entry's bookkeeping counts.
fn inline_only<Res>(_: &Res) -> usize {
    0
}

/// The default weigher of [`StaleIfErrorLayer::http`]: the body's length, the headers' names and
/// values, and the header map's own tables (a bucket and an index per header it has room for:
/// a map has room for more headers than it holds).
#[cfg(feature = "http")]
fn http_weight<B: super::BodySize>(response: &http::Response<B>) -> usize {
    /// What a header map keeps for each header it has room for: a bucket (the name, the value,
    /// a hash and the links to further values of the same name) and, a third again, an index.
    const PER_HEADER: usize =
        size_of::<(http::HeaderName, http::HeaderValue)>() + 4 * size_of::<usize>() + 8;
    let headers = response.headers();
    let text: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let tables = headers.capacity().max(headers.len()) * PER_HEADER;
    response
        .body()
        .body_size()
        .saturating_add(text)
        .saturating_add(tables)
}

/// The copy [`StaleIfErrorLayer::http`] stores: the body's [`compacted`](super::BodySize::compacted)
/// copy, and header values copied into their own bytes, in a map sized for them. A response read
/// from a connection shares that connection's read buffer (through its body and its header
/// values), which a clone would keep alive for as long as the answer is stored.
#[cfg(feature = "http")]
pub(crate) fn keep_http<B: super::BodySize + Clone>(
    response: &http::Response<B>,
) -> http::Response<B> {
    let mut headers = http::HeaderMap::with_capacity(response.headers().len());
    for (name, value) in response.headers() {
        let mut copy = http::HeaderValue::from_bytes(value.as_bytes())
            .expect("a header value's bytes make a header value");
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    let mut copy = http::Response::new(response.body().compacted());
    *copy.status_mut() = response.status();
    *copy.version_mut() = response.version();
    *copy.headers_mut() = headers;
    *copy.extensions_mut() = response.extensions().clone();
    copy
}

impl StaleIfErrorLayer<(), (), ()> {
    /// Starts a builder for any response type: responses stored under the key `key` takes from
    /// each request, and marked by `mark` (given the response's age) when served stale.
    ///
    /// It knows nothing of the response type: it stores every response the classifier calls a
    /// success (every `Ok` by default) and the [`may_store`](StaleIfErrorBuilder::may_store)
    /// predicate accepts, and weighs each by its inline size only unless given a
    /// [`weigh`](StaleIfErrorBuilder::weigh)er. For `http::Response`s use
    /// [`http`](Self::http), which stores only whole, shareable answers to `GET`s and marks them
    /// stale (`Age`,
    /// [`StaleResponse`]); a `mark` of your own given here applies none of its rules.
    pub fn builder<F, Res>(key: F, mark: fn(&mut Res, Duration)) -> StaleIfErrorBuilder<F, Res> {
        StaleIfErrorBuilder {
            key,
            mark,
            may_store: any::<Res>,
            weigh: inline_only::<Res>,
            keep: None,
            policy: StoreSuccesses,
            max_entries: 10_000,
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: Duration::from_secs(300),
            options: Options::new("stale_if_error"),
        }
    }

    /// Starts a builder for HTTP: responses stored under the key `key` takes from each request,
    /// classified by [`HttpClassifier::default`](crate::http::HttpClassifier::default) (so an
    /// upstream 5xx is answered with the stored response too), stored only as
    /// [`HttpStore`](super::HttpStore) allows (a `200`, `203` or `204` to a `GET` without
    /// credentials, without `Set-Cookie`, `Vary`, nor `Cache-Control` `private`, `no-store`,
    /// `no-cache`, `must-revalidate` or `proxy-revalidate`; served only to a `GET`, and no longer
    /// than its `stale-if-error` allows), stored as a copy holding only its own bytes (see
    /// [`BodySize::compacted`](super::BodySize::compacted): a body read from a connection would
    /// otherwise keep the connection's whole read buffer), weighed by the body's length, the
    /// headers and the header map's tables, and marked stale when served:
    ///
    /// - `Age` is set as a cache sets it (RFC 9111 §4.2.3): the `Age` the upstream sent with the
    ///   response, if any, plus the time the response was kept, in whole seconds (at most 2^31, as
    ///   the RFC caps it); an `Age` that is not a number counts as none;
    /// - a [`StaleResponse`](super::StaleResponse) extension says, in the process, how long it was
    ///   kept;
    /// - no `Warning: 110` header is added: RFC 9111 obsoletes `Warning` (§5.5).
    ///
    /// To mark stale answers another way (a header of your own), use
    /// [`builder`](Self::builder) with a function of your own and the same store policy
    /// (`.store_policy(HttpStore::default())`).
    ///
    /// ```
    /// use http::{Request, Response};
    /// use seawall::fallback::StaleIfErrorLayer;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // A public catalog: its pages are the same for everyone, so the method, host, path and
    /// // query are the key (never the path alone: a token in the query would be dropped), and
    /// // requests other than GETs have none.
    /// let layer = StaleIfErrorLayer::http(|request: &Request<()>| {
    ///     let uri = request.uri();
    ///     (request.method() == http::Method::GET).then(|| {
    ///         let authority = uri.authority().map_or("", |a| a.as_str());
    ///         let path = uri.path_and_query().map_or("/", |p| p.as_str());
    ///         format!("GET {authority}{path}")
    ///     })
    /// })
    /// .build()
    /// .unwrap();
    /// let service = layer.layer(service_fn(|request: Request<()>| async move {
    ///     match request.headers().contains_key("x-down") {
    ///         false => Ok(Response::new("the catalog".to_string())),
    ///         true => Err("down"),
    ///     }
    /// }));
    /// let get = |uri: &str, down: bool| {
    ///     let request = Request::get(uri);
    ///     let request = if down { request.header("x-down", "1") } else { request };
    ///     request.body(()).unwrap()
    /// };
    /// service.clone().oneshot(get("/catalog?page=1", false)).await.unwrap();
    /// let stale = service.clone().oneshot(get("/catalog?page=1", true)).await.unwrap();
    /// assert_eq!(stale.body(), "the catalog");
    /// assert_eq!(stale.headers()["age"], "0");
    /// // Another query is another key: nothing stored for it.
    /// assert!(service.oneshot(get("/catalog?page=2", true)).await.is_err());
    /// # }
    /// ```
    #[cfg(feature = "http")]
    pub fn http<F, B: super::BodySize + Clone>(
        key: F,
    ) -> StaleIfErrorBuilder<F, http::Response<B>, crate::http::HttpClassifier, (), super::HttpStore>
    {
        StaleIfErrorBuilder {
            key,
            mark: mark_http::<B>,
            may_store: any,
            weigh: http_weight::<B>,
            keep: Some(keep_http::<B>),
            policy: super::HttpStore::default(),
            max_entries: 10_000,
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: Duration::from_secs(300),
            options: Options::new("stale_if_error")
                .classify(crate::http::HttpClassifier::default()),
        }
    }
}

impl<F, Res, C, O, P> StaleIfErrorBuilder<F, Res, C, O, P> {
    /// Keeps at most `max` responses (default 10,000; at least 1, or [`build`](Self::build) fails
    /// with [`ConfigError::MaxEntries`]).
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Keeps responses weighing at most `max` bytes in all (default 64 MiB; at least 1, or
    /// [`build`](Self::build) fails with [`ConfigError::MaxBytes`]), evicting the oldest stored
    /// first.
    ///
    /// The store is cut into up to 16 shards, each with an equal share of the budget (and of
    /// `max_entries`), and no fewer than 64 KiB each unless the budget is smaller; a response
    /// heavier than one share is not stored.
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// Serves responses at most `age` old (default five minutes; more than zero, or
    /// [`build`](Self::build) fails with [`ConfigError::MaxAge`]).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Serves stale responses only on the failures `select` chooses (default: every failure).
    pub fn when(mut self, select: Select) -> Self {
        self.options.select = select;
        self
    }

    /// Stores only responses `may_store` accepts, besides what the classifier and the store
    /// policy require (default: every one they let through). For a response type with a notion
    /// of "good" the classifier does not see (a partial answer, say).
    pub fn may_store(mut self, may_store: fn(&Res) -> bool) -> Self {
        self.may_store = may_store;
        self
    }

    /// Weighs each response with `weigh`, in bytes, for [`max_bytes`](Self::max_bytes): count
    /// what it holds on the heap (a body's length, say). Each entry's weight is this, plus the
    /// key's (its inline size and the bytes it hashes: a `String` key's text), plus the entry's
    /// bookkeeping (the response's inline size, the slot and the map's place). Default: nothing
    /// for [`builder`](StaleIfErrorLayer::builder) (inline sizes only); for
    /// [`http`](StaleIfErrorLayer::http), the body's length, the headers' names and values, and
    /// the header map's tables, of the copy it stores.
    pub fn weigh(mut self, weigh: fn(&Res) -> usize) -> Self {
        self.weigh = weigh;
        self
    }

    /// Decides with `policy` which good responses may be stored (default: [`StoreSuccesses`] for
    /// [`builder`](StaleIfErrorLayer::builder), [`HttpStore`](super::HttpStore) for
    /// [`http`](StaleIfErrorLayer::http)).
    pub fn store_policy<P2>(self, policy: P2) -> StaleIfErrorBuilder<F, Res, C, O, P2> {
        StaleIfErrorBuilder {
            key: self.key,
            mark: self.mark,
            may_store: self.may_store,
            weigh: self.weigh,
            keep: self.keep,
            policy,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            options: self.options,
        }
    }

    /// Decides with `classify` which responses are good (stored, if the store policy allows) and
    /// which are failures.
    pub fn classify<C2>(self, classify: C2) -> StaleIfErrorBuilder<F, Res, C2, O, P> {
        StaleIfErrorBuilder {
            key: self.key,
            mark: self.mark,
            may_store: self.may_store,
            weigh: self.weigh,
            keep: self.keep,
            policy: self.policy,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            options: self.options.classify(classify),
        }
    }

    /// The layer's name, in events (default `"stale_if_error"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.options.name = name.into();
        self
    }

    /// Sends a `FallbackUsed` event for each stale answer to `observer` (default: none).
    pub fn observer<O2: Observer>(self, observer: O2) -> StaleIfErrorBuilder<F, Res, C, O2, P> {
        StaleIfErrorBuilder {
            key: self.key,
            mark: self.mark,
            may_store: self.may_store,
            weigh: self.weigh,
            keep: self.keep,
            policy: self.policy,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            options: self.options.observer(observer),
        }
    }

    /// Checks the settings and builds the layer and its store, shared by every service it makes.
    pub fn build<K>(self) -> Result<StaleIfErrorLayer<F, K, Res, C, O, P>, ConfigError>
    where
        K: Hash + Eq,
        Res: Clone,
    {
        if self.max_entries == 0 {
            return Err(ConfigError::MaxEntries);
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::MaxBytes);
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::MaxAge);
        }
        let options = self.options;
        let store = Store::new(
            self.max_entries,
            self.max_bytes,
            self.max_age,
            self.policy,
            self.may_store,
            self.weigh,
            self.mark,
            self.keep,
        );
        Ok(StaleIfErrorLayer {
            store: Arc::new(store),
            key: self.key,
            select: options.select,
            classify: options.classify,
            source: Arc::new(Source::new(options.name, options.observer)),
        })
    }
}

#[cfg(feature = "http")]
impl<F, Res, C, O> StaleIfErrorBuilder<F, Res, C, O, super::HttpStore> {
    /// Says that the key includes what makes an answer private to whoever asked (the
    /// `Authorization` or `Cookie` it was asked with, or the user they name), so that answers to
    /// requests with credentials may be stored: each is then served only to requests with the
    /// same key. Without it they are never stored. `Set-Cookie`, `Cache-Control: private` and
    /// `no-store` still keep an answer out.
    pub fn key_includes_credentials(mut self) -> Self {
        self.policy = self.policy.credentials_in_key();
        self
    }

    /// Says that the key includes the value of each header in `names`, so that answers which
    /// `Vary` on them may be stored. Name a header here only if the key includes its value, or if
    /// every request sends the same value (an `Accept-Encoding` set by the client, say). An
    /// answer with `Vary: *`, or naming any header not listed, is never stored.
    pub fn key_covers_headers(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.policy = self.policy.covers(names);
        self
    }
}

impl<F, Res, C, O, P> fmt::Debug for StaleIfErrorBuilder<F, Res, C, O, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleIfErrorBuilder")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("options", &self.options)
            .finish()
    }
}

impl<F, K: Hash + Eq, Res: Clone, C, O, P> StaleIfErrorLayer<F, K, Res, C, O, P> {
    /// How many responses are stored (some may have expired and not been removed yet). Locks
    /// each shard in turn: for tests and diagnostics, not for every call.
    pub fn stored(&self) -> usize {
        self.store.totals().0
    }

    /// How many bytes the stored responses weigh, as [`weigh`](StaleIfErrorBuilder::weigh)
    /// counts them: at most the budget. Locks each shard in turn, as [`stored`](Self::stored).
    pub fn stored_bytes(&self) -> usize {
        self.store.totals().1
    }
}

impl<F: Clone, K, Res, C: Clone, O, P> Clone for StaleIfErrorLayer<F, K, Res, C, O, P> {
    fn clone(&self) -> Self {
        StaleIfErrorLayer {
            store: self.store.clone(),
            key: self.key.clone(),
            select: self.select,
            classify: self.classify.clone(),
            source: self.source.clone(),
        }
    }
}

impl<F, K, Res, C, O, P> fmt::Debug for StaleIfErrorLayer<F, K, Res, C, O, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleIfErrorLayer")
            .field("name", &self.source.name())
            .field("max_age", &self.store.max_age)
            .field("select", &self.select)
            .finish()
    }
}

impl<S, F: Clone, K, Res, C: Clone, O, P> Layer<S> for StaleIfErrorLayer<F, K, Res, C, O, P> {
    type Service = StaleIfError<S, F, K, Res, C, O, P>;

    fn layer(&self, inner: S) -> Self::Service {
        StaleIfError {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`StaleIfErrorLayer`].
pub struct StaleIfError<S, F, K, Res, C = ErrorIsFailure, O = (), P = StoreSuccesses> {
    inner: S,
    layer: StaleIfErrorLayer<F, K, Res, C, O, P>,
}

impl<S: Clone, F: Clone, K, Res, C: Clone, O, P> Clone for StaleIfError<S, F, K, Res, C, O, P> {
    fn clone(&self) -> Self {
        StaleIfError {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, F, K, Res, C, O, P> fmt::Debug for StaleIfError<S, F, K, Res, C, O, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleIfError")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, F, K, C, O, P, Req> Service<Req> for StaleIfError<S, F, K, S::Response, C, O, P>
where
    S: Service<Req>,
    S::Response: Clone,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
    P: StorePolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = StaleFuture<S::Future, Req, K, S::Response, C, O, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let layer = &self.layer;
        let keyed = (layer.key)(&req).map(|key| (key, layer.store.policy.memo(&req)));
        let start = (O::ENABLED && layer.source.observer().wants_latency()).then(Instant::now);
        StaleFuture {
            future: self.inner.call(req),
            keyed,
            store: layer.store.clone(),
            select: layer.select,
            classify: layer.classify.clone(),
            source: O::ENABLED.then(|| layer.source.clone()),
            start,
            request: PhantomData,
        }
    }
}

pin_project! {
    /// The response future of [`StaleIfError`].
    pub struct StaleFuture<Fut, Req, K, Res, C, O, P>
    where
        P: StorePolicy<Req, Res>,
    {
        #[pin]
        future: Fut,
        // The request's key, and what the store policy kept of the request.
        keyed: Option<(K, P::Memo)>,
        store: Arc<Store<K, Res, P>>,
        select: Select,
        classify: C,
        // Kept only for a listening observer.
        source: Option<Arc<Source<O>>>,
        start: Option<Instant>,
        request: PhantomData<fn(Req)>,
    }
}

impl<Fut, Req, K, Res, C, O, P> fmt::Debug for StaleFuture<Fut, Req, K, Res, C, O, P>
where
    P: StorePolicy<Req, Res>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleFuture")
            .field("keyed", &self.keyed.is_some())
            .finish()
    }
}

impl<Fut, Req, K, Res, E, C, O, P> Future for StaleFuture<Fut, Req, K, Res, C, O, P>
where
    Fut: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    K: Hash + Eq,
    Res: Clone,
    C: Classify<Res, E>,
    O: Observer,
    P: StorePolicy<Req, Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let Some((key, memo)) = this.keyed.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        let verdict = result.is_ok().then(|| this.classify.classify(&result));
        let result = result.map_err(Into::into);
        if verdict == Some(Outcome::Success) {
            if let Ok(response) = &result {
                this.store.offer(key, &memo, response);
            }
            return Poll::Ready(result);
        }
        let failed = this.select.failed_responses && verdict == Some(Outcome::Failure);
        let Some(trigger) = select(*this.select, failed, &result).map(|t| t.kind()) else {
            return Poll::Ready(result);
        };
        if !this.store.policy.may_serve(&memo) {
            return Poll::Ready(result);
        }
        let now = Instant::now();
        let Some((mut response, age)) = this.store.get(&key, now) else {
            return Poll::Ready(result);
        };
        (this.store.mark)(&mut response, age);
        if let Some(source) = this.source {
            let latency = this.start.map(|start| now.saturating_duration_since(start));
            source
                .emitter()
                .emit(EventKind::FallbackUsed { trigger, latency });
        }
        Poll::Ready(Ok(response))
    }
}

/// A stale response's extension, put there by [`StaleIfErrorLayer::http`]'s marking: how long it
/// was kept when it was served.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleResponse {
    /// Its age.
    pub age: Duration,
}

/// Marks a stale HTTP response for [`StaleIfErrorLayer::http`] (which documents it): its `Age`
/// header and a [`StaleResponse`] extension. Not public: given to
/// [`StaleIfErrorLayer::builder`], it would mark without the HTTP store rules.
#[cfg(feature = "http")]
pub(crate) fn mark_http<B>(response: &mut http::Response<B>, age: Duration) {
    age_http(response, age);
    response.extensions_mut().insert(StaleResponse { age });
}

/// Sets a stored HTTP response's `Age` as a cache must when it serves it (RFC 9111 §4, §4.2.3):
/// the `Age` the upstream sent, if any, plus `kept`, the time it was stored, in whole seconds,
/// at most 2^31 (§1.2.2). An upstream `Age` that is not a number counts as none.
#[cfg(feature = "http")]
pub(crate) fn age_http<B>(response: &mut http::Response<B>, kept: Duration) {
    use super::cache_control::{delta_seconds, MAX_DELTA_SECONDS};
    let headers = response.headers_mut();
    let upstream = headers.get(http::header::AGE).and_then(delta_seconds);
    let total = upstream
        .unwrap_or(0)
        .saturating_add(kept.as_secs())
        .min(MAX_DELTA_SECONDS);
    headers.insert(http::header::AGE, http::HeaderValue::from(total));
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Put(u8, usize),
        Get(u8),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..12u8, 1..40usize).prop_map(|(key, weight)| Op::Put(key, weight)),
            (0..12u8).prop_map(Op::Get),
            (0..30u64).prop_map(Op::Wait),
        ]
    }

    /// The shard's entries, oldest first: key, response, weight, and when stored.
    fn contents(shard: &Shard<u8, u32>) -> Vec<(u8, u32, usize, Instant)> {
        let mut seen = Vec::new();
        let mut slot = shard.oldest;
        while slot != NIL {
            let entry = shard.entry(slot);
            assert_eq!(shard.index.get(&*entry.key), Some(&slot));
            seen.push((*entry.key, entry.response, entry.weight, entry.at));
            slot = shard.slots[slot].next;
        }
        seen
    }

    proptest! {
        /// The slab list does what a plain list of entries in the order stored does: storing again
        /// moves to the newest end, eviction and compaction take from the oldest, an expired
        /// entry is never returned.
        #[test]
        fn a_shard_matches_a_list_in_the_order_stored(ops in proptest::collection::vec(op(), 1..200)) {
            const MAX_ENTRIES: usize = 6;
            const MAX_BYTES: usize = 100;
            let max_age = Duration::from_secs(40);
            let mut shard = Shard::<u8, u32>::new(MAX_ENTRIES, MAX_BYTES);
            let mut model: Vec<(u8, u32, usize, Instant)> = Vec::new();
            let compact = |model: &mut Vec<(u8, u32, usize, Instant)>, now: Instant| {
                for _ in 0..COMPACT {
                    match model.first() {
                        Some(&(_, _, _, at)) if now.saturating_duration_since(at) > max_age => {
                            model.remove(0);
                        }
                        _ => break,
                    }
                }
            };
            let mut now = Instant::now();
            for (n, op) in ops.into_iter().enumerate() {
                let value = n as u32;
                match op {
                    Op::Put(key, weight) => {
                        shard.compact(now, max_age);
                        shard.put(key, value, weight, max_age, now);
                        compact(&mut model, now);
                        model.retain(|entry| entry.0 != key);
                        model.push((key, value, weight, now));
                        while model.len() > MAX_ENTRIES
                            || model.iter().map(|e| e.2).sum::<usize>() > MAX_BYTES
                        {
                            model.remove(0);
                        }
                    }
                    Op::Get(key) => {
                        shard.compact(now, max_age);
                        compact(&mut model, now);
                        let got = shard.index.get(&key).copied().and_then(|slot| {
                            let entry = shard.entry(slot);
                            if now.saturating_duration_since(entry.at) > max_age {
                                shard.remove(slot);
                                None
                            } else {
                                Some(entry.response)
                            }
                        });
                        let position = model.iter().position(|e| e.0 == key);
                        let expected = position.and_then(|i| {
                            if now.saturating_duration_since(model[i].3) > max_age {
                                model.remove(i);
                                None
                            } else {
                                Some(model[i].1)
                            }
                        });
                        prop_assert_eq!(got, expected);
                    }
                    Op::Wait(secs) => now += Duration::from_secs(secs),
                }
                prop_assert_eq!(contents(&shard), model.clone());
                prop_assert_eq!(shard.bytes, model.iter().map(|e| e.2).sum::<usize>());
                prop_assert_eq!(shard.index.len(), model.len());
                prop_assert!(shard.slots.len() <= MAX_ENTRIES + 1);
            }
        }
    }

    #[test]
    fn a_key_weighs_its_size_and_the_bytes_it_hashes() {
        let key = "abcdef".to_string();
        // A `str` hashes its bytes and one byte more.
        assert_eq!(key_weight(&key), size_of::<String>() + 7);
        assert_eq!(key_weight(&7u64), 16);
    }

    #[test]
    fn small_stores_have_fewer_shards_and_the_bounds_add_up() {
        let store = |entries, bytes| {
            Store::<u8, u32, StoreSuccesses>::new(
                entries,
                bytes,
                Duration::from_secs(1),
                StoreSuccesses,
                |_| true,
                |_| 0,
                |_, _| {},
                None,
            )
        };
        let sum = |store: &Store<u8, u32, StoreSuccesses>| {
            store.shards.iter().fold((0, 0), |(entries, bytes), shard| {
                let shard = shard.lock().unwrap();
                (entries + shard.max_entries, bytes + shard.max_bytes)
            })
        };
        let small = store(100, 1 << 30);
        assert_eq!(small.shards.len(), 1);
        assert_eq!(sum(&small), (100, 1 << 30));
        let tight = store(10_000, 200 * 1024);
        assert_eq!(tight.shards.len(), 3);
        assert_eq!(sum(&tight), (10_000, 200 * 1024));
        assert_eq!(tight.max_weight, 200 * 1024 / 3);
        let large = store(10_000, DEFAULT_MAX_BYTES);
        assert_eq!(large.shards.len(), SHARDS);
    }

    /// `mark_http` on a stored response: its `Age` is the upstream's plus the time it was kept
    /// (RFC 9111 §4.2.3), and no obsolete `Warning` header is added (RFC 9111 §5.5).
    #[cfg(feature = "http")]
    mod mark {
        use super::super::{mark_http, StaleResponse};
        use http::Response;
        use std::time::Duration;

        fn marked(upstream_age: Option<&str>) -> Response<()> {
            let mut response = Response::new(());
            if let Some(age) = upstream_age {
                response.headers_mut().insert("age", age.parse().unwrap());
            }
            mark_http(&mut response, Duration::from_secs(30));
            response
        }

        #[test]
        fn the_age_is_the_upstream_age_plus_the_time_kept_and_no_warning_is_added() {
            let response = marked(Some("100"));
            assert_eq!(response.headers()["age"], "130");
            assert_eq!(response.headers().get_all("age").iter().count(), 1);
            assert!(response.headers().get("warning").is_none());
            assert_eq!(
                response.extensions().get::<StaleResponse>(),
                Some(&StaleResponse {
                    age: Duration::from_secs(30)
                })
            );
            // No upstream Age, or one that is not a number: the time kept.
            assert_eq!(marked(None).headers()["age"], "30");
            assert_eq!(marked(Some("soon")).headers()["age"], "30");
            // Too great to count: 2^31, as RFC 9111 says.
            assert_eq!(
                marked(Some("99999999999999999999999")).headers()["age"],
                "2147483648"
            );
        }
    }
}
