//! What nodes tell each other, and how it fits in PostgreSQL notifications.
//!
//! Every transaction that changes what other nodes show (entries, edits,
//! presence, follows) sends its events with `pg_notify('klav', …)` before it
//! commits: PostgreSQL delivers them to every listening node in commit order,
//! and only if the transaction commits. One batch of the writer is one
//! transaction, so notifications go per batch, not per message.
//!
//! A payload is `<node>\n<JSON array of events>`, at most [`MAX_PAYLOAD`] bytes
//! (PostgreSQL refuses 8,000). Events are packed into as few payloads as fit;
//! an entry too large for a payload of its own travels by reference
//! ([`BusEvent::EntryRef`]) and is read back from `chat_logs` by the receiver.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::entry::ChatEntry;

/// The channel every node listens on.
pub const CHANNEL: &str = "klav";

/// Largest payload sent: under PostgreSQL's 8,000-byte limit with room to spare.
pub const MAX_PAYLOAD: usize = 7_800;

/// A change of room membership carried with the system entry that announces it
/// (the entry's text names the nickname, not the user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberOp {
    pub joined: bool,
    pub user: String,
    pub nickname: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BusEvent {
    /// A new entry of a room; `prev` is the room's entry before it.
    Entry {
        entry: ChatEntry,
        prev: i64,
        op: Option<MemberOp>,
        /// A DM put into its recipient's offline queue (nobody delivers it live).
        queued: bool,
    },
    /// A new entry too large to carry: read it back (ids `prev` < id ≤ `id`).
    EntryRef {
        room: String,
        prev: i64,
        id: i64,
        op: Option<MemberOp>,
    },
    /// An entry edited or deleted (the row as it is now).
    Change { entry: ChatEntry },
    /// An entry edited, too large to carry: read it back.
    ChangeRef { room: String, id: i64 },
    /// A user's first connection in the cluster opened, or their last closed.
    Presence {
        user: String,
        nickname: String,
        online: bool,
    },
    /// `from` followed (`on`) or unfollowed `to`.
    Follow { from: String, to: String, on: bool },
    /// A user's read marker in a room moved (their other connections hear it).
    ReadMarker { user: String, room: String, id: i64 },
    /// Someone is typing in a room (ephemeral: never stored).
    Typing {
        room: String,
        user: String,
        nickname: String,
    },
}

/// Packs encoded events into payloads of at most [`MAX_PAYLOAD`] bytes.
pub struct Payloads {
    head: String,
    out: Vec<String>,
    cur: String,
}

impl Payloads {
    pub fn new(node: &str) -> Payloads {
        Payloads {
            head: format!("{node}\n["),
            out: Vec::new(),
            cur: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.cur.is_empty()
    }

    /// Adds one encoded event; `fallback` encodes a smaller stand-in (a
    /// reference) for an event too large for a payload of its own.
    pub fn push(&mut self, event: String, fallback: impl FnOnce() -> String) {
        let event = if self.head.len() + event.len() + 1 > MAX_PAYLOAD {
            fallback()
        } else {
            event
        };
        if !self.cur.is_empty() && self.cur.len() + event.len() + 2 > MAX_PAYLOAD {
            self.flush();
        }
        if self.cur.is_empty() {
            self.cur.push_str(&self.head);
        } else {
            self.cur.push(',');
        }
        self.cur.push_str(&event);
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.cur.push(']');
            self.out.push(std::mem::take(&mut self.cur));
        }
    }

