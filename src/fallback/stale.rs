//! Stale-if-error: [`StaleIfErrorLayer`] keeps the last good response per key and serves it,
//! marked, when the live call fails.

use super::{select, ConfigError, Options, Select};
use crate::core::{Classify, ErrorIsFailure, EventKind, Observer, Outcome, Source};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// How many independently locked parts the store is cut into.
const SHARDS: usize = 16;

/// The stored responses: at most `max` entries, in shards each evicting its oldest entry first.
struct Store<K, Res> {
    shards: Box<[Mutex<Shard<K, Res>>]>,
    max_age: Duration,
    hasher: RandomState,
}

struct Shard<K, Res> {
    /// The most entries this shard keeps: the shards' bounds add up to the store's.
    max: usize,
    entries: HashMap<K, Stored<Res>>,
    /// Keys in the order they were stored, with the generation they were stored at: an entry
    /// stored again later has a newer generation, and its older places here are skipped.
    order: VecDeque<(K, u64)>,
    generation: u64,
}

struct Stored<Res> {
    response: Res,
    at: Instant,
    generation: u64,
}

impl<K: Hash + Eq + Clone, Res: Clone> Store<K, Res> {
    fn new(max: usize, max_age: Duration) -> Self {
        let max = max.max(1);
        let shards = SHARDS.min(max);
        Store {
            shards: (0..shards)
                .map(|i| {
                    Mutex::new(Shard {
                        max: max / shards + usize::from(i < max % shards),
                        entries: HashMap::new(),
                        order: VecDeque::new(),
                        generation: 0,
                    })
                })
                .collect(),
            max_age,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Shard<K, Res>> {
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, key: K, response: Res, at: Instant) {
        let mut shard = self.shard(&key);
        let shard = &mut *shard;
        let max = shard.max;
        shard.generation += 1;
        let generation = shard.generation;
        shard.order.push_back((key.clone(), generation));
        match shard.entries.entry(key) {
            Entry::Occupied(mut e) => {
                *e.get_mut() = Stored {
                    response,
                    at,
                    generation,
                };
            }
            Entry::Vacant(e) => {
                e.insert(Stored {
                    response,
                    at,
                    generation,
                });
            }
        }
        while shard.entries.len() > max {
            let Some((oldest, generation)) = shard.order.pop_front() else {
                break;
            };
            if shard.entries.get(&oldest).map(|e| e.generation) == Some(generation) {
                shard.entries.remove(&oldest);
            }
        }
        // Places left behind by keys stored again: drop them before they outgrow the entries.
        if shard.order.len() > 2 * max + 16 {
            let entries = &shard.entries;
            shard.order.retain(|(key, generation)| {
                entries.get(key).map(|e| e.generation) == Some(*generation)
            });
        }
    }

    /// The stored response for `key` and its age at `now`, if it is not too old.
    fn get(&self, key: &K, now: Instant) -> Option<(Res, Duration)> {
        let shard = self.shard(key);
        let stored = shard.entries.get(key)?;
        let age = now.saturating_duration_since(stored.at);
        (age <= self.max_age).then(|| (stored.response.clone(), age))
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }
}

/// Keeps the last good response per key, and serves it when the live call fails: a stale answer,
/// marked as such, instead of an error.
///
/// Each successful response (as the classifier says) is cloned into a store of at most
/// `max_entries` (default 10,000; the oldest stored go first) under the key a closure takes from
/// the request; requests with no key are not stored nor served. When a call fails in a way
/// [`Select`] chooses and a response for its key is at most `max_age` old (default five minutes),
/// that response is served, after `mark` has marked it, with a `FallbackUsed` event. For HTTP,
/// [`mark_http`] sets the `Age` header (the upstream's plus the time kept) and adds a
/// [`StaleResponse`] extension.
///
/// Responses must be `Clone`: buffer HTTP bodies first (`http::Response<Bytes>`, `String`).
/// Storing costs a clone, a clock read and a short lock per successful call.
///
/// ```
/// use seawall::fallback::StaleIfErrorLayer;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = StaleIfErrorLayer::builder(
///     |user: &(u32, bool)| Some(user.0),
///     |answer: &mut String, age| answer.push_str(&format!(" (stale, {age:?} old)")),
/// )
/// .build()
/// .unwrap();
/// let service = layer.layer(service_fn(|(user, up): (u32, bool)| async move {
///     if up { Ok(format!("profile {user}")) } else { Err("down") }
/// }));
/// assert_eq!(service.clone().oneshot((7, true)).await.unwrap(), "profile 7");
/// assert_eq!(service.clone().oneshot((7, false)).await.unwrap(), "profile 7 (stale, 0ns old)");
/// assert!(service.oneshot((8, false)).await.is_err(), "nothing stored for user 8");
/// # }
/// ```
pub struct StaleIfErrorLayer<F, K, Res, C = ErrorIsFailure, O = ()> {
    store: Arc<Store<K, Res>>,
    key: F,
    mark: fn(&mut Res, Duration),
    select: Select,
    classify: C,
    source: Arc<Source<O>>,
}

/// Builds a [`StaleIfErrorLayer`].
pub struct StaleIfErrorBuilder<F, Res, C = ErrorIsFailure, O = ()> {
    key: F,
    mark: fn(&mut Res, Duration),
    max_entries: usize,
    max_age: Duration,
    options: Options<C, O>,
}

impl StaleIfErrorLayer<(), (), ()> {
    /// Starts a builder: responses stored under the key `key` takes from each request, and
    /// marked by `mark` (given the response's age) when served stale.
    pub fn builder<F, Res>(key: F, mark: fn(&mut Res, Duration)) -> StaleIfErrorBuilder<F, Res> {
        StaleIfErrorBuilder {
            key,
            mark,
            max_entries: 10_000,
            max_age: Duration::from_secs(300),
            options: Options::new("stale_if_error"),
        }
    }
}

impl<F, Res, C, O> StaleIfErrorBuilder<F, Res, C, O> {
    /// Keeps at most `max` responses (default 10,000; at least 1, or [`build`](Self::build) fails
    /// with [`ConfigError::MaxEntries`]).
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
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

    /// Decides with `classify` which responses are good (stored) and which are failures.
    pub fn classify<C2>(self, classify: C2) -> StaleIfErrorBuilder<F, Res, C2, O> {
        StaleIfErrorBuilder {
            key: self.key,
            mark: self.mark,
            max_entries: self.max_entries,
            max_age: self.max_age,
            options: self.options.classify(classify),
        }
    }

    /// Names the layer and sends a `FallbackUsed` event for each stale answer to `observer`.
    pub fn observer<O2: Observer>(
        self,
        name: impl Into<Cow<'static, str>>,
        observer: O2,
    ) -> StaleIfErrorBuilder<F, Res, C, O2> {
        StaleIfErrorBuilder {
            key: self.key,
            mark: self.mark,
            max_entries: self.max_entries,
            max_age: self.max_age,
            options: self.options.observer(name.into(), observer),
        }
    }

    /// Checks the settings and builds the layer and its store, shared by every service it makes.
    pub fn build<K>(self) -> Result<StaleIfErrorLayer<F, K, Res, C, O>, ConfigError>
    where
        K: Hash + Eq + Clone,
        Res: Clone,
    {
        if self.max_entries == 0 {
            return Err(ConfigError::MaxEntries);
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::MaxAge);
        }
        let options = self.options;
        Ok(StaleIfErrorLayer {
            store: Arc::new(Store::new(self.max_entries, self.max_age)),
            key: self.key,
            mark: self.mark,
            select: options.select,
            classify: options.classify,
            source: Arc::new(Source::new(options.name, options.observer)),
        })
    }
}

impl<F, Res, C, O> fmt::Debug for StaleIfErrorBuilder<F, Res, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleIfErrorBuilder")
            .field("max_entries", &self.max_entries)
            .field("max_age", &self.max_age)
            .field("options", &self.options)
            .finish()
    }
}

