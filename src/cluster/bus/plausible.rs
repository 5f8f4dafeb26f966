//! What a sealed note may claim: ids a cluster can reach, names and texts
//! that fit the columns they come from, known entry kinds, times near the
//! signing.
//!
//! Apart because it is a judgement of content, not of the seal: a payload
//! only gets here once its MAC, time and sequence number have passed.

use std::time::{Duration, SystemTime};

use crate::db::entry::ChatEntry;
use crate::db::notify::{BusEvent, MemberOp};

use super::wire::micros;

/// The largest entry id a plausible event names: ids come from one sequence
/// that no cluster takes this far, and JSON clients read ids up to it exactly.
pub const MAX_ID: i64 = 1 << 53;
/// `rooms.id` is `varchar(20)`.
const MAX_ROOM_ID: usize = 20;
/// Usernames and nicknames are `varchar(100)`.
const MAX_NAME: usize = 100;
/// What `msg` and `room_dm` accept (`handlers::messages::MAX_TEXT`).
const MAX_TEXT: usize = 4_000;
/// System entries name a nickname and at most a room name (255 characters):
/// bounded generously.
const MAX_SYSTEM_TEXT: usize = 1_000;
/// `chat_logs.client_id` is `varchar(64)`.
const MAX_CLIENT_ID: usize = 64;
/// `rooms.name` is `varchar(255)`.
const MAX_ROOM_NAME: usize = 255;
/// What `room_update` accepts as a topic (`handlers::room_admin::MAX_TOPIC`).
const MAX_TOPIC: usize = 500;
/// How far after its payload was signed an entry's time may lie (the
/// database's clock is not the signer's).
const TIME_AHEAD: Duration = Duration::from_secs(24 * 3600);

fn chars_within(s: &str, max: usize) -> bool {
    // Bytes bound characters from above: most strings need no count.
    s.len() <= max || s.chars().count() <= max
}

fn id_ok(id: i64) -> bool {
    (1..=MAX_ID).contains(&id)
}

fn room_ok(room: &str) -> bool {
    !room.is_empty() && chars_within(room, MAX_ROOM_ID)
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && chars_within(name, MAX_NAME)
}

/// An entry whose predecessor in its room is `prev`.
fn chained_ok(prev: i64, id: i64) -> bool {
    id_ok(id) && (0..id).contains(&prev)
}

/// What `kick` and `ban` accept as a reason (`handlers::moderation::MAX_REASON`).
const MAX_REASON: usize = 500;

fn op_ok(op: Option<&MemberOp>) -> bool {
    op.is_none_or(|o| name_ok(&o.user) && name_ok(&o.nickname))
}

fn entry_ok(e: &ChatEntry, signed_at: i64) -> bool {
    let latest = signed_at.saturating_add(TIME_AHEAD.as_micros() as i64);
    let time_ok = |t: SystemTime| micros(t) <= latest;
    let text_max = match e.kind.as_str() {
        "msg" | "dm" => MAX_TEXT,
        // The server API's announcements are as long as a message may be.
        "system" if e.from_nickname == crate::db::jobs::ANNOUNCEMENT => MAX_TEXT,
        "system" => MAX_SYSTEM_TEXT,
        _ => return false,
    };
    id_ok(e.id)
        && room_ok(&e.room)
        && name_ok(&e.from)
        && name_ok(&e.from_nickname)
        && e.to.as_deref().is_none_or(name_ok)
        && chars_within(&e.text, text_max)
        && e.client_id
            .as_deref()
            .is_none_or(|c| chars_within(c, MAX_CLIENT_ID))
        && time_ok(e.ts)
        && e.edited_at.is_none_or(time_ok)
        && e.deleted_by.as_deref().is_none_or(name_ok)
}

