//! Retrying gRPC calls: UNAVAILABLE, RESOURCE_EXHAUSTED only when the server pushed back, never
//! DEADLINE_EXCEEDED; and never when the server said not to.

use super::http::{replay_request, ReplayBody};
use super::policy::Policy;
use crate::core::{Deadline, DeadlineCarrier};
use crate::grpc::{code, grpc_status, retry_pushback, Pushback};
use http::{Request, Response};

/// Which gRPC calls may be retried, as gRPC's own retry design (A6) has it: transport errors and
/// UNAVAILABLE, unless the server's `grpc-retry-pushback-ms` says not to; RESOURCE_EXHAUSTED only
/// when the server sent a pushback saying when; never DEADLINE_EXCEEDED or any other code. Use it
/// with [`GrpcClassifier::retryable`](crate::grpc::GrpcClassifier::retryable) (see
/// [`RetryLayer::grpc`](super::RetryLayer::grpc)). The request's [`Deadline`] is honoured.
///
/// Requests are replayed when their body implements [`ReplayBody`]. gRPC clients send streaming
/// bodies (tonic's included): wrap them in [`Buffered`](super::buffered::Buffered) above the retry
/// layer, and turn them back into the client's body type beneath it (for tonic,
/// `seawall::tonic::ClientLayer` does both).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcPolicy;

impl<B: ReplayBody, ResBody, E> Policy<Request<B>, Response<ResBody>, E> for GrpcPolicy {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        replay_request(req)
    }

    fn should_retry(&self, req: &Request<B>, result: &Result<Response<ResBody>, E>) -> bool {
        if !req.body().can_replay() {
            return false;
        }
        let Ok(response) = result else {
            return true;
        };
        let pushback = retry_pushback(response.headers());
        match grpc_status(response.headers()) {
            Some(code::UNAVAILABLE) | None => pushback != Some(Pushback::DoNotRetry),
            Some(code::RESOURCE_EXHAUSTED) => matches!(pushback, Some(Pushback::After(_))),
            Some(_) => false,
        }
    }

    fn deadline(&self, req: &Request<B>) -> Option<Deadline> {
        req.deadline()
    }

    fn can_replay(&self, req: &Request<B>) -> bool {
        req.body().can_replay()
    }

    /// A pushback saying not to retry, or RESOURCE_EXHAUSTED without a pushback saying when,
    /// stops further hedges but lets the attempts in flight answer (gRPC A6), as does a body
    /// another attempt is still sending; any other status the policy declines ends the call.
    fn ends_call(&self, req: &Request<B>, result: &Result<Response<ResBody>, E>) -> bool {
        if !req.body().can_replay() {
            return false;
        }
        let Ok(response) = result else {
            return true;
        };
        !matches!(
            grpc_status(response.headers()),
            Some(code::UNAVAILABLE | code::RESOURCE_EXHAUSTED) | None
        )
    }
}
