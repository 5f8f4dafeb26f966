//! The writer's SQL for rooms and membership: `create_room`, `join` (creating a
//! room joined by a name no room has), `leave` (passing on the ownership of an
//! owner who leaves), and the system entries that announce them. Separate from
//! messages: each of these writes one entry, with the membership change it
//! carries for the other nodes.

use std::borrow::Cow;

use postgres::Transaction;

use super::chain::{lock_rooms, Batch, Last};
use super::written::{Linked, Written};
use crate::db::entry::ChatEntry;
use crate::db::error::DbError;
use crate::db::jobs::{open_invite, JoinBy, JoinResult, Role};
use crate::db::notify::{EntryRef, MemberOp};
use crate::db::outbox::{self, Departure};
use crate::db::rows::Stmts;
use crate::names::SystemText;

/// What `create_room` asks for, as the writer needs it.
pub(super) struct NewRoom<'a> {
    pub(super) name: &'a str,
    pub(super) creator: &'a str,
    pub(super) creator_nickname: &'a str,
    pub(super) private: bool,
    pub(super) topic: Option<&'a str>,
}

/// `Job::CreateRoom`: the room (owned by its creator) and the system entry
/// announcing it; a private room's creator is made a member in the same
/// transaction, with the `joined` entry. Without a creator (the server API's
/// room without an owner) the room has no owner and no member.
pub(super) fn write_create_room(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    new: &NewRoom<'_>,
) -> Result<Linked, DbError> {
    let mut logged = Vec::new();
    let room = create_room(tx, st, new, b, &mut logged)?;
    if new.private && !new.creator.is_empty() {
        add_member(
            tx,
            st,
            &room,
            new.creator,
            new.creator_nickname,
            b,
            &mut logged,
        )?;
    }
    let link = b.chain.link(&logged);
    Ok((Written::RoomCreated { room, logged }, link))
}

/// `Job::Join`: the membership and, when it is new, its system entry (and the
/// room's, when the join created it); an invitation to the room is used up.
pub(super) fn write_join(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    username: &str,
    nickname: &str,
    by: &JoinBy,
    max_rooms: i64,
) -> Result<Linked, DbError> {
    let mut logged = Vec::new();
    let joiner = Joiner {
        username,
        nickname,
        max_rooms,
    };
    let result = join(tx, st, &joiner, by, b, &mut logged)?;
    let link = b.chain.link(&logged);
    Ok((Written::Join { result, logged }, link))
}

/// `Job::Leave`: the membership removed and, if there was one, the system
/// entry announcing it.
pub(super) fn write_leave(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    username: &str,
    nickname: &str,
    room: &str,
) -> Result<Linked, DbError> {
    let s = st.get(
        tx,
        "DELETE FROM room_members WHERE room_id = $1 AND username = $2",
    )?;
    let was_member = tx.execute(&s, &[&room, &username])? > 0;
    let mut logged = Vec::new();
    let mut heir = None;
    if was_member {
        let text = SystemText::Left { nickname }.render();
        let op = MemberOp {
            joined: false,
            user: username.to_string(),
            nickname: nickname.to_string(),
        };
        system_entry(tx, st, room, text, b, Some(&op), &mut logged)?;
        b.chain
            .report(|| outbox::member_left(room, username, nickname, Departure::Left));
        heir = pass_ownership(tx, st, b, room, username)?;
    }
    let link = b.chain.link(&logged);
    Ok((
        Written::Leave {
            was_member,
            heir,
            logged,
        },
        link,
    ))
}

/// A member left (or was removed): if they owned the room, it passes to the
/// admin who joined first, else to the member who joined first; a room left
/// empty keeps no owner. `None`: they did not own it; `Some(heir)`: they did.
/// Every way out of a room goes through here, so none can leave it ownerless
/// while it has members.
pub(super) fn pass_ownership(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    room: &str,
    leaver: &str,
) -> Result<Option<Option<String>>, DbError> {
    let s = st.get(
        tx,
        "UPDATE rooms SET klav_owner = (\
             SELECT m.username FROM room_members m WHERE m.room_id = $1 \
             ORDER BY (m.klav_role = 'admin') DESC, m.joined_at, m.id LIMIT 1) \
         WHERE id = $1 AND klav_owner = $2 RETURNING klav_owner",
    )?;
    let Some(row) = tx.query_opt(&s, &[&room, &leaver])? else {
        return Ok(None);
    };
    let heir: Option<String> = row.get(0);
    if let Some(h) = &heir {
        b.chain
            .note(|n| n.role(room, h, Role::Owner.as_str(), None, true));
    }
    Ok(Some(heir))
}

