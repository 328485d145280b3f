//! The tower contract every layer keeps, as one generic harness: what `poll_ready` reserves is
//! held by exactly one service, moves into the response future and comes back on completion, error
//! or drop; a repeated `poll_ready` answers for the state now; a waiting `poll_ready` is woken when
//! it can proceed; a panicking observer leaves nothing held; and the layer is idle after every case.

use futures::future::{maybe_done, MaybeDone};
use seawall::bulkhead::Handle as BulkheadHandle;
use seawall::core::{Event, EventKind, Observer};
use seawall::error::ErrorKind;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{BoxError, Service};
use tower_test::mock;

/// What a layer does with a call it cannot take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Ready at once; the call fails with the layer's rejection (a breaker, a rate limit).
    Rejects,
    /// `poll_ready` waits (a bulkhead with a queue, a layer passing on its inner readiness).
    Waits,
}

/// A layer under contract test, over a `tower_test` mock whose calls the test answers.
pub trait Subject: Sized {
    /// The layer's service over the mock (erased where the type is long).
    type Service: Service<u32, Response = u32, Error = BoxError> + Clone;

    /// A subject whose capacity is all free, whose events (if it sends any) go to `probe`.
    fn prepare(probe: Probe) -> impl Future<Output = Self>;
    /// A new service over the subject's shared state.
    fn service(&self) -> Self::Service;
    /// The mock's handle, to answer calls.
    fn mock(&mut self) -> &mut mock::Handle<u32, u32>;
    /// How many calls the layer admits at once, if it limits them.
    fn capacity(&self) -> Option<usize> {
        None
    }
    /// What the layer holds now: slots and probes in use, places in its queue. Zero when idle.
    fn held(&self) -> usize {
        0
    }
    /// Makes the layer unable to take a call now, and says what it then does; `None` if the test
    /// cannot make it so.
    fn block(&mut self) -> impl Future<Output = Option<Blocked>>;
    /// Undoes [`block`](Self::block).
    fn unblock(&mut self) -> impl Future<Output = ()>;
    /// Whether the observer given to [`prepare`](Self::prepare) receives the layer's events.
    fn observed(&self) -> bool {
        true
    }
    /// For a layer whose calls wait in their response future for capacity that comes by itself,
    /// in batches (a fleet limiter's leases): how many calls the first batch lets through.
    fn batch(&self) -> Option<usize> {
        None
    }
    /// Whether [`block`](Self::block) works while a service holds what its `poll_ready`
    /// reserved, and if so whether that reservation then stops answering for the layer's state
    /// (`true`: a breaker forced open; a limiter deciding in `call`, which reserves nothing of its
    /// own) or stays good (`false`: a rate limit slot taken). `None`: the test cannot tell.
    fn blocking_revokes_a_held_permit(&self) -> Option<bool> {
        None
    }
    /// A new service of the layer over a bulkhead of one slot (no queue) over the mock, and the
    /// bulkhead's handle; `None` where the subject does not build one.
    fn over_a_bulkhead_of_one(&self) -> Option<(Self::Service, BulkheadHandle)> {
        None
    }
}

/// An observer that records every event, and panics at the events of one kind when told to.
#[derive(Clone, Default)]
pub struct Probe(Arc<ProbeState>);

#[derive(Default)]
struct ProbeState {
    panic_at: Mutex<Option<&'static str>>,
    events: Mutex<Vec<EventKind>>,
}

/// The kinds of event a layer may send, by name.
pub const KINDS: [&str; 21] = [
    "Permitted",
    "LimitChanged",
    "KeyEvicted",
    "StoreHealth",
    "Rejected",
    "Finished",
    "Cancelled",
    "StateTransition",
    "TimedOut",
    "AttemptStarted",
    "AttemptFinished",
    "RetryScheduled",
    "GaveUp",
    "HedgeSent",
    "HedgeWon",
    "HedgeBudgetExhausted",
    "FallbackUsed",
    "CacheHit",
    "CacheMiss",
    "CacheRefresh",
    "CacheEvicted",
];

