//! Back-pressure: [`LoadShedLayer`], which fails calls at once when the service beneath cannot take
//! them, instead of making them wait.
//!
//! Adaptive concurrency limits, client-side throttling and rate limiting will live here too.

mod shed;

pub use shed::{error, LoadShed, LoadShedLayer, ResponseFuture};
