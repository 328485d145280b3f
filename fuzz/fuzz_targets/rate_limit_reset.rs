//! `X-RateLimit-Reset`, seconds or a Unix time: never a panic; small numbers are seconds from
//! now, exactly.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use seawall::http::parse_rate_limit_reset;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((now, value)) = common::now_and_header(data) else {
        return;
    };
    let parsed = parse_rate_limit_reset(&value, now);
    if let Some(Ok(secs)) = common::digits(&value) {
        if secs < 1_000_000_000 {
            assert_eq!(parsed, Some(Duration::from_secs(secs)));
        }
    }
});
