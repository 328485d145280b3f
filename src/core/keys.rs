//! A table of per-key state of fixed size: a key's hash finds its slot among two buckets, with
//! no lock and no allocation; a new key takes an empty slot, or the slot of a key its owner ranks
//! as least worth keeping. The keyed rate limiter, the fleet limiter and the keyed circuit breaker
//! keep their keys in it.

// The rate limiters use all of it; the keyed breaker alone does not.
#![cfg_attr(not(feature = "limit"), allow(dead_code))]

use crate::core::{Emitter, EventKind, Observer};
use crate::sync::Mutex;
use crate::sync::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use foldhash::quality::SeedableRandomState;
use foldhash::SharedSeed;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

/// The slots of one bucket: two cache lines.
const BUCKET: usize = 8;
/// How many locks serialise the insertion of new keys (never taken for a key already there).
const INSERT_LOCKS: usize = 256;
/// A slot no key has.
const EMPTY: u64 = 0;
/// A slot being handed to a new key.
const BUSY: u64 = 2;
/// The most keys a table keeps (2^28, 4 GiB of cells): more is refused as a mistake.
pub(crate) const MAX_KEYS: usize = 1 << 28;

/// One key's slot: the key's hash (odd, so never [`EMPTY`] or [`BUSY`]) and its cell.
pub(crate) struct Slot<C> {
    pub(crate) tag: AtomicU64,
    pub(crate) cell: C,
}

/// What a [`Table`] keeps per key.
pub(crate) trait Cell: Send + Sync {
    /// A cell for no key.
    fn new() -> Self;
    /// Forgets the previous key's state, for a new key.
    fn clear(&self);
    /// How readily the cell's key may be dropped at `now`, lowest first: `(1, _)` for a key whose
    /// state is worth nothing (dropping it loses nothing), `(2, order)` for others, `(3, _)` for
    /// one that should be kept if at all possible.
    fn rank(&self, now: u64) -> (u8, u64);
}

/// A hasher keyed at random: the process's shared seed and a seed of the table's own, both drawn
/// from the OS's randomness.
fn seeded() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(rand::random()));
    SeedableRandomState::with_seed(rand::random(), shared)
}

/// Where a key may live: its tag and its two buckets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub(crate) tag: u64,
    buckets: [usize; 2],
}

/// The keys' cells, allocated once, so the memory never grows whatever keys come: `max_keys`
/// slots (rounded up to whole buckets of [`BUCKET`]). A key lives in one of two buckets chosen by
/// its hash; a new key takes an empty slot of the emptier one, else a slot whose key is idle (its
/// whole burst available, so forgetting it loses nothing), else the slot whose key is closest to
/// idle, and that key starts afresh if it comes back. Two choices keep the buckets even: a table
/// four-fifths full of busy keys drops about one of them per ten thousand new keys.
///
/// Keys are known by a 64-bit hash, keyed at random per table, so a client cannot pick keys that
/// collide; two keys with the same hash would share a limit, which for a million keys happens
/// with a chance of about one in thirty million. The hash is foldhash's (its quality variant):
/// std's SipHash was a third of the instructions the keyed breaker added to an existing key's
/// call (66 of about 190), where foldhash takes a few. Foldhash is not a cryptographic hash, but
/// each of its steps mixes in secret seeds, which we draw from the OS's randomness (through
/// `rand`) rather than from foldhash's own address-based seeding: one per process, shared by
/// every table, and one per table.
pub(crate) struct Table<C = AtomicU64> {
    slots: Box<[Slot<C>]>,
    insert: Box<[Mutex<()>]>,
    hasher: SeedableRandomState,
    keys: AtomicU64,
}

impl<C: Cell> Table<C> {
    pub(crate) fn new(max_keys: usize) -> Self {
        Table::with_cells(max_keys, C::new)
    }
}

impl<C> Table<C> {
    #[inline]
    fn bucket(&self, index: usize) -> &[Slot<C>] {
        &self.slots[index * BUCKET..][..BUCKET]
    }

    /// The slot at `index`.
    #[inline]
    pub(crate) fn slot(&self, index: usize) -> &Slot<C> {
        &self.slots[index]
    }

