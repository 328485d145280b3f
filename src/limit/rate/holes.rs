//! Slots reserved for callers that gave up waiting for them, kept for the next callers.
//!
//! # Why not just move the cell back
//!
//! A caller that waits has taken a future slot of its cell: the cell's theoretical arrival time
//! moved on one interval, and later callers reserved the slots after it. Moving the cell back one
//! interval when it gives up would be exact only if no later slot was taken: otherwise the next
//! caller would be given the slot after the last one promised, where one is already due, and two
//! calls would share a time the quota spaces one interval apart. Repeated (every caller of a surge
//! gives up), that lets through more than the quota plus the burst in a window.
//!
//! So a slot given back is kept as a *hole*: its due time, and the cell's values around its taking
//! (a [`Slot`]). A later caller of the same cell that could wait until then takes the hole instead
//! of a new slot, and goes ahead at exactly the hole's due time: the calls let through are then
//! exactly those the algorithm had already allowed, the caller standing in for the one that left,
//! so the limit holds as it would have. When the hole's slot is still the last one taken from its
//! cell (the cell still holds the value its taking wrote), it is given back to the cell instead
//! ([`Rule::undo`]), which is exact too. A hole whose time passes unused is forgotten: that slot is
//! lost, which errs on letting fewer through.
//!
//! Holes are looked at only by callers that cannot go ahead at once (a cell with a hole still to
//! come is reserved at least that far ahead, so no caller is admitted at once meanwhile), under a
//! lock, never on the path of an admitted call; each look is O(log n) in the holes kept (a global
//! limiter keeps them in one shard, up to about its rate times its maximum wait). A hole is filed
//! by the value its taking wrote to the cell, which orders a key's holes as their due times while
//! the quota stays the same; after a change of quota, a caller may be offered a hole later than
//! the earliest one it could have had, which errs on letting fewer through.

use super::gcra::{Rule, Slot, TIME};
use crate::sync::{AtomicU64, Mutex, MutexGuard, Striped};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A slot given back by a caller that stopped waiting for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hole {
    /// The cell it was taken from: its index in a keyed table, 0 for a global limiter.
    pub(crate) cell: usize,
    /// The tag of the key the cell held (0 for a global limiter).
    pub(crate) tag: u64,
    /// When the slot is due, on the limiter's clock.
    pub(crate) due: u64,
    /// The cell's values around the taking.
    pub(crate) slot: Slot,
}

/// Where a hole is filed: its cell, its key's tag, and the value its taking wrote to the cell
/// (the key's tenure of the cell in the top bits, then the time). Within one tenure these
/// values are distinct (the cell only moves on, but for the last slot given back), and they
/// order the holes as their due times: each is due one tolerance before that value's time.
type Place = (usize, u64, u64);

/// One shard's holes, filed twice: by place, to find in O(log n) the hole whose slot is the last
/// taken from its cell and the earliest of a key's tenure; and by due time, to forget in O(log n)
/// each those whose time has passed, whatever their cell.
#[derive(Default)]
struct Shard {
    by_place: BTreeMap<Place, Hole>,
    by_due: BTreeSet<(u64, Place)>,
}

impl Shard {
    fn remove(&mut self, place: Place) -> Option<Hole> {
        let hole = self.by_place.remove(&place)?;
        self.by_due.remove(&(hole.due, place));
        Some(hole)
    }
}

fn place(hole: &Hole) -> Place {
    (hole.cell, hole.tag, hole.slot.after)
}

/// The holes of a limiter's cells, in shards by cell. Each operation is O(log n) in the holes of
/// its shard.
/// The most holes one `take` gives back or forgets, so that its work under the lock is bounded.
const CLEANUP_PER_TAKE: usize = 8;

pub(crate) struct Holes {
    count: AtomicUsize,
    shards: Box<[Mutex<Shard>]>,
    /// Callers holding a reserved slot they wait for (what `health` reports): counted by
    /// [`Held`](super::Held), so only by callers that wait.
    waiting: Striped,
}

