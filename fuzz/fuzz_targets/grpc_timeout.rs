//! `grpc-timeout`: never a panic or an overflow; what parses is at most 99,999,999 hours, reads
//! the same from a header, and survives being written back: the value written reads as at most
//! the original and within one unit of the written form below it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall::grpc::{format_grpc_timeout, parse_grpc_timeout, parse_grpc_timeout_header};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_grpc_timeout(text);
    if let Ok(value) = http::HeaderValue::from_str(text) {
        // The same answer from a header (an error may name another cause: a header that is not
        // ASCII is refused as such before its unit is looked at).
        let from_header = parse_grpc_timeout_header(&value);
        assert_eq!(from_header.as_ref().ok(), parsed.as_ref().ok());
    }
    let Ok(timeout) = parsed else {
        return;
    };
    assert!(timeout <= Duration::from_secs(99_999_999 * 3600));
    let written = format_grpc_timeout(timeout);
    let again = parse_grpc_timeout(&written).expect("what we write parses");
    assert!(
        again <= timeout,
        "{written} reads {again:?}, more than {timeout:?}"
    );
    // Rounded down to the finest unit whose count fits in eight digits: less than 1/10^7 of the
    // value (plus a nanosecond) is lost.
    let lost = timeout - again;
    assert!(
        lost.as_nanos() * 10_000_000 <= timeout.as_nanos() + 10_000_000,
        "{written} loses {lost:?} of {timeout:?}"
    );
});
