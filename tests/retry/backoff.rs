//! Every backoff and jitter stays within its documented bounds for any retry number, the cap
//! applies before the jitter, and sessions do not synchronise.

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use seawall::retry::backoff::{Backoff, Jitter};
use std::time::Duration;

const JITTERS: [Jitter; 4] = [
    Jitter::None,
    Jitter::Full,
    Jitter::Equal,
    Jitter::Decorrelated,
];

fn kinds(base: Duration, step: Duration, factor: f64) -> [Backoff; 4] {
    [
        Backoff::constant(base),
        Backoff::linear(base, step),
        Backoff::exponential(base).factor(factor),
        Backoff::decorrelated(base),
    ]
}

#[test]
fn nominal_delays_follow_their_formulas() {
    let ms = Duration::from_millis;
    let expo = Backoff::exponential(ms(100)).max(ms(1000));
    let got: Vec<_> = (1..=6).map(|n| expo.nominal(n, Duration::ZERO)).collect();
    assert_eq!(
        got,
        [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
    );
    let linear = Backoff::linear(ms(100), ms(50)).max(ms(220));
    let got: Vec<_> = (1..=4).map(|n| linear.nominal(n, Duration::ZERO)).collect();
    assert_eq!(got, [ms(100), ms(150), ms(200), ms(220)]);
    let tripled = Backoff::exponential(ms(10)).factor(3.0);
    assert_eq!(tripled.nominal(4, Duration::ZERO), ms(270));
    let decorrelated = Backoff::decorrelated(ms(10)).max(ms(100));
    assert_eq!(decorrelated.nominal(1, Duration::ZERO), ms(30));
    assert_eq!(decorrelated.nominal(2, ms(20)), ms(60));
    assert_eq!(decorrelated.nominal(3, ms(50)), ms(100));
    // Without jitter the delay is the nominal delay.
    let mut rng = SmallRng::seed_from_u64(1);
    let fixed = Backoff::exponential(ms(100)).jitter(Jitter::None);
    assert_eq!(fixed.delay(3, Duration::ZERO, &mut rng), ms(400));
}

#[test]
fn the_cap_applies_before_the_jitter() {
    // Deep into an outage the nominal delay is the cap, and full jitter still spreads clients over
    // [0, cap] instead of piling them onto it.
    let cap = Duration::from_secs(10);
    let backoff = Backoff::exponential(Duration::from_millis(100)).max(cap);
    let mut rng = SmallRng::seed_from_u64(7);
    let delays: Vec<_> = (0..1000)
        .map(|_| backoff.delay(50, Duration::ZERO, &mut rng))
        .collect();
    assert!(delays.iter().all(|d| *d <= cap));
    let at_cap = delays.iter().filter(|d| **d == cap).count();
    assert!(at_cap < 5, "{at_cap} of 1000 delays sat on the cap");
    let below_half = delays.iter().filter(|d| **d < cap / 2).count();
    assert!((400..600).contains(&below_half), "{below_half}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_combination_stays_within_its_bounds(
        base_ns in 0u64..=10_000_000_000,
        step_ns in 0u64..=10_000_000_000,
        extra_cap_ns in 0u64..=u64::MAX / 4,
        factor in 1.0f64..16.0,
        retry in prop_oneof![1u32..20, any::<u32>()],
        previous_ns in prop_oneof![Just(0u64), any::<u64>()],
        seed in any::<u64>(),
    ) {
        let base = Duration::from_nanos(base_ns);
        let step = Duration::from_nanos(step_ns);
        let cap = base + Duration::from_nanos(extra_cap_ns);
        let previous = Duration::from_nanos(previous_ns);
        let mut rng = SmallRng::seed_from_u64(seed);
        for kind in kinds(base, step, factor) {
            for jitter in JITTERS {
                let backoff = kind.max(cap).jitter(jitter);
                let nominal = backoff.nominal(retry, previous);
                prop_assert!(nominal <= cap);
                let delay = backoff.delay(retry, previous, &mut rng);
                prop_assert!(delay <= cap, "{backoff:?} retry {retry}: {delay:?} > cap");
                match jitter {
                    Jitter::None => prop_assert_eq!(delay, nominal),
                    Jitter::Full => prop_assert!(delay <= nominal),
                    Jitter::Equal => prop_assert!(delay >= nominal / 2 && delay <= nominal),
                    _ => {
                        let previous = if previous.is_zero() { base } else { previous };
                        let high = previous.saturating_mul(3).max(base).min(cap);
                        prop_assert!(delay >= base.min(high) && delay <= high);
                    }
                }
            }
        }
    }

    #[test]
    fn exponential_delays_never_shrink_before_the_cap(
        base_ms in 1u64..1000,
        factor in 1.1f64..4.0,
        cap_s in 1u64..3600,
    ) {
        let backoff = Backoff::exponential(Duration::from_millis(base_ms))
            .factor(factor)
            .max(Duration::from_secs(cap_s).max(Duration::from_millis(base_ms)));
        let mut last = Duration::ZERO;
        for retry in 1..200 {
            let nominal = backoff.nominal(retry, Duration::ZERO);
            prop_assert!(nominal >= last);
            last = nominal;
        }
        prop_assert_eq!(last, backoff.cap());
    }
}
