//! The pool's response future.

use super::state::{Endpoint, Shared};
use crate::core::{Classify, EventKind, Observer};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;
use tower::BoxError;

/// A call in flight to one endpoint: counted in its load until it ends or is dropped; a dropped
/// probe gives its claim back.
pub(crate) struct InFlight<K, S, C, O: Observer> {
    shared: Arc<Shared<K, S, O>>,
    endpoint: Arc<Endpoint<K, S>>,
    probe: bool,
    start: Instant,
    classify: C,
    done: bool,
}

impl<K, S, C, O: Observer> InFlight<K, S, C, O> {
    pub(crate) fn new(
        shared: Arc<Shared<K, S, O>>,
        endpoint: Arc<Endpoint<K, S>>,
        probe: bool,
        start: Instant,
        classify: C,
    ) -> Self {
        InFlight {
            shared,
            endpoint,
            probe,
            start,
            classify,
            done: false,
        }
    }
}

impl<K, S, C, O: Observer> Drop for InFlight<K, S, C, O> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Relaxed);
        if !self.done {
            if self.probe {
                self.shared.release_probe(&self.endpoint);
            }
            self.shared.emitter().emit_from_drop(EventKind::Cancelled);
        }
    }
}

pin_project! {
    /// The response future of a [`Pool`](super::Pool): the chosen endpoint's answer, measured and
    /// classified when it comes; or the pool's rejection
    /// ([`NoHealthyEndpoint`](super::error::NoHealthyEndpoint),
    /// [`EndpointUnavailable`](super::error::EndpointUnavailable)).
    pub struct ResponseFuture<F, K, S, C, O: Observer> {
        #[pin]
        kind: Kind<F>,
        call: Option<InFlight<K, S, C, O>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: Option<BoxError> },
    }
}

impl<F, K, S, C, O: Observer> ResponseFuture<F, K, S, C, O> {
    pub(crate) fn called(future: F, call: InFlight<K, S, C, O>) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            call: Some(call),
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
            call: None,
        }
    }
}

impl<F, K, S, C, O: Observer> fmt::Debug for ResponseFuture<F, K, S, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("in_flight", &self.call.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, K, S, C, O, Res, E> Future for ResponseFuture<F, K, S, C, O>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    K: fmt::Debug,
    C: Classify<Res, E>,
    O: Observer,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after it finished"))),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                let Some(mut call) = this.call.take() else {
                    return Poll::Ready(result.map_err(Into::into));
                };
                let outcome = call.classify.classify(&result);
                let hint = if outcome.is_failure() {
                    call.classify.retry_after(&result)
                } else {
                    None
                };
                let finished = Instant::now();
                let rtt = finished.saturating_duration_since(call.start);
                // Settled: whatever the observer does from here, nothing is given back twice.
                call.done = true;
                let shared = &call.shared;
                shared.complete(
                    &call.endpoint,
                    outcome,
                    result.is_err(),
                    rtt,
                    shared.nanos(finished),
                    hint,
                    call.probe,
                );
                let shared = call.shared.clone();
                drop(call);
                shared.emitter().emit(EventKind::Finished {
                    outcome,
                    latency: Some(rtt),
                });
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
