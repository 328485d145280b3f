//! Circuit breaker tests. Time is always tokio's paused clock.

#[path = "../support/mod.rs"]
mod support;

mod concurrency;
mod config;
mod handle;
#[cfg(feature = "http")]
mod integration;
mod keyed;
mod model;
mod observer;
mod rules;
