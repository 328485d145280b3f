//! Classification of malformed responses: any status, and any `retry-after`,
//! `x-ratelimit-reset`, `grpc-status` and `grpc-retry-pushback-ms` values, through the HTTP and
//! gRPC classifiers: never a panic; a gRPC status, when read, is a small number.
#![no_main]

use http::{HeaderName, HeaderValue, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use seawall::core::Classify;
use seawall::grpc::{grpc_status, GrpcClassifier};
use seawall::http::HttpClassifier;

const HEADERS: [&str; 4] = [
    "retry-after",
    "x-ratelimit-reset",
    "grpc-status",
    "grpc-retry-pushback-ms",
];

fuzz_target!(|data: &[u8]| {
    let Some((status, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_le_bytes(*status) % 900;
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).expect("100..=999");
    // The rest: values for the headers in turn, split at 0xff bytes (never in a header value).
    for (name, bytes) in HEADERS.iter().zip(rest.split(|&b| b == 0xff)) {
        if let Ok(value) = HeaderValue::from_bytes(bytes) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    if let Some(code) = grpc_status(response.headers()) {
        assert!(code <= 99, "grpc-status {code}");
    }
    let result: Result<_, std::io::Error> = Ok(response);
    for classify in [HttpClassifier::default(), HttpClassifier::retryable()] {
        let _ = classify.classify(&result);
        let _ = classify.retry_after(&result);
    }
    for classify in [GrpcClassifier::default(), GrpcClassifier::retryable()] {
        let _ = classify.classify(&result);
        let _ = classify.retry_after(&result);
    }
});