impl<F, K: Hash + Eq + Clone, Res: Clone, C, O> StaleIfErrorLayer<F, K, Res, C, O> {
    /// How many responses are stored.
    pub fn stored(&self) -> usize {
        self.store.len()
    }
}

impl<F: Clone, K, Res, C: Clone, O> Clone for StaleIfErrorLayer<F, K, Res, C, O> {
    fn clone(&self) -> Self {
        StaleIfErrorLayer {
            store: self.store.clone(),
            key: self.key.clone(),
            mark: self.mark,
            select: self.select,
            classify: self.classify.clone(),
            source: self.source.clone(),
        }
    }
}

impl<F, K, Res, C, O> fmt::Debug for StaleIfErrorLayer<F, K, Res, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleIfErrorLayer")
            .field("name", &self.source.name())
            .field("max_age", &self.store.max_age)
            .field("select", &self.select)
            .finish()
    }
}

impl<S, F: Clone, K, Res, C: Clone, O> Layer<S> for StaleIfErrorLayer<F, K, Res, C, O> {
    type Service = StaleIfError<S, F, K, Res, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        StaleIfError {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`StaleIfErrorLayer`].
pub struct StaleIfError<S, F, K, Res, C = ErrorIsFailure, O = ()> {
    inner: S,
    layer: StaleIfErrorLayer<F, K, Res, C, O>,
}

impl<S: Clone, F: Clone, K, Res, C: Clone, O> Clone for StaleIfError<S, F, K, Res, C, O> {
    fn clone(&self) -> Self {
        StaleIfError {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, F, K, Res, C, O> fmt::Debug for StaleIfError<S, F, K, Res, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleIfError")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, F, K, C, O, Req> Service<Req> for StaleIfError<S, F, K, S::Response, C, O>
where
    S: Service<Req>,
    S::Response: Clone,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = StaleFuture<S::Future, K, S::Response, C, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.layer.key)(&req);
        let layer = &self.layer;
        let start = (O::ENABLED && layer.source.observer().wants_latency()).then(Instant::now);
        StaleFuture {
            future: self.inner.call(req),
            key,
            store: layer.store.clone(),
            mark: layer.mark,
            select: layer.select,
            classify: layer.classify.clone(),
            source: O::ENABLED.then(|| layer.source.clone()),
            start,
        }
    }
}

pin_project! {
    /// The response future of [`StaleIfError`].
    pub struct StaleFuture<Fut, K, Res, C, O> {
        #[pin]
        future: Fut,
        key: Option<K>,
        store: Arc<Store<K, Res>>,
        mark: fn(&mut Res, Duration),
        select: Select,
        classify: C,
        // Kept only for a listening observer.
        source: Option<Arc<Source<O>>>,
        start: Option<Instant>,
    }
}

impl<Fut, K, Res, C, O> fmt::Debug for StaleFuture<Fut, K, Res, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleFuture")
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl<Fut, K, Res, E, C, O> Future for StaleFuture<Fut, K, Res, C, O>
where
    Fut: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    K: Hash + Eq + Clone,
    Res: Clone,
    C: Classify<Res, E>,
    O: Observer,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let Some(key) = this.key.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        let verdict = result.is_ok().then(|| this.classify.classify(&result));
        let result = result.map_err(Into::into);
        if verdict == Some(Outcome::Success) {
            if let Ok(response) = &result {
                this.store.put(key, response.clone(), Instant::now());
            }
            return Poll::Ready(result);
        }
        let failed = this.select.failed_responses && verdict == Some(Outcome::Failure);
        let Some(trigger) = select(*this.select, failed, &result).map(|t| t.kind()) else {
            return Poll::Ready(result);
        };
        let now = Instant::now();
        let Some((mut response, age)) = this.store.get(&key, now) else {
            return Poll::Ready(result);
        };
        (this.mark)(&mut response, age);
        if let Some(source) = this.source {
            let latency = this.start.map(|start| now.saturating_duration_since(start));
            source
                .emitter()
                .emit(EventKind::FallbackUsed { trigger, latency });
        }
        Poll::Ready(Ok(response))
    }
}

