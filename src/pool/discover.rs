//! Applying a `tower::discover::Discover` stream's changes to a pool: [`Driver`].

use super::state::Shared;
use crate::core::Observer;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{ready, Context, Poll};
use tower::discover::{Change, Discover};
use tower::BoxError;

pin_project! {
    /// Applies the changes of a pool's [`Discover`] stream (endpoints inserted and removed) as
    /// they come: spawn it beside the pool (`tokio::spawn(driver)`), as tower's `Buffer` worker
    /// is. It ends when the stream ends (`Ok`; the endpoints stay as they are), when the stream
    /// fails (its error), or when every clone of the pool and its handle are dropped.
    ///
    /// A removed endpoint takes no call from then on; calls already made on it finish. An
    /// endpoint inserted under a key already present replaces it.
    pub struct Driver<D, O>
    where
        D: Discover,
    {
        #[pin]
        discover: D,
        shared: Weak<Shared<D::Key, D::Service, O>>,
    }
}

impl<D: Discover, O> Driver<D, O> {
    pub(crate) fn new(discover: D, shared: Weak<Shared<D::Key, D::Service, O>>) -> Self {
        Driver { discover, shared }
    }
}

impl<D: Discover, O> fmt::Debug for Driver<D, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("pool", &self.shared.upgrade())
            .finish_non_exhaustive()
    }
}

impl<D, O> Future for Driver<D, O>
where
    D: Discover,
    D::Key: fmt::Debug + PartialEq,
    D::Error: Into<BoxError>,
    O: Observer,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let Some(shared) = this.shared.upgrade() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(this.discover.as_mut().poll_discover(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(error.into())),
                Some(Ok(Change::Insert(key, service))) => shared.insert(key, service),
                Some(Ok(Change::Remove(key))) => shared.remove(&key),
            }
        }
    }
}
