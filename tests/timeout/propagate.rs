//! Deadlines across the network: `grpc-timeout` (and an HTTP header) read on the server side and
//! written on the client side, strictly.

use http::{HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use seawall::core::{Deadline, DeadlineCarrier, TimeoutCause};
use seawall::grpc::GrpcTimeoutError;
use seawall::timeout::error::{Elapsed, InvalidTimeoutHeader};
use seawall::timeout::propagate::{ReadDeadlineLayer, WriteDeadlineLayer, HTTP_TIMEOUT_HEADER};
use seawall::timeout::TimeoutLayer;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// What a service saw of a request: its deadline and its timeout header.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    deadline: Option<Deadline>,
    header: Option<HeaderValue>,
}

/// A service that records what it saw, for `header`.
#[allow(clippy::type_complexity)]
fn spy(
    header: &'static str,
) -> (
    Arc<Mutex<Vec<Seen>>>,
    impl Service<
            Request<()>,
            Response = (),
            Error = BoxError,
            Future = impl std::future::Future<Output = Result<(), BoxError>>,
        > + Clone,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = service_fn(move |req: Request<()>| {
        log.lock().unwrap().push(Seen {
            deadline: req.deadline(),
            header: req.headers().get(header).cloned(),
        });
        std::future::ready(Ok::<_, BoxError>(()))
    });
    (seen, service)
}

/// One call through `service`.
async fn send<S>(service: &mut S, req: Request<()>) -> Result<(), BoxError>
where
    S: Service<Request<()>, Response = (), Error = BoxError>,
{
    service.ready().await?.call(req).await
}

fn with_header(name: &str, value: &str) -> Request<()> {
    let mut req = Request::new(());
    req.headers_mut().insert(
        HeaderName::try_from(name).unwrap(),
        HeaderValue::try_from(value).unwrap(),
    );
    req
}

#[tokio::test(start_paused = true)]
async fn the_server_reads_grpc_timeout_into_the_deadline() {
    let (seen, inner) = spy("grpc-timeout");
    let mut service = ReadDeadlineLayer::grpc().layer(inner);
    let now = Instant::now();
    for (value, timeout) in [
        ("250m", 250 * MS),
        ("3S", 3000 * MS),
        ("1M", 60_000 * MS),
        ("2H", 7_200_000 * MS),
        ("1500u", Duration::from_micros(1500)),
        ("99999999n", Duration::from_nanos(99_999_999)),
        ("0m", Duration::ZERO),
    ] {
        let req = with_header("grpc-timeout", value);
        send(&mut service, req).await.unwrap();
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.deadline, Some(Deadline::at(now + timeout)), "{value}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_without_header_or_deadline_is_passed_on_untouched() {
    let (seen, inner) = spy("grpc-timeout");
    send(
        &mut ReadDeadlineLayer::grpc().layer(inner.clone()),
        Request::new(()),
    )
    .await
    .unwrap();
    send(
        &mut WriteDeadlineLayer::grpc().layer(inner),
        Request::new(()),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Seen::default(); 2]);
}

#[tokio::test(start_paused = true)]
async fn the_earlier_of_a_carried_deadline_and_the_header_wins() {
    let (seen, inner) = spy("grpc-timeout");
    let mut service = ReadDeadlineLayer::grpc().layer(inner);
    for (carried, header, expected) in [(10 * MS, "20m", 10 * MS), (30 * MS, "20m", 20 * MS)] {
        let mut req = with_header("grpc-timeout", header);
        req.set_deadline(Deadline::after(carried));
        send(&mut service, req).await.unwrap();
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.deadline, Some(Deadline::after(expected)));
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_headers_are_rejected_without_calling_the_inner_service() {
    let (seen, inner) = spy("grpc-timeout");
    let mut service = ReadDeadlineLayer::grpc().layer(inner);
    for (value, reason) in [
        ("", GrpcTimeoutError::Empty),
        ("m", GrpcTimeoutError::NoDigits),
        ("-5S", GrpcTimeoutError::NotADigit('-')),
        ("1.5S", GrpcTimeoutError::NotADigit('.')),
        ("123456789m", GrpcTimeoutError::TooManyDigits(9)),
        ("10s", GrpcTimeoutError::UnknownUnit('s')),
        ("10", GrpcTimeoutError::UnknownUnit('0')),
        (" 1S", GrpcTimeoutError::NotADigit(' ')),
    ] {
        let req = with_header("grpc-timeout", value);
        let err = send(&mut service, req).await.unwrap_err();
        let err = err
            .downcast_ref::<InvalidTimeoutHeader>()
            .unwrap_or_else(|| panic!("{value:?}: {err}"));
        assert_eq!(err.header(), "grpc-timeout");
        assert_eq!(err.reason(), &reason, "{value:?}");
        assert!(err.to_string().starts_with("invalid grpc-timeout header: "));
    }
    // Bytes that are not ASCII.
    let mut req = Request::new(());
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_bytes(b"1\xffS").unwrap());
    let err = send(&mut service, req).await.unwrap_err();
    let err = err.downcast_ref::<InvalidTimeoutHeader>().unwrap();
    assert_eq!(err.reason(), &GrpcTimeoutError::NotAscii);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_client_writes_what_is_left_minus_the_margin() {
    let (seen, inner) = spy("grpc-timeout");
    let mut service = WriteDeadlineLayer::grpc().margin(5 * MS).layer(inner);
    let mut req = Request::new(());
    req.set_deadline(Deadline::after(2000 * MS));
    tokio::time::advance(500 * MS).await;
    send(&mut service, req).await.unwrap();
    let header = seen.lock().unwrap()[0].header.clone().unwrap();
    assert_eq!(header, "1495000u");
}

#[tokio::test(start_paused = true)]
async fn a_smaller_budget_already_in_the_header_is_kept() {
    let (seen, inner) = spy("grpc-timeout");
    let mut service = WriteDeadlineLayer::grpc().layer(inner);
    for (existing, deadline, expected) in [
        ("10m", 20 * MS, "10m"),           // smaller: kept
        ("30m", 20 * MS, "20000000n"),     // larger: replaced
        ("garbage", 20 * MS, "20000000n"), // unreadable: replaced
    ] {
        let mut req = with_header("grpc-timeout", existing);
        req.set_deadline(Deadline::after(deadline));
        send(&mut service, req).await.unwrap();
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.header.unwrap(), expected, "{existing}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_client_does_not_send_a_request_with_no_time_left() {
    let (seen, inner) = spy("grpc-timeout");
    let mut service = WriteDeadlineLayer::grpc().margin(5 * MS).layer(inner);
    for left in [Duration::ZERO, MS, 5 * MS] {
        let mut req = Request::new(());
        req.set_deadline(Deadline::after(left));
        let err = send(&mut service, req).await.unwrap_err();
        let err = err.downcast_ref::<Elapsed>().expect("Elapsed");
        assert_eq!(err.cause(), TimeoutCause::Expired);
    }
    assert!(seen.lock().unwrap().is_empty());
    // Just over the margin: sent, with what is left after it.
    let mut req = Request::new(());
    req.set_deadline(Deadline::after(6 * MS));
    send(&mut service, req).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0].header.clone().unwrap(), "1000000n");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_crosses_from_client_to_server_over_the_http_header() {
    let (seen, server) = spy(HTTP_TIMEOUT_HEADER);
    // Client: a total budget of 800 ms. Server: its own limit of 10 s, but never past the caller's.
    let server = ServiceBuilder::new()
        .layer(ReadDeadlineLayer::http())
        .layer(TimeoutLayer::new(10_000 * MS).propagate())
        .service(server);
    let mut client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(800 * MS).propagate())
        .layer(WriteDeadlineLayer::http())
        .service(server);
    let start = Instant::now();
    client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.header.unwrap(), "800000u");
    assert_eq!(seen.deadline, Some(Deadline::at(start + 800 * MS)));
}