fn name(kind: &EventKind) -> String {
    let debug = format!("{kind:?}");
    debug
        .split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Probe {
    fn panic_at(&self, kind: Option<&'static str>) {
        *self.0.panic_at.lock().unwrap_or_else(|e| e.into_inner()) = kind;
    }

    /// The names of the events seen so far.
    pub fn seen(&self) -> Vec<String> {
        let events = self.0.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().map(name).collect()
    }
}

impl Observer for Probe {
    fn on_event(&self, event: &Event<'_>) {
        let kind = name(&event.kind);
        self.0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.kind);
        let panic_at = *self.0.panic_at.lock().unwrap_or_else(|e| e.into_inner());
        if panic_at == Some(kind.as_str()) {
            panic!("the observer panics at {kind}");
        }
    }
}

fn poll_ready<S: Service<u32>>(
    t: &mut task::Spawn<()>,
    service: &mut S,
) -> Poll<Result<(), S::Error>> {
    t.enter(|cx, _| service.poll_ready(cx))
}

async fn fresh<T: Subject>() -> (T, Probe) {
    let probe = Probe::default();
    (T::prepare(probe.clone()).await, probe)
}

/// Lets tasks the layer spawned (none do, today) and timers due now run.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

fn idle<T: Subject>(t: &T, clause: &str) {
    assert_eq!(t.held(), 0, "{clause}: the layer is idle at the end");
}

/// Answers the next call the mock receives with `answer`, and says whether one came.
async fn answer<T: Subject>(t: &mut T, answer: Result<u32, ()>) -> bool {
    settle().await;
    match t.mock().poll_request() {
        Poll::Ready(Some((_, reply))) => {
            match answer {
                Ok(n) => reply.send_response(n),
                Err(()) => reply.send_error(crate::Fail),
            }
            true
        }
        _ => false,
    }
}

/// A call in progress, which the test can poll as often as it likes and take the output of once.
type Call<F> = task::Spawn<MaybeDone<F>>;

fn start<F: Future>(future: F) -> Call<F> {
    task::spawn(maybe_done(future))
}

/// Drives `call` until the service receives a request, and answers it with `reply`; says whether
/// one came.
async fn serve<T: Subject, F: Future>(
    t: &mut T,
    call: &mut Call<F>,
    reply: Result<u32, ()>,
) -> bool {
    for _ in 0..32 {
        let _ = call.poll();
        if answer(t, reply).await {
            let _ = call.poll();
            return true;
        }
    }
    false
}

/// The call's output, if it has finished.
fn output<F: Future>(call: &mut Call<F>) -> Option<F::Output> {
    let _ = call.poll();
    call.enter(|_, future| future.take_output())
}

/// Drops the calls the service has received and not answered.
async fn discard<T: Subject>(t: &mut T) {
    settle().await;
    while let Poll::Ready(Some(_)) = t.mock().poll_request() {}
}

fn no_request<T: Subject>(t: &mut T) -> bool {
    t.mock().poll_request().is_pending()
}

/// Runs every clause of the contract, each on a freshly prepared subject.
pub async fn check<T: Subject>() {
    repeated_poll_ready::<T>().await;
    a_blocked_answer_is_asked_again::<T>().await;
    a_free_answer_is_asked_again::<T>().await;
    sequential_calls_over_a_slot_held_beneath::<T>().await;
    reservations_without_a_call::<T>().await;
    completion_and_error_free::<T>().await;
    dropped_futures_free::<T>().await;
    waiters_are_woken::<T>().await;
    waiting_calls_are_woken::<T>().await;
    panicking_observers_leak_nothing::<T>().await;
}

