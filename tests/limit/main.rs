//! Tests of the back-pressure layers.
#![cfg(feature = "limit")]

mod algorithm;
mod shed;
