//! What the targets share: a clock reading and a header value taken from the fuzzer's bytes.
#![allow(dead_code)]

use http::HeaderValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest time an HTTP date can name: the end of year 9999.
pub const LAST_DATE: u64 = 253_402_300_799;

/// A `now` from the first eight bytes (any second up to year 9999), and the rest.
pub fn now_and_rest(data: &[u8]) -> (SystemTime, &[u8]) {
    let (head, rest) = data.split_at(data.len().min(8));
    let mut seconds = [0u8; 8];
    seconds[..head.len()].copy_from_slice(head);
    let now = UNIX_EPOCH + Duration::from_secs(u64::from_le_bytes(seconds) % LAST_DATE);
    (now, rest)
}

/// A `now` from the first eight bytes and a header value from the rest, if it can be one.
pub fn now_and_header(data: &[u8]) -> Option<(SystemTime, HeaderValue)> {
    let (now, rest) = now_and_rest(data);
    Some((now, header(rest)?))
}

/// The bytes as a header value, if they can be one.
pub fn header(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

/// The value as decimal digits only (between optional spaces and tabs, which HTTP does not count
/// as part of a field's value), parsed, if it is that.
pub fn digits(value: &HeaderValue) -> Option<Result<u64, std::num::ParseIntError>> {
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse())
}
