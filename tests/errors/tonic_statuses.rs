//! `seawall::tonic::status`: codes, pushback, statuses kept as they are.

use super::{every_rejection, Wrapped};
use tonic::{Code, Status};

#[tokio::test(start_paused = true)]
async fn every_rejection_has_its_code_and_pushback_when_known() {
    for (name, err) in every_rejection().await {
        let status = seawall::tonic::status(&*err);
        let (code, pushback) = match name {
            "circuit_open" => (Code::Unavailable, Some("1500")),
            "throttled" | "retry_budget_exhausted" | "overloaded" => (Code::Unavailable, None),
            "bulkhead_full" => (Code::Unavailable, Some("1000")),
            "rate_limited" => (Code::ResourceExhausted, Some("1000")),
            "timed_out" => (Code::DeadlineExceeded, None),
            other => panic!("unexpected {other}"),
        };
        assert_eq!(status.code(), code, "{name}");
        let got = status.metadata().get("grpc-retry-pushback-ms");
        assert_eq!(got.map(|v| v.to_str().unwrap()), pushback, "{name}");
    }
}

/// Load shed, a full bulkhead and a full adaptive limiter are answered UNAVAILABLE, which gRPC
/// clients retry (here seawall's own gRPC retry policy, which follows gRPC's A6); a rate limit is
/// RESOURCE_EXHAUSTED, retried only after its pushback.
#[tokio::test(start_paused = true)]
async fn a_grpc_client_retries_shed_and_full_and_waits_out_a_rate_limit() {
    use seawall::limit::algorithm::Fixed;
    use seawall::limit::AdaptiveLimitLayer;
    use seawall::retry::grpc::GrpcPolicy;
    use seawall::retry::policy::Policy;
    use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

    let mut adaptive = AdaptiveLimitLayer::builder(Fixed(1))
        .build()
        .unwrap()
        .layer(service_fn(|_: ()| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        }));
    let held = adaptive.ready().await.unwrap().call(());
    let full = adaptive.ready().await.unwrap().call(()).await.unwrap_err();
    drop(held);
    let mut rejections = every_rejection().await;
    rejections.push(("adaptive_full", full));

    let request = http::Request::post("/pkg.Service/Method")
        .body(String::new())
        .unwrap();
    for (name, err) in rejections {
        let response = seawall::tonic::status(&*err).into_http::<()>();
        let retried = Policy::<_, _, ()>::should_retry(&GrpcPolicy, &request, &Ok(response));
        let expected = name != "timed_out";
        assert_eq!(retried, expected, "{name}");
        if name == "adaptive_full" {
            assert_eq!(seawall::tonic::status(&*err).code(), Code::Unavailable);
        }
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