pub(super) fn system_entry(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    text: String,
    b: &mut Batch<'_, '_>,
    op: Option<&MemberOp>,
    logged: &mut Vec<ChatEntry>,
) -> Result<(), DbError> {
    system_entry_then(tx, st, room, text, b, op, logged, |_, _| {})
}

/// [`system_entry`], with `before` run once the entry's id is known and
/// before the entry is chained (and noted): a note that must reach the other
/// nodes ahead of the entry (a removal).
#[allow(clippy::too_many_arguments)]
pub(super) fn system_entry_then(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    text: String,
    b: &mut Batch<'_, '_>,
    op: Option<&MemberOp>,
    logged: &mut Vec<ChatEntry>,
    before: impl FnOnce(&mut Batch<'_, '_>, i64),
) -> Result<(), DbError> {
    let s = st.get(
        tx,
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
         VALUES ($1, now(), 'system', 'system', 'system', NULL, $2) RETURNING id, ts",
    )?;
    let row = tx.query_one(&s, &[&room, &text])?;
    let id: i64 = row.get(0);
    before(b, id);
    b.lasts.insert(
        Cow::Owned(room.to_string()),
        Last {
            id,
            text: Cow::Owned(text.clone()),
            from: "system",
            kind: "system",
        },
    );
    let entry = ChatEntry {
        id,
        ts: row.get(1),
        kind: "system".into(),
        room: room.to_string(),
        from: "system".into(),
        from_nickname: "system".into(),
        to: None,
        text,
        client_id: None,
        edited_at: None,
        deleted: false,
        deleted_by: None,
    };
    b.chain.append(&EntryRef::of(&entry), op, false);
    logged.push(entry);
    Ok(())
}

/// A fresh `r_` + 8 lowercase hex digits from the OS's cryptographic RNG.
pub fn new_room_id() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS random source failed");
    format!("r_{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

fn create_room(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    new: &NewRoom<'_>,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<String, DbError> {
    let s = st.get(
        tx,
        "INSERT INTO rooms (id, name, created_at, klav_owner, klav_private, klav_topic) \
         VALUES ($1, $2, clock_timestamp(), NULLIF($3, ''), $4, $5) ON CONFLICT (id) DO NOTHING",
    )?;
    loop {
        let id = new_room_id();
        let row: [&(dyn postgres::types::ToSql + Sync); 5] =
            [&id, &new.name, &new.creator, &new.private, &new.topic];
        if tx.execute(&s, &row)? == 1 {
            let text = SystemText::Created {
                room: new.name,
                creator: new.creator_nickname,
            }
            .render();
            // A new room: nobody else can add to it before this commits.
            b.chain.last.insert(id.clone(), 0);
            system_entry(tx, st, &id, text, b, None, logged)?;
            return Ok(id);
        }
    }
}

/// Who joins, and the bound on what they hold.
struct Joiner<'a> {
    username: &'a str,
    nickname: &'a str,
    max_rooms: i64,
}

/// What decides whether a user may join an existing room.
struct Admission {
    private: bool,
    member: bool,
    invited: bool,
    banned: bool,
}

fn admission(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    username: &str,
) -> Result<Option<Admission>, DbError> {
    let s = st.get(
        tx,
        concat!(
            "SELECT r.klav_private, \
                EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = r.id AND m.username = $2), \
                EXISTS (SELECT 1 FROM klav_room_invites i WHERE i.room_id = r.id \
                        AND i.username = $2 AND ",
            open_invite!("i"),
            "), EXISTS (SELECT 1 FROM klav_room_bans x WHERE x.room_id = r.id AND x.username = $2) \
             FROM rooms r WHERE r.id = $1"
        ),
    )?;
    Ok(tx.query_opt(&s, &[&room, &username])?.map(|r| Admission {
        private: r.get(0),
        member: r.get(1),
        invited: r.get(2),
        banned: r.get(3),
    }))
}

