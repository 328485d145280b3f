//! Tests of the timeout layer, deadlines and their propagation.

#[path = "../support/mod.rs"]
mod support;

mod basic;
mod cancel;
#[cfg(feature = "http")]
mod deadline;
#[cfg(feature = "http")]
mod integration;
#[cfg(feature = "http")]
mod propagate;
