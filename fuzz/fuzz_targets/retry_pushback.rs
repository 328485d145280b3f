//! `grpc-retry-pushback-ms`: never a panic; decimal milliseconds are a wait, anything else (a
//! negative or malformed value) means "do not retry", as gRPC's retry design says.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use seawall::grpc::{parse_retry_pushback, Pushback};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some(value) = common::header(data) else {
        return;
    };
    let parsed = parse_retry_pushback(&value);
    match common::digits(&value) {
        Some(Ok(ms)) => assert_eq!(parsed, Pushback::After(Duration::from_millis(ms))),
        _ => assert_eq!(parsed, Pushback::DoNotRetry),
    }
});
