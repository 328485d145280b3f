//! The gRPC settings of the retry layer, and gRPC status and pushback parsing.

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use seawall::core::{Classify, Outcome};
use seawall::grpc::{code, grpc_status, parse_retry_pushback, GrpcClassifier, Pushback};
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::RetryLayer;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

fn answer(status: &'static str, pushback: Option<&'static str>) -> Response<()> {
    let mut response = Response::builder().header("grpc-status", status);
    if let Some(pushback) = pushback {
        response = response.header("grpc-retry-pushback-ms", pushback);
    }
    response.body(()).unwrap()
}

/// Sends one call against a backend that answers `first` and then OK; returns when each
/// attempt came.
async fn attempts(first: fn() -> Response<()>) -> Vec<Duration> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let start = Instant::now();
    let backend = service_fn(move |_: Request<String>| {
        let mut log = sink.lock().unwrap();
        log.push(start.elapsed());
        std::future::ready(Ok::<_, std::io::Error>(if log.len() == 1 {
            first()
        } else {
            answer("0", None)
        }))
    });
    let mut service = RetryLayer::grpc()
        .backoff(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None))
        .build()
        .unwrap()
        .layer(backend);
    let request = Request::post("/pkg.Service/Method")
        .body("message".to_string())
        .unwrap();
    service.ready().await.unwrap().call(request).await.unwrap();
    let log = log.lock().unwrap();
    log.clone()
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_unless_the_server_says_not_to() {
    assert_eq!(attempts(|| answer("14", None)).await.len(), 2);
    assert_eq!(attempts(|| answer("14", Some("-1"))).await.len(), 1);
    assert_eq!(attempts(|| answer("14", Some("later"))).await.len(), 1);
    let times = attempts(|| answer("14", Some("300"))).await;
    assert!(times[1] >= Duration::from_millis(300) && times[1] <= Duration::from_millis(450));
}

#[tokio::test(start_paused = true)]
async fn resource_exhausted_is_retried_only_with_a_pushback() {
    assert_eq!(attempts(|| answer("8", None)).await.len(), 1);
    let times = attempts(|| answer("8", Some("1000"))).await;
    assert_eq!(times.len(), 2);
    assert!(times[1] >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_and_other_codes_are_never_retried() {
    for code in ["4", "13", "2", "5", "3", "16"] {
        let first = match code {
            "4" => || answer("4", Some("10")),
            "13" => || answer("13", None),
            "2" => || answer("2", None),
            "5" => || answer("5", None),
            "3" => || answer("3", None),
            _ => || answer("16", None),
        };
        assert_eq!(attempts(first).await.len(), 1, "code {code}");
    }
}

#[tokio::test(start_paused = true)]
async fn http_errors_below_grpc_are_retried() {
    let times = attempts(|| {
        Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(())
            .unwrap()
    })
    .await;
    assert_eq!(times.len(), 2);
}

#[test]
fn the_default_classifier_counts_server_trouble() {
    let classify = GrpcClassifier::default();
    let outcome = |code: u32| {
        let r: Result<Response<()>, ()> = Ok(Response::builder()
            .header("grpc-status", code.to_string())
            .body(())
            .unwrap());
        classify.classify(&r)
    };
    for code in 0..=16 {
        let expected = match code {
            code::UNKNOWN
            | code::DEADLINE_EXCEEDED
            | code::RESOURCE_EXHAUSTED
            | code::INTERNAL
            | code::UNAVAILABLE
            | code::DATA_LOSS => Outcome::Failure,
            _ => Outcome::Success,
        };
        assert_eq!(outcome(code), expected, "code {code}");
    }
    assert_eq!(
        classify.classify(&Err::<Response<()>, _>("reset")),
        Outcome::Failure
    );
    let trailers_later: Result<Response<()>, ()> = Ok(Response::new(()));
    assert_eq!(classify.classify(&trailers_later), Outcome::Success);
    let tuned = classify
        .ignore(code::DEADLINE_EXCEEDED)
        .failure(code::NOT_FOUND);
    assert_eq!(
        tuned.classify_code(code::DEADLINE_EXCEEDED),
        Outcome::Ignored
    );
    assert_eq!(tuned.classify_code(code::NOT_FOUND), Outcome::Failure);
    assert_eq!(
        tuned.success(code::NOT_FOUND).classify_code(5),
        Outcome::Success
    );
}

#[test]
fn statuses_and_pushbacks_are_read_strictly() {
    let headers = |name: &'static str, value: &'static str| {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_static(value));
        map
    };
    assert_eq!(grpc_status(&headers("grpc-status", "14")), Some(14));
    assert_eq!(grpc_status(&headers("grpc-status", "0")), Some(0));
    for bad in ["", "-1", "1.0", "140", " 1", "x"] {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_str(bad).unwrap());
        assert_eq!(grpc_status(&map), None, "{bad:?}");
    }
    let parse = |v: &str| parse_retry_pushback(&HeaderValue::from_str(v).unwrap());
    assert_eq!(parse("0"), Pushback::After(Duration::ZERO));
    assert_eq!(parse("1500"), Pushback::After(Duration::from_millis(1500)));
    for bad in ["", "-1", "-0", "+5", "1.5", "5ms", "99999999999999999999"] {
        assert_eq!(parse(bad), Pushback::DoNotRetry, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn pushback_and_status_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_retry_pushback(&value);
            let mut map = HeaderMap::new();
            map.insert("grpc-status", value);
            let _ = grpc_status(&map);
        }
    }

    #[test]
    fn any_millisecond_count_is_read_back(ms in any::<u64>()) {
        prop_assert_eq!(
            parse_retry_pushback(&HeaderValue::from(ms)),
            Pushback::After(Duration::from_millis(ms))
        );
    }
}

#[test]
fn http_statuses_are_classified_by_the_code_grpc_maps_them_to() {
    let response = |status: StatusCode| -> Result<Response<()>, ()> {
        Ok(Response::builder().status(status).body(()).unwrap())
    };
    let breaker = GrpcClassifier::default();
    let retry = GrpcClassifier::retryable();
    // An expired token behind an authentication proxy, or a forbidden call: the caller's problem.
    for status in [
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
        StatusCode::NOT_FOUND,
    ] {
        assert_eq!(
            breaker.classify(&response(status)),
            Outcome::Success,
            "{status}"
        );
        assert_eq!(
            retry.classify(&response(status)),
            Outcome::Ignored,
            "{status}"
        );
    }
    // What a proxy says when the server is down or busy: UNAVAILABLE, retried.
    for status in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
    ] {
        assert_eq!(
            breaker.classify(&response(status)),
            Outcome::Failure,
            "{status}"
        );
        assert_eq!(
            retry.classify(&response(status)),
            Outcome::Failure,
            "{status}"
        );
    }
    // Anything else is UNKNOWN: trouble for a breaker, not retried.
    let status = StatusCode::INTERNAL_SERVER_ERROR;
    assert_eq!(breaker.classify(&response(status)), Outcome::Failure);
    assert_eq!(retry.classify(&response(status)), Outcome::Ignored);
    assert_eq!(
        seawall::grpc::code_of_http_status(StatusCode::BAD_REQUEST),
        code::INTERNAL
    );
}
