//! The wire format of bus events: each [`BusEvent`] as a short JSON array whose
//! first field names its kind, and back; times travel as µs since the epoch.
//!
//! Apart from the seal because it is what a payload says, not how it is
//! vouched for: the sealer's notes (and the loop's typing notices) encode
//! with it, the inbox decodes with it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::db::entry::ChatEntry;
use crate::db::jobs::Invite;
use crate::db::notify::{BusEvent, EntryRef, MemberOp, Removal, RoomUpdate};

/// A time as it travels: µs since the epoch (0 for a time before it).
pub(super) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A time from µs since the epoch (the epoch for a negative count).
pub(super) fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn op_field(op: Option<&MemberOp>) -> Value {
    match op {
        None => Value::Null,
        Some(o) => serde_json::json!([if o.joined { "j" } else { "l" }, o.user, o.nickname]),
    }
}

pub fn encode_entry(e: &EntryRef<'_>, prev: i64, op: Option<&MemberOp>, queued: bool) -> String {
    serde_json::json!([
        "e",
        e.room,
        prev,
        e.id,
        micros(e.ts),
        e.kind,
        e.from,
        e.from_nickname,
        e.to,
        e.text,
        e.client_id,
        op_field(op),
        queued
    ])
    .to_string()
}

pub fn encode_entry_ref(room: &str, prev: i64, id: i64, op: Option<&MemberOp>) -> String {
    serde_json::json!(["r", room, prev, id, op_field(op)]).to_string()
}

pub fn encode_change(e: &ChatEntry) -> String {
    serde_json::json!([
        "c",
        e.room,
        e.id,
        micros(e.ts),
        e.kind,
        e.from,
        e.from_nickname,
        e.to,
        e.text,
        e.client_id,
        e.edited_at.map(micros),
        e.deleted,
        e.deleted_by
    ])
    .to_string()
}

pub fn encode_change_ref(room: &str, id: i64) -> String {
    serde_json::json!(["x", room, id]).to_string()
}

pub fn encode_read_marker(user: &str, room: &str, id: i64) -> String {
    serde_json::json!(["m", user, room, id]).to_string()
}

pub fn encode_typing(room: &str, user: &str, nickname: &str) -> String {
    serde_json::json!(["t", room, user, nickname]).to_string()
}

pub fn encode_presence(user: &str, nickname: &str, online: bool) -> String {
    serde_json::json!(["p", user, nickname, online]).to_string()
}

pub fn encode_follow(from: &str, to: &str, on: bool) -> String {
    serde_json::json!(["f", from, to, on]).to_string()
}

pub fn encode_block(blocker: &str, blocked: &str, on: bool) -> String {
    serde_json::json!(["b", blocker, blocked, on]).to_string()
}

pub fn encode_role(room: &str, user: &str, role: &str, by: Option<&str>, told: bool) -> String {
    serde_json::json!(["o", room, user, role, by, told]).to_string()
}

pub fn encode_invited(user: &str, i: &Invite) -> String {
    serde_json::json!([
        "n",
        user,
        i.room,
        i.name,
        i.private,
        i.by,
        i.by_nickname,
        micros(i.at)
    ])
    .to_string()
}

pub fn encode_removal(r: &Removal) -> String {
    serde_json::json!(["k", r.room, r.id, r.user, r.banned, r.by, r.reason]).to_string()
}

pub fn encode_room_updated(u: &RoomUpdate) -> String {
    serde_json::json!(["u", u.room, u.id, u.name, u.topic, u.private, u.by]).to_string()
}

pub fn encode_revoked(user: &str, generation: i64) -> String {
    serde_json::json!(["v", user, generation]).to_string()
}

pub fn encode_disconnected(user: &str) -> String {
    serde_json::json!(["q", user]).to_string()
}

pub fn encode_account_deleted(user: &str, generation: i64, erased: bool) -> String {
    serde_json::json!(["d", user, generation, erased]).to_string()
}

/// A sealed payload's events. Unknown event kinds are skipped (a newer node
/// may send more than this one knows); a known kind that does not decode
/// spoils the payload.
pub(super) fn decode_events(body: &str) -> Option<Vec<BusEvent>> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(body) else {
        return None;
    };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(f) = item else {
            return None;
        };
        if let Some(ev) = decode_event(&f) {
            events.push(ev);
        } else if matches!(
            f.first().and_then(Value::as_str),
            Some(
                "e" | "r"
                    | "c"
                    | "x"
                    | "p"
                    | "f"
                    | "b"
                    | "m"
                    | "t"
                    | "o"
                    | "u"
                    | "n"
                    | "k"
                    | "v"
                    | "d"
            )
        ) {
            return None;
        }
    }
    Some(events)
}

