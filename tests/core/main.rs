//! Tests of the shared core: windows, classification, the generic gate.

#[path = "../support/mod.rs"]
mod support;

mod gate;
#[cfg(feature = "http")]
mod grpc;
#[cfg(feature = "http")]
mod http;
mod window;
