//! The sending end: [`Sealer`] signs this process's payloads under the bus key
//! with its name, incarnation, sequence number and time, and is the
//! [`Notifier`] through which the database threads add a transaction's notes.
//!
//! Apart from the inbox because the two ends run on different threads and
//! share only the key and the layout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use hmac::Mac;

use crate::db::entry::ChatEntry;
use crate::db::jobs::Invite;
use crate::db::notify::{EntryRef, MemberOp, Notes, Notifier, Removal, RoomUpdate};

use super::key::BusKey;
use super::layout::{push_hex, MAC_LEN, MAX_NODE_NAME, MAX_PAYLOAD, VERSION};
use super::payloads::Payloads;
use super::wire::{
    encode_account_deleted, encode_block, encode_change, encode_change_ref, encode_entry,
    encode_entry_ref, encode_follow, encode_invited, encode_presence, encode_read_marker,
    encode_removal, encode_revoked, encode_role, encode_room_updated, micros,
};

/// Seals this process's payloads: its name and incarnation, the next of its
/// sequence numbers and the time, under the bus key. One per process, shared
/// by every thread that notifies (the writer, the workers), so that a
/// receiver sees one sequence per sender.
pub struct Sealer {
    key: BusKey,
    node: String,
    incarnation: i64,
    next: AtomicU64,
}

impl Sealer {
    /// `node` is at most [`MAX_NODE_NAME`] bytes without line breaks (the
    /// configuration makes sure of it).
    pub fn new(key: BusKey, node: &str, incarnation: i64) -> Sealer {
        assert!(
            node.len() <= MAX_NODE_NAME && !node.contains('\n'),
            "a node name is at most {MAX_NODE_NAME} bytes on one line"
        );
        Sealer {
            key,
            node: node.to_string(),
            incarnation,
            next: AtomicU64::new(1),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Seals event arrays (from [`Payloads::finish`]), now.
    pub fn seal(&self, bodies: &[String]) -> Vec<String> {
        self.seal_at(bodies, SystemTime::now())
    }

    /// Seals event arrays as if it were `now` (tests forge old payloads).
    pub fn seal_at(&self, bodies: &[String], now: SystemTime) -> Vec<String> {
        let at = micros(now);
        bodies
            .iter()
            .map(|body| {
                let seq = self.next.fetch_add(1, Ordering::Relaxed);
                let head = format!("{}\n{} {seq} {at}\n", self.node, self.incarnation);
                let mut m = self.key.hmac();
                m.update(head.as_bytes());
                m.update(body.as_bytes());
                let tag = m.finalize().into_bytes();
                let mut out = String::with_capacity(
                    VERSION.len() + 2 + 2 * MAC_LEN + head.len() + body.len(),
                );
                out.push_str(VERSION);
                out.push(' ');
                push_hex(&mut out, &tag);
                out.push('\n');
                out.push_str(&head);
                out.push_str(body);
                debug_assert!(out.len() <= MAX_PAYLOAD, "{} bytes", out.len());
                out
            })
            .collect()
    }
}

/// The database threads note through the sealer: each transaction's notes
/// are packed into event arrays as they are added, and sealed at the end.
impl Notifier for Sealer {
    fn node(&self) -> &str {
        &self.node
    }

    fn notes(&self) -> Box<dyn Notes + '_> {
        Box::new(SealedNotes {
            sealer: self,
            payloads: Payloads::new(),
        })
    }

    fn seal(&self, bodies: &[String]) -> Vec<String> {
        Sealer::seal(self, bodies)
    }
}

/// One transaction's notes, sealed by [`Sealer`] when it is done.
struct SealedNotes<'a> {
    sealer: &'a Sealer,
    payloads: Payloads,
}

impl Notes for SealedNotes<'_> {
    fn entry(&mut self, e: &EntryRef<'_>, prev: i64, op: Option<&MemberOp>, queued: bool) {
        self.payloads.push(encode_entry(e, prev, op, queued), || {
            encode_entry_ref(e.room, prev, e.id, op)
        });
    }

    fn change(&mut self, e: &ChatEntry) {
        self.payloads
            .push(encode_change(e), || encode_change_ref(&e.room, e.id));
    }

    fn read_marker(&mut self, user: &str, room: &str, id: i64) {
        self.small(encode_read_marker(user, room, id));
    }

    fn follow(&mut self, from: &str, to: &str, on: bool) {
        self.small(encode_follow(from, to, on));
    }

    fn block(&mut self, blocker: &str, blocked: &str, on: bool) {
        self.small(encode_block(blocker, blocked, on));
    }

    fn presence(&mut self, user: &str, nickname: &str, online: bool) {
        self.small(encode_presence(user, nickname, online));
    }

    fn role(&mut self, room: &str, user: &str, role: &str, by: Option<&str>, told: bool) {
        self.small(encode_role(room, user, role, by, told));
    }

    fn invited(&mut self, user: &str, invite: &Invite) {
        self.small(encode_invited(user, invite));
    }

    fn removal(&mut self, r: &Removal) {
        self.small(encode_removal(r));
    }

    fn room_updated(&mut self, u: &RoomUpdate) {
        self.small(encode_room_updated(u));
    }

    fn revoked(&mut self, user: &str, generation: i64) {
        self.small(encode_revoked(user, generation));
    }

    fn account_deleted(&mut self, user: &str, generation: i64, erased: bool) {
        self.small(encode_account_deleted(user, generation, erased));
    }

    fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    fn seal(self: Box<Self>) -> Vec<String> {
        let sealer = self.sealer;
        sealer.seal(&self.payloads.finish())
    }
}

impl SealedNotes<'_> {
    /// An event that always fits a payload of its own.
    fn small(&mut self, event: String) {
        self.payloads
            .push(event, || unreachable!("a small event always fits"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::bus::fixtures::{entry, inbox, SECRET};
    use crate::cluster::bus::wire::from_micros;
    use crate::db::notify::BusEvent;

    #[test]
    fn sealed_payloads_stay_under_the_limit_and_large_entries_go_by_reference() {
        let mut p = Payloads::new();
        for i in 1..=100 {
            let e = entry(i, &"x".repeat(500));
            p.push(
                encode_entry(&EntryRef::of(&e), i - 1, None, false),
                || unreachable!(),
            );
        }
        let big = entry(1000, &"\u{1}".repeat(4000));
        p.push(encode_entry(&EntryRef::of(&big), 100, None, false), || {
            encode_entry_ref(&big.room, 100, big.id, None)
        });
        let bodies = p.finish();
        assert!(bodies.len() > 1);
        // The longest name a header may carry.
        let s = Sealer::new(BusKey::derive(SECRET), &"n".repeat(MAX_NODE_NAME), i64::MAX);
        s.next.store(u64::MAX - 1_000, Ordering::Relaxed);
        let mut inbox = inbox();
        let mut ids = Vec::new();
        for payload in s.seal_at(&bodies, from_micros(i64::MAX / 2)) {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let opened = inbox.open(&payload, from_micros(i64::MAX / 2));
            for ev in opened.unwrap().events {
                match ev {
                    BusEvent::Entry { entry, .. } => ids.push(entry.id),
                    BusEvent::EntryRef { id, prev, .. } => {
                        assert_eq!(prev, 100);
                        ids.push(id)
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let want: Vec<i64> = (1..=100).chain([1000]).collect();
        assert_eq!(ids, want, "every event once, in order");
    }
}
