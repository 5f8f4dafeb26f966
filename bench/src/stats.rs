//! The bookkeeping that decides whether the server delivered correctly and how fast:
//! message texts that carry their own identity and send time, per-sender sequence
//! tracking (order, duplicates, and later the missing count), in-flight windows with
//! timeouts, and latency histograms.

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest sequence number a receiver tracks. A larger one cannot have been sent by
/// this process (its bitmap would be absurd), so the text is treated as foreign.
pub const MAX_TRACKED_SEQ: u64 = 1 << 28;

/// Identity of a bench message as carried in its text: `b:<sender>:<seq>:<nanos>`
/// (optionally followed by `:` and padding). Every client lives in one process, so
/// `nanos` is measured from one shared `Instant` and a receiver can compute the
/// delivery latency without clock agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgStamp {
    pub sender: u32,
    pub seq: u64,
    pub sent_nanos: u64,
}

impl MsgStamp {
    /// The message text, padded with `x` up to `pad_to` bytes when that is longer.
    pub fn encode(&self, pad_to: usize) -> String {
        let mut s = format!("b:{}:{}:{}", self.sender, self.seq, self.sent_nanos);
        if pad_to > s.len() + 1 {
            s.push(':');
            let fill = pad_to - s.len();
            s.extend(std::iter::repeat_n('x', fill));
        }
        s
    }

    /// Parses a text made by [`MsgStamp::encode`]; `None` for anything else.
    pub fn decode(text: &str) -> Option<MsgStamp> {
        let rest = text.strip_prefix("b:")?;
        let mut parts = rest.splitn(4, ':');
        let sender = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let sent_nanos = parts.next()?.parse().ok()?;
        Some(MsgStamp {
            sender,
            seq,
            sent_nanos,
        })
    }
}

/// What a receiver learned from one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First delivery of this sequence number, in order.
    New,
    /// First delivery, but a higher sequence number from the same sender came before.
    OutOfOrder,
    /// Already delivered to this receiver.
    Duplicate,
}

/// The sequence numbers one receiver got from one sender, as a bitmap, so duplicates
/// are exact and the missing count can be computed at the end by intersecting with
/// the sender's own acknowledged set.
#[derive(Debug, Clone, Default)]
pub struct SeqTrack {
    bits: Vec<u64>,
    max: Option<u64>,
    count: u64,
}

impl SeqTrack {
    pub fn new() -> SeqTrack {
        SeqTrack::default()
    }

    /// Records one delivery. `seq` must be below [`MAX_TRACKED_SEQ`].
    pub fn record(&mut self, seq: u64) -> Seen {
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & bit != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= bit;
        self.count += 1;
        match self.max {
            Some(max) if seq < max => Seen::OutOfOrder,
            _ => {
                self.max = Some(seq);
                Seen::New
            }
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        word < self.bits.len() && self.bits[word] & (1u64 << (seq % 64)) != 0
    }

    /// Distinct sequence numbers recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many sequence numbers both tracks hold.
    pub fn count_common(&self, other: &SeqTrack) -> u64 {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }
}

/// The server's message ids one receiver got in one room, in arrival order: each
/// must be above every id before it (the server's order is the order of ids, at every
/// receiver, whichever node it is connected to).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdOrder {
    max: Option<u64>,
}

impl IdOrder {
    /// Records one delivery's id; false if it is not above every earlier one.
    pub fn record(&mut self, id: u64) -> bool {
        match self.max {
            Some(max) if id <= max => false,
            _ => {
                self.max = Some(id);
                true
            }
        }
    }
}

/// Messages (or requests) sent and not yet answered, oldest first, keyed by a
/// sequence number that grows by one per send: completion and expiry are O(1).
#[derive(Debug, Default)]
pub struct InFlight {
    first_seq: u64,
    slots: VecDeque<Option<u64>>,
    live: usize,
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// Adds `seq` sent at `sent_nanos`. Sequence numbers must be pushed in order,
    /// one apart (gaps are filled with already-completed slots).
    pub fn push(&mut self, seq: u64, sent_nanos: u64) {
        if self.slots.is_empty() {
            self.first_seq = seq;
        }
        while self.first_seq + (self.slots.len() as u64) < seq {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(sent_nanos));
        self.live += 1;
    }

    /// Marks `seq` answered; returns its send time if it was still in flight.
    pub fn complete(&mut self, seq: u64) -> Option<u64> {
        let idx = seq.checked_sub(self.first_seq)? as usize;
        let sent = self.slots.get_mut(idx)?.take()?;
        self.live -= 1;
        self.trim();
        Some(sent)
    }

    /// Drops every entry sent before `cutoff_nanos`; returns how many were dropped.
    pub fn expire(&mut self, cutoff_nanos: u64) -> usize {
        let mut expired = 0;
        while let Some(front) = self.slots.front() {
            match front {
                Some(sent) if *sent >= cutoff_nanos => break,
                Some(_) => {
                    expired += 1;
                    self.live -= 1;
                }
                None => {}
            }
            self.slots.pop_front();
            self.first_seq += 1;
        }
        expired
    }

