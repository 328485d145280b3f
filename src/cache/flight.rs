//! Single-flight: concurrent misses for one key make one inner call.
//!
//! A table, cut into locked shards, maps each key being computed to its [`Flight`]. The first
//! miss leads (makes the call); later ones join as waiters and get a clone of the outcome. A
//! leader dropped before it finishes hands the flight back: the first waiter to be polled leads
//! instead, with its own request. Only misses come here: hits never lock.

use super::error::Shared;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tower::BoxError;

const SHARDS: usize = 16;

/// Locks, shrugging off poisoning: every critical section here leaves the state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One locked part of the table of flights.
type Table<K, V> = Mutex<HashMap<K, Arc<Flight<V>>>>;

/// The flights in progress, by key.
pub(crate) struct Flights<K, V> {
    shards: Box<[Table<K, V>]>,
    hasher: RandomState,
}

pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
}

struct State<V> {
    outcome: Option<Result<V, Shared>>,
    /// Whether a leader is making the call.
    led: bool,
    /// One place per waiter that joined: its waker, once it waits.
    wakers: Vec<Option<Waker>>,
    /// How many waiters are still there.
    waiting: usize,
}

/// What a miss became.
pub(crate) enum Joined<K: Hash + Eq + Clone, V: Clone> {
    /// Make the call, and finish the flight with its outcome.
    Lead(Leader<K, V>),
    /// Wait for the leader's outcome.
    Wait(Waiter<K, V>),
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    pub(crate) fn new() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Table<K, V> {
        let hash = self.hasher.hash_one(key) as usize;
        &self.shards[hash % self.shards.len()]
    }

    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join(self: &Arc<Self>, key: &K) -> Joined<K, V> {
        let mut table = lock(self.shard(key));
        if let Some(flight) = table.get(key) {
            let mut state = lock(&flight.state);
            if state.led {
                state.wakers.push(None);
                state.waiting += 1;
                let index = state.wakers.len() - 1;
                drop(state);
                return Joined::Wait(Waiter {
                    flights: self.clone(),
                    key: key.clone(),
                    flight: flight.clone(),
                    index,
                    done: false,
                });
            }
            // Its leader left: lead it.
            state.led = true;
            drop(state);
            return Joined::Lead(Leader {
                flights: self.clone(),
                key: key.clone(),
                flight: flight.clone(),
                done: false,
            });
        }
        Joined::Lead(self.start(&mut table, key))
    }

    /// How many keys have a flight in progress: locks each shard in turn.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Starts a flight for `key` unless one is in progress: for background refreshes, one per key.
    pub(crate) fn lead(self: &Arc<Self>, key: &K) -> Option<Leader<K, V>> {
        let mut table = lock(self.shard(key));
        if table.contains_key(key) {
            return None;
        }
        Some(self.start(&mut table, key))
    }

    fn start(self: &Arc<Self>, table: &mut HashMap<K, Arc<Flight<V>>>, key: &K) -> Leader<K, V> {
        let flight = Arc::new(Flight {
            state: Mutex::new(State {
                outcome: None,
                led: true,
                wakers: Vec::new(),
                waiting: 0,
            }),
        });
        table.insert(key.clone(), flight.clone());
        Leader {
            flights: self.clone(),
            key: key.clone(),
            flight,
            done: false,
        }
    }

    /// Removes `key`'s flight if it is `flight`.
    fn unlist(table: &mut HashMap<K, Arc<Flight<V>>>, key: &K, flight: &Arc<Flight<V>>) {
        if table.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            table.remove(key);
        }
    }
}

/// The caller making a flight's call. Dropped before [`finish`](Self::finish), it hands the
/// flight to a waiter, or ends it if none is left.
pub(crate) struct Leader<K: Hash + Eq + Clone, V: Clone> {
    flights: Arc<Flights<K, V>>,
    key: K,
    flight: Arc<Flight<V>>,
    done: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> Leader<K, V> {
    /// Ends the flight with `outcome` (the cache already holds what it will store of it), and
    /// returns what the leader answers: the outcome itself, or, if someone waited on a failure,
    /// the failure shared with them. Returns how many waited, too.
    pub(crate) fn finish(mut self, outcome: Result<V, BoxError>) -> (Result<V, BoxError>, usize) {
        self.done = true;
        let mut table = lock(self.flights.shard(&self.key));
        Flights::unlist(&mut table, &self.key, &self.flight);
        let mut state = lock(&self.flight.state);
        drop(table);
        let waiting = state.waiting;
        let answer = if waiting == 0 {
            outcome
        } else {
            match outcome {
                Ok(value) => {
                    state.outcome = Some(Ok(value.clone()));
                    Ok(value)
                }
                Err(error) => {
                    let shared = Shared::new(error);
                    state.outcome = Some(Err(shared.clone()));
                    Err(shared.into())
                }
            }
        };
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wakers.into_iter().flatten().for_each(Waker::wake);
        (answer, waiting)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Leader<K, V> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut table = lock(self.flights.shard(&self.key));
        let mut state = lock(&self.flight.state);
        state.led = false;
        if state.waiting == 0 {
            Flights::unlist(&mut table, &self.key, &self.flight);
            return;
        }
        drop(table);
        // Wake them all: the first polled leads, the others wait again. Cancellation is rare.
        let wakers: Vec<_> = state.wakers.iter_mut().filter_map(Option::take).collect();
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A caller waiting for a flight's outcome.
pub(crate) struct Waiter<K: Hash + Eq + Clone, V: Clone> {
    flights: Arc<Flights<K, V>>,
    key: K,
    flight: Arc<Flight<V>>,
    index: usize,
    done: bool,
}

/// What a waiter found.
pub(crate) enum Waited<K: Hash + Eq + Clone, V: Clone> {
    /// The leader's outcome.
    Outcome(Result<V, Shared>),
    /// The leader left: this caller leads now.
    Lead(Leader<K, V>),
}

impl<K: Hash + Eq + Clone, V: Clone> Waiter<K, V> {
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Waited<K, V>> {
        let mut state = lock(&self.flight.state);
        if let Some(outcome) = &state.outcome {
            let outcome = outcome.clone();
            state.waiting -= 1;
            self.done = true;
            return Poll::Ready(Waited::Outcome(outcome));
        }
        if !state.led {
            state.led = true;
            state.waiting -= 1;
            self.done = true;
            drop(state);
            return Poll::Ready(Waited::Lead(Leader {
                flights: self.flights.clone(),
                key: self.key.clone(),
                flight: self.flight.clone(),
                done: false,
            }));
        }
        match &mut state.wakers[self.index] {
            Some(waker) => waker.clone_from(cx.waker()),
            place => *place = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Waiter<K, V> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut table = lock(self.flights.shard(&self.key));
        let mut state = lock(&self.flight.state);
        state.waiting -= 1;
        if let Some(place) = state.wakers.get_mut(self.index) {
            *place = None;
        }
        if !state.led && state.waiting == 0 && state.outcome.is_none() {
            Flights::unlist(&mut table, &self.key, &self.flight);
        }
    }
}
