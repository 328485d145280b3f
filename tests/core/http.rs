//! HTTP classification and `Retry-After` parsing.

use http::{HeaderValue, Response, StatusCode};
use proptest::prelude::*;
use seawall::core::{Classify, Outcome};
use seawall::http::{parse_retry_after, HttpClassifier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn answer(code: u16) -> Result<Response<()>, &'static str> {
    Ok(Response::builder().status(code).body(()).unwrap())
}

#[test]
fn default_failures_are_5xx_408_429_and_errors() {
    let c = HttpClassifier::default();
    for code in 100..=999u16 {
        let expected = if (500..=599).contains(&code) || code == 408 || code == 429 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        assert_eq!(c.classify(&answer(code)), expected, "status {code}");
    }
    assert_eq!(
        c.classify(&Err::<Response<()>, _>("connection reset")),
        Outcome::Failure
    );
}

#[test]
fn codes_can_be_moved() {
    let c = HttpClassifier::default()
        .failure(StatusCode::CONFLICT)
        .ignore(StatusCode::NOT_FOUND)
        .success(StatusCode::TOO_MANY_REQUESTS)
        .ignore(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.classify_status(StatusCode::CONFLICT), Outcome::Failure);
    assert_eq!(c.classify_status(StatusCode::NOT_FOUND), Outcome::Ignored);
    assert_eq!(
        c.classify_status(StatusCode::TOO_MANY_REQUESTS),
        Outcome::Success
    );
    assert_eq!(
        c.classify_status(StatusCode::SERVICE_UNAVAILABLE),
        Outcome::Ignored
    );
    assert_eq!(c.classify_status(StatusCode::BAD_GATEWAY), Outcome::Failure);
    // Outside 400..=599 nothing can be made a failure.
    let c = c.failure(StatusCode::OK);
    assert_eq!(c.classify_status(StatusCode::OK), Outcome::Success);
}

#[test]
fn retry_after_is_read_from_429_and_503_only() {
    let c = HttpClassifier::default();
    let with = |code: u16, v: &'static str| -> Result<Response<()>, &'static str> {
        Ok(Response::builder()
            .status(code)
            .header("retry-after", v)
            .body(())
            .unwrap())
    };
    assert_eq!(
        c.retry_after(&with(503, "12")),
        Some(Duration::from_secs(12))
    );
    assert_eq!(c.retry_after(&with(429, "0")), Some(Duration::ZERO));
    assert_eq!(c.retry_after(&with(500, "12")), None);
    assert_eq!(c.retry_after(&with(503, "twelve")), None);
    assert_eq!(c.retry_after(&answer(503)), None);
}

#[test]
fn http_dates_are_measured_from_now() {
    let now = UNIX_EPOCH + Duration::from_secs(1_445_412_400);
    let parse = |v: &'static str| parse_retry_after(&HeaderValue::from_static(v), now);
    assert_eq!(
        parse("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::from_secs(80))
    );
    assert_eq!(
        parse("Wed, 21 Oct 2015 07:00:00 GMT"),
        Some(Duration::ZERO),
        "a past date: no wait"
    );
    assert_eq!(
        parse("Wednesday, 21-Oct-15 07:28:00 GMT"),
        Some(Duration::from_secs(80)),
        "RFC 850 form"
    );
    assert_eq!(
        parse(" 5 "),
        Some(Duration::from_secs(5)),
        "surrounding whitespace is allowed"
    );
    for bad in [
        "",
        "-5",
        "+5",
        "1.5",
        "5 s",
        "0x10",
        "99999999999999999999999",
        "Wed, 32 Oct 2015 07:28:00 GMT",
    ] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn delta_seconds_round_trip(secs in any::<u64>()) {
        let v = HeaderValue::from_str(&secs.to_string()).unwrap();
        prop_assert_eq!(parse_retry_after(&v, SystemTime::now()), Some(Duration::from_secs(secs)));
    }

    #[test]
    fn any_header_value_parses_or_is_rejected_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_retry_after(&v, SystemTime::now());
        }
    }
}