    /// Entries still in flight.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first_seq += 1;
        }
    }
}

/// A latency histogram in microseconds (1 µs to 1 hour, 3 significant digits).
#[derive(Debug, Clone)]
pub struct LatencyHist {
    hist: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist::new()
    }
}

impl LatencyHist {
    pub fn new() -> LatencyHist {
        LatencyHist {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one latency given in nanoseconds (clamped to the histogram's range).
    pub fn record_nanos(&mut self, nanos: u64) {
        self.hist.saturating_record((nanos / 1_000).max(1));
    }

    pub fn merge(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles in milliseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Latency> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: self.hist.len(),
            mean_ms: self.hist.mean() / 1000.0,
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p90_ms: ms(self.hist.value_at_quantile(0.90)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            max_ms: ms(self.hist.max()),
        })
    }
}

/// Latency percentiles of one measured quantity, in milliseconds (µs precision).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let s = MsgStamp {
            sender: 17,
            seq: 123_456,
            sent_nanos: 987_654_321_000,
        };
        let text = s.encode(0);
        assert_eq!(text, "b:17:123456:987654321000");
        assert_eq!(MsgStamp::decode(&text), Some(s));
    }

    #[test]
    fn stamp_padding_reaches_size_and_still_decodes() {
        let s = MsgStamp {
            sender: 1,
            seq: 2,
            sent_nanos: 3,
        };
        let text = s.encode(100);
        assert_eq!(text.len(), 100);
        assert!(text.starts_with("b:1:2:3:x"));
        assert_eq!(MsgStamp::decode(&text), Some(s));
        // Padding shorter than the stamp leaves it alone.
        assert_eq!(s.encode(3), "b:1:2:3");
    }

    #[test]
    fn foreign_texts_do_not_decode() {
        for t in ["hello", "b:", "b:1:2", "b:x:2:3", "b:1:-2:3", "a:1:2:3", ""] {
            assert_eq!(MsgStamp::decode(t), None, "{t:?}");
        }
    }

    #[test]
    fn seq_track_classifies_order_and_duplicates() {
        let mut t = SeqTrack::new();
        assert_eq!(t.record(0), Seen::New);
        assert_eq!(t.record(1), Seen::New);
        assert_eq!(t.record(3), Seen::New);
        assert_eq!(t.record(2), Seen::OutOfOrder);
        assert_eq!(t.record(3), Seen::Duplicate);
        assert_eq!(t.record(0), Seen::Duplicate);
        assert_eq!(t.record(200), Seen::New);
        assert_eq!(t.count(), 5);
        assert!(t.contains(200) && t.contains(2) && !t.contains(4) && !t.contains(10_000));
    }

    #[test]
    fn id_order_wants_every_id_above_the_ones_before() {
        let mut o = IdOrder::default();
        let got: Vec<bool> = [3, 5, 4, 6, 6, 9].iter().map(|&id| o.record(id)).collect();
        assert_eq!(got, vec![true, true, false, true, false, true]);
    }

    #[test]
    fn seq_track_intersection_counts_missing() {
        let mut acked = SeqTrack::new();
        for s in 0..100 {
            acked.record(s);
        }
        let mut got = SeqTrack::new();
        for s in (0..100).filter(|s| s % 10 != 0) {
            got.record(s);
        }
        got.record(150); // delivered but never acked: not in the intersection
        assert_eq!(got.count_common(&acked), 90);
        assert_eq!(acked.count_common(&got), 90);
        assert_eq!(acked.count() - got.count_common(&acked), 10);
    }

    #[test]
    fn in_flight_completes_and_expires() {
        let mut f = InFlight::new();
        for seq in 10..15 {
            f.push(seq, seq * 100);
        }
        assert_eq!(f.len(), 5);
        assert_eq!(f.complete(11), Some(1100));
        assert_eq!(f.complete(11), None);
        assert_eq!(f.complete(9), None);
        assert_eq!(f.complete(99), None);
        assert_eq!(f.complete(10), Some(1000));
        assert_eq!(f.len(), 3);
        // 12 and 13 were sent before 1400.
        assert_eq!(f.expire(1400), 2);
        assert_eq!(f.len(), 1);
        assert_eq!(f.complete(12), None);
        assert_eq!(f.complete(14), Some(1400));
        assert!(f.is_empty());
        f.push(20, 5);
        assert_eq!(f.len(), 1);
        assert_eq!(f.complete(20), Some(5));
    }

    #[test]
    fn latency_percentiles_are_in_milliseconds() {
        let mut h = LatencyHist::new();
        assert!(h.summary().is_none());
        for ms in 1..=1000u64 {
            h.record_nanos(ms * 1_000_000);
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.01;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");

        let mut other = LatencyHist::new();
        other.record_nanos(5_000_000_000);
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert!(close(h.summary().unwrap().max_ms, 5000.0));
    }

    #[test]
    fn sub_microsecond_latency_is_recorded_as_one() {
        let mut h = LatencyHist::new();
        h.record_nanos(10);
        assert_eq!(h.summary().unwrap().max_ms, 0.001);
    }
}
