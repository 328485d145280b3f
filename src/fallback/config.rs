//! [`ConfigError`]: a mistake in the configuration of a fallback layer's builder.

/// A mistake in the configuration of an [`AlternateLayer`](super::AlternateLayer) or a
/// [`StaleIfErrorLayer`](super::StaleIfErrorLayer), found by its builder's `build`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An alternate's bound is zero: no fallback could ever run.
    #[error("an alternate's max concurrent fallbacks must be at least 1")]
    MaxConcurrent,
    /// A stale-if-error store of zero entries: nothing could ever be served.
    #[error("stale-if-error max entries must be at least 1")]
    MaxEntries,
    /// A stale-if-error maximum age of zero: nothing stored could ever be served.
    #[error("stale-if-error max age must be greater than zero")]
    MaxAge,
    /// A stale-if-error byte budget of zero: nothing could ever be stored.
    #[error("stale-if-error max bytes must be at least 1")]
    MaxBytes,
}
