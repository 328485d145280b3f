//! How services and calls reach their layer's shared state: [`Anchor`], counted or `'static`.
//!
//! A counted anchor keeps two kinds of reference apart. Holders (layers, services, handles) share
//! one reference count, as with an `Arc`. Calls in flight (a permit in a response future) each
//! hold one of a few *proxies* of the state, the one of the stripe of the thread that started
//! them, each proxy counted on a cache line of its own: so calls on two threads never write the
//! same line. With one shared count, every call's increment and decrement bounced that line
//! between the cores, which cost two threads sharing a breaker about 100 ns a call.
//!
//! It is all `Arc`s: the holders share a root that holds the proxies, and each proxy holds the
//! state. The state goes with the last holder or call, whichever is last, with no unsafe code.

use crate::sync::thread_index;
use std::sync::{Arc, Weak};

/// How many proxies count the calls in flight.
const STRIPES: usize = 8;

/// One stripe's reference to the state, alone on its cache lines (its count on one, itself on
/// the next).
#[repr(align(128))]
struct Proxy<T>(Arc<T>);

/// What the holders share: the state, and its proxies.
pub(crate) struct Root<T> {
    state: Arc<T>,
    proxies: [Arc<Proxy<T>>; STRIPES],
}

/// A holder's reference to counted shared state. See the [module docs](self).
pub(crate) struct Counted<T> {
    root: Arc<Root<T>>,
}

impl<T> Counted<T> {
    pub(crate) fn new(value: T) -> Self {
        let state = Arc::new(value);
        let proxies = std::array::from_fn(|_| Arc::new(Proxy(state.clone())));
        Counted {
            root: Arc::new(Root { state, proxies }),
        }
    }

    /// A reference that does not keep the state alive: [`WeakAnchor`].
    #[cfg_attr(
        not(all(
            feature = "health",
            any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
        )),
        allow(dead_code)
    )]
    fn downgrade(&self) -> Weak<Root<T>> {
        Arc::downgrade(&self.root)
    }

    /// A reference for one call, through the calling thread's proxy.
    #[inline]
    pub(crate) fn call(&self) -> CallRef<T> {
        CallRef(self.root.proxies[thread_index() % STRIPES].clone())
    }
}

impl<T> Clone for Counted<T> {
    #[inline]
    fn clone(&self) -> Self {
        Counted {
            root: self.root.clone(),
        }
    }
}

impl<T> std::ops::Deref for Counted<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.root.state
    }
}

/// A reference to a layer's shared state that does not keep it alive (what `health`'s registry
/// holds): it upgrades to an [`Anchor`] while some holder (a layer, a service, a handle) is left.
/// Calls still in flight after the last holder went do not count: the layer is gone.
#[cfg_attr(
    not(all(
        feature = "health",
        any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
    )),
    allow(dead_code)
)]
pub(crate) enum WeakAnchor<T: 'static> {
    Counted(Weak<Root<T>>),
    Static(&'static T),
}

#[cfg_attr(
    not(all(
        feature = "health",
        any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
    )),
    allow(dead_code)
)]
impl<T> WeakAnchor<T> {
    /// Whether a holder is left: a look at the reference count, which keeps nothing alive.
    pub(crate) fn alive(&self) -> bool {
        match self {
            WeakAnchor::Counted(weak) => weak.strong_count() > 0,
            WeakAnchor::Static(_) => true,
        }
    }

    /// The state, if a holder is left.
    pub(crate) fn upgrade(&self) -> Option<Anchor<T>> {
        match self {
            WeakAnchor::Counted(weak) => {
                weak.upgrade().map(|root| Anchor::Counted(Counted { root }))
            }
            WeakAnchor::Static(r) => Some(Anchor::Static(r)),
        }
    }
}

/// A call's reference to counted shared state: keeps it alive without touching the holders'
/// count.
pub(crate) struct CallRef<T>(Arc<Proxy<T>>);

impl<T> std::ops::Deref for CallRef<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0 .0
    }
}

