//! Retry budgets: ratio and token bucket arithmetic against a reference model, expiry, and no
//! overdraw under concurrent withdrawals.

use proptest::prelude::*;
use seawall::retry::budget::Budget;
use seawall::retry::ConfigError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Withdraws until refused; returns how many were granted.
fn drain(budget: &Budget) -> u32 {
    let mut n = 0;
    while budget.try_withdraw() {
        n += 1;
        assert!(n < 1_000_000, "a budget that never runs out");
    }
    n
}

#[tokio::test(start_paused = true)]
async fn a_fresh_ratio_budget_holds_its_reserve() {
    let budget = Budget::ratio(0.2, 10, 10 * SECOND).unwrap();
    assert_eq!(budget.available(), 100.0);
    assert_eq!(drain(&budget), 100);
    assert_eq!(budget.available(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn fractions_add_up_exactly() {
    for (ratio, requests, retries) in [
        (0.2, 100, 20),
        (0.2, 4, 0),
        (0.2, 5, 1),
        (0.3, 10, 3),
        (0.25, 3, 0),
        (0.25, 4, 1),
        (0.001, 1000, 1),
        (0.001, 999, 0),
        (1.5, 2, 3),
    ] {
        let budget = Budget::ratio(ratio, 0, 10 * SECOND).unwrap();
        for _ in 0..requests {
            budget.record_request();
        }
        assert_eq!(drain(&budget), retries, "{ratio} × {requests}");
    }
}

#[tokio::test(start_paused = true)]
async fn deposits_and_withdrawals_expire_after_the_time_to_live() {
    let budget = Budget::ratio(0.5, 1, 10 * SECOND).unwrap();
    for _ in 0..64 {
        budget.record_request(); // 32 retries, dated now
    }
    assert_eq!(budget.available(), 42.0); // 32 + a reserve of 10
    assert_eq!(drain(&budget), 42);
    tokio::time::advance(9 * SECOND).await;
    assert_eq!(budget.available(), 0.0);
    // Past the time to live both the deposits and the withdrawals are gone: the reserve is back.
    tokio::time::advance(SECOND).await;
    assert_eq!(budget.available(), 10.0);
}

#[tokio::test(start_paused = true)]
async fn the_token_bucket_follows_the_aws_arithmetic() {
    let budget = Budget::token_bucket(20, 5, 1).unwrap();
    assert_eq!(budget.available(), 4.0);
    assert_eq!(drain(&budget), 4);
    for _ in 0..4 {
        budget.record_success(0); // one token each
    }
    assert_eq!(drain(&budget), 0); // 4 tokens, a retry costs 5
    budget.record_success(0);
    assert_eq!(drain(&budget), 1);
    budget.record_success(2); // a retried success gives back a retry's cost
    assert_eq!(budget.available(), 1.0);
    for _ in 0..100 {
        budget.record_success(1);
    }
    assert_eq!(budget.available(), 4.0, "never above the capacity");
}

#[test]
fn bad_budgets_are_config_errors() {
    assert_eq!(
        Budget::ratio(-0.1, 10, SECOND).unwrap_err(),
        ConfigError::BudgetRatio(-0.1)
    );
    assert!(matches!(
        Budget::ratio(f64::NAN, 10, SECOND),
        Err(ConfigError::BudgetRatio(_))
    ));
    assert_eq!(
        Budget::ratio(0.2, 10, Duration::from_nanos(5)).unwrap_err(),
        ConfigError::BudgetTtl(Duration::from_nanos(5))
    );
    assert_eq!(
        Budget::token_bucket(10, 0, 1).unwrap_err(),
        ConfigError::BudgetTokens {
            capacity: 10,
            retry_cost: 0
        }
    );
    assert!(Budget::token_bucket(10, 11, 1).is_err());
}

#[test]
fn concurrent_withdrawals_never_overdraw() {
    for budget in [
        Budget::ratio(0.2, 100, 10 * SECOND).unwrap(), // 1000 in reserve
        Budget::token_bucket(5000, 5, 1).unwrap(),     // 1000 retries
        Budget::ratio(0.2, 100, 10 * SECOND).unwrap().leak(),
    ] {
        let granted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                let granted = granted.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if budget.try_withdraw() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(granted.load(Ordering::Relaxed), 1000, "{budget:?}");
        assert_eq!(budget.available(), 0.0);
    }
}

/// What a ratio budget should allow, written plainly: deposits are dated in batches of 64 by the
/// first of the batch, buckets of one tenth of the time to live, expiry after ten buckets.
struct Model {
    deposit: i64,
    reserve: i64,
    pending: i64,
    since: u64,
    net: BTreeMap<u64, i64>,
}

impl Model {
    fn date(&mut self, now: u64) {
        let count = std::mem::take(&mut self.pending);
        if count > 0 && now - self.since < 10 {
            *self.net.entry(self.since).or_default() += count * self.deposit;
        }
    }

    fn request(&mut self, now: u64) {
        if self.pending == 0 {
            self.since = now;
        }
        self.pending += 1;
        if self.pending >= 64 {
            self.date(now);
        }
    }

    fn balance(&mut self, now: u64) -> i64 {
        self.date(now);
        self.net.retain(|epoch, _| now - epoch < 10);
        self.reserve + self.net.values().sum::<i64>()
    }

    fn withdraw(&mut self, now: u64) -> bool {
        if self.balance(now) >= 1000 {
            *self.net.entry(now).or_default() -= 1000;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Requests(u32),
    Retry,
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..100).prop_map(Op::Requests),
        4 => Just(Op::Retry),
        1 => (0u64..4000).prop_map(Op::Wait),
    ]
}

proptest! {
    #[test]
    fn the_ratio_budget_matches_its_model(
        ratio_thousandths in 0u32..2000,
        min_per_second in 0u32..5,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        paused_runtime().block_on(async {
            let ratio = ratio_thousandths as f64 / 1000.0;
            let budget = Budget::ratio(ratio, min_per_second, 10 * SECOND).unwrap();
            let start = tokio::time::Instant::now();
            let mut model = Model {
                deposit: ratio_thousandths as i64,
                reserve: min_per_second as i64 * 10 * 1000,
                pending: 0,
                since: 0,
                net: BTreeMap::new(),
            };
            for op in ops {
                let now = ((tokio::time::Instant::now() - start).as_millis() / 1000) as u64;
                match op {
                    Op::Requests(n) => (0..n).for_each(|_| {
                        budget.record_request();
                        model.request(now);
                    }),
                    Op::Retry => prop_assert_eq!(budget.try_withdraw(), model.withdraw(now)),
                    Op::Wait(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
            }
            let now = ((tokio::time::Instant::now() - start).as_millis() / 1000) as u64;
            prop_assert_eq!(budget.available(), model.balance(now) as f64 / 1000.0);
            Ok(())
        })?;
    }
}
