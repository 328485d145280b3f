//! Retry budgets: a limit on retries across every request a client sends, so that retries cannot
//! multiply the load on a dependency that is already failing.
//!
//! Two kinds, one [`Budget`] type:
//!
//! - [`Budget::ratio`]: retries may be at most a fraction of recent requests, plus a small floor, as
//!   in Finagle. Each request deposits the fraction of a retry (0.2 by default); each retry
//!   withdraws one; deposits and withdrawals expire after a time to live (10 s by default); a reserve
//!   of `min_per_second × ttl` retries keeps a quiet client able to retry at all (10 per second by
//!   default).
//! - [`Budget::token_bucket`]: as in the AWS SDKs' standard retry mode. The bucket starts full (500
//!   tokens); a retry costs 5; a request that succeeds at the first attempt puts 1 back, and one
//!   that succeeds after retrying puts the retry's cost back, never above the capacity.
//!
//! Amounts are integers (a ratio is kept to the thousandth), so fractions add up exactly. A
//! withdrawal is one atomic step on the balance and happens only when the balance covers it, so
//! concurrent retries can never overdraw the budget.
//!
//! A `Budget` is a handle: clones share one balance. Give the same budget to several layers to make
//! them share it. When those layers are nested (a retry layer over a hedge layer, so that every
//! request passes through both), give the inner one [`Budget::withdraw_only`]: a request then makes
//! its deposit once, in the outer layer, and the two layers' retries and hedges are one bound.
//!
//! # Cost
//!
//! A request's deposit into a ratio budget is one atomic add on a counter of the calling thread's
//! shard (no contention between threads) and, once every 64 requests per shard, a clock read to
//! date them. The token bucket costs one load per successful request while it is full. Withdrawals
//! (retries) read the clock and settle the deposits: a few dozen atomic operations, once per retry.

use super::config::ConfigError;
use crate::core::anchor::{Anchor, CallAnchor};
use crate::sync::{thread_index, AtomicI64, AtomicU64, Ordering, Padded};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// The clock budgets date their deposits by: tokio's, so paused time in tests moves it. Under loom
/// it stands still: a model replays each interleaving by its recorded steps, and a real clock
/// crossing a bucket boundary between two runs would change which steps there are.
#[inline]
fn now() -> Instant {
    #[cfg(seawall_loom)]
    {
        static FROZEN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *FROZEN.get_or_init(Instant::now)
    }
    #[cfg(not(seawall_loom))]
    Instant::now()
}

/// One retry, in the integer units balances are kept in: ratios are kept to the thousandth.
const UNIT: i64 = 1000;
/// Buckets a ratio budget's time to live is divided into.
const BUCKETS: usize = 10;
/// Shards of a ratio budget's deposit counters.
const SHARDS: usize = 8;
/// A shard's deposits are dated at least once every this many.
const DATE_EVERY: u64 = 64;

/// A retry budget shared by every clone; see the [module docs](self).
#[derive(Clone)]
pub struct Budget {
    kind: Anchor<Kind>,
    // False for a withdraw-only view: requests make no deposit through it.
    deposits: bool,
}

// Allocated once per budget; boxing the ratio would add an indirection to every request.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Ratio(Ratio),
    Tokens(Tokens),
}

impl Budget {
    /// A ratio budget: retries may be at most `ratio` of the requests of the last `ttl` (0.2: one
    /// retry per five requests), plus `min_per_second` retries per second.
    ///
    /// ```
    /// use seawall::retry::budget::Budget;
    /// use std::time::Duration;
    ///
    /// let budget = Budget::ratio(0.1, 5, Duration::from_secs(10)).unwrap();
    /// assert_eq!(budget.available(), 50.0); // the reserve: 5 per second for 10 s
    /// ```
    pub fn ratio(ratio: f64, min_per_second: u32, ttl: Duration) -> Result<Budget, ConfigError> {
        if !(ratio.is_finite() && (0.0..=10.0).contains(&ratio)) {
            return Err(ConfigError::BudgetRatio(ratio));
        }
        let bucket_nanos = u64::try_from(ttl.as_nanos() / BUCKETS as u128).unwrap_or(u64::MAX);
        if bucket_nanos == 0 || ttl > Duration::from_secs(86_400) {
            return Err(ConfigError::BudgetTtl(ttl));
        }
        let reserve = (min_per_second as f64 * ttl.as_secs_f64()).floor() as i64 * UNIT;
        Ok(Budget::of(Kind::Ratio(Ratio::new(
            (ratio * UNIT as f64).round() as i64,
            reserve,
            bucket_nanos,
            now(),
        ))))
    }

