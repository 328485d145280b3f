//! The pool's `Service`: power of two choices over the endpoints in rotation.

use super::error::{EndpointUnavailable, NoHealthyEndpoint};
use super::future::{InFlight, ResponseFuture};
use super::handle::PoolHandle;
use super::state::{
    tag, Endpoint, List, Shared, Usable, AVAILABLE, CLAIMED, EJECTED, HELD, PROBING, REMOVED,
};
use super::Builder;
use crate::core::{Classify, ErrorIsFailure, EventKind, Observer, RejectReason};
use crate::sync::nanos;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

/// Random draws of an endpoint before a pool falls back to walking its list: enough that, with
/// at most half the endpoints out of rotation, a walk is a rare event (about 1 in 4,000).
const DRAWS: usize = 16;

/// Endpoints tried for readiness in one `poll_ready`, beside the one it already holds: one
/// pending or failing is passed over for another, up to this many.
const ATTEMPTS: usize = 3;

/// A pool of endpoints, each a tower `Service`: calls go to the less loaded of two endpoints
/// drawn at random among those in rotation (power of two choices), and endpoints that fail are
/// ejected for a while. See the [module docs](super).
///
/// Clones share the endpoints and their state; each clone makes its call on its own clone of the
/// chosen endpoint's service (so endpoint services must be `Clone`, as hyper's and tonic's
/// clients are, and `Sync`: wrap others in `BoxCloneSyncService` or tower's `Buffer`).
pub struct Pool<K, S, C = ErrorIsFailure, O = ()> {
    shared: Arc<Shared<K, S, O>>,
    classify: C,
    /// The endpoints as of generation `seen`: replaced whole when the pool's list changes, so
    /// nothing here ever indexes a list it did not come from.
    list: List<K, S>,
    seen: u64,
    /// What `poll_ready` chose, ready.
    chosen: Option<Chosen<K, S, O>>,
    /// While `poll_ready` is pending, the endpoints it waits on.
    waiting: Waiting<K, S, O>,
    /// `poll_ready` found no healthy endpoint, and the pool fails fast: `call` refuses.
    rejected: bool,
    rng: AtomicU64,
    /// When nothing can take a call until an ejection ends.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Changes this `poll_ready` counted itself, silently (probes it gave back): not a reason to
    /// wake its own task again.
    own_changes: u64,
}

/// Endpoints kept while their readiness is pending, at most: the one a `poll_ready` held before,
/// and each it tried beside.
const KEPT: usize = ATTEMPTS + 1;

/// The endpoints a pool clone waits on, their readiness pending: a fixed array (no allocation),
/// with the one holding a claimed probe, if any, first (it is polled first).
struct Waiting<K, S, O>([Option<Chosen<K, S, O>>; KEPT]);

impl<K, S, O> Default for Waiting<K, S, O> {
    fn default() -> Self {
        Waiting(std::array::from_fn(|_| None))
    }
}

impl<K, S, O> Waiting<K, S, O> {
    #[inline]
    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Whether a probe claimed is among the endpoints kept (it is first, if so).
    #[inline]
    fn holds_claim(&self) -> bool {
        self.0[0].as_ref().is_some_and(|c| c.claim.is_some())
    }

    /// Keeps `chosen`, whose readiness is pending. A second claimed probe is given back without
    /// waking anyone (one clone holds no more than one endpoint out of rotation, and a clone
    /// holding one claims no other: this is only a safeguard); when every place is taken, a
    /// claimed probe takes the place of a plain wait, and a plain wait is let go. How many
    /// changes it counted (silently, in giving a probe back): 0 or 1.
    fn keep(&mut self, chosen: Chosen<K, S, O>) -> u64 {
        if chosen.claim.is_some() {
            if self.holds_claim() {
                return chosen.let_go();
            }
            // First, the plain wait it displaces (if any) moved to a free place or let go.
            let displaced = self.0[0].replace(chosen);
            if let Some(displaced) = displaced {
                if let Some(free) = self.0.iter_mut().find(|c| c.is_none()) {
                    *free = Some(displaced);
                }
            }
        } else if let Some(free) = self.0.iter_mut().find(|c| c.is_none()) {
            *free = Some(chosen);
        }
        0
    }
}

