//! Each room's entries, delivered in the room's one order on every node.
//!
//! Every batch of entries names the entry before it in its room (`prev`, see
//! `db::writer::chain::lock_rooms`). The loop remembers the last entry it delivered in
//! each room it tracks (rooms with members connected here). A batch whose
//! `prev` is that entry is delivered at once; one whose entries were delivered
//! already is dropped; one that follows something not seen yet is held until
//! the missing entries arrive, from the bus or from the node's own writer, or
//! are read back from the database (see [`Chains::overdue`]).
//!
//! Rooms nobody here belongs to are not tracked: their batches pass through
//! (they reach no connection) and start tracking the room when they bring a
//! member in.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long a room waits for missing entries to arrive by themselves (they are
/// usually a few milliseconds behind: another node's notification, or this
/// node's own commit racing it) before they are read from the database.
pub const GAP_WAIT: Duration = Duration::from_millis(150);

/// What to do with a batch that arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Deliver it now.
    Go,
    /// Its entries were delivered already.
    Seen,
    /// It follows entries not seen yet: hold it.
    Wait,
}

pub struct Chains<H> {
    last: HashMap<String, i64>,
    /// Room → held batches by their `prev`.
    held: HashMap<String, BTreeMap<i64, H>>,
    /// Rooms with held batches: since when, and whether a read is under way.
    gaps: HashMap<String, Gap>,
}

struct Gap {
    since: Instant,
    reading: bool,
}

impl<H> Default for Chains<H> {
    fn default() -> Self {
        Chains {
            last: HashMap::new(),
            held: HashMap::new(),
            gaps: HashMap::new(),
        }
    }
}

impl<H> Chains<H> {
    pub fn last(&self, room: &str) -> Option<i64> {
        self.last.get(room).copied()
    }

    /// Rooms tracked.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    pub fn is_tracked(&self, room: &str) -> bool {
        self.last.contains_key(room)
    }

    /// Starts tracking `room` from entry `last` (no-op when tracked already).
    pub fn track(&mut self, room: &str, last: i64) {
        if !self.last.contains_key(room) {
            self.last.insert(room.to_string(), last);
        }
    }

    /// Stops tracking a room nobody here belongs to any more; what was held
    /// for it is returned (to be answered or dropped).
    pub fn untrack(&mut self, room: &str) -> Vec<H> {
        self.last.remove(room);
        self.gaps.remove(room);
        self.held
            .remove(room)
            .map(|h| h.into_values().collect())
            .unwrap_or_default()
    }

    /// Whether `room` holds batches or waits for a read.
    pub fn waiting(&self, room: &str) -> bool {
        self.held.contains_key(room) || self.gaps.contains_key(room)
    }

    pub fn tracked(&self) -> impl Iterator<Item = (&String, &i64)> {
        self.last.iter()
    }

    pub fn gate(&self, room: &str, prev: i64, last: i64) -> Gate {
        match self.last.get(room) {
            None => Gate::Go,
            Some(&seen) if prev == seen => Gate::Go,
            Some(&seen) if last <= seen => Gate::Seen,
            // Overlapping what was delivered: cannot happen (a batch's entries
            // commit together); deliver rather than lose it.
            Some(&seen) if prev < seen => Gate::Go,
            Some(_) => {
                if self.held.get(room).is_some_and(|h| h.len() >= MAX_HELD) {
                    // Something is badly behind: deliver out of line rather
                    // than hold without bound.
                    Gate::Go
                } else {
                    Gate::Wait
                }
            }
        }
    }

    /// Records that entries up to `last` of a tracked room were delivered.
    pub fn advance(&mut self, room: &str, last: i64) {
        if let Some(seen) = self.last.get_mut(room) {
            *seen = (*seen).max(last);
        }
    }

    pub fn hold(&mut self, room: &str, prev: i64, h: H, now: Instant) {
        self.held
            .entry(room.to_string())
            .or_default()
            .insert(prev, h);
        self.gaps.entry(room.to_string()).or_insert(Gap {
            since: now,
            reading: false,
        });
    }

    /// The next held batch of `room` that may go now: the one that follows the
    /// last delivered entry, or one whose entries were all delivered already
    /// (`true`: seen, to be dropped or answered without delivery).
    pub fn next_ready(&mut self, room: &str) -> Option<(H, bool)> {
        if self.held.is_empty() {
            // The common case: nothing held anywhere.
            return None;
        }
        let seen = *self.last.get(room)?;
        let held = self.held.get_mut(room)?;
        let out = match held.first_key_value() {
            Some((&prev, _)) if prev < seen => held.pop_first().map(|(_, h)| (h, true)),
            Some((&prev, _)) if prev == seen => held.pop_first().map(|(_, h)| (h, false)),
            _ => None,
        };
        if held.is_empty() {
            self.held.remove(room);
            self.gaps.remove(room);
        }
        out
    }

    /// The batch held for right after entry `prev` of `room`, taken out: a
    /// read that reaches `prev` delivers it in place of its own copy of the
    /// same entries.
    pub fn take_at(&mut self, room: &str, prev: i64) -> Option<H> {
        if self.held.is_empty() {
            return None;
        }
        let held = self.held.get_mut(room)?;
        let out = held.remove(&prev);
        if held.is_empty() {
            self.held.remove(room);
            self.gaps.remove(room);
        }
        out
    }

    /// Rooms whose gap has lasted [`GAP_WAIT`] with no read under way, and the
    /// entry id up to which to read (the `prev` of the first held batch). Each
    /// is marked as being read.
    pub fn overdue(&mut self, now: Instant) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for (room, gap) in &mut self.gaps {
            if gap.reading || now.duration_since(gap.since) < GAP_WAIT {
                continue;
            }
            let (Some(&after), Some(upto)) = (
                self.last.get(room),
                self.held.get(room).and_then(|h| h.keys().next().copied()),
            ) else {
                continue;
            };
            gap.reading = true;
            out.push((room.clone(), after, upto));
        }
        out
    }

    /// Asks for a read of `room` now (an entry that travelled by reference).
    pub fn read_now(&mut self, room: &str, now: Instant) -> bool {
        let gap = self.gaps.entry(room.to_string()).or_insert(Gap {
            since: now,
            reading: false,
        });
        !std::mem::replace(&mut gap.reading, true)
    }

    /// Reads that failed: every gap may be read again after another wait.
    pub fn retry_reads(&mut self, now: Instant) {
        for gap in self.gaps.values_mut() {
            if gap.reading {
                gap.reading = false;
                gap.since = now;
            }
        }
    }

    /// A read for `room` finished: if a gap remains, it may be read again
    /// after another wait.
    pub fn read_done(&mut self, room: &str, now: Instant) {
        if let Some(gap) = self.gaps.get_mut(room) {
            gap.reading = false;
            gap.since = now;
        }
        if !self.held.contains_key(room) {
            self.gaps.remove(room);
        }
    }
}

