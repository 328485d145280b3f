//! [`CacheLayer`], its builder and its service.

use super::clock::Coarse;
use super::error::{ConfigError, Shared};
use super::flight::{Flights, Joined};
use super::future::CacheFuture;
use super::store::{Budget, Entry, MemoryStore, Store};
use crate::core::{Classify, ErrorIsFailure, EventKind, Observer, Outcome, Source};
use crate::fallback::{Select, StorePolicy, StoreSuccesses};
use crate::sync::Padded;
use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thread_local::ThreadLocal;
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
    /// `beta * MAX_DRAW` rounded up: how many `delta`s before expiry early refresh may fire.
    pub(crate) reach: u32,
    /// A seeded generator for early refresh, or `None` for the thread's generator.
    pub(crate) seed: Option<AtomicU64>,
    pub(crate) revalidate: Duration,
    pub(crate) select: Select,
    pub(crate) classify: C,
    pub(crate) policy: P,
    pub(crate) mark: fn(&mut V, Duration),
    /// Sets the age of a fresh answer served from the store (with `http`: its `Age` header).
    pub(crate) age: Option<fn(&mut V, Duration)>,
    /// Makes the copy that is stored (`None`: a clone).
    pub(crate) keep: Option<fn(&V) -> V>,
    pub(crate) source: Source<O>,
    pub(crate) counters: Counters,
    /// Whether a fresh hit may read the process's coarse clock instead of the system's (see
    /// `clock`).
    pub(crate) clock: Coarse,
    /// The store's eviction count as last reported to the observer.
    pub(crate) evictions_reported: AtomicU64,
}

/// One thread's counts, alone on its cache lines.
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) coalesced: AtomicU64,
}

/// What the cache counts, one stripe per thread, so that a hit writes only its own thread's
/// stripe (no cache line another thread writes, and no locked instruction: a stripe has one
/// writer), and read by summing the stripes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    threads: ThreadLocal<Padded<Stripe>>,
}

impl Counters {
    /// The calling thread's stripe (made on its first count).
    #[inline]
    pub(crate) fn local(&self) -> &Stripe {
        self.threads.get_or_default()
    }