/// An endpoint drawn: its place in the list, the endpoint, and how it may take the call.
type Pick<K, S> = (usize, Arc<Endpoint<K, S>>, Usable);

/// What [`Pool::select`] returns: the endpoint, and the probe it claimed on it, if any.
type Selected<K, S> = (Arc<Endpoint<K, S>>, Option<u64>);

/// An endpoint `poll_ready` chose, with the clone of its service the call will be made on.
struct Chosen<K, S, O> {
    endpoint: Arc<Endpoint<K, S>>,
    service: S,
    /// The endpoint's probe, when this call is to be it.
    claim: Option<Claim<K, S, O>>,
}

impl<K, S, O> Chosen<K, S, O> {
    fn claim_word(&self) -> Option<u64> {
        self.claim.as_ref().map(|c| c.word)
    }

    /// Lets the endpoint go, the probe claimed on it, if any, given back silently (see
    /// [`Claim::withdraw`]). How many changes that counted: 0 or 1.
    fn let_go(self) -> u64 {
        self.claim.map_or(0, |claim| u64::from(claim.withdraw()))
    }
}

/// A probe claimed in `poll_ready` and not sent yet: given back when dropped, whatever drops it
/// (the choice given up, the pool clone dropped, a panic on the way to `call`). A claim left
/// unsent for the probe-claim timeout ([`Builder::probe_claim_timeout`]) may be taken over by
/// another clone.
struct Claim<K, S, O> {
    shared: Arc<Shared<K, S, O>>,
    endpoint: Arc<Endpoint<K, S>>,
    /// The endpoint's word as this claim set it; 0 once sent (no claim's word is 0).
    word: u64,
}

impl<K, S, O> Claim<K, S, O> {
    /// Gives back a probe claimed in this `poll_ready` and not kept, without waking anyone:
    /// the endpoint is due a probe again, as it was before the claim, so no clone has anything
    /// new to act on (one that saw the claim meanwhile takes it at its takeover time at the
    /// latest).
    /// Whether it was given back (and a change counted, silently: a refusal that looked while
    /// the claim was held must not record, or trust, a quiet time that counted it).
    fn withdraw(mut self) -> bool {
        let word = std::mem::take(&mut self.word);
        let given_back = self.endpoint.unclaim(word);
        if given_back {
            self.shared.touch();
        }
        given_back
    }

    /// Makes the probe's call: false if the claim was lost (taken over, or the endpoint
    /// removed) since `poll_ready`.
    fn send(mut self) -> bool {
        let word = std::mem::take(&mut self.word);
        self.endpoint.send_probe(word)
    }
}

