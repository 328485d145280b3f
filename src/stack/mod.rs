//! Standard stacks: the layers a client needs in front of a dependency, and the layers a server
//! needs in front of its handlers, each in the right order, as one layer whose every part can be
//! tuned or removed.
//!
//! # The server stack
//!
//! [`ServerStack`] (features `timeout` and `limit`), from the outside in:
//!
//! 1. **rate limit** (off until given a quota): what one server takes in at most, turned away
//!    before any work with 429 and `Retry-After`;
//! 2. **adaptive concurrency**: Gradient2, windowed, with a short queue: calls past what the
//!    handlers show they can take wait for a slot in a queue of 128, for at most 165 ms after the
//!    queue was last empty (a burst: served) and 5 ms while it stands (overload: shed fast, with
//!    503 and `Retry-After: 1`), newest first (LIFO), instead of queueing into a latency spiral;
//! 3. **timeout** (30 s): no request holds a slot for ever.
//!
//! The queue is the bulkhead's controlled-delay queue ([`Codel`](crate::bulkhead::Codel), after
//! Facebook's "Fail at Scale"), with waits chosen from a loopback load check with `hey`
//! (`examples/bursts.rs`, figures in docs/back-pressure.md): without a queue the limiter admitted
//! one limit's worth of each burst of 100 and turned away 78 % of requests the handlers could
//! have served. The paper's 100 ms interval served 272/s of those bursts against the bare
//! server's 375/s; 150 ms 360–370/s at a p99 of 215–217 ms, and 165 ms, the default, 367–369/s at
//! 228–229 ms, while it also meets the paused-time surge's rules in synchronised bursts (91 % of
//! capacity, where 150 ms served 87 %). LIFO, rather than adaptive LIFO, kept
//! the p99 of a sustained flood lower: a flood's queue empties now and then, and adaptive order
//! then serves it first come first served for an interval, behind a full queue. A limiter passed
//! to [`concurrency_layer`](ServerStack::concurrency_layer) replaces it with its own queue
//! settings (none unless set): give it `.queue(128).codel(Codel::new(5 ms, 165 ms))
//! .order(Order::Lifo)` to keep them.
//!
//! The limiter waits in `poll_ready` by default, so a request's [`Deadline`](crate::core::Deadline)
//! does not shorten its wait: the stack's requests carry none unless a layer above puts one in (its
//! own timeout is beneath the limiter and sets none), and the stack takes any request type.
//! [`ServerStack::honour_deadlines`] makes the limiter decide in `call` instead: under a
//! [`ReadDeadlineLayer`](crate::timeout::propagate::ReadDeadlineLayer) reading the caller's
//! `grpc-timeout` (or a propagating timeout), a request waits in the queue no longer than its
//! deadline, and is answered 503 then, not left to time out in the handler.
//!
//! Errors are seawall's: put `seawall::axum::HandleErrorsLayer` (feature `axum`)
//! above it under axum, or map them with [`tonic::or_status`](crate::tonic) for tonic.
//!
//! ```
//! # #[cfg(feature = "limit")] {
//! use seawall::limit::rate::Quota;
//! use seawall::stack::ServerStack;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let stack = ServerStack::new().rate_limit(Quota::per_second(1_000));
//! let server = stack.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! assert_eq!(server.oneshot(7).await.unwrap(), 7);
//! # }
//! # }
//! ```
//!
//! # The client stack
//!
//! [`ClientStack`] (features `timeout`, `retry` and `circuit-breaker`), from the outside in:
//!
//! 1. **total timeout**: the caller's whole budget, retries and backoff included; it puts its
//!    [`Deadline`](crate::core::Deadline) in the request (or keeps an earlier one the request
//!    already carries);
//! 2. **retry**: jittered backoff, a retry budget, server hints; reads the deadline, and starts no
//!    backoff that would end past it: a failure whose retry could not finish in time (a 503
//!    whose `Retry-After` ends after the deadline) is returned as it is, when it comes; and when
//!    the deadline cuts an attempt it did start, the answer before that attempt is returned at
//!    the deadline, not the timeout;
//! 3. **circuit breaker**: sees every attempt, so a failing dependency opens it whatever the
//!    retries, and its rejections end the retrying (`OpenIsFinal`: an open breaker is not
//!    retried into);
//! 4. **attempt timeout**: one attempt's limit, so that one hung attempt leaves time to retry;
//!    never past the deadline, which it tightens for the client beneath.
//!
//! Both timeouts propagate deadlines (see [`timeout`](crate::timeout#deadlines)), so requests
//! must carry one: `http::Request` does, in its extensions, and a type of your own can through
//! [`DeadlineCarrier`](crate::core::DeadlineCarrier). Put a
//! [`WriteDeadlineLayer`](crate::timeout::propagate::WriteDeadlineLayer) beneath the stack to
//! send what is left to the server (`grpc-timeout`, or an HTTP header). For a request type that
//! cannot carry a deadline, [`ClientStack::without_deadlines`] makes the timeouts plain ones.
//!
//! `ClientStack::http()` and `ClientStack::grpc()` (feature `http`) are the stacks for an HTTP
//! and a gRPC client: their retry and breaker classify responses as the protocol says. For a
//! tonic client, `seawall::tonic::ClientLayer` (feature `tonic`) puts the gRPC stack between the
//! generated client and its channel: it keeps request bodies for the retries, writes
//! `grpc-timeout` beneath the stack, and turns errors into client-side statuses.
//!
//! The order follows .NET's standard resilience handler (whose rate limiter, outermost, is left
//! out here: add a [`RateLimitLayer`](crate::limit::rate::RateLimitLayer) above if you want one).
//! Defaults beside .NET's:
//!
//! | part | seawall default | .NET standard handler |
//! |---|---|---|
//! | total timeout | 30 s | 30 s |
//! | retry | 3 retries, exponential backoff with full jitter (see [`retry`](crate::retry)), ratio budget | 3 retries, exponential from 2 s with jitter |
//! | circuit breaker | opens at 50% failures of the last 100 calls (at least 20), 5 s open, growing | opens at 10% failures over 30 s (at least 100 calls), 5 s open |
//! | attempt timeout | 10 s | 10 s |
//!
//! ```
//! # #[cfg(all(feature = "retry", feature = "circuit-breaker", feature = "http"))] {
//! use seawall::core::{Deadline, DeadlineCarrier};
//! use seawall::stack::ClientStack;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let stack = ClientStack::new()
//!     .total_timeout(Duration::from_secs(5))
//!     .attempt_timeout(Duration::from_secs(1))
//!     .without_breaker();
//! // Built once, cloned for each call.
//! let client = stack.layer(service_fn(|req: http::Request<()>| async move {
//!     // What the client beneath sees: the attempt's second, within the total's five.
//!     Ok::<_, std::io::Error>(req.deadline().map(Deadline::remaining))
//! }));
//! let left = client.clone().oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(left, Some(Duration::from_secs(1)));
//! # }
//! # }
//! ```
//!
//! # Metrics
//!
//! A stack's `.observer(o)` sends the events of every part it makes to `o` (each part gets a
//! clone), each part under its own name: the stack's name (`.name(..)`, `"server"` and
//! `"client"` by default), a dot, and the part's.
//!
//! | stack | parts' names |
//! |---|---|
//! | [`ServerStack`] | `server.rate_limit`, `server.concurrency`, `server.timeout` |
//! | [`ClientStack`] | `client.total_timeout`, `client.retry`, `client.breaker`, `client.attempt_timeout` |
//!
//! Name each stack of a process apart (a client stack per dependency: `"catalog"`,
//! `"payments"`), or two stacks' series mix. `.name(..)` and `.observer(..)` come in either
//! order, before the stack is cloned: the stack makes each part once, when it first makes a
//! service (or hands out its breaker), and every clone of the stack, and every service made from
//! any of them, shares it, as axum's per-connection clones need. With no observer (the default,
//! `()`) the parts are the same layers as unobserved ones, at no cost per call.
//!
//! A part given as a built layer (`rate_limit_layer`, `concurrency_layer`, `timeout_layer`;
//! `retry`, `breaker`, `total_timeout_layer`, `attempt_timeout_layer`) is used as it is: the
//! stack's observer does not replace its own, and one built without an observer reports
//! nothing. Give it a name and the observer when you build it. See [`part`].
//!
//! ```
//! # #[cfg(all(feature = "limit", feature = "metrics", feature = "retry", feature = "circuit-breaker"))] {
//! use seawall::metrics::MetricsObserver;
//! use seawall::stack::{ClientStack, ServerStack};
//! use std::time::Duration;
//!
//! let metrics = MetricsObserver::new();
//! // server.concurrency, server.timeout
//! let server = ServerStack::new().observer(metrics.clone());
//! // catalog.total_timeout, catalog.retry, catalog.breaker, catalog.attempt_timeout
//! let catalog = ClientStack::new()
//!     .total_timeout(Duration::from_secs(1))
//!     .name("catalog")
//!     .observer(metrics);
//! # drop((server, catalog));
//! # }
//! ```
//!
//! One [`MetricsObserver`](crate::metrics::MetricsObserver) keeps the series of up to eight
//! layers, so two stacks can share one, and no call allocates.