    fn sum(&self, counter: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.threads
            .iter()
            .map(|stripe| counter(stripe).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Counts one on the calling thread's stripe: its only writer, so a load and a store count
/// exactly, and readers on other threads see each count whole.
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// `at + duration`, or a century on if that cannot be counted.
fn after(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// What a call does with the entry it found in the store: decided on a reference to the entry,
/// so that the hit path moves only the value out of it (moving whole entries about cost more
/// than the lookup itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answer with the entry's value (fresh, or `stale`), and refresh it in the background if
    /// `refresh`.
    Hit { stale: bool, refresh: bool },
    /// Call the inner service; serve this entry if the call fails when `stale`.
    Miss { stale: bool },
    /// Call the inner service; the entry is of no more use and is removed.
    Gone,
}

impl<K, V, St, C, P, O> Core<K, V, St, C, P, O>
where
    K: Hash + Eq + Clone,
    V: Clone,
    St: Store<K, V>,
    O: Observer,
{
    /// Judges the entry found for a call at `now`: the hit path.
    #[inline]
    pub(crate) fn judge(&self, entry: &Entry<V>, now: Instant) -> Verdict {
        if now < entry.fresh_until {
            let refresh = self.beta > 0.0 && now >= entry.revalidate_at && self.early(entry, now);
            return Verdict::Hit {
                stale: false,
                refresh,
            };
        }
        if entry.negative {
            return Verdict::Miss { stale: false };
        }
        if now < entry.stale_until {
            return Verdict::Hit {
                stale: true,
                refresh: now >= entry.revalidate_at,
            };
        }
        if now < entry.error_until {
            if now < entry.revalidate_at {
                // A revalidation failed a moment ago: serve stale without asking again.
                return Verdict::Hit {
                    stale: true,
                    refresh: false,
                };
            }
            return Verdict::Miss { stale: true };
        }
        if now >= entry.useful_until() {
            return Verdict::Gone;
        }
        Verdict::Miss { stale: false }
    }

    /// Whether `entry` is fresh, and too far from its expiry for early refresh to fire, at every
    /// instant up to `latest` (on the coarse clock): the hit path that reads no clock.
    #[inline]
    pub(crate) fn certainly_fresh(&self, entry: &Entry<V>, latest: u64) -> bool {
        // Early refresh cannot fire more than `delta * reach` before expiry (see `early`): this
        // layer's reach, whichever layer stored the entry.
        let delta_ns = u64::try_from(entry.delta.as_nanos()).unwrap_or(u64::MAX);
        let reach = delta_ns.saturating_mul(u64::from(self.reach.max(1)));
        if entry.fresh_ns != 0 {
            return latest.saturating_add(reach) < entry.fresh_ns;
        }
        // An entry stored before the layer used the coarse clock, or by a store of its own.
        Coarse::instant(latest).is_some_and(|latest| {
            entry.fresh_until.saturating_duration_since(latest) > Duration::from_nanos(reach)
        })
    }

    /// A fresh entry's value, with its age set where the cache sets one (with `http`: `Age`).
    #[inline]
    pub(crate) fn fresh(&self, entry: Entry<V>, now: Instant) -> Result<V, Shared> {
        self.fresh_with(entry, || now)
    }

    /// [`fresh`](Self::fresh), the time worked out only where the cache sets an age.
    #[inline]
    pub(crate) fn fresh_with(
        &self,
        entry: Entry<V>,
        now: impl FnOnce() -> Instant,
    ) -> Result<V, Shared> {
        self.aged(entry.value, entry.stored, now)
    }

    /// A clone of a fresh entry's value, with its age set where the cache sets one: the hit
    /// path that reads the entry in place.
    #[inline]
    pub(crate) fn fresh_clone(
        &self,
        entry: &Entry<V>,
        now: impl FnOnce() -> Instant,
    ) -> Result<V, Shared> {
        self.aged(entry.value.clone(), entry.stored, now)
    }

    /// `value`, stored at `stored`, with its age set where the cache sets one.
    #[inline]
    fn aged(
        &self,
        value: Result<V, Shared>,
        stored: Instant,
        now: impl FnOnce() -> Instant,
    ) -> Result<V, Shared> {
        match self.age {
            None => value,
            Some(age) => {
                let kept = now().saturating_duration_since(stored);
                value.map(|mut value| {
                    age(&mut value, kept);
                    value
                })
            }
        }
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
        // In whole multiples of `delta`, rounded up (so never skipping a draw that could fire):
        // `Duration::mul_f64` costs more than the rest of a hit.
        let reach = entry.delta.saturating_mul(self.reach);
        if entry.fresh_until.saturating_duration_since(now) > reach {
            return false;
        }
        let u = self.uniform();
        // A delta too large to scale (a record's, say) refreshes.
        match Duration::try_from_secs_f64(entry.delta.as_secs_f64() * self.beta * -u.ln()) {
            Ok(gap) => now
                .checked_add(gap)
                .is_none_or(|at| at >= entry.fresh_until),
            Err(_) => true,
        }
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
            self.store.settled(key);
            return (result, false);
        }
        let failed = self.select.answers_failed_responses() && result.is_ok();
        let trigger = crate::fallback::select(self.select, failed, &result).map(|t| t.kind());
        if let (Some(trigger), Some(mut entry)) = (trigger, stale) {
            if now < entry.error_until && self.policy.may_serve(memo) {
                entry.revalidate_at = after(now, self.revalidate);
                bump(&self.counters.local().stale);
                let answer = self.marked(entry.clone(), now);
                self.store.insert(key.clone(), entry);
                self.store.settled(key);
                if O::ENABLED {
                    let latency = self.source.observer().wants_latency().then_some(delta);
                    self.source
                        .emitter()
                        .emit(EventKind::FallbackUsed { trigger, latency });
                }
                return (answer.map_err(Into::into), true);
            }
        }
        let Some(ttl) = self.negative_ttl else {
            self.store.settled(key);
            return (result, false);
        };
        let value = match result {
            Ok(value) => Ok(value),
            Err(error) => Err(Shared::new(error)),
        };
        let until = after(now, ttl);
        let entry = Entry {
            value: value.clone(),
            stored: now,
            fresh_until: until,
            stale_until: until,
            error_until: until,
            delta,
            negative: true,
            revalidate_at: now,
            fresh_ns: self.clock.nanos(until),
        };
        self.store.insert(key.clone(), entry);
        self.store.settled(key);
        self.report_evictions();
        (value.map_err(Into::into), false)
    }

    /// Stores the good answer of a call the store was not asked to serve (a request the store
    /// policy does not serve stored answers to), if the policy lets it be stored.
    pub(crate) fn offer_result<Req, E>(
        &self,
        key: &K,
        memo: &P::Memo,
        result: &Result<V, E>,
        delta: Duration,
    ) where
        C: Classify<V, E>,
        P: StorePolicy<Req, V>,
    {
        if let (Ok(value), false) = (result, self.classify.classify(result) == Outcome::Failure) {
            self.offer(key, memo, value, Instant::now(), delta);
        }
        self.store.settled(key);
    }

    /// Tells the observer of the entries the store evicted since last told: read on the paths
    /// that insert, and only for an observer that listens.
    fn report_evictions(&self) {
        if !O::ENABLED {
            return;
        }
        let total = self.store.evictions();
        let reported = self.evictions_reported.fetch_max(total, Ordering::Relaxed);
        if total > reported {
            self.source.emitter().emit(EventKind::CacheEvicted {
                entries: total - reported,
            });
        }
    }

    /// Stores a good answer if the store policy and its directives allow. A good answer the
    /// policy refuses for what it says of itself ([`StorePolicy::evicts`]: `no-store`, say),
    /// or that could be served for no time at all ([`StorePolicy::serve_for`] zero, or no
    /// freshness and no stale window), removes the stored one: it is what the origin says now.
    fn offer<Req>(&self, key: &K, memo: &P::Memo, value: &V, now: Instant, delta: Duration)
    where
        P: StorePolicy<Req, V>,
    {
        if !self.policy.may_store(memo, value) {
            if self.policy.evicts(memo, value) {
                self.store.remove(key);
            }
            return;
        }
        let limit = self.policy.serve_for(value);
        let freshness = match limit {
            Some(limit) if limit.is_zero() => None,
            _ => (self.directives)(value, self.freshness),
        };
        let Some(freshness) = freshness else {
            self.store.remove(key);
            return;
        };
        let fresh_until = after(now, freshness.ttl);
        let stale_until = after(fresh_until, freshness.stale_while_revalidate);
        let error_until = match limit {
            // The policy's bound on how long after it is stored it may be served.
            Some(limit) => after(now, limit),
            None => after(fresh_until, freshness.stale_if_error),
        };
        if stale_until.max(error_until) <= now {
            self.store.remove(key);
            return;
        }
        let value = match self.keep {
            Some(keep) => keep(value),
            None => value.clone(),
        };
        let entry = Entry {
            value: Ok(value),
            stored: now,
            fresh_until,
            stale_until,
            error_until,
            delta,
            negative: false,
            revalidate_at: now,
            fresh_ns: self.clock.nanos(fresh_until),
        };
        self.store.insert(key.clone(), entry);
        self.report_evictions();
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
    age: Option<fn(&mut V, Duration)>,
    keep: Option<fn(&V) -> V>,
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
            age: None,
            keep: None,
            max_entries: 10_000,
            max_weight: None,
            store: Memory,
        }
    }

    /// Starts a builder for a cache of HTTP responses, which follows what each response says of
    /// itself (RFC 9111, RFC 5861) and stores only what fallback's
    /// [`HttpStore`](crate::fallback::HttpStore) lets it:
    ///
    /// - **what is stored**: as [`HttpStore`](crate::fallback::HttpStore) decides (the same
    ///   rules as [`StaleIfErrorLayer::http`](crate::fallback::StaleIfErrorLayer::http)): a
    ///   `200`, `203` or `204` to a `GET` without credentials, without `Set-Cookie`, a `Vary` the
    ///   key does not cover, nor `Cache-Control` `no-store`, `private`, `no-cache`,
    ///   `must-revalidate` or `proxy-revalidate`; such a refused good answer removes the one
    ///   stored under its key (it is what the origin says now). Stored answers are served only to
    ///   `GET`s: any other request with a key passes by the store (its answer is not stored).
    ///   Stored as a copy holding only its own bytes (see
    ///   [`BodySize::compacted`](crate::fallback::BodySize::compacted)).
    /// - **freshness**: `s-maxage` (this is a shared cache: it serves whoever asks with the key),
    ///   else `max-age`, less the `Age` the response came with; a response that gives neither is
    ///   fresh for [`ttl`](CacheBuilder::ttl), less its `Age`. A `max-age` that is not a number
    ///   makes the response stale at once.
    /// - **stale windows**: `stale-while-revalidate=N` and `stale-if-error=N` from the response;
    ///   a response without them gets the builder's
    ///   [`stale_while_revalidate`](CacheBuilder::stale_while_revalidate) and
    ///   [`stale_if_error`](CacheBuilder::stale_if_error), unless it has `s-maxage`, which
    ///   brings `proxy-revalidate`'s rule (RFC 9111 §5.2.2.10): then only its own directives
    ///   grant stale serving. How long a response may answer in place of a failure is
    ///   [`HttpStore`](crate::fallback::HttpStore)'s `serve_for`: its freshness plus its
    ///   `stale-if-error`, counted from when it was stored. A response that could be served for
    ///   no time at all (`max-age=0` and no stale window) is not stored.
    /// - **failures**: classified by
    ///   [`HttpClassifier::default`](crate::http::HttpClassifier::default): an upstream `5xx`
    ///   is answered stale within `stale-if-error`, as an error is.
    /// - **marking**: an answer served from the store carries the `Age` a cache must send
    ///   (RFC 9111 §4, §4.2.3: the upstream's `Age` plus the time stored, at most 2^31 s); a
    ///   stale one carries a [`StaleResponse`](crate::fallback::StaleResponse) extension too.
    ///   No `Warning: 110` header is added: RFC 9111 obsoletes `Warning` (§5.5), clients ignore
    ///   it, and the `Age` and the extension say the same ([`StaleIfErrorLayer::http`] does the
    ///   same).
    /// - **requests' `Cache-Control`** is ignored unless
    ///   [`honour_request_cache_control`](CacheBuilder::honour_request_cache_control) says
    ///   otherwise: a client sending `no-cache` would otherwise make every call a miss, which
    ///   is what the cache is there to prevent.
    ///
    /// [`StaleIfErrorLayer::http`]: crate::fallback::StaleIfErrorLayer::http
    ///
    /// ```
    /// use http::{Request, Response};
    /// use seawall::cache::CacheLayer;
    /// use std::time::Duration;
    /// use tower::{service_fn, BoxError, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), BoxError> {
    /// // A public catalog: the method, host, path and query are the key (never the path alone).
    /// let cache = CacheLayer::http(|request: &Request<()>| {
    ///     let uri = request.uri();
    ///     let authority = uri.authority().map_or("", |a| a.as_str());
    ///     let path = uri.path_and_query().map_or("/", |p| p.as_str());
    ///     Some(format!("{} {authority}{path}", request.method()))
    /// })
    /// .ttl(Duration::from_secs(10)) // for responses that say nothing of their freshness
    /// .stale_if_error(Duration::from_secs(300))
    /// .build()?;
    /// let service = cache.layer(service_fn(|_: Request<()>| async {
    ///     let response = Response::builder()
    ///         .header("cache-control", "max-age=60, stale-while-revalidate=30")
    ///         .body("the catalog".to_string())?;
    ///     Ok::<_, BoxError>(response)
    /// }));
    /// let get = || Request::get("/catalog?page=1").body(()).unwrap();
    /// service.clone().oneshot(get()).await?;
    /// tokio::time::advance(Duration::from_secs(5)).await;
    /// let hit = service.oneshot(get()).await?;
    /// assert_eq!(hit.headers()["age"], "5");
    /// assert_eq!(cache.handle().stats().hits, 1);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "http")]
    pub fn http<F, B>(key: F) -> HttpCacheBuilder<F, B>
    where
        B: crate::fallback::BodySize + Clone,
    {
        let mut builder = Self::builder(key)
            .classify(crate::http::HttpClassifier::default())
            .store_policy(crate::fallback::HttpStore::default());
        builder.directives = http_freshness::<B>;
        builder.mark = crate::fallback::mark_http::<B>;
        builder.age = Some(crate::fallback::age_http::<B>);
        builder.keep = Some(crate::fallback::keep_http::<B>);
        builder
    }
}

/// What [`CacheLayer::http`] returns: a builder of a cache of `http::Response<B>`s keyed by `F`.
#[cfg(feature = "http")]
pub type HttpCacheBuilder<F, B> =
    CacheBuilder<F, http::Response<B>, crate::http::HttpClassifier, (), crate::fallback::HttpStore>;

/// The freshness of an HTTP response: see [`CacheLayer::http`].
#[cfg(feature = "http")]
fn http_freshness<B>(response: &http::Response<B>, defaults: Freshness) -> Option<Freshness> {
    let headers = response.headers();
    let cc = crate::fallback::CacheControl::from_headers(headers);
    let age = headers
        .get(http::header::AGE)
        .and_then(crate::fallback::cache_control::delta_seconds)
        .map_or(Duration::ZERO, Duration::from_secs);
    let lifetime = cc.shared_max_age().unwrap_or(defaults.ttl);
    // `s-maxage` forbids serving stale that the response does not itself allow.
    let shared = cc.s_maxage().is_some();
    let window = |directive: Option<Duration>, default: Duration| match directive {
        Some(window) => window,
        None if shared => Duration::ZERO,
        None => default,
    };
    Some(Freshness {
        ttl: lifetime.saturating_sub(age),
        stale_while_revalidate: window(
            cc.stale_while_revalidate(),
            defaults.stale_while_revalidate,
        ),
        stale_if_error: window(cc.stale_if_error(), defaults.stale_if_error),
    })
}

#[cfg(feature = "http")]
impl<F, V, C, O, St> CacheBuilder<F, V, C, O, crate::fallback::HttpStore, St> {
    /// Honours the `Cache-Control` of requests (RFC 9111 §5.2.1; default: ignored): `no-cache`
    /// asks the origin instead of serving a stored answer (and stores its answer),
    /// `no-store` keeps the answer out of the store. Off by default because any client could
    /// then make its calls miss: turn it on only where clients are trusted not to, or where a
    /// client's fresh answer is worth the origin's load.
    pub fn honour_request_cache_control(mut self) -> Self {
        self.policy = self.policy.request_directives();
        self
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
            age: self.age,
            keep: self.keep,
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
            age: self.age,
            keep: self.keep,
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
            age: self.age,
            keep: self.keep,
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
            age: self.age,
            keep: self.keep,
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
            // Saturates for a huge beta: then every hit near enough draws.
            reach: (self.beta * MAX_DRAW).ceil() as u32,
            seed: self.seed.map(AtomicU64::new),
            revalidate: self.revalidate,
            select: self.select,
            classify: self.classify,
            policy: self.policy,
            mark: self.mark,
            age: self.age,
            keep: self.keep,
            source: Source::new(self.name, self.observer),
            counters: Counters::default(),
            clock: Coarse::new(),
            evictions_reported: AtomicU64::new(0),
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
        K: Hash + Eq + Clone + Send,
        V: Clone + Send,
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

    /// What the cache has done so far (as [`CacheHandle::stats`]).
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }
}

impl<F, K, V, C, O, P, St> CacheLayer<F, K, V, C, O, P, St>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    C: Send + Sync + 'static,
    P: Send + Sync + 'static,
    O: Observer,
{
    /// A handle on the cache's counters and state, for metrics and diagnostics: cheap to
    /// clone, with no type parameters, and keeping the cache's state alive.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            view: self.core.clone(),
        }
    }
}

