//! Bulkhead tests. Time is tokio's paused clock, except in the multi-thread cancellation storm.
#![cfg(feature = "bulkhead")]

#[path = "../support/mod.rs"]
mod support;

mod codel;
mod config;
mod deadline;
mod queue;
