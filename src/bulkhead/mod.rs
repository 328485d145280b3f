//! A bulkhead: at most a fixed number of calls at once, so that one slow dependency cannot take all
//! of a service's capacity, with a bounded queue for the callers that find it full.
//!
//! [`BulkheadLayer`] admits a call when a slot is free. When every slot is taken, the call either
//! fails at once with [`error::Full`] (the default, as resilience4j's), or waits in a queue of
//! bounded length, for at most [`max_wait`](Builder::max_wait), served in FIFO order or LIFO order
//! (under overload LIFO serves the freshest callers, whose clients are still waiting). A call that
//! finds the queue full, or waits too long, fails with `Full`, which says which.
//!
//! The slot is reserved in `poll_ready`, moves into the response future, and is given back when the
//! call completes, fails, or is dropped, and when a service holding an unused reservation is
//! dropped; a caller dropped while queued leaves the queue. A rejection is `Ready` and fails in the
//! future, so the layer works under axum. Every service the layer makes, and every clone of those,
//! shares one bulkhead, and a [`Handle`] reads it and changes its limit while it runs.
//!
//! # Cost
//!
//! Admission while a slot is free takes no lock: one atomic subtraction (and a read of the queue's
//! length), and completion one atomic addition; no allocation, no clock read. Only callers that must
//! wait take the queue's lock and allocate their place in it.
//!
//! # Examples
//!
//! ```
//! use seawall::bulkhead::{error::Full, BulkheadLayer};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bulkhead = BulkheadLayer::new(1);
//! let mut service = ServiceBuilder::new()
//!     .layer(bulkhead)
//!     .service(service_fn(|_: ()| async { Ok::<_, std::io::Error>("done") }));
//! let mut other = service.clone();
//! let first = service.ready().await.unwrap().call(()); // holds the only slot
//! let err = other.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(err.is::<Full>());
//! assert_eq!(first.await.unwrap(), "done");
//! # }
//! ```
//!
//! With a queue:
//!
//! ```
//! use seawall::bulkhead::{BulkheadLayer, Order};
//! use std::time::Duration;
//!
//! let layer = BulkheadLayer::builder()
//!     .max_concurrent(20)
//!     .queue(200)
//!     .max_wait(Duration::from_millis(100))
//!     .order(Order::Lifo)
//!     .build()
//!     .unwrap();
//! # drop(layer);
//! ```

pub(crate) mod config;
pub mod error;
mod handle;
mod layer;
mod state;

pub use config::{Builder, ConfigError, MAX_CONCURRENT};
pub use handle::Handle;
pub use layer::{BulkheadLayer, BulkheadService};
pub use state::{Bulkhead, Codel, Order, Waiter};
