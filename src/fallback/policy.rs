//! What a fallback answers with: [`Policy`] (what it keeps of each request) and [`Respond`] (how it
//! answers), implemented by [`Value`], [`FromFn`] and [`WithRequest`]; and what stale-if-error may
//! store: [`StorePolicy`], implemented by [`StoreSuccesses`] and [`HttpStore`].

#[cfg(feature = "http")]
use super::CacheControl;
use super::Trigger;
use std::fmt;

/// What a fallback keeps of each request before the call, for [`Respond`] to use if the call
/// fails. Kept for every call, so keep it cheap: `()` for answers that do not depend on the
/// request.
pub trait Policy<Req, Res> {
    /// What is kept.
    type Memo;

    /// Takes what is kept from the request.
    fn memo(&self, req: &Req) -> Self::Memo;
}

/// How a fallback answers, given what it kept of the request and what triggered it. Each call's
/// future holds its own clone of the policy, used up by the answer.
pub trait Respond<M, Res> {
    /// The answer.
    fn respond(self, memo: M, trigger: Trigger<'_, Res>) -> Res;
}

/// Answers with a value. Each call's future holds its own clone, moved out as the answer when the
/// call fails: pick a value cheap to clone (a number, a `&'static str`, `Bytes`, an `Arc`), or use
/// [`FromFn`], which makes its answer only when it is needed.
#[derive(Clone, Copy, Debug)]
pub struct Value<T>(pub(crate) T);

impl<T, Req> Policy<Req, T> for Value<T> {
    type Memo = ();

