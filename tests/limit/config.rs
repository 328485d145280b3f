//! Adaptive limiter configurations: mistakes are typed errors from `build`, never a panic; an
//! algorithm given bounds the wrong way round, or not a number, directly never panics.

use seawall::bulkhead::MAX_CONCURRENT;
use seawall::limit::algorithm::{Aimd, Algorithm, Fixed, Gradient2, Sample, Vegas, Windowed};
use seawall::limit::{AdaptiveConfigError, AdaptiveLimitLayer};
use std::time::Duration;

fn sample() -> Sample {
    Sample {
        rtt: Duration::from_millis(10),
        in_flight: 50,
        dropped: false,
        at: tokio::time::Instant::now(),
    }
}

/// The setting `build` refuses `algorithm` for.
fn refused<A: Algorithm>(algorithm: A) -> &'static str {
    match AdaptiveLimitLayer::builder(algorithm).build() {
        Err(AdaptiveConfigError::Algorithm(invalid)) => invalid.setting(),
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("built"),
    }
}

#[test]
fn bounds_the_wrong_way_round_are_refused_and_never_panic_an_algorithm() {
    let aimd = Aimd {
        min: 50.0,
        max: 10.0,
        ..Aimd::default()
    };
    assert_eq!(refused(aimd), "min");
    let mut aimd = aimd;
    assert_eq!(aimd.update(10.0, &sample()), 10.0);

    let mut gradient = Gradient2::default();
    (gradient.min, gradient.max) = (50.0, 10.0);
    assert_eq!(refused(gradient), "min");
    assert_eq!(gradient.initial(), 10.0);
    assert_eq!(gradient.update(10.0, &sample()), 10.0);

    let mut vegas = Vegas::default();
    (vegas.min, vegas.max) = (50.0, 10.0);
    assert_eq!(refused(vegas), "min");
    assert_eq!(vegas.initial(), 10.0);
    assert_eq!(vegas.update(10.0, &sample()), 10.0);
}

#[test]
fn bounds_that_are_not_numbers_are_refused_and_never_panic_an_algorithm() {
    let aimd = Aimd {
        min: f64::NAN,
        max: f64::NAN,
        ..Aimd::default()
    };
    assert_eq!(refused(aimd), "min");
    assert_eq!(
        refused(Aimd {
            max: f64::NAN,
            ..Aimd::default()
        }),
        "max"
    );
    assert_eq!(
        refused(Aimd {
            initial: f64::NAN,
            ..Aimd::default()
        }),
        "initial"
    );
    let mut aimd = aimd;
    let _ = aimd.update(20.0, &sample());
}

#[test]
fn every_algorithm_setting_out_of_range_is_refused() {
    let aimd = Aimd::default();
    assert_eq!(
        refused(Aimd {
            backoff: 1.0,
            ..aimd
        }),
        "backoff"
    );
    assert_eq!(
        refused(Aimd {
            backoff: 0.0,
            ..aimd
        }),
        "backoff"
    );
    assert_eq!(
        refused(Aimd {
            timeout: Duration::ZERO,
            ..aimd
        }),
        "timeout"
    );

    let gradient = |change: fn(&mut Gradient2)| {
        let mut gradient = Gradient2::default();
        change(&mut gradient);
        gradient
    };
    assert_eq!(refused(gradient(|g| g.smoothing = 0.0)), "smoothing");
    assert_eq!(refused(gradient(|g| g.tolerance = 0.5)), "tolerance");
    assert_eq!(refused(gradient(|g| g.queue = f64::NAN)), "queue");

    let vegas = |change: fn(&mut Vegas)| {
        let mut vegas = Vegas::default();
        change(&mut vegas);
        vegas
    };
    assert_eq!(refused(vegas(|v| v.smoothing = 2.0)), "smoothing");
    assert_eq!(refused(vegas(|v| v.probe = 0.0)), "probe");

    // A windowed algorithm is checked through.
    assert_eq!(
        refused(Windowed::new(gradient(|g| g.smoothing = 0.0))),
        "smoothing"
    );

    // A fixed limit the bulkhead cannot count.
    assert_eq!(refused(Fixed(0)), "limit");
    assert_eq!(refused(Fixed(MAX_CONCURRENT + 1)), "limit");
    assert_eq!(refused(Fixed(u64::MAX)), "limit");
}

#[test]
fn good_settings_are_taken_and_a_maximum_past_every_count_is_capped() {
    let layer = AdaptiveLimitLayer::builder(Fixed(MAX_CONCURRENT))
        .build()
        .unwrap();
    assert_eq!(layer.handle().limit(), MAX_CONCURRENT);
    for layer in [
        AdaptiveLimitLayer::builder(Aimd::default()).build(),
        AdaptiveLimitLayer::builder(Aimd {
            max: f64::INFINITY,
            ..Aimd::default()
        })
        .build(),
    ] {
        assert_eq!(layer.unwrap().handle().limit(), 20);
    }
    let layer = AdaptiveLimitLayer::builder(Aimd {
        initial: f64::INFINITY,
        max: f64::INFINITY,
        ..Aimd::default()
    })
    .queue(10)
    .max_wait(Duration::from_millis(100))
    .sample_every(4)
    .build()
    .unwrap();
    assert_eq!(layer.handle().limit(), MAX_CONCURRENT);
    assert_eq!(layer.handle().sample_every(), 4);
    AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
        .build()
        .unwrap();
    AdaptiveLimitLayer::builder(Vegas::default())
        .build()
        .unwrap();
}

#[test]
fn sampling_no_call_in_zero_is_refused() {
    let err = AdaptiveLimitLayer::builder(Aimd::default())
        .sample_every(0)
        .build()
        .unwrap_err();
    assert_eq!(err, AdaptiveConfigError::SampleEvery);
}

#[test]
fn a_maximum_wait_without_a_queue_is_refused() {
    let err = AdaptiveLimitLayer::builder(Aimd::default())
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap_err();
    assert_eq!(err, AdaptiveConfigError::MaxWaitWithoutQueue);
}

#[test]
fn build_refuses_what_it_used_to_panic_on_with_an_error() {
    let err = AdaptiveLimitLayer::builder(Aimd::default())
        .sample_every(0)
        .build()
        .unwrap_err();
    assert_eq!(err, AdaptiveConfigError::SampleEvery);
    let backwards = Aimd {
        min: 50.0,
        max: 10.0,
        ..Aimd::default()
    };
    let err = AdaptiveLimitLayer::builder(backwards).build().unwrap_err();
    assert!(matches!(err, AdaptiveConfigError::Algorithm(_)), "{err}");
}
