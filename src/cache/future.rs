//! [`CacheFuture`], the response future of [`Cache`](super::Cache).

use super::error::Shared;
use super::flight::{Leader, Waited, Waiter};
use super::layer::Core;
use super::store::{Entry, Store};
use crate::core::{Classify, Observer};
use crate::fallback::StorePolicy;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;
use tower::{BoxError, Service};

pin_project! {
    /// A miss, boxed by [`CacheFuture`] so that a hit's future carries none of it: waiting for
    /// another caller's call for the same key, or for a clone of the inner service to be ready,
    /// then for its call.
    struct Miss<S, Req, K, V, St, C, P, O>
    where
        S: Service<Req>,
        K: Hash,
        K: Eq,
        K: Clone,
        V: Clone,
        P: StorePolicy<Req, V>,
    {
        #[pin]
        state: State<S, S::Future, Req, K, V>,
        // The rest is only for misses: a hit carries none of it.
        core: Option<Arc<Core<K, V, St, C, P, O>>>,
        key: Option<K>,
        memo: Option<P::Memo>,
        stale: Option<Entry<V>>,
        leader: Option<Leader<K, V>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Fut, Req, K, V>
    where
        K: Hash,
        K: Eq,
        K: Clone,
        V: Clone,
    {
        Answer { answer: Option<Result<V, BoxError>> },
        Wait { waiter: Waiter<K, V>, inner: Option<S>, req: Option<Req> },
        Ready { inner: S, req: Option<Req> },
        Call { #[pin] future: Fut, start: Instant },
    }
}

pin_project! {
    /// The response future of [`Cache`](super::Cache): an answer from the store, ready at once;
    /// a request without a key, passing by the cache; or a call to the inner service for a key
    /// (a miss, or a request the store may not answer), boxed so that a hit's future stays
    /// small: such a call allocates once, beside the inner service's own work.
    pub struct CacheFuture<S, Req, K, V, St, C, P, O>
    where
        S: Service<Req>,
        K: Hash,
        K: Eq,
        K: Clone,
        V: Clone,
        P: StorePolicy<Req, V>,
    {
        #[pin]
        kind: Kind<S, S::Future, Req, V, Miss<S, Req, K, V, St, C, P, O>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Fut, Req, V, M> {
        Answer { answer: Option<Result<V, BoxError>> },
        Ready { inner: S, req: Option<Req> },
        Call { #[pin] future: Fut },
        Miss { miss: Pin<Box<M>> },
    }
}

/// What a [`CacheFuture`] is, spelled out.
type Kinds<S, Req, K, V, St, C, P, O> =
    Kind<S, <S as Service<Req>>::Future, Req, V, Miss<S, Req, K, V, St, C, P, O>>;

impl<S, Req, K, V, St, C, P, O> CacheFuture<S, Req, K, V, St, C, P, O>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    V: Clone,
    P: StorePolicy<Req, V>,
{
    #[inline]
    pub(crate) fn hit(value: Result<V, Shared>) -> Self {
        CacheFuture {
            kind: Kind::Answer {
                answer: Some(value.map_err(Into::into)),
            },
        }
    }

    /// A request without a key: the inner service's call, as it is.
    pub(crate) fn bypass(inner: S, req: Req) -> Self {
        CacheFuture {
            kind: Kind::Ready {
                inner,
                req: Some(req),
            },
        }
    }

    fn miss(miss: Miss<S, Req, K, V, St, C, P, O>) -> Self {
        CacheFuture {
            kind: Kind::Miss {
                miss: Box::pin(miss),
            },
        }
    }

    /// A call the store may not answer: made on its own, its good answer offered to the store.
    pub(crate) fn through(
        inner: S,
        req: Req,
        core: Arc<Core<K, V, St, C, P, O>>,
        key: K,
        memo: P::Memo,
    ) -> Self {
        Self::miss(Miss {
            state: State::Ready {
                inner,
                req: Some(req),
            },
            core: Some(core),
            key: Some(key),
            memo: Some(memo),
            stale: None,
            leader: None,
        })
    }

    /// The call that leads `key`'s flight.
    pub(crate) fn lead(
        inner: S,
        req: Req,
        core: Arc<Core<K, V, St, C, P, O>>,
        leader: Leader<K, V>,
        key: K,
        memo: P::Memo,
        stale: Option<Entry<V>>,
    ) -> Self {
        Self::miss(Miss {
            state: State::Ready {
                inner,
                req: Some(req),
            },
            core: Some(core),
            key: Some(key),
            memo: Some(memo),
            stale,
            leader: Some(leader),
        })
    }

    /// A call waiting on `key`'s flight.
    pub(crate) fn wait(
        inner: S,
        req: Req,
        core: Arc<Core<K, V, St, C, P, O>>,
        waiter: Waiter<K, V>,
        key: K,
        memo: P::Memo,
        stale: Option<Entry<V>>,
    ) -> Self {
        Self::miss(Miss {
            state: State::Wait {
                waiter,
                inner: Some(inner),
                req: Some(req),
            },
            core: Some(core),
            key: Some(key),
            memo: Some(memo),
            stale,
            leader: None,
        })
    }
}

impl<S, Req, K, V, St, C, P, O> fmt::Debug for CacheFuture<S, Req, K, V, St, C, P, O>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    V: Clone,
    P: StorePolicy<Req, V>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Answer { .. } => f
                .debug_struct("CacheFuture")
                .field("state", &"answer")
                .finish(),
            Kind::Ready { .. } | Kind::Call { .. } => f
                .debug_struct("CacheFuture")
                .field("state", &"bypass")
                .finish(),
            Kind::Miss { miss } => fmt::Debug::fmt(miss, f),
        }
    }
}

impl<S, Req, K, V, St, C, P, O> Future for CacheFuture<S, Req, K, V, St, C, P, O>
where
    S: Service<Req, Response = V>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    V: Clone,
    St: Store<K, V>,
    C: Classify<V, S::Error>,
    P: StorePolicy<Req, V>,
    O: Observer,
{
    type Output = Result<V, BoxError>;

    /// A hit's answer is taken here, inline; the rest are polled out of line.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        if let KindProj::Answer { answer } = kind.as_mut().project() {
            return Poll::Ready(answer.take().expect("polled after completion"));
        }
        Self::poll_other(kind, cx)
    }
}

