//! gRPC support: the `grpc-timeout` header, read and written strictly.
//!
//! A gRPC client says how long it will wait in `grpc-timeout`: one to eight ASCII digits followed by
//! a unit, `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
//! (nanoseconds), as the gRPC over HTTP/2 specification defines it. [`parse_grpc_timeout`] accepts
//! exactly that and rejects everything else with a [`GrpcTimeoutError`] that says what is wrong;
//! [`format_grpc_timeout`] writes a duration in the finest unit that fits, never rounding up, so a
//! callee is never told it has more time than the caller does.

use http::HeaderValue;
use std::time::Duration;

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The most digits a `grpc-timeout` value may have.
pub const MAX_DIGITS: usize = 8;

/// Why a `grpc-timeout` value was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcTimeoutError {
    /// The value is empty.
    #[error("grpc-timeout is empty")]
    Empty,
    /// The value is not visible ASCII.
    #[error("grpc-timeout is not ASCII")]
    NotAscii,
    /// There are no digits before the unit.
    #[error("grpc-timeout has no digits before its unit")]
    NoDigits,
    /// There are more than eight digits.
    #[error("grpc-timeout has {0} digits; at most 8 are allowed")]
    TooManyDigits(usize),
    /// Something other than a digit comes before the unit (a sign, a space, a point).
    #[error("grpc-timeout has {0:?} where a digit belongs")]
    NotADigit(char),
    /// The last character is not one of `H`, `M`, `S`, `m`, `u`, `n`.
    #[error("grpc-timeout unit {0:?} is not one of H, M, S, m, u, n")]
    UnknownUnit(char),
}

/// Units from the coarsest to the finest, with their length in nanoseconds.
const UNITS: [(char, u64); 6] = [
    ('H', 3_600_000_000_000),
    ('M', 60_000_000_000),
    ('S', 1_000_000_000),
    ('m', 1_000_000),
    ('u', 1_000),
    ('n', 1),
];

/// Parses a `grpc-timeout` value.
///
/// ```
/// use seawall::grpc::{parse_grpc_timeout, GrpcTimeoutError};
/// use std::time::Duration;
///
/// assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout("99999999H").unwrap().as_secs(), 99_999_999 * 3600);
/// assert_eq!(parse_grpc_timeout("1s"), Err(GrpcTimeoutError::UnknownUnit('s')));
/// assert_eq!(parse_grpc_timeout("-5S"), Err(GrpcTimeoutError::NotADigit('-')));
/// assert_eq!(parse_grpc_timeout("123456789n"), Err(GrpcTimeoutError::TooManyDigits(9)));
/// ```
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, GrpcTimeoutError> {
    let last = value.chars().next_back().ok_or(GrpcTimeoutError::Empty)?;
    let (_, unit_nanos) = UNITS
        .iter()
        .find(|(unit, _)| *unit == last)
        .ok_or(GrpcTimeoutError::UnknownUnit(last))?;
    let digits = &value[..value.len() - last.len_utf8()];
    if digits.is_empty() {
        return Err(GrpcTimeoutError::NoDigits);
    }
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(GrpcTimeoutError::NotADigit(bad));
    }
    if digits.len() > MAX_DIGITS {
        return Err(GrpcTimeoutError::TooManyDigits(digits.len()));
    }
    // At most 99,999,999 hours: about 3.6e20 ns, too many for a u64 of nanoseconds but well within
    // a u128 and within a Duration.
    let amount = digits
        .bytes()
        .fold(0u128, |n, digit| n * 10 + (digit - b'0') as u128);
    let nanos = amount * *unit_nanos as u128;
    Ok(Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ))
}

/// Parses a `grpc-timeout` header value (see [`parse_grpc_timeout`]).
pub fn parse_grpc_timeout_header(value: &HeaderValue) -> Result<Duration, GrpcTimeoutError> {
    parse_grpc_timeout(value.to_str().map_err(|_| GrpcTimeoutError::NotAscii)?)
}

/// Writes `timeout` as a `grpc-timeout` value: the finest unit whose count fits in eight digits,
/// rounded down. Anything over 99,999,999 hours is written as that.
///
/// ```
/// use seawall::grpc::format_grpc_timeout;
/// use std::time::Duration;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(1500)), "1500000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600 * 24)), "86400000m");
/// assert_eq!(format_grpc_timeout(Duration::ZERO), "0n");
/// ```
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let (unit, count) = UNITS
        .iter()
        .rev()
        .map(|(unit, len)| (*unit, nanos / *len as u128))
        .find(|(_, count)| *count <= MAX)
        .unwrap_or(('H', MAX));
    format!("{count}{unit}")
}

/// Writes `timeout` as a `grpc-timeout` header value.
pub fn grpc_timeout_header(timeout: Duration) -> HeaderValue {
    HeaderValue::try_from(format_grpc_timeout(timeout)).expect("digits and a unit letter")
}
