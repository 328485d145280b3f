//! `seawall::tonic::status`: codes, pushback, statuses kept as they are.

use super::{every_rejection, Wrapped};
use tonic::{Code, Status};

#[tokio::test(start_paused = true)]
async fn every_rejection_has_its_code_and_pushback_when_known() {
    for (name, err) in every_rejection().await {
        let status = seawall::tonic::status(&*err);
        let (code, pushback) = match name {
            "circuit_open" => (Code::Unavailable, Some("1500")),
            "throttled" | "retry_budget_exhausted" => (Code::Unavailable, None),
            "bulkhead_full" | "overloaded" => (Code::ResourceExhausted, None),
            "rate_limited" => (Code::ResourceExhausted, Some("1000")),
            "timed_out" => (Code::DeadlineExceeded, None),
            other => panic!("unexpected {other}"),
        };
        assert_eq!(status.code(), code, "{name}");
        let got = status.metadata().get("grpc-retry-pushback-ms");
        assert_eq!(got.map(|v| v.to_str().unwrap()), pushback, "{name}");
    }
}

#[test]
fn a_status_in_the_chain_is_kept_and_anything_else_is_internal() {
    let upstream = Status::not_found("no such user");
    let status = seawall::tonic::status(&Wrapped(Box::new(upstream)));
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such user");

    let secret = std::io::Error::other("password=hunter2");
    let status = seawall::tonic::status(&secret);
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "internal error");
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_an_invalid_argument() {
    use seawall::timeout::propagate::ReadDeadlineLayer;
    use tower::{service_fn, Layer, Service, ServiceExt};
    let mut server = ReadDeadlineLayer::grpc().layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Status>(http::Response::new(()))
    }));
    let request = http::Request::builder()
        .header("grpc-timeout", "soon")
        .body(())
        .unwrap();
    let err = server
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    assert_eq!(
        seawall::error::kind(&*err),
        Some(seawall::error::ErrorKind::InvalidDeadline)
    );
    assert_eq!(seawall::tonic::status(&*err).code(), Code::InvalidArgument);
}
