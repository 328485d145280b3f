//! The bulkhead's admission gate: free slots counted in one atomic, and a queue, behind a lock that
//! only callers who must wait take.

use super::error::Full;
use crate::core::{Emitter, Gate, Observer, Record, RejectReason};
use crate::sync::{
    thread_index, AtomicI64, AtomicU64, AtomicU8, Mutex, MutexGuard, Ordering::SeqCst, Padded,
};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The order in which queued callers get slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// First come, first served: fair.
    Fifo,
    /// Last come, first served: under overload the freshest callers, whose clients are still
    /// waiting, are served, and the oldest time out.
    Lifo,
    /// Adaptive LIFO ("Fail at Scale", Maurer 2015): first come, first served while the queue has
    /// been empty at some moment within the last interval (the [`Codel`] interval, 100 ms by
    /// default even without controlled delay), last come, first served while it has not. A queue
    /// that keeps emptying is a burst being absorbed, and is served fairly; one that has not
    /// emptied for a whole interval is overloaded, and serves the freshest callers, whose clients
    /// are still waiting, while the oldest give up.
    Adaptive,
}

/// Controlled delay ("Fail at Scale", Maurer 2015, after CoDel): how long a queued caller may wait
/// depends on whether the queue has been empty lately.
///
/// While the queue has been empty at some moment within the last [`interval`](Codel::interval)
/// (a burst, being absorbed), a queued caller may wait up to the interval. Once it has not (a
/// standing queue: overload), a caller may wait only the [`target`](Codel::target): one that has
/// already waited longer is turned away at once, even if it joined while the queue was young, and
/// is never handed a slot; one that joins a standing queue waits the target at most. The
/// builder's `max_wait`, if set, caps every wait. A caller whose time is up fails with [`Full`]
/// (`waited_too_long`), as with `max_wait`.
///
/// The defaults are the paper's: a target of 5 ms and an interval of 100 ms.
///
/// ```
/// use seawall::bulkhead::{BulkheadLayer, Codel, Order};
/// use std::time::Duration;
///
/// let layer = BulkheadLayer::builder()
///     .max_concurrent(8)
///     .queue(64)
///     .codel(Codel::default())
///     .order(Order::Adaptive)
///     .build()
///     .unwrap();
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Codel {
    /// How long a caller may wait when the queue has not been empty within the interval (default
    /// 5 ms). Above zero, and at most the interval.
    pub target: Duration,
    /// How long a caller may wait when the queue has been empty within it, and how long the queue
    /// must go without emptying to count as overloaded (default 100 ms).
    pub interval: Duration,
}

impl Codel {
    /// Controlled delay with these waits.
    pub const fn new(target: Duration, interval: Duration) -> Self {
        Codel { target, interval }
    }
}

impl Default for Codel {
    fn default() -> Self {
        Codel::new(Duration::from_millis(5), Duration::from_millis(100))
    }
}

/// A queued caller waits for a slot.
const WAITING: u8 = 0;
/// A queued caller was given a slot, which it owns.
const GRANTED: u8 = 1;
/// A queued caller was turned away by controlled delay: it waited past the target in a standing
/// queue.
const LATE: u8 = 2;
/// A queued caller left (gave up, or went away): its node stays in the queue as a tombstone until
/// a hand-out or a compaction reaches it, so that leaving costs O(1).
const LEFT: u8 = 3;

/// One queued caller.
struct Node {
    /// `WAITING`, then one of the others; changed only under the queue's lock.
    state: AtomicU8,
    /// When the caller joined the queue.
    joined: Instant,
    waker: Mutex<Option<Waker>>,
}

impl Node {
    fn wake(&self) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Stripes of the free-slot count. Each thread takes from and gives back to its own stripe while it
/// has slots, so threads do not contend for one counter; a thread whose stripe is empty looks in
/// the others.
const STRIPES: usize = 8;

/// How many queued callers [`Inner::dispatch`] gives slots to under one hold of the queue's lock,
/// before it lets go of it to wake them: a fixed array, so handing out allocates nothing.
const HAND_OUT: usize = 4;

pub(crate) struct Inner {
    /// Free slots, in stripes. Never below zero but for a moment (a failed take is undone).
    free: [Padded<AtomicI64>; STRIPES],
    /// Slots owed after the limit was lowered below the calls running: returned slots pay it off
    /// before they can be taken again.
    debt: AtomicI64,
    /// Callers in the queue. New callers skip the queue only when it is empty.
    waiting: Padded<AtomicU64>,
    limit: AtomicU64,
    queue: Mutex<Queue>,
    pub(crate) max_queue: usize,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) order: Order,
    pub(crate) codel: Option<Codel>,
}

