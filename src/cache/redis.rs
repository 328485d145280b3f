//! The Redis tier of the cache: [`RedisStore`], a memory store in front of Redis, and
//! [`RedisFillLayer`], which fills the memory tier from Redis on a miss.
//!
//! Every instance of a service keeps its own [`MemoryStore`] and shares one
//! Redis:
//!
//! - **Hits** are answered by the memory tier alone: [`Store::get`] never touches Redis.
//! - **Writes**: an answer the cache stores after a miss is written to Redis in the background
//!   (a spawned task), with its freshness (when it was stored, until when it is fresh, stale-while-revalidate
//!   and stale-if-error) and its `delta` (how long it took to compute), so that every instance
//!   serves it as fresh for the same time and early refresh (XFetch) works fleet-wide. The
//!   answer to a request the cache may not answer from its store (its policy says so: a
//!   `no-cache` request, a keyed `POST`) is neither read from Redis nor written there: the cache
//!   marks those calls, and `RedisFill` sends them straight to the backend. The mark is seen by
//!   a fill called within the cache's call: put `RedisFill` directly beneath the cache, and
//!   layers that call their inner service later than in `call` (a retry's retries, hedges, a
//!   `Buffer`) beneath it.
//! - **Misses**: the cache's miss goes to the service beneath it, which is the
//!   [`RedisFill`] service: it reads the key from Redis and, when Redis holds an answer newer than
//!   the memory tier's and fresh, answers with it (the memory tier keeps it with Redis's
//!   freshness, not a fresh ttl); otherwise it takes the key's Redis lock (`SET NX PX`) and calls
//!   the backend. An instance that finds the lock taken serves what Redis holds while it may
//!   still be served (fresh or stale-while-revalidate), or waits for the lock holder's answer to
//!   appear, for at most [`lock_wait`](RedisStoreBuilder::lock_wait), and then calls the backend
//!   itself: one instance in the fleet refreshes a key, as the layer's single-flight makes one
//!   caller in an instance do.
//! - **Failures**: every Redis call goes through seawall's own
//!   [`Timeout`](crate::timeout::Timeout) and
//!   [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker); a Redis call that fails, times
//!   out or is refused by the open breaker counts as "Redis has nothing", so while Redis is down
//!   the memory tier serves alone and misses go to the backend; the breaker lets a call through
//!   once its open spell is over and the connection manager reconnects, so the tier comes back
//!   by itself. A fill dropped while it holds a key's lock (a cancelled caller) lets it go.
//! - **Events**: the builder's [`observer`](RedisStoreBuilder::observer) hears how each miss
//!   was settled, each write and each failed call, and when Redis stops and starts answering.
//! - **Codec**: values cross to Redis as bytes through a [`Codec`]; [`HttpCodec`] (feature
//!   `http`) keeps an `http::Response<Bytes>`'s status, headers and body.
//!
//! Key format: `{prefix}v:{key}` for the value and `{prefix}l:{key}` for the lock, `key` the
//! cache key's `Display` form (default prefix `seawall:cache:`).
//!
//! ```no_run
//! use seawall::cache::redis::{RedisStore, U64Codec};
//! use seawall::cache::CacheLayer;
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, ServiceBuilder};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = |id: &u32| Some(*id);
//! let store: RedisStore<u32, u64, _> = RedisStore::builder("redis://127.0.0.1:6379", U64Codec)
//!     .max_entries(10_000)
//!     .connect()
//!     .await?;
//! let cache = CacheLayer::builder(key)
//!     .ttl(Duration::from_secs(60))
//!     .store(store.clone())
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .layer(cache)
//!     .layer(store.fill(key))
//!     .service(service_fn(|id: u32| async move { Ok::<u64, BoxError>(u64::from(id) * 10) }));
//! # let _ = service; Ok(()) }
//! ```

use super::store::{Entry, MemoryStore, Store};
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::core::{ErrorIsFailure, Event, EventKind, Observer, Source, TierFill, TierOp};
use crate::timeout::TimeoutLayer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::limit::fleet::redis::redacted;
pub use crate::limit::fleet::redis::RedisError;

/// Turns a cached value into bytes for Redis and back.
///
/// `encode` returns `None` for a value that should not be shared through Redis (it stays in
/// the memory tier); `decode` returns `None` for bytes it cannot read (treated as absent).
pub trait Codec<V>: Send + Sync + 'static {
    /// The value as bytes.
    fn encode(&self, value: &V) -> Option<Vec<u8>>;
    /// The value the bytes stand for.
    fn decode(&self, bytes: &[u8]) -> Option<V>;
}

/// A [`Codec`] of `u64` values (eight bytes, big-endian): for counters, ids and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct U64Codec;