    /// How many slots hold a key.
    pub(crate) fn keys(&self) -> u64 {
        self.keys.load(Relaxed)
    }

    /// How many keys fit.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The memory the table takes, in bytes.
    pub(crate) fn memory(&self) -> usize {
        std::mem::size_of_val(&*self.slots) + std::mem::size_of_val(&*self.insert)
    }

    /// The tag and buckets of `key`.
    #[inline]
    pub(crate) fn locate<K: Hash + ?Sized>(&self, key: &K) -> Place {
        let hash = self.hasher.hash_one(key);
        let buckets = (self.slots.len() / BUCKET) as u128;
        // Lemire's reduction of two independent-looking 64-bit values to 0..buckets.
        let other = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
        Place {
            tag: hash | 1,
            buckets: [
                ((u128::from(hash) * buckets) >> 64) as usize,
                ((u128::from(other) * buckets) >> 64) as usize,
            ],
        }
    }

    /// The index of the slot holding `place`'s key, if any. A key whose slot is busy (a sweep
    /// judging it) is not found: a caller that then inserts it goes through [`Table::claim`],
    /// which waits for the slot.
    #[inline]
    pub(crate) fn find(&self, place: Place) -> Option<usize> {
        let holds = |bucket: usize| {
            (bucket * BUCKET..(bucket + 1) * BUCKET)
                .find(|&i| self.slots[i].tag.load(Acquire) == place.tag)
        };
        holds(place.buckets[0]).or_else(|| holds(place.buckets[1]))
    }
}

impl<C: Cell> Table<C> {
    /// The index of the slot of `place`'s key, given a slot if the key is new; `now` reads the
    /// time, which ranks the keys that might make room.
    #[inline]
    pub(crate) fn entry<O: Observer>(
        &self,
        place: Place,
        now: impl FnOnce() -> u64,
        emit: Emitter<'_, O>,
    ) -> usize {
        match self.find(place) {
            Some(index) => index,
            None => self.insert(place, now(), emit),
        }
    }

    #[cold]
    fn insert<O: Observer>(&self, place: Place, now: u64, emit: Emitter<'_, O>) -> usize {
        // The clock (perhaps the user's) was read before, and the eviction is told after: only
        // the cells' own code runs while the slot is busy.
        let claimed = self.claim(place, |cell| Some(cell.rank(now)), |cell| cell.clear());
        let (index, evicted) = claimed.expect("every slot can be taken");
        if let Some(idle) = evicted {
            emit.emit(EventKind::KeyEvicted { idle });
        }
        index
    }
}

impl<C> Table<C> {
    /// A table of `max_keys` slots (rounded up to whole buckets), each cell made by `make`.
    pub(crate) fn with_cells(max_keys: usize, mut make: impl FnMut() -> C) -> Self {
        let buckets = max_keys.clamp(1, MAX_KEYS).div_ceil(BUCKET);
        Table {
            slots: (0..buckets * BUCKET)
                .map(|_| Slot {
                    tag: AtomicU64::new(EMPTY),
                    cell: make(),
                })
                .collect(),
            insert: (0..INSERT_LOCKS.min(buckets))
                .map(|_| Mutex::new(()))
                .collect(),
            hasher: seeded(),
            keys: AtomicU64::new(0),
        }
    }