    pub fn finish(mut self) -> Vec<String> {
        self.flush();
        self.out
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn op_field(op: Option<&MemberOp>) -> Value {
    match op {
        None => Value::Null,
        Some(o) => serde_json::json!([if o.joined { "j" } else { "l" }, o.user, o.nickname]),
    }
}

/// The fields of an entry, borrowed (the writer encodes without copying).
pub struct EntryRef<'a> {
    pub id: i64,
    pub ts: SystemTime,
    pub kind: &'a str,
    pub room: &'a str,
    pub from: &'a str,
    pub from_nickname: &'a str,
    pub to: Option<&'a str>,
    pub text: &'a str,
    pub client_id: Option<&'a str>,
}

impl<'a> EntryRef<'a> {
    pub fn of(e: &'a ChatEntry) -> EntryRef<'a> {
        EntryRef {
            id: e.id,
            ts: e.ts,
            kind: &e.kind,
            room: &e.room,
            from: &e.from,
            from_nickname: &e.from_nickname,
            to: e.to.as_deref(),
            text: &e.text,
            client_id: e.client_id.as_deref(),
        }
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
        e.deleted
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

/// A payload that does not decode (another program on the channel, a newer
/// node's event kind): its events are skipped.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPayload;

/// Splits a payload into the sending node's name and its events. Unknown event
/// kinds are skipped (a newer node may send more than this one knows).
pub fn decode(payload: &str) -> Result<(String, Vec<BusEvent>), BadPayload> {
    let (node, body) = payload.split_once('\n').ok_or(BadPayload)?;
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(body) else {
        return Err(BadPayload);
    };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(f) = item else {
            return Err(BadPayload);
        };
        if let Some(ev) = decode_event(&f) {
            events.push(ev);
        } else if matches!(
            f.first().and_then(Value::as_str),
            Some("e" | "r" | "c" | "x" | "p" | "f" | "m" | "t")
        ) {
            return Err(BadPayload);
        }
    }
    Ok((node.to_string(), events))
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
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, text: &str) -> ChatEntry {
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
        }
    }

    fn bob_joined() -> MemberOp {
        MemberOp {
            joined: true,
            user: "bob".into(),
            nickname: "밥".into(),
        }
    }

    #[test]
    fn events_round_trip() {
        let e = entry(7, "hi \"there\"\n");
        let mut p = Payloads::new("node-a");
        p.push(
            encode_entry(&EntryRef::of(&e), 5, Some(&bob_joined()), false),
            || unreachable!(),
        );
        p.push(encode_presence("bob", "밥", true), || unreachable!());
        p.push(encode_follow("a", "b", false), || unreachable!());
        p.push(encode_read_marker("a", "r", 9), || unreachable!());
        p.push(encode_typing("r", "a", "A"), || unreachable!());
        let mut changed = entry(7, "");
        changed.deleted = true;
        changed.edited_at = Some(from_micros(1_700_000_001_000_000));
        p.push(encode_change(&changed), || unreachable!());
        let out = p.finish();
        assert_eq!(out.len(), 1);
        let (node, events) = decode(&out[0]).unwrap();
        assert_eq!(node, "node-a");
        assert_eq!(
            events,
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
            ]
        );
    }

    #[test]
    fn payloads_stay_under_the_limit_and_large_entries_go_by_reference() {
        let mut p = Payloads::new("n");
        for i in 0..100 {
            let e = entry(i, &"x".repeat(500));
            p.push(
                encode_entry(&EntryRef::of(&e), i - 1, None, false),
                || unreachable!(),
            );
        }
        let big = entry(1000, &"\u{1}".repeat(4000));
        p.push(encode_entry(&EntryRef::of(&big), 99, None, false), || {
            encode_entry_ref(&big.room, 99, big.id, None)
        });
        let out = p.finish();
        assert!(out.len() > 1);
        let mut ids = Vec::new();
        for payload in &out {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            for ev in decode(payload).unwrap().1 {
                match ev {
                    BusEvent::Entry { entry, .. } => ids.push(entry.id),
                    BusEvent::EntryRef { id, prev, .. } => {
                        assert_eq!(prev, 99);
                        ids.push(id)
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let want: Vec<i64> = (0..100).chain([1000]).collect();
        assert_eq!(ids, want, "every event once, in order");
    }

    #[test]
    fn foreign_payloads_are_refused_and_unknown_kinds_skipped() {
        assert_eq!(decode("no newline"), Err(BadPayload));
        assert_eq!(decode("n\n{}"), Err(BadPayload));
        assert_eq!(decode("n\n[[\"e\",1]]"), Err(BadPayload));
        let (_, events) = decode("n\n[[\"zz\",1],[\"p\",\"u\",\"U\",false]]").unwrap();
        assert_eq!(events.len(), 1);
    }
}