impl Codec<u64> for U64Codec {
    fn encode(&self, value: &u64) -> Option<Vec<u8>> {
        Some(value.to_be_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// A [`Codec`] of `http::Response<Bytes>`: the status, the headers (in order, repeated names
/// kept) and the body. The version and extensions are not kept (a decoded response is
/// HTTP/1.1 with no extensions).
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCodec;

#[cfg(feature = "http")]
impl Codec<http::Response<bytes::Bytes>> for HttpCodec {
    fn encode(&self, response: &http::Response<bytes::Bytes>) -> Option<Vec<u8>> {
        let headers = response.headers();
        let mut out = Vec::with_capacity(8 + headers.len() * 32 + response.body().len());
        out.extend_from_slice(&response.status().as_u16().to_be_bytes());
        out.extend_from_slice(&u32::try_from(headers.len()).ok()?.to_be_bytes());
        for (name, value) in headers {
            out.extend_from_slice(&u16::try_from(name.as_str().len()).ok()?.to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(response.body());
        Some(out)
    }

    fn decode(&self, bytes: &[u8]) -> Option<http::Response<bytes::Bytes>> {
        let mut reader = Reader(bytes);
        let status = http::StatusCode::from_u16(u16::from_be_bytes(reader.take()?)).ok()?;
        let count = u32::from_be_bytes(reader.take()?);
        let mut response = http::Response::new(bytes::Bytes::new());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for _ in 0..count {
            let len = u16::from_be_bytes(reader.take()?);
            let name = http::HeaderName::from_bytes(reader.slice(len.into())?).ok()?;
            let len = u32::from_be_bytes(reader.take()?);
            let value = http::HeaderValue::from_bytes(reader.slice(len as usize)?).ok()?;
            headers.append(name, value);
        }
        *response.body_mut() = bytes::Bytes::copy_from_slice(reader.0);
        Some(response)
    }
}

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.slice(N)?.try_into().ok()
    }
}

/// The record's first two bytes: a mark and the format's version.
const MAGIC: [u8; 2] = [b'S', 1];

/// An entry as kept in Redis: its freshness as offsets in milliseconds from when it was stored
/// (wall-clock milliseconds since the Unix epoch, so that instances agree on it), its delta in
/// microseconds, and the value's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) stored_ms: u64,
    pub(crate) fresh_ms: u64,
    pub(crate) stale_ms: u64,
    pub(crate) error_ms: u64,
    pub(crate) delta_us: u64,
    pub(crate) value: Vec<u8>,
}

impl Record {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(42 + self.value.len());
        out.extend_from_slice(&MAGIC);
        for field in [
            self.stored_ms,
            self.fresh_ms,
            self.stale_ms,
            self.error_ms,
            self.delta_us,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Record> {
        let mut reader = Reader(bytes);
        if reader.take::<2>()? != MAGIC {
            return None;
        }
        let mut field = || reader.take().map(u64::from_be_bytes);
        let (stored_ms, fresh_ms, stale_ms, error_ms, delta_us) =
            (field()?, field()?, field()?, field()?, field()?);
        Some(Record {
            stored_ms,
            fresh_ms,
            stale_ms,
            error_ms,
            delta_us,
            value: reader.0.to_vec(),
        })
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sets the value and, when the writer holds the key's lock, lets it go, in one step.
///
/// KEYS: value key, lock key. ARGV: record, PX, lock token (empty: none held).
const PUT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
";

/// Lets the lock go if the caller still holds it. KEYS: lock key. ARGV: token.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

static PUT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUT));
static UNLOCK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK));

/// One Redis call.
#[derive(Clone, Debug)]
enum Op {
    Get(String),
    Lock {
        key: String,
        token: String,
        px: u64,
    },
    Put {
        key: String,
        lock: String,
        record: Vec<u8>,
        px: u64,
        token: String,
    },
    Unlock {
        key: String,
        token: String,
    },
}

impl Op {
    /// The call, as events name it.
    fn kind(&self) -> TierOp {
        match self {
            Op::Get(_) => TierOp::Read,
            Op::Lock { .. } => TierOp::Lock,
            Op::Put { .. } => TierOp::Write,
            Op::Unlock { .. } => TierOp::Unlock,
        }
    }
}

/// What a Redis call answered.
#[derive(Debug)]
enum Reply {
    Value(Option<Vec<u8>>),
    Locked(bool),
    Done,
}

/// The Redis connection as a service of [`Op`]s, for the timeout and the breaker to wrap.
#[derive(Clone)]
struct Ops(ConnectionManager);

type OpFuture = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

impl Service<Op> for Ops {
    type Response = Reply;
    type Error = BoxError;
    type Future = OpFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, op: Op) -> OpFuture {
        let mut c = self.0.clone();
        Box::pin(async move {
            Ok(match op {
                Op::Get(key) => Reply::Value(redis::cmd("GET").arg(key).query_async(&mut c).await?),
                Op::Lock { key, token, px } => {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(px)
                        .query_async(&mut c)
                        .await?;
                    Reply::Locked(set.is_some())
                }
                Op::Put {
                    key,
                    lock,
                    record,
                    px,
                    token,
                } => {
                    let _: i64 = PUT_SCRIPT
                        .key(key)
                        .key(lock)
                        .arg(record)
                        .arg(px)
                        .arg(token)
                        .invoke_async(&mut c)
                        .await?;
                    Reply::Done
                }
                Op::Unlock { key, token } => {
                    let _: i64 = UNLOCK_SCRIPT
                        .key(key)
                        .arg(token)
                        .invoke_async(&mut c)
                        .await?;
                    Reply::Done
                }
            })
        })
    }
}

/// The Redis connection behind its timeout and breaker: one call, made ready and sent. Boxed, so
/// that the store's type names neither the breaker's observer nor anything else of it (a Redis
/// call is a network round trip; the box is nothing beside it).
type Guarded = Box<dyn Fn(Op) -> OpFuture + Send + Sync>;

/// `connection` behind `timeout` and `breaker`.
fn guard<O: Observer>(
    connection: ConnectionManager,
    timeout: Duration,
    breaker: CircuitBreakerLayer<ErrorIsFailure, O>,
) -> Guarded {
    let service = breaker.layer(TimeoutLayer::new(timeout).layer(Ops(connection)));
    Box::new(move |op| {
        let mut redis = service.clone();
        Box::pin(async move {
            // The breaker is ready at once (an open one fails the call in its future).
            std::future::poll_fn(|cx| redis.poll_ready(cx)).await?;
            redis.call(op).await
        })
    })
}

