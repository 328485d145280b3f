//! HTTP support: [`HttpClassifier`], and `Retry-After` and `X-RateLimit-Reset` parsing.

use crate::core::{Classify, Outcome};
use crate::error::ErrorKind;
use http::{header, HeaderValue, Response, StatusCode};
use std::time::{Duration, SystemTime};

const FIRST: u16 = 400;
const LAST: u16 = 599;

/// A set of status codes from 400 to 599.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct StatusSet([u64; 4]);

impl StatusSet {
    fn slot(code: u16) -> Option<(usize, u64)> {
        (FIRST..=LAST)
            .contains(&code)
            .then(|| (((code - FIRST) / 64) as usize, 1 << ((code - FIRST) % 64)))
    }

    fn contains(&self, code: u16) -> bool {
        Self::slot(code).is_some_and(|(i, bit)| self.0[i] & bit != 0)
    }

    fn set(&mut self, code: u16, on: bool) {
        if let Some((i, bit)) = Self::slot(code) {
            if on {
                self.0[i] |= bit
            } else {
                self.0[i] &= !bit
            }
        }
    }
}

/// Classifies `Result<http::Response<B>, E>` for HTTP clients and servers.
///
/// By default every `Err` (transport errors, timeouts) is a failure, and so are responses with a 5xx
/// status, 408 Request Timeout and 429 Too Many Requests; everything else is a success. Codes from 400
/// to 599 can be moved between failure, success and ignored.
///
/// For failed 429 and 503 responses it reads the `Retry-After` header (both delta-seconds and
/// HTTP-date), or failing that `X-RateLimit-Reset` (see [`parse_rate_limit_reset`]): the hint a
/// breaker built with
/// [`honour_retry_after`](crate::circuit_breaker::Builder::honour_retry_after) and the retry
/// layer obey.
///
/// ```
/// use http::{Response, StatusCode};
/// use seawall::core::{Classify, Outcome};
/// use seawall::http::HttpClassifier;
///
/// let classify = HttpClassifier::default()
///     .ignore(StatusCode::NOT_FOUND)
///     .success(StatusCode::NOT_IMPLEMENTED);
///
/// let answer = |code: u16| -> Result<Response<()>, std::io::Error> {
///     Ok(Response::builder().status(code).body(()).unwrap())
/// };
/// assert_eq!(classify.classify(&answer(503)), Outcome::Failure);
/// assert_eq!(classify.classify(&answer(429)), Outcome::Failure);
/// assert_eq!(classify.classify(&answer(404)), Outcome::Ignored);
/// assert_eq!(classify.classify(&answer(501)), Outcome::Success);
/// assert_eq!(classify.classify(&answer(200)), Outcome::Success);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpClassifier {
    failures: StatusSet,
    ignored: StatusSet,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        let mut failures = StatusSet::default();
        for code in 500..=LAST {
            failures.set(code, true);
        }
        failures.set(408, true);
        failures.set(429, true);
        HttpClassifier {
            failures,
            ignored: StatusSet::default(),
        }
    }
}

impl HttpClassifier {
    /// The classifier for retries: only 408, 429, 500, 502, 503 and 504, and every `Err`, are
    /// failures (worth retrying); other 4xx and 5xx responses are ignored (returned as they are,
    /// and never counted as successes). What [`RetryLayer`](crate::retry::RetryLayer)'s HTTP
    /// settings use. A 500 is retried as Envoy's `5xx` and .NET's standard resilience handler do:
    /// the HTTP retry policy only retries idempotent requests, which a second try cannot harm;
    /// `.success(StatusCode::INTERNAL_SERVER_ERROR)` or `.ignore(..)` turns that off.
    ///
    /// ```
    /// use http::Response;
    /// use seawall::core::{Classify, Outcome};
    /// use seawall::http::HttpClassifier;
    ///
    /// let classify = HttpClassifier::retryable();
    /// let answer = |code: u16| -> Result<Response<()>, std::io::Error> {
    ///     Ok(Response::builder().status(code).body(()).unwrap())
    /// };
    /// assert_eq!(classify.classify(&answer(503)), Outcome::Failure);
    /// assert_eq!(classify.classify(&answer(500)), Outcome::Failure);
    /// assert_eq!(classify.classify(&answer(501)), Outcome::Ignored);
    /// assert_eq!(classify.classify(&answer(200)), Outcome::Success);
    /// ```
    pub fn retryable() -> Self {
        let mut classify = HttpClassifier {
            failures: StatusSet::default(),
            ignored: StatusSet::default(),
        };
        for code in FIRST..=LAST {
            classify.ignored.set(code, true);
        }
        for code in [408, 429, 500, 502, 503, 504] {
            classify = classify.failure(StatusCode::from_u16(code).expect("a valid status"));
        }
        classify
    }

