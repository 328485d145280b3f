//! What a fallback answers with: [`Policy`] (what it keeps of each request) and [`Respond`] (how it
//! answers), implemented by [`Value`], [`FromFn`] and [`WithRequest`]; and what stale-if-error may
//! store: [`StorePolicy`], implemented by [`StoreSuccesses`] and [`HttpStore`].

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
/// a `2xx` answer that may be shared with whoever sends a request with the same key.
///
/// A response is not stored if
/// - its status is not `2xx` (a `404` during a deploy must not replace the good `200`);
/// - it carries `Set-Cookie`, or `Cache-Control` with `private` or `no-store` (in any case, in
///   any of its values);
/// - the request carried `Authorization` or `Cookie`, unless the key includes what makes the
///   answer private
///   ([`key_includes_credentials`](super::StaleIfErrorBuilder::key_includes_credentials));
/// - it carries `Vary: *`, or `Vary` naming a header the key does not cover
///   ([`key_covers_headers`](super::StaleIfErrorBuilder::key_covers_headers); none by default).
///   Answers that vary are refused rather than keyed on the varied headers: the key is the
///   user's, and only the user can make it cover them.
#[cfg(feature = "http")]
#[derive(Clone, Debug, Default)]
pub struct HttpStore {
    credentials_in_key: bool,
    key_covers: Vec<http::HeaderName>,
}

#[cfg(feature = "http")]
impl HttpStore {
    pub(crate) fn credentials_in_key(mut self) -> Self {
        self.credentials_in_key = true;
        self
    }

    pub(crate) fn covers(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.key_covers.extend(names);
        self
    }

    /// Whether the key covers the header `name` (as written in `Vary`, any case).
    fn covers_header(&self, name: &[u8]) -> bool {
        self.key_covers
            .iter()
            .any(|covered| covered.as_str().as_bytes().eq_ignore_ascii_case(name))
    }
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

#[cfg(feature = "http")]
impl<A, B> StorePolicy<http::Request<A>, http::Response<B>> for HttpStore {
    /// Whether the request carried credentials.
    type Memo = bool;

    #[inline]
    fn memo(&self, request: &http::Request<A>) -> bool {
        let headers = request.headers();
        !self.credentials_in_key
            && (headers.contains_key(http::header::AUTHORIZATION)
                || headers.contains_key(http::header::COOKIE))
    }

    fn may_store(&self, credentials: &bool, response: &http::Response<B>) -> bool {
        use http::header::{CACHE_CONTROL, SET_COOKIE, VARY};
        let headers = response.headers();
        if *credentials || !response.status().is_success() || headers.contains_key(SET_COOKIE) {
            return false;
        }
        let private = items(headers.get_all(CACHE_CONTROL)).any(|directive| {
            let name = directive.split(|&b| b == b'=').next().unwrap_or_default();
            let name = name.trim_ascii();
            name.eq_ignore_ascii_case(b"private") || name.eq_ignore_ascii_case(b"no-store")
        });
        !private && items(headers.get_all(VARY)).all(|name| self.covers_header(name))
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

    by_len!(String, Vec<u8>, bytes::Bytes, &'static str, &'static [u8]);

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

    impl<D: bytes::Buf> BodySize for http_body_util::Full<D> {
        fn body_size(&self) -> usize {
            let hint = http_body::Body::size_hint(self);
            let len = hint.exact().unwrap_or(hint.lower());
            usize::try_from(len).unwrap_or(usize::MAX)
        }
    }
}
