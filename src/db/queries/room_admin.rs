//! Room administration as the general workers read it: `room_info`,
//! `my_invites`, `room_bans`, and the removal of expired invitations
//! (invisible already, so any worker may remove them). Separate from the writer's `room_admin`:
//! nothing here changes a room or a membership.

use postgres::GenericClient;

use crate::db::error::DbError;
use crate::db::jobs::{
    open_invite, AdminOutcome, AdminQuery, Ban, Invite, Outcome, Refusal, Role, RoomView,
};
use crate::db::rows::{display_nickname, Stmts};

/// The most invitations `my_invites` lists (a user holds at most
/// `KLAV_MAX_ROOMS_PER_USER` memberships and invitations together; this
/// bounds the read whatever that is set to).
pub const MY_INVITES_MAX: i64 = 500;

pub(super) fn run<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    read: AdminQuery,
) -> Result<Outcome, DbError> {
    Ok(Outcome::Admin(match read {
        AdminQuery::Info { username, room } => AdminOutcome::Info(info(c, st, &username, room)?),
        AdminQuery::Bans { username, room } => AdminOutcome::Bans {
            result: bans(c, st, &username, &room)?,
            room,
        },
        AdminQuery::MyInvites { username } => AdminOutcome::Invites(my_invites(c, st, &username)?),
        AdminQuery::PruneInvites => {
            let s = st.get(
                c,
                concat!(
                    "DELETE FROM klav_room_invites i WHERE NOT (",
                    open_invite!("i"),
                    ")"
                ),
            )?;
            c.execute(&s, &[])?;
            AdminOutcome::Pruned
        }
    }))
}

/// `room_info`: for members only; a private room is not found by anyone else.
fn info<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    room: String,
) -> Result<Result<RoomView, Refusal>, DbError> {
    let s = st.get(
        c,
        "SELECT r.name, r.klav_topic, r.klav_private, r.klav_owner, m.klav_role, \
                (SELECT count(*) FROM room_members a WHERE a.room_id = r.id) \
         FROM rooms r LEFT JOIN room_members m ON m.room_id = r.id AND m.username = $2 \
         WHERE r.id = $1",
    )?;
    let Some(r) = c.query_opt(&s, &[&room, &username])? else {
        return Ok(Err(Refusal::RoomNotFound));
    };
    let private: bool = r.get(2);
    let owner: Option<String> = r.get(3);
    let role = match r.get::<_, Option<String>>(4) {
        None if private => return Ok(Err(Refusal::RoomNotFound)),
        None => return Ok(Err(Refusal::NotAMember)),
        Some(_) if owner.as_deref() == Some(username) => Role::Owner,
        Some(stored) => Role::parse(&stored).unwrap_or(Role::Member),
    };
    Ok(Ok(RoomView {
        room,
        name: r.get(0),
        topic: r.get(1),
        private,
        owner,
        role,
        members: r.get(5),
    }))
}

/// `my_invites`: the user's open invitations, newest first.
fn my_invites<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<Invite>, DbError> {
    let s = st.get(
        c,
        concat!(
            "SELECT i.room_id, r.name, r.klav_private, i.invited_by, u.nickname, i.created_at \
             FROM klav_room_invites i JOIN rooms r ON r.id = i.room_id \
             LEFT JOIN users u ON u.username = i.invited_by \
             WHERE i.username = $1 AND ",
            open_invite!("i"),
            " ORDER BY i.created_at DESC, i.room_id LIMIT $2"
        ),
    )?;
    Ok(c.query(&s, &[&username, &MY_INVITES_MAX])?
        .into_iter()
        .map(|r| {
            let by: String = r.get(3);
            Invite {
                room: r.get(0),
                name: r.get(1),
                private: r.get(2),
                by_nickname: display_nickname(&by, r.get(4)),
                by,
                at: r.get(5),
            }
        })
        .collect())
}

/// The most bans `room_bans` lists, newest first.
pub const ROOM_BANS_MAX: i64 = 1000;

/// `room_bans`: for the owner and admins.
fn bans<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    room: &str,
) -> Result<Result<Vec<Ban>, Refusal>, DbError> {
    match info(c, st, username, room.to_string())? {
        Err(r) => return Ok(Err(r)),
        Ok(v) if !v.role.moderates() => return Ok(Err(Refusal::NotAllowed)),
        Ok(_) => {}
    }
    let s = st.get(
        c,
        "SELECT username, banned_by, reason, created_at FROM klav_room_bans \
         WHERE room_id = $1 ORDER BY created_at DESC, username LIMIT $2",
    )?;
    Ok(Ok(c
        .query(&s, &[&room, &ROOM_BANS_MAX])?
        .into_iter()
        .map(|r| Ban {
            username: r.get(0),
            by: r.get(1),
            reason: r.get(2),
            at: r.get(3),
        })
        .collect()))
}
