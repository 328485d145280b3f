//! How a [`Timeout`](super::Timeout) chooses each request's timeout, and whether it honours and sets
//! the request's [`Deadline`].

use crate::core::{Deadline, DeadlineCarrier};
use std::fmt;
use std::time::Duration;

/// Chooses the timeout for each request, and reads and writes the deadline it carries.
///
/// Implemented by `Duration` (a fixed timeout, for any request), [`PerRequest`] (a closure),
/// [`FromExtension`] (a [`RequestTimeout`](crate::core::RequestTimeout) the request carries) and
/// [`Propagate`] (any of these, plus deadlines).
pub trait Policy<Req> {
    /// Whether this policy reads and writes deadlines. When false, [`deadline`](Self::deadline) and
    /// [`tighten_deadline`](Self::tighten_deadline) are never called.
    const PROPAGATES: bool = false;

    /// The layer's own timeout for `req`; `None` for none.
    fn timeout(&self, req: &Req) -> Option<Duration>;

    /// The deadline `req` already carries, if this policy honours deadlines.
    #[inline(always)]
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        let _ = req;
        None
    }

    /// Gives `req` the layer's own `deadline` for the layers beneath, unless it carries one no
    /// later: that one is returned (see [`DeadlineCarrier::tighten_deadline`]).
    #[inline(always)]
    fn tighten_deadline(&self, req: &mut Req, deadline: Deadline) -> Option<Deadline> {
        let _ = (req, deadline);
        None
    }
}

impl<Req> Policy<Req> for Duration {
    #[inline(always)]
    fn timeout(&self, _: &Req) -> Option<Duration> {
        Some(*self)
    }
}

/// A timeout computed from each request by a closure; see
/// [`TimeoutLayer::per_request`](super::TimeoutLayer::per_request).
#[derive(Clone, Copy)]
pub struct PerRequest<F>(pub(crate) F);

impl<F> fmt::Debug for PerRequest<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PerRequest(..)")
    }
}

impl<Req, F: Fn(&Req) -> Option<Duration>> Policy<Req> for PerRequest<F> {
    #[inline]
    fn timeout(&self, req: &Req) -> Option<Duration> {
        (self.0)(req)
    }
}

/// The [`RequestTimeout`](crate::core::RequestTimeout) a request carries, or a default; see
/// [`TimeoutLayer::from_extension`](super::TimeoutLayer::from_extension).
#[derive(Clone, Copy, Debug)]
pub struct FromExtension {
    pub(crate) default: Option<Duration>,
}

impl<Req: DeadlineCarrier> Policy<Req> for FromExtension {
    #[inline]
    fn timeout(&self, req: &Req) -> Option<Duration> {
        req.request_timeout().or(self.default)
    }
}

/// Wraps a policy to honour the [`Deadline`] a request carries and to set a tighter one for the
/// layers beneath; see [`TimeoutLayer::propagate`](super::TimeoutLayer::propagate).
#[derive(Clone, Copy, Debug)]
pub struct Propagate<P>(pub(crate) P);

impl<Req: DeadlineCarrier, P: Policy<Req>> Policy<Req> for Propagate<P> {
    const PROPAGATES: bool = true;

    #[inline(always)]
    fn timeout(&self, req: &Req) -> Option<Duration> {
        self.0.timeout(req)
    }

    #[inline(always)]
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        req.deadline()
    }

    #[inline(always)]
    fn tighten_deadline(&self, req: &mut Req, deadline: Deadline) -> Option<Deadline> {
        req.tighten_deadline(deadline)
    }
}