async fn repeated_poll_ready<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let mut cx = task::spawn(());
    let mut a = t.service();
    for _ in 0..5 {
        assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    }
    assert!(t.held() <= 1, "polling again reserves nothing more");
    if t.capacity().is_some() {
        assert_eq!(t.held(), 1, "poll_ready reserves");
    }
    let mut call = start(a.call(1));
    assert!(
        serve(&mut t, &mut call, Ok(10)).await,
        "the call reaches the service"
    );
    assert!(no_request(&mut t), "exactly once");
    assert_eq!(output(&mut call).expect("answered").unwrap(), 10);
    drop(a);
    idle(&t, "repeated poll_ready");
}

async fn a_blocked_answer_is_asked_again<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let Some(blocked) = t.block().await else {
        return;
    };
    let mut cx = task::spawn(());
    let mut a = t.service();
    match blocked {
        Blocked::Rejects => assert_ready!(poll_ready(&mut cx, &mut a)).unwrap(),
        Blocked::Waits => assert_pending!(poll_ready(&mut cx, &mut a)),
    }
    t.unblock().await;
    if blocked == Blocked::Waits {
        assert!(
            cx.is_woken(),
            "a waiting poll_ready is woken when it can proceed"
        );
    }
    // Polled again, the service answers for now: its call goes through.
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut call = start(a.call(2));
    assert!(
        serve(&mut t, &mut call, Ok(20)).await,
        "a call made once the layer can take it reaches the service"
    );
    assert_eq!(output(&mut call).expect("answered").unwrap(), 20);
    drop(a);
    idle(&t, "blocked, then asked again");

    // And while still blocked, the call gets the layer's own rejection, not the service.
    if blocked == Blocked::Rejects {
        t.block().await;
        let mut b = t.service();
        assert_ready!(poll_ready(&mut cx, &mut b)).unwrap();
        let mut call = task::spawn(b.call(3));
        assert!(assert_ready!(call.poll()).is_err());
        assert!(
            no_request(&mut t),
            "a rejected call never reaches the service"
        );
        t.unblock().await;
        drop(b);
        idle(&t, "rejected");
    }
}

/// The other direction: a service ready while the layer could take its call, polled again once
/// the layer is blocked, answers for the state now: refused if what it held no longer counts,
/// let through if it still does.
async fn a_free_answer_is_asked_again<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let Some(revokes) = t.blocking_revokes_a_held_permit() else {
        return;
    };
    let mut cx = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let blocked = t.block().await;
    assert!(blocked.is_some(), "the subject can be blocked");
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut call = start(a.call(4));
    if revokes {
        let error = output(&mut call)
            .expect("refused at once")
            .expect_err("the layer is blocked now: the call is refused");
        assert!(
            seawall::error::kind(&*error).is_some(),
            "refused by the layer: {error}"
        );
        assert!(
            no_request(&mut t),
            "a refused call never reaches the service"
        );
    } else {
        assert!(
            serve(&mut t, &mut call, Ok(40)).await,
            "what the service held still counts: its call reaches the service"
        );
        assert_eq!(output(&mut call).expect("answered").unwrap(), 40);
    }
    drop(call);
    drop(a);
    t.unblock().await;
    idle(&t, "free, then asked again once blocked");
}

/// A sequential client (ready, call, await; again) of the layer over a bulkhead of one slot:
/// every call completes, none fails for want of the slot beneath (a call made later, after a
/// wait, is made on the service that reserved it), and between calls nothing is held beneath (a
/// refused call gives back what its readiness reserved).
async fn sequential_calls_over_a_slot_held_beneath<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let Some((mut a, beneath)) = t.over_a_bulkhead_of_one() else {
        return;
    };
    let mut cx = task::spawn(());
    let step = std::time::Duration::from_millis(5);
    let (mut admitted, mut refused) = (0, 0);
    for n in 0..40 {
        // A layer that waits in poll_ready is given the time it waits for.
        let mut polls = 0;
        loop {
            match poll_ready(&mut cx, &mut a) {
                Poll::Ready(ready) => break ready.unwrap(),
                Poll::Pending => {
                    polls += 1;
                    assert!(polls < 1_000, "call {n}: never ready");
                    tokio::time::advance(step).await;
                }
            }
        }
        let mut call = start(a.call(n));
        let mut polls = 0;
        let result = loop {
            if let Some(result) = output(&mut call) {
                break result;
            }
            polls += 1;
            assert!(
                polls < 1_000,
                "call {n} of a sequential client never completes (beneath: {} in flight)",
                beneath.in_flight()
            );
            if !answer(&mut t, Ok(n)).await {
                tokio::time::advance(step).await;
            }
        };
        match result {
            Ok(answer) => {
                assert_eq!(answer, n);
                admitted += 1;
            }
            Err(error) => {
                assert_ne!(
                    seawall::error::kind(&*error),
                    Some(ErrorKind::BulkheadFull),
                    "call {n} refused beneath although nothing else was in flight"
                );
                refused += 1;
            }
        }
        assert_eq!(
            beneath.in_flight(),
            0,
            "after call {n}, nothing is held beneath"
        );
    }
    assert!(admitted > 0, "calls go through ({refused} refused)");
    drop(a);
    assert_eq!(beneath.in_flight(), 0);
    idle(&t, "sequential calls over a slot held beneath");
}