    /// A token bucket of `capacity` tokens, starting full, from which a retry takes `retry_cost`;
    /// a request that succeeds at once puts back `success_refund` (and one that succeeds after
    /// retrying puts back one retry's cost).
    ///
    /// ```
    /// use seawall::retry::budget::Budget;
    ///
    /// let budget = Budget::token_bucket(500, 5, 1).unwrap(); // the AWS SDKs' standard mode
    /// assert_eq!(budget.available(), 100.0); // 500 tokens, 5 a retry
    /// ```
    pub fn token_bucket(
        capacity: u32,
        retry_cost: u32,
        success_refund: u32,
    ) -> Result<Budget, ConfigError> {
        if retry_cost == 0 || retry_cost > capacity {
            return Err(ConfigError::BudgetTokens {
                capacity,
                retry_cost,
            });
        }
        Ok(Budget::of(Kind::Tokens(Tokens {
            capacity: capacity as i64,
            cost: retry_cost as i64,
            refund: success_refund as i64,
            balance: Padded(AtomicI64::new(capacity as i64)),
        })))
    }

    fn of(kind: Kind) -> Budget {
        Budget {
            kind: Anchor::counted(kind),
            deposits: true,
        }
    }

    /// The same budget (it shares this one's balance) for a layer nested inside another layer that
    /// has it: withdrawals go through, but a request makes no deposit through it (neither a ratio
    /// budget's share of a retry nor a token bucket's refund for a request that succeeded at
    /// once), since the outer layer has made it. A token bucket's return of a retry's cost after
    /// a success that needed it goes through less `success_refund`: the outer layer, whose own
    /// attempt succeeded at once, puts that back for the same request, so that the request gets
    /// one retry's cost back, as from one layer, not that and a refund as well. (When the outer
    /// layer retried too, each layer puts back for its own retry, and the request gets
    /// `success_refund` less than two retries' costs.)
    ///
    /// Without it, a retry layer over a hedge layer with one budget takes two deposits per
    /// request (one in each layer), and a retry that goes through the hedge layer a third, so
    /// that retries and hedges together get twice the budget's ratio or more. Give the outer layer
    /// the budget and the inner one this view; for layers side by side (a layer for reads and
    /// one for writes), give each the budget itself.
    ///
    /// ```
    /// use seawall::retry::budget::Budget;
    /// use std::time::Duration;
    ///
    /// let budget = Budget::ratio(0.5, 0, Duration::from_secs(10)).unwrap();
    /// let inner = budget.withdraw_only();
    /// // One request through both layers: one deposit.
    /// budget.record_request();
    /// inner.record_request();
    /// assert_eq!(budget.available(), 0.5);
    /// // Two more: one retry, taken through either handle.
    /// budget.record_request();
    /// budget.record_request();
    /// assert!(inner.try_withdraw());
    /// assert_eq!(budget.available(), 0.5);
    /// ```
    ///
    /// The hedge layer's module docs show a retry layer over a hedge layer sharing a budget this
    /// way.
    pub fn withdraw_only(&self) -> Budget {
        Budget {
            kind: self.kind.clone(),
            deposits: false,
        }
    }

    /// The same budget, kept alive for the rest of the process (one small allocation, never freed),
    /// so that calls through it never touch a reference count: what lets two threads share it
    /// without contending. Other clones keep working and share its balance. Make such budgets once,
    /// at start-up.
    pub fn leak(self) -> Budget {
        Budget {
            kind: self.kind.leak(),
            deposits: self.deposits,
        }
    }

    /// How many retries the budget would allow now (a fraction for a partly funded retry; can be
    /// negative after deposits expired that had paid for retries still in the window).
    pub fn available(&self) -> f64 {
        match &*self.kind {
            Kind::Ratio(ratio) => {
                ratio.settle(ratio.epoch(now()));
                ratio.balance.load(Ordering::Acquire) as f64 / UNIT as f64
            }
            Kind::Tokens(tokens) => {
                tokens.balance.load(Ordering::Acquire) as f64 / tokens.cost as f64
            }
        }
    }

    /// Records a new request (not a retry): a ratio budget takes its deposit (not through a
    /// [`withdraw_only`](Self::withdraw_only) view). The retry and hedge layers call this; call it
    /// yourself only for a retry loop of your own.
    #[inline]
    pub fn record_request(&self) {
        if self.deposits {
            self.kind.record_request();
        }
    }

    /// Records a request that succeeded after `retries` retries: a token bucket takes its refund
    /// (`success_refund` for `retries == 0`, a retry's cost otherwise). Through a
    /// [`withdraw_only`](Self::withdraw_only) view, a success at once puts nothing back and one
    /// after retries puts back a retry's cost less `success_refund`, which the outer layer puts
    /// back for the same request. The retry and hedge layers call this; call it yourself only for
    /// a retry loop of your own.
    #[inline]
    pub fn record_success(&self, retries: u32) {
        self.kind.record_success(retries, self.deposits);
    }

