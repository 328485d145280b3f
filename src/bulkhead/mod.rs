//! A bulkhead: at most a fixed number of calls at once, so that one slow dependency cannot take all
//! of a service's capacity, with a bounded queue for the callers that find it full.
//!
//! [`BulkheadLayer`] admits a call when a slot is free. When every slot is taken, the call either
//! fails at once with [`error::Full`] (the default, as resilience4j's), or waits in a queue of
//! bounded length, for at most [`max_wait`](Builder::max_wait), served in FIFO order or LIFO order
//! (under overload LIFO serves the freshest callers, whose clients are still waiting). A call that
//! finds the queue full, or waits too long, fails with `Full`, which says which.
//!
//! # Controlled delay and adaptive LIFO
//!
//! A queue absorbs bursts, but a queue that never empties only adds its wait to every call. The
//! queue of Facebook's "Fail at Scale" (Maurer, ACM Queue 2015) tells the two apart by whether it
//! has been empty lately:
//!
//! - [`codel`](Builder::codel) ([`Codel`], default target 5 ms, interval 100 ms): while the queue
//!   has been empty at some moment within the last interval, a queued caller may wait up to the
//!   interval; once it has not (it stands), a caller that has waited past the target is turned
//!   away, even one that joined while the queue was young, and is never handed a slot. `max_wait`
//!   caps every wait, and a caller whose time is up fails with `Full` (`waited_too_long`; a server
//!   answers 503), never with a timeout.
//! - [`Order::Adaptive`]: FIFO while the queue has been empty within the interval (a burst, served
//!   fairly), LIFO while it has not (overload: the freshest callers, whose clients are still
//!   waiting, are served, and the oldest give up). It uses codel's interval, or 100 ms without
//!   codel.
//!
//! A queue of some length with both absorbs a burst of up to about `interval` of work, and under
//! sustained overload turns surplus callers away within the target.
//!
//! # Deadlines
//!
//! By default the wait happens in `poll_ready`, before the request exists, so a
//! [`Deadline`](crate::core::Deadline) the request carries cannot shorten it: the waits above
//! bound it instead. Built with [`honour_deadlines`](Builder::honour_deadlines), the bulkhead
//! decides in `call`, where the request is known, and its services are [`DeadlineBulkhead`]s: a
//! call that must queue waits in its response future for at most the least of controlled delay's
//! wait, `max_wait` and the time left to its deadline, and then fails with `Full`, never a
//! timeout; a request that must queue and whose deadline has passed is refused at once, taking no
//! place (one that finds a slot free is made, its deadline unread: no clock read). The service
//! beneath must then be `Clone` (a call that queued is made on a clone, made ready once it has its
//! slot), and the requests [`DeadlineCarrier`](crate::core::DeadlineCarrier)s (`http::Request`
//! is, with feature `http`). The adaptive limiter has the same mode
//! ([`AdaptiveLimitBuilder::honour_deadlines`](crate::limit::AdaptiveLimitBuilder::honour_deadlines),
//! feature `limit`).
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
//! length), and completion one atomic addition; no allocation, no clock read, whatever the queue's
//! settings. Only callers that must wait take the queue's lock, read the clock once and allocate
//! their place in it; a slot given to a queued caller reads the clock once more under adaptive
//! LIFO. Honouring deadlines adds the look-up of the request's deadline, and a clock read when it
//! carries one; a call that queues then also clones the service beneath and boxes its wait.
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
//!
//! With a controlled-delay, adaptive-LIFO queue, in a `ServiceBuilder`:
//!
//! ```
//! use seawall::bulkhead::{error::Full, BulkheadLayer, Codel, Order};
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let bulkhead = BulkheadLayer::builder()
//!     .max_concurrent(1)
//!     .queue(32)
//!     .codel(Codel::default()) // 5 ms under overload, 100 ms otherwise
//!     .order(Order::Adaptive)
//!     .build()
//!     .unwrap();
//! let mut service = ServiceBuilder::new()
//!     .layer(bulkhead)
//!     .service(service_fn(|_: ()| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, std::io::Error>("done")
//!     }));
//! let slow = service.ready().await.unwrap().call(()); // holds the only slot for a second
//! // The queue was empty: this caller may wait up to the interval, then gives up with `Full`.
//! let err = service.clone().oneshot(()).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<Full>().unwrap().waited(), Duration::from_millis(100));
//! # drop(slow);
//! # }
//! ```

pub(crate) mod config;
pub(crate) mod deadline;
pub mod error;
mod handle;
mod layer;
mod state;

pub use config::{Builder, ConfigError, MAX_CONCURRENT};
pub use deadline::{DeadlineBulkhead, DeadlineFuture, QueueGate};
pub use handle::Handle;
pub use layer::{BulkheadLayer, BulkheadService};
pub use state::{Bulkhead, Codel, Order, Waiter};
