//! A bulkhead's configuration: each mistake is a typed error from the builder; only the
//! convenience constructor panics, as its docs say.

use seawall::bulkhead::{BulkheadLayer, ConfigError, MAX_CONCURRENT};
use std::time::Duration;

#[test]
fn each_mistake_is_a_typed_error() {
    let err = BulkheadLayer::builder()
        .max_concurrent(0)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::MaxConcurrent);
    assert_eq!(err.to_string(), "max concurrent calls must be at least 1");

    let err = BulkheadLayer::builder()
        .max_concurrent(MAX_CONCURRENT + 1)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::MaxConcurrentTooLarge {
            limit: MAX_CONCURRENT + 1,
            max: MAX_CONCURRENT
        }
    );

    let err = BulkheadLayer::builder()
        .max_wait(Duration::from_millis(10))
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::MaxWaitWithoutQueue);

    // The same mistakes through `build_static`.
    let err = BulkheadLayer::builder()
        .max_concurrent(0)
        .build_static()
        .unwrap_err();
    assert_eq!(err, ConfigError::MaxConcurrent);

    // The bounds themselves are accepted.
    assert!(BulkheadLayer::builder().max_concurrent(1).build().is_ok());
    assert!(BulkheadLayer::builder()
        .max_concurrent(MAX_CONCURRENT)
        .queue(1)
        .max_wait(Duration::from_millis(10))
        .build()
        .is_ok());
}

#[test]
#[should_panic(expected = "BulkheadLayer::new: max concurrent calls must be at least 1")]
fn the_convenience_constructor_panics_on_zero_as_documented() {
    let _ = BulkheadLayer::new(0);
}