/// The queued callers, and since when the queue has not been empty: kept under the queue's lock,
/// so callers who never queue never touch it (nor read the clock for it).
struct Queue {
    /// The callers in the order they joined, with tombstones of some who left (`LEFT`) among
    /// them. Compaction runs as callers leave, so the deque holds at most about twice the
    /// queue's bound (`2 * max_queue` plus a few), not always twice its current length.
    nodes: VecDeque<Arc<Node>>,
    /// How many of `nodes` wait (`WAITING`): the queue's length.
    live: usize,
    /// When the queue last went from empty to not empty; meaningless while it is empty. It does
    /// not change while a caller waits, since the queue is not empty meanwhile.
    busy_since: Instant,
}

/// Tombstones tolerated in the queue beyond as many as there are waiting callers.
const TOMBSTONES: usize = 16;

impl Queue {
    /// Whether the queue has not been empty at any moment of the `interval` before `now`.
    fn overloaded(&self, now: Instant, interval: Duration) -> bool {
        self.live > 0 && now.saturating_duration_since(self.busy_since) > interval
    }

    /// The next waiting caller, from the back (`lifo`) or the front, dropping the tombstones
    /// before it. Needs `live > 0`.
    fn pop(&mut self, lifo: bool) -> Arc<Node> {
        loop {
            let node = if lifo {
                self.nodes.pop_back()
            } else {
                self.nodes.pop_front()
            }
            .expect("a caller waits");
            if node.state.load(SeqCst) == WAITING {
                return node;
            }
        }
    }

    /// Puts back a caller taken by [`pop`](Queue::pop), where it was.
    fn unpop(&mut self, node: Arc<Node>, lifo: bool) {
        if lifo {
            self.nodes.push_back(node);
        } else {
            self.nodes.push_front(node);
        }
    }

    /// A waiting caller is served, turned away or gone: `state` says which.
    fn settle(&mut self, node: &Node, state: u8) {
        node.state.store(state, SeqCst);
        self.live -= 1;
        if self.live == 0 {
            // Only tombstones are left.
            self.nodes.clear();
        }
    }

    /// Drops the tombstones once they outnumber the waiting callers (and a few more): each
    /// compaction costs as many steps as the tombstones it drops, which keeps leaving O(1)
    /// amortised; hand-outs lower the length without compacting, so memory stays within about
    /// twice the queue's bound rather than twice its current length.
    fn compact(&mut self) {
        if self.nodes.len() > 2 * self.live + TOMBSTONES {
            self.nodes.retain(|node| node.state.load(SeqCst) == WAITING);
        }
    }
}

/// How long a caller that joins the queue at `now` may wait under controlled delay: the interval
/// while the queue is young, but no longer than until just after the queue has stood for a whole
/// interval (which it will have if this caller is still in it then), and the target at least.
fn codel_wait(codel: Codel, busy_since: Instant, now: Instant) -> Duration {
    let stands = busy_since
        .checked_add(codel.interval)
        .map_or(Duration::MAX, |at| at.saturating_duration_since(now))
        .saturating_add(Duration::from_nanos(1));
    codel.interval.min(stands.max(codel.target))
}

