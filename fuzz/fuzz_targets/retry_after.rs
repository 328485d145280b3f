//! `Retry-After`, both forms: never a panic; a number of seconds reads as exactly that; a date
//! never gives a wait longer than from now to the last date the format can hold.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use seawall::http::parse_retry_after;
use std::time::{Duration, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    let Some((now, value)) = common::now_and_header(data) else {
        return;
    };
    let parsed = parse_retry_after(&value, now);
    match common::digits(&value) {
        Some(Ok(secs)) => assert_eq!(parsed, Some(Duration::from_secs(secs))),
        Some(Err(_)) => assert_eq!(parsed, None, "an overflowing number of seconds"),
        None => {
            if let Some(wait) = parsed {
                let last = UNIX_EPOCH + Duration::from_secs(common::LAST_DATE);
                let longest = last.duration_since(now).unwrap_or_default();
                assert!(wait <= longest, "{wait:?} from a date");
            }
        }
    }
});
