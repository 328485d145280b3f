//! Tests of the back-pressure layers.
#![cfg(feature = "limit")]

#[path = "../support/mod.rs"]
mod support;

mod adaptive;
mod algorithm;
mod axum;
mod config;
mod rate;
mod shed;
mod throttle;
