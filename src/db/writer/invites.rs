//! The writer's SQL for invitations (v3): `invite`, checked in the
//! transaction that stores it (the inviter's role, a ban, a block, the
//! invitee's holdings), so that a ban and an invitation racing end banned
//! (both lock the room's row, see `chain::entry_rooms`); and `decline_invite`.

use std::time::SystemTime;

use postgres::Transaction;

use super::chain::Batch;
use super::rooms::holdings;
use super::standing::{member_of, standing};
use crate::db::error::DbError;
use crate::db::jobs::{open_invite, AdminOutcome, Invite, InviteStatus, Refusal};
use crate::db::rows::Stmts;

/// Who invites, and the bound on what an invitee may hold.
pub(super) struct Inviter<'a> {
    pub(super) by: &'a str,
    pub(super) by_nickname: &'a str,
    pub(super) max_rooms: i64,
}

/// `invite`: the owner or an admin (in a public room, any member).
pub(super) fn invite(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    who: &Inviter<'_>,
    room: &str,
    user: &str,
) -> Result<AdminOutcome, DbError> {
    let (status, invite) = match check(tx, st, who, room, user)? {
        Err(r) => (Err(r), None),
        Ok(Some(s)) => (Ok(s), None),
        Ok(None) => {
            let invite = store(tx, st, who, room, user)?;
            b.chain.note(|n| n.invited(user, &invite));
            (Ok(InviteStatus::Invited), Some(invite))
        }
    };
    Ok(AdminOutcome::Invited {
        room: room.to_string(),
        user: user.to_string(),
        result: status,
        invite,
    })
}

/// Why the invitation is not stored (`Some` status, or a refusal); `None`:
/// store it.
fn check(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    who: &Inviter<'_>,
    room: &str,
    user: &str,
) -> Result<Result<Option<InviteStatus>, Refusal>, DbError> {
    let (standing, role) = match member_of(standing(tx, st, room, who.by)?) {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    if standing.private && !role.moderates() {
        return Ok(Err(Refusal::NotAllowed));
    }
    let s = st.get(
        tx,
        concat!(
            "SELECT EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = $1 AND m.username = u.username), \
                    EXISTS (SELECT 1 FROM klav_room_bans x WHERE x.room_id = $1 AND x.username = u.username), \
                    EXISTS (SELECT 1 FROM klav_blocks k WHERE k.blocker = u.username AND k.blocked = $3), \
                    EXISTS (SELECT 1 FROM klav_room_invites i WHERE i.room_id = $1 \
                            AND i.username = u.username AND ",
            open_invite!("i"),
            ") FROM users u WHERE u.username = $2"
        ),
    )?;
    let Some(r) = tx.query_opt(&s, &[&room, &user, &who.by])? else {
        return Ok(Ok(Some(InviteStatus::NotRegistered)));
    };
    let (member, banned, blocked, invited): (bool, bool, bool, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let status = if member {
        InviteStatus::AlreadyMember
    } else if banned {
        InviteStatus::Banned
    } else if blocked {
        InviteStatus::Refused
    } else if invited {
        InviteStatus::AlreadyInvited
    } else if holdings(tx, st, user)? >= who.max_rooms {
        return Ok(Err(Refusal::TooManyRooms));
    } else {
        return Ok(Ok(None));
    };
    Ok(Ok(Some(status)))
}

/// Stores the invitation (replacing an expired one) and returns it as the
/// invitee is told of it.
fn store(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    who: &Inviter<'_>,
    room: &str,
    user: &str,
) -> Result<Invite, DbError> {
    let s = st.get(
        tx,
        "INSERT INTO klav_room_invites AS i (room_id, username, invited_by, created_at) \
         VALUES ($1, $2, $3, now()) \
         ON CONFLICT (room_id, username) DO UPDATE \
             SET invited_by = EXCLUDED.invited_by, created_at = EXCLUDED.created_at \
         RETURNING i.created_at, (SELECT r.name FROM rooms r WHERE r.id = $1), \
                   (SELECT r.klav_private FROM rooms r WHERE r.id = $1)",
    )?;
    let r = tx.query_one(&s, &[&room, &user, &who.by])?;
    let at: SystemTime = r.get(0);
    Ok(Invite {
        room: room.to_string(),
        name: r.get(1),
        private: r.get(2),
        by: who.by.to_string(),
        by_nickname: who.by_nickname.to_string(),
        at,
    })
}

/// `decline_invite`: removes the user's open invitation to the room, if any
/// (an unknown or private room is answered the same: no invitation).
pub(super) fn decline(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    user: &str,
    room: &str,
) -> Result<AdminOutcome, DbError> {
    let s = st.get(
        tx,
        concat!(
            "DELETE FROM klav_room_invites i WHERE i.room_id = $1 AND i.username = $2 \
             RETURNING ",
            open_invite!("i")
        ),
    )?;
    let declined = tx
        .query_opt(&s, &[&room, &user])?
        .is_some_and(|r| r.get::<_, bool>(0));
    Ok(AdminOutcome::Declined {
        room: room.to_string(),
        declined,
    })
}
