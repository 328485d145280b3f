//! Tests of the retry layer, its backoff and its budgets. Time is tokio's paused clock.
#![cfg(feature = "retry")]

#[path = "../support/mod.rs"]
mod support;

mod backoff;
mod budget;
#[cfg(feature = "http")]
mod buffered;
mod config;
#[cfg(feature = "http")]
mod grpc;
#[cfg(feature = "http")]
mod http;
#[cfg(all(feature = "circuit-breaker", feature = "http"))]
mod integration;
mod layer;