fn s(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

fn opt_s(v: Option<&Value>) -> Option<Option<String>> {
    match v {
        Some(Value::Null) => Some(None),
        Some(Value::String(x)) => Some(Some(x.clone())),
        _ => None,
    }
}

fn op(v: Option<&Value>) -> Option<Option<MemberOp>> {
    match v? {
        Value::Null => Some(None),
        Value::Array(f) => Some(Some(MemberOp {
            joined: match f.first()?.as_str()? {
                "j" => true,
                "l" => false,
                _ => return None,
            },
            user: s(f.get(1))?,
            nickname: s(f.get(2))?,
        })),
        _ => None,
    }
}

/// An entry's fields as `encode_entry` and `encode_change` lay them out: the
/// room first, then from `at` on its id, time, kind, sender, nickname,
/// recipient, text and client id.
fn entry_at(f: &[Value], at: usize) -> Option<ChatEntry> {
    let i = |n: usize| f.get(n).and_then(Value::as_i64);
    Some(ChatEntry {
        room: s(f.get(1))?,
        id: i(at)?,
        ts: from_micros(i(at + 1)?),
        kind: s(f.get(at + 2))?,
        from: s(f.get(at + 3))?,
        from_nickname: s(f.get(at + 4))?,
        to: opt_s(f.get(at + 5))?,
        text: s(f.get(at + 6))?,
        client_id: opt_s(f.get(at + 7))?,
        edited_at: None,
        deleted: false,
        deleted_by: None,
    })
}

fn decode_event(f: &[Value]) -> Option<BusEvent> {
    let i = |n: usize| f.get(n).and_then(Value::as_i64);
    match f.first()?.as_str()? {
        "e" => Some(BusEvent::Entry {
            prev: i(2)?,
            entry: entry_at(f, 3)?,
            op: op(f.get(11))?,
            queued: f.get(12)?.as_bool()?,
        }),
        "r" => Some(BusEvent::EntryRef {
            room: s(f.get(1))?,
            prev: i(2)?,
            id: i(3)?,
            op: op(f.get(4))?,
        }),
        "c" => Some(BusEvent::Change {
            entry: ChatEntry {
                edited_at: match f.get(10)? {
                    Value::Null => None,
                    v => Some(from_micros(v.as_i64()?)),
                },
                deleted: f.get(11)?.as_bool()?,
                // Absent from a node that does not know moderation deletes.
                deleted_by: match f.get(12) {
                    None => None,
                    v => opt_s(v)?,
                },
                ..entry_at(f, 2)?
            },
        }),
        "x" => Some(BusEvent::ChangeRef {
            room: s(f.get(1))?,
            id: i(2)?,
        }),
        "m" => Some(BusEvent::ReadMarker {
            user: s(f.get(1))?,
            room: s(f.get(2))?,
            id: i(3)?,
        }),
        "t" => Some(BusEvent::Typing {
            room: s(f.get(1))?,
            user: s(f.get(2))?,
            nickname: s(f.get(3))?,
        }),
        "p" => Some(BusEvent::Presence {
            user: s(f.get(1))?,
            nickname: s(f.get(2))?,
            online: f.get(3)?.as_bool()?,
        }),
        "f" => Some(BusEvent::Follow {
            from: s(f.get(1))?,
            to: s(f.get(2))?,
            on: f.get(3)?.as_bool()?,
        }),
        "b" => Some(BusEvent::Block {
            blocker: s(f.get(1))?,
            blocked: s(f.get(2))?,
            on: f.get(3)?.as_bool()?,
        }),
        "o" => Some(BusEvent::Role {
            room: s(f.get(1))?,
            user: s(f.get(2))?,
            role: s(f.get(3))?,
            by: opt_s(f.get(4))?,
            told: f.get(5)?.as_bool()?,
        }),
        "n" => Some(BusEvent::Invited {
            user: s(f.get(1))?,
            invite: Invite {
                room: s(f.get(2))?,
                name: s(f.get(3))?,
                private: f.get(4)?.as_bool()?,
                by: s(f.get(5))?,
                by_nickname: s(f.get(6))?,
                at: from_micros(i(7)?),
            },
        }),
        "k" => Some(BusEvent::Removal(Removal {
            room: s(f.get(1))?,
            id: i(2)?,
            user: s(f.get(3))?,
            banned: f.get(4)?.as_bool()?,
            by: s(f.get(5))?,
            reason: opt_s(f.get(6))?,
        })),
        "u" => Some(BusEvent::RoomUpdated(RoomUpdate {
            room: s(f.get(1))?,
            id: i(2)?,
            name: s(f.get(3))?,
            topic: opt_s(f.get(4))?,
            private: f.get(5)?.as_bool()?,
            by: s(f.get(6))?,
        })),
        "v" => Some(BusEvent::Revoked {
            user: s(f.get(1))?,
            generation: i(2)?,
        }),
        "q" => Some(BusEvent::Disconnected { user: s(f.get(1))? }),
        "d" => Some(BusEvent::AccountDeleted {
            user: s(f.get(1))?,
            generation: i(2)?,
            erased: f.get(3)?.as_bool()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::bus::fixtures::{bob_joined, entry, inbox, one, sealer, t0};

    #[test]
    fn events_round_trip_sealed() {
        let e = entry(7, "hi \"there\"\n");
        let update = RoomUpdate {
            room: "r".into(),
            id: 9,
            name: "Room".into(),
            topic: None,
            private: true,
            by: "a".into(),
        };
        let kicked = Removal {
            room: "r".into(),
            id: 8,
            user: "bob".into(),
            banned: true,
            by: "a".into(),
            reason: Some("spam".into()),
        };
        let invite = Invite {
            room: "r".into(),
            name: "Room".into(),
            private: true,
            by: "a".into(),
            by_nickname: "A".into(),
            at: from_micros(1_700_000_000_000_000),
        };
        let mut changed = entry(7, "");
        changed.deleted = true;
        changed.deleted_by = Some("mod".into());
        changed.edited_at = Some(from_micros(1_700_000_001_000_000));
        let body = one(&[
            encode_entry(&EntryRef::of(&e), 5, Some(&bob_joined()), false),
            encode_presence("bob", "밥", true),
            encode_follow("a", "b", false),
            encode_block("a", "b", true),
            encode_read_marker("a", "r", 9),
            encode_typing("r", "a", "A"),
            encode_change(&changed),
            encode_role("r", "bob", "admin", Some("a"), true),
            encode_room_updated(&update),
            encode_invited("bob", &invite),
            encode_removal(&kicked),
            encode_revoked("bob", 3),
            encode_account_deleted("carol", 2, true),
            encode_disconnected("dave"),
        ]);
        let sealed = sealer("node-a").seal_at(&[body], t0());
        let opened = inbox().open(&sealed[0], t0()).unwrap();
        assert_eq!(opened.node, "node-a");
        assert_eq!(
            opened.events,
            vec![
                BusEvent::Entry {
                    entry: e,
                    prev: 5,
                    op: Some(bob_joined()),
                    queued: false
                },
                BusEvent::Presence {
                    user: "bob".into(),
                    nickname: "밥".into(),
                    online: true
                },
                BusEvent::Follow {
                    from: "a".into(),
                    to: "b".into(),
                    on: false
                },
                BusEvent::Block {
                    blocker: "a".into(),
                    blocked: "b".into(),
                    on: true
                },
                BusEvent::ReadMarker {
                    user: "a".into(),
                    room: "r".into(),
                    id: 9
                },
                BusEvent::Typing {
                    room: "r".into(),
                    user: "a".into(),
                    nickname: "A".into()
                },
                BusEvent::Change { entry: changed },
                BusEvent::Role {
                    room: "r".into(),
                    user: "bob".into(),
                    role: "admin".into(),
                    by: Some("a".into()),
                    told: true
                },
                BusEvent::RoomUpdated(update),
                BusEvent::Invited {
                    user: "bob".into(),
                    invite
                },
                BusEvent::Removal(kicked),
                BusEvent::Revoked {
                    user: "bob".into(),
                    generation: 3,
                },
                BusEvent::AccountDeleted {
                    user: "carol".into(),
                    generation: 2,
                    erased: true
                },
                BusEvent::Disconnected {
                    user: "dave".into()
                },
            ]
        );
    }
}
