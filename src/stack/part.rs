//! How a stack holds its parts, for the type parameters of
//! [`ServerStack`](super::ServerStack) and [`ClientStack`](super::ClientStack).
//!
//! Each part is one of two kinds:
//!
//! - **made by the stack** ([`Own`]): the stack keeps the part's settings (a timeout's duration,
//!   a rate limit's quota, a retry's classifier and policy...) and makes the layer from them, named
//!   after the stack and observed by the stack's observer, the first time the stack makes a
//!   service or hands the layer out. Made once: every clone of the stack, and every service made
//!   from any of them, shares it. Setting the stack's [`name`](super::ServerStack::name) or
//!   [`observer`](super::ServerStack::observer) makes it anew.
//! - **given** as a built layer (a [`TimeoutLayer`], a `RateLimitLayer`, an
//!   `AdaptiveLimitLayer`, a `RetryLayer`, a `CircuitBreakerLayer`): the stack uses it as it is,
//!   with its own name and observer (none if built without one), shared with the layer's other
//!   clones and its handle.
//!
//! The traits here are sealed: they describe the parts the stacks can hold.

use crate::core::Observer;
use crate::timeout::policy::Propagate;
use crate::timeout::TimeoutLayer;
use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A part the stack makes from settings `S` it keeps, into the layer `L`: made when first needed,
/// named and observed as the stack says, and then shared by every clone of the stack. See the
/// [module docs](self).
pub struct Own<S, L> {
    settings: S,
    layer: Arc<OnceLock<L>>,
}

impl<S, L> Own<S, L> {
    /// A part made from `settings` when first needed.
    pub(crate) fn new(settings: S) -> Self {
        Own {
            settings,
            layer: Arc::new(OnceLock::new()),
        }
    }
}

impl<S: Clone, L> Clone for Own<S, L> {
    fn clone(&self) -> Self {
        Own {
            settings: self.settings.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, L> fmt::Debug for Own<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Own")
            .field("settings", &self.settings)
            .field("made", &self.layer.get().is_some())
            .finish()
    }
}

/// The settings of a part a stack makes ([`Own`]): what the layer is made from. Sealed.
pub trait Build<O>: Clone + sealed::Sealed {
    /// The layer made from them.
    type Layer: Clone;

    /// Makes the layer, named `name` and observed by `observer`.
    #[doc(hidden)]
    fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer;
}

/// A part of a stack whose observer is `O`: [`Own`], or a seawall layer given built. Sealed.
pub trait StackPart<O>: sealed::Sealed {
    /// The layer the part puts in the stack.
    type Layer: Clone;

    /// The part's layer: for [`Own`], made now (named `name()`, observed by `observer`) unless it
    /// has been already.
    #[doc(hidden)]
    fn layer(&self, name: impl FnOnce() -> Cow<'static, str>, observer: &O) -> &Self::Layer;

    /// The part, to be made again when next needed (for [`Own`]; a given layer is left as it
    /// is): the stack's name or observer changed.
    #[doc(hidden)]
    fn fresh(self) -> Self;
}

/// A part of a stack, in the stack observed by `O` instead: an [`Own`] part made for `O`, a given
/// layer left as it is. Sealed.
pub trait Reobserve<O>: sealed::Sealed {
    /// The part in the stack observed by `O`.
    type Output;

    /// The part in the stack observed by `O`.
    #[doc(hidden)]
    fn reobserve(self) -> Self::Output;
}

impl<S, L, O: Clone> StackPart<O> for Own<S, L>
where
    S: Build<O, Layer = L>,
    L: Clone,
{
    type Layer = L;

    fn layer(&self, name: impl FnOnce() -> Cow<'static, str>, observer: &O) -> &L {
        self.layer
            .get_or_init(|| self.settings.build(name(), observer.clone()))
    }

    fn fresh(self) -> Self {
        Own::new(self.settings)
    }
}

impl<S: Build<O>, L, O> Reobserve<O> for Own<S, L> {
    type Output = Own<S, S::Layer>;

