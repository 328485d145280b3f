//! Trip rules, open periods and half-open trials.

use crate::support::{rejection, send, tripping, Backend, Call, Ended};
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::CircuitState;
use std::time::Duration;
use tower::{BoxError, Layer, Service, ServiceExt};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn count_window_really_slides() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(10)
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    for _ in 0..1000 {
        assert_eq!(send(&mut service, Call::ok()).await, Ended::Ok);
    }
    for i in 1..=4 {
        assert_eq!(send(&mut service, Call::fail()).await, Ended::Failed);
        assert_eq!(handle.state(), CircuitState::Closed, "{i} failures of 10");
    }
    assert_eq!(send(&mut service, Call::fail()).await, Ended::Failed);
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "5 failures in the last 10 calls"
    );
    assert_eq!(send(&mut service, Call::ok()).await, Ended::Rejected);
}

#[tokio::test(start_paused = true)]
async fn nothing_trips_before_minimum_calls() {
    let layer = CircuitBreakerLayer::builder()
        .count_window(100)
        .minimum_calls(20)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    for _ in 0..19 {
        send(&mut service, Call::fail()).await;
        assert_eq!(handle.state(), CircuitState::Closed);
        assert_eq!(
            handle.metrics().failure_rate,
            None,
            "unknown below the minimum"
        );
    }
    send(&mut service, Call::fail()).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_reaching_the_minimum_can_trip() {
    // 9 failures then 1 success: the tenth call reaches the minimum with a 90 % failure rate.
    let layer = CircuitBreakerLayer::builder()
        .count_window(10)
        .minimum_calls(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    for _ in 0..9 {
        send(&mut service, Call::fail()).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    send(&mut service, Call::ok()).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let layer = CircuitBreakerLayer::builder()
        .time_window(secs(10))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    for _ in 0..3 {
        send(&mut service, Call::fail()).await;
    }
    tokio::time::advance(secs(11)).await;
    assert_eq!(handle.metrics().calls, 0, "the failures left the window");
    for _ in 0..3 {
        send(&mut service, Call::ok()).await;
    }
    send(&mut service, Call::fail()).await;
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "1 failure of 4 in the last 10 s"
    );
    send(&mut service, Call::fail()).await;
    assert_eq!(handle.state(), CircuitState::Closed, "2 of 5 is 40 %");
    send(&mut service, Call::fail()).await;
    assert_eq!(handle.state(), CircuitState::Open, "3 of 6 is 50 %");
}

#[tokio::test(start_paused = true)]
async fn a_time_window_under_a_second_slides() {
    let ms = Duration::from_millis;
    let layer = CircuitBreakerLayer::builder()
        .time_window(ms(500))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    tokio::time::advance(ms(400)).await;
    for _ in 0..3 {
        send(&mut service, Call::fail()).await;
    }
    tokio::time::advance(ms(200)).await;
    assert_eq!(
        handle.metrics().calls,
        3,
        "200 ms old, the failures are still in a 500 ms window"
    );
    send(&mut service, Call::fail()).await;
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "4 failures in the last 500 ms"
    );
    // Well past them, the window has slid on.
    let layer = CircuitBreakerLayer::builder()
        .time_window(ms(500))
        .minimum_calls(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    send(&mut service, Call::ok()).await;
    tokio::time::advance(ms(450)).await;
    send(&mut service, Call::ok()).await;
    assert_eq!(handle.metrics().calls, 2);
    tokio::time::advance(ms(100)).await;
    assert_eq!(
        handle.metrics().calls,
        1,
        "the first call left after 500 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_even_when_they_succeed() {
    let layer = CircuitBreakerLayer::builder()
        .no_failure_rate()
        .slow_call_rate_threshold(50.0, Duration::from_millis(100))
        .count_window(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    let fast = Call::ok().after(Duration::from_millis(99));
    let slow = Call::ok().after(Duration::from_millis(100));
    for call in [fast, fast, slow] {
        assert_eq!(send(&mut service, call).await, Ended::Ok);
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().slow_calls, 1);
    send(&mut service, slow).await;
    assert_eq!(handle.state(), CircuitState::Open, "2 slow calls of 4");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_whatever_the_rate() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .count_window(100)
        .minimum_calls(100)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    for _ in 0..2 {
        send(&mut service, Call::fail()).await;
    }
    send(&mut service, Call::ok()).await;
    assert_eq!(
        handle.metrics().consecutive_failures,
        0,
        "a success resets the run"
    );
    for _ in 0..2 {
        send(&mut service, Call::fail()).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    send(&mut service, Call::fail()).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_counted() {
    use seawall::core::Outcome;
    let layer = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(1)
        .build()
        .unwrap()
        .classify(|r: &Result<u32, crate::support::Fail>| match r {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Ignored,
        });
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    for _ in 0..10 {
        send(&mut service, Call::fail()).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().calls, 0);
}

/// Trips a breaker built with `consecutive_failures(1)` by one failed call.
async fn trip<S>(service: &mut S)
where
    S: tower::Service<Call, Response = u32, Error = BoxError>,
{
    assert_eq!(send(service, Call::fail()).await, Ended::Failed);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_with_time_to_next_probe_then_half_opens() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(secs(10))
        .open_jitter(0.0)
        .half_open_probes(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    tokio::time::advance(secs(4)).await;
    let open = rejection(&mut service).await;
    assert_eq!(open.retry_after(), Some(secs(6)));
    assert!(!open.is_forced());
    tokio::time::advance(secs(6)).await;
    assert_eq!(
        send(&mut service, Call::ok()).await,
        Ended::Ok,
        "first probe"
    );
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(
        send(&mut service, Call::ok()).await,
        Ended::Ok,
        "second probe"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn failed_trials_reopen_for_longer_and_cap() {
    let layer = tripping(1).open_backoff(2.0, secs(5)).build().unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    let mut waits = Vec::new();
    for _ in 0..5 {
        let open = rejection(&mut service).await;
        let wait = open.retry_after().unwrap();
        waits.push(wait.as_secs());
        tokio::time::advance(wait).await;
        assert_eq!(
            send(&mut service, Call::fail()).await,
            Ended::Failed,
            "failed probe"
        );
        assert_eq!(handle.state(), CircuitState::Open);
    }
    assert_eq!(waits, [1, 2, 4, 5, 5]);
    // A successful trial closes and forgets the growth.
    tokio::time::advance(secs(5)).await;
    assert_eq!(send(&mut service, Call::ok()).await, Ended::Ok);
    assert_eq!(handle.state(), CircuitState::Closed);
    trip(&mut service).await;
    let open = rejection(&mut service).await;
    assert_eq!(open.retry_after(), Some(secs(1)));
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_within_bounds_and_varies() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(secs(100))
            .open_jitter(0.5)
            .jitter_seed(seed)
            .build()
            .unwrap();
        let mut service = layer.layer(Backend);
        trip(&mut service).await;
        let open = rejection(&mut service).await;
        let wait = open.retry_after().unwrap();
        assert!(wait > secs(50) && wait <= secs(100), "{wait:?}");
        seen.insert(wait.as_millis());
    }
    assert!(
        seen.len() > 10,
        "breakers seeded differently open for different times"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_k_probes_and_decides_on_their_rate() {
    let layer = tripping(4).failure_rate_threshold(50.0).build().unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    tokio::time::advance(secs(1)).await;
    // Four slow probes in flight; a fifth call is turned away.
    let slow = |r: Result<u32, crate::support::Fail>| Call {
        result: r,
        delay: secs(1),
    };
    let mut probes = Vec::new();
    for r in [Ok(1), Ok(1), Ok(1), Err(crate::support::Fail)] {
        let mut s = service.clone();
        probes.push(tokio::spawn(async move { send(&mut s, slow(r)).await }));
    }
    tokio::task::yield_now().await;
    assert_eq!(handle.metrics().probes_in_flight, 4);
    assert_eq!(send(&mut service, Call::ok()).await, Ended::Rejected);
    tokio::time::advance(secs(1)).await;
    for p in probes {
        p.await.unwrap();
    }
    // 1 failure of 4 is 25 %, under the threshold.
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn probes_at_the_threshold_reopen() {
    let layer = tripping(2).failure_rate_threshold(50.0).build().unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    tokio::time::advance(secs(1)).await;
    send(&mut service, Call::ok()).await;
    send(&mut service, Call::fail()).await;
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "1 of 2 is 50 %: not under the threshold"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_gives_its_slot_back() {
    let layer = tripping(1).build().unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    tokio::time::advance(secs(1)).await;
    let probe = service
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(secs(60)));
    assert_eq!(handle.metrics().probes_in_flight, 1);
    assert_eq!(
        send(&mut service, Call::ok()).await,
        Ended::Rejected,
        "the slot is taken"
    );
    drop(probe);
    assert_eq!(handle.metrics().probes_in_flight, 0);
    assert_eq!(
        handle.state(),
        CircuitState::HalfOpen,
        "a cancellation decides nothing"
    );
    assert_eq!(
        send(&mut service, Call::ok()).await,
        Ended::Ok,
        "the slot was given back"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn stuck_probes_are_given_up_after_the_maximum_wait() {
    let layer = tripping(1)
        .open_backoff(1.0, secs(1))
        .max_half_open_wait(secs(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    tokio::time::advance(secs(1)).await;
    let mut hung = service.clone();
    let hung = tokio::spawn(async move { send(&mut hung, Call::ok().after(secs(3600))).await });
    tokio::task::yield_now().await;
    tokio::time::advance(secs(29)).await;
    assert_eq!(send(&mut service, Call::ok()).await, Ended::Rejected);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    tokio::time::advance(secs(1)).await;
    assert_eq!(send(&mut service, Call::ok()).await, Ended::Rejected);
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "gave up on the hung probe"
    );
    tokio::time::advance(secs(1)).await;
    assert_eq!(
        send(&mut service, Call::ok()).await,
        Ended::Ok,
        "a fresh trial"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
    // The hung probe finishing late (even as a failure) changes nothing.
    hung.abort();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn calls_admitted_before_a_trip_do_not_count_after_it() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .open_duration(secs(1))
        .open_jitter(0.0)
        .half_open_probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(Backend);
    let mut late = service.clone();
    let late = tokio::spawn(async move { send(&mut late, Call::fail().after(secs(5))).await });
    tokio::task::yield_now().await;
    send(&mut service, Call::fail()).await;
    send(&mut service, Call::fail()).await;
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(secs(1)).await;
    send(&mut service, Call::ok()).await;
    assert_eq!(handle.state(), CircuitState::Closed);
    tokio::time::advance(secs(5)).await;
    assert_eq!(late.await.unwrap(), Ended::Failed);
    assert_eq!(
        handle.metrics().calls,
        0,
        "the late failure belongs to the earlier period"
    );
    assert_eq!(handle.metrics().consecutive_failures, 0);
}

#[cfg(feature = "http")]
mod hints {
    use super::*;
    use seawall::circuit_breaker::error::Open;
    use seawall::http::HttpClassifier;
    use tower::service_fn;

    #[tokio::test(start_paused = true)]
    async fn retry_after_opens_for_the_hinted_time() {
        let layer = CircuitBreakerLayer::builder()
            .classify(HttpClassifier::default())
            .honour_retry_after(secs(60))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = layer.layer(service_fn(|retry: &'static str| async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(503)
                    .header("retry-after", retry)
                    .body(())
                    .unwrap(),
            )
        }));
        let response = service.ready().await.unwrap().call("7").await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(handle.state(), CircuitState::Open, "one hinted 503 opens");
        let err = service.ready().await.unwrap().call("7").await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Open>().unwrap().retry_after(),
            Some(secs(7))
        );
        tokio::time::advance(secs(7)).await;
        handle.reset();
        // A hint beyond the cap is capped.
        service.ready().await.unwrap().call("3600").await.unwrap();
        let err = service.ready().await.unwrap().call("1").await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Open>().unwrap().retry_after(),
            Some(secs(60))
        );
    }

    /// What docs/tuning.md says of 4xx answers: `HttpClassifier::default()` counts a 401 as a
    /// success (not ignored), so a half-open probe answered 401 closes the breaker; with
    /// `.ignore(401)` the probe says nothing, and the breaker stays half-open for another.
    #[tokio::test(start_paused = true)]
    async fn a_probe_answered_401_closes_the_breaker_unless_401_is_ignored() {
        for ignore in [false, true] {
            let mut classify = HttpClassifier::default();
            if ignore {
                classify = classify.ignore(http::StatusCode::UNAUTHORIZED);
            }
            let layer = CircuitBreakerLayer::builder()
                .classify(classify)
                .consecutive_failures(1)
                .open_duration(secs(10))
                .open_jitter(0.0)
                .half_open_probes(1)
                .build()
                .unwrap();
            let handle = layer.handle();
            let mut service = layer.layer(service_fn(|status: u16| async move {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder().status(status).body(()).unwrap(),
                )
            }));
            service.ready().await.unwrap().call(503).await.unwrap();
            assert_eq!(handle.state(), CircuitState::Open);
            tokio::time::advance(secs(10)).await;
            let probe = service.ready().await.unwrap().call(401).await.unwrap();
            assert_eq!(probe.status(), 401);
            let expected = match ignore {
                false => CircuitState::Closed,
                true => CircuitState::HalfOpen,
            };
            assert_eq!(handle.state(), expected, "ignore 401: {ignore}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hints_are_ignored_unless_enabled() {
        let layer = CircuitBreakerLayer::builder()
            .classify(HttpClassifier::default())
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = layer.layer(service_fn(|_: ()| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "30")
                    .body(())
                    .unwrap(),
            )
        }));
        service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Closed);
        assert_eq!(handle.metrics().failures, 1, "a 429 is a failure");
    }
}

#[tokio::test(start_paused = true)]
async fn extreme_open_durations_saturate_instead_of_panicking() {
    let layer = tripping(1)
        .open_backoff(1e300, Duration::MAX)
        .open_jitter(1.0)
        .build()
        .unwrap();
    let mut service = layer.layer(Backend);
    trip(&mut service).await;
    tokio::time::advance(secs(1)).await;
    // The failed probe reopens for 1 s × 1e300, far beyond what a Duration holds.
    assert_eq!(send(&mut service, Call::fail()).await, Ended::Failed);
    let open = rejection(&mut service).await;
    assert!(open.retry_after().unwrap() > secs(1_000_000), "{open:?}");
}
