//! The cache's errors: [`Shared`], one call's failure handed to every caller that waited on it,
//! and [`ConfigError`], a mistake in a builder.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use tower::BoxError;

/// The failure of one inner call, shared by every caller that waited on that call (single-flight)
/// or served from a negative cache entry.
///
/// It reads as the error it shares, and gives it as its [`source`](Error::source), so that
/// [`seawall::error::find`](crate::error::find) still finds a seawall rejection (an open breaker,
/// a timeout) inside it, and `seawall::axum` or `seawall::tonic` still answer it as that
/// rejection. The caller whose call failed gets the error itself unless someone waited on it.
#[derive(Clone)]
pub struct Shared(Arc<dyn Error + Send + Sync + 'static>);

impl Shared {
    /// Shares `error`.
    pub fn new(error: BoxError) -> Self {
        Shared(Arc::from(error))
    }

    /// The shared error.
    pub fn get(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shared").field(&self.0).finish()
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Error for Shared {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// A mistake in the configuration of a [`CacheLayer`](super::CacheLayer)'s builder, found by
/// [`build`](super::CacheBuilder::build).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A store of zero entries: nothing could ever be cached.
    #[error("cache max entries must be at least 1")]
    MaxEntries,
    /// A weight budget of zero: nothing could ever be cached.
    #[error("cache max weight must be at least 1")]
    MaxWeight,
    /// A time to live of zero: nothing would ever be fresh.
    #[error("cache ttl must be greater than zero")]
    Ttl,
    /// A negative-caching time to live of zero: say nothing to leave negative caching off.
    #[error("cache negative ttl must be greater than zero")]
    NegativeTtl,
    /// An early-refresh `beta` that is negative or not a number (0 turns early refresh off).
    #[error("cache early refresh beta must be a finite number, 0 or more")]
    Beta,
    /// A revalidation interval of zero: an outage would be asked on every call.
    #[error("cache revalidation interval must be greater than zero")]
    RevalidateInterval,
}
