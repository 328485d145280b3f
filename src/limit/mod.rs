//! Back-pressure: [`LoadShedLayer`], which fails calls at once when the service beneath cannot take
//! them, instead of making them wait.
//!
//! [`algorithm`] holds the adaptive concurrency limit algorithms (AIMD, Gradient2, Vegas) that
//! the adaptive limiter will run; the limiter itself, client-side throttling and rate limiting will
//! live here too.

pub mod algorithm;
mod shed;

pub use shed::{error, LoadShed, LoadShedLayer, ResponseFuture};
