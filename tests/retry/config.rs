//! The retry layer's configuration: each mistake is a typed error from the builder.

use seawall::retry::backoff::Backoff;
use seawall::retry::{ConfigError, RetryLayer};
use std::time::Duration;

#[test]
fn each_mistake_is_a_typed_error() {
    let err = RetryLayer::builder()
        .backoff(Backoff::exponential(Duration::from_millis(10)).factor(0.5))
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::BackoffFactor(0.5));
    let err = RetryLayer::builder()
        .backoff(Backoff::exponential(Duration::from_millis(10)).factor(f64::NAN))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::BackoffFactor(f) if f.is_nan()),
        "{err:?}"
    );

    let err = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::from_secs(2)).max(Duration::from_secs(1)))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::BackoffCap {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(1)
        }
    );

    let err = RetryLayer::builder()
        .max_retries(u32::MAX)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::MaxRetries {
                retries: u32::MAX,
                ..
            }
        ),
        "{err:?}"
    );

    let err = RetryLayer::builder()
        .max_elapsed(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::MaxElapsed);

    assert!(RetryLayer::builder().build().is_ok());
}
