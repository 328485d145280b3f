//! HTTP support: [`HttpClassifier`] and `Retry-After` parsing.

use crate::core::{Classify, Outcome};
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
/// HTTP-date), which a breaker built with
/// [`honor_retry_after`](crate::circuit_breaker::Builder::honor_retry_after) obeys.
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
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => parse_retry_after(
                response.headers().get(header::RETRY_AFTER)?,
                SystemTime::now(),
            ),
            _ => None,
        }
    }
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