async fn reservations_without_a_call<T: Subject>() {
    let (t, _) = fresh::<T>().await;
    let mut cx = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let held = t.held();
    drop(a);
    assert_eq!(
        t.held(),
        0,
        "a service dropped after poll_ready gives back what it reserved"
    );

    let mut a = t.service();
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut b = a.clone();
    assert_eq!(t.held(), held, "a clone holds no reservation");
    if t.capacity().is_some() {
        // The layer itself refuses a call that no poll_ready prepared (a layer that passes the
        // call on leaves that to the service beneath, here a mock that would panic too).
        let unready = catch_unwind(AssertUnwindSafe(|| drop(b.call(0))));
        assert!(
            unready.is_err(),
            "calling the clone without poll_ready panics"
        );
    }
    drop(b);
    assert_eq!(
        t.held(),
        held,
        "dropping the clone leaves the original's reservation"
    );
    if t.capacity().is_some() {
        let mut c = t.service();
        assert_ready!(poll_ready(&mut cx, &mut c)).unwrap();
        assert_eq!(t.held(), held + 1, "a clone reserves its own");
    }
    drop(a);
    let mut t = t;
    assert!(no_request(&mut t), "no call reached the service");
    idle(&t, "reservations without a call");
}

async fn completion_and_error_free<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let mut cx = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut ok = start(a.call(1));
    assert!(serve(&mut t, &mut ok, Ok(1)).await);
    assert_eq!(output(&mut ok).expect("answered").unwrap(), 1);
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut failed = start(a.call(2));
    // Layers that retry may call again (and fallbacks may answer): every call the service sees
    // fails, and the call ends.
    let mut ended = false;
    for _ in 0..16 {
        if !serve(&mut t, &mut failed, Err(())).await {
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
        }
        if output(&mut failed).is_some() {
            ended = true;
            break;
        }
    }
    assert!(ended, "a failed call ends");
    drop(failed);
    drop(a);
    idle(&t, "completion and error");
}

async fn dropped_futures_free<T: Subject>() {
    let (mut t, probe) = fresh::<T>().await;
    let mut cx = task::spawn(());
    // Before its first poll.
    let mut a = t.service();
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    drop(a.call(0));
    assert_eq!(t.held(), 0, "a future dropped before its first poll frees");
    discard(&mut t).await;
    // While the service works on it.
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut waiting = start(a.call(1));
    for _ in 0..4 {
        assert_pending!(waiting.poll());
        settle().await;
    }
    let reply = match t.mock().poll_request() {
        Poll::Ready(Some((_, reply))) => Some(reply),
        _ => None,
    };
    drop(waiting);
    assert_eq!(t.held(), 0, "a future dropped while waiting frees");
    drop(reply);
    // After it finished: nothing is given back twice, and no cancellation is reported.
    assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
    let mut done = start(a.call(2));
    assert!(serve(&mut t, &mut done, Ok(2)).await);
    assert_eq!(output(&mut done).expect("answered").unwrap(), 2);
    let before = probe.seen();
    drop(done);
    assert_eq!(
        probe.seen(),
        before,
        "dropping a finished future reports nothing"
    );
    drop(a);
    assert_eq!(t.held(), 0);
    // What was given back can be taken again, as many times as there is capacity.
    let mut all: Vec<_> = (0..t.capacity().unwrap_or(1))
        .map(|_| t.service())
        .collect();
    for s in &mut all {
        assert_ready!(poll_ready(&mut cx, s)).unwrap();
    }
    drop(all);
    idle(&t, "dropped futures");
}