impl<K, S, O> Drop for Claim<K, S, O> {
    fn drop(&mut self) {
        if self.word != 0 {
            self.shared.release_claim(&self.endpoint, self.word);
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Pool<usize, ()> {
    /// A builder, with the defaults listed on [`Builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<S> Pool<usize, S> {
    /// A pool with the default settings over a fixed set of endpoints, keyed by their place in
    /// `endpoints` (0, 1, ...).
    ///
    /// ```
    /// use seawall::pool::Pool;
    /// use tower::{service_fn, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let replicas = (0..3).map(|_| service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
    /// let pool = Pool::new(replicas);
    /// assert_eq!(pool.oneshot(41).await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(endpoints: impl IntoIterator<Item = S>) -> Self {
        Builder::default()
            .build(endpoints)
            .expect("the default settings are valid")
    }
}

impl<K, S, C, O> Pool<K, S, C, O> {
    pub(crate) fn from_shared(shared: Arc<Shared<K, S, O>>, classify: C) -> Self
    where
        K: fmt::Debug,
        O: Observer,
    {
        let (seen, list) = shared.list();
        let seed = shared.config.seed.unwrap_or_else(rand::random);
        Pool {
            shared,
            classify,
            list,
            seen,
            chosen: None,
            waiting: Waiting::default(),
            rejected: false,
            rng: AtomicU64::new(splitmix(seed)),
            sleep: None,
            own_changes: 0,
        }
    }

    /// The pool's handle: each endpoint's state, load and ejections.
    pub fn handle(&self) -> PoolHandle
    where
        K: fmt::Debug + Send + Sync + 'static,
        S: Send + Sync + 'static,
        O: Observer,
    {
        PoolHandle::new(self.shared.clone())
    }
}

/// A uniform draw from `0..n` (`n` > 0), from a pool clone's own generator.
#[inline]
fn below(rng: &mut AtomicU64, n: usize) -> usize {
    let state = rng.get_mut();
    *state = splitmix(*state);
    (((*state >> 32) * n as u64) >> 32) as usize
}

impl<K, S, C, O> Pool<K, S, C, O>
where
    K: fmt::Debug,
    S: Clone,
    O: Observer,
{
    /// Takes the pool's endpoint list if it changed since this clone last looked.
    #[inline]
    fn sync(&mut self) {
        if self.shared.generation() != self.seen {
            let (seen, list) = self.shared.list();
            self.seen = seen;
            self.list = list;
        }
    }

    /// Whether what this clone chose may still take the call now.
    fn still_usable(&self, chosen: &Chosen<K, S, O>) -> bool {
        let word = chosen.endpoint.word();
        let unhealthy = self.shared.no_healthy();
        match tag(word) {
            AVAILABLE | HELD => !(unhealthy && self.shared.fails_fast()),
            CLAIMED if chosen.claim_word() == Some(word) => true,
            EJECTED | PROBING | CLAIMED => unhealthy && !self.shared.fails_fast(),
            _ => false,
        }
    }

    /// Draws two endpoints that may take a call (in rotation, or due a probe; when no endpoint
    /// is healthy and the pool panics, any), and returns the less loaded, with the probe it
    /// claimed when the call is to be the endpoint's probe. The endpoints in `avoid` (already
    /// tried by this `poll_ready`) are left out, and so are the probes due unless `may_claim`.
    fn select(
        &mut self,
        now: u64,
        avoid: &[*const Endpoint<K, S>],
        may_claim: bool,
    ) -> Option<Selected<K, S>> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let unhealthy = self.shared.no_healthy();
        let fail_fast = unhealthy && self.shared.fails_fast();
        let panic = unhealthy && !fail_fast;
        let claim_timeout = self.shared.config.claim_timeout;
        // Borrowed, not cloned: the list's reference count is shared by every clone of the
        // pool, and a count taken and given back per call is contended between threads.
        let list = &self.list;
        let rng = &mut self.rng;
        let admits = |i: usize| -> Option<(Arc<Endpoint<K, S>>, Usable)> {
            // Gone: removed since this clone took its list.
            let e = list[i].upgrade()?;
            if avoid.contains(&Arc::as_ptr(&e)) {
                return None;
            }
            // Failing fast, only the probes that may bring an endpoint back go out.
            let usable = e
                .usable(now, panic, claim_timeout)
                .filter(|u| !fail_fast || *u == Usable::ProbeDue)
                .filter(|u| may_claim || *u != Usable::ProbeDue)?;
            Some((e, usable))
        };
        let mut picks: [Option<Pick<K, S>>; 2] = [None, None];
        let mut found = 0;
        for _ in 0..DRAWS {
            let i = below(rng, n);
            if found == 1 && picks[0].as_ref().is_some_and(|(j, ..)| *j == i) {
                continue;
            }
            if let Some((e, usable)) = admits(i) {
                picks[found] = Some((i, e, usable));
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
        if found == 0 {
            // Most endpoints are out: walk the list from a random place (rare, see `DRAWS`).
            let start = below(rng, n);
            picks[0] = (0..n)
                .map(|k| (start + k) % n)
                .find_map(|i| admits(i).map(|(e, u)| (i, e, u)));
        }
        if let [Some(a), Some(b)] = &picks {
            if self.rank(&b.1, b.2, now) < self.rank(&a.1, a.2, now) {
                picks.swap(0, 1);
            }
        }
        let recheck_after = nanos(self.shared.config.schedule.base);
        // A penalised endpoint whose recheck another clone took: taken only if nothing else is.
        let mut fallback = None;
        for (_, endpoint, usable) in picks.into_iter().flatten() {
            match usable {
                Usable::ProbeDue => {
                    if let Some(claim) = endpoint.claim_probe(now, claim_timeout) {
                        return Some((endpoint, Some(claim)));
                    }
                    if panic {
                        return Some((endpoint, None));
                    }
                }
                _ => {
                    if self.shared.config.penalty.is_some() {
                        if let Some(seen) = endpoint.recheck_due(now, recheck_after) {
                            // A penalised endpoint's call again: one per period.
                            if !endpoint.claim_recheck(seen, now) {
                                fallback.get_or_insert(endpoint);
                                continue;
                            }
                        }
                    }
                    return Some((endpoint, None));
                }
            }
        }
        fallback.map(|endpoint| (endpoint, None))
    }

    /// Orders two picks: probes due first, then endpoints a penalty has kept idle long enough to
    /// be tried again, then the lower load.
    fn rank(&self, endpoint: &Endpoint<K, S>, usable: Usable, now: u64) -> (u8, f64) {
        let config = &self.shared.config;
        if usable == Usable::ProbeDue {
            return (0, 0.0);
        }
        if config.penalty.is_some()
            && endpoint
                .recheck_due(now, nanos(config.schedule.base))
                .is_some()
        {
            return (1, 0.0);
        }
        (2, endpoint.cost(now, config.tau))
    }

    /// Polls the readiness of `chosen`: ready, it is this clone's choice (true); failing, its
    /// endpoint is ejected (not final: it is tried again when its time is up); pending, it is
    /// kept in `waiting`.
    fn try_ready<Req>(
        &mut self,
        mut chosen: Chosen<K, S, O>,
        cx: &mut Context<'_>,
        now: u64,
        waiting: &mut Waiting<K, S, O>,
    ) -> bool
    where
        S: Service<Req>,
    {
        match chosen.service.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.chosen = Some(chosen);
                true
            }
            Poll::Ready(Err(_)) => {
                self.shared
                    .not_ready(&chosen.endpoint, chosen.claim_word(), now);
                false
            }
            Poll::Pending => {
                self.own_changes += waiting.keep(chosen);
                false
            }
        }
    }

    /// Waits for the end of the first ejection running, when nothing can take a call before.
    fn arm_timer(&mut self, cx: &mut Context<'_>) {
        let Some(until) = self.shared.next_expiry(&self.list) else {
            self.sleep = None;
            return;
        };
        let deadline = self.shared.instant(until);
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            slot @ None => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
}

impl<K, S, C, O> Clone for Pool<K, S, C, O>
where
    C: Clone,
{
    /// A clone shares the endpoints and their state, and holds no choice of its own yet.
    fn clone(&self) -> Self {
        let seed = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
        Pool {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            list: self.list.clone(),
            seen: self.seen,
            chosen: None,
            waiting: Waiting::default(),
            rejected: false,
            rng: AtomicU64::new(splitmix(seed ^ 0xc10e)),
            sleep: None,
            own_changes: 0,
        }
    }
}

impl<K, S, C, O> fmt::Debug for Pool<K, S, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("shared", &self.shared)
            .field("endpoints", &self.list.len())
            .field("chosen", &self.chosen.is_some())
            .field(
                "waiting",
                &self.waiting.0.iter().filter(|c| c.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

impl<K, S, C, O, Req> Service<Req> for Pool<K, S, C, O>
where
    K: fmt::Debug,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    O: Observer,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K, S, C, O>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.rejected = false;
        self.own_changes = 0;
        let changes = self.shared.changes();
        let now = self.shared.now();
        // What this clone chose and did not call is taken again (or given back) below.
        if let Some(chosen) = self.chosen.take() {
            self.own_changes += self.waiting.keep(chosen);
        }
        // Failing fast with nothing healthy and, as a refusal found since the last change, no
        // probe due yet: refused at once, in O(1), without walking the endpoints.
        if self.waiting.is_empty()
            && self.shared.fails_fast()
            && self.shared.no_healthy()
            && self.shared.quiet(changes, now)
        {
            self.rejected = true;
            return Poll::Ready(Ok(()));
        }
        self.sync();
        // The endpoints this call has tried: one pending or failing is passed over for another.
        let mut tried = [std::ptr::null(); KEPT + ATTEMPTS];
        let mut n = 0;
        // The endpoints found pending, each kept (its service clone holds this task's waker and
        // whatever its readiness started: a connection, a buffer's slot), with no call counted
        // on it, and at most one probe claimed among them.
        let mut waiting = Waiting::default();
        // What this clone waited on before answers for now, or is given back.
        let mut kept = std::mem::take(&mut self.waiting.0).into_iter().flatten();
        while let Some(chosen) = kept.next() {
            if !self.still_usable(&chosen) {
                continue;
            }
            tried[n] = Arc::as_ptr(&chosen.endpoint);
            n += 1;
            // Ready: the others kept are let go, and a probe claimed among them given back
            // with a wake (the waiting clones may rank it first, and have no timer for it).
            // Pending: kept as it is, with the probe it claimed, if any: giving the probe back
            // would wake every waiting clone, this one too, to claim it again.
            if self.try_ready::<Req>(chosen, cx, now, &mut waiting) {
                drop((kept, waiting));
                return Poll::Ready(Ok(()));
            }
        }
        for _ in 0..ATTEMPTS {
            // A clone holding a claimed probe claims no other: it would give it back at once,
            // and that change would wake another clone doing the same (two workers waking each
            // other for ever).
            let may_claim = !waiting.holds_claim();
            let Some((endpoint, claim)) = self.select(now, &tried[..n], may_claim) else {
                break;
            };
            tried[n] = Arc::as_ptr(&endpoint);
            n += 1;
            let claim = claim.map(|word| Claim {
                shared: self.shared.clone(),
                endpoint: endpoint.clone(),
                word,
            });
            let chosen = Chosen {
                service: endpoint.service.clone(),
                endpoint,
                claim,
            };
            // Pending, it is kept with the probe claimed on it until its readiness or the
            // claim's takeover time.
            if self.try_ready::<Req>(chosen, cx, now, &mut waiting) {
                // The endpoints kept are let go, a probe claimed among them given back with a
                // wake, as above.
                drop(waiting);
                return Poll::Ready(Ok(()));
            }
        }
        if waiting.0.iter().any(Option::is_some) {
            self.waiting = waiting;
        } else if !self.list.is_empty() && self.shared.no_healthy() && self.shared.fails_fast() {
            // Until the first probe may be claimed (or a change), the next refusals skip this
            // walk.
            let until = self.shared.next_expiry(&self.list).unwrap_or(u64::MAX);
            self.shared.set_quiet(changes, until);
            self.rejected = true;
            return Poll::Ready(Ok(()));
        } else {
            self.arm_timer(cx);
        }
        self.shared.wait(cx);
        // A change since this clone looked, other than the ones it counted itself.
        if self.shared.changes() != changes.wrapping_add(self.own_changes) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if std::mem::take(&mut self.rejected) {
            let error = NoHealthyEndpoint::new(self.list.len());
            self.shared.emitter().emit(EventKind::Rejected {
                reason: RejectReason::NoHealthyEndpoint,
            });
            return ResponseFuture::rejected(error.into());
        }
        let Chosen {
            endpoint,
            mut service,
            claim,
        } = self.chosen.take().expect("poll_ready must be called first");
        // The probe claimed in `poll_ready` goes out now, unless it was lost meanwhile.
        let claimed = claim.is_some();
        let probe = claim.is_some_and(Claim::send);
        if !probe {
            // Discovery may have removed the endpoint since `poll_ready` (one load); a lost
            // probe is sent as an ordinary call only if the endpoint is back in rotation.
            let word = endpoint.word();
            if tag(word) == REMOVED || (claimed && !matches!(tag(word), AVAILABLE | HELD)) {
                self.shared.emitter().emit(EventKind::Rejected {
                    reason: RejectReason::EndpointUnavailable,
                });
                return ResponseFuture::rejected(EndpointUnavailable::new().into());
            }
        }
        // Counted before anything can fail, and given back by the future, whatever happens.
        endpoint.in_flight.fetch_add(1, Relaxed);
        let call = InFlight::new(
            self.shared.clone(),
            endpoint,
            probe,
            Instant::now(),
            self.classify.clone(),
        );
        self.shared.emitter().emit(EventKind::Permitted);
        ResponseFuture::called(service.call(request), call)
    }
}
