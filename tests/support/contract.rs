//! The contract every capacity-holding layer passes: what `poll_ready` reserves is held by exactly one
//! service, moves into the response future, and is given back on completion, error or drop.

use std::future::Future;
use std::task::Poll;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{BoxError, Service};
use tower_test::mock;

/// A layer under contract test, over a `tower_test` mock whose calls the test answers.
pub trait Subject: Sized {
    type Service: Service<u32, Response = u32, Error = BoxError> + Clone;

    /// A subject whose capacity is all free, ready to be reserved.
    fn prepare() -> impl Future<Output = Self>;
    /// A new service over the subject's shared state.
    fn service(&self) -> Self::Service;
    /// The mock's handle, to answer calls.
    fn mock(&mut self) -> &mut mock::Handle<u32, u32>;
    /// How much capacity there is.
    fn capacity(&self) -> usize;
    /// How much capacity the layer says is held now.
    fn held(&self) -> usize;
    /// Whether a service over a full layer is ready at once and fails its call (a breaker), rather
    /// than waiting for capacity (a bulkhead).
    fn rejects_when_full(&self) -> bool;
    /// Whether an error returned from the call is a rejection by the layer.
    fn is_rejection(&self, error: &BoxError) -> bool;
}

fn poll_ready<S: Service<u32>>(
    t: &mut task::Spawn<()>,
    service: &mut S,
) -> Poll<Result<(), S::Error>> {
    t.enter(|cx, _| service.poll_ready(cx))
}

/// Runs every clause of the contract, each on a freshly prepared subject.
pub async fn check<T: Subject>() {
    reserve_without_call::<T>().await;
    clones_do_not_share::<T>().await;
    dropped_service_frees::<T>().await;
    completion_and_error_free::<T>().await;
    dropped_future_frees::<T>().await;
    many_waiters::<T>().await;
    clone_in_call::<T>().await;
}

async fn reserve_without_call<T: Subject>() {
    let t = T::prepare().await;
    let mut task = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut task, &mut a)).unwrap();
    assert_eq!(t.held(), 1, "poll_ready reserves");
    assert_ready!(poll_ready(&mut task, &mut a)).unwrap();
    assert_eq!(t.held(), 1, "a second poll_ready reserves nothing more");
}

async fn clones_do_not_share<T: Subject>() {
    let t = T::prepare().await;
    let mut task = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut task, &mut a)).unwrap();
    let mut b = a.clone();
    assert_eq!(t.held(), 1, "a clone does not copy the reservation");
    assert_ready!(poll_ready(&mut task, &mut b)).unwrap();
    assert_eq!(t.held(), 2, "a clone reserves its own");
    drop(b);
    assert_eq!(t.held(), 1);
    drop(a);
    assert_eq!(t.held(), 0);
}

async fn dropped_service_frees<T: Subject>() {
    let t = T::prepare().await;
    let mut task = task::spawn(());
    let mut services: Vec<_> = (0..t.capacity()).map(|_| t.service()).collect();
    for s in &mut services {
        assert_ready!(poll_ready(&mut task, s)).unwrap();
    }
    assert_eq!(t.held(), t.capacity());
    services.clear();
    assert_eq!(t.held(), 0, "dropping reserved services frees everything");
    let mut again = t.service();
    assert_ready!(poll_ready(&mut task, &mut again)).unwrap();
    assert_eq!(t.held(), 1, "freed capacity can be reserved again");
}

async fn completion_and_error_free<T: Subject>() {
    let mut t = T::prepare().await;
    let mut task = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut task, &mut a)).unwrap();
    let mut ok = task::spawn(a.call(1));
    assert_eq!(t.held(), 1, "the reservation moved into the future");
    assert_ready!(poll_ready(&mut task, &mut a)).unwrap();
    let mut failed = task::spawn(a.call(2));
    assert_eq!(t.held(), 2);
    assert_pending!(ok.poll());
    assert_pending!(failed.poll());
    let (_, answer) = t
        .mock()
        .next_request()
        .await
        .expect("first call reaches the mock");
    answer.send_response(1);
    let (_, answer) = t
        .mock()
        .next_request()
        .await
        .expect("second call reaches the mock");
    answer.send_error(super::Fail);
    assert_eq!(assert_ready!(ok.poll()).unwrap(), 1);
    assert!(assert_ready!(failed.poll())
        .unwrap_err()
        .is::<super::Fail>());
    assert_eq!(t.held(), 0, "completion and error both free");
}

