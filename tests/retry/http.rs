//! The HTTP settings of the retry layer: idempotent requests only, replayable bodies only, and the
//! rate-limit hints.

use http::{HeaderValue, Method, Request, Response, StatusCode};
use proptest::prelude::*;
use seawall::core::Outcome;
use seawall::http::{parse_rate_limit_reset, HttpClassifier};
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::http::HttpPolicy;
use seawall::retry::RetryLayer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// What a backend saw of each call: its method, body and time.
type Log = Arc<Mutex<Vec<(Method, String, Instant)>>>;

/// A backend that answers `status` (with `headers`) to calls before the `ok_from`-th, and logs
/// each call.
#[allow(clippy::type_complexity)]
fn backend(
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
    ok_from: usize,
) -> (
    Log,
    impl Service<
            Request<String>,
            Response = Response<()>,
            Error = std::io::Error,
            Future = impl std::future::Future<Output = Result<Response<()>, std::io::Error>>,
        > + Clone,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let service = service_fn(move |req: Request<String>| {
        let mut log = sink.lock().unwrap();
        log.push((req.method().clone(), req.body().clone(), Instant::now()));
        let mut response = Response::new(());
        if log.len() < ok_from {
            *response.status_mut() = status;
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(*name, HeaderValue::from_static(value));
            }
        }
        std::future::ready(Ok(response))
    });
    (log, service)
}

fn layer() -> RetryLayer<HttpClassifier, HttpPolicy> {
    RetryLayer::http()
        .backoff(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn idempotent_methods_are_retried_and_a_post_is_not() {
    for (method, attempts) in [
        (Method::GET, 4),
        (Method::HEAD, 4),
        (Method::OPTIONS, 4),
        (Method::PUT, 4),
        (Method::DELETE, 4),
        (Method::TRACE, 4),
        (Method::POST, 1),
        (Method::PATCH, 1),
    ] {
        let (log, backend) = backend(StatusCode::SERVICE_UNAVAILABLE, &[], usize::MAX);
        let mut service = layer().layer(backend);
        let request = Request::builder()
            .method(method.clone())
            .body("payload".to_string())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(log.lock().unwrap().len(), attempts, "{method}");
    }
}

/// The preset is where a builder starts, so nothing set before it can be lost: a classifier given
/// after it replaces the preset's classifier and keeps its policy. (Given before it, it is a
/// compile error: the preset is not a builder method; see `RetryLayer::http`.)
#[tokio::test(start_paused = true)]
async fn a_classifier_after_the_http_preset_replaces_only_the_classifier() {
    // Only a 404 is a failure to retry (a replica still catching up), not a 503.
    let classify = |result: &Result<Response<()>, std::io::Error>| match result {
        Ok(response) if response.status() != StatusCode::NOT_FOUND => Outcome::Success,
        _ => Outcome::Failure,
    };
    for (method, status, attempts) in [
        (Method::GET, StatusCode::NOT_FOUND, 4),
        (Method::GET, StatusCode::SERVICE_UNAVAILABLE, 1),
        // The preset's policy is kept: a POST is not retried.
        (Method::POST, StatusCode::NOT_FOUND, 1),
    ] {
        let (log, backend) = backend(status, &[], usize::MAX);
        let mut service = RetryLayer::http()
            .classify(classify)
            .backoff(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None))
            .build()
            .unwrap()
            .layer(backend);
        let request = Request::builder()
            .method(method.clone())
            .body(String::new())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(log.lock().unwrap().len(), attempts, "{method} {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_with_an_idempotency_key_or_an_allowed_method_is_retried() {
    let (log, backend) = backend(StatusCode::BAD_GATEWAY, &[], 3);
    let mut service = layer().layer(backend);
    let request = Request::post("/orders")
        .header("idempotency-key", "0b7c1f")
        .body("{\"sku\": 1}".to_string())
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|(m, body, _)| m == Method::POST && body == "{\"sku\": 1}"));

    let policy = HttpPolicy::default().retry_method(Method::POST);
    let post = Request::post("/").body(()).unwrap();
    assert!(policy.is_retryable(&post));
    assert!(!HttpPolicy::default().is_retryable(&post));
}

#[tokio::test(start_paused = true)]
async fn only_transient_statuses_are_retried() {
    for (status, attempts) in [
        (StatusCode::REQUEST_TIMEOUT, 4),
        (StatusCode::TOO_MANY_REQUESTS, 4),
        (StatusCode::BAD_GATEWAY, 4),
        (StatusCode::SERVICE_UNAVAILABLE, 4),
        (StatusCode::GATEWAY_TIMEOUT, 4),
        (StatusCode::INTERNAL_SERVER_ERROR, 4),
        (StatusCode::NOT_IMPLEMENTED, 1),
        (StatusCode::NOT_FOUND, 1),
        (StatusCode::BAD_REQUEST, 1),
    ] {
        let (log, backend) = backend(status, &[], usize::MAX);
        let mut service = layer().layer(backend);
        let response = service
            .ready()
            .await
            .unwrap()
            .call(Request::get("/").body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(log.lock().unwrap().len(), attempts, "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let mut service = layer().layer(service_fn(move |_: Request<String>| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        std::future::ready(if *n < 3 {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        } else {
            Ok(Response::new(()))
        })
    }));
    let request = Request::get("/").body(String::new()).unwrap();
    assert!(service.ready().await.unwrap().call(request).await.is_ok());
    assert_eq!(*calls.lock().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_reset_sets_the_delay() {
    let (log, backend) = backend(
        StatusCode::TOO_MANY_REQUESTS,
        &[("x-ratelimit-reset", "3")],
        2,
    );
    let mut service = layer().layer(backend);
    let request = Request::get("/").body(String::new()).unwrap();
    service.ready().await.unwrap().call(request).await.unwrap();
    let log = log.lock().unwrap();
    let waited = log[1].2 - log[0].2;
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_millis(4500),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_wins_over_x_ratelimit_reset() {
    let (log, backend) = backend(
        StatusCode::SERVICE_UNAVAILABLE,
        &[("retry-after", "1"), ("x-ratelimit-reset", "30")],
        2,
    );
    let mut service = layer().layer(backend);
    let request = Request::get("/").body(String::new()).unwrap();
    service.ready().await.unwrap().call(request).await.unwrap();
    let log = log.lock().unwrap();
    let waited = log[1].2 - log[0].2;
    assert!(waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1500));
}

#[test]
fn x_ratelimit_reset_reads_seconds_and_epoch_instants() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let parse = |v: &str| parse_rate_limit_reset(&HeaderValue::try_from(v).unwrap(), now);
    assert_eq!(parse("0"), Some(Duration::ZERO));
    assert_eq!(parse("60"), Some(Duration::from_secs(60)));
    assert_eq!(parse("999999999"), Some(Duration::from_secs(999_999_999)));
    assert_eq!(parse("1700000060"), Some(Duration::from_secs(60)));
    assert_eq!(parse("1000000000"), Some(Duration::ZERO));
    for bad in [
        "",
        "-1",
        "1.5",
        "+3",
        "3s",
        "1e3",
        "99999999999999999999999",
    ] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn x_ratelimit_reset_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_rate_limit_reset(&value, SystemTime::now());
        }
    }

    #[test]
    fn any_seconds_value_round_trips(seconds in 0u64..1_000_000_000) {
        let value = HeaderValue::from(seconds);
        prop_assert_eq!(
            parse_rate_limit_reset(&value, SystemTime::now()),
            Some(Duration::from_secs(seconds))
        );
    }
}
