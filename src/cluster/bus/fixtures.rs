//! What the bus's unit tests share: a secret, entries, a fixed clock, and a
//! sealer and an inbox under one key.

use std::time::{Duration, SystemTime};

use crate::db::entry::ChatEntry;
use crate::db::notify::MemberOp;

use super::inbox::{Inbox, Opened};
use super::key::BusKey;
use super::payloads::Payloads;
use super::refused::Refused;
use super::seal::Sealer;
use super::wire::{encode_presence, from_micros};

pub(super) const SECRET: &[u8] = b"a test secret";

pub(super) fn entry(id: i64, text: &str) -> ChatEntry {
    ChatEntry {
        id,
        ts: from_micros(1_700_000_000_123_456),
        kind: "msg".into(),
        room: "r_00000001".into(),
        from: "alice".into(),
        from_nickname: "앨리스".into(),
        to: None,
        text: text.into(),
        client_id: Some("c1".into()),
        edited_at: None,
        deleted: false,
        deleted_by: None,
    }
}

pub(super) fn bob_joined() -> MemberOp {
    MemberOp {
        joined: true,
        user: "bob".into(),
        nickname: "밥".into(),
    }
}

/// A moment after the test entries' time.
pub(super) fn t0() -> SystemTime {
    from_micros(1_700_000_100_000_000)
}

pub(super) fn sealer(node: &str) -> Sealer {
    Sealer::new(BusKey::derive(SECRET), node, 42)
}

pub(super) fn inbox() -> Inbox {
    Inbox::new(BusKey::derive(SECRET), t0() - Duration::from_secs(1))
}

pub(super) fn one(events: &[String]) -> String {
    let mut p = Payloads::new();
    for e in events {
        p.push(e.clone(), || unreachable!());
    }
    let mut out = p.finish();
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

pub(super) fn presence() -> String {
    encode_presence("bob", "밥", true)
}

/// Seals one event array holding `event`, and opens it.
pub(super) fn verdict(event: String) -> Result<Opened, Refused> {
    let p = sealer("n").seal_at(&[format!("[{event}]")], t0()).remove(0);
    inbox().open(&p, t0())
}
