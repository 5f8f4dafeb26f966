//! The receiving end: the listener's [`Inbox`] opens each payload, cheapest
//! check first (the MAC before anything else is read), and hands on only
//! what passed every one ([`Opened`]).
//!
//! Apart from the seal because it runs on the listener thread and keeps what
//! the sender never needs: each sender's replay window.

use std::time::SystemTime;

use hmac::Mac;

use crate::db::notify::BusEvent;

use super::key::BusKey;
use super::layout::{unhex, VERSION};
use super::plausible::plausible;
use super::refused::Refused;
use super::replay::{Senders, MAX_SKEW};
use super::wire::{decode_events, micros};

/// A payload that passed every check.
#[derive(Debug, PartialEq)]
pub struct Opened {
    /// The sending node's name.
    pub node: String,
    pub events: Vec<BusEvent>,
}

/// The listener's side: the bus key and which sequence numbers each sender
/// has had taken. Lives as long as the listener thread, across reconnects.
pub struct Inbox {
    key: BusKey,
    senders: Senders,
}

impl Inbox {
    /// `now`: when this node starts listening (see `replay::Window`).
    pub fn new(key: BusKey, now: SystemTime) -> Inbox {
        Inbox {
            key,
            senders: Senders::new(micros(now)),
        }
    }

