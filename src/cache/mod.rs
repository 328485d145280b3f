//! A response cache: [`CacheLayer`] answers a request from the answers it stored under the
//! request's key, and calls the inner service only when it has none worth serving.
//!
//! - **Hits** are answered from the [`Store`] in `call`, at once: the inner service is neither
//!   polled nor called, nothing is written that another thread writes (the hit is counted on
//!   the calling thread's own counters; only a key's first hit on a thread after an eviction
//!   also shows it to quick_cache, which counts it), nothing is allocated beyond the stored value's clone
//!   (store an `Arc` or `Bytes` value to keep that cheap) once a thread has made its first
//!   hit (which allocates its counters and its near copies). A repeated hit on a thread takes
//!   no lock either ([`MemoryStore`] keeps near copies per thread), and a fresh hit far from
//!   its expiry reads no clock: one thread per process (`seawall-clock`, which never exits)
//!   reads the time every 10 ms, and a hit takes the time to be at most 250 ms after that
//!   reading, reading the real clock only when the answer's freshness (or early refresh) could
//!   end before then, or to set an `Age`. A layer uses the reading only once a miss has run on
//!   a multi-thread tokio runtime, and never once a miss finds tokio's clock away from the
//!   system's: under paused time (tests) every hit reads the clock and `tokio::time::advance`
//!   is seen at once.
//! - **Readiness**: [`Cache`] is always ready. A miss clones the inner service into its future
//!   and waits there for that clone to be ready, so back-pressure from beneath applies to misses
//!   only; the inner service must be `Clone` (wrap it in `tower::buffer::Buffer` if it is not).
//! - **Single-flight**: concurrent misses for one key make one inner call; the others wait and
//!   get a clone of its outcome (an error as [`Shared`]). An error is not cached unless negative
//!   caching is on. A caller whose call is dropped first hands it to a waiter, which calls with
//!   its own request.
//! - **Freshness**: an answer is fresh for [`ttl`](CacheBuilder::ttl); then, for
//!   [`stale_while_revalidate`](CacheBuilder::stale_while_revalidate), served at once while one
//!   background refresh per key runs (spawned on the current tokio runtime); and, for
//!   [`stale_if_error`](CacheBuilder::stale_if_error), served in place of a live call that fails
//!   as [`when`](CacheBuilder::when) and the classifier decide (an error, a timeout, a breaker's
//!   or a limiter's rejection, a failed response), the backend being asked again at most once per
//!   [`revalidate_interval`](CacheBuilder::revalidate_interval). Negative caching
//!   ([`negative_ttl`](CacheBuilder::negative_ttl)) is opt-in.
//! - **Early refresh** (XFetch, on by default with `beta` 1): a hit on a fresh answer refreshes
//!   it in the background with a probability that grows as expiry nears, scaled by how long the
//!   answer took to compute, so a hot key is recomputed about once per ttl and no caller waits
//!   on the recompute; while that refresh is in flight the answer is served even a little past
//!   its expiry.
//! - **Memory store**: [`MemoryStore`], over `quick_cache` (sharded, bounded in entries or in a
//!   weight of your own, scan-resistant eviction). Any [`Store`] can replace it.
//! - **HTTP** ([`CacheLayer::http`], feature `http`): each response's `Cache-Control` sets its
//!   freshness and stale windows (`s-maxage`, `max-age` less `Age`, `stale-while-revalidate`,
//!   `stale-if-error`); what is stored, evicted and to whom it is served is what fallback's
//!   [`HttpStore`](crate::fallback::HttpStore) decides; answers from the store carry `Age`, stale
//!   ones a [`StaleResponse`] extension (no `Warning`: RFC 9111
//!   obsoletes it). [`CacheControl`] is the parser.
//! - **Redis tier** ([`redis`], feature `redis`): [`RedisStore`](redis::RedisStore), a memory
//!   store in front of Redis shared by every instance of a service, with a fleet-wide lock per
//!   key, answers kept with their freshness, and a timeout and a breaker on Redis calls.
//! - **Handle and events**: [`CacheLayer::handle`] counts hits, misses, stale answers,
//!   refreshes, coalesced waiters and evictions ([`Stats`]); the observer receives
//!   `CacheHit`, `CacheMiss`, `CacheRefresh`, `CacheEvicted` and, for a stale answer in place
//!   of a failure, `FallbackUsed` ([`EventKind`](crate::core::EventKind)), which
//!   `seawall::metrics::MetricsObserver` exports as `seawall_cache_*` series.
//!
//! Key only on what makes an answer the same for everyone who may ask; a request whose key
//! function says `None` passes by the cache.
//!
//! # Example
//!
//! ```
//! use seawall::cache::CacheLayer;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // A catalog looked up by product id; answers are `Arc`s, cheap to clone on a hit.
//! let cache = CacheLayer::builder(|id: &u32| Some(*id))
//!     .ttl(Duration::from_secs(60))
//!     .stale_while_revalidate(Duration::from_secs(30))
//!     .stale_if_error(Duration::from_secs(300))
//!     .max_entries(50_000)
//!     .name("catalog")
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .layer(cache.clone())
//!     .service(service_fn(|id: u32| async move {
//!         Ok::<_, BoxError>(Arc::new(format!("product {id}")))
//!     }));
//! assert_eq!(*service.clone().oneshot(7).await?, "product 7");
//! // The second call is a hit: the backend is not asked.
//! assert_eq!(*service.oneshot(7).await?, "product 7");
//! assert_eq!(cache.handle().stats().misses, 1);
//! assert_eq!(cache.handle().stats().hits, 1);
//! # Ok(())
//! # }
//! ```

mod clock;
pub mod error;
mod flight;
pub mod future;
mod layer;
#[cfg(feature = "redis")]
pub mod redis;
mod store;

std::thread_local! {
    /// Up while a cache calls its inner service for a request it may not answer from its store.
    static THROUGH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes `call`, a cache's call to its inner service for a request it may not answer from its
/// store (with `http`, a `no-cache` request, or a keyed method other than `GET`), with a mark up
/// that a tier's fill beneath ([`redis::RedisFill`], called from within `call`) reads, so that
/// it does not answer such a request from its shared store either.
#[inline]
pub(crate) fn through<R>(call: impl FnOnce() -> R) -> R {
    struct Lower(bool);
    impl Drop for Lower {
        fn drop(&mut self) {
            THROUGH.with(|up| up.set(self.0));
        }
    }
    let _lower = Lower(THROUGH.with(|up| up.replace(true)));
    call()
}

/// Whether the call being made is one [`through`] marks.
#[cfg(feature = "redis")]
pub(crate) fn is_through() -> bool {
    THROUGH.with(std::cell::Cell::get)
}

#[cfg(feature = "http")]
pub use crate::fallback::{CacheControl, StaleResponse};
pub use error::{ConfigError, Shared};
pub use future::CacheFuture;
#[cfg(feature = "http")]
pub use layer::HttpCacheBuilder;
pub use layer::{Cache, CacheBuilder, CacheHandle, CacheLayer, Given, Memory, Stats};
pub use store::{Entry, MemoryStore, Store};

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::{is_through, through};

    #[test]
    fn the_through_mark_is_up_only_within_its_call_and_comes_down_on_a_panic() {
        assert!(!is_through());
        assert!(through(|| through(is_through) && is_through()));
        assert!(!is_through());
        let unwound = std::panic::catch_unwind(|| through(|| panic!("a call panics")));
        assert!(unwound.is_err());
        assert!(!is_through(), "left up by a panic");
    }
}