/// An observer of the store's events, behind a pointer so that the store's type does not name
/// it.
trait DynObserver: Send + Sync + 'static {
    fn on_event(&self, event: &Event<'_>);
    fn wants_latency(&self) -> bool;
}

impl<O: Observer> DynObserver for O {
    fn on_event(&self, event: &Event<'_>) {
        Observer::on_event(self, event)
    }

    fn wants_latency(&self) -> bool {
        Observer::wants_latency(self)
    }
}

/// The store's observer (none by default): its own events and the default breaker's.
#[derive(Clone, Default)]
struct Events(Option<Arc<dyn DynObserver>>);

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl Observer for Events {
    fn on_event(&self, event: &Event<'_>) {
        if let Some(observer) = &self.0 {
            observer.on_event(event)
        }
    }

    fn wants_latency(&self) -> bool {
        self.0.as_ref().is_some_and(|o| o.wants_latency())
    }
}

/// What the memory tier, the fill service and the background writes share.
struct Tier<K: Send, V: Send, Cd> {
    memory: MemoryStore<K, V>,
    redis: Guarded,
    codec: Cd,
    prefix: String,
    address: String,
    lock_ttl: Duration,
    lock_wait: Duration,
    poll: Duration,
    release_after: Duration,
    /// Entries read from Redis and answered by the fill service, for `insert` to keep in place
    /// of the entry the cache makes (which would count freshness from now).
    loaded: Mutex<HashMap<K, Loaded<V>>>,
    /// The backend calls the fill service is making, per key: when each started and the token
    /// of the key's Redis lock if it took it, for `insert` to write the answer to Redis and let
    /// the lock go.
    computing: Mutex<HashMap<K, Computing>>,
    counts: Counts,
    /// Whether the last Redis call failed, under a lock so that the changes are reported in
    /// the order they were made (once as the tier goes down, once as it comes back).
    health: Mutex<bool>,
    /// The same, read without the lock by calls that succeed.
    degraded: AtomicBool,
    source: Source<Events>,
}

#[derive(Default)]
struct Counts {
    loads: AtomicU64,
    writes: AtomicU64,
    failures: AtomicU64,
    backend: AtomicU64,
}

/// An entry the fill service read from Redis and answered with, and when.
struct Loaded<V> {
    at: Instant,
    entry: Entry<V>,
}

/// A backend call the fill service is making for a key.
struct Computing {
    started: Instant,
    /// The fill's token: its lock's value in Redis when `locked`, and in any case what tells
    /// this fill's entry from a later one's.
    token: String,
    /// Whether the fill holds (or may hold) the key's lock.
    locked: bool,
    /// Whether the backend call has answered (the cache's insert or remove is next).
    answered: bool,
}

/// Kept under a mutex map at most this many pending entries or lock tokens: one the cache never
/// claimed (its policy refused to store the answer) must not stay forever.
const MAX_PENDING: usize = 4096;

fn remember<K: Hash + Eq, T>(map: &Mutex<HashMap<K, T>>, key: K, value: T) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_PENDING {
        map.clear();
    }
    map.insert(key, value);
}

/// Forgets what `map` keeps for `key` if `take` says so, and returns it: under one lock, so that
/// nothing remembered meanwhile (a later fill's call, say) is lost.
fn take_if<K: Hash + Eq, T>(
    map: &Mutex<HashMap<K, T>>,
    key: &K,
    take: impl FnOnce(&T) -> bool,
) -> Option<T> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if !take(map.get(key)?) {
        return None;
    }
    map.remove(key)
}

/// A cache [`Store`] shared by every instance of a service: a [`MemoryStore`] in front of
/// Redis. See the [module docs](self). Clones share the memory tier and the connection.
pub struct RedisStore<K: Send, V: Send, Cd> {
    tier: Arc<Tier<K, V, Cd>>,
}

impl<K: Send, V: Send, Cd> Clone for RedisStore<K, V, Cd> {
    fn clone(&self) -> Self {
        RedisStore {
            tier: self.tier.clone(),
        }
    }
}