    /// Takes one retry from the budget if it has one, and says whether it did: a single atomic
    /// step, so concurrent retries cannot overdraw it. The retry layer calls this before each
    /// retry; call it yourself only for a retry loop of your own.
    pub fn try_withdraw(&self) -> bool {
        self.kind.try_withdraw()
    }

    /// The budget for one call of a retry layer: kept alive by the call without touching the
    /// budget's shared reference count (see `core::anchor`).
    #[inline]
    pub(crate) fn call(&self) -> BudgetCall {
        BudgetCall {
            kind: self.kind.call(),
            deposits: self.deposits,
        }
    }

    /// Whether the budget holds a retry now, taking nothing: a hedge layer asks before it waits
    /// for its service's readiness, and withdraws only once it sends the hedge.
    #[cfg_attr(not(feature = "hedge"), allow(dead_code))]
    pub(crate) fn has_one(&self) -> bool {
        self.kind.has_one()
    }
}

/// A retry layer call's reference to its budget.
pub(crate) struct BudgetCall {
    kind: CallAnchor<Kind>,
    deposits: bool,
}

impl BudgetCall {
    #[inline]
    pub(crate) fn record_success(&self, retries: u32) {
        self.kind.record_success(retries, self.deposits);
    }

    #[inline]
    pub(crate) fn try_withdraw(&self) -> bool {
        self.kind.try_withdraw()
    }
}

impl Kind {
    #[inline]
    fn record_request(&self) {
        if let Kind::Ratio(ratio) = self {
            ratio.deposit();
        }
    }

    /// A request succeeded after `retries` retries; `deposits` is false through a withdraw-only
    /// view, whose layer sits inside another with the same budget.
    #[inline]
    fn record_success(&self, retries: u32, deposits: bool) {
        if let Kind::Tokens(tokens) = self {
            tokens.put(match (retries, deposits) {
                (0, true) => tokens.refund,
                (0, false) => 0,
                (_, true) => tokens.cost,
                // The outer layer saw its own attempt succeed at once and puts back the refund:
                // together, one retry's cost, as one layer retrying would put back, not that and
                // the refund of a request that needed no retry.
                (_, false) => (tokens.cost - tokens.refund).max(0),
            });
        }
    }

    fn try_withdraw(&self) -> bool {
        match self {
            Kind::Ratio(ratio) => ratio.try_withdraw(now()),
            Kind::Tokens(tokens) => tokens.try_take(),
        }
    }

    #[cfg_attr(not(feature = "hedge"), allow(dead_code))]
    fn has_one(&self) -> bool {
        match self {
            Kind::Ratio(ratio) => ratio.has_one(now()),
            Kind::Tokens(tokens) => tokens.balance.load(Ordering::Acquire) >= tokens.cost,
        }
    }
}

impl Default for Budget {
    /// The ratio budget with Finagle's defaults: 20 % of the last 10 s of requests, plus 10
    /// retries per second.
    fn default() -> Self {
        Budget::ratio(0.2, 10, Duration::from_secs(10)).expect("valid defaults")
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            Kind::Ratio(ratio) => f
                .debug_struct("Budget::Ratio")
                .field("ratio", &(ratio.deposit as f64 / UNIT as f64))
                .field("reserve", &(ratio.reserve / UNIT))
                .field(
                    "ttl",
                    &Duration::from_nanos(ratio.bucket_nanos * BUCKETS as u64),
                )
                .field("deposits", &self.deposits)
                .finish(),
            Kind::Tokens(tokens) => f
                .debug_struct("Budget::TokenBucket")
                .field("capacity", &tokens.capacity)
                .field("retry_cost", &tokens.cost)
                .field("success_refund", &tokens.refund)
                .field("deposits", &self.deposits)
                .finish(),
        }
    }
}

struct Tokens {
    capacity: i64,
    cost: i64,
    refund: i64,
    balance: Padded<AtomicI64>,
}

impl Tokens {
    #[inline]
    fn put(&self, amount: i64) {
        // A full bucket, the healthy case, is read and not written.
        if amount == 0 || self.balance.load(Ordering::Relaxed) >= self.capacity {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                (b < self.capacity).then(|| (b + amount).min(self.capacity))
            });
    }

    fn try_take(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= self.cost).then(|| b - self.cost)
            })
            .is_ok()
    }
}

/// A thread's deposits, not yet dated.
#[derive(Default)]
struct Shard {
    pending: AtomicU64,
    /// The epoch of the first of them: what they are all dated to, which is never later than when
    /// any of them was made.
    since: AtomicU64,
}

/// A bucket: the net amount (deposits less withdrawals) of one epoch, in the low 40 bits (signed),
/// under the epoch's low 24 bits.
struct Bucket(AtomicU64);

