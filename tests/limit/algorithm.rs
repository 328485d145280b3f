//! The adaptive limit algorithms against hand-computed sequences, and within their bounds for any
//! stream of samples.

use proptest::prelude::*;
use seawall::limit::algorithm::{Aimd, Algorithm, Fixed, Gradient2, Sample, Vegas, Windowed};
use std::time::Duration;

fn sample(rtt_ms: f64, in_flight: u64) -> Sample {
    Sample {
        rtt: Duration::from_secs_f64(rtt_ms / 1000.0),
        in_flight,
        dropped: false,
        at: tokio::time::Instant::now(),
    }
}

fn dropped(rtt_ms: f64, in_flight: u64) -> Sample {
    Sample {
        dropped: true,
        ..sample(rtt_ms, in_flight)
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn aimd_adds_one_under_load_and_backs_off_on_drops() {
    let mut aimd = Aimd::default();
    assert_eq!(aimd.initial(), 20.0);
    let mut limit = 20.0;
    for expected in [21.0, 22.0, 23.0] {
        limit = aimd.update(limit, &sample(10.0, 12));
        assert_eq!(limit, expected);
    }
    // Less than half the limit in use: no change.
    assert_eq!(aimd.update(limit, &sample(10.0, 11)), 23.0);
    assert_eq!(aimd.update(100.0, &dropped(10.0, 80)), 90.0);
    // A call at the timeout counts as a drop.
    assert_eq!(aimd.update(100.0, &sample(5000.0, 80)), 90.0);
    // Bounds: 20 to 200.
    assert_eq!(aimd.update(20.0, &dropped(1.0, 1)), 20.0);
    assert_eq!(aimd.update(200.0, &sample(1.0, 200)), 200.0);
}

#[test]
fn gradient2_shrinks_as_latency_rises_and_grows_by_its_queue_otherwise() {
    let mut g = Gradient2::default();
    assert_eq!(g.initial(), 20.0);
    // Steady 10 ms: gradient 1, estimate = limit + 4, smoothed by 0.2.
    let limit = g.update(20.0, &sample(10.0, 20));
    assert!(close(limit, 20.0 * 0.8 + 24.0 * 0.2), "{limit}"); // 20.8
    let limit = g.update(limit, &sample(10.0, 20));
    assert!(close(limit, 20.8 * 0.8 + 24.8 * 0.2), "{limit}"); // 21.6
                                                               // 40 ms: the long average (plain, warming up) is 20 ms; gradient max(0.5, 1.5 × 20 / 40) = 0.75.
    let limit = g.update(limit, &sample(40.0, 20));
    assert!(
        close(limit, 21.6 * 0.8 + (21.6 * 0.75 + 4.0) * 0.2),
        "{limit}"
    ); // 21.32
       // A service using less than half the limit: unchanged.
    assert!(close(g.update(limit, &sample(400.0, 5)), limit));
    // A busy service at a steady 10 ms grows its limit by the queue allowance...
    let mut g = Gradient2::default();
    let mut limit = 150.0;
    for _ in 0..20 {
        limit = g.update(limit, &sample(10.0, 150));
    }
    assert!(limit > 150.0, "{limit}");
    // ...and when latency jumps tenfold the gradient floors at 0.5: each step is 0.9 × limit + 0.8,
    // down to the minimum.
    let before = limit;
    limit = g.update(limit, &sample(100.0, 150));
    assert!(close(limit, before * 0.9 + 0.8), "{limit}");
    for _ in 0..40 {
        limit = g.update(limit, &sample(100.0, 150));
    }
    assert_eq!(limit, 20.0);
}

#[test]
fn vegas_follows_its_queue_estimate() {
    let mut v = Vegas::default();
    assert_eq!(v.initial(), 20.0);
    // The first call sets the smallest time, 10 ms.
    assert_eq!(v.update(20.0, &sample(10.0, 20)), 20.0);
    // No queue (rtt = rtt_min): + 6 × log (log = max(1, ⌊log10 20⌋) = 1).
    let limit = v.update(20.0, &sample(10.0, 20));
    assert_eq!(limit, 26.0);
    // 20 ms against 10: queue ⌈26 × 0.5⌉ = 13 > 6: − 1.
    let limit = v.update(limit, &sample(20.0, 26));
    assert_eq!(limit, 25.0);
    // Queue ⌈25 × 0.2⌉ = 5: between 3 and 6, unchanged.
    assert_eq!(v.update(limit, &sample(12.5, 25)), 25.0);
    // Queue ⌈25 × (1 − 10/10.5)⌉ = 2 < 3: + 1.
    assert_eq!(v.update(limit, &sample(10.5, 25)), 26.0);
    // A drop: − 1.
    assert_eq!(v.update(26.0, &dropped(10.0, 26)), 25.0);
    // Less than half in use: unchanged.
    assert_eq!(v.update(26.0, &sample(50.0, 3)), 26.0);
}

#[test]
fn vegas_measures_its_smallest_time_again_every_probe_period() {
    let mut v = Vegas::default();
    assert_eq!(v.update(20.0, &sample(10.0, 20)), 20.0); // rtt_min 10 ms
    let limit = v.update(20.0, &sample(10.0, 20));
    assert_eq!(limit, 26.0);
    // The service is now slower for good: 50 ms, while lightly used (no change to the limit).
    for _ in 0..(30 * 26) {
        assert_eq!(v.update(limit, &sample(50.0, 1)), limit);
    }
    // The probe period (at most 30 × limit samples, whatever the jitter) has passed: 50 ms is the
    // new smallest time, so 50 ms means no queue.
    assert_eq!(v.update(limit, &sample(50.0, 26)), 32.0);
}

/// A failed call that was not timed: no round-trip time.
fn untimed_drop(in_flight: u64) -> Sample {
    Sample {
        rtt: Duration::ZERO,
        ..dropped(0.0, in_flight)
    }
}

#[test]
fn vegas_leaves_the_limit_on_a_new_minimum_time() {
    // As Netflix's VegasLimit: a sample that sets a new smallest time only records it.
    let mut v = Vegas::default();
    assert_eq!(v.update(20.0, &sample(10.0, 20)), 20.0, "the first time");
    assert_eq!(v.update(20.0, &sample(10.0, 20)), 26.0, "no queue");
    assert_eq!(v.update(26.0, &sample(5.0, 26)), 26.0, "a new minimum");
    assert_eq!(v.update(26.0, &sample(5.0, 26)), 32.0, "no queue at 5 ms");
    // A drop that sets a new minimum records it too, as Netflix's does.
    assert_eq!(v.update(32.0, &dropped(4.0, 32)), 32.0);
    assert_eq!(v.update(32.0, &dropped(4.0, 32)), 31.0);
}

#[test]
fn untimed_drops_move_vegas_and_gradient2() {
    let mut v = Vegas::default();
    assert_eq!(v.update(26.0, &untimed_drop(26)), 25.0, "no time yet");
    v.update(25.0, &sample(10.0, 25));
    assert_eq!(
        v.update(25.0, &untimed_drop(1)),
        24.0,
        "whatever is in flight"
    );
    // Gradient2 reads an untimed drop as the slowest time it knows: the gradient at its floor.
    let mut g = Gradient2::default();
    let limit = g.update(100.0, &untimed_drop(100));
    assert!(
        close(limit, 100.0 * 0.8 + (100.0 * 0.5 + 4.0) * 0.2),
        "{limit}"
    ); // 90.8
    let mut limit = limit;
    for _ in 0..3 {
        limit = g.update(limit, &sample(10.0, 100));
    }
    let before = limit;
    limit = g.update(limit, &untimed_drop(100));
    assert!(close(limit, before * 0.9 + 0.8), "{limit}");
    // Like any other sample, it says nothing while the service uses under half the limit.
    assert!(close(g.update(limit, &untimed_drop(10)), limit));
}

/// How many samples Vegas takes before it measures its smallest time again: after one sample of
/// 10 ms (the first minimum), lightly loaded samples of 50 ms, until a busy sample of 50 ms reads
/// as no queue (50 ms is then the minimum).
fn probe_after(mut v: Vegas) -> u32 {
    let limit = 20.0;
    assert_eq!(v.update(limit, &sample(10.0, 20)), limit);
    for n in 2..10_000 {
        assert_eq!(v.update(limit, &sample(50.0, 1)), limit);
        let mut busy = v;
        if busy.update(limit, &sample(50.0, 20)) > limit {
            return n;
        }
    }
    panic!("never probed");
}

#[test]
fn vegas_probes_again_after_a_jittered_count() {
    // Netflix's VegasLimit probes after `jitter × probe × limit` samples, jitter in [0.5, 1):
    // here 300 to 600 samples, from a seeded generator.
    let counts: Vec<u32> = (0..8)
        .map(|seed| probe_after(Vegas::default().seed(seed)))
        .collect();
    for &n in &counts {
        assert!((300..=600).contains(&n), "{counts:?}");
    }
    let mut distinct = counts.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 4, "jittered: {counts:?}");
    // The same seed, the same draws.
    assert_eq!(probe_after(Vegas::default().seed(3)), counts[3]);
}

#[test]
fn a_fixed_limit_is_fixed() {
    let mut f = Fixed(7);
    assert_eq!(f.initial(), 7.0);
    assert_eq!(f.update(7.0, &dropped(1.0, 7)), 7.0);
}

/// A sample, and how long after the one before it ended.
fn any_sample() -> impl Strategy<Value = (Sample, Duration)> {
    (
        prop_oneof![Just(0u64), any::<u64>(), 1u64..100_000_000],
        any::<u64>(),
        any::<bool>(),
        prop_oneof![Just(0u64), 0u64..2_000_000_000],
    )
        .prop_map(|(nanos, in_flight, dropped, gap)| {
            let sample = Sample {
                rtt: Duration::from_nanos(nanos),
                in_flight,
                dropped,
                at: tokio::time::Instant::now(),
            };
            (sample, Duration::from_nanos(gap))
        })
}

/// A sample that ended `ms` milliseconds after `start`.
fn at(start: tokio::time::Instant, ms: u64, rtt_ms: f64, in_flight: u64) -> Sample {
    Sample {
        at: start + Duration::from_millis(ms),
        ..sample(rtt_ms, in_flight)
    }
}

#[test]
fn windowed_feeds_one_aggregate_per_window() {
    /// Records what it is fed, and returns the limit plus one.
    #[derive(Default)]
    struct Spy(Vec<Sample>);
    impl Algorithm for Spy {
        fn initial(&self) -> f64 {
            20.0
        }
        fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
            self.0.push(*sample);
            limit + 1.0
        }
    }
    let start = tokio::time::Instant::now();
    let mut w = Windowed::new(Spy::default());
    assert_eq!(w.initial(), 20.0);
    // The first window: ten calls of 10 to 19 ms over the first second, one of them dropped, and
    // a cache hit of 50 µs that is left out. Nothing reaches the algorithm until a call ends at or
    // after one second.
    let mut limit = 20.0;
    for i in 0..10u64 {
        let mut s = at(start, i * 100, 10.0 + i as f64, 5 + i % 4);
        s.dropped = i == 3;
        limit = w.update(limit, &s);
    }
    limit = w.update(limit, &at(start, 950, 0.05, 30));
    assert_eq!(limit, 20.0);
    assert!(w.inner.0.is_empty());
    limit = w.update(limit, &at(start, 1000, 25.0, 2));
    assert_eq!(limit, 21.0);
    let fed = w.inner.0[0];
    // Eleven calls: (10 + 11 + … + 19 + 25) / 11 ms.
    let average = (145.0 + 25.0) / 11.0;
    assert!(
        (fed.rtt.as_secs_f64() * 1000.0 - average).abs() < 1e-6,
        "{fed:?}"
    );
    assert_eq!(fed.in_flight, 8);
    assert!(fed.dropped);
    assert_eq!(fed.at, start + Duration::from_secs(1));
    // The next window closes one second later (twice the shortest time, 20 ms, is below the
    // minimum), but holds too few calls to be used.
    for i in 1..=5 {
        limit = w.update(limit, &at(start, 1000 + i * 200, 30.0, 10));
    }
    assert_eq!(limit, 21.0);
    assert_eq!(w.inner.0.len(), 1);
}

