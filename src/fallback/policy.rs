//! What a fallback answers with: [`Policy`] (what it keeps of each request) and [`Respond`] (how it
//! answers), implemented by [`Value`], [`FromFn`] and [`WithRequest`].

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