    /// Gives `place`'s key a slot, if it has none: an empty one of the emptier of its two
    /// buckets, else the one whose cell `rank` ranks lowest (`None`: never take it). `prepare`
    /// readies the cell for the key before anyone can find it, while the slot is busy (every new
    /// key of its buckets waits for it): it should run no user code, and if it unwinds the
    /// slot is left empty (the key it held before, if any, forgotten). Returns the slot's index and,
    /// when a key was dropped to make room, whether `rank` said it was idle (rank 1); `None` when
    /// no slot may be taken. Keys with the same first bucket take one lock (of a few hundred);
    /// a key already there is returned without it.
    #[cold]
    pub(crate) fn claim(
        &self,
        place: Place,
        rank: impl Fn(&C) -> Option<(u8, u64)>,
        prepare: impl FnOnce(&C),
    ) -> Option<(usize, Option<bool>)> {
        if let Some(index) = self.find(place) {
            return Some((index, None));
        }
        // Inserting the same key twice at once would give it two cells: keys with the same first
        // bucket take one lock, and look again under it.
        let _lock = self.insert[place.buckets[0] % self.insert.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            // The slot to take: an empty one of the emptier bucket, else the one ranked lowest.
            let empty = |b: usize| {
                self.bucket(b)
                    .iter()
                    .filter(|s| s.tag.load(Relaxed) == EMPTY)
                    .count()
            };
            let [first, second] = place.buckets;
            let order = if empty(second) > empty(first) {
                [second, first]
            } else {
                [first, second]
            };
            // One pass over both buckets: the key's slot, or the slot to take. A busy slot may
            // be the key's own, looked at by a sweep (`remove`) that puts it back: the key is not
            // known to be absent until a pass meets no busy slot, or it would get a second one.
            // Only this lock's holder puts the key in a slot, and a sweep turns the key's slot
            // busy and back, so a pass with no busy slot that did not see the key proves it
            // absent. Slots are busy for a few steps, none of which waits for another slot.
            let mut busy = false;
            let mut victim: Option<((u8, u64), usize, u64)> = None;
            for index in order.into_iter().flat_map(|b| b * BUCKET..(b + 1) * BUCKET) {
                let slot = &self.slots[index];
                let held = slot.tag.load(Acquire);
                let rank = match held {
                    _ if held == place.tag => return Some((index, None)),
                    BUSY => {
                        busy = true;
                        continue;
                    }
                    EMPTY => (0, 0),
                    _ => match rank(&slot.cell) {
                        Some(rank) => rank,
                        None => continue,
                    },
                };
                if victim.is_none_or(|(least, _, _)| rank < least) {
                    victim = Some((rank, index, held));
                }
            }
            if busy {
                crate::sync::spin_loop();
                continue;
            }
            // None: no slot may be taken.
            let (rank, index, held) = victim?;
            let slot = &self.slots[index];
            if slot
                .tag
                .compare_exchange(held, BUSY, Acquire, Relaxed)
                .is_err()
            {
                continue;
            }
            // Should `prepare` unwind, the slot is left empty: the key it held before (if any)
            // lost it, and its cell may be half ready, which the next `prepare` finishes.
            let guard = Unbusy {
                tag: &slot.tag,
                to: EMPTY,
                lost: (held != EMPTY).then_some(&self.keys),
            };
            prepare(&slot.cell);
            std::mem::forget(guard);
            slot.tag.store(place.tag, Release);
            if held == EMPTY {
                self.keys.fetch_add(1, Relaxed);
                return Some((index, None));
            }
            return Some((index, Some(rank.0 == 1)));
        }
    }

    /// Takes the key `tag` out of the slot at `index`, if it still holds it and `forget` agrees
    /// (asked while no one can find the key, and the slot busy: if it unwinds, the key keeps
    /// the slot): the slot is empty again. Returns whether it was.
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    pub(crate) fn remove(&self, index: usize, tag: u64, forget: impl FnOnce(&C) -> bool) -> bool {
        let slot = &self.slots[index];
        if tag == EMPTY
            || tag == BUSY
            || slot
                .tag
                .compare_exchange(tag, BUSY, Acquire, Relaxed)
                .is_err()
        {
            return false;
        }
        // Should `forget` unwind, the key keeps its slot.
        let guard = Unbusy {
            tag: &slot.tag,
            to: tag,
            lost: None,
        };
        let forgotten = forget(&slot.cell);
        std::mem::forget(guard);
        if !forgotten {
            slot.tag.store(tag, Release);
            return false;
        }
        slot.tag.store(EMPTY, Release);
        self.keys.fetch_sub(1, Relaxed);
        true
    }

    /// Whether the slot at `index` may still hold the key whose tag's low half is `tag`: it
    /// does, or is being handed over (or emptied, or looked at by a sweep) right now.
    #[inline]
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    pub(crate) fn may_hold(&self, index: usize, tag: u32) -> bool {
        let held = self.slots[index].tag.load(Acquire);
        held as u32 == tag || held == BUSY
    }

