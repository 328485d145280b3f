//! Adaptive limiter configurations that once panicked: bounds the wrong way round, or not a
//! number, in an algorithm's public fields.

use seawall::limit::algorithm::{Aimd, Algorithm, Gradient2, Sample, Vegas};
use seawall::limit::AdaptiveLimitLayer;
use std::time::Duration;

fn sample() -> Sample {
    Sample {
        rtt: Duration::from_millis(10),
        in_flight: 50,
        dropped: false,
        at: tokio::time::Instant::now(),
    }
}

#[test]
fn bounds_the_wrong_way_round_never_panic_and_the_maximum_wins() {
    let aimd = Aimd {
        min: 50.0,
        max: 10.0,
        ..Aimd::default()
    };
    let layer = AdaptiveLimitLayer::builder(aimd).build();
    assert_eq!(layer.handle().limit(), 10);
    let mut aimd = aimd;
    assert_eq!(aimd.update(10.0, &sample()), 10.0);

    let mut gradient = Gradient2::default();
    (gradient.min, gradient.max) = (50.0, 10.0);
    assert_eq!(gradient.initial(), 10.0);
    assert_eq!(gradient.update(10.0, &sample()), 10.0);

    let mut vegas = Vegas::default();
    (vegas.min, vegas.max) = (50.0, 10.0);
    assert_eq!(vegas.initial(), 10.0);
    assert_eq!(vegas.update(10.0, &sample()), 10.0);
}

#[test]
fn bounds_that_are_not_numbers_never_panic() {
    let aimd = Aimd {
        min: f64::NAN,
        max: f64::NAN,
        ..Aimd::default()
    };
    let layer = AdaptiveLimitLayer::builder(aimd).build();
    assert!(layer.handle().limit() >= 1);
    let mut aimd = aimd;
    let _ = aimd.update(20.0, &sample());
}