async fn waiters_are_woken<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let Some(capacity) = t.capacity() else {
        return;
    };
    let mut cx = task::spawn(());
    let mut holders: Vec<_> = (0..capacity).map(|_| t.service()).collect();
    for s in &mut holders {
        assert_ready!(poll_ready(&mut cx, s)).unwrap();
    }
    let mut waiters: Vec<_> = (0..capacity + 2)
        .map(|_| (task::spawn(()), t.service()))
        .collect();
    let mut waiting = 0;
    for (wt, w) in &mut waiters {
        match poll_ready(wt, w) {
            Poll::Pending => waiting += 1,
            Poll::Ready(ready) => {
                ready.unwrap();
                // A full layer that does not queue: the call fails with its rejection.
                let mut call = task::spawn(w.call(0));
                assert!(assert_ready!(call.poll()).is_err());
            }
        }
    }
    assert_eq!(
        t.held(),
        capacity + waiting,
        "waiters hold a queue place at most, no slot"
    );
    // One slot frees: exactly one waiter may proceed, and only it is woken.
    holders.pop();
    if waiting > 0 {
        let woken = waiters.iter().filter(|(wt, _)| wt.is_woken()).count();
        assert_eq!(woken, 1, "one freed slot wakes one waiter");
        let (wt, w) = waiters
            .iter_mut()
            .find(|(wt, _)| wt.is_woken())
            .expect("a woken waiter");
        assert_ready!(poll_ready(wt, w)).unwrap();
    }
    drop(holders);
    drop(waiters);
    assert!(no_request(&mut t));
    idle(&t, "waiters");
}

/// Calls that wait in their response future (for a lease): the capacity that comes wakes only as
/// many of them as it lets through, and the others go through in later batches.
async fn waiting_calls_are_woken<T: Subject>() {
    let (mut t, _) = fresh::<T>().await;
    let Some(batch) = t.batch() else {
        return;
    };
    let mut cx = task::spawn(());
    let mut calls = Vec::new();
    for n in 0..batch + 2 {
        let mut s = t.service();
        assert_ready!(poll_ready(&mut cx, &mut s)).unwrap();
        let mut call = start(s.call(n as u32));
        assert_pending!(call.poll(), "the call waits for capacity");
        calls.push(call);
    }
    settle().await;
    let woken = calls.iter().filter(|call| call.is_woken()).count();
    assert_eq!(woken, batch, "a batch wakes the waiters it lets through");
    for call in &mut calls {
        assert!(
            serve(&mut t, call, Ok(1)).await,
            "every waiting call goes through in the end"
        );
        assert_eq!(output(call).expect("answered").unwrap(), 1);
    }
    idle(&t, "waiting calls");
}

