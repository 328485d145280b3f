//! A response cache: [`CacheLayer`] answers a request from the answers it stored under the
//! request's key, and calls the inner service only when it has none worth serving.
//!
//! TODO: module docs.

pub mod error;
mod flight;
pub mod future;
mod layer;
mod store;

pub use error::{ConfigError, Shared};
pub use future::CacheFuture;
pub use layer::{Cache, CacheBuilder, CacheLayer, Given, Memory, Stats};
pub use store::{Entry, MemoryStore, Store};