/// A stale response's extension, put there by [`mark_http`]: how old it was when served.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleResponse {
    /// Its age.
    pub age: Duration,
}

/// Marks a stale HTTP response for [`StaleIfErrorLayer`]: its `Age` header and a
/// [`StaleResponse`] extension.
///
/// `Age` is set as a cache sets it (RFC 9111 §4.2.3): the `Age` the upstream sent with the
/// response, if any, plus `age`, the time the response was kept, in whole seconds (at most 2^31, as
/// the RFC caps it); an `Age` that is not a number counts as none. No `Warning: 110` header is added:
/// RFC 9111 obsoletes `Warning` (§5.5). A stale answer is told by its `Age` and, in
/// the process, by the [`StaleResponse`] extension (whose `age` is the time kept alone); mark it
/// another way (a header of your own) with a function of your own.
#[cfg(feature = "http")]
pub fn mark_http<B>(response: &mut http::Response<B>, age: Duration) {
    /// The greatest age RFC 9111 §1.2.2 counts: 2^31 seconds.
    const MAX_AGE: u64 = 1 << 31;
    let headers = response.headers_mut();
    let upstream = headers.get(http::header::AGE).and_then(|value| {
        let text = value.to_str().ok()?.trim();
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        // All digits but too many for a u64: too great to count.
        digits.then(|| text.parse::<u64>().unwrap_or(MAX_AGE))
    });
    let total = upstream
        .unwrap_or(0)
        .saturating_add(age.as_secs())
        .min(MAX_AGE);
    headers.insert(http::header::AGE, http::HeaderValue::from(total));
    response.extensions_mut().insert(StaleResponse { age });
}