impl Inner {
    /// The interval of controlled delay and adaptive LIFO.
    fn interval(&self) -> Duration {
        self.codel.unwrap_or_default().interval
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing is left half-done under this lock by a panic.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[inline]
    fn try_take(&self) -> bool {
        let home = thread_index() % STRIPES;
        if self.free[home].fetch_sub(1, SeqCst) > 0 {
            return true;
        }
        self.free[home].fetch_add(1, SeqCst);
        self.take_elsewhere(home)
    }

    /// Looks for a free slot in the stripes of other threads.
    #[inline(never)]
    fn take_elsewhere(&self, home: usize) -> bool {
        (1..STRIPES).any(|i| {
            let stripe = &self.free[(home + i) % STRIPES];
            // Read first, so that empty stripes cost a load, not two writes.
            stripe.load(SeqCst) > 0 && {
                if stripe.fetch_sub(1, SeqCst) > 0 {
                    true
                } else {
                    stripe.fetch_add(1, SeqCst);
                    false
                }
            }
        })
    }

    /// Free slots, over all stripes.
    fn free(&self) -> i64 {
        self.free.iter().map(|stripe| stripe.load(SeqCst)).sum()
    }

    /// A call gave its slot back: to the next queued caller, if any.
    #[inline]
    pub(crate) fn release(&self) {
        if self.debt.load(SeqCst) > 0 {
            if self.debt.fetch_sub(1, SeqCst) > 0 {
                return; // the slot goes away with the lowered limit
            }
            self.debt.fetch_add(1, SeqCst);
        }
        self.free[thread_index() % STRIPES].fetch_add(1, SeqCst);
        // Read after the slot is free: a caller that queued before then is seen here, and one that
        // queues after sees the free slot (both sides write, then read the other's counter).
        if self.waiting.load(SeqCst) > 0 {
            self.dispatch();
        }
    }

    /// Hands free slots to queued callers, in the queue's order, [`HAND_OUT`] at a time: they are
    /// woken once the lock is let go, since a waker may run anything (a caller that queues in
    /// turn), and the lock is taken again for the next ones. Under controlled delay, callers of a
    /// standing queue that have waited past the target are turned away (and woken) instead of
    /// served.
    fn dispatch(&self) {
        // The clock is read once per dispatch, and only when a caller is queued and adaptive LIFO
        // or controlled delay needs the time (never on the uncontended path, where nobody is).
        let timed = self.codel.is_some() || self.order == Order::Adaptive;
        let mut clock = None;
        let mut lifo = None;
        loop {
            let mut woken: [Option<Arc<Node>>; HAND_OUT] = Default::default();
            let mut count = 0;
            let mut done = false;
            {
                let mut queue = self.queue();
                while count < HAND_OUT {
                    if queue.live == 0 {
                        done = true;
                        break;
                    }
                    let now = timed.then(|| *clock.get_or_insert_with(Instant::now));
                    let lifo = *lifo.get_or_insert_with(|| match (self.order, now) {
                        (Order::Lifo, _) => true,
                        (Order::Adaptive, Some(now)) => queue.overloaded(now, self.interval()),
                        _ => false,
                    });
                    let node = queue.pop(lifo);
                    if let (Some(codel), Some(now)) = (self.codel, now) {
                        if queue.overloaded(now, codel.interval)
                            && now.saturating_duration_since(node.joined) > codel.target
                        {
                            queue.settle(&node, LATE);
                            self.waiting.fetch_sub(1, SeqCst);
                            woken[count] = Some(node);
                            count += 1;
                            continue;
                        }
                    }
                    if !self.try_take() {
                        queue.unpop(node, lifo);
                        done = true;
                        break;
                    }
                    queue.settle(&node, GRANTED);
                    self.waiting.fetch_sub(1, SeqCst);
                    woken[count] = Some(node);
                    count += 1;
                }
            }
            for node in woken.iter().flatten() {
                node.wake();
            }
            if done {
                return;
            }
        }
    }

    /// Takes `node` out of the queue, in O(1): it stays there as a tombstone. Returns whether it
    /// had been given a slot meanwhile, which its caller then owns.
    fn leave(&self, node: &Arc<Node>) -> bool {
        let waker = {
            let mut queue = self.queue();
            match node.state.load(SeqCst) {
                WAITING => {}
                GRANTED => return true,
                _ => return false, // turned away, and counted out, already
            }
            queue.settle(node, LEFT);
            self.waiting.fetch_sub(1, SeqCst);
            queue.compact();
            // A tombstone keeps no waker, so that dropping one later under the lock runs nothing.
            node.waker.lock().unwrap_or_else(|e| e.into_inner()).take()
        };
        drop(waker);
        false
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(SeqCst)
    }

    pub(crate) fn set_limit(&self, limit: u64) {
        let old = self.limit.swap(limit, SeqCst) as i64;
        let limit = limit as i64;
        if limit >= old {
            // New slots first cancel what is owed.
            let mut added = limit - old;
            let _ = self
                .debt
                .fetch_update(SeqCst, SeqCst, |debt| {
                    let paid = debt.min(added).max(0);
                    (paid > 0).then_some(debt - paid)
                })
                .map(|debt| added -= debt.min(added).max(0));
            self.free[0].fetch_add(added, SeqCst);
            self.dispatch();
            return;
        }
        // Take the slots away from the stripes that have them free; what running calls hold is
        // owed, and paid when they end.
        let mut removed = old - limit;
        for stripe in &self.free {
            let _ = stripe
                .fetch_update(SeqCst, SeqCst, |free| {
                    let taken = free.min(removed);
                    (taken > 0).then_some(free - taken)
                })
                .map(|free| removed -= free.min(removed));
            if removed == 0 {
                return;
            }
        }
        self.debt.fetch_add(removed, SeqCst);
    }

    /// Calls holding a slot: the slots there are, and those owed, less those free.
    pub(crate) fn in_flight(&self) -> u64 {
        (self.limit() as i64 + self.debt.load(SeqCst) - self.free()).max(0) as u64
    }

    /// Callers in the queue.
    pub(crate) fn queued(&self) -> u64 {
        self.waiting.load(SeqCst)
    }
}

/// The bulkhead gate.
pub struct Bulkhead {
    pub(crate) inner: Arc<Inner>,
}

impl Bulkhead {
    pub(crate) fn new(
        limit: u64,
        max_queue: usize,
        max_wait: Option<Duration>,
        order: Order,
        codel: Option<Codel>,
    ) -> Self {
        // The slots, spread over the stripes as evenly as they go.
        let share = |stripe: usize| {
            (limit / STRIPES as u64 + u64::from((stripe as u64) < limit % STRIPES as u64)) as i64
        };
        Bulkhead {
            inner: Arc::new(Inner {
                free: std::array::from_fn(|stripe| Padded(AtomicI64::new(share(stripe)))),
                debt: AtomicI64::new(0),
                waiting: Padded(AtomicU64::new(0)),
                limit: AtomicU64::new(limit),
                queue: Mutex::new(Queue {
                    nodes: VecDeque::new(),
                    live: 0,
                    busy_since: Instant::now(),
                }),
                max_queue,
                max_wait,
                order,
                codel,
            }),
        }
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("limit", &self.inner.limit())
            .field("in_flight", &self.inner.in_flight())
            .field("queued", &self.inner.queued())
            .field("max_queue", &self.inner.max_queue)
            .field("max_wait", &self.inner.max_wait)
            .field("order", &self.inner.order)
            .field("codel", &self.inner.codel)
            .finish()
    }
}

/// A service's place in the bulkhead's queue, while it waits for a slot.
#[derive(Default)]
pub struct Waiter {
    queued: Option<Queued>,
}

struct Queued {
    node: Arc<Node>,
    inner: Arc<Inner>,
    /// Until when the caller may wait, if there is a limit.
    until: Option<Instant>,
    /// The timer of a caller that waits in `poll_ready` ([`Bulkhead::poll_slow`]); one that
    /// waits in a boxed response future keeps its own there, and none here.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Waiter {
    /// When the caller joined the queue, if it is in it.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.queued.as_ref().map(|queued| queued.node.joined)
    }

