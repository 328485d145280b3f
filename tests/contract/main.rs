//! Every layer under the one tower contract (see `harness`). Adding a layer means adding one line
//! to the list at the end.

mod harness;
mod subjects;

#[path = "../support/mod.rs"]
mod support;

pub use support::Fail;

/// One test per subject, each running every clause of the contract.
macro_rules! contract {
    ($($name:ident: $subject:ty,)*) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                harness::check::<$subject>().await;
            }
        )*
    };
}

contract! {
    bulkhead_without_queue: subjects::Bulkhead<0>,
    bulkhead_with_queue: subjects::Bulkhead<8>,
    adaptive_limiter: subjects::Adaptive,
    bulkhead_codel: subjects::BulkheadCodel,
    adaptive_limiter_codel: subjects::AdaptiveCodel,
    load_shed: subjects::Shed,
    throttle: subjects::Throttle,
    circuit_breaker: subjects::Breaker,
    circuit_breaker_half_open: subjects::HalfOpen,
    rate_limit: subjects::RateLimit,
    rate_limit_waiting: subjects::RateLimitWaiting,
    rate_limit_honouring_deadlines: subjects::RateLimitDeadlines,
    keyed_rate_limit: subjects::KeyedRateLimit,
    fleet_rate_limit: subjects::FleetRateLimit,
    fleet_rate_limit_store_fails: subjects::FleetRateLimitStoreFails,
    retry: subjects::Retry,
    hedge: subjects::Hedge,
    hedge_over_bulkhead: subjects::HedgeOverBulkhead,
    timeout_fixed: subjects::FixedTimeout,
    timeout_per_request: subjects::PerRequestTimeout,
    timeout_propagating: subjects::PropagatingTimeout,
    fallback: subjects::Fallback,
    fallback_alternate: subjects::Alternate,
    chaos: subjects::Chaos,
    client_stack: subjects::Client,
    bulkhead_over_breaker: subjects::BulkheadOverBreaker,
    server_stack: subjects::Server,
    cache: subjects::Cache,
    endpoint_pool: subjects::EndpointPool,
    bulkhead_honouring_deadlines: subjects::BulkheadDeadlines,
    adaptive_limiter_honouring_deadlines: subjects::AdaptiveDeadlines,
    server_stack_honouring_deadlines: subjects::ServerDeadlines,
    keyed_circuit_breaker: subjects::KeyedBreaker,
}
