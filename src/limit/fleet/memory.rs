//! The fleet store in this process's memory.

use super::{Grant, Take};
use crate::core::Source;
use crate::limit::rate::gcra::{self, Rule};
use crate::limit::rate::keyed::Table;
use crate::limit::rate::{Clock, TokioClock};
use std::fmt;
use std::sync::atomic::Ordering::Acquire;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Service};

/// A [`Store`](super::Store) in this process's memory: every key's GCRA cell in a table of
/// bounded size, as in [`KeyedRateLimitLayer`](crate::limit::rate::KeyedRateLimitLayer). Clones
/// share the store, so several limiters over clones of one `MemoryStore` behave as instances of
/// a fleet over one shared store. For tests, for a single instance, and as the reference a shared
/// store follows: [`RedisStore`](super::redis::RedisStore) runs the same algorithm in Redis.
///
/// ```
/// use seawall::limit::fleet::{MemoryStore, Take};
/// use seawall::limit::rate::Quota;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let take = Take::new("acme", 8, Quota::per_second(5));
/// let grant = store.clone().oneshot(take.clone()).await.unwrap();
/// assert_eq!(grant.granted, 5); // the whole burst, no more
/// let grant = store.oneshot(take).await.unwrap();
/// assert_eq!(grant.granted, 0);
/// assert_eq!(grant.wait, std::time::Duration::from_millis(200));
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Memory>,
}

struct Memory {
    table: Table,
    clock: TokioClock,
    source: Source<()>,
}

impl MemoryStore {
    /// A store with room for 100,000 keys.
    pub fn new() -> Self {
        MemoryStore::with_max_keys(100_000)
    }

    /// A store with room for `max_keys` keys (at least 1, at most 2^28: less or more is taken
    /// as the nearest bound, never a panic); when full, a new key takes the slot of an idle one.
    pub fn with_max_keys(max_keys: usize) -> Self {
        MemoryStore {
            shared: Arc::new(Memory {
                table: Table::new(max_keys.max(1)),
                clock: TokioClock::new(),
                source: Source::new("memory_store", ()),
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.shared.table.keys())
            .finish()
    }
}

impl Service<Take> for MemoryStore {
    type Response = Grant;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Grant, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, take: Take) -> Self::Future {
        let memory = &*self.shared;
        let now = memory.clock.now();
        let table = &memory.table;
        let place = table.locate(take.key.as_str());
        let (granted, wait) = loop {
            let index = table.entry(place, || now, memory.source.emitter());
            let slot = table.slot(index);
            // Taken only while the cell holds the key: a key that loses its cell meanwhile is
            // served from its new one, and never from another key's.
            if let Some(taken) = gcra::take(
                &slot.cell,
                now,
                Rule::parts(&take.quota),
                take.want.max(1).into(),
                crate::sync::nanos(take.max_wait),
                || slot.tag.load(Acquire) == place.tag,
            ) {
                break taken;
            }
        };
        std::future::ready(Ok(Grant {
            granted: granted as u32,
            wait: Duration::from_nanos(wait),
        }))
    }
}