    /// Until when the caller may wait in the queue, if it is in it and there is a limit.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.queued.as_ref().and_then(|queued| queued.until)
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("queued", &self.queued.is_some())
            .finish()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(queued) = self.queued.take() {
            // A slot given while the caller was leaving is given back.
            if queued.inner.leave(&queued.node) {
                queued.inner.release();
            }
        }
    }
}

impl Gate for Bulkhead {
    type Permit = ();
    type Rejection = Full;
    type Waiter = Waiter;

    #[inline]
    fn poll_acquire<O: Observer>(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        _emit: Emitter<'_, O>,
    ) -> Poll<Result<(), Full>> {
        if waiter.queued.is_none() && self.try_admit() {
            return Poll::Ready(Ok(()));
        }
        self.poll_slow(cx, waiter)
    }

    #[inline]
    fn complete<O: Observer>(&self, _: (), _: &Record, _: Emitter<'_, O>) {
        self.inner.release();
    }

    #[inline]
    fn cancel<O: Observer>(&self, _: (), _: Emitter<'_, O>) {
        self.inner.release();
    }

    #[inline]
    fn wants_latency(&self) -> bool {
        false
    }

    fn reject_reason(rejection: &Full) -> RejectReason {
        rejection.reason()
    }
}

impl Bulkhead {
    /// Takes a free slot if nobody queues for one: the lock-free admission, with no clock read.
    #[inline]
    pub(crate) fn try_admit(&self) -> bool {
        let inner = &*self.inner;
        inner.waiting.load(SeqCst) == 0 && inner.try_take()
    }