impl<K, V, St, C, P, O> Core<K, V, St, C, P, O>
where
    St: Store<K, V>,
{
    fn stats(&self) -> Stats {
        let counters = &self.counters;
        Stats {
            hits: counters.sum(|s| &s.hits),
            misses: counters.sum(|s| &s.misses),
            stale_served: counters.sum(|s| &s.stale),
            refreshes: counters.sum(|s| &s.refreshes),
            coalesced: counters.sum(|s| &s.coalesced),
            evictions: self.store.evictions(),
        }
    }
}

/// What a [`CacheHandle`] reads of a cache, whatever its types.
trait View: Send + Sync {
    fn stats(&self) -> Stats;
    fn len(&self) -> usize;
    fn in_flight(&self) -> usize;
    fn name(&self) -> &str;
}

impl<K, V, St, C, P, O> View for Core<K, V, St, C, P, O>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
    St: Store<K, V>,
    C: Send + Sync,
    P: Send + Sync,
    O: Observer,
{
    fn stats(&self) -> Stats {
        Core::stats(self)
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    fn in_flight(&self) -> usize {
        self.flights.len()
    }

    fn name(&self) -> &str {
        self.source.name()
    }
}

/// A handle on a [`CacheLayer`]'s counters and state, from [`CacheLayer::handle`]: what its
/// services share, read without touching the call path. Clones read the same cache.
#[derive(Clone)]
pub struct CacheHandle {
    view: Arc<dyn View>,
}

impl CacheHandle {
    /// What the cache has done since it was built. Each counter is summed over per-thread
    /// stripes, so a read taken while calls run may be a few calls behind.
    pub fn stats(&self) -> Stats {
        self.view.stats()
    }

    /// How many entries the store holds (some may have expired and not been removed yet).
    pub fn len(&self) -> usize {
        self.view.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys have a call in flight now (misses being answered, background refreshes).
    /// Locks each part of the table of calls in turn: for diagnostics, not for every call.
    pub fn in_flight(&self) -> usize {
        self.view.in_flight()
    }

    /// The cache's name, as in its events.
    pub fn name(&self) -> &str {
        self.view.name()
    }
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .finish()
    }
}

/// What a [`CacheLayer`] has done since it was built, from [`CacheHandle::stats`] (or
/// [`CacheLayer::stats`]).
///
/// Every call with a key the store may answer is a hit or a miss: a **hit** is answered from
/// the store at once (fresh, or stale while it is refreshed or while a failing key waits to be
/// asked again), a **miss** waits on a call to the inner service (its own, or another caller's
/// for the same key: **coalesced**). A miss answered stale because its call failed counts as a
/// miss and as **stale served**. Calls without a key, and requests the store policy does not
/// serve stored answers to (with `http`, other than `GET`s), are neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls answered from the store without waiting on the inner service (stale ones included).
    pub hits: u64,
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

    /// A fresh hit is answered here, inlined into the caller so that a caller polling the
    /// answer at once takes it without reloading it through memory (measured: 30 to 33 ns a hit
    /// before, 25 to 28 after); a stale hit or a miss goes on out of line.
    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let core = &self.layer.core;
        let Some(key) = (self.layer.key)(&req) else {
            return CacheFuture::bypass(self.inner.clone(), req);
        };
        let memo = core.policy.memo(&req);
        if !core.policy.may_serve(&memo) {
            // Not answered from the store, nor joined to another's call: its own call, whose
            // good answer is offered to the store.
            return CacheFuture::through(self.inner.clone(), req, core.clone(), key, memo);
        }
        // A fresh hit far from expiry is answered inside the store's read, with only the value
        // cloned: the time is certainly before `latest`, and the entry is fresh beyond it and
        // beyond early refresh's reach, so no clock is read. Anything else puts the entry in
        // `found`, out of the way of the fast path's answer (an entry moved through the answer
        // cost more than the rest of a hit).
        let (mut found, mut fresh) = (None, None);
        let counters = core.counters.local();
        core.store.read(&key, |entry| {
            if let Some(latest) = core.clock.latest(counters.hits.load(Ordering::Relaxed)) {
                if core.certainly_fresh(&entry, latest) {
                    // Where the answer carries its age (`Age`), the clock is read for it.
                    let now = Instant::now;
                    fresh = Some(match entry {
                        Cow::Borrowed(entry) => core.fresh_clone(entry, now),
                        Cow::Owned(entry) => core.fresh_with(entry, now),
                    });
                    return;
                }
            }
            found = Some(entry.into_owned());
        });
        if let Some(value) = fresh {
            bump(&counters.hits);
            if O::ENABLED {
                core.source
                    .emitter()
                    .emit(EventKind::CacheHit { stale: false });
            }
            return CacheFuture::hit(value);
        }
        self.not_fresh(key, req, memo, found, counters)
    }
}