#[test]
fn windowed_windows_last_twice_the_shortest_call_within_bounds() {
    let start = tokio::time::Instant::now();
    let mut w = Windowed::new(Aimd::default());
    w.min_time = Duration::from_millis(100);
    w.max_time = Duration::from_secs(10);
    w.min_samples = 1;
    // The first window opens with the first call and lasts the minimum; its shortest call took
    // 2 s, so the next lasts 4 s.
    let mut limit = w.initial();
    limit = w.update(limit, &at(start, 0, 2000.0, 15));
    assert_eq!(limit, 20.0);
    limit = w.update(limit, &at(start, 100, 2000.0, 15));
    assert_eq!(limit, 21.0);
    limit = w.update(limit, &at(start, 4000, 2000.0, 15));
    assert_eq!(limit, 21.0, "the window is still open");
    limit = w.update(limit, &at(start, 4100, 2000.0, 15));
    assert_eq!(limit, 22.0);
}

proptest! {
    #[test]
    fn every_algorithm_keeps_its_limit_within_bounds(
        samples in proptest::collection::vec(any_sample(), 1..300)
    ) {
        let mut algorithms: Vec<(Box<dyn Algorithm>, f64, f64)> = vec![
            (Box::new(Aimd::default()), 20.0, 200.0),
            (Box::new(Gradient2::new(50)), 20.0, 200.0),
            (Box::new(Vegas::default().seed(1)), 1.0, 1000.0),
            (Box::new(Fixed(9)), 9.0, 9.0),
            (Box::new(Windowed::new(Gradient2::new(50))), 20.0, 200.0),
            (Box::new(Windowed::new(Vegas::default().seed(1))), 1.0, 1000.0),
        ];
        for (algorithm, min, max) in &mut algorithms {
            let mut limit = algorithm.initial();
            let mut now = tokio::time::Instant::now();
            for (s, gap) in &samples {
                now += *gap;
                let s = Sample { at: now, ..*s };
                limit = algorithm.update(limit, &s);
                prop_assert!(limit.is_finite() && limit >= *min && limit <= *max, "{limit}");
            }
        }
    }
}