    /// Counts `status` as a failure (only codes from 400 to 599 can be).
    pub fn failure(mut self, status: StatusCode) -> Self {
        self.failures.set(status.as_u16(), true);
        self.ignored.set(status.as_u16(), false);
        self
    }

    /// Counts `status` as a success.
    pub fn success(mut self, status: StatusCode) -> Self {
        self.failures.set(status.as_u16(), false);
        self.ignored.set(status.as_u16(), false);
        self
    }

    /// Leaves `status` out of every count (only codes from 400 to 599 can be).
    pub fn ignore(mut self, status: StatusCode) -> Self {
        self.failures.set(status.as_u16(), false);
        self.ignored.set(status.as_u16(), true);
        self
    }

    /// The outcome of a response with this status.
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        let code = status.as_u16();
        if self.failures.contains(code) {
            Outcome::Failure
        } else if self.ignored.contains(code) {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => self.classify_status(response.status()),
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        let response = result.as_ref().ok()?;
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                let headers = response.headers();
                let now = SystemTime::now();
                match headers.get(header::RETRY_AFTER) {
                    Some(value) => parse_retry_after(value, now),
                    None => parse_rate_limit_reset(headers.get(X_RATELIMIT_RESET)?, now),
                }
            }
            _ => None,
        }
    }
}

/// The `X-RateLimit-Reset` header's name.
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// Seconds since the Unix epoch from which an `X-RateLimit-Reset` value is read as an instant
/// rather than a number of seconds to wait: 2001-09-09, more seconds than any sensible wait.
const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;

/// Parses an `X-RateLimit-Reset` value: how long until a rate limit's window resets.
///
/// The header is not standard and comes in two forms: seconds to wait (the IETF RateLimit
/// drafts, many APIs) and the reset instant in seconds since the Unix epoch (GitHub, Twitter). A
/// value of at least 1,000,000,000 is read as an instant, measured from `now` (zero if past);
/// anything smaller as seconds to wait. Only ASCII digits are accepted; anything else is `None`.
///
/// ```
/// use http::HeaderValue;
/// use seawall::http::parse_rate_limit_reset;
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let parse = |v: &'static str| parse_rate_limit_reset(&HeaderValue::from_static(v), now);
/// assert_eq!(parse("30"), Some(Duration::from_secs(30)));
/// assert_eq!(parse("1700000042"), Some(Duration::from_secs(42)));
/// assert_eq!(parse("1600000000"), Some(Duration::ZERO));
/// assert_eq!(parse("3.5"), None);
/// ```
pub fn parse_rate_limit_reset(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = text.parse::<u64>().ok()?;
    if seconds < EPOCH_SECONDS_FROM {
        return Some(Duration::from_secs(seconds));
    }
    let at = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a `Retry-After` value (RFC 9110, 10.2.3): delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), the latter measured from `now`.
///
/// Returns `None` for anything malformed (signs, spaces inside, fractions, non-ASCII, more seconds
/// than a `u64` holds, dates that do not parse). A date in the past means no wait: `Some(ZERO)`.
///
/// ```
/// use http::HeaderValue;
/// use seawall::http::parse_retry_after;
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_400); // Wed, 21 Oct 2015 07:26:40 GMT
/// let parse = |v: &'static str| parse_retry_after(&HeaderValue::from_static(v), now);
/// assert_eq!(parse("120"), Some(Duration::from_secs(120)));
/// assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::from_secs(80)));
/// assert_eq!(parse("-1"), None);
/// assert_eq!(parse("soon"), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The HTTP status a server answers a seawall rejection of kind `kind` with: 503 for an open
/// breaker, a full bulkhead or limiter, overload and throttling, a pool without a healthy endpoint; 429 for a rate limit; 504 for a
/// timeout; 400 for a malformed deadline header. `seawall::axum` (feature `axum`) builds whole
/// responses from it; this is for servers on hyper or another framework.
///
/// ```
/// use http::StatusCode;
/// use seawall::error::ErrorKind;
///
/// assert_eq!(seawall::http::status(ErrorKind::RateLimited), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(seawall::http::status(ErrorKind::TimedOut), StatusCode::GATEWAY_TIMEOUT);
/// ```
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::InvalidDeadline => StatusCode::BAD_REQUEST,
        ErrorKind::CircuitOpen
        | ErrorKind::BulkheadFull
        | ErrorKind::Overloaded
        | ErrorKind::Throttled
        | ErrorKind::RetryBudgetExhausted
        | ErrorKind::NoHealthyEndpoint
        | ErrorKind::EndpointUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}