impl Holes {
    pub(crate) fn new(shards: usize) -> Self {
        Holes {
            count: AtomicUsize::new(0),
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            waiting: Striped::new(),
        }
    }

    /// One more caller waits for its slot.
    pub(crate) fn wait_begins(&self) {
        self.waiting.increment();
    }

    /// A caller no longer waits: its slot came, or it left.
    pub(crate) fn wait_ends(&self) {
        self.waiting.decrement();
    }

    /// How many callers wait for their slot now.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.sum()
    }

    fn shard(&self, cell: usize) -> MutexGuard<'_, Shard> {
        // Nothing is left half-done under this lock by a panic.
        self.shards[cell % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `hole` for the next callers of its cell.
    pub(crate) fn add(&self, hole: Hole) {
        let mut shard = self.shard(hole.cell);
        let at = place(&hole);
        // A hole filed at the same place could only be of a tenure sixteen keys back, long
        // passed: it is forgotten.
        let replaced = shard.remove(at).is_some();
        shard.by_place.insert(at, hole);
        shard.by_due.insert((hole.due, at));
        if !replaced {
            self.count.fetch_add(1, Relaxed);
        }
    }

    /// For a caller of `cell` (holding the key tagged `tag`) at `now` that may wait until
    /// `until`: gives back to `tat` the slots its holes hold that are still the last taken from it,
    /// forgets the holes whose time has passed, and takes the earliest hole of the key due by
    /// `until`, if any.
    pub(crate) fn take(
        &self,
        cell: usize,
        tag: u64,
        tat: &AtomicU64,
        now: u64,
        until: u64,
    ) -> Option<Hole> {
        if self.count.load(Relaxed) == 0 {
            return None;
        }
        let mut shard = self.shard(cell);
        let mut gone = 0;
        // The last slot taken first: giving it back may make the one before it the last. Both
        // clean-ups stop after a few holes, so that no caller does more than constant work under
        // the lock: what is left is done by the next callers (a slot not yet given back only lets
        // fewer calls through meanwhile).
        for _ in 0..CLEANUP_PER_TAKE {
            let last = (cell, tag, tat.load(Relaxed));
            match shard.by_place.get(&last) {
                Some(hole) if Rule::undo(tat, hole.slot) => {
                    shard.remove(last);
                    gone += 1;
                }
                _ => break,
            }
        }
        for _ in 0..CLEANUP_PER_TAKE {
            match shard.by_due.first() {
                Some(&(due, at)) if due < now => {
                    shard.remove(at);
                    gone += 1;
                }
                _ => break,
            }
        }
        // Only a hole of the key's present tenure of the cell (the top bits of the cell count
        // the keys it has held), the earliest.
        let epoch = tat.load(Relaxed) & !TIME;
        // Holes whose time has passed and that are not forgotten yet come first; they are never
        // taken (a slot used after its time could let more through than the quota), and only a
        // few are looked past.
        let earliest = shard
            .by_place
            .range((cell, tag, epoch)..=(cell, tag, epoch | TIME))
            .take(CLEANUP_PER_TAKE + 1)
            .find(|(_, hole)| hole.due >= now)
            .filter(|(_, hole)| hole.due <= until)
            .map(|(&at, _)| at);
        let taken = earliest.and_then(|at| shard.remove(at));
        gone += usize::from(taken.is_some());
        self.count.fetch_sub(gone, Relaxed);
        taken
    }

    /// How many holes are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count.load(Relaxed)
    }
}

#[cfg(all(test, not(seawall_loom)))]
mod tests {
    use super::*;
    use crate::limit::rate::gcra::{Decision, Quota};

    const MS: u64 = 1_000_000;

