//! The fleet store in Redis: [`RedisStore`].

use super::{Grant, Take};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Service};

/// The GCRA of the in-memory store for up to `want` admissions at once, reserving slots up to
/// `max_wait` ahead, on Redis's clock (so that instances need not agree on the time), in
/// microseconds. A key whose theoretical arrival time has passed is worth nothing, so it expires
/// then: idle keys leave nothing behind. Lua numbers are doubles, exact to 2^53 µs (285 years)
/// since the epoch.
///
/// KEYS[1]: the key. ARGV: interval, tolerance, want, max_wait (times in µs).
/// Returns {granted, wait µs}: the wait until the first granted slot, or, when none was granted,
/// until one could be taken at once.
///
/// `TIME` followed by a write is refused by Redis before 5.0, which replicated scripts verbatim
/// (and so forbade writes after non-deterministic commands); from 5.0 on scripts are replicated
/// by their effects.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local used = tat - now
local wait = math.max(used + interval - tolerance, 0)
local granted = math.min(want, math.floor((tolerance + max_wait - used) / interval))
if granted < 1 then
  return {0, wait}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {granted, wait}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// A fleet [`Store`](super::Store) in Redis: each key's GCRA state is one Redis key, updated by
/// one server-side script per lease, so instances sharing the server never admit more together
/// than the quota (plus their leases; see the [module docs](super)). The script reads Redis's
/// clock, not the instances', and writes after reading it: it needs **Redis 5 or later**. A step
/// of the server's clock moves every key's state with it (see
/// [the store's clock](super#the-stores-clock)). A key expires as soon as it is idle (its burst
/// whole again), so idle keys do not accumulate.
///
/// Times in Redis are whole microseconds: a quota's interval is rounded up to one, so quotas of
/// up to 1,000,000 calls a second per key are kept, exactly when the interval is a whole number
/// of microseconds (20, 1,000 or 250,000 a second) and a little under otherwise (300,000 a second
/// is kept as 250,000).
///
/// The connection is tokio's multiplexed connection under `redis`'s connection manager, which
/// reconnects by itself when the server comes back. Clones share it.
///
/// ```no_run
/// use seawall::limit::fleet::redis::RedisStore;
/// use seawall::limit::fleet::FleetRateLimitLayer;
/// use seawall::limit::rate::Quota;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("myapp:ratelimit:")
///     .connect()
///     .await?; // a clear error, not a panic, if Redis is unreachable
/// let layer = FleetRateLimitLayer::builder(store, Quota::per_second(100), |req: &http::Request<()>| {
///     req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned)
/// })
/// .fail_open(Quota::per_second(100 / 4)) // four instances
/// .build()?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    address: Arc<str>,
}

/// Builds a [`RedisStore`].
#[derive(Clone)]
pub struct RedisBuilder {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBuilder")
            .field("address", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The server `url` names, for `Debug`: its address as the client reads it (`host:port`, or a
/// socket's path), without the user, password or database any part of the URL may carry.
pub(crate) fn redacted(url: &str) -> String {
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(info) => info.addr().to_string(),
        Err(_) => "<not a Redis URL>".to_owned(),
    }
}

/// Why a [`RedisStore`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// The server could not be reached, or refused the script.
    #[error("Redis at {address} is unreachable: {source}")]
    Unreachable {
        /// The server's address (without credentials).
        address: String,
        /// What went wrong.
        #[source]
        source: redis::RedisError,
    },
    /// The server did not answer in time.
    #[error("Redis at {address} did not answer within {timeout:?}")]
    Timeout {
        /// The server's address (without credentials).
        address: String,
        /// How long it was given.
        timeout: Duration,
    },
}

impl RedisStore {
    /// Starts a builder for a store on the server at `url` (`redis://host:port/db`, with
    /// `rediss://` for TLS when `redis` is built with it).
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            prefix: "seawall:rate:".to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }

    /// Connects to the server at `url` with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<RedisStore, RedisError> {
        RedisStore::builder(url).connect().await
    }

    /// The server's address.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl RedisBuilder {
    /// What every key's name starts with (default `"seawall:rate:"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest the connection waits for an answer (default 1 s; the limiter's own
    /// [`store_timeout`](super::FleetBuilder::store_timeout), shorter, applies first).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects, and loads the script, so that a server that is unreachable or refuses scripts
    /// is an error now rather than on the first call.
    pub async fn connect(self) -> Result<RedisStore, RedisError> {
        let client = Client::open(self.url.as_str()).map_err(RedisError::Url)?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let unreachable = |source| RedisError::Unreachable {
            address: address.clone(),
            source,
        };
        let connect = async {
            let mut connection = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(unreachable)?;
            SCRIPT
                .prepare_invoke()
                .load_async(&mut connection)
                .await
                .map_err(unreachable)?;
            Ok(connection)
        };
        // Connecting and loading: two round trips, each within the connect timeout.
        let limit = self.connect_timeout.saturating_mul(2);
        let connection =
            tokio::time::timeout(limit, connect)
                .await
                .map_err(|_| RedisError::Timeout {
                    address: address.clone(),
                    timeout: limit,
                })??;
        Ok(RedisStore {
            connection,
            prefix: self.prefix.into(),
            address: address.into(),
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The response future of [`RedisStore`]: one script call.
pub type RedisFuture = Pin<Box<dyn Future<Output = Result<Grant, BoxError>> + Send>>;

impl Service<Take> for RedisStore {
    type Response = Grant;
    type Error = BoxError;
    type Future = RedisFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, take: Take) -> RedisFuture {
        let mut connection = self.connection.clone();
        let key = format!("{}{}", self.prefix, take.key);
        // Whole microseconds, rounded up, so that the store never lets more through than the
        // quota.
        let interval = take.quota.interval_nanos().div_ceil(1_000);
        let tolerance = interval.saturating_mul(take.quota.burst_size().into());
        let want = take.want.max(1);
        let max_wait = crate::sync::nanos(take.max_wait) / 1_000;
        Box::pin(async move {
            let (granted, wait): (u32, u64) = SCRIPT
                .key(key)
                .arg(interval)
                .arg(tolerance)
                .arg(want)
                .arg(max_wait)
                .invoke_async(&mut connection)
                .await?;
            Ok(Grant {
                granted,
                wait: Duration::from_micros(wait),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_hides_the_credentials_in_its_url() {
        let shown = format!(
            "{:?}",
            RedisStore::builder("redis://:hunter2@10.0.0.1:6379/2")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("10.0.0.1:6379"), "{shown}");
        for (url, address) in [
            ("redis://127.0.0.1:6379", "127.0.0.1:6379"),
            ("redis://user:pw@host:1/0?x=@y", "host:1"),
            (
                "unix:///tmp/redis.sock?pass=hunter2&user=u",
                "/tmp/redis.sock",
            ),
            (
                "redis+unix:///tmp/redis.sock?pass=hunter2",
                "/tmp/redis.sock",
            ),
            ("no scheme:hunter2@host", "<not a Redis URL>"),
            // The URL parser drops tabs, as the client that connects does.
            ("redis:/\t/u:hunter2@h", "h:6379"),
        ] {
            assert_eq!(redacted(url), address, "{url}");
        }
    }
}