#[cfg(all(feature = "retry", feature = "circuit-breaker"))]
mod client;
pub mod part;
#[cfg(feature = "limit")]
mod server;

#[cfg(all(feature = "retry", feature = "circuit-breaker"))]
pub use client::{ClientStack, OpenIsFinal, StackTimeout};
#[cfg(feature = "limit")]
pub use server::ServerStack;

use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{BoxError, Layer, Service};

/// A part of a stack that may be left out: a layer, or nothing.
#[derive(Clone, Debug)]
pub struct Part<L>(Option<L>);

#[cfg(any(all(feature = "retry", feature = "circuit-breaker"), feature = "limit"))]
impl<L: Clone> Part<L> {
    /// The layer of `part`, if the stack has it, made now if need be (named `name()`, observed by
    /// `observer`).
    fn of<P, O>(
        part: &Option<P>,
        name: impl FnOnce() -> std::borrow::Cow<'static, str>,
        observer: &O,
    ) -> Self
    where
        P: part::StackPart<O, Layer = L>,
    {
        Part(part.as_ref().map(|p| p.layer(name, observer).clone()))
    }
}

impl<S, L: Layer<S>> Layer<S> for Part<L> {
    type Service = PartService<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => PartService::With(layer.layer(inner)),
            None => PartService::Without(inner),
        }
    }
}