    fn reserve(rule: &Rule, tat: &AtomicU64, now: u64) -> Hole {
        match rule.decide(tat, now, u64::MAX) {
            Decision::Wait(wait, slot) => Hole {
                cell: 0,
                tag: 0,
                due: now + wait,
                slot,
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_last_slot_goes_back_to_the_cell_and_others_to_the_next_callers() {
        // 10 a second, burst 1: after the first call, slots at 100, 200 and 300 ms.
        let rule = Rule::new(&Quota::per_second(10).burst(1));
        let tat = AtomicU64::new(0);
        assert!(matches!(rule.decide(&tat, 0, 0), Decision::Admit(_)));
        let [first, second, third] = [(); 3].map(|()| reserve(&rule, &tat, 0));
        assert_eq!(third.due, 300 * MS);
        let holes = Holes::new(1);
        // The first gives up: a later slot was taken, so it is kept as a hole, and the next
        // caller takes it rather than a slot after the third.
        holes.add(first);
        assert_eq!(
            holes.take(0, 0, &tat, 10 * MS, 10 * MS),
            None,
            "out of reach"
        );
        assert_eq!(holes.take(0, 0, &tat, 10 * MS, 1000 * MS), Some(first));
        assert_eq!(holes.len(), 0);
        // The third gives up, then the second: both go back to the cell, last first.
        holes.add(third);
        holes.add(second);
        assert_eq!(holes.take(0, 0, &tat, 20 * MS, 20 * MS), None);
        assert_eq!(holes.len(), 0);
        assert_eq!(tat.load(Relaxed), second.slot.before);
        // A hole whose time has passed is forgotten.
        let fourth = reserve(&rule, &tat, 20 * MS);
        let _fifth = reserve(&rule, &tat, 20 * MS);
        holes.add(fourth);
        assert_eq!(holes.take(0, 0, &tat, fourth.due + 1, u64::MAX), None);
        assert_eq!(holes.len(), 0);
    }

    #[test]
    fn many_holes_are_taken_earliest_first_per_key_and_passed_ones_forgotten() {
        // 1,000 a second, burst 1: slots every millisecond; 2,000 reserved, every other one
        // given back, in a scrambled order.
        let rule = Rule::new(&Quota::per_second(1000).burst(1));
        let tat = AtomicU64::new(0);
        assert!(matches!(rule.decide(&tat, 0, 0), Decision::Admit(_)));
        let reserved: Vec<Hole> = (0..2000).map(|_| reserve(&rule, &tat, 0)).collect();
        let holes = Holes::new(1);
        for i in 0..1000 {
            // 7 and 1000 are coprime: every odd slot once.
            holes.add(reserved[2 * (i * 7 % 1000)]);
        }
        // Another cell's hole in the same shard, due first: never offered to cell 0.
        let other = Hole {
            cell: 1,
            tag: 9,
            ..reserved[0]
        };
        holes.add(other);
        assert_eq!(holes.len(), 1001);
        assert_eq!(holes.take(0, 0, &tat, 0, 0), None, "none due by now");
        for i in 0..10 {
            assert_eq!(holes.take(0, 0, &tat, 0, u64::MAX), Some(reserved[2 * i]));
        }
        // At 1 s, the holes due before then are forgotten (the other cell's too), a few on each
        // take, and none of them is ever taken: the next taken is the first due at or after it.
        let mut takes = 0;
        let next = loop {
            takes += 1;
            if let Some(hole) = holes.take(0, 0, &tat, 1000 * MS, u64::MAX) {
                break hole;
            }
            assert!(
                takes < 100,
                "the passed holes are forgotten, a few at a time"
            );
        };
        assert!(takes > 1, "one take forgets a bounded number of holes");
        assert_eq!(next.due, 1000 * MS + MS);
        // Callers that take nothing (they cannot wait) still forget what has passed.
        for _ in 0..4 {
            assert_eq!(holes.take(0, 0, &tat, 1000 * MS, 0), None);
        }
        // 1,000 - 10 taken - 490 passed (due 21 to 999 ms) - 1 taken; the other cell's passed.
        assert_eq!(holes.len(), 499);
        assert_eq!(holes.take(1, 9, &tat, 1000 * MS, u64::MAX), None);
        // The last slot reserved is not a hole: nothing went back to the cell.
        assert_eq!(tat.load(Relaxed), reserved[1999].slot.after);
    }
}
