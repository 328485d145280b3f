//! Sliding windows against plain models, and under concurrent recording.

use proptest::prelude::*;
use seawall::core::window::{CountWindow, Counts, Sample, TimeWindow, MAX_COUNT_WINDOW};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

fn sample() -> impl Strategy<Value = Sample> {
    (any::<bool>(), any::<bool>()).prop_map(|(f, s)| Sample::new(f, s))
}

fn count(samples: impl IntoIterator<Item = Sample>) -> Counts {
    let mut c = Counts::default();
    for s in samples {
        c.calls += 1;
        c.failures += s.failure as u64;
        c.slow += s.slow as u64;
    }
    c
}

proptest! {
    #[test]
    fn count_window_holds_exactly_the_last_n(size in 1u32..50, samples in proptest::collection::vec(sample(), 0..400)) {
        let window = CountWindow::new(size);
        let mut model = VecDeque::new();
        for s in samples {
            let before = window.counts();
            let changed = window.record(s);
            model.push_back(s);
            if model.len() > size as usize {
                model.pop_front();
            }
            let now = window.counts();
            prop_assert_eq!(now, count(model.iter().copied()));
            prop_assert_eq!(changed, now != before || before.calls < size as u64);
        }
        window.reset();
        prop_assert_eq!(window.counts(), Counts::default());
    }

    #[test]
    fn count_window_starts_again_from_nothing_on_each_reset(
        size in 1u32..20,
        steps in proptest::collection::vec(prop_oneof![9 => sample().prop_map(Some), 1 => Just(None)], 0..400),
    ) {
        let window = CountWindow::new(size);
        let mut model = VecDeque::new();
        for step in steps {
            match step {
                Some(s) => {
                    let before = window.counts();
                    let changed = window.record(s);
                    model.push_back(s);
                    if model.len() > size as usize {
                        model.pop_front();
                    }
                    let now = window.counts();
                    prop_assert_eq!(changed, now != before || before.calls < size as u64);
                }
                None => {
                    window.reset();
                    model.clear();
                }
            }
            prop_assert_eq!(window.counts(), count(model.iter().copied()));
        }
    }

    #[test]
    fn time_window_counts_the_buckets_in_reach(
        buckets in 1u32..20,
        bucket_ms in 1u64..100,
        steps in proptest::collection::vec((0u64..150, sample()), 0..300),
    ) {
        let ms = 1_000_000u64;
        let window = TimeWindow::new(Duration::from_millis(bucket_ms * buckets as u64), buckets);
        let mut now = 0u64;
        let mut recorded: Vec<(u64, Sample)> = Vec::new();
        for (gap, s) in steps {
            now += gap * ms;
            window.record(now, s);
            recorded.push((now, s));
            // In reach: calls whose bucket is one of the last `buckets` buckets up to now.
            let epoch = now / (bucket_ms * ms);
            let first = (epoch + 1).saturating_sub(buckets as u64);
            let expected = count(
                recorded.iter().filter(|(t, _)| t / (bucket_ms * ms) >= first).map(|(_, s)| *s),
            );
            prop_assert_eq!(window.counts(), expected);
        }
        let later = now + (buckets as u64 + 1) * bucket_ms * ms;
        prop_assert_eq!(window.counts_at(later), Counts::default());
    }
}

#[test]
fn count_window_is_exact_under_concurrent_recording() {
    let window = Arc::new(CountWindow::new(97));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let window = window.clone();
            std::thread::spawn(move || {
                for i in 0..200_000u64 {
                    window.record(Sample::new((i + t) % 3 == 0, i % 5 == 0));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Whatever order the calls landed in, the aggregate equals what the slots hold: re-recording 97
    // known outcomes replaces every slot, and the counts must then be exactly theirs.
    for i in 0..97 {
        window.record(Sample::new(i < 40, i < 10));
    }
    assert_eq!(
        window.counts(),
        Counts {
            calls: 97,
            failures: 40,
            slow: 10
        }
    );
}

#[test]
fn a_reset_of_the_largest_window_is_followed_by_exact_counts() {
    let window = CountWindow::new(MAX_COUNT_WINDOW);
    for i in 0..MAX_COUNT_WINDOW {
        window.record(Sample::new(i % 2 == 0, i % 3 == 0));
    }
    for round in 0..3u32 {
        window.reset();
        assert_eq!(window.counts(), Counts::default());
        for i in 0..10 + round {
            window.record(Sample::new(i < 4, i < 1));
        }
        assert_eq!(
            window.counts(),
            Counts {
                calls: 10 + round as u64,
                failures: 4,
                slow: 1
            }
        );
    }
}

#[test]
fn count_window_is_exact_under_resets_racing_records() {
    let window = Arc::new(CountWindow::new(61));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recorders: Vec<_> = (0..3)
        .map(|t| {
            let window = window.clone();
            std::thread::spawn(move || {
                for i in 0..100_000u64 {
                    window.record(Sample::new((i + t) % 3 == 0, i % 4 == 0));
                }
            })
        })
        .collect();
    let resetter = {
        let window = window.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut resets = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                window.reset();
                resets += 1;
                std::thread::yield_now();
            }
            resets
        })
    };
    for t in recorders {
        t.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(resetter.join().unwrap() > 0);
    let c = window.counts();
    assert!(
        c.calls <= 61 && c.failures <= c.calls && c.slow <= c.calls,
        "{c:?}"
    );
    // Whatever landed before or after which reset, the counts follow the current generation's
    // slots exactly: 61 known outcomes replace every slot, and the counts are then exactly theirs.
    for i in 0..61 {
        window.record(Sample::new(i < 11, false));
    }
    assert_eq!(
        window.counts(),
        Counts {
            calls: 61,
            failures: 11,
            slow: 0
        }
    );
    window.reset();
    for i in 0..30 {
        window.record(Sample::new(i < 7, i < 2));
    }
    assert_eq!(
        window.counts(),
        Counts {
            calls: 30,
            failures: 7,
            slow: 2
        }
    );
}

#[test]
fn time_window_is_exact_under_concurrent_recording_and_rotation() {
    let window = Arc::new(TimeWindow::new(Duration::from_millis(8), 8));
    let ms = 1_000_000u64;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let window = window.clone();
            std::thread::spawn(move || {
                for i in 0..100_000u64 {
                    // Time moves on across many buckets while four threads record into them.
                    window.record(i / 100 * ms / 4, Sample::new((i + t) % 2 == 0, false));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Far in the future every bucket has been emptied: the totals must come back to exactly zero.
    assert_eq!(window.counts_at(10_000_000 * ms), Counts::default());
    window.record(10_000_000 * ms, Sample::new(true, true));
    assert_eq!(
        window.counts(),
        Counts {
            calls: 1,
            failures: 1,
            slow: 1
        }
    );
}

#[test]
fn rates_are_unknown_below_the_minimum() {
    let c = Counts {
        calls: 9,
        failures: 9,
        slow: 0,
    };
    assert_eq!(c.failure_rate(10), None);
    assert_eq!(c.failure_rate(9), Some(100.0));
    assert_eq!(c.slow_rate(9), Some(0.0));
    assert_eq!(Counts::default().failure_rate(1), None);
}
