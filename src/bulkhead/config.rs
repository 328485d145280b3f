//! Building a bulkhead: [`Builder`] and [`ConfigError`].

use super::state::{Bulkhead, Codel, Order};
use super::BulkheadLayer;
use crate::core::gate::{Anchor, Shared};
use crate::core::{CarriedDeadline, ErrorIsFailure, NoDeadline, Observer};
use std::borrow::Cow;
use std::time::Duration;

/// A mistake in a bulkhead's configuration, found by [`Builder::build`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The limit is zero: no call could ever run.
    #[error("max concurrent calls must be at least 1")]
    MaxConcurrent,
    /// The limit is above the largest supported.
    #[error("max concurrent calls must be at most {max}, got {limit}")]
    MaxConcurrentTooLarge {
        /// The limit given.
        limit: u64,
        /// The largest supported.
        max: u64,
    },
    /// A maximum wait was set for a bulkhead that does not queue.
    #[error("a maximum wait needs a queue (queue length is zero)")]
    MaxWaitWithoutQueue,
    /// Controlled delay ([`codel`](Builder::codel)) was set for a bulkhead that does not queue.
    #[error("controlled delay (codel) needs a queue (queue length is zero)")]
    CodelWithoutQueue,
    /// The [`Codel`] target is zero, or longer than its interval.
    #[error(
        "codel target must be above zero and at most the interval, got target {target:?}, interval {interval:?}"
    )]
    Codel {
        /// The target given.
        target: Duration,
        /// The interval given.
        interval: Duration,
    },
}

/// A mistake in the queue's settings, shared by the builders of every layer on the bulkhead's
/// gate, each of which reports it in its own error type.
pub(crate) enum QueueMistake {
    MaxWaitWithoutQueue,
    CodelWithoutQueue,
    Codel(Codel),
}

/// Checks the queue's settings.
pub(crate) fn check_queue(
    max_queue: usize,
    max_wait: Option<Duration>,
    codel: Option<Codel>,
) -> Result<(), QueueMistake> {
    if max_queue == 0 && max_wait.is_some() {
        return Err(QueueMistake::MaxWaitWithoutQueue);
    }
    if let Some(codel) = codel {
        if max_queue == 0 {
            return Err(QueueMistake::CodelWithoutQueue);
        }
        if codel.target.is_zero() || codel.target > codel.interval {
            return Err(QueueMistake::Codel(codel));
        }
    }
    Ok(())
}

impl From<QueueMistake> for ConfigError {
    fn from(mistake: QueueMistake) -> Self {
        match mistake {
            QueueMistake::MaxWaitWithoutQueue => ConfigError::MaxWaitWithoutQueue,
            QueueMistake::CodelWithoutQueue => ConfigError::CodelWithoutQueue,
            QueueMistake::Codel(Codel { target, interval }) => {
                ConfigError::Codel { target, interval }
            }
        }
    }
}

/// The queue's setters, shared by the builders of every layer that runs on the bulkhead's gate
/// (their fields `max_queue`, `max_wait`, `order` and `codel`).
macro_rules! queue_setters {
    () => {
        /// How many callers may wait for a slot (default 0: a call that finds every slot taken
        /// fails at once with [`Full`](crate::bulkhead::error::Full)).
        pub fn queue(mut self, length: usize) -> Self {
            self.max_queue = length;
            self
        }

        /// How long a caller may wait in the queue before it fails with
        /// [`Full`](crate::bulkhead::error::Full) (default: as long as it takes). Needs a queue.
        pub fn max_wait(mut self, wait: std::time::Duration) -> Self {
            self.max_wait = Some(wait);
            self
        }

        /// Which queued caller gets the next free slot (default FIFO).
        /// [`Order::Adaptive`](crate::bulkhead::Order::Adaptive) is FIFO while the queue keeps
        /// emptying and LIFO once it has not emptied for an interval.
        pub fn order(mut self, order: crate::bulkhead::Order) -> Self {
            self.order = order;
            self
        }

        /// Controlled delay (default off): a caller who joins a queue that has not been empty
        /// within the last `interval` may wait only `target`, one who joins a queue that has may
        /// wait up to `interval`; [`max_wait`](Self::max_wait), if set, caps both. A caller that
        /// waits that long without a slot fails with
        /// [`Full`](crate::bulkhead::error::Full). Needs a queue. See
        /// [`Codel`](crate::bulkhead::Codel); pair it with
        /// [`Order::Adaptive`](crate::bulkhead::Order::Adaptive) for the whole of "Fail at
        /// Scale"'s queue.
        pub fn codel(mut self, codel: crate::bulkhead::Codel) -> Self {
            self.codel = Some(codel);
            self
        }
    };
}
#[cfg(feature = "limit")]
pub(crate) use queue_setters;

/// The largest limit a bulkhead takes.
pub const MAX_CONCURRENT: u64 = 1 << 40;

