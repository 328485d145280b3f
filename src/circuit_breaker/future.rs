//! The circuit breaker's response future.

/// The response future of a [`CircuitBreaker`](super::CircuitBreaker): the inner call carrying its
/// permit, or a rejection. Named and unboxed.
pub type ResponseFuture<F, C = crate::core::ErrorIsFailure, O = ()> =
    crate::core::GuardFuture<F, super::Breaker, C, O>;
