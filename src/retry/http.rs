//! Retrying HTTP requests: only the idempotent ones, and only when their body can be sent again.

use super::policy::Policy;
use crate::core::{Deadline, DeadlineCarrier};
use http::{HeaderName, Method, Request};

/// The `Idempotency-Key` header: a request that carries one may be retried whatever its method.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A request body that may be copied for another attempt.
///
/// Implemented for bodies held whole in memory (`String`, `Vec<u8>`, `()`, static strings and
/// bytes, `http_body_util::Full` and `Empty`), and for [`Buffered`](super::buffered::Buffered),
/// which makes any streaming body (hyper's `Incoming`, axum's `Body`, tonic's) replayable by keeping
/// what the first attempt sent, up to a limit.
pub trait ReplayBody: Sized {
    /// A copy of the body, or `None` if it cannot be sent again.
    fn replay(&self) -> Option<Self>;

    /// Whether this copy can be sent now. Always, for bodies held in memory; for a
    /// [`Buffered`](super::buffered::Buffered) body, only once the first attempt sent it whole.
    fn can_replay(&self) -> bool {
        true
    }
}

macro_rules! replay_by_clone {
    ($($ty:ty),*) => {
        $(impl ReplayBody for $ty {
            #[inline]
            fn replay(&self) -> Option<Self> {
                Some(self.clone())
            }
        })*
    };
}

replay_by_clone!((), String, Vec<u8>, &'static str, &'static [u8]);

impl<D: Clone> ReplayBody for http_body_util::Full<D> {
    #[inline]
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    #[inline]
    fn replay(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

/// Which HTTP requests may be retried: by default the idempotent methods (GET, HEAD, OPTIONS, PUT,
/// DELETE, TRACE) and any request that carries an `Idempotency-Key`, when its body can be
/// replayed. The request's [`Deadline`] is honoured.
///
/// ```
/// use http::{Method, Request};
/// use seawall::retry::http::HttpPolicy;
/// use seawall::retry::policy::Policy;
///
/// let policy = HttpPolicy::default();
/// let replay = |req: &Request<String>| {
///     <HttpPolicy as Policy<_, (), ()>>::replay(&policy, req).is_some()
/// };
/// assert!(replay(&Request::get("/items").body(String::new()).unwrap()));
/// assert!(!replay(&Request::post("/orders").body("{}".into()).unwrap()));
/// assert!(replay(
///     &Request::post("/orders").header("idempotency-key", "8e03978e").body("{}".into()).unwrap()
/// ));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpPolicy {
    // A bit per standard method, so that the policy is copied into each call for free.
    methods: u16,
}

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PUT,
    Method::DELETE,
    Method::TRACE,
    Method::POST,
    Method::PATCH,
    Method::CONNECT,
];

fn bit(method: &Method) -> u16 {
    METHODS
        .iter()
        .position(|m| m == method)
        .map_or(0, |i| 1 << i)
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy { methods: 0b11_1111 }
    }
}

impl HttpPolicy {
    /// Also retries requests with `method` (say, a POST your API makes idempotent by design).
    /// Only the standard methods can be added; requests with other methods are retried when they
    /// carry an `Idempotency-Key`.
    pub fn retry_method(mut self, method: Method) -> Self {
        self.methods |= bit(&method);
        self
    }

    /// Whether `req` may be sent more than once, whatever its body.
    pub fn is_retryable<B>(&self, req: &Request<B>) -> bool {
        self.methods & bit(req.method()) != 0 || req.headers().contains_key(IDEMPOTENCY_KEY)
    }
}

/// A copy of `req`, if its body can be replayed.
pub(crate) fn replay_request<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().replay()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

impl<B: ReplayBody, Res, E> Policy<Request<B>, Res, E> for HttpPolicy {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        if !self.is_retryable(req) {
            return None;
        }
        replay_request(req)
    }

    fn should_retry(&self, req: &Request<B>, _: &Result<Res, E>) -> bool {
        req.body().can_replay()
    }

    fn can_replay(&self, req: &Request<B>) -> bool {
        req.body().can_replay()
    }

    fn ends_call(&self, req: &Request<B>, _: &Result<Res, E>) -> bool {
        // Declined only for a body that cannot be sent now: another attempt may be sending it.
        req.body().can_replay()
    }

    fn deadline(&self, req: &Request<B>) -> Option<Deadline> {
        req.deadline()
    }
}