const NET_BITS: u32 = 40;
const NET_MASK: u64 = (1 << NET_BITS) - 1;
/// Epochs are kept to 24 bits (194 days of one-second buckets) and compared modulo that.
const EPOCH_MASK: u64 = u64::MAX >> NET_BITS;

/// How many epochs `then` is before `now`, modulo the epoch's width.
fn age(now: u64, then: u64) -> u64 {
    now.wrapping_sub(then) & EPOCH_MASK
}

fn pack(epoch: u64, net: i64) -> u64 {
    (epoch << NET_BITS) | (net as u64 & NET_MASK)
}

fn tag(word: u64) -> u64 {
    word >> NET_BITS
}

fn net(word: u64) -> i64 {
    // Sign-extend the low 40 bits.
    ((word << (64 - NET_BITS)) as i64) >> (64 - NET_BITS)
}

struct Ratio {
    /// Units a request deposits.
    deposit: i64,
    /// Units the balance starts with, and never loses to expiry.
    reserve: i64,
    bucket_nanos: u64,
    origin: Instant,
    /// The reserve plus the net of the buckets still alive: what withdrawals draw from.
    balance: Padded<AtomicI64>,
    buckets: [Bucket; BUCKETS],
    shards: [Padded<Shard>; SHARDS],
}

impl Ratio {
    fn new(deposit: i64, reserve: i64, bucket_nanos: u64, origin: Instant) -> Self {
        Ratio {
            deposit,
            reserve,
            bucket_nanos,
            origin,
            balance: Padded(AtomicI64::new(reserve)),
            buckets: std::array::from_fn(|_| Bucket(AtomicU64::new(pack(0, 0)))),
            shards: std::array::from_fn(|_| Padded(Shard::default())),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos / self.bucket_nanos as u128).unwrap_or(u64::MAX) & EPOCH_MASK
    }

    #[inline]
    fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        // Each thread deposits into its own shard, so threads do not contend on the request path.
        let shard = &self.shards[thread_index() % SHARDS];
        let before = shard.pending.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            // The first of a batch dates the batch: two clock reads per batch of 64.
            shard.since.store(self.epoch(now()), Ordering::Release);
        } else if before + 1 >= DATE_EVERY {
            self.date(shard, self.epoch(now()));
        }
    }

    /// Moves a shard's pending deposits into the bucket of the epoch they are dated to: the epoch
    /// of the first of them, so that they never count for longer than they should. A batch that
    /// started more than the time to live ago counts for nothing, even if its last deposits are
    /// younger: a slow trickle of requests may earn less than its share, and the reserve is there
    /// for such quiet clients.
    fn date(&self, shard: &Shard, now: u64) {
        let count = shard.pending.swap(0, Ordering::AcqRel);
        let since = shard.since.load(Ordering::Acquire);
        if count == 0 || age(now, since) >= BUCKETS as u64 {
            return;
        }
        let amount = (count as i64).saturating_mul(self.deposit);
        self.add(since, amount, amount);
    }

    /// Adds `net` to the bucket of `epoch` and `balance` to the balance, first retiring what the
    /// bucket held for an older epoch (its net leaves the balance).
    fn add(&self, epoch: u64, net_change: i64, balance: i64) {
        let bucket = &self.buckets[epoch as usize % BUCKETS];
        let mut word = bucket.0.load(Ordering::Acquire);
        loop {
            let (expired, next) = if tag(word) == epoch {
                (0, pack(epoch, net(word) + net_change))
            } else {
                (net(word), pack(epoch, net_change))
            };
            match bucket
                .0
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if balance != expired {
                        self.balance.fetch_add(balance - expired, Ordering::AcqRel);
                    }
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Dates every shard's deposits and retires every bucket older than the time to live.
    fn settle(&self, now: u64) {
        for shard in &self.shards {
            if shard.pending.load(Ordering::Relaxed) != 0 {
                self.date(shard, now);
            }
        }
        for bucket in &self.buckets {
            let mut word = bucket.0.load(Ordering::Acquire);
            while net(word) != 0 && age(now, tag(word)) >= BUCKETS as u64 {
                match bucket.0.compare_exchange_weak(
                    word,
                    pack(tag(word), 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.balance.fetch_sub(net(word), Ordering::AcqRel);
                        break;
                    }
                    Err(actual) => word = actual,
                }
            }
        }
    }

    #[cfg_attr(not(feature = "hedge"), allow(dead_code))]
    fn has_one(&self, now: Instant) -> bool {
        self.settle(self.epoch(now));
        self.balance.load(Ordering::Acquire) >= UNIT
    }

    fn try_withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        self.settle(epoch);
        let taken = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= UNIT).then(|| b - UNIT)
            })
            .is_ok();
        if taken {
            // The withdrawal expires with its bucket, and is then given back. It was taken from
            // the balance above, so only the bucket records it.
            self.add(epoch, -UNIT, 0);
        }
        taken
    }
}