async fn panicking_observers_leak_nothing<T: Subject>() {
    for kind in KINDS {
        let (mut t, probe) = fresh::<T>().await;
        if !t.observed() {
            return;
        }
        probe.panic_at(Some(kind));
        let mut cx = task::spawn(());
        // Each step may panic where the observer does; whatever it had taken must come back.
        let steps = [Ok(5), Err(())];
        for result in steps {
            let mut a = t.service();
            let ready = catch_unwind(AssertUnwindSafe(|| poll_ready(&mut cx, &mut a)));
            let Ok(Poll::Ready(Ok(()))) = ready else {
                continue;
            };
            let Ok(future) = catch_unwind(AssertUnwindSafe(|| a.call(1))) else {
                continue;
            };
            let mut future = start(future);
            for _ in 0..8 {
                if catch_unwind(AssertUnwindSafe(|| future.poll())).is_err()
                    || answer(&mut t, result).await
                {
                    break;
                }
            }
            let _ = catch_unwind(AssertUnwindSafe(|| future.poll()));
            let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
            let _ = catch_unwind(AssertUnwindSafe(move || drop(a)));
        }
        // A call dropped while waiting.
        let mut a = t.service();
        if let Ok(Poll::Ready(Ok(()))) =
            catch_unwind(AssertUnwindSafe(|| poll_ready(&mut cx, &mut a)))
        {
            if let Ok(future) = catch_unwind(AssertUnwindSafe(|| a.call(7))) {
                let mut future = task::spawn(future);
                let _ = catch_unwind(AssertUnwindSafe(|| future.poll()));
                let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
            }
        }
        let _ = catch_unwind(AssertUnwindSafe(move || drop(a)));
        // Before anything is blocked and time moves on (which would refill a rate limit and
        // hide a slot lost above), nothing is held once the calls have ended.
        for _ in 0..64 {
            if !answer(&mut t, Ok(0)).await {
                break;
            }
        }
        assert_eq!(
            t.held(),
            0,
            "an observer panicking at {kind} leaves nothing held, as soon as the calls end"
        );
        // A panic elsewhere (a handler) unwinding through a reserved service and a call in
        // flight: what they hold comes back, and the layer sends no event while the panic
        // unwinds (an observer panicking again then would abort the process).
        let mut held = t.service();
        let mut calling = t.service();
        let ready = |s: &mut T::Service, cx: &mut task::Spawn<()>| {
            matches!(
                catch_unwind(AssertUnwindSafe(|| poll_ready(cx, s))),
                Ok(Poll::Ready(Ok(())))
            )
        };
        let mut future = None;
        if ready(&mut held, &mut cx) && ready(&mut calling, &mut cx) {
            if let Ok(call) = catch_unwind(AssertUnwindSafe(|| calling.call(3))) {
                let mut call = start(call);
                let _ = catch_unwind(AssertUnwindSafe(|| call.poll()));
                future = Some(call);
            }
        }
        let unwound = catch_unwind(AssertUnwindSafe(move || {
            let _in_scope = (held, calling, future);
            panic!("a handler fails");
        }));
        assert!(unwound.is_err());
        // A rejection, where the layer can be made to reject. (Blocking by hand, through a
        // handle, reports too: the observer stays quiet for that.)
        probe.panic_at(None);
        let blocked = t.block().await;
        probe.panic_at(Some(kind));
        if blocked == Some(Blocked::Rejects) {
            let mut a = t.service();
            if let Ok(Poll::Ready(Ok(()))) =
                catch_unwind(AssertUnwindSafe(|| poll_ready(&mut cx, &mut a)))
            {
                if let Ok(future) = catch_unwind(AssertUnwindSafe(|| a.call(8))) {
                    let mut future = task::spawn(future);
                    let _ = catch_unwind(AssertUnwindSafe(|| future.poll()));
                }
            }
            let _ = catch_unwind(AssertUnwindSafe(move || drop(a)));
        }
        probe.panic_at(None);
        t.unblock().await;
        // Drain what reached the service, then the layer must be idle and still work.
        for _ in 0..64 {
            if !answer(&mut t, Ok(0)).await {
                break;
            }
        }
        assert_eq!(
            t.held(),
            0,
            "an observer panicking at {kind} leaves nothing held"
        );
        let mut a = t.service();
        assert_ready!(poll_ready(&mut cx, &mut a)).unwrap();
        let mut call = start(a.call(9));
        assert!(
            serve(&mut t, &mut call, Ok(9)).await,
            "after an observer panicked at {kind}, calls still go through"
        );
        assert_eq!(output(&mut call).expect("answered").unwrap(), 9);
        drop(a);
        idle(&t, kind);
    }
}