    /// Checks a payload, cheapest first: the MAC before anything else is read.
    pub fn open(&mut self, payload: &str, now: SystemTime) -> Result<Opened, Refused> {
        let (first, signed) = payload.split_once('\n').ok_or(Refused::Malformed)?;
        let tag = first
            .strip_prefix(VERSION)
            .and_then(|t| t.strip_prefix(' '))
            .and_then(unhex)
            .ok_or(Refused::Malformed)?;
        let mut m = self.key.hmac();
        m.update(signed.as_bytes());
        // Constant time: a forger learns nothing from how long a refusal took.
        m.verify_slice(&tag).map_err(|_| Refused::BadMac)?;
        let (node, rest) = signed.split_once('\n').ok_or(Refused::Malformed)?;
        let (numbers, body) = rest.split_once('\n').ok_or(Refused::Malformed)?;
        let mut n = numbers.split(' ');
        let (Some(incarnation), Some(seq), Some(at), None) = (
            n.next().and_then(|x| x.parse::<i64>().ok()),
            n.next().and_then(|x| x.parse::<u64>().ok()),
            n.next().and_then(|x| x.parse::<i64>().ok()),
            n.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let now_us = micros(now);
        if now_us.abs_diff(at) > MAX_SKEW.as_micros() as u64 {
            return Err(Refused::Stale);
        }
        if !self.senders.take(node, incarnation, seq, at, now_us) {
            return Err(Refused::Replayed);
        }
        let events = decode_events(body).ok_or(Refused::Malformed)?;
        if !events.iter().all(|e| plausible(e, at)) {
            return Err(Refused::Implausible);
        }
        Ok(Opened {
            node: node.to_string(),
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::bus::fixtures::{entry, inbox, one, presence, sealer, t0, SECRET};
    use crate::cluster::bus::payloads::Payloads;
    use crate::cluster::bus::replay::{FORGET_AFTER, MAX_SENDERS};
    use crate::cluster::bus::seal::Sealer;
    use crate::cluster::bus::wire::encode_entry;
    use crate::db::notify::EntryRef;

    #[test]
    fn the_mac_covers_every_byte() {
        let payload = sealer("n").seal_at(&[one(&[presence()])], t0()).remove(0);
        assert!(inbox().open(&payload, t0()).is_ok());
        // Any byte after the MAC line changed, or a MAC digit changed.
        let mac_end = payload.find('\n').unwrap();
        for i in (mac_end + 1..payload.len()).chain([mac_end - 1, VERSION.len() + 1]) {
            let mut b = payload.clone().into_bytes();
            b[i] = if b[i] == b'1' { b'2' } else { b'1' };
            let Ok(forged) = String::from_utf8(b) else {
                continue;
            };
            assert_eq!(
                inbox().open(&forged, t0()),
                Err(Refused::BadMac),
                "byte {i} changed"
            );
        }
        // Another cluster's key.
        let other = Sealer::new(BusKey::derive(b"another"), "n", 42);
        let theirs = other.seal_at(&[one(&[presence()])], t0()).remove(0);
        assert_eq!(inbox().open(&theirs, t0()), Err(Refused::BadMac));
    }

    #[test]
    fn foreign_payloads_are_malformed_and_unknown_kinds_skipped() {
        let mut inbox = inbox();
        for foreign in [
            "no newline",
            "n\n[[\"p\",\"bob\",\"FAKE\",false]]",
            "klav1 xyz\nn\n1 1 1\n[]",
            "klav2 0000000000000000000000000000000000000000000000000000000000000000\nn\n1 1 1\n[]",
            "",
        ] {
            assert_eq!(
                inbox.open(foreign, t0()),
                Err(Refused::Malformed),
                "{foreign:?}"
            );
        }
        // Signed, but not this format inside.
        let s = sealer("n");
        let key = BusKey::derive(SECRET);
        let signed_raw = |signed: &str| {
            let mut m = key.hmac();
            m.update(signed.as_bytes());
            let tag = m.finalize().into_bytes();
            let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            format!("klav1 {hex}\n{signed}")
        };
        let at = micros(t0());
        for signed in [
            format!("n\n42 x {at}\n[]"),
            format!("n\n42 1 {at} 9\n[]"),
            format!("n\n42 1 {at}"),
        ] {
            assert_eq!(
                inbox.open(&signed_raw(&signed), t0()),
                Err(Refused::Malformed)
            );
        }
        for body in ["{}", "[[\"e\",1]]", "[1]"] {
            let p = s.seal_at(&[body.to_string()], t0()).remove(0);
            assert_eq!(inbox.open(&p, t0()), Err(Refused::Malformed), "{body}");
        }
        let p = s.seal_at(&["[[\"zz\",1],[\"p\",\"u\",\"U\",false]]".into()], t0());
        assert_eq!(inbox.open(&p[0], t0()).unwrap().events.len(), 1);
    }

    #[test]
    fn payloads_signed_too_far_from_the_clock_are_stale() {
        let s = sealer("n");
        let body = one(&[presence()]);
        let mut inbox = inbox();
        let late = t0() + MAX_SKEW + Duration::from_secs(1);
        let p = s.seal_at(std::slice::from_ref(&body), t0()).remove(0);
        assert_eq!(inbox.open(&p, late), Err(Refused::Stale));
        let ahead = s.seal_at(std::slice::from_ref(&body), late).remove(0);
        assert_eq!(inbox.open(&ahead, t0()), Err(Refused::Stale));
        let p = s.seal_at(&[body], t0()).remove(0);
        assert!(inbox.open(&p, t0() + MAX_SKEW).is_ok(), "within the bound");
    }

    #[test]
    fn each_sequence_number_is_taken_once_and_commit_order_may_differ() {
        let s = sealer("n");
        let body = one(&[presence()]);
        let ps = s.seal_at(&vec![body; 10], t0());
        let mut inbox = inbox();
        // Committed out of signing order: all taken, each once.
        for i in [0, 3, 1, 2, 9, 5, 4, 8, 6, 7] {
            assert!(inbox.open(&ps[i], t0()).is_ok(), "payload {i}");
        }
        for (i, p) in ps.iter().enumerate() {
            assert_eq!(
                inbox.open(p, t0()),
                Err(Refused::Replayed),
                "payload {i} again"
            );
        }
        // The same sequence number from another incarnation is another sender.
        let again = Sealer::new(BusKey::derive(SECRET), "n", 43);
        let p = again.seal_at(&[one(&[presence()])], t0()).remove(0);
        assert!(inbox.open(&p, t0()).is_ok());
    }

    #[test]
    fn what_was_signed_before_this_node_listened_is_taken_only_after_its_sender_was_heard() {
        let s = sealer("n");
        let body = one(&[presence()]);
        let before = t0() - Duration::from_secs(5);
        let old = s.seal_at(&[body.clone(), body.clone()], before);
        let new = s.seal_at(&[body], t0());
        let mut inbox = inbox();
        // Signed before this inbox existed, from a sender never heard: it may
        // have been committed before and recorded by someone else.
        assert_eq!(inbox.open(&old[1], t0()), Err(Refused::Replayed));
        assert!(inbox.open(&new[0], t0()).is_ok());
        assert_eq!(
            inbox.open(&old[0], t0()),
            Err(Refused::Replayed),
            "below the first"
        );
        // Signed after: commit order, taken.
        let s2 = sealer("m");
        let ps = s2.seal_at(&[one(&[presence()]), one(&[presence()])], t0());
        assert!(inbox.open(&ps[1], t0()).is_ok());
        assert!(inbox.open(&ps[0], t0()).is_ok());
    }

    #[test]
    fn senders_are_bounded_and_forgotten_when_silent() {
        let body = one(&[presence()]);
        let mut inbox = inbox();
        for i in 0..MAX_SENDERS + 10 {
            let p = sealer(&format!("n{i}"))
                .seal_at(std::slice::from_ref(&body), t0())
                .remove(0);
            assert!(inbox.open(&p, t0()).is_ok());
        }
        assert_eq!(inbox.senders.len(), MAX_SENDERS);
        let later = t0() + FORGET_AFTER + Duration::from_secs(60);
        let p = sealer("late").seal_at(&[body], later).remove(0);
        assert!(inbox.open(&p, later).is_ok());
        assert_eq!(inbox.senders.len(), 1, "the silent ones forgotten");
    }

    /// What sealing and opening cost per payload (a full one: ~7.5 KB of
    /// events). `cargo test --release --lib -- --ignored --nocapture bus_cost`
    #[test]
    #[ignore]
    fn bus_cost() {
        let mut p = Payloads::new();
        let mut i = 1;
        loop {
            let e = entry(i, &"메시지 text ".repeat(10));
            p.push(
                encode_entry(&EntryRef::of(&e), i - 1, None, false),
                || unreachable!(),
            );
            if p.filled().len() == 1 {
                break;
            }
            i += 1;
        }
        let body = p.filled().remove(0);
        let s = sealer("node-a");
        let n = 20_000u32;
        let t = std::time::Instant::now();
        let mut sealed = Vec::with_capacity(n as usize);
        for _ in 0..n {
            sealed.push(s.seal_at(std::slice::from_ref(&body), t0()).remove(0));
        }
        let seal = t.elapsed() / n;
        let mut inbox = inbox();
        let t = std::time::Instant::now();
        for p in &sealed {
            inbox.open(p, t0()).unwrap();
        }
        let open = t.elapsed() / n;
        let key = BusKey::derive(SECRET);
        let t = std::time::Instant::now();
        for p in &sealed {
            let (_, signed) = p.split_once('\n').unwrap();
            let mut m = key.hmac();
            m.update(signed.as_bytes());
            std::hint::black_box(m.finalize());
        }
        let mac = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(decode_events(&body).unwrap());
        }
        let decode = t.elapsed() / n;
        println!(
            "payload of {} bytes, {} events: seal {seal:?}, open {open:?} \
             (of which the MAC {mac:?}; decoding the events alone {decode:?})",
            sealed[0].len(),
            i - 1
        );
    }
}
