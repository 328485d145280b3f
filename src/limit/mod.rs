//! Back-pressure: [`LoadShedLayer`], which fails calls at once when the service beneath cannot take
//! them, instead of making them wait.
//!
//! [`AdaptiveLimitLayer`] limits concurrency to what the service beneath shows it can take: an
//! [`algorithm`] (AIMD, Gradient2, Vegas, or a fixed limit) moves the limit from the calls' round
//! trip times and failures, over the bulkhead's gate and queue.
//!
//! [`ThrottleLayer`] throttles on the client side, as in Google's SRE book: when the service
//! accepts too few of the calls sent to it, the client stops sending some, before they cost the
//! service anything.
//!
//! [`rate`] limits the rate of calls with GCRA, for all calls or per key; [`fleet`] (feature
//! `fleet`) shares a per-key limit between every instance of a service through a store such as
//! Redis.

mod adaptive;
pub mod algorithm;
pub mod error;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod rate;
mod shed;
mod throttle;

pub use adaptive::{
    Adaptive, AdaptiveHandle, AdaptiveLimit, AdaptiveLimitBuilder, AdaptiveLimitLayer,
    AdaptivePermit, ConfigError as AdaptiveConfigError, DeadlineAdaptiveLimit,
};
pub use shed::{LoadShed, LoadShedLayer, ResponseFuture};
pub use throttle::{
    ConfigError as ThrottleConfigError, Throttle, ThrottleBuilder, ThrottleHandle, ThrottleLayer,
    ThrottleService,
};