impl<S, Req, K, V, St, C, P, O> CacheFuture<S, Req, K, V, St, C, P, O>
where
    S: Service<Req, Response = V>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    V: Clone,
    St: Store<K, V>,
    C: Classify<V, S::Error>,
    P: StorePolicy<Req, V>,
    O: Observer,
{
    /// Polls a request without a key, or a miss.
    #[allow(clippy::type_complexity)]
    #[inline(never)]
    fn poll_other(
        mut kind: Pin<&mut Kinds<S, Req, K, V, St, C, P, O>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<V, BoxError>> {
        loop {
            match kind.as_mut().project() {
                KindProj::Answer { answer } => {
                    return Poll::Ready(answer.take().expect("polled after completion"));
                }
                KindProj::Miss { miss } => return miss.as_mut().poll(cx),
                KindProj::Ready { inner, req } => {
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        kind.set(Kind::Answer { answer: None });
                        return Poll::Ready(Err(error.into()));
                    }
                    let req = req.take().expect("polled after completion");
                    let future = inner.call(req);
                    kind.set(Kind::Call { future });
                }
                KindProj::Call { future } => {
                    let result = ready!(future.poll(cx));
                    kind.set(Kind::Answer { answer: None });
                    return Poll::Ready(result.map_err(Into::into));
                }
            }
        }
    }
}

impl<S, Req, K, V, St, C, P, O> fmt::Debug for Miss<S, Req, K, V, St, C, P, O>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    V: Clone,
    P: StorePolicy<Req, V>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Answer { .. } => "answer",
            State::Wait { .. } => "wait",
            State::Ready { .. } => "ready",
            State::Call { .. } => "call",
        };
        f.debug_struct("Miss")
            .field("state", &state)
            .field("leads", &self.leader.is_some())
            .finish()
    }
}

impl<S, Req, K, V, St, C, P, O> Future for Miss<S, Req, K, V, St, C, P, O>
where
    S: Service<Req, Response = V>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    V: Clone,
    St: Store<K, V>,
    C: Classify<V, S::Error>,
    P: StorePolicy<Req, V>,
    O: Observer,
{
    type Output = Result<V, BoxError>;

    /// Polls a miss: waiting on another caller's call, for the inner service, or for its call.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<V, BoxError>> {
        let mut this = self.project();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Answer { answer } => {
                    return Poll::Ready(answer.take().expect("polled after completion"));
                }
                StateProj::Wait { waiter, inner, req } => match ready!(waiter.poll(cx)) {
                    Waited::Outcome(outcome) => return Poll::Ready(outcome.map_err(Into::into)),
                    Waited::Lead(leader) => {
                        // The leader left: make the call with this request.
                        *this.leader = Some(leader);
                        let inner = inner.take().expect("a waiter keeps its service");
                        let req = req.take();
                        this.state.set(State::Ready { inner, req });
                        continue;
                    }
                },
                StateProj::Ready { inner, req } => match ready!(inner.poll_ready(cx)) {
                    Ok(()) => {
                        let req = req.take().expect("polled after completion");
                        // A call for a request the store may not answer (no flight to lead)
                        // carries the mark for a tier's fill beneath.
                        let future = if this.leader.is_none() {
                            super::through(|| inner.call(req))
                        } else {
                            inner.call(req)
                        };
                        this.state.set(State::Call {
                            future,
                            start: Instant::now(),
                        });
                        continue;
                    }
                    Err(error) => (Err(error), Instant::now()),
                },
                StateProj::Call { future, start } => (ready!(future.poll(cx)), *start),
            };
            let (result, start) = result;
            let Some(leader) = this.leader.take() else {
                // Not answered from the store: the call passes through, and a request with a key
                // offers its good answer to the store.
                if let (Some(core), Some(key), Some(memo)) = (&*this.core, &*this.key, &*this.memo)
                {
                    // Under the mark too: what the store does with this answer must not touch
                    // what a tier keeps for another call of the key (a miss's fill).
                    super::through(|| core.offer_result(key, memo, &result, start.elapsed()));
                }
                return Poll::Ready(result.map_err(Into::into));
            };
            let core = this.core.as_ref().expect("a miss keeps the core");
            let key = this.key.as_ref().expect("a miss keeps its key");
            let memo = this.memo.as_ref().expect("a miss keeps its memo");
            let (answer, _stale) =
                core.complete(key, memo, result, start.elapsed(), this.stale.take());
            let (answer, _waited) = leader.finish(answer);
            this.state.set(State::Answer { answer: None });
            return Poll::Ready(answer);
        }
    }
}