/// Whether an event is one a node could have sent: what the columns it comes
/// from can hold, ids a cluster can reach, times near its signing.
pub(super) fn plausible(ev: &BusEvent, signed_at: i64) -> bool {
    match ev {
        BusEvent::Entry {
            entry, prev, op, ..
        } => chained_ok(*prev, entry.id) && entry_ok(entry, signed_at) && op_ok(op.as_ref()),
        BusEvent::EntryRef { room, prev, id, op } => {
            room_ok(room) && chained_ok(*prev, *id) && op_ok(op.as_ref())
        }
        BusEvent::Change { entry } => entry_ok(entry, signed_at),
        BusEvent::ChangeRef { room, id } => room_ok(room) && id_ok(*id),
        BusEvent::Presence { user, nickname, .. } => name_ok(user) && name_ok(nickname),
        BusEvent::Follow { from, to, .. } => name_ok(from) && name_ok(to),
        // Nobody blocks themselves (`block` answers `SELF`).
        BusEvent::Block {
            blocker, blocked, ..
        } => name_ok(blocker) && name_ok(blocked) && blocker != blocked,
        BusEvent::ReadMarker { user, room, id } => name_ok(user) && room_ok(room) && id_ok(*id),
        BusEvent::Typing {
            room,
            user,
            nickname,
        } => room_ok(room) && name_ok(user) && name_ok(nickname),
        BusEvent::Role {
            room,
            user,
            role,
            by,
            ..
        } => {
            room_ok(room)
                && name_ok(user)
                && crate::db::jobs::Role::parse(role).is_some()
                && by.as_deref().is_none_or(name_ok)
        }
        BusEvent::Removal(r) => {
            room_ok(&r.room)
                && id_ok(r.id)
                && name_ok(&r.user)
                && name_ok(&r.by)
                && r.reason
                    .as_deref()
                    .is_none_or(|t| chars_within(t, MAX_REASON))
        }
        BusEvent::Invited { user, invite: i } => {
            let latest = signed_at.saturating_add(TIME_AHEAD.as_micros() as i64);
            name_ok(user)
                && room_ok(&i.room)
                && !i.name.is_empty()
                && chars_within(&i.name, MAX_ROOM_NAME)
                && name_ok(&i.by)
                && name_ok(&i.by_nickname)
                && micros(i.at) <= latest
        }
        BusEvent::RoomUpdated(u) => {
            room_ok(&u.room)
                && id_ok(u.id)
                && !u.name.is_empty()
                && chars_within(&u.name, MAX_ROOM_NAME)
                && u.topic
                    .as_deref()
                    .is_none_or(|t| chars_within(t, MAX_TOPIC))
                && name_ok(&u.by)
        }
        // A revocation (and a deletion) always moves the generation on from 0.
        BusEvent::Revoked { user, generation }
        | BusEvent::AccountDeleted {
            user, generation, ..
        } => name_ok(user) && id_ok(*generation),
        BusEvent::Disconnected { user } => name_ok(user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::bus::fixtures::{entry, t0, verdict};
    use crate::cluster::bus::refused::Refused;
    use crate::cluster::bus::wire::{
        encode_account_deleted, encode_block, encode_change, encode_change_ref,
        encode_disconnected, encode_entry, encode_entry_ref, encode_follow, encode_invited,
        encode_presence, encode_read_marker, encode_removal, encode_revoked, encode_role,
        encode_room_updated, encode_typing,
    };
    use crate::db::jobs::Invite;
    use crate::db::notify::{EntryRef, Removal, RoomUpdate};

    #[test]
    fn implausible_events_spoil_their_payload() {
        let invite = crate::db::jobs::Invite {
            room: "r".into(),
            name: "Room".into(),
            private: false,
            by: "a".into(),
            by_nickname: "A".into(),
            at: t0(),
        };
        assert!(verdict(encode_invited("bob", &invite)).is_ok());
        let update = RoomUpdate {
            room: "r".into(),
            id: 9,
            name: "n".repeat(MAX_ROOM_NAME),
            topic: Some("t".repeat(MAX_TOPIC)),
            private: true,
            by: "a".into(),
        };
        let removal = Removal {
            room: "r".into(),
            id: 9,
            user: "bob".into(),
            banned: false,
            by: "a".into(),
            reason: Some("r".repeat(MAX_REASON)),
        };
        assert!(verdict(encode_removal(&removal)).is_ok());
        let e = |f: &dyn Fn(&mut ChatEntry)| {
            let mut x = entry(7, "hi");
            f(&mut x);
            x
        };
        let entry_event =
            |x: &ChatEntry, prev: i64| encode_entry(&EntryRef::of(x), prev, None, false);
        assert!(verdict(entry_event(&entry(MAX_ID, "hi"), MAX_ID - 1)).is_ok());
        let dm = e(&|x| {
            x.kind = "dm".into();
            x.to = Some("bob".into());
            x.text = "x".repeat(MAX_TEXT);
        });
        assert!(verdict(entry_event(&dm, 6)).is_ok());
        assert!(verdict(encode_revoked("bob", 1)).is_ok());
        assert!(verdict(encode_account_deleted("bob", MAX_ID, true)).is_ok());
        let long_names = e(&|x| x.from_nickname = "닉".repeat(MAX_NAME));
        assert!(
            verdict(entry_event(&long_names, 6)).is_ok(),
            "characters, not bytes"
        );
        let implausible = [
            entry_event(&entry(9_000_000_000_000_000_000, "hi"), 1),
            entry_event(&entry(MAX_ID + 1, "hi"), 1),
            entry_event(&entry(0, "hi"), 0),
            entry_event(&entry(7, "hi"), 7),
            entry_event(&entry(7, "hi"), -1),
            entry_event(&e(&|x| x.room = String::new()), 6),
            entry_event(&e(&|x| x.room = "r".repeat(21)), 6),
            entry_event(&e(&|x| x.from = String::new()), 6),
            entry_event(&e(&|x| x.from_nickname = "닉".repeat(101)), 6),
            entry_event(&e(&|x| x.to = Some(String::new())), 6),
            entry_event(&e(&|x| x.kind = "sms".into()), 6),
            entry_event(&e(&|x| x.text = "x".repeat(MAX_TEXT + 1)), 6),
            entry_event(
                &e(&|x| {
                    x.kind = "system".into();
                    x.text = "x".repeat(MAX_SYSTEM_TEXT + 1);
                }),
                6,
            ),
            entry_event(&e(&|x| x.client_id = Some("c".repeat(65))), 6),
            entry_event(&e(&|x| x.ts = t0() + TIME_AHEAD * 2), 6),
            encode_entry(
                &EntryRef::of(&entry(7, "hi")),
                6,
                Some(&MemberOp {
                    joined: true,
                    user: String::new(),
                    nickname: "x".into(),
                }),
                false,
            ),
            encode_entry_ref("r", 9, 9, None),
            encode_entry_ref("", 1, 9, None),
            encode_change(&e(&|x| x.edited_at = Some(t0() + TIME_AHEAD * 2))),
            encode_change(&e(&|x| x.deleted_by = Some(String::new()))),
            encode_change_ref("r", 0),
            encode_presence("bob", "", false),
            encode_presence(&"b".repeat(101), "B", false),
            encode_follow("a", "", true),
            encode_block("a", "", true),
            encode_block(&"a".repeat(101), "b", true),
            encode_block("a", "a", true),
            encode_read_marker("a", "r", MAX_ID + 1),
            encode_typing("r", "a", ""),
            encode_role("r", "bob", "king", None, true),
            encode_role("r", "", "admin", None, true),
            encode_role("r", "bob", "admin", Some(""), true),
            encode_room_updated(&RoomUpdate {
                name: String::new(),
                ..update.clone()
            }),
            encode_room_updated(&RoomUpdate {
                topic: Some("t".repeat(MAX_TOPIC + 1)),
                ..update.clone()
            }),
            encode_room_updated(&RoomUpdate {
                name: "n".repeat(MAX_ROOM_NAME + 1),
                ..update.clone()
            }),
            encode_room_updated(&RoomUpdate {
                by: String::new(),
                ..update.clone()
            }),
            encode_room_updated(&RoomUpdate {
                id: 0,
                ..update.clone()
            }),
            encode_invited("", &invite),
            encode_removal(&Removal {
                id: 0,
                ..removal.clone()
            }),
            encode_removal(&Removal {
                by: String::new(),
                ..removal.clone()
            }),
            encode_removal(&Removal {
                reason: Some("r".repeat(MAX_REASON + 1)),
                ..removal.clone()
            }),
            encode_invited(
                "bob",
                &Invite {
                    by: String::new(),
                    ..invite.clone()
                },
            ),
            encode_invited(
                "bob",
                &Invite {
                    name: "n".repeat(MAX_ROOM_NAME + 1),
                    ..invite.clone()
                },
            ),
            encode_invited(
                "bob",
                &Invite {
                    at: t0() + TIME_AHEAD * 2,
                    ..invite.clone()
                },
            ),
            encode_revoked("", 1),
            encode_revoked(&"b".repeat(101), 1),
            encode_revoked("bob", 0),
            encode_revoked("bob", MAX_ID + 1),
            encode_account_deleted("", 1, false),
            encode_account_deleted("bob", -1, true),
            encode_account_deleted("bob", 0, false),
            encode_disconnected(""),
            encode_disconnected(&"d".repeat(101)),
        ];
        for ev in implausible {
            assert_eq!(verdict(ev.clone()), Err(Refused::Implausible), "{ev}");
        }
        assert_eq!(MAX_TEXT, crate::handlers::messages::MAX_TEXT);
        assert_eq!(MAX_TOPIC, crate::handlers::room_admin::MAX_TOPIC);
        assert_eq!(MAX_REASON, crate::handlers::moderation::MAX_REASON);
        assert!(verdict(encode_role("r", "bob", "owner", None, false)).is_ok());
        assert!(verdict(encode_room_updated(&update)).is_ok());
        assert!(verdict(encode_disconnected("bob")).is_ok());
    }

    #[test]
    fn announcements_may_be_as_long_as_messages_other_system_entries_may_not() {
        let mut e = entry(7, &"a".repeat(MAX_TEXT));
        e.kind = "system".into();
        e.from = "system".into();
        e.from_nickname = crate::db::jobs::ANNOUNCEMENT.into();
        assert!(entry_ok(&e, micros(t0())));
        e.from_nickname = "system".into();
        assert!(!entry_ok(&e, micros(t0())));
    }
}