/// `count` untimed drops fed one by one.
fn one_by_one<A: Algorithm>(algorithm: &mut A, limit: f64, drop: &Sample, count: u64) -> f64 {
    (0..count).fold(limit, |limit, _| algorithm.update(limit, drop))
}

proptest! {
    #[test]
    fn drops_at_once_count_as_one_by_one(
        count in prop_oneof![0u64..100, Just(0), Just(1)],
        limit in 1.0f64..300.0,
        in_flight in 0u64..400,
        gap_ms in 0u64..3_000,
        backoff in 0.05f64..0.99,
    ) {
        let drop = Sample { at: tokio::time::Instant::now(), ..untimed_drop(in_flight) };
        let aimd = Aimd { backoff, ..Aimd::default() };
        let (mut a, mut b) = (aimd, aimd);
        let (x, y) = (a.update_dropped(limit, &drop, count), one_by_one(&mut b, limit, &drop, count));
        prop_assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "aimd: {x} vs {y}");

        // A window with calls in it, then the drops, then a call that may close it.
        let start = tokio::time::Instant::now();
        let mut windowed = Windowed::new(Gradient2::new(50));
        windowed.min_samples = 3;
        let mut l = windowed.initial();
        for i in 0..5 {
            l = windowed.update(l, &at(start, i * 100, 10.0, in_flight));
        }
        let (mut a, mut b) = (windowed, windowed);
        let drop = Sample { at: start + Duration::from_millis(gap_ms), ..drop };
        let (x, y) = (a.update_dropped(l, &drop, count), one_by_one(&mut b, l, &drop, count));
        prop_assert_eq!(x, y);
        prop_assert_eq!(a, b);
        let next = at(start, gap_ms + 1_500, 20.0, in_flight);
        prop_assert_eq!(a.update(x, &next), b.update(y, &next));

        let mut fixed = Fixed(9);
        prop_assert_eq!(fixed.update_dropped(limit, &drop, count), 9.0);
    }
}

#[test]
fn drops_at_once_cost_constant_time_and_the_default_feeds_at_most_a_batch() {
    let drop = untimed_drop(1_000);
    // A billion drops at once: Aimd at its floor, in one step.
    assert_eq!(
        Aimd::default().update_dropped(200.0, &drop, 1_000_000_000),
        20.0
    );
    assert_eq!(Aimd::default().update_dropped(200.0, &drop, u64::MAX), 20.0);
    let mut windowed = Windowed::new(Aimd::default());
    assert_eq!(windowed.update_dropped(50.0, &drop, u64::MAX), 50.0);

    // Vegas counts them one by one, at most a batch of them.
    let mut vegas = Vegas::default().seed(3);
    let mut reference = vegas;
    let batch = seawall::limit::algorithm::DROPS_AT_ONCE;
    let once = vegas.update_dropped(500.0, &drop, u64::MAX);
    assert_eq!(once, one_by_one(&mut reference, 500.0, &drop, batch));
    assert_eq!(once, 500.0 - 2.0 * batch as f64);
}