    fn reobserve(self) -> Self::Output {
        Own::new(self.settings)
    }
}

impl<S, L> sealed::Sealed for Own<S, L> {}

/// A layer given built, as a part: used as it is, whatever the stack's name and observer.
macro_rules! given {
    ($(#[$cfg:meta])* [$($param:ident),*] $layer:ty $(where $($bound:tt)*)?) => {
        $(#[$cfg])*
        impl<$($param,)* Ob> StackPart<Ob> for $layer $(where $($bound)*)? {
            type Layer = Self;

            #[inline]
            fn layer(&self, _: impl FnOnce() -> Cow<'static, str>, _: &Ob) -> &Self {
                self
            }

            fn fresh(self) -> Self {
                self
            }
        }

        $(#[$cfg])*
        impl<$($param,)* Ob> Reobserve<Ob> for $layer {
            type Output = Self;

            fn reobserve(self) -> Self {
                self
            }
        }

        $(#[$cfg])*
        impl<$($param),*> sealed::Sealed for $layer {}
    };
}

given!([P, O] TimeoutLayer<P, O> where P: Clone);
given!(
    #[cfg(feature = "limit")]
    [Clk, O, D] crate::limit::rate::RateLimitLayer<Clk, O, D> where D: Clone
);
given!(
    #[cfg(feature = "limit")]
    [A, C, O, D] crate::limit::AdaptiveLimitLayer<A, C, O, D> where C: Clone, D: Clone
);
given!(
    #[cfg(feature = "retry")]
    [C, P, O] crate::retry::RetryLayer<C, P, O> where C: Clone, P: Clone
);
given!(
    #[cfg(feature = "circuit-breaker")]
    [C, O] crate::circuit_breaker::CircuitBreakerLayer<C, O> where C: Clone
);

/// A timeout the stack makes: from its policy (a `Duration`, or a propagating one).
pub type OwnTimeout<T, O = ()> = Own<T, TimeoutLayer<T, O>>;

impl<O: Observer> Build<O> for Duration {
    type Layer = TimeoutLayer<Duration, O>;

    fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
        TimeoutLayer::new(*self).name(name).observer(observer)
    }
}

impl<O: Observer> Build<O> for Propagate<Duration> {
    type Layer = TimeoutLayer<Propagate<Duration>, O>;

    fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
        TimeoutLayer::new(self.0)
            .propagate()
            .name(name)
            .observer(observer)
    }
}

impl sealed::Sealed for Duration {}
impl sealed::Sealed for Propagate<Duration> {}

#[cfg(feature = "limit")]
pub use server::{
    OwnDeadlineLimiter, OwnLimiter, OwnRateLimit, StackDeadlineLimiter, StackLimiter,
};

#[cfg(feature = "limit")]
mod server {
    use super::{sealed, Build, Own};
    use crate::bulkhead::{Codel, Order};
    use crate::core::{CarriedDeadline, ErrorIsFailure, Observer};
    use crate::limit::algorithm::{Gradient2, Windowed};
    use crate::limit::rate::{Quota, RateLimitLayer, TokioClock};
    use crate::limit::{AdaptiveLimitBuilder, AdaptiveLimitLayer};
    use std::borrow::Cow;
    use std::time::Duration;

    /// A rate limit the server stack makes, from its quota.
    pub type OwnRateLimit<O = ()> = Own<Quota, RateLimitLayer<TokioClock, O>>;

    impl<O: Observer> Build<O> for Quota {
        type Layer = RateLimitLayer<TokioClock, O>;

        fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
            RateLimitLayer::builder(*self)
                .name(name)
                .observer(observer)
                .build()
                .expect("the quota was checked when it was given")
        }
    }

    impl sealed::Sealed for Quota {}

    /// The adaptive limiter the server stack makes: a windowed [`Gradient2`] with a queue of
    /// 128, controlled delay (5 ms while the queue stands, 165 ms after it emptied) and LIFO
    /// order (see the [stack module docs](crate::stack)).
    #[derive(Clone, Copy, Debug, Default)]
    pub struct StackLimiter;

    /// How many callers the server stack's limiter queues.
    const QUEUE: usize = 128;
    /// The server stack's controlled delay: 5 ms while the queue stands, 165 ms after it emptied.
    const CODEL: Codel = Codel::new(Duration::from_millis(5), Duration::from_millis(165));

    /// The adaptive limiter the server stack makes.
    pub type OwnLimiter<O = ()> =
        Own<StackLimiter, AdaptiveLimitLayer<Windowed<Gradient2>, ErrorIsFailure, O>>;

    /// The server stack's limiter settings, before the observer and the deadline mode.
    fn limiter(name: Cow<'static, str>) -> AdaptiveLimitBuilder<Windowed<Gradient2>> {
        AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
            .queue(QUEUE)
            .codel(CODEL)
            .order(Order::Lifo)
            .name(name)
    }

    impl<O: Observer> Build<O> for StackLimiter {
        type Layer = AdaptiveLimitLayer<Windowed<Gradient2>, ErrorIsFailure, O>;

        fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
            limiter(name)
                .observer(observer)
                .build()
                .expect("the default configuration is valid")
        }
    }

    impl sealed::Sealed for StackLimiter {}

    /// The server stack's adaptive limiter ([`StackLimiter`]) honouring the deadlines requests
    /// carry: a call waits in its queue never past its deadline (see
    /// [`ServerStack::honour_deadlines`](crate::stack::ServerStack::honour_deadlines)).
    #[derive(Clone, Copy, Debug, Default)]
    pub struct StackDeadlineLimiter;

    /// The adaptive limiter the server stack makes when it honours deadlines.
    pub type OwnDeadlineLimiter<O = ()> = Own<
        StackDeadlineLimiter,
        AdaptiveLimitLayer<Windowed<Gradient2>, ErrorIsFailure, O, CarriedDeadline>,
    >;

    impl<O: Observer> Build<O> for StackDeadlineLimiter {
        type Layer = AdaptiveLimitLayer<Windowed<Gradient2>, ErrorIsFailure, O, CarriedDeadline>;

        fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
            limiter(name)
                .honour_deadlines()
                .observer(observer)
                .build()
                .expect("the default configuration is valid")
        }
    }