    /// Every way of acquiring but the lock-free one: joining the queue, waiting in it, leaving it.
    #[inline(never)]
    fn poll_slow(&self, cx: &mut Context<'_>, waiter: &mut Waiter) -> Poll<Result<(), Full>> {
        if waiter.queued.is_none() {
            if let Some(decided) = self.join(waiter, Some(cx.waker()), None) {
                return Poll::Ready(decided);
            }
            if let Some(queued) = &mut waiter.queued {
                queued.timer = queued
                    .until
                    .map(|until| Box::pin(tokio::time::sleep_until(until)));
            }
        }
        let expired = match waiter.queued.as_mut().and_then(|q| q.timer.as_mut()) {
            Some(timer) => timer.as_mut().poll(cx).is_ready(),
            None => false,
        };
        self.poll_queued(cx, waiter, expired)
    }

    /// Joins the queue, keeping the place in `waiter` (with `waker`, if one is known yet), and
    /// returns `None`; or decides at once: a slot freed meanwhile (`Ok`), no queue or a full one
    /// (`Err`). The caller may wait as long as controlled delay and `max_wait` allow, and never
    /// past `deadline`: until [`Waiter::until`], which the caller times.
    pub(crate) fn join(
        &self,
        waiter: &mut Waiter,
        waker: Option<&Waker>,
        deadline: Option<Instant>,
    ) -> Option<Result<(), Full>> {
        let inner = &self.inner;
        if inner.max_queue == 0 {
            return Some(Err(Full::new(RejectReason::BulkheadFull, Duration::ZERO)));
        }
        let mut queue = inner.queue();
        // Counted first, then the slots read: see `release`. A slot is taken only if nobody is
        // queued: one free while callers are (freed, and being handed out) is theirs, in the
        // queue's order; whoever freed it dispatches it once this lock is let go.
        inner.waiting.fetch_add(1, SeqCst);
        if queue.live == 0 && inner.try_take() {
            inner.waiting.fetch_sub(1, SeqCst);
            return Some(Ok(()));
        }
        if queue.live >= inner.max_queue {
            inner.waiting.fetch_sub(1, SeqCst);
            drop(queue);
            // Turned away, this caller may have been the one whose lock-free take hid a freed
            // slot from its dispatch (see below): it looks once more, for the callers queued.
            if inner.free() > 0 {
                inner.dispatch();
            }
            return Some(Err(Full::new(RejectReason::QueueFull, Duration::ZERO)));
        }
        let now = Instant::now();
        if queue.live == 0 {
            queue.busy_since = now;
        }
        // Controlled delay: the interval while the queue has been empty within it, the target
        // once it stands (see `codel_wait`); `max_wait` caps either.
        let codel = inner
            .codel
            .map(|codel| codel_wait(codel, queue.busy_since, now));
        let wait = match (codel, inner.max_wait) {
            (Some(codel), Some(max)) => Some(codel.min(max)),
            (codel, max) => codel.or(max),
        };
        let until = wait.map(|wait| crate::core::Deadline::after_from(now, wait).instant());
        // A request's deadline caps the wait too.
        let until = match (until, deadline) {
            (Some(until), Some(deadline)) => Some(until.min(deadline)),
            (until, deadline) => until.or(deadline),
        };
        let node = Arc::new(Node {
            state: AtomicU8::new(WAITING),
            joined: now,
            waker: Mutex::new(waker.cloned()),
        });
        queue.nodes.push_back(node.clone());
        queue.live += 1;
        drop(queue);
        waiter.queued = Some(Queued {
            node,
            inner: inner.clone(),
            until,
            timer: None,
        });
        // A slot freed while another caller's lock-free take (`try_admit`) had it off its stripe
        // for a moment was not found by the dispatch that followed its release; that caller then
        // queued here, behind others, without looking for it. Whoever queues looks once more, so
        // that no slot stays free while callers wait.
        if inner.free() > 0 {
            inner.dispatch();
        }
        None
    }