#[tokio::test(start_paused = true)]
async fn a_server_stops_working_when_the_callers_budget_runs_out() {
    let slow = service_fn(|_: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(())
    });
    let mut server = ServiceBuilder::new()
        .layer(ReadDeadlineLayer::grpc())
        .layer(TimeoutLayer::new(10_000 * MS).propagate())
        .service(slow);
    let start = Instant::now();
    let req = with_header("grpc-timeout", "40m");
    let err = server.ready().await.unwrap().call(req).await.unwrap_err();
    let err = err.downcast_ref::<Elapsed>().expect("Elapsed");
    assert_eq!(
        (err.cause(), err.budget()),
        (TimeoutCause::Deadline, 40 * MS)
    );
    assert_eq!(Instant::now() - start, 40 * MS);

    // A caller whose budget is zero is answered at once, and the slow service is not called.
    let req = with_header("grpc-timeout", "0n");
    let err = server.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Elapsed>().unwrap().cause(),
        TimeoutCause::Expired
    );
    assert_eq!(Instant::now() - start, 40 * MS);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #[test]
    fn any_header_value_is_read_or_rejected_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..14)
    ) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        paused_runtime().block_on(async {
            let (seen, inner) = spy("grpc-timeout");
            let mut service = ReadDeadlineLayer::grpc().layer(inner);
            let mut req = Request::new(());
            req.headers_mut().insert("grpc-timeout", value.clone());
            let expected = seawall::grpc::parse_grpc_timeout_header(&value);
            let result = send(&mut service, req).await;
            match expected {
                Ok(timeout) => {
                    prop_assert!(result.is_ok());
                    let deadline = seen.lock().unwrap()[0].deadline;
                    prop_assert_eq!(deadline, Some(Deadline::after(timeout)));
                }
                Err(reason) => {
                    let err = result.unwrap_err();
                    let err = err.downcast_ref::<InvalidTimeoutHeader>().unwrap();
                    prop_assert_eq!(err.reason(), &reason);
                    prop_assert!(seen.lock().unwrap().is_empty());
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn what_the_client_writes_the_server_reads_back_never_longer(
        left_us in 1u64..10_000_000_000,
        margin_us in 0u64..1_000_000,
    ) {
        paused_runtime().block_on(async {
            let (seen, server) = spy("grpc-timeout");
            let server = ReadDeadlineLayer::grpc().layer(server);
            let margin = Duration::from_micros(margin_us);
            let mut client = WriteDeadlineLayer::grpc().margin(margin).layer(server);
            let left = Duration::from_micros(left_us);
            let mut req = Request::new(());
            req.set_deadline(Deadline::after(left));
            let result = client.ready().await.unwrap().call(req).await;
            if left <= margin {
                prop_assert!(result.unwrap_err().is::<Elapsed>());
            } else {
                result.unwrap();
                let deadline = seen.lock().unwrap()[0].deadline.unwrap();
                let budget = deadline.remaining();
                prop_assert!(budget <= left - margin, "{budget:?} > {:?}", left - margin);
                // Rounding down to the finest unit whose count fits in eight digits loses less
                // than one part in 10^5.
                prop_assert!(budget + (left - margin) / 100_000 >= left - margin);
            }
            Ok(())
        })?;
    }
}
