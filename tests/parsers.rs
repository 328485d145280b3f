//! Outside data, fed at random to every parser that reads it, and random settings fed to every
//! builder: never a panic; well-formed values read exactly, malformed ones refused.

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use proptest::prelude::*;
use seawall::core::Classify;
use seawall::grpc::{grpc_status, parse_retry_pushback, Pushback};
use seawall::http::{parse_rate_limit_reset, parse_retry_after, HttpClassifier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Any header value `http` accepts, from arbitrary bytes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        "[0-9]{0,25}".prop_map(String::into_bytes),
        "-?[0-9]{1,5}(\\.[0-9]{1,3})?".prop_map(String::into_bytes),
    ]
    .prop_filter_map("not a header value", |bytes| {
        HeaderValue::from_bytes(&bytes).ok()
    })
}

/// Any instant from 1970 to about 36,000 years on.
fn now() -> impl Strategy<Value = SystemTime> {
    (0u64..(1 << 40)).prop_map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
}

proptest! {
    #[test]
    fn retry_after_never_panics(value in header_value(), now in now()) {
        let _ = parse_retry_after(&value, now);
    }

    #[test]
    fn retry_after_reads_any_delta_seconds_exactly(secs in any::<u64>(), now in now()) {
        let value = HeaderValue::from_str(&secs.to_string()).unwrap();
        prop_assert_eq!(parse_retry_after(&value, now), Some(Duration::from_secs(secs)));
        let signed = HeaderValue::from_str(&format!("-{secs}")).unwrap();
        prop_assert_eq!(parse_retry_after(&signed, now), None);
    }

    #[test]
    fn retry_after_reads_any_http_date_to_the_second(
        at in 0u64..253_402_300_799, // up to the end of year 9999, what the format holds
        now in now(),
    ) {
        let at = UNIX_EPOCH + Duration::from_secs(at);
        let value = HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap();
        let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
        prop_assert_eq!(parse_retry_after(&value, now), Some(expected));
    }

    #[test]
    fn rate_limit_reset_never_panics(value in header_value(), now in now()) {
        let _ = parse_rate_limit_reset(&value, now);
    }

    #[test]
    fn rate_limit_reset_reads_seconds_and_epoch_times(secs in any::<u64>(), now in now()) {
        let value = HeaderValue::from_str(&secs.to_string()).unwrap();
        let parsed = parse_rate_limit_reset(&value, now);
        if secs < 1_000_000_000 {
            prop_assert_eq!(parsed, Some(Duration::from_secs(secs)));
        } else if let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
            prop_assert_eq!(parsed, Some(at.duration_since(now).unwrap_or(Duration::ZERO)));
        } else {
            prop_assert_eq!(parsed, None);
        }
    }

    #[test]
    fn pushback_reads_milliseconds_and_refuses_the_rest(value in header_value()) {
        // Spaces and tabs around the value are not part of it.
        let text = value.to_str().ok().map(|t| t.trim_matches([' ', '\t']).to_owned());
        let parsed = parse_retry_pushback(&value);
        match text.as_deref().map(|t| (t, t.parse::<u64>())) {
            Some((t, Ok(ms))) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                prop_assert_eq!(parsed, Pushback::After(Duration::from_millis(ms)))
            }
            _ => prop_assert_eq!(parsed, Pushback::DoNotRetry),
        }
    }

    #[test]
    fn grpc_status_is_a_small_number_or_nothing(value in header_value()) {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", value);
        if let Some(code) = grpc_status(&headers) {
            prop_assert!(code <= 99);
        }
    }

    #[test]
    fn http_classification_of_any_response_never_panics(
        status in 100u16..=999,
        retry_after in proptest::option::of(header_value()),
        reset in proptest::option::of(header_value()),
    ) {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(value) = retry_after {
            response.headers_mut().insert("retry-after", value);
        }
        if let Some(value) = reset {
            response.headers_mut().insert("x-ratelimit-reset", value);
        }
        let result: Result<_, std::io::Error> = Ok(response);
        for classify in [HttpClassifier::default(), HttpClassifier::retryable()] {
            let _ = classify.classify(&result);
            let _ = classify.retry_after(&result);
        }
    }
}

/// Any `f64`, the awkward ones often.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        -2.0f64..2.0,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        Just(0.0),
        Just(1.0),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000_000_000).prop_map(Duration::from_nanos),
    ]
}

proptest! {
    #[test]
    fn every_builder_builds_or_says_why(
        count in any::<u32>(),
        big in any::<u64>(),
        small in 0u32..5,
        a in float(),
        b in float(),
        c in float(),
        wait in duration(),
        period in duration(),
    ) {
        use seawall::bulkhead::BulkheadLayer;
        use seawall::chaos::ChaosLayer;
        use seawall::limit::rate::{Quota, RateLimitLayer};
        use seawall::limit::ThrottleLayer;
        use seawall::retry::budget::Budget;
        use seawall::retry::RetryLayer;

        let _ = BulkheadLayer::builder()
            .max_concurrent(big)
            .queue(small as usize)
            .max_wait(wait)
            .build();
        let _ = ChaosLayer::builder().error(a).latency(b, wait).response(c, || ()).build();
        let _ = RateLimitLayer::builder(Quota::new(count, period).burst(small))
            .max_wait(wait)
            .build();
        let _ = ThrottleLayer::builder()
            .k(a)
            .window(period)
            .buckets(count)
            .max_probability(b)
            .build();
        let _ = Budget::ratio(a, count, period);
        let _ = Budget::token_bucket(count, small, small);
        let _ = RetryLayer::builder().max_retries(count).max_elapsed(wait).max_hint(period).build();
    }
}
