//! Fixed, per-request and extension-driven timeouts fire exactly at their instant.

use crate::support::{Backend, Call, Fail};
use seawall::timeout::error::{Elapsed, TimeoutCause};
use seawall::timeout::{Timeout, TimeoutLayer};
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// Polls `future` at `at - 1 ms` (still pending) and at `at` (timed out), and returns the error.
async fn fires_at<F, T: std::fmt::Debug>(future: F, at: Duration) -> Elapsed
where
    F: std::future::Future<Output = Result<T, BoxError>>,
{
    let mut future = task::spawn(future);
    assert_pending!(future.poll());
    tokio::time::advance(at - MS).await;
    assert_pending!(future.poll(), "not yet at {:?}", at - MS);
    tokio::time::advance(MS).await;
    let err = assert_ready!(future.poll()).expect_err("timed out");
    *err.downcast::<Elapsed>().expect("an Elapsed error")
}

#[tokio::test(start_paused = true)]
async fn a_fixed_timeout_fires_exactly_at_its_instant() {
    let mut service = TimeoutLayer::new(100 * MS).layer(Backend);
    let call = service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(1000 * MS));
    let elapsed = fires_at(call, 100 * MS).await;
    assert_eq!(elapsed.cause(), TimeoutCause::Timeout);
    assert_eq!(elapsed.budget(), 100 * MS);
    assert_eq!(elapsed.to_string(), "request timed out after 100ms");
}

#[tokio::test(start_paused = true)]
async fn a_call_that_ends_in_time_passes_through() {
    let mut service = Timeout::new(Backend, 100 * MS);
    let ok = service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(99 * MS));
    assert_eq!(ok.await.unwrap(), 1);
    let failed = service
        .ready()
        .await
        .unwrap()
        .call(Call::fail().after(10 * MS));
    let err = failed.await.unwrap_err();
    assert!(err.is::<Fail>(), "the inner error is passed on: {err}");
}

#[tokio::test(start_paused = true)]
async fn a_response_ready_when_the_timer_fires_still_counts() {
    // The call and the timer end at the same instant: the call is polled first.
    let mut service = Timeout::new(Backend, 100 * MS);
    let call = service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(100 * MS));
    let mut call = task::spawn(call);
    assert_pending!(call.poll());
    tokio::time::advance(100 * MS).await;
    assert_eq!(assert_ready!(call.poll()).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn per_request_timeouts_fire_at_their_own_instants() {
    let layer =
        TimeoutLayer::per_request(|call: &Call| (!call.delay.is_zero()).then(|| call.delay / 2));
    let mut service = layer.layer(Backend);
    for delay in [40 * MS, 300 * MS] {
        let call = service.ready().await.unwrap().call(Call::ok().after(delay));
        let elapsed = fires_at(call, delay / 2).await;
        assert_eq!(elapsed.budget(), delay / 2);
    }
    // `None`: no timeout at all.
    let unbounded = service.ready().await.unwrap().call(Call::ok());
    assert_eq!(unbounded.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_timeout_means_the_call_may_take_any_time() {
    let mut service = TimeoutLayer::per_request(|_: &Call| None).layer(Backend);
    let call = service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(3600 * 1000 * MS));
    let mut call = task::spawn(call);
    assert_pending!(call.poll());
    tokio::time::advance(3600 * 1000 * MS).await;
    assert_eq!(assert_ready!(call.poll()).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_huge_timeout_does_not_overflow_the_clock() {
    let mut service = Timeout::new(Backend, Duration::MAX);
    let call = service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(1000 * MS));
    assert_eq!(call.await.unwrap(), 1);
}

#[cfg(feature = "http")]
mod from_extension {
    use super::*;
    use seawall::core::RequestTimeout;
    use tower::service_fn;

    fn slow() -> impl Service<
        http::Request<()>,
        Response = (),
        Error = std::io::Error,
        Future = impl std::future::Future<Output = Result<(), std::io::Error>>,
    > + Clone {
        service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, std::io::Error>(())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_extension_sets_the_timeout_and_the_default_covers_the_rest() {
        let mut service = TimeoutLayer::from_extension(Some(200 * MS)).layer(slow());

        let mut req = http::Request::new(());
        req.extensions_mut().insert(RequestTimeout(30 * MS));
        let call = service.ready().await.unwrap().call(req);
        assert_eq!(fires_at(call, 30 * MS).await.budget(), 30 * MS);

        let call = service.ready().await.unwrap().call(http::Request::new(()));
        assert_eq!(fires_at(call, 200 * MS).await.budget(), 200 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_default_only_requests_that_carry_one_are_timed() {
        let mut service = TimeoutLayer::from_extension(None).layer(slow());
        let call = service.ready().await.unwrap().call(http::Request::new(()));
        let mut call = task::spawn(call);
        assert_pending!(call.poll());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_ready!(call.poll()).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_fixed_timeout_starts_when_the_call_first_waits() {
    let mut service =
        TimeoutLayer::new(Duration::from_secs(1)).layer(tower::service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<_, BoxError>(())
        }));
    let future = service.ready().await.unwrap().call(());
    // Made, but not polled for five seconds: the call has not waited yet, so no time is spent.
    tokio::time::advance(Duration::from_secs(5)).await;
    let mut call = task::spawn(future);
    assert_pending!(call.poll());
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_pending!(call.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    let err = assert_ready!(call.poll()).unwrap_err();
    let elapsed = err.downcast_ref::<Elapsed>().unwrap();
    assert_eq!(elapsed.budget(), Duration::from_secs(1));
}