    /// Waits in the queue `waiter` joined: `Ok` once a slot was given to it (the caller owns it
    /// then), `Err` once it has waited as long as it may (`expired`: its timer, polled with `cx`,
    /// has fired).
    pub(crate) fn poll_queued(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        expired: bool,
    ) -> Poll<Result<(), Full>> {
        if let Some(settled) = Self::settled(waiter) {
            return Poll::Ready(settled);
        }
        let queued = waiter.queued.as_mut().expect("queued");
        *queued.node.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if expired {
            let queued = waiter.queued.take().expect("queued");
            if queued.inner.leave(&queued.node) {
                return Poll::Ready(Ok(()));
            }
            let waited = queued.node.joined.elapsed();
            return Poll::Ready(Err(Full::new(RejectReason::QueueTimeout, waited)));
        }
        // Served or turned away while the waker was being set: the wake may have found the old
        // one.
        match Self::settled(waiter) {
            Some(settled) => Poll::Ready(settled),
            None => Poll::Pending,
        }
    }

    /// Whether the queue has decided for `waiter`: given a slot (`Ok`, which the caller owns
    /// then), or turned away by controlled delay (`Err`); it leaves the queue then.
    fn settled(waiter: &mut Waiter) -> Option<Result<(), Full>> {
        let queued = waiter.queued.as_ref().expect("queued");
        let settled = match queued.node.state.load(SeqCst) {
            GRANTED => Ok(()),
            LATE => Err(Full::new(
                RejectReason::QueueTimeout,
                queued.node.joined.elapsed(),
            )),
            _ => return None,
        };
        waiter.queued = None;
        Some(settled)
    }

    /// Gives back a slot taken by [`try_admit`](Self::try_admit) or given by the queue.
    pub(crate) fn release(&self) {
        self.inner.release();
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;

    /// Callers leaving in any order leave tombstones, never more than the bound allows, and the
    /// queue's length stays exact: leaving never scans the queue, and its memory stays within
    /// about twice its length.
    #[tokio::test(start_paused = true)]
    async fn tombstones_stay_bounded_and_the_length_exact() {
        let bulkhead = Bulkhead::new(1, 1000, None, Order::Fifo, None);
        assert!(bulkhead.try_admit());
        let mut waiters: Vec<Waiter> = (0..1000).map(|_| Waiter::default()).collect();
        for waiter in &mut waiters {
            assert!(bulkhead.join(waiter, None, None).is_none());
        }
        // Leave from the middle outwards, so that no hand-out pops the tombstones.
        let mut left = 0;
        while waiters.len() > 1 {
            drop(waiters.remove(waiters.len() / 2));
            left += 1;
            let queue = bulkhead.inner.queue();
            assert_eq!(queue.live, 1000 - left);
            assert_eq!(bulkhead.inner.queued(), 1000 - left as u64);
            assert!(queue.nodes.len() <= 2 * queue.live + TOMBSTONES);
        }
        bulkhead.release();
        let mut cx = Context::from_waker(Waker::noop());
        let served = bulkhead.poll_queued(&mut cx, &mut waiters[0], false);
        assert_eq!(served, Poll::Ready(Ok(())));
        assert_eq!(bulkhead.inner.queue().nodes.len(), 0);
    }

    /// A caller turned away by a full queue may have been the one whose lock-free take hid a
    /// freed slot from the release's hand-out: it looks for the slot before it leaves, so the
    /// caller queued gets it instead of waiting for a release that will never come.
    #[tokio::test(start_paused = true)]
    async fn a_caller_turned_away_by_a_full_queue_hands_out_a_slot_it_hid() {
        let bulkhead = Bulkhead::new(1, 1, None, Order::Fifo, None);
        let home = thread_index() % STRIPES;
        assert!(bulkhead.try_admit());
        // Another caller's lock-free take, half done: the slot off this stripe for a moment.
        bulkhead.inner.free[home].fetch_sub(1, SeqCst);
        let mut queued = Waiter::default();
        assert!(bulkhead.join(&mut queued, None, None).is_none());
        // The holder's release lands on the stripe the take emptied: its hand-out finds no slot.
        bulkhead.release();
        // The take undone: the slot is free again, and that caller finds the queue full.
        bulkhead.inner.free[home].fetch_add(1, SeqCst);
        let mut turned_away = Waiter::default();
        assert!(matches!(
            bulkhead.join(&mut turned_away, None, None),
            Some(Err(_))
        ));
        let mut cx = Context::from_waker(Waker::noop());
        let served = bulkhead.poll_queued(&mut cx, &mut queued, false);
        assert_eq!(served, Poll::Ready(Ok(())));
        assert_eq!(bulkhead.inner.queued(), 0);
    }
}
