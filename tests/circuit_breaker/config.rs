//! Every invalid setting is a `ConfigError`, never a panic.

use proptest::prelude::*;
use seawall::circuit_breaker::{CircuitBreakerLayer, ConfigError};
use std::time::Duration;

#[test]
fn each_mistake_has_its_variant() {
    let b = CircuitBreakerLayer::builder;
    let err = |r: Result<CircuitBreakerLayer, ConfigError>| r.unwrap_err();
    assert_eq!(
        err(b().failure_rate_threshold(0.0).build()),
        ConfigError::FailureRateThreshold(0.0)
    );
    assert_eq!(
        err(b().failure_rate_threshold(100.5).build()),
        ConfigError::FailureRateThreshold(100.5)
    );
    assert!(matches!(
        err(b().failure_rate_threshold(f64::NAN).build()),
        ConfigError::FailureRateThreshold(_)
    ));
    assert_eq!(
        err(b()
            .slow_call_rate_threshold(-1.0, Duration::from_secs(1))
            .build()),
        ConfigError::SlowCallRateThreshold(-1.0)
    );
    assert_eq!(
        err(b().slow_call_rate_threshold(50.0, Duration::ZERO).build()),
        ConfigError::SlowCallDuration
    );
    assert_eq!(
        err(b().consecutive_failures(0).build()),
        ConfigError::ConsecutiveFailures
    );
    assert_eq!(
        err(b().count_window(0).build()),
        ConfigError::CountWindowSize {
            size: 0,
            max: 1_000_000
        }
    );
    assert_eq!(
        err(b().count_window(2_000_000).build()),
        ConfigError::CountWindowSize {
            size: 2_000_000,
            max: 1_000_000
        }
    );
    assert_eq!(err(b().minimum_calls(0).build()), ConfigError::MinimumCalls);
    assert_eq!(
        err(b().count_window(10).minimum_calls(11).build()),
        ConfigError::MinimumCallsExceedsWindow {
            minimum: 11,
            size: 10
        }
    );
    assert_eq!(
        err(b().time_window_buckets(Duration::from_secs(10), 0).build()),
        ConfigError::TimeWindowBuckets {
            buckets: 0,
            max: 256
        }
    );
    assert_eq!(
        err(b().time_window_buckets(Duration::from_nanos(5), 10).build()),
        ConfigError::TimeWindowDuration(Duration::from_nanos(5))
    );
    assert_eq!(
        err(b().time_window(Duration::ZERO).build()),
        ConfigError::TimeWindowDuration(Duration::ZERO)
    );
    assert_eq!(
        err(b().half_open_probes(0).build()),
        ConfigError::HalfOpenProbes {
            probes: 0,
            max: 1023
        }
    );
    assert_eq!(
        err(b().half_open_probes(5000).build()),
        ConfigError::HalfOpenProbes {
            probes: 5000,
            max: 1023
        }
    );
    assert_eq!(
        err(b().open_duration(Duration::ZERO).build()),
        ConfigError::OpenDuration
    );
    assert_eq!(
        err(b()
            .open_duration(Duration::from_secs(10))
            .open_backoff(2.0, Duration::from_secs(5))
            .build()),
        ConfigError::MaxOpenDuration {
            base: Duration::from_secs(10),
            max: Duration::from_secs(5)
        }
    );
    assert_eq!(
        err(b().open_backoff(0.5, Duration::from_secs(60)).build()),
        ConfigError::OpenMultiplier(0.5)
    );
    assert!(matches!(
        err(b()
            .open_backoff(f64::INFINITY, Duration::from_secs(60))
            .build()),
        ConfigError::OpenMultiplier(_)
    ));
    assert_eq!(
        err(b().open_jitter(1.5).build()),
        ConfigError::OpenJitter(1.5)
    );
    assert_eq!(
        err(b().max_half_open_wait(Duration::ZERO).build()),
        ConfigError::MaxHalfOpenWait
    );
    assert_eq!(
        err(b().honour_retry_after(Duration::ZERO).build()),
        ConfigError::MaxRetryAfter
    );
    assert_eq!(err(b().no_failure_rate().build()), ConfigError::NoTripRule);
    assert!(b()
        .no_failure_rate()
        .consecutive_failures(3)
        .build()
        .is_ok());
    // Errors say what is wrong.
    assert!(ConfigError::MinimumCallsExceedsWindow {
        minimum: 11,
        size: 10
    }
    .to_string()
    .contains("exceeds the count window"));
}

proptest! {
    #[test]
    fn any_settings_build_or_fail_cleanly(
        rate in prop_oneof![Just(f64::NAN), -10.0..200.0f64],
        slow in (-10.0..200.0f64, 0u64..5_000),
        consecutive in proptest::option::of(0u32..10),
        minimum in 0u64..300,
        window in prop_oneof![(0u32..2_000_000).prop_map(Ok), (0u64..100_000_000_000, 0u32..400).prop_map(Err)],
        probes in 0u32..2_000,
        open in 0u64..100_000,
        backoff in (-1.0..10.0f64, 0u64..1_000_000),
        jitter in -1.0..2.0f64,
        wait in 0u64..100_000,
        retry_after in proptest::option::of(0u64..100_000),
    ) {
        let mut b = CircuitBreakerLayer::builder()
            .failure_rate_threshold(rate)
            .slow_call_rate_threshold(slow.0, Duration::from_millis(slow.1))
            .minimum_calls(minimum)
            .half_open_probes(probes)
            .open_duration(Duration::from_millis(open))
            .open_backoff(backoff.0, Duration::from_millis(backoff.1))
            .open_jitter(jitter)
            .max_half_open_wait(Duration::from_millis(wait));
        if let Some(n) = consecutive {
            b = b.consecutive_failures(n);
        }
        if let Some(ms) = retry_after {
            b = b.honour_retry_after(Duration::from_millis(ms));
        }
        b = match window {
            Ok(n) => b.count_window(n),
            Err((nanos, buckets)) => b.time_window_buckets(Duration::from_nanos(nanos), buckets),
        };
        let valid = rate > 0.0 && rate <= 100.0
            && slow.0 > 0.0 && slow.0 <= 100.0 && slow.1 > 0
            && consecutive != Some(0)
            && minimum > 0
            && match window {
                Ok(n) => n > 0 && n <= 1_000_000 && minimum <= n as u64,
                Err((nanos, buckets)) => buckets > 0 && buckets <= 256 && nanos >= buckets as u64,
            }
            && probes > 0 && probes <= 1023
            && open > 0 && backoff.1 >= open && backoff.0 >= 1.0
            && (0.0..=1.0).contains(&jitter)
            && wait > 0
            && retry_after != Some(0);
        prop_assert_eq!(b.build().is_ok(), valid);
    }
}