impl<K: Send, V: Send, Cd> fmt::Debug for RedisStore<K, V, Cd> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.tier.address)
            .field("prefix", &self.tier.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`]. `O` is the observer of a breaker given with
/// [`breaker`](Self::breaker).
pub struct RedisStoreBuilder<Cd, O: 'static = ()> {
    url: String,
    codec: Cd,
    name: Cow<'static, str>,
    events: Events,
    prefix: String,
    settings: Settings,
    breaker: Option<CircuitBreakerLayer<ErrorIsFailure, O>>,
}

/// A [`RedisStoreBuilder`]'s plain settings.
#[derive(Clone, Copy, Debug)]
struct Settings {
    max_entries: usize,
    connect_timeout: Duration,
    timeout: Duration,
    lock_ttl: Duration,
    lock_wait: Duration,
    poll: Duration,
    release_after: Duration,
}

impl<Cd: Clone, O> Clone for RedisStoreBuilder<Cd, O> {
    fn clone(&self) -> Self {
        RedisStoreBuilder {
            url: self.url.clone(),
            codec: self.codec.clone(),
            name: self.name.clone(),
            events: self.events.clone(),
            prefix: self.prefix.clone(),
            settings: self.settings,
            breaker: self.breaker.clone(),
        }
    }
}

impl<Cd: fmt::Debug, O> fmt::Debug for RedisStoreBuilder<Cd, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("address", &redacted(&self.url))
            .field("codec", &self.codec)
            .field("name", &self.name)
            .field("observer", &self.events)
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl RedisStore<(), (), ()> {
    /// Starts a builder for a store on the Redis server at `url`, values crossing as `codec`
    /// says (the key and value types are the cache's, fixed by `connect`).
    pub fn builder<Cd>(url: impl Into<String>, codec: Cd) -> RedisStoreBuilder<Cd> {
        RedisStoreBuilder {
            url: url.into(),
            codec,
            name: Cow::Borrowed("cache.redis"),
            events: Events::default(),
            prefix: "seawall:cache:".to_owned(),
            settings: Settings {
                max_entries: 10_000,
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_millis(250),
                lock_ttl: Duration::from_secs(5),
                lock_wait: Duration::from_secs(2),
                poll: Duration::from_millis(20),
                release_after: Duration::from_secs(1),
            },
            breaker: None,
        }
    }
}

impl<K: Send, V: Send, Cd> RedisStore<K, V, Cd>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
{
    /// The layer to put beneath the [`CacheLayer`](super::CacheLayer) that uses this store, with
    /// the same key function: it fills the memory tier from Redis on a miss and takes the key's
    /// Redis lock before calling the backend.
    pub fn fill<F>(&self, key: F) -> RedisFillLayer<F, K, V, Cd> {
        RedisFillLayer {
            store: self.clone(),
            key,
        }
    }
}

impl<K: Send, V: Send, Cd> RedisStore<K, V, Cd> {
    /// The server's address.
    pub fn address(&self) -> &str {
        &self.tier.address
    }

    /// How many misses were answered from Redis.
    pub fn loads(&self) -> u64 {
        self.tier.counts.loads.load(Ordering::Relaxed)
    }

    /// How many entries were written to Redis.
    pub fn writes(&self) -> u64 {
        self.tier.counts.writes.load(Ordering::Relaxed)
    }

    /// How many Redis calls failed, timed out or were refused by the breaker.
    pub fn failures(&self) -> u64 {
        self.tier.counts.failures.load(Ordering::Relaxed)
    }

    /// How many misses the fill service passed to the backend.
    pub fn backend_calls(&self) -> u64 {
        self.tier.counts.backend.load(Ordering::Relaxed)
    }
}

impl<Cd, O> RedisStoreBuilder<Cd, O> {
    /// The name the store's events carry, and its default breaker's (default `"cache.redis"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends the store's events to `observer` (default: none):
    /// [`CacheTierFill`](EventKind::CacheTierFill) for each miss the fill service settles,
    /// [`CacheTierWrite`](EventKind::CacheTierWrite) for each answer written to Redis,
    /// [`CacheTierFailed`](EventKind::CacheTierFailed) for each Redis call that failed, and
    /// [`StoreHealth`](EventKind::StoreHealth) when Redis stops answering (the first call to
    /// fail after one that did not) and when it answers again. The default breaker's events
    /// (its state transitions, the calls it refuses) go to it too, under the same name; a
    /// breaker given with [`breaker`](Self::breaker) keeps its own observer.
    ///
    /// ```
    /// use seawall::cache::redis::{RedisStore, U64Codec};
    /// use seawall::metrics::MetricsObserver;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1:6379", U64Codec)
    ///     .name("catalog.redis")
    ///     .observer(MetricsObserver::new());
    /// # drop(builder);
    /// ```
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.events = Events(Some(Arc::new(observer)));
        self
    }

    /// What every key's name starts with (default `"seawall:cache:"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The memory tier's bound (default 10,000 entries).
    pub fn max_entries(mut self, max: usize) -> Self {
        self.settings.max_entries = max.max(1);
        self
    }

    /// The longest connecting may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// The longest one Redis call may take before it counts as failed (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How long a key's lock lasts if its holder never lets it go (default 5 s): longer than the
    /// slowest backend call.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lock_ttl = ttl;
        self
    }

    /// How long an instance that finds a key locked and nothing to serve waits for the holder's
    /// answer before calling the backend itself (default 2 s), and how often it looks (default
    /// 20 ms).
    pub fn lock_wait(mut self, wait: Duration, poll: Duration) -> Self {
        self.settings.lock_wait = wait;
        self.settings.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// How long after a backend call answered under a key's lock the lock is let go if the
    /// answer never reached the cache (default 1 s): a layer between the cache and
    /// [`RedisFill`] dropped it. An answer that reaches the cache lets the lock go at once,
    /// written to Redis or not. Also how long an answer the fill read from Redis waits for the
    /// cache to keep it (a later insert's own entry goes in after that). Kept between 10 ms and
    /// the lock's ttl.
    pub fn release_after(mut self, after: Duration) -> Self {
        self.settings.release_after = after;
        self
    }

    /// The circuit breaker on Redis calls (default: open after 3 failures in a row, for 1 s,
    /// doubling up to 10 s while Redis stays down, named as the store and sending to its
    /// observer). A breaker given here sends its events to its own observer.
    pub fn breaker<O2>(
        self,
        breaker: CircuitBreakerLayer<ErrorIsFailure, O2>,
    ) -> RedisStoreBuilder<Cd, O2> {
        RedisStoreBuilder {
            url: self.url,
            codec: self.codec,
            name: self.name,
            events: self.events,
            prefix: self.prefix,
            settings: self.settings,
            breaker: Some(breaker),
        }
    }

    /// Connects, so that an unreachable server is an error now rather than on the first miss.
    pub async fn connect<K, V>(self) -> Result<RedisStore<K, V, Cd>, RedisError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        Cd: Codec<V>,
        O: Observer,
    {
        let client = Client::open(self.url.as_str()).map_err(RedisError::Url)?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let connection = tokio::time::timeout(
            self.settings.connect_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| RedisError::Timeout {
            address: address.clone(),
            timeout: self.settings.connect_timeout,
        })?
        .map_err(|source| RedisError::Unreachable {
            address: address.clone(),
            source,
        })?;
        let redis = match self.breaker {
            Some(breaker) => guard(connection, self.settings.timeout, breaker),
            None => {
                let breaker = CircuitBreakerLayer::builder()
                    .name(self.name.clone())
                    .no_failure_rate()
                    .consecutive_failures(3)
                    .open_duration(Duration::from_secs(1))
                    .open_backoff(2.0, Duration::from_secs(10))
                    .observer(self.events.clone())
                    .build()
                    .expect("the Redis breaker's settings are valid");
                guard(connection, self.settings.timeout, breaker)
            }
        };
        Ok(RedisStore {
            tier: Arc::new(Tier {
                memory: MemoryStore::new(self.settings.max_entries, None),
                redis,
                codec: self.codec,
                prefix: self.prefix,
                address,
                lock_ttl: self.settings.lock_ttl,
                lock_wait: self.settings.lock_wait,
                poll: self.settings.poll,
                release_after: self.settings.release_after.clamp(
                    Duration::from_millis(10),
                    self.settings.lock_ttl.max(Duration::from_millis(10)),
                ),
                loaded: Mutex::default(),
                computing: Mutex::default(),
                counts: Counts::default(),
                health: Mutex::new(false),
                degraded: AtomicBool::new(false),
                source: Source::new(self.name, self.events),
            }),
        })
    }
}