impl<S, F, K, V, C, O, P, St> Cache<S, F, K, V, C, O, P, St> {
    /// A call whose answer is not a fresh hit: a stale hit, or a miss (led or joined).
    #[inline(never)]
    fn not_fresh<Req>(
        &self,
        key: K,
        req: Req,
        memo: P::Memo,
        found: Option<Entry<V>>,
        counters: &Stripe,
    ) -> CacheFuture<S, Req, K, V, St, C, P, O>
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
        let core = &self.layer.core;
        let now = Instant::now();
        let stale = match found {
            None => None,
            Some(entry) => match core.judge(&entry, now) {
                Verdict::Hit { stale, refresh } => {
                    bump(&counters.hits);
                    if stale {
                        bump(&counters.stale);
                    }
                    let refresh = refresh.then(|| entry.clone());
                    let value = if stale {
                        core.marked(entry, now)
                    } else {
                        core.fresh(entry, now)
                    };
                    if let Some(entry) = refresh {
                        self.refresh(key, req, memo, entry, !stale);
                    }
                    if O::ENABLED {
                        core.source.emitter().emit(EventKind::CacheHit { stale });
                    }
                    return CacheFuture::hit(value);
                }
                Verdict::Miss { stale: true } => Some(entry),
                Verdict::Miss { stale: false } => None,
                Verdict::Gone => {
                    core.store.remove(&key);
                    None
                }
            },
        };
        bump(&counters.misses);
        core.clock.missed();
        let (future, coalesced) = match core.flights.join(&key) {
            Joined::Lead(leader) => (
                CacheFuture::lead(
                    self.inner.clone(),
                    req,
                    core.clone(),
                    leader,
                    key,
                    memo,
                    stale,
                ),
                false,
            ),
            Joined::Wait(waiter) => {
                bump(&counters.coalesced);
                let future = CacheFuture::wait(
                    self.inner.clone(),
                    req,
                    core.clone(),
                    waiter,
                    key,
                    memo,
                    stale,
                );
                (future, true)
            }
        };
        if O::ENABLED {
            core.source
                .emitter()
                .emit(EventKind::CacheMiss { coalesced });
        }
        future
    }
}