/// How services and futures reach their layer's shared state: counted (the default, freed with
/// the last user) or `'static` (leaked once, on purpose, so that nothing is ever counted).
pub(crate) enum Anchor<T: 'static> {
    Counted(Counted<T>),
    Static(&'static T),
}

impl<T> Anchor<T> {
    pub(crate) fn counted(value: T) -> Self {
        Anchor::Counted(Counted::new(value))
    }

    /// Leaks `value`: it lives, and its memory stays allocated, until the process ends.
    pub(crate) fn leaked(value: T) -> Self {
        Anchor::Static(Box::leak(Box::new(value)))
    }

    /// A reference for one call (see the [module docs](self)).
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn call(&self) -> CallAnchor<T> {
        self.with_call(std::convert::identity)
    }

    /// `build` applied to a reference for one call, in one arm per kind of anchor: what `build`
    /// makes of the reference is then written where it goes. (Choosing the reference first and
    /// building once after it wrote the reference to a temporary as two words and copied it as
    /// one wide word: a read the CPU cannot serve from its pending writes, which stalled every
    /// call of a gate service by 4 to 6 ns.)
    #[inline(always)]
    pub(crate) fn with_call<R>(&self, build: impl FnOnce(CallAnchor<T>) -> R) -> R {
        match self {
            Anchor::Counted(counted) => build(CallAnchor::Counted(counted.call())),
            Anchor::Static(r) => build(CallAnchor::Static(r)),
        }
    }

    /// A reference that does not keep the state alive.
    #[cfg_attr(
        not(all(
            feature = "health",
            any(feature = "bulkhead", feature = "circuit-breaker", feature = "limit")
        )),
        allow(dead_code)
    )]
    pub(crate) fn downgrade(&self) -> WeakAnchor<T> {
        match self {
            Anchor::Counted(counted) => WeakAnchor::Counted(counted.downgrade()),
            Anchor::Static(r) => WeakAnchor::Static(r),
        }
    }

    /// The same state, kept alive for the rest of the process: a counted anchor's holder is
    /// leaked (one small allocation, never freed).
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    pub(crate) fn leak(self) -> Self {
        match self {
            Anchor::Counted(counted) => Anchor::Static(&**Box::leak(Box::new(counted))),
            leaked => leaked,
        }
    }
}

impl<T> Clone for Anchor<T> {
    #[inline(always)]
    fn clone(&self) -> Self {
        match self {
            Anchor::Counted(counted) => Anchor::Counted(counted.clone()),
            Anchor::Static(r) => Anchor::Static(r),
        }
    }
}

impl<T> std::ops::Deref for Anchor<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        match self {
            Anchor::Counted(counted) => counted,
            Anchor::Static(r) => r,
        }
    }
}

/// A call's reference to its layer's shared state: [`Anchor::call`].
pub(crate) enum CallAnchor<T: 'static> {
    Counted(CallRef<T>),
    Static(&'static T),
}

impl<T> std::ops::Deref for CallAnchor<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        match self {
            CallAnchor::Counted(call) => call,
            CallAnchor::Static(r) => r,
        }
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops.
    struct Tracked(Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn freed_once_after_the_last_holder_or_call() {
        let drops = Arc::new(AtomicUsize::new(0));
        // Holders only.
        let a = Anchor::counted(Tracked(drops.clone()));
        let b = a.clone();
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(b);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // Calls outliving every holder, started on several threads.
        let a = Anchor::counted(Tracked(drops.clone()));
        let mut calls: Vec<CallAnchor<Tracked>> = (0..4)
            .map(|_| {
                let holder = a.clone();
                std::thread::spawn(move || holder.call()).join().unwrap()
            })
            .collect();
        let local = a.call();
        drop(a);
        drop(local);
        let last = calls.pop().unwrap();
        drop(calls);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        std::thread::spawn(move || drop(last)).join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // A static anchor is never freed, and its calls count nothing.
        let leaked = Anchor::counted(Tracked(drops.clone())).leak();
        drop(leaked.call());
        drop(leaked);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }
}