    #[inline]
    fn memo(&self, _: &Req) {}
}

impl<T> Respond<(), T> for Value<T> {
    fn respond(self, _: (), _: Trigger<'_, T>) -> T {
        self.0
    }
}

/// Answers with what a closure makes of the [`Trigger`]. The closure is cloned into each call's
/// future: let it capture nothing, or only what is cheap to clone.
#[derive(Clone, Copy)]
pub struct FromFn<F>(pub(crate) F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

impl<F, Req, Res> Policy<Req, Res> for FromFn<F> {
    type Memo = ();

    #[inline]
    fn memo(&self, _: &Req) {}
}

impl<F, Res> Respond<(), Res> for FromFn<F>
where
    F: Fn(Trigger<'_, Res>) -> Res,
{
    fn respond(self, _: (), trigger: Trigger<'_, Res>) -> Res {
        (self.0)(trigger)
    }
}

/// Keeps what one closure takes from each request, and answers with what another makes of it and
/// the [`Trigger`]. The closures are cloned into each call's future, as [`FromFn`]'s.
#[derive(Clone, Copy)]
pub struct WithRequest<M, F> {
    pub(crate) memo: M,
    pub(crate) f: F,
}

impl<M, F> fmt::Debug for WithRequest<M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WithRequest")
    }
}

impl<M, F, K, Req, Res> Policy<Req, Res> for WithRequest<M, F>
where
    M: Fn(&Req) -> K,
{
    type Memo = K;

    #[inline]
    fn memo(&self, req: &Req) -> K {
        (self.memo)(req)
    }
}

impl<M, F, K, Res> Respond<K, Res> for WithRequest<M, F>
where
    F: Fn(K, Trigger<'_, Res>) -> Res,
{
    fn respond(self, memo: K, trigger: Trigger<'_, Res>) -> Res {
        (self.f)(memo, trigger)
    }
}

/// Which good answers [`StaleIfErrorLayer`](super::StaleIfErrorLayer) may store, to serve them
/// later to whoever asks with the same key.
///
/// Asked only for a response the classifier calls a success, and only for requests with a key.
/// Implemented by [`StoreSuccesses`] (every such response: the default of
/// [`StaleIfErrorLayer::builder`](super::StaleIfErrorLayer::builder)) and [`HttpStore`] (only
/// 2xx answers that may be shared: the default of
/// [`StaleIfErrorLayer::http`](super::StaleIfErrorLayer::http)). Implement it for rules of your
/// own and set them with
/// [`StaleIfErrorBuilder::store_policy`](super::StaleIfErrorBuilder::store_policy).
pub trait StorePolicy<Req, Res> {
    /// What is kept of each request until its response is known (whether it carried
    /// credentials, say). Kept for every call with a key, so keep it cheap.
    type Memo;

    /// Takes what is kept from the request.
    fn memo(&self, request: &Req) -> Self::Memo;

    /// Whether `response`, the answer to a request of which `memo` was kept, may be stored.
    fn may_store(&self, memo: &Self::Memo, response: &Res) -> bool;

    /// Whether `response`, an answer that [`may_store`](Self::may_store) refused, removes the
    /// answer stored under the request's key (default: no, it stays).
    ///
    /// Say yes for a good answer refused only because it may not be kept (`no-store`,
    /// `private`): it is what the origin says now, and the older answer must not be served in
    /// its place. Say no for what is not a good answer (a `404`, a `500`): the stored answer is
    /// still the last good one. [`HttpStore`] removes on a whole answer to a `GET` without
    /// credentials that its headers keep from being stored.
    #[inline]
    fn evicts(&self, memo: &Self::Memo, response: &Res) -> bool {
        let _ = (memo, response);
        false
    }

    /// Whether a stored answer may be served to a request of which `memo` was kept, when its
    /// call fails (default: yes). [`HttpStore`] serves only `GET` requests: a failed write must
    /// fail, not be answered with a read's answer stored under the same key.
    #[inline]
    fn may_serve(&self, memo: &Self::Memo) -> bool {
        let _ = memo;
        true
    }

    /// How long after it is stored `response` may be served, at most, if less than the layer's
    /// [`max_age`](super::StaleIfErrorBuilder::max_age) (default: no limit of its own).
    /// [`HttpStore`] reads `stale-if-error` (RFC 5861) here. Zero: the response is not stored,
    /// and removes the answer stored under the request's key, which it replaces.
    #[inline]
    fn serve_for(&self, response: &Res) -> Option<std::time::Duration> {
        let _ = response;
        None
    }
}

/// Stores every response the classifier calls a success: the store policy of
/// [`StaleIfErrorLayer::builder`](super::StaleIfErrorLayer::builder), which knows nothing of the
/// response type. It cannot tell one user's answer from another's: the key must.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSuccesses;

impl<Req, Res> StorePolicy<Req, Res> for StoreSuccesses {
    type Memo = ();

    #[inline]
    fn memo(&self, _: &Req) {}

    #[inline]
    fn may_store(&self, _: &(), _: &Res) -> bool {
        true
    }
}

/// The store policy of [`StaleIfErrorLayer::http`](super::StaleIfErrorLayer::http): stores only
/// a whole, shareable answer to a `GET`, and serves it only to a `GET` with the same key.
///
/// A response is not stored if
/// - the request's method is not `GET` (the answer to a `POST` is not a page to serve again),
///   nor is a stored answer served to a request other than a `GET`: a failed write fails;
/// - its status is not `200`, `203` or `204` (a `404` during a deploy must not replace the good
///   `200`, nor a `206`, part of the page, be served as the whole);
/// - it carries `Set-Cookie`, or `Cache-Control` with `private` or `no-store` (in any case, in
///   any of its values);
/// - it carries `Cache-Control` with `no-cache`, `must-revalidate` or `proxy-revalidate`: such
///   an answer must not be served without asking the origin again (RFC 9111 §4.2.4, §5.2.2);
/// - the request carried `Authorization` or `Cookie`, unless the key includes what makes the
///   answer private
///   ([`key_includes_credentials`](super::StaleIfErrorBuilder::key_includes_credentials));
/// - it carries `Vary: *`, or `Vary` naming a header the key does not cover
///   ([`key_covers_headers`](super::StaleIfErrorBuilder::key_covers_headers); none by default).
///   Answers that vary are refused rather than keyed on the varied headers: the key is the
///   user's, and only the user can make it cover them.
///
/// A whole answer to a `GET` without credentials that is refused for its headers (`Set-Cookie`,
/// `Cache-Control`, `Vary`) is what the origin now says: it removes the answer stored under the
/// key, which would otherwise be served in its place. Anything else refused (a `404`, a `500`,
/// the answer to a `POST` or to a request with credentials) leaves the stored answer in place.
///
/// An answer with `Cache-Control: stale-if-error=N` (RFC 5861) is served for at most its
/// freshness lifetime (`s-maxage`, else `max-age`, less its `Age`; none if not given) plus `N`
/// seconds after it was stored, if that is less than the layer's `max_age`; if that is zero,
/// it is not stored and removes the answer stored under the key.
///
/// `Cache-Control` is read by [`CacheControl`]. The response cache
/// (`seawall::cache::CacheLayer::http`) can also have it read each request's `Cache-Control`:
/// then a request with `no-cache` is not served a stored answer, and the answer to one with
/// `no-store` is not stored.
///
/// Credentials are seen only where this layer sees the request: in `Authorization` and `Cookie`.
/// A token in the query string, in a header of the application's own (`X-Api-Key`), or added by
/// a layer beneath this one is invisible to it: the key must keep such users apart (key on the
/// whole `path_and_query`, never on the path alone).
#[cfg(feature = "http")]
#[derive(Clone, Debug, Default)]
pub struct HttpStore {
    credentials_in_key: bool,
    key_covers: Vec<http::HeaderName>,
    request_directives: bool,
}

#[cfg(feature = "http")]
impl HttpStore {
    pub(crate) fn credentials_in_key(mut self) -> Self {
        self.credentials_in_key = true;
        self
    }

    /// Reads the request's `Cache-Control` too: `no-cache` keeps a stored answer from being
    /// served to it, `no-store` keeps its answer from being stored (the response cache's
    /// opt-in).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn request_directives(mut self) -> Self {
        self.request_directives = true;
        self
    }

    pub(crate) fn covers(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.key_covers.extend(names);
        self
    }

    /// Whether `response` is stored, refused leaving the stored answer in place (it is not a
    /// good answer for everyone who asks with the key), or refused removing it (it is one, but
    /// its headers keep it from being stored).
    fn decide<B>(&self, memo: &HttpMemo, response: &http::Response<B>) -> Decision {
        use http::header::{SET_COOKIE, VARY};
        use http::StatusCode;
        let whole = matches!(
            response.status(),
            StatusCode::OK | StatusCode::NON_AUTHORITATIVE_INFORMATION | StatusCode::NO_CONTENT
        );
        if !memo.get || memo.credentials || memo.no_store || !whole {
            return Decision::Keep;
        }
        let headers = response.headers();
        let cc = CacheControl::from_headers(headers);
        let refused = headers.contains_key(SET_COOKIE)
            || cc.private()
            || cc.no_store()
            || cc.no_cache()
            || cc.must_revalidate()
            || cc.proxy_revalidate()
            || !items(headers.get_all(VARY)).all(|name| self.covers_header(name));
        if refused {
            Decision::Evict
        } else {
            Decision::Store
        }
    }

    /// Whether the key covers the header `name` (as written in `Vary`, any case).
    fn covers_header(&self, name: &[u8]) -> bool {
        self.key_covers
            .iter()
            .any(|covered| covered.as_str().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// What [`HttpStore`] does with a success.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    /// Stores it.
    Store,
    /// Leaves the stored answer in place.
    Keep,
    /// Removes the stored answer.
    Evict,
}

/// The comma-separated items of every value of a header, trimmed, empty ones left out.
#[cfg(feature = "http")]
fn items<'a>(
    values: http::header::GetAll<'a, http::HeaderValue>,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// What [`HttpStore`] keeps of each request with a key: whether it is a `GET`, and whether it
/// carried credentials the key does not include.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpMemo {
    get: bool,
    credentials: bool,
    /// The request said `Cache-Control: no-cache` (read only when asked to).
    no_cache: bool,
    /// The request said `Cache-Control: no-store` (read only when asked to).
    no_store: bool,
}

#[cfg(feature = "http")]
impl<A, B> StorePolicy<http::Request<A>, http::Response<B>> for HttpStore {
    type Memo = HttpMemo;

    #[inline]
    fn memo(&self, request: &http::Request<A>) -> HttpMemo {
        let headers = request.headers();
        let (no_cache, no_store) = if self.request_directives {
            let cc = CacheControl::from_headers(headers);
            (cc.no_cache(), cc.no_store())
        } else {
            (false, false)
        };
        HttpMemo {
            get: request.method() == http::Method::GET,
            credentials: !self.credentials_in_key
                && (headers.contains_key(http::header::AUTHORIZATION)
                    || headers.contains_key(http::header::COOKIE)),
            no_cache,
            no_store,
        }
    }

    #[inline]
    fn may_store(&self, memo: &HttpMemo, response: &http::Response<B>) -> bool {
        self.decide(memo, response) == Decision::Store
    }

    #[inline]
    fn evicts(&self, memo: &HttpMemo, response: &http::Response<B>) -> bool {
        self.decide(memo, response) == Decision::Evict
    }

    #[inline]
    fn may_serve(&self, memo: &HttpMemo) -> bool {
        memo.get && !memo.no_cache
    }

    fn serve_for(&self, response: &http::Response<B>) -> Option<std::time::Duration> {
        let headers = response.headers();
        let cc = CacheControl::from_headers(headers);
        let stale_if_error = cc.stale_if_error()?;
        let age = headers
            .get(http::header::AGE)
            .and_then(super::cache_control::delta_seconds)
            .unwrap_or(0);
        let fresh = cc
            .shared_max_age()
            .unwrap_or_default()
            .saturating_sub(std::time::Duration::from_secs(age));
        Some(fresh.saturating_add(stale_if_error))
    }
}

/// How many bytes an HTTP body holds: what the default weigher of
/// [`StaleIfErrorLayer::http`](super::StaleIfErrorLayer::http) counts of the body. Implemented for
/// the buffered bodies a stored response can have (`String`, `Vec<u8>`, `Bytes`, `Full`, `Empty`,
/// static strings and `()`); implement it for a body type of your own, or set a weigher with
/// [`StaleIfErrorBuilder::weigh`](super::StaleIfErrorBuilder::weigh).
#[cfg(feature = "http")]
pub trait BodySize {
    /// The body's length in bytes.
    fn body_size(&self) -> usize;

    /// A copy of the body to keep, holding only its own bytes (default: a clone). `Bytes`, and
    /// the `Bytes` of a `Full<Bytes>`, are copied: a body collected from a connection may share
    /// the connection's read buffer, many times its length, which a clone would keep alive for as
    /// long as the answer is stored.
    fn compacted(&self) -> Self
    where
        Self: Sized + Clone,
    {
        self.clone()
    }
}

#[cfg(feature = "http")]
mod body_size {
    use super::BodySize;

    macro_rules! by_len {
        ($($ty:ty),*) => {$(
            impl BodySize for $ty {
                #[inline]
                fn body_size(&self) -> usize {
                    self.len()
                }
            }
        )*};
    }

    by_len!(String, Vec<u8>, &'static str, &'static [u8]);

    impl BodySize for bytes::Bytes {
        #[inline]
        fn body_size(&self) -> usize {
            self.len()
        }

        fn compacted(&self) -> Self {
            bytes::Bytes::copy_from_slice(self)
        }
    }

    impl BodySize for () {
        #[inline]
        fn body_size(&self) -> usize {
            0
        }
    }

    impl<D> BodySize for http_body_util::Empty<D> {
        #[inline]
        fn body_size(&self) -> usize {
            0
        }
    }

    impl<D: bytes::Buf + 'static> BodySize for http_body_util::Full<D> {
        fn body_size(&self) -> usize {
            let hint = http_body::Body::size_hint(self);
            let len = hint.exact().unwrap_or(hint.lower());
            usize::try_from(len).unwrap_or(usize::MAX)
        }

        /// A `Full<Bytes>` is rebuilt around a copy of its bytes (a clone would share, and keep
        /// alive, the buffer they were read into); other data is cloned.
        fn compacted(&self) -> Self
        where
            Self: Sized + Clone,
        {
            use std::task::{Context, Poll, Waker};
            let mut body = std::pin::pin!(self.clone());
            // `Full` is always ready: its one frame, if any, is there at the first poll.
            let mut cx = Context::from_waker(Waker::noop());
            let Poll::Ready(Some(Ok(frame))) = http_body::Body::poll_frame(body.as_mut(), &mut cx)
            else {
                return self.clone();
            };
            let Ok(mut data) = frame.into_data() else {
                return self.clone();
            };
            let any: &mut dyn std::any::Any = &mut data;
            if let Some(shared) = any.downcast_mut::<bytes::Bytes>() {
                *shared = bytes::Bytes::copy_from_slice(shared);
            }
            http_body_util::Full::new(data)
        }
    }
}
