//! Back-pressure: [`LoadShedLayer`], which fails calls at once when the service beneath cannot take
//! them, instead of making them wait.
//!
//! [`AdaptiveLimitLayer`] limits concurrency to what the service beneath shows it can take: an
//! [`algorithm`] (AIMD, Gradient2, Vegas, or a fixed limit) moves the limit from the calls' round
//! trip times and failures, over the bulkhead's gate and queue. Client-side throttling and rate
//! limiting will live here too.

mod adaptive;
pub mod algorithm;
mod shed;

pub use adaptive::{
    Adaptive, AdaptiveHandle, AdaptiveLimit, AdaptiveLimitBuilder, AdaptiveLimitLayer,
    AdaptivePermit,
};
pub use shed::{error, LoadShed, LoadShedLayer, ResponseFuture};