/// How many memberships and open invitations `username` holds.
pub(super) fn holdings(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
) -> Result<i64, DbError> {
    let s = st.get(
        tx,
        concat!(
            "SELECT (SELECT count(*) FROM room_members WHERE username = $1) + \
                    (SELECT count(*) FROM klav_room_invites i WHERE i.username = $1 AND ",
            open_invite!("i"),
            ")"
        ),
    )?;
    Ok(tx.query_one(&s, &[&username])?.get(0))
}

fn join(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    who: &Joiner<'_>,
    by: &JoinBy,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<JoinResult, DbError> {
    let username = who.username;
    let room = match by {
        JoinBy::Id(id) | JoinBy::Added(id) => id.clone(),
        JoinBy::Name(name) => {
            // Only a public room is ever found by its name.
            let s = st.get(
                tx,
                "SELECT id FROM rooms WHERE name = $1 AND NOT klav_private \
                 ORDER BY created_at, id LIMIT 1",
            )?;
            match tx.query_opt(&s, &[name])? {
                Some(r) => {
                    let id: String = r.get(0);
                    if !b.chain.last.contains_key(&id) {
                        // Found by name mid-batch: locked out of order. A
                        // deadlock with another node is detected by PostgreSQL
                        // and fails this batch, whose jobs are retried alone.
                        lock_rooms(tx, st, std::slice::from_ref(&id), &mut b.chain)?;
                    }
                    id
                }
                None => {
                    if holdings(tx, st, username)? >= who.max_rooms {
                        return Ok(JoinResult::TooManyRooms);
                    }
                    let new = NewRoom {
                        name,
                        creator: username,
                        creator_nickname: who.nickname,
                        private: false,
                        topic: None,
                    };
                    let room = create_room(tx, st, &new, b, logged)?;
                    let role = add_member(tx, st, &room, username, who.nickname, b, logged)?;
                    let role = role.unwrap_or(Role::Member);
                    return Ok(JoinResult::Joined { room, role });
                }
            }
        }
    };
    let Some(a) = admission(tx, st, &room, username)? else {
        return Ok(JoinResult::NotFound);
    };
    if a.member {
        return Ok(JoinResult::Already { room });
    }
    if a.banned {
        return Ok(JoinResult::Banned);
    }
    // A private room is joined with an invitation only: to anyone else it
    // does not exist. The server API adds whom it likes.
    let added = matches!(by, JoinBy::Added(_));
    if a.private && !a.invited && !added {
        return Ok(JoinResult::NotFound);
    }
    // An invitation already counts among what the user holds.
    if !a.invited && holdings(tx, st, username)? >= who.max_rooms {
        return Ok(JoinResult::TooManyRooms);
    }
    match add_member(tx, st, &room, username, who.nickname, b, logged)? {
        None => Ok(JoinResult::Already { room }),
        Some(role) => {
            if a.invited {
                let s = st.get(
                    tx,
                    "DELETE FROM klav_room_invites WHERE room_id = $1 AND username = $2",
                )?;
                tx.execute(&s, &[&room, &username])?;
            }
            Ok(JoinResult::Joined { room, role })
        }
    }
}

/// Makes `username` a member of `room` with its `joined` entry, and returns
/// their role; `None` when they were one already. An owner joining their room (its creator, or a
/// public room's owner who was not a member) is noted so that every node
/// knows their role.
fn add_member(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    username: &str,
    nickname: &str,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<Option<Role>, DbError> {
    let s = st.get(
        tx,
        "INSERT INTO room_members (room_id, username, joined_at) VALUES ($1, $2, now()) \
         ON CONFLICT (room_id, username) DO NOTHING",
    )?;
    if tx.execute(&s, &[&room, &username])? == 0 {
        return Ok(None);
    }
    let text = SystemText::Joined { nickname }.render();
    let op = MemberOp {
        joined: true,
        user: username.to_string(),
        nickname: nickname.to_string(),
    };
    system_entry(tx, st, room, text, b, Some(&op), logged)?;
    b.chain
        .report(|| outbox::member_joined(room, username, nickname));
    let s = st.get(tx, "SELECT 1 FROM rooms WHERE id = $1 AND klav_owner = $2")?;
    if tx.query_opt(&s, &[&room, &username])?.is_some() {
        b.chain
            .note(|n| n.role(room, username, Role::Owner.as_str(), None, false));
        return Ok(Some(Role::Owner));
    }
    Ok(Some(Role::Member))
}