/// Builds a [`BulkheadLayer`]; start from [`BulkheadLayer::builder`].
///
/// | setting | default | resilience4j | Polly v8 |
/// |---|---|---|---|
/// | [`max_concurrent`](Self::max_concurrent) | 25 | 25 | 1000 (`PermitLimit`) |
/// | [`queue`](Self::queue) | 0: reject at once | 0 wait (`maxWaitDuration` 0) | 0 (`QueueLimit`) |
/// | [`max_wait`](Self::max_wait) | none (wait in the queue as long as it takes) | | |
/// | [`order`](Self::order) | FIFO | | FIFO |
/// | [`codel`](Self::codel) | off; when set, [`Codel::default`]: target 5 ms, interval 100 ms | | |
///
/// ```
/// use seawall::bulkhead::{BulkheadLayer, Order};
/// use std::time::Duration;
///
/// let layer = BulkheadLayer::builder()
///     .name("reports")
///     .max_concurrent(8)
///     .queue(100)
///     .max_wait(Duration::from_millis(250))
///     .order(Order::Lifo)
///     .build()
///     .unwrap();
/// # drop(layer);
/// ```
#[derive(Debug)]
pub struct Builder<O = (), D = NoDeadline> {
    name: Cow<'static, str>,
    limit: u64,
    max_queue: usize,
    max_wait: Option<Duration>,
    order: Order,
    codel: Option<Codel>,
    observer: O,
    deadline: D,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("bulkhead"),
            limit: 25,
            max_queue: 0,
            max_wait: None,
            order: Order::Fifo,
            codel: None,
            observer: (),
            deadline: NoDeadline,
        }
    }
}

impl<O, D> Builder<O, D> {
    /// The layer's name, in events.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How many calls may run at once (default 25).
    pub fn max_concurrent(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    queue_setters!();

    /// Decides in `call`, where the request is known, rather than in `poll_ready`, and honours
    /// the [`Deadline`](crate::core::Deadline) each request carries (see
    /// [`DeadlineCarrier`](crate::core::DeadlineCarrier); a propagating `TimeoutLayer` or a
    /// `ReadDeadlineLayer` above puts one in): a call that finds every slot taken waits in the
    /// queue no longer than its deadline allows (nor than controlled delay and
    /// [`max_wait`](Self::max_wait) allow), and then fails with
    /// [`Full`](crate::bulkhead::error::Full), the bulkhead's usual rejection (503 and
    /// `Retry-After`), not a timeout; a request that must queue and whose deadline has passed is
    /// refused at once, taking no place. Useful with a [`queue`](Self::queue): without one, no call waits.
    ///
    /// The layer's services are then [`DeadlineBulkhead`](crate::bulkhead::DeadlineBulkhead)s:
    /// as ready as the service beneath, reserving nothing in `poll_ready`; a call admitted at
    /// once is made at once, its deadline unread (no lock, no allocation, no clock read: the
    /// cost of the default mode); one that must queue waits in its response future, and is then made
    /// on a clone of the inner service made ready for it (so the inner service must be `Clone`,
    /// as axum's and tonic's are). Dropped while it queues, a call leaves the queue at once.
    pub fn honour_deadlines(self) -> Builder<O, CarriedDeadline> {
        Builder {
            name: self.name,
            limit: self.limit,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            order: self.order,
            codel: self.codel,
            observer: self.observer,
            deadline: CarriedDeadline,
        }
    }

    /// Sends the layer's events to `observer`.
    pub fn observer<O2: Observer>(self, observer: O2) -> Builder<O2, D> {
        Builder {
            name: self.name,
            limit: self.limit,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            order: self.order,
            codel: self.codel,
            observer,
            deadline: self.deadline,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<BulkheadLayer<ErrorIsFailure, O, D>, ConfigError>
    where
        O: Observer,
    {
        self.build_with(false)
    }

    /// Like [`build`](Self::build), for a bulkhead that lives as long as the process: it is leaked
    /// on purpose (never freed), and in exchange calls never touch its reference count, which saves
    /// two atomic operations per call and, under contention, the cache line they share between
    /// threads. Use it for bulkheads built once at start-up, never per request.
    pub fn build_static(self) -> Result<BulkheadLayer<ErrorIsFailure, O, D>, ConfigError>
    where
        O: Observer,
    {
        self.build_with(true)
    }

    fn build_with(self, leak: bool) -> Result<BulkheadLayer<ErrorIsFailure, O, D>, ConfigError>
    where
        O: Observer,
    {
        if self.limit == 0 {
            return Err(ConfigError::MaxConcurrent);
        }
        if self.limit > MAX_CONCURRENT {
            return Err(ConfigError::MaxConcurrentTooLarge {
                limit: self.limit,
                max: MAX_CONCURRENT,
            });
        }
        check_queue(self.max_queue, self.max_wait, self.codel)?;
        let gate = Bulkhead::new(
            self.limit,
            self.max_queue,
            self.max_wait,
            self.order,
            self.codel,
        );
        let shared = Shared::new(self.name, gate, self.observer);
        let anchor = if leak {
            Anchor::leaked(shared)
        } else {
            Anchor::counted(shared)
        };
        Ok(BulkheadLayer::from_parts(
            anchor,
            ErrorIsFailure,
            self.deadline,
        ))
    }
}