    /// The tag of the key the slot at `index` holds (or an empty or busy mark).
    #[inline]
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    pub(crate) fn tag(&self, index: usize) -> u64 {
        self.slots[index].tag.load(Acquire)
    }
}

/// Puts back a slot left busy by a step that unwound (see [`Table::claim`] and
/// [`Table::remove`]), which would otherwise make every later new key of its buckets wait for it
/// for ever. The tables' owners run no user code while a slot is busy (a keyed breaker writes a
/// key's `Debug` form before it claims a slot); this keeps a panic there anyway from stalling
/// the table.
struct Unbusy<'a> {
    tag: &'a AtomicU64,
    /// What the slot holds again.
    to: u64,
    /// The count of keys, lowered by one when a key was lost.
    lost: Option<&'a AtomicU64>,
}

impl Drop for Unbusy<'_> {
    fn drop(&mut self) {
        self.tag.store(self.to, Release);
        if let Some(keys) = self.lost {
            keys.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// A table of one bucket, so that every key shares it.
    fn one_bucket() -> Table<()> {
        Table::with_cells(BUCKET, || ())
    }

    /// Whether any slot is busy: a later new key would wait for it for ever.
    fn busy(table: &Table<()>) -> bool {
        (0..table.capacity()).any(|i| table.tag(i) == BUSY)
    }

    /// Review r24 (fix 3): a cell's preparation that unwinds leaves no slot busy; the key it
    /// was for has none, and the next new key is given one.
    #[test]
    fn a_preparation_that_unwinds_leaves_its_slot_empty() {
        let table = one_bucket();
        let place = table.locate(&1u32);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            table.claim(place, |_| None, |_| panic!("prepare panics"))
        }));
        assert!(panicked.is_err());
        assert!(!busy(&table), "a slot was left busy");
        assert_eq!((table.keys(), table.find(place)), (0, None));
        let other = table.locate(&2u32);
        let (index, _) = table.claim(other, |_| None, |_| ()).unwrap();
        assert_eq!((table.keys(), table.find(other)), (1, Some(index)));
        // The key whose preparation failed is given a slot the next time.
        assert!(table.claim(place, |_| None, |_| ()).is_some());
        assert_eq!(table.keys(), 2);
    }

    /// The same when the slot was another key's: that key is gone, and counted out.
    #[test]
    fn a_preparation_that_unwinds_over_a_key_loses_that_key() {
        let table = one_bucket();
        let places: Vec<Place> = (0..BUCKET as u32).map(|k| table.locate(&k)).collect();
        for &place in &places {
            table.claim(place, |_| None, |_| ()).unwrap();
        }
        assert_eq!(table.keys(), BUCKET as u64);
        let new = table.locate(&100u32);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            table.claim(new, |_| Some((1, 0)), |_| panic!("prepare panics"))
        }));
        assert!(panicked.is_err());
        assert!(!busy(&table), "a slot was left busy");
        assert_eq!(table.keys(), BUCKET as u64 - 1);
        let kept = places.iter().filter(|&&p| table.find(p).is_some()).count();
        assert_eq!(kept, BUCKET - 1);
        // The emptied slot is taken before any key is dropped.
        let (_, evicted) = table.claim(new, |_| Some((1, 0)), |_| ()).unwrap();
        assert_eq!(evicted, None);
        assert_eq!(table.keys(), BUCKET as u64);
    }

    /// A sweep's judgement that unwinds leaves the key in its slot.
    #[test]
    fn a_removal_that_unwinds_keeps_the_key() {
        let table = one_bucket();
        let place = table.locate(&1u32);
        let (index, _) = table.claim(place, |_| None, |_| ()).unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            table.remove(index, place.tag, |_| panic!("forget panics"))
        }));
        assert!(panicked.is_err());
        assert!(!busy(&table), "a slot was left busy");
        assert_eq!((table.keys(), table.find(place)), (1, Some(index)));
        assert!(table.remove(index, place.tag, |_| true));
        assert_eq!(table.keys(), 0);
    }
}
