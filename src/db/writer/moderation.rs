//! The writer's SQL for kicks and bans (v3): `kick`, `ban`, `unban`, each
//! checked against both users' roles in the transaction that applies it, in
//! the room's order (its row is locked with the batch's rooms), so that two
//! moderators acting on each other at once cannot both succeed. A removal
//! ends the membership with a system entry carrying it (a [`MemberOp`],
//! noted after a [`Removal`] naming the entry), so every node drops it in the
//! room's order and knows it for a kick or ban; the user's open invitation to
//! the room goes with it.

use postgres::Transaction;

use super::chain::Batch;
use super::rooms::system_entry_then;
use super::standing::{member_of, standing};
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{AdminOutcome, Outcome, Refusal, RemoveStatus, Removed, Role, BY_APP};
use crate::db::notify::{MemberOp, Removal};
use crate::db::outbox::{self, Departure};
use crate::db::rows::{display_nickname, Stmts};
use crate::names::SystemText;

/// A `kick` or `ban` as the writer needs it.
pub(super) struct Removing<'a> {
    pub(super) by: &'a str,
    pub(super) by_nickname: &'a str,
    pub(super) room: &'a str,
    pub(super) user: &'a str,
    pub(super) reason: Option<&'a str>,
    pub(super) ban: bool,
}

/// The user a kick or ban names: their nickname, role in the room (`None`:
/// not a member) and whether they are banned; `None` when not registered.
struct Target {
    nickname: String,
    role: Option<Role>,
    banned: bool,
}

fn target(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    user: &str,
) -> Result<Option<Target>, DbError> {
    let s = st.get(
        tx,
        "SELECT u.nickname, m.klav_role, r.klav_owner, \
                EXISTS (SELECT 1 FROM klav_room_bans x WHERE x.room_id = $1 AND x.username = $2) \
         FROM users u LEFT JOIN room_members m ON m.room_id = $1 AND m.username = u.username \
         LEFT JOIN rooms r ON r.id = $1 WHERE u.username = $2",
    )?;
    Ok(tx.query_opt(&s, &[&room, &user])?.map(|r| {
        let owner: Option<String> = r.get(2);
        let role = r.get::<_, Option<String>>(1).map(|stored| {
            if owner.as_deref() == Some(user) {
                Role::Owner
            } else {
                Role::parse(&stored).unwrap_or(Role::Member)
            }
        });
        Target {
            nickname: display_nickname(user, r.get(0)),
            role,
            banned: r.get(3),
        }
    }))
}

/// `kick` / `ban`: the owner or an admin; an admin cannot remove the owner
/// or another admin; nobody removes themselves. Asked by [`BY_APP`] (the
/// server API), as by the owner of any room.
pub(super) fn write_remove(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    r: &Removing<'_>,
) -> Result<Linked, DbError> {
    let mut logged = Vec::new();
    let (result, nickname) = match remove(tx, st, b, r, &mut logged)? {
        Ok((status, nickname)) => (Ok(status), nickname),
        Err(refused) => (Err(refused), None),
    };
    let link = b.chain.link(&logged);
    let removed = nickname.map(|nickname| Removed { nickname, logged });
    let outcome = AdminOutcome::Removed {
        by: r.by.to_string(),
        room: r.room.to_string(),
        user: r.user.to_string(),
        reason: r.reason.map(str::to_string),
        ban: r.ban,
        result,
        removed,
    };
    Ok((Written::Ready(Outcome::Admin(outcome)), link))
}

/// The status, and the removed member's nickname when a membership ended.
type RemoveResult = Result<(RemoveStatus, Option<String>), Refusal>;

