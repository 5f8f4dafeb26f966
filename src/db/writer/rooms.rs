//! The writer's SQL for rooms and membership: `create_room`, `join` (creating a
//! room joined by a name no room has), `leave`, and the system entries that
//! announce them. Separate from messages: each of these writes one entry,
//! with the membership change it carries for the other nodes.

use std::borrow::Cow;

use postgres::Transaction;

use super::chain::{lock_rooms, Batch, Last};
use super::written::{Linked, Written};
use crate::db::entry::ChatEntry;
use crate::db::error::DbError;
use crate::db::jobs::{JoinBy, JoinResult};
use crate::db::notify::{EntryRef, MemberOp};
use crate::db::rows::Stmts;
use crate::names::SystemText;

/// `Job::CreateRoom`: the room and the system entry announcing it.
pub(super) fn write_create_room(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    name: &str,
    creator_nickname: &str,
) -> Result<Linked, DbError> {
    let mut logged = Vec::new();
    let room = create_room(tx, st, name, creator_nickname, b, &mut logged)?;
    let link = b.chain.link(&logged);
    Ok((Written::RoomCreated { room, logged }, link))
}

/// `Job::Join`: the membership and, when it is new, its system entry (and the
/// room's, when the join created it).
pub(super) fn write_join(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    username: &str,
    nickname: &str,
    by: &JoinBy,
) -> Result<Linked, DbError> {
    let mut logged = Vec::new();
    let result = join(tx, st, username, nickname, by, b, &mut logged)?;
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
    if was_member {
        let text = SystemText::Left { nickname }.render();
        let op = MemberOp {
            joined: false,
            user: username.to_string(),
            nickname: nickname.to_string(),
        };
        system_entry(tx, st, room, text, b, Some(&op), &mut logged)?;
    }
    let link = b.chain.link(&logged);
    Ok((Written::Leave { was_member, logged }, link))
}

fn system_entry(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    text: String,
    b: &mut Batch<'_, '_>,
    op: Option<&MemberOp>,
    logged: &mut Vec<ChatEntry>,
) -> Result<(), DbError> {
    let s = st.get(
        tx,
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
         VALUES ($1, now(), 'system', 'system', 'system', NULL, $2) RETURNING id, ts",
    )?;
    let row = tx.query_one(&s, &[&room, &text])?;
    let id: i64 = row.get(0);
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
    name: &str,
    creator_nickname: &str,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<String, DbError> {
    let s = st.get(
        tx,
        "INSERT INTO rooms (id, name, created_at) VALUES ($1, $2, clock_timestamp()) \
         ON CONFLICT (id) DO NOTHING",
    )?;
    loop {
        let id = new_room_id();
        if tx.execute(&s, &[&id, &name])? == 1 {
            let text = SystemText::Created {
                room: name,
                creator: creator_nickname,
            }
            .render();
            // A new room: nobody else can add to it before this commits.
            b.chain.last.insert(id.clone(), 0);
            system_entry(tx, st, &id, text, b, None, logged)?;
            return Ok(id);
        }
    }
}

fn join(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    nickname: &str,
    by: &JoinBy,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<JoinResult, DbError> {
    let room = match by {
        JoinBy::Id(id) => {
            let s = st.get(tx, "SELECT 1 FROM rooms WHERE id = $1")?;
            if tx.query_opt(&s, &[id])?.is_none() {
                return Ok(JoinResult::NotFound);
            }
            id.clone()
        }
        JoinBy::Name(name) => {
            let s = st.get(
                tx,
                "SELECT id FROM rooms WHERE name = $1 ORDER BY created_at, id LIMIT 1",
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
                None => create_room(tx, st, name, nickname, b, logged)?,
            }
        }
    };
    let s = st.get(
        tx,
        "INSERT INTO room_members (room_id, username, joined_at) VALUES ($1, $2, now()) \
         ON CONFLICT (room_id, username) DO NOTHING",
    )?;
    if tx.execute(&s, &[&room, &username])? == 0 {
        return Ok(JoinResult::Already { room });
    }
    let text = SystemText::Joined { nickname }.render();
    let op = MemberOp {
        joined: true,
        user: username.to_string(),
        nickname: nickname.to_string(),
    };
    system_entry(tx, st, &room, text, b, Some(&op), logged)?;
    Ok(JoinResult::Joined { room })
}