/// Batches held per room at most (see [`Chains::gate`]).
const MAX_HELD: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_in_chain_order_and_seen_ones_are_dropped() {
        let now = Instant::now();
        let mut c: Chains<&str> = Chains::default();
        assert_eq!(c.gate("r", 5, 6), Gate::Go, "untracked rooms pass");
        c.track("r", 10);
        c.track("r", 99);
        assert_eq!(c.last("r"), Some(10), "tracking twice keeps the first");
        assert_eq!(c.gate("r", 10, 12), Gate::Go);
        c.advance("r", 12);
        assert_eq!(c.gate("r", 10, 12), Gate::Seen);
        assert_eq!(c.gate("r", 15, 16), Gate::Wait);
        c.hold("r", 15, "b", now);
        c.hold("r", 16, "c", now);
        assert_eq!(c.next_ready("r"), None);
        // 13..15 arrive (e.g. read back): the held ones follow in order.
        c.advance("r", 15);
        assert_eq!(c.next_ready("r"), Some(("b", false)));
        c.advance("r", 16);
        assert_eq!(c.next_ready("r"), Some(("c", false)));
        assert_eq!(c.next_ready("r"), None);
        assert!(c.overdue(now + GAP_WAIT * 2).is_empty(), "no gap left");
    }

    #[test]
    fn a_held_batch_is_taken_at_its_place() {
        let now = Instant::now();
        let mut c: Chains<&str> = Chains::default();
        c.track("r", 1);
        c.hold("r", 4, "local", now);
        assert_eq!(c.take_at("r", 3), None, "held after 4, not 3");
        assert_eq!(c.take_at("r", 4), Some("local"));
        assert!(!c.waiting("r"), "nothing held, no gap left");
        assert!(c.overdue(now + GAP_WAIT).is_empty());
    }

    #[test]
    fn a_gap_is_read_once_after_the_wait() {
        let now = Instant::now();
        let mut c: Chains<u8> = Chains::default();
        c.track("r", 1);
        c.hold("r", 4, 0, now);
        assert!(c.overdue(now).is_empty(), "too early");
        assert_eq!(c.overdue(now + GAP_WAIT), vec![("r".to_string(), 1, 4)]);
        assert!(c.overdue(now + GAP_WAIT * 3).is_empty(), "already reading");
        c.read_done("r", now + GAP_WAIT);
        assert_eq!(c.overdue(now + GAP_WAIT * 3).len(), 1, "read again");
        assert_eq!(c.untrack("r"), vec![0]);
        assert!(!c.is_tracked("r"));
    }
}