fn remove(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    r: &Removing<'_>,
    logged: &mut Vec<crate::db::entry::ChatEntry>,
) -> Result<RemoveResult, DbError> {
    let mine = match r.by {
        // The server API moderates every room that exists, as its owner
        // would (it removes admins, never the owner).
        BY_APP => match standing(tx, st, r.room, r.by)? {
            Some(_) => Role::Owner,
            None => return Ok(Err(Refusal::RoomNotFound)),
        },
        by => match member_of(standing(tx, st, r.room, by)?) {
            Ok((_, mine)) => mine,
            Err(refused) => return Ok(Err(refused)),
        },
    };
    if !mine.moderates() || r.user == r.by {
        return Ok(Err(Refusal::NotAllowed));
    }
    let Some(t) = target(tx, st, r.room, r.user)? else {
        return Ok(Err(Refusal::UserNotFound));
    };
    // An admin may remove members only; the owner, anyone but themselves.
    match t.role {
        Some(Role::Owner) => return Ok(Err(Refusal::NotAllowed)),
        Some(Role::Admin) if mine != Role::Owner => return Ok(Err(Refusal::NotAllowed)),
        _ => {}
    }
    let s = st.get(
        tx,
        "DELETE FROM klav_room_invites WHERE room_id = $1 AND username = $2",
    )?;
    tx.execute(&s, &[&r.room, &r.user])?;
    let mut status = match (r.ban, t.role.is_some()) {
        (false, true) => RemoveStatus::Kicked,
        (false, false) => RemoveStatus::NotAMember,
        (true, _) if t.banned => RemoveStatus::Already,
        (true, _) => RemoveStatus::Banned,
    };
    if r.ban && !t.banned {
        let s = st.get(
            tx,
            "INSERT INTO klav_room_bans (room_id, username, banned_by, reason) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (room_id, username) DO NOTHING",
        )?;
        tx.execute(&s, &[&r.room, &r.user, &r.by, &r.reason])?;
    }
    if t.role.is_none() {
        return Ok(Ok((status, None)));
    }
    // A member who was banned already (a row written by hand) is removed
    // as by a ban.
    if r.ban {
        status = RemoveStatus::Banned;
    }
    let s = st.get(
        tx,
        "DELETE FROM room_members WHERE room_id = $1 AND username = $2",
    )?;
    tx.execute(&s, &[&r.room, &r.user])?;
    let text = SystemText::Removed {
        nickname: &t.nickname,
        by: r.by_nickname,
        banned: r.ban,
    }
    .render();
    let op = MemberOp {
        joined: false,
        user: r.user.to_string(),
        nickname: t.nickname.clone(),
    };
    let note = |b: &mut Batch<'_, '_>, id: i64| {
        let removal = Removal {
            room: r.room.to_string(),
            id,
            user: r.user.to_string(),
            banned: r.ban,
            by: r.by.to_string(),
            reason: r.reason.map(str::to_string),
        };
        b.chain.note(|n| n.removal(&removal));
    };
    system_entry_then(tx, st, r.room, text, b, Some(&op), logged, note)?;
    let how = Departure::Removed {
        by: r.by,
        banned: r.ban,
    };
    b.chain
        .report(|| outbox::member_left(r.room, r.user, &t.nickname, how));
    Ok(Ok((status, Some(t.nickname))))
}

/// `unban`: the owner or an admin.
pub(super) fn write_unban(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    by: &str,
    room: &str,
    user: &str,
) -> Result<Linked, DbError> {
    let result = unban(tx, st, by, room, user)?;
    let outcome = AdminOutcome::Unbanned {
        room: room.to_string(),
        user: user.to_string(),
        result,
    };
    Ok((Written::Ready(Outcome::Admin(outcome)), None))
}

fn unban(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    by: &str,
    room: &str,
    user: &str,
) -> Result<Result<bool, Refusal>, DbError> {
    let (_, mine) = match member_of(standing(tx, st, room, by)?) {
        Ok(s) => s,
        Err(refused) => return Ok(Err(refused)),
    };
    if !mine.moderates() {
        return Ok(Err(Refusal::NotAllowed));
    }
    let s = st.get(tx, "SELECT 1 FROM users WHERE username = $1")?;
    if tx.query_opt(&s, &[&user])?.is_none() {
        return Ok(Err(Refusal::UserNotFound));
    }
    let s = st.get(
        tx,
        "DELETE FROM klav_room_bans WHERE room_id = $1 AND username = $2",
    )?;
    Ok(Ok(tx.execute(&s, &[&room, &user])? > 0))
}
