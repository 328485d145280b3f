//! gRPC support: the `grpc-timeout` header, read and written strictly; the `grpc-status` and
//! `grpc-retry-pushback-ms` headers; and [`GrpcClassifier`].
//!
//! A gRPC client says how long it will wait in `grpc-timeout`: one to eight ASCII digits followed by
//! a unit, `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
//! (nanoseconds), as the gRPC over HTTP/2 specification defines it. [`parse_grpc_timeout`] accepts
//! exactly that and rejects everything else with a [`GrpcTimeoutError`] that says what is wrong;
//! [`format_grpc_timeout`] writes a duration in the finest unit that fits, never rounding up, so a
//! callee is never told it has more time than the caller does.

use crate::core::{Classify, Outcome};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
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

/// The `grpc-status` header's name.
pub const GRPC_STATUS: &str = "grpc-status";

/// The `grpc-retry-pushback-ms` header's name.
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// gRPC status codes, by their number.
pub mod code {
    /// The call succeeded.
    pub const OK: u32 = 0;
    /// The call was cancelled.
    pub const CANCELLED: u32 = 1;
    /// An error the server could not classify.
    pub const UNKNOWN: u32 = 2;
    /// The client sent an invalid argument.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// The deadline passed before the call finished.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// Something was not found.
    pub const NOT_FOUND: u32 = 5;
    /// The caller may not do this.
    pub const PERMISSION_DENIED: u32 = 7;
    /// A resource, such as a quota or the server's capacity, is exhausted.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// The method is not implemented, or not served here.
    pub const UNIMPLEMENTED: u32 = 12;
    /// An internal error.
    pub const INTERNAL: u32 = 13;
    /// The service is unavailable, most likely for a short while: the code to retry.
    pub const UNAVAILABLE: u32 = 14;
    /// Data was lost or corrupted.
    pub const DATA_LOSS: u32 = 15;
    /// The caller's credentials are missing or not valid.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The gRPC status code of a response that came back with HTTP status `status` and no gRPC status
/// of its own (from a proxy, a load balancer or an authentication gateway in front of the server),
/// as gRPC's mapping says: 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404
/// UNIMPLEMENTED, 429, 502, 503 and 504 UNAVAILABLE, anything else UNKNOWN; 200 is OK.
///
/// ```
/// use http::StatusCode;
/// use seawall::grpc::{code, code_of_http_status};
///
/// assert_eq!(code_of_http_status(StatusCode::UNAUTHORIZED), code::UNAUTHENTICATED);
/// assert_eq!(code_of_http_status(StatusCode::SERVICE_UNAVAILABLE), code::UNAVAILABLE);
/// assert_eq!(code_of_http_status(StatusCode::INTERNAL_SERVER_ERROR), code::UNKNOWN);
/// ```
pub fn code_of_http_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        200 => code::OK,
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// The `grpc-status` a response carries in its headers (a "trailers-only" response, which is how
/// servers answer calls that fail before any message), if any and well formed. A status sent in the
/// trailers, after the body, cannot be seen by a layer that does not read the body.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// What a server said with `grpc-retry-pushback-ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// Retry no sooner than this.
    After(Duration),
    /// Do not retry: the value was negative or could not be read (the gRPC retry design, A6).
    DoNotRetry,
}

/// Reads a `grpc-retry-pushback-ms` value: a non-negative number of milliseconds, ASCII digits
/// only, between optional spaces and tabs (which are not part of a field's value, as for
/// `Retry-After`). Anything else, a negative value included, means do not retry.
///
/// ```
/// use http::HeaderValue;
/// use seawall::grpc::{parse_retry_pushback, Pushback};
/// use std::time::Duration;
///
/// let parse = |v: &'static str| parse_retry_pushback(&HeaderValue::from_static(v));
/// assert_eq!(parse("250"), Pushback::After(Duration::from_millis(250)));
/// assert_eq!(parse(" 250\t"), Pushback::After(Duration::from_millis(250)));
/// assert_eq!(parse("-1"), Pushback::DoNotRetry);
/// assert_eq!(parse("soon"), Pushback::DoNotRetry);
/// ```
pub fn parse_retry_pushback(value: &HeaderValue) -> Pushback {
    let Ok(text) = value.to_str() else {
        return Pushback::DoNotRetry;
    };
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Pushback::DoNotRetry;
    }
    match text.parse::<u64>() {
        Ok(ms) => Pushback::After(Duration::from_millis(ms)),
        Err(_) => Pushback::DoNotRetry,
    }
}

