//! Freshness and replay: how far a payload's signing time may be from this
//! node's clock, and which sequence numbers each sender has had taken.
//!
//! Apart because it is the inbox's memory across payloads, with bounds of its
//! own (how many senders, for how long): the rest of the opening looks at
//! one payload alone.

use std::collections::HashMap;
use std::time::Duration;

/// How far a payload's signing time may be from the receiver's clock. Nodes'
/// clocks must agree within it (NTP keeps them within milliseconds); a
/// payload older than this can no longer be replayed.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// How far behind a sender's newest sequence number a payload may arrive and
/// still be taken. The writer and the workers sign independently (a batch
/// signs its payloads together) and their commits reach the listeners in
/// commit order, which may differ from signing order by a few; thousands is
/// far beyond it.
pub const REPLAY_WINDOW: u64 = 4_096;

/// Senders (node incarnations) whose sequence numbers are remembered at most.
/// Only a payload with a valid MAC adds one: a cluster's nodes and their
/// restarts of the last [`FORGET_AFTER`].
pub const MAX_SENDERS: usize = 256;

/// A sender not heard from this long is forgotten: every payload it sent
/// before is stale by then (it is longer than twice [`MAX_SKEW`]).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How long before this node started listening a payload may have been signed
/// and still be taken from a sender heard for the first time: a transaction
/// signs just before it commits, and clocks differ by a little.
const START_SLACK: Duration = Duration::from_secs(2);

/// Each sender's replay window, bounded in number ([`MAX_SENDERS`]) and age
/// ([`FORGET_AFTER`]).
pub(super) struct Senders {
    windows: HashMap<(String, i64), Window>,
    /// When this node started listening, less [`START_SLACK`] (µs since the
    /// epoch).
    since: i64,
    last_sweep: i64,
}

impl Senders {
    pub(super) fn new(listening: i64) -> Senders {
        Senders {
            windows: HashMap::new(),
            since: listening.saturating_sub(START_SLACK.as_micros() as i64),
            last_sweep: listening,
        }
    }

    /// Whether `seq` of this sender may be taken (and marks it taken).
    pub(super) fn take(
        &mut self,
        node: &str,
        incarnation: i64,
        seq: u64,
        at: i64,
        now: i64,
    ) -> bool {
        let forget = FORGET_AFTER.as_micros() as i64;
        if now.saturating_sub(self.last_sweep) >= forget / 10 {
            self.last_sweep = now;
            self.windows
                .retain(|_, w| now.saturating_sub(w.heard) < forget);
        }
        let key = (node.to_string(), incarnation);
        if let Some(w) = self.windows.get_mut(&key) {
            let ok = w.take(seq, at >= self.since);
            if ok {
                w.heard = now;
            }
            return ok;
        }
        if self.windows.len() >= MAX_SENDERS {
            // Only senders with the key get here: restarts by the hundred
            // within minutes. The one heard from longest ago goes.
            if let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.heard)
                .map(|(k, _)| k.clone())
            {
                self.windows.remove(&oldest);
            }
        }
        if at < self.since {
            // Signed before this node listened: maybe committed before, when
            // nobody here could hear it, and recorded by someone who did.
            return false;
        }
        self.windows.insert(key, Window::new(seq, now));
        true
    }

    /// How many senders are remembered (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.windows.len()
    }
}

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// One sender's sequence numbers taken lately (as IPsec's anti-replay window,
/// RFC 4303 §3.4.3, kept as a ring: bit `seq % REPLAY_WINDOW`). A number
/// older than the window is refused; so is one below the first this node
/// heard from the sender, unless it was signed after this node started
/// listening: it may have been sent before, when nobody here could see it,
/// and recorded by someone else.
struct Window {
    /// The highest number taken.
    top: u64,
    /// The first number taken from this sender.
    first: u64,
    bits: Box<[u64; WORDS]>,
    /// When a payload of this sender was last taken (µs since the epoch).
    heard: i64,
}

impl Window {
    fn new(seq: u64, now: i64) -> Window {
        let mut w = Window {
            top: seq,
            first: seq,
            bits: Box::new([0; WORDS]),
            heard: now,
        };
        w.set(seq);
        w
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Window::bit(seq);
        self.bits[w] |= b;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, b) = Window::bit(seq);
        self.bits[w] & b != 0
    }

    /// `since_listening`: the payload was signed after this node started
    /// listening.
    fn take(&mut self, seq: u64, since_listening: bool) -> bool {
        if seq > self.top {
            if seq - self.top >= REPLAY_WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.top + 1..seq {
                    let (w, b) = Window::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.top = seq;
            self.set(seq);
            return true;
        }
        if self.top - seq >= REPLAY_WINDOW || self.is_set(seq) {
            return false;
        }
        if seq < self.first && !since_listening {
            return false;
        }
        self.set(seq);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_refuses_what_is_older_than_it() {
        let mut w = Window::new(10, 0);
        assert!(w.take(REPLAY_WINDOW + 9, true));
        assert!(!w.take(9, true), "older than the window");
        assert!(!w.take(10, true), "taken");
        assert!(w.take(11, true), "inside the window, not taken");
        assert!(w.take(2 * REPLAY_WINDOW + 10, true));
        assert!(!w.take(REPLAY_WINDOW + 10, true), "older than the window");
        assert!(w.take(REPLAY_WINDOW + 11, true), "the oldest still inside");
        assert!(!w.take(REPLAY_WINDOW + 11, true));
        // A jump past the whole window forgets everything before it.
        assert!(w.take(10 * REPLAY_WINDOW, true));
        assert!(w.take(10 * REPLAY_WINDOW - 1, true));
        assert!(!w.take(10 * REPLAY_WINDOW - 1, true));
        // Wrapping the ring clears what a slot held before.
        let mut w = Window::new(0, 0);
        for seq in 1..3 * REPLAY_WINDOW {
            assert!(w.take(seq, true), "{seq}");
        }
        for seq in 2 * REPLAY_WINDOW + 1..3 * REPLAY_WINDOW {
            assert!(!w.take(seq, true), "{seq}");
        }
    }
}