async fn dropped_future_frees<T: Subject>() {
    let t = T::prepare().await;
    let mut task = task::spawn(());
    let mut services: Vec<_> = (0..t.capacity()).map(|_| t.service()).collect();
    let mut futures = Vec::new();
    for s in &mut services {
        assert_ready!(poll_ready(&mut task, s)).unwrap();
        futures.push(task::spawn(s.call(0)));
    }
    assert_eq!(t.held(), t.capacity());
    futures.truncate(1);
    assert_eq!(t.held(), 1, "dropping futures frees what they held");
    drop(futures);
    assert_eq!(t.held(), 0);
    let mut again = t.service();
    assert_ready!(poll_ready(&mut task, &mut again)).unwrap();
    assert_eq!(
        t.held(),
        1,
        "capacity given back by dropped futures is reusable"
    );
}

async fn many_waiters<T: Subject>() {
    let t = T::prepare().await;
    let mut holders: Vec<_> = (0..t.capacity()).map(|_| t.service()).collect();
    let mut task = task::spawn(());
    for s in &mut holders {
        assert_ready!(poll_ready(&mut task, s)).unwrap();
    }
    let mut waiters: Vec<_> = (0..8).map(|_| (task::spawn(()), t.service())).collect();
    for (wt, w) in &mut waiters {
        let ready = poll_ready(wt, w);
        if t.rejects_when_full() {
            assert!(
                matches!(ready, Poll::Ready(Ok(()))),
                "a full gate rejects in the future"
            );
            let err = task::spawn(w.call(0)).poll();
            let err = assert_ready!(err).unwrap_err();
            assert!(
                t.is_rejection(&err),
                "rejected with the layer's error, got {err}"
            );
        } else {
            assert!(ready.is_pending(), "a full gate makes waiters wait");
        }
    }
    assert_eq!(t.held(), t.capacity(), "waiters hold nothing");
    holders.clear();
    if t.rejects_when_full() {
        assert_eq!(t.held(), 0);
        // Freed capacity is usable by the former waiters.
        let (wt, w) = &mut waiters[0];
        assert_ready!(poll_ready(wt, w)).unwrap();
        assert_eq!(t.held(), 1);
        return;
    }
    // A queue hands each freed slot straight to a waiter, and wakes exactly those.
    let served = t.capacity().min(waiters.len());
    assert_eq!(t.held(), served, "freed slots go to waiters");
    let woken = waiters.iter().filter(|(wt, _)| wt.is_woken()).count();
    assert_eq!(
        woken, served,
        "freed capacity wakes as many waiters as it serves"
    );
    let (wt, w) = &mut waiters[0];
    assert_ready!(poll_ready(wt, w)).unwrap();
    assert_eq!(t.held(), served);
    drop(waiters);
    assert_eq!(
        t.held(),
        0,
        "dropped waiters give back what they were given, and leave the queue"
    );
}

async fn clone_in_call<T: Subject>() {
    let t = T::prepare().await;
    let mut task = task::spawn(());
    let mut a = t.service();
    assert_ready!(poll_ready(&mut task, &mut a)).unwrap();
    // The pattern of services that must own their inner service in the future: clone, swap, and
    // call the one that was made ready.
    let clone = a.clone();
    let mut ready = std::mem::replace(&mut a, clone);
    let _future = ready.call(0);
    assert_eq!(
        t.held(),
        1,
        "the ready service's reservation moved into its future"
    );
    let unready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(a.call(0));
    }));
    assert!(
        unready.is_err(),
        "calling the clone without poll_ready panics"
    );
}