impl<K: Send, V: Send, Cd> Tier<K, V, Cd>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
{
    /// One Redis call through the timeout and the breaker; `None` if it failed.
    async fn call(&self, op: Op) -> Option<Reply> {
        self.send(op).await.ok()
    }

    /// One Redis call through the timeout and the breaker: `Err(sent)` if it failed, `sent`
    /// saying whether it may have reached Redis (not when the open breaker refused it).
    async fn send(&self, op: Op) -> Result<Reply, bool> {
        let kind = op.kind();
        let result = (self.redis)(op).await;
        if result.is_err() {
            self.counts.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.health(result.is_err());
        result.map_err(|error| {
            self.source
                .emitter()
                .emit(EventKind::CacheTierFailed { op: kind });
            crate::error::kind(&*error) != Some(crate::error::ErrorKind::CircuitOpen)
        })
    }

    /// Notes whether a Redis call failed, and reports the tier degraded or recovered when that
    /// changes it: the change and its report under one lock, so that an observer sees them in
    /// order (a success seen before a failure's report cannot report its recovery first).
    fn health(&self, failed: bool) {
        if self.degraded.load(Ordering::Relaxed) == failed {
            return;
        }
        let mut degraded = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if *degraded != failed {
            *degraded = failed;
            self.degraded.store(failed, Ordering::Relaxed);
            self.source
                .emitter()
                .emit(EventKind::StoreHealth { degraded: failed });
        }
    }

    /// Reports how the fill service settled a miss.
    fn filled(&self, fill: TierFill) {
        self.source
            .emitter()
            .emit(EventKind::CacheTierFill { fill });
    }

    fn value_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.prefix)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.prefix)
    }

    /// Reads `key` from Redis: `None` if Redis failed, `Some(None)` if it holds nothing usable.
    async fn read(&self, key: &str, now: Instant) -> Option<Option<Entry<V>>> {
        match self.call(Op::Get(self.value_key(key))).await? {
            Reply::Value(Some(bytes)) => Some(
                Record::from_bytes(&bytes).and_then(|r| entry(&self.codec, &r, now, wall_ms())),
            ),
            _ => Some(None),
        }
    }

    /// Tries to take `key`'s lock: whether it was taken, or `Err(sent)` if Redis failed (`sent`:
    /// the call may have reached Redis, and taken the lock).
    async fn lock(&self, key: &str, token: &str) -> Result<bool, bool> {
        let op = Op::Lock {
            key: self.lock_key(key),
            token: token.to_owned(),
            px: millis(self.lock_ttl).max(1),
        };
        Ok(matches!(self.send(op).await?, Reply::Locked(true)))
    }

    /// Lets `key`'s lock go in the background, if `token` still holds it.
    fn unlock(self: &Arc<Self>, key: &str, token: String) {
        let op = Op::Unlock {
            key: self.lock_key(key),
            token,
        };
        let tier = self.clone();
        spawn(async move {
            tier.call(op).await;
        });
    }

    /// Keeps `entry` in the memory tier, and for the cache's `insert` to come.
    fn load(&self, key: &K, entry: Entry<V>) {
        self.counts.loads.fetch_add(1, Ordering::Relaxed);
        let loaded = Loaded {
            at: Instant::now(),
            entry: entry.clone(),
        };
        remember(&self.loaded, key.clone(), loaded);
        self.memory.insert(key.clone(), entry);
    }
}