/// The service of a [`Part`]: the layer's service, or the inner service alone. Errors are boxed,
/// so both have one type.
#[derive(Clone, Debug)]
pub enum PartService<A, B> {
    /// The part is there.
    With(A),
    /// The part was left out.
    Without(B),
}

// `PartService` and `PartFuture` are inlined always: each part's service has both arms, the one
// without the part calling the next part directly, so a stack of n parts holds 2^n copies of the
// paths beneath. Left to the compiler, that size kept the wrappers out of line, and every call
// then copied the whole nested future (over 250 bytes for the server stack) through memory: the
// server stack cost about 106 ns a call against 67 for its three layers composed by hand; inlined,
// 64 (`cargo bench --bench stack`).
impl<A, B, Req> Service<Req> for PartService<A, B>
where
    A: Service<Req>,
    A::Error: Into<BoxError>,
    B: Service<Req, Response = A::Response>,
    B::Error: Into<BoxError>,
{
    type Response = A::Response;
    type Error = BoxError;
    type Future = PartFuture<A::Future, B::Future>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            PartService::With(a) => a.poll_ready(cx).map_err(Into::into),
            PartService::Without(b) => b.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            PartService::With(a) => PartFuture {
                kind: PartKind::With {
                    future: a.call(req),
                },
            },
            PartService::Without(b) => PartFuture {
                kind: PartKind::Without {
                    future: b.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`PartService`].
    #[derive(Debug)]
    pub struct PartFuture<A, B> {
        #[pin]
        kind: PartKind<A, B>,
    }
}

pin_project! {
    #[project = PartProj]
    #[derive(Debug)]
    enum PartKind<A, B> {
        With { #[pin] future: A },
        Without { #[pin] future: B },
    }
}

impl<A, B, T, EA, EB> Future for PartFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EA: Into<BoxError>,
    EB: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            PartProj::With { future } => future.poll(cx).map_err(Into::into),
            PartProj::Without { future } => future.poll(cx).map_err(Into::into),
        }
    }
}