impl<S, F, K, V, C, O, P, St> Cache<S, F, K, V, C, O, P, St> {
    /// Refreshes `key` in the background with `req` (of which `memo` was kept), unless a call
    /// for it is in progress or no tokio runtime is there to run it. `early`: the entry is still
    /// fresh.
    fn refresh<Req>(&self, key: K, req: Req, memo: P::Memo, mut entry: Entry<V>, early: bool)
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
        bump(&core.counters.local().refreshes);
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
        if O::ENABLED {
            let source = &self.layer.core.source;
            source.emitter().emit(EventKind::CacheRefresh { early });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::clock::LAG;
    use std::sync::atomic::AtomicUsize;
    use tower::{service_fn, ServiceExt};

    type Layered = CacheLayer<fn(&u32) -> Option<u32>, u32, u32>;

    /// A layer over a backend that takes `latency` and counts its calls.
    fn counted(
        latency: Duration,
    ) -> (
        Layered,
        impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = CacheLayer::builder((|key: &u32| Some(*key)) as fn(&u32) -> Option<u32>)
            .ttl(Duration::from_secs(60))
            .seed(7)
            .build()
            .unwrap();
        let counted = calls.clone();
        let service = layer.layer(service_fn(move |key: u32| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(latency).await;
                Ok::<_, BoxError>(key)
            }
        }));
        (layer, service, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_far_from_expiry_is_a_hit_without_a_clock_read_and_near_it_is_not() {
        // With the entry's bound on the coarse clock worked out when it is stored (readings on
        // from the start), and without (an entry stored while they were off: the hit works it
        // out from its instants, to the same answers).
        for bound_at_store in [true, false] {
            let (layer, service, calls) = counted(Duration::ZERO);
            let calls = || calls.load(Ordering::SeqCst);
            let clock = &layer.core.clock;
            clock.set(bound_at_store.then(Instant::now));
            service.clone().oneshot(1).await.unwrap();
            let stored = Instant::now();
            assert_eq!(calls(), 1);
            let fresh_ns = layer.core.store.get(&1).unwrap().fresh_ns;
            assert_eq!(fresh_ns != 0, bound_at_store);

            // The answer's freshness is over, but the reading says it is early on: the hit
            // believes the reading, so it read no clock.
            tokio::time::advance(Duration::from_secs(61)).await;
            clock.set(Some(stored));
            service.clone().oneshot(1).await.unwrap();
            assert_eq!(calls(), 1, "served on the reading alone ({bound_at_store})");

            // A reading that leaves less than the lag before expiry: the hit reads the clock,
            // finds the answer expired, and asks.
            clock.set(Some(stored + Duration::from_secs(60) - LAG));
            service.clone().oneshot(1).await.unwrap();
            assert_eq!(calls(), 2, "near expiry ({bound_at_store})");

            // A layer whose readings are off reads the clock however early the reading is.
            tokio::time::advance(Duration::from_secs(61)).await;
            clock.set(None);
            service.clone().oneshot(1).await.unwrap();
            assert_eq!(calls(), 3, "readings off ({bound_at_store})");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_within_early_refreshs_reach_reads_the_clock() {
        // With the entry's bound on the coarse clock worked out when it is stored, and without.
        for bound_at_store in [true, false] {
            // A backend that takes a second: early refresh may fire up to `delta * beta * 36.8`
            // (about 37 s) before expiry.
            let (layer, service, calls) = counted(Duration::from_secs(1));
            let calls = || calls.load(Ordering::SeqCst);
            let clock = &layer.core.clock;
            if bound_at_store {
                clock.set(Some(Instant::now()));
            }
            service.clone().oneshot(1).await.unwrap();
            let stored = Instant::now();
            assert_eq!(calls(), 1);
            let fresh_ns = layer.core.store.get(&1).unwrap().fresh_ns;
            assert_eq!(fresh_ns != 0, bound_at_store);
            // 0.1 s before expiry, where a draw fires nine times in ten (and the seeded one
            // does); the reading says 10 s before it, outside the lag but inside the reach.
            tokio::time::advance(Duration::from_millis(59_900)).await;
            clock.set(Some(stored + Duration::from_secs(50)));
            service.clone().oneshot(1).await.unwrap();
            // The hit read the clock and refreshed in the background.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(
                calls(),
                2,
                "refreshed early (bound at store: {bound_at_store})"
            );
        }
    }

    /// In real time (a multi-thread runtime), fresh hits are judged on the coarse clock: no
    /// answer is served once the freshness of the entry it came from is over. Real sleeps,
    /// bounded: about 2.5 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_real_time_no_answer_is_served_past_its_freshness() {
        let ttl = Duration::from_secs(1);
        let layer = CacheLayer::builder(|key: &u32| Some(*key))
            .ttl(ttl)
            .early_refresh(0.0)
            .build()
            .unwrap();
        // Each answer is the instant it was made.
        let service = layer.layer(service_fn(|_: u32| async {
            Ok::<_, BoxError>(std::time::Instant::now())
        }));
        let begin = Instant::now();
        let (mut checked, mut calls) = (0u32, 0u32);
        while begin.elapsed() < Duration::from_millis(2_500) {
            let asked = Instant::now();
            let made = service.clone().oneshot(1).await.unwrap();
            calls += 1;
            // The entry that answered, if the store still holds it.
            if let Some(entry) = layer.core.store.get(&1) {
                if entry.value().ok() == Some(&made) {
                    assert!(
                        asked < entry.fresh_until,
                        "served {:?} past its freshness",
                        asked - entry.fresh_until
                    );
                    checked += 1;
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        assert_eq!(
            layer.core.clock.state_for_tests(),
            "enabled",
            "the hits were judged on the coarse clock"
        );
        assert!(checked > calls / 2, "{checked} of {calls} answers checked");
    }
}
