//! The writer's SQL for deleting an account, all in the batch's one
//! transaction: the row is marked deleted and kept (the name stays reserved,
//! and every token of the user is revoked with it); each membership ends
//! through the ordinary leave (its `left` entry, and whatever a leave brings
//! about); what links other users to them is removed
//! ([`remove_account_rows`]); their entries stay in history under the nickname
//! [`DELETED_NICKNAME`], emptied into tombstones if they asked for that.
//!
//! The other nodes hear it in the batch's notes, in this order: the leaves,
//! their going offline (to their followers, before the follows go), each
//! follow removed, then the deletion itself, which closes their sockets.

use postgres::Transaction;

use super::accounts::drop_tickets;
use super::chain::{lock_rooms, Batch};
use super::rooms::{pass_ownership, write_leave};
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{ChatEntry, Deletion, Outcome};
use crate::db::outbox;
use crate::db::rows::{display_nickname, Stmts};

/// The nickname a deleted account's entries show from then on.
pub const DELETED_NICKNAME: &str = "(deleted)";

/// `Job::DeleteAccount`; nothing when the presenting token (`token_gen`) is
/// revoked already or the account is gone.
pub(super) fn write_delete_account(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    username: &str,
    token_gen: i64,
    erase: bool,
) -> Result<Linked, DbError> {
    let s = st.get(
        tx,
        "UPDATE users SET klav_token_gen = klav_token_gen + 1, klav_deleted_at = now() \
         WHERE username = $1 AND klav_deleted_at IS NULL AND klav_token_gen <= $2 \
         RETURNING klav_token_gen, nickname",
    )?;
    let Some(row) = tx.query_opt(&s, &[&username, &token_gen])? else {
        let outcome = Outcome::AccountDeleted {
            username: username.to_string(),
            deletion: None,
        };
        return Ok((Written::Ready(outcome), None));
    };
    let generation: i64 = row.get(0);
    let nickname = display_nickname(username, row.get(1));
    let leaves = leave_every_room(tx, st, b, username, &nickname)?;
    let passed_on = pass_on_rooms_owned_outside(tx, st, b, username)?;
    let was_online = is_online(tx, st, username)?;
    if was_online {
        b.chain.note(|n| n.presence(username, &nickname, false));
    }
    let unfollowed = remove_account_rows(tx, st, username)?;
    for (from, to) in &unfollowed {
        b.chain.note(|n| n.follow(from, to, false));
    }
    anonymise_history(tx, st, username, erase)?;
    b.chain.report(|| outbox::user_deleted(username, erase));
    b.chain
        .note(|n| n.account_deleted(username, generation, erase));
    let deletion = Deletion {
        nickname,
        leaves,
        passed_on,
        unfollowed,
        was_online,
    };
    let outcome = Outcome::AccountDeleted {
        username: username.to_string(),
        deletion: Some(Box::new(deletion)),
    };
    Ok((Written::Ready(outcome), None))
}

/// Ends each membership of the user as `leave` does, room by room (their rows
/// locked first, in id order): each `left` entry, with the entry before it.
fn leave_every_room(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    username: &str,
    nickname: &str,
) -> Result<Vec<(ChatEntry, i64, Option<String>)>, DbError> {
    let s = st.get(
        tx,
        "SELECT room_id FROM room_members WHERE username = $1 ORDER BY room_id",
    )?;
    let rooms: Vec<String> = tx
        .query(&s, &[&username])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let unlocked: Vec<String> = rooms
        .iter()
        .filter(|r| !b.chain.last.contains_key(*r))
        .cloned()
        .collect();
    // Locked after the batch's own rooms: a deadlock with another node's
    // batch is detected by PostgreSQL and fails this batch, whose jobs are
    // then retried one by one (as for a room joined by name).
    lock_rooms(tx, st, &unlocked, &mut b.chain)?;
    let mut leaves = Vec::with_capacity(rooms.len());
    for room in &rooms {
        let (written, link) = write_leave(tx, st, b, username, nickname, room)?;
        if let (
            Written::Leave {
                mut logged, heir, ..
            },
            Some(link),
        ) = (written, link)
        {
            if let Some(entry) = logged.pop() {
                leaves.push((entry, link.prev, heir.flatten()));
            }
        }
    }
    Ok(leaves)
}

/// Public rooms they own without belonging to them (their `create_room`s)
/// pass on as their other rooms did; one nobody belongs to keeps no owner.
/// Returns (room, heir) of those that passed to someone.
fn pass_on_rooms_owned_outside(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    username: &str,
) -> Result<Vec<(String, String)>, DbError> {
    let s = st.get(tx, "SELECT id FROM rooms WHERE klav_owner = $1 ORDER BY id")?;
    let owned: Vec<String> = tx
        .query(&s, &[&username])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut passed = Vec::new();
    for room in owned {
        if let Some(Some(heir)) = pass_ownership(tx, st, b, &room, username)? {
            passed.push((room, heir));
        }
    }
    Ok(passed)
}

/// Whether the user has a connection on any node.
fn is_online(tx: &mut Transaction<'_>, st: &mut Stmts, username: &str) -> Result<bool, DbError> {
    let s = st.get(
        tx,
        "SELECT EXISTS (SELECT 1 FROM klav_presence WHERE username = $1 AND conns > 0)",
    )?;
    Ok(tx.query_one(&s, &[&username])?.get(0))
}

/// Every row that links the user to others or waits for them, in one place
/// (a new kind of link adds its line here): follows and blocks both ways,
/// offline DMs to and from them, read markers, invitations to rooms,
/// WebSocket tickets. Returns the
/// follows removed, (follower, followee).
pub(super) fn remove_account_rows(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<(String, String)>, DbError> {
    let s = st.get(
        tx,
        "DELETE FROM follows WHERE follower_username = $1 OR followee_username = $1 \
         RETURNING follower_username, followee_username",
    )?;
    let unfollowed = tx
        .query(&s, &[&username])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for sql in [
        "DELETE FROM klav_blocks WHERE blocker = $1 OR blocked = $1",
        "DELETE FROM klav_offline_dms WHERE recipient = $1 OR from_user = $1",
        "DELETE FROM klav_offline_dropped WHERE recipient = $1",
        "DELETE FROM klav_read_markers WHERE username = $1",
        "DELETE FROM klav_room_invites WHERE username = $1",
    ] {
        let s = st.get(tx, sql)?;
        tx.execute(&s, &[&username])?;
    }
    drop_tickets(tx, st, username)?;
    Ok(unfollowed)
}

/// The user's entries keep their place under [`DELETED_NICKNAME`]; with
/// `erase`, their messages and DMs become tombstones as after `delete`.
/// (One pass over `chat_logs`: no index serves `from_user` alone, and none is
/// kept for a request this rare at the cost of every message's insert.)
fn anonymise_history(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    erase: bool,
) -> Result<(), DbError> {
    let s = st.get(
        tx,
        "UPDATE chat_logs SET from_nickname = $2, \
                text = CASE WHEN $3 AND kind IN ('msg', 'dm') THEN '' ELSE text END, \
                deleted = deleted OR ($3 AND kind IN ('msg', 'dm')) \
         WHERE from_user = $1",
    )?;
    tx.execute(&s, &[&username, &DELETED_NICKNAME, &erase])?;
    Ok(())
}