    impl sealed::Sealed for StackDeadlineLimiter {}
}

#[cfg(all(feature = "retry", feature = "circuit-breaker"))]
pub use client::{BreakerSettings, OwnBreaker, OwnRetry, Plain, RetrySettings};

#[cfg(all(feature = "retry", feature = "circuit-breaker"))]
mod client {
    use super::{sealed, Build, Own, OwnTimeout};
    use crate::circuit_breaker::CircuitBreakerLayer;
    use crate::core::Observer;
    use crate::retry::policy::{Cloned, ClonedWithDeadline};
    use crate::retry::RetryLayer;
    use crate::timeout::policy::Propagate;
    use crate::timeout::TimeoutLayer;
    use std::borrow::Cow;
    use std::time::Duration;

    /// The retry a client stack makes: the default retry settings (see
    /// [`retry::Builder`](crate::retry::Builder)) with the stack's classifier `C` and policy `P`.
    #[derive(Clone, Copy, Debug)]
    pub struct RetrySettings<C, P> {
        pub(crate) classify: C,
        pub(crate) policy: P,
    }

    /// A retry the client stack makes.
    pub type OwnRetry<C, P, O = ()> = Own<RetrySettings<C, P>, RetryLayer<C, P, O>>;

    impl<C: Clone, P: Clone, O: Observer> Build<O> for RetrySettings<C, P> {
        type Layer = RetryLayer<C, P, O>;

        fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
            RetryLayer::builder()
                .classify(self.classify.clone())
                .policy(self.policy.clone())
                .name(name)
                .observer(observer)
                .build()
                .expect("the default configuration is valid")
        }
    }

    impl<C, P> sealed::Sealed for RetrySettings<C, P> {}

    /// The circuit breaker a client stack makes: the default breaker settings (see
    /// [`circuit_breaker::Builder`](crate::circuit_breaker::Builder)) with the stack's
    /// classifier `C`.
    #[derive(Clone, Copy, Debug)]
    pub struct BreakerSettings<C> {
        pub(crate) classify: C,
    }

    /// A circuit breaker the client stack makes.
    pub type OwnBreaker<C, O = ()> = Own<BreakerSettings<C>, CircuitBreakerLayer<C, O>>;

    impl<C: Clone, O: Observer> Build<O> for BreakerSettings<C> {
        type Layer = CircuitBreakerLayer<C, O>;

        fn build(&self, name: Cow<'static, str>, observer: O) -> Self::Layer {
            CircuitBreakerLayer::builder()
                .classify(self.classify.clone())
                .name(name)
                .observer(observer)
                .build()
                .expect("the default configuration is valid")
        }
    }

    impl<C> sealed::Sealed for BreakerSettings<C> {}

    /// A part of a client stack, in the stack without deadlines
    /// ([`ClientStack::without_deadlines`](crate::stack::ClientStack::without_deadlines)): the
    /// stack's own timeouts plain and its own retry cloning requests without reading deadlines;
    /// a layer given built left as it is. Sealed.
    pub trait Plain<O>: sealed::Sealed {
        /// The part in the stack without deadlines.
        type Output;

        /// The part in the stack without deadlines.
        #[doc(hidden)]
        fn plain(self) -> Self::Output;
    }

    impl<L, O: Observer> Plain<O> for Own<Propagate<Duration>, L> {
        type Output = OwnTimeout<Duration, O>;

        fn plain(self) -> Self::Output {
            Own::new(self.settings.0)
        }
    }

    impl<C: Clone, L, O: Observer> Plain<O> for Own<RetrySettings<C, ClonedWithDeadline>, L> {
        type Output = OwnRetry<C, Cloned, O>;

        fn plain(self) -> Self::Output {
            Own::new(RetrySettings {
                classify: self.settings.classify,
                policy: Cloned,
            })
        }
    }

    impl<P, O, Ob> Plain<Ob> for TimeoutLayer<P, O> {
        type Output = Self;

        fn plain(self) -> Self {
            self
        }
    }

    impl<C, P, O, Ob> Plain<Ob> for RetryLayer<C, P, O> {
        type Output = Self;

        fn plain(self) -> Self {
            self
        }
    }
}

mod sealed {
    pub trait Sealed {}
}