/// The pushback a response carries, if it carries one.
pub fn retry_pushback(headers: &HeaderMap) -> Option<Pushback> {
    headers
        .get(GRPC_RETRY_PUSHBACK_MS)
        .map(parse_retry_pushback)
}

/// Classifies gRPC calls, `Result<http::Response<B>, E>`, from the `grpc-status` of trailers-only
/// responses.
///
/// By default every `Err` is a failure, and so are the codes UNKNOWN, DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE and DATA_LOSS: what says the server is in trouble, for
/// a circuit breaker. Other codes say the call was wrong, not the server, and are successes; so is a
/// response without `grpc-status` in its headers (its status comes in the trailers). A response
/// whose HTTP status is not 200 is classified by the code gRPC maps it to
/// ([`code_of_http_status`]): an expired token answered 401 by an authentication proxy is
/// UNAUTHENTICATED, the caller's mistake, and trips no breaker; a 503 from a load balancer is
/// UNAVAILABLE. [`GrpcClassifier::retryable`] is the classifier for retries. A
/// `grpc-retry-pushback-ms` is read as the server's hint.
///
/// ```
/// use http::Response;
/// use seawall::core::{Classify, Outcome};
/// use seawall::grpc::GrpcClassifier;
///
/// let status = |code: &str| -> Result<Response<()>, std::io::Error> {
///     Ok(Response::builder().header("grpc-status", code).body(()).unwrap())
/// };
/// let classify = GrpcClassifier::default();
/// assert_eq!(classify.classify(&status("14")), Outcome::Failure);
/// assert_eq!(classify.classify(&status("5")), Outcome::Success);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcClassifier {
    failures: u32,
    ignored: u32,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        let failures = [
            code::UNKNOWN,
            code::DEADLINE_EXCEEDED,
            code::RESOURCE_EXHAUSTED,
            code::INTERNAL,
            code::UNAVAILABLE,
            code::DATA_LOSS,
        ]
        .iter()
        .fold(0, |set, code| set | 1 << code);
        GrpcClassifier {
            failures,
            ignored: 0,
        }
    }
}

impl GrpcClassifier {
    /// The classifier for retries: UNAVAILABLE and RESOURCE_EXHAUSTED are failures, and so are
    /// `Err`s and the HTTP statuses gRPC maps to UNAVAILABLE (429, 502, 503, 504); every other
    /// error code (401 and 403 included) is ignored (returned as it is). [`GrpcPolicy`](crate::retry::grpc::GrpcPolicy) then retries RESOURCE_EXHAUSTED only
    /// when the server sent a pushback.
    pub fn retryable() -> Self {
        let all_errors = (1u32 << 17) - 2; // codes 1 to 16
        let failures = 1 << code::UNAVAILABLE | 1 << code::RESOURCE_EXHAUSTED;
        GrpcClassifier {
            failures,
            ignored: all_errors & !failures,
        }
    }

    /// Counts `code` as a failure.
    pub fn failure(mut self, code: u32) -> Self {
        if code < 32 {
            self.failures |= 1 << code;
            self.ignored &= !(1 << code);
        }
        self
    }

    /// Counts `code` as a success.
    pub fn success(mut self, code: u32) -> Self {
        if code < 32 {
            self.failures &= !(1 << code);
            self.ignored &= !(1 << code);
        }
        self
    }

    /// Leaves `code` out of every count.
    pub fn ignore(mut self, code: u32) -> Self {
        if code < 32 {
            self.failures &= !(1 << code);
            self.ignored |= 1 << code;
        }
        self
    }

    /// The outcome of a response with this gRPC status code.
    pub fn classify_code(&self, code: u32) -> Outcome {
        let bit = 1u32.checked_shl(code).unwrap_or(0);
        if self.failures & bit != 0 {
            Outcome::Failure
        } else if self.ignored & bit != 0 {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl<B, E> Classify<Response<B>, E> for GrpcClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(response) if response.status() != StatusCode::OK => {
                self.classify_code(code_of_http_status(response.status()))
            }
            Ok(response) => match grpc_status(response.headers()) {
                Some(code) => self.classify_code(code),
                None => Outcome::Success,
            },
        }
    }

    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        match retry_pushback(result.as_ref().ok()?.headers())? {
            Pushback::After(delay) => Some(delay),
            Pushback::DoNotRetry => None,
        }
    }
}