/// The record `entry` makes at `now` (`wall_now` on the wall clock, in ms since the epoch), with the PX it lives for in Redis; `None` for an entry
/// not worth sharing (negative, or no longer useful) or a value the codec keeps out.
fn record<V>(
    codec: &impl Codec<V>,
    entry: &Entry<V>,
    now: Instant,
    wall_now: u64,
) -> Option<(Record, u64)> {
    let value = entry.value.as_ref().ok().filter(|_| !entry.negative)?;
    let since = |at: Instant| millis(at.saturating_duration_since(entry.stored));
    let age = now.saturating_duration_since(entry.stored);
    let record = Record {
        stored_ms: wall_now.saturating_sub(millis(age)),
        fresh_ms: since(entry.fresh_until),
        stale_ms: since(entry.stale_until),
        error_ms: since(entry.error_until),
        delta_us: u64::try_from(entry.delta.as_micros()).unwrap_or(u64::MAX),
        value: codec.encode(value)?,
    };
    let px = record
        .stale_ms
        .max(record.error_ms)
        .checked_sub(millis(age))
        .filter(|px| *px > 0)?;
    Some((record, px))
}

/// The entry a record read at `now` (`wall_now` on the wall clock) stands for, its times moved onto this instance's clock.
fn entry<V>(
    codec: &impl Codec<V>,
    record: &Record,
    now: Instant,
    wall_now: u64,
) -> Option<Entry<V>> {
    let value = codec.decode(&record.value)?;
    let age = Duration::from_millis(wall_now.saturating_sub(record.stored_ms));
    let stored = now.checked_sub(age).unwrap_or(now);
    let at = |ms: u64| {
        stored
            .checked_add(Duration::from_millis(ms))
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
    };
    Some(Entry {
        value: Ok(value),
        stored,
        fresh_until: at(record.fresh_ms),
        stale_until: at(record.stale_ms),
        error_until: at(record.error_ms),
        delta: Duration::from_micros(record.delta_us),
        negative: false,
        revalidate_at: now,
        fresh_ns: 0,
    })
}

fn spawn(future: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(future);
    }
}

impl<K, V, Cd> Store<K, V> for RedisStore<K, V, Cd>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
{
    /// The memory tier's entry: a hit never touches Redis.
    #[inline]
    fn get(&self, key: &K) -> Option<Entry<V>> {
        self.tier.memory.get(key)
    }

