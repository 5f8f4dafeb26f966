//! Who loses a DM when a recipient's offline queue is full.
//!
//! Dropping the oldest DM of the whole queue would let anyone who shares a room
//! with the recipient push everybody else's DMs out by sending enough of their
//! own. Instead each sender holds at most [`OFFLINE_QUEUE_SHARE`] of a
//! recipient's queue (past it, the sender's own oldest goes), and when the whole
//! queue is over [`OFFLINE_QUEUE_CAP`] the DM dropped is the oldest of the sender
//! who holds the most. A sender can therefore only ever push out DMs of a sender
//! who holds at least as many as they do: a friend's one DM outlives any flood.
//!
//! The writer applies this as it queues a DM, under the recipient's lock in a
//! cluster, and counts what it drops for the recipient's next connection.

use std::collections::HashMap;
use std::collections::VecDeque;

/// Offline DMs kept per recipient.
pub const OFFLINE_QUEUE_CAP: usize = 100;

/// Offline DMs one sender may have waiting for one recipient.
pub const OFFLINE_QUEUE_SHARE: usize = 20;

/// The queued DMs to drop now that `sender` has queued one: `queue` is the
/// recipient's whole queue as (id, sender), the new DM included, in any order.
/// Returns their ids, oldest first per sender; empty while the queue is within
/// its bounds.
pub fn evictions(queue: &[(i64, &str)], sender: &str) -> Vec<i64> {
    let mut held: HashMap<&str, VecDeque<i64>> = HashMap::new();
    let mut sorted: Vec<(i64, &str)> = queue.to_vec();
    sorted.sort_unstable_by_key(|(id, _)| *id);
    for (id, from) in sorted {
        held.entry(from).or_default().push_back(id);
    }
    let mut gone = Vec::new();
    if let Some(own) = held.get_mut(sender) {
        while own.len() > OFFLINE_QUEUE_SHARE {
            gone.extend(own.pop_front());
        }
    }
    let mut total = queue.len() - gone.len();
    while total > OFFLINE_QUEUE_CAP {
        // The sender holding the most; among equals, the one whose oldest DM is
        // the oldest (ids are unique, so the choice never depends on map order).
        let Some(most) = held
            .values_mut()
            .filter(|q| !q.is_empty())
            .max_by(|a, b| a.len().cmp(&b.len()).then(b[0].cmp(&a[0])))
        else {
            break;
        };
        gone.extend(most.pop_front());
        total -= 1;
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipient's queue as the writer sees it, with the policy applied at
    /// every DM queued.
    #[derive(Default)]
    struct Queue {
        rows: Vec<(i64, String)>,
        next: i64,
        dropped: usize,
    }

    impl Queue {
        /// Queues one DM from `from`; returns the senders of the DMs dropped.
        fn send(&mut self, from: &str) -> Vec<String> {
            self.next += 1;
            self.rows.push((self.next, from.to_string()));
            let view: Vec<(i64, &str)> = self.rows.iter().map(|(i, f)| (*i, f.as_str())).collect();
            let gone = evictions(&view, from);
            let senders = gone
                .iter()
                .map(|id| {
                    let at = self.rows.iter().position(|(i, _)| i == id).unwrap();
                    self.rows.remove(at).1
                })
                .collect();
            self.dropped += gone.len();
            senders
        }

        fn held(&self, from: &str) -> usize {
            self.rows.iter().filter(|(_, f)| f == from).count()
        }
    }

    #[test]
    fn a_flood_pushes_out_only_the_flooders_own_dms() {
        let mut q = Queue::default();
        q.send("friend");
        for _ in 0..500 {
            for gone in q.send("attacker") {
                assert_eq!(gone, "attacker");
            }
        }
        assert_eq!(q.held("friend"), 1);
        assert_eq!(q.held("attacker"), OFFLINE_QUEUE_SHARE);
        assert_eq!(q.dropped, 500 - OFFLINE_QUEUE_SHARE);
    }

    #[test]
    fn within_the_share_and_the_cap_nothing_is_dropped() {
        let mut q = Queue::default();
        for s in ["a", "b", "c", "d", "e"] {
            for _ in 0..OFFLINE_QUEUE_SHARE {
                assert!(q.send(s).is_empty());
            }
        }
        assert_eq!(q.rows.len(), OFFLINE_QUEUE_CAP);
        assert_eq!(q.dropped, 0);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_of_whoever_holds_the_most() {
        let mut q = Queue::default();
        for s in ["a", "b", "c", "d", "e"] {
            for _ in 0..OFFLINE_QUEUE_SHARE {
                q.send(s);
            }
        }
        // All hold 20: "a" has the oldest DM.
        assert_eq!(q.send("f"), ["a"]);
        assert_eq!(q.rows[0], (2, "a".to_string()), "a's oldest went");
        // Now b..e hold the most.
        assert_eq!(q.send("f"), ["b"]);
        assert_eq!(q.send("f"), ["c"]);
        // Back at 20, "a" is among those holding the most, with the oldest DM.
        assert_eq!(q.send("a"), ["a"]);
        assert_eq!(q.send("f"), ["d"]);
    }

    /// Any sequence of senders: the bounds hold after every DM, and a DM is only
    /// ever dropped from a sender holding at least as many as the one sending.
    #[test]
    fn the_bounds_hold_for_any_sequence_of_senders() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let names: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
        let mut q = Queue::default();
        for _ in 0..20_000 {
            // Skewed: a few senders send most.
            let pick = (rand() % 12).min(rand() % 12) as usize;
            let from = &names[pick];
            let before: HashMap<String, usize> =
                names.iter().map(|n| (n.clone(), q.held(n))).collect();
            let mine = before[from] + 1;
            for gone in q.send(from) {
                let theirs = before[&gone] + usize::from(&gone == from);
                assert!(
                    theirs >= mine,
                    "{from} ({mine}) pushed out {gone} ({theirs})"
                );
            }
            assert!(q.rows.len() <= OFFLINE_QUEUE_CAP);
            assert!(names.iter().all(|n| q.held(n) <= OFFLINE_QUEUE_SHARE));
        }
    }

    /// A queue filled under the old rule (one sender, the newest 100) comes
    /// back within the bounds as soon as that sender queues again.
    #[test]
    fn an_old_queue_over_the_share_is_trimmed_to_it() {
        let queue: Vec<(i64, &str)> = (1..=101).map(|i| (i, "old")).collect();
        let gone = evictions(&queue, "old");
        assert_eq!(gone, (1..=81).collect::<Vec<i64>>());
        let mut queue: Vec<(i64, &str)> = (1..=100).map(|i| (i, "old")).collect();
        queue.push((101, "new"));
        assert_eq!(evictions(&queue, "new"), [1]);
    }
}