    #[inline]
    fn read<R>(&self, key: &K, read: impl FnOnce(Cow<'_, Entry<V>>) -> R) -> Option<R> {
        self.tier.memory.read(key, read)
    }

    /// Stores in the memory tier, and writes a new answer to Redis in the background (releasing
    /// the key's lock if this instance holds it). An entry the fill service read from Redis is
    /// kept as Redis had it and not written back.
    fn insert(&self, key: K, entry: Entry<V>) {
        let tier = &self.tier;
        if super::is_through() {
            // The answer to a request the cache may not answer from its store: kept here only,
            // and nothing of another call of the key (a miss's fill) is touched.
            tier.memory.insert(key, entry);
            return;
        }
        // The cache's entry for an answer the fill service read from Redis (made after the
        // read): keep Redis's, with its freshness. Any other insert leaves that one waiting.
        // An answer read from Redis that the cache did not keep is not waited for longer than
        // `release_after`: a later insert's own entry goes in.
        let fresh = |loaded: &Loaded<V>| {
            entry.stored.saturating_duration_since(loaded.at) <= tier.release_after
        };
        if let Some(loaded) = take_if(&tier.loaded, &key, |loaded| entry.stored >= loaded.at) {
            if fresh(&loaded) {
                tier.memory.insert(key, loaded.entry);
                return;
            }
        }
        // Only the answer of a backend call this instance made, once it has answered, is news
        // for the fleet: an older entry put back (with a longer grace, a later revalidation
        // time, or in place of a failed answer), or an entry stored while another fill of the
        // key is still calling, leaves the call remembered.
        let Some(computing) = take_if(&tier.computing, &key, |call| {
            call.answered && entry.stored >= call.started
        }) else {
            tier.memory.insert(key, entry);
            return;
        };
        let record = record(&tier.codec, &entry, Instant::now(), wall_ms());
        let name = key.to_string();
        tier.memory.insert(key, entry);
        let token = computing.locked.then_some(computing.token);
        let op = match (record, token) {
            (Some((record, px)), token) => Op::Put {
                key: tier.value_key(&name),
                lock: tier.lock_key(&name),
                record: record.to_bytes(),
                px,
                token: token.unwrap_or_default(),
            },
            (None, Some(token)) => Op::Unlock {
                key: tier.lock_key(&name),
                token,
            },
            (None, None) => return,
        };
        let tier = tier.clone();
        spawn(async move {
            let put = matches!(op, Op::Put { .. });
            if tier.call(op).await.is_some() && put {
                tier.counts.writes.fetch_add(1, Ordering::Relaxed);
                tier.source.emitter().emit(EventKind::CacheTierWrite);
            }
        });
    }

    /// Forgets `key` in the memory tier only: what Redis holds expires by itself, and another
    /// instance may have stored a newer answer there. A lock this instance holds for an answer
    /// it computed goes, as in [`settled`](Store::settled).
    fn remove(&self, key: &K) {
        self.tier.memory.remove(key);
        self.settled(key);
    }

    /// Lets the key's Redis lock go, if this instance took it for a backend call that has
    /// answered and the cache's insert did not (it stored nothing of the answer: `no-store`, a
    /// status it does not keep, a failure). A call still in flight is left alone.
    fn settled(&self, key: &K) {
        if !super::is_through() {
            self.tier.release(key, |call| call.answered);
        }
    }

    fn len(&self) -> usize {
        self.tier.memory.len()
    }

    fn evictions(&self) -> u64 {
        self.tier.memory.evictions()
    }
}

/// Puts [`RedisFill`] beneath a cache over a [`RedisStore`]: made by [`RedisStore::fill`].
pub struct RedisFillLayer<F, K: Send, V: Send, Cd> {
    store: RedisStore<K, V, Cd>,
    key: F,
}

impl<F: Clone, K: Send, V: Send, Cd> Clone for RedisFillLayer<F, K, V, Cd> {
    fn clone(&self) -> Self {
        RedisFillLayer {
            store: self.store.clone(),
            key: self.key.clone(),
        }
    }
}

impl<F, K: Send, V: Send, Cd> fmt::Debug for RedisFillLayer<F, K, V, Cd> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFillLayer")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<S, F: Clone, K: Send, V: Send, Cd> Layer<S> for RedisFillLayer<F, K, V, Cd> {
    type Service = RedisFill<S, F, K, V, Cd>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisFill {
            inner,
            store: self.store.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service beneath a cache over a [`RedisStore`]: a miss reads Redis first, and calls the
/// backend under the key's Redis lock. See the [module docs](self).
pub struct RedisFill<S, F, K: Send, V: Send, Cd> {
    inner: S,
    store: RedisStore<K, V, Cd>,
    key: F,
}

impl<S: Clone, F: Clone, K: Send, V: Send, Cd> Clone for RedisFill<S, F, K, V, Cd> {
    fn clone(&self) -> Self {
        RedisFill {
            inner: self.inner.clone(),
            store: self.store.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, F, K: Send, V: Send, Cd> fmt::Debug for RedisFill<S, F, K, V, Cd> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFill")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The response future of [`RedisFill`] (boxed: it is on the miss path only, which waits on
/// Redis anyway).
pub type RedisFillFuture<V> = Pin<Box<dyn Future<Output = Result<V, BoxError>> + Send>>;

/// What a fill holds of the tier until its backend call has answered: the key's Redis lock (or
/// a lock call whose reply it did not see), and the call as `computing` remembers it. Given
/// back if the fill's future is dropped first, cancelled or unwound by a panic (an observer's
/// included), or its backend call failed: so that the next miss for the key, here or in another
/// instance, need not wait out the lock's ttl, and nothing pending is left behind.
struct Held<
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
> {
    tier: Arc<Tier<K, V, Cd>>,
    key: K,
    name: String,
    token: String,
    /// Whether the fill holds, or may hold, the key's lock.
    locked: bool,
    /// Whether `computing` remembers the fill's backend call.
    registered: bool,
}

impl<K, V, Cd> Drop for Held<K, V, Cd>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
{
    fn drop(&mut self) {
        if self.registered {
            take_if(&self.tier.computing, &self.key, |call| {
                call.token == self.token
            });
        }
        if self.locked {
            // A token that does not hold the lock lets nothing go.
            self.tier
                .unlock(&self.name, std::mem::take(&mut self.token));
        }
    }
}

impl<K, V, Cd> Tier<K, V, Cd>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
{
    /// The backend call of the fill with `token` for `key` answered: the cache's insert (or its
    /// word that it stores nothing, [`Store::settled`]) is next, and lets the lock go. If
    /// neither comes (the answer never reached the cache), the call is forgotten and its lock
    /// let go after `release_after`. `false` if the call is no longer the one remembered for
    /// the key (another fill's replaced it): the fill then lets its lock go itself.
    fn answered(self: &Arc<Self>, key: &K, token: &str) -> bool {
        {
            let mut computing = self.computing.lock().unwrap_or_else(|e| e.into_inner());
            match computing.get_mut(key) {
                Some(call) if call.token == token => call.answered = true,
                _ => return false,
            }
        }
        let (tier, key, token) = (self.clone(), key.clone(), token.to_owned());
        spawn(async move {
            tokio::time::sleep(tier.release_after).await;
            tier.release(&key, |call| call.token == token);
        });
        true
    }

    /// Forgets the call remembered for `key` if `which` says so, and lets its lock go.
    fn release(self: &Arc<Self>, key: &K, which: impl FnOnce(&Computing) -> bool) {
        if let Some(call) = take_if(&self.computing, key, which) {
            if call.locked {
                self.unlock(&key.to_string(), call.token);
            }
        }
    }
}

/// A lock token: unique enough that one instance never releases another's lock.
fn token() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl<S, F, K, V, Cd, Req> Service<Req> for RedisFill<S, F, K, V, Cd>
where
    S: Service<Req, Response = V> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Cd: Codec<V>,
{
    type Response = V;
    type Error = BoxError;
    type Future = RedisFillFuture<V>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> RedisFillFuture<V> {
        // The service made ready goes into the future; this one keeps a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Without a key, or for a request the cache above may not answer from its store (it
        // marks the call): straight to the backend, Redis neither read nor locked.
        let key = (self.key)(&req).filter(|_| !super::is_through());
        let Some(key) = key else {
            let future = inner.call(req);
            return Box::pin(async move { future.await.map_err(Into::into) });
        };
        let tier = self.store.tier.clone();
        Box::pin(async move {
            let name = key.to_string();
            // The version this instance has: Redis must hold a newer one to answer a refresh.
            let have = tier.memory.get(&key).map(|entry| entry.stored);
            let newer = |entry: &Entry<V>| {
                have.is_none_or(|have| entry.stored > have + Duration::from_millis(10))
            };
            let mut held = Held {
                tier: tier.clone(),
                key: key.clone(),
                name: name.clone(),
                token: token(),
                locked: false,
                registered: false,
            };
            let start = Instant::now();
            // Events are sent before what they report is kept (`load`), or while `held` would
            // give back what the fill holds: an observer that panics leaves nothing half made.
            let fill = loop {
                let now = Instant::now();
                let Some(found) = tier.read(&name, now).await else {
                    // Redis failed: the memory tier goes on alone.
                    break TierFill::Unavailable;
                };
                if let Some(entry) = &found {
                    if newer(entry) && now < entry.fresh_until {
                        let value = entry.value.clone().expect("a loaded entry is positive");
                        tier.filled(TierFill::Shared);
                        tier.load(&key, entry.clone());
                        return Ok(value);
                    }
                }
                // Held from before the call: a lock Redis took for a call that then failed,
                // timed out or was dropped is let go too.
                held.locked = true;
                match tier.lock(&name, &held.token).await {
                    Err(sent) => {
                        held.locked = sent;
                        break TierFill::Unavailable;
                    }
                    Ok(true) => {
                        // The holder before us may have written its answer and let the lock go
                        // between our read and our lock: read again before calling.
                        let now = Instant::now();
                        if let Some(Some(entry)) = tier.read(&name, now).await {
                            if newer(&entry) && now < entry.fresh_until {
                                let value =
                                    entry.value.clone().expect("a loaded entry is positive");
                                tier.filled(TierFill::Shared);
                                tier.load(&key, entry);
                                drop(held); // lets the lock go
                                return Ok(value);
                            }
                        }
                        break TierFill::Locked;
                    }
                    Ok(false) => held.locked = false,
                }
                // Another instance is computing: serve what Redis has while it may be served.
                if let Some(mut entry) = found.filter(|entry| now < entry.stale_until) {
                    entry.revalidate_at = now + tier.poll;
                    let value = entry.value.clone().expect("a loaded entry is positive");
                    tier.filled(TierFill::SharedStale);
                    tier.load(&key, entry);
                    return Ok(value);
                }
                if now.saturating_duration_since(start) >= tier.lock_wait {
                    break TierFill::LockWaitExpired;
                }
                tokio::time::sleep(tier.poll).await;
            };
            let computing = Computing {
                started: Instant::now(),
                token: held.token.clone(),
                locked: held.locked,
                answered: false,
            };
            remember(&tier.computing, key.clone(), computing);
            held.registered = true;
            tier.filled(fill);
            tier.counts.backend.fetch_add(1, Ordering::Relaxed);
            let result = inner.call(req).await.map_err(Into::into);
            if result.is_ok() && tier.answered(&key, &held.token) {
                // The cache's insert writes the answer and lets the lock go (or, storing
                // nothing, says so); `answered` makes sure the lock goes if neither comes.
                held.registered = false;
                held.locked = false;
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_hides_the_credentials_in_its_url() {
        let builder = RedisStore::builder("redis://user:secret@10.0.0.1:6379/0", U64Codec);
        let shown = format!("{builder:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("10.0.0.1:6379"), "{shown}");
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = Record {
            stored_ms: 1_700_000_000_123,
            fresh_ms: 60_000,
            stale_ms: 90_000,
            error_ms: 360_000,
            delta_us: 25_000,
            value: b"answer".to_vec(),
        };
        assert_eq!(Record::from_bytes(&record.to_bytes()), Some(record));
        assert_eq!(Record::from_bytes(b"S\x02rest"), None);
        assert_eq!(Record::from_bytes(b"S\x01short"), None);
    }

    /// An entry written by one instance and read by another keeps its freshness and delta: the
    /// times move onto the reader's clock by the age the wall clock says, and nothing more.
    #[tokio::test(start_paused = true)]
    async fn an_entry_keeps_its_freshness_across_instances() {
        let stored = Instant::now();
        let entry = Entry {
            value: Ok(7u64),
            stored,
            fresh_until: stored + Duration::from_secs(60),
            stale_until: stored + Duration::from_secs(90),
            error_until: stored + Duration::from_secs(360),
            delta: Duration::from_micros(25_123),
            negative: false,
            revalidate_at: stored,
            fresh_ns: 0,
        };
        tokio::time::advance(Duration::from_secs(10)).await;
        let wall = 1_700_000_000_000;
        let (written, px) = record(&U64Codec, &entry, Instant::now(), wall).unwrap();
        assert_eq!(written.stored_ms, wall - 10_000);
        assert_eq!(px, 350_000);
        let bytes = written.to_bytes();
        // Read 5 s later (on the wall clock) by an instance whose clock reads 1000 s on.
        tokio::time::advance(Duration::from_secs(1_000)).await;
        let now = Instant::now();
        let read = Record::from_bytes(&bytes).unwrap();
        let back = entry_of(&read, now, wall + 5_000);
        assert_eq!(back.stored, now - Duration::from_secs(15));
        assert_eq!(back.fresh_until - back.stored, Duration::from_secs(60));
        assert_eq!(back.stale_until - back.stored, Duration::from_secs(90));
        assert_eq!(back.error_until - back.stored, Duration::from_secs(360));
        assert_eq!(back.delta, Duration::from_micros(25_123));
        assert_eq!(back.value.unwrap(), 7);
        // Negative entries and entries no longer of use are not shared.
        let negative = Entry {
            negative: true,
            ..entry.clone()
        };
        assert!(record(&U64Codec, &negative, stored, wall).is_none());
        let late = stored + Duration::from_secs(361);
        assert!(record(&U64Codec, &entry, late, wall).is_none());
    }

    fn entry_of(record: &Record, now: Instant, wall: u64) -> Entry<u64> {
        entry(&U64Codec, record, now, wall).unwrap()
    }
}
