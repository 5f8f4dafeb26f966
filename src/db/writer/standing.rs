//! Where a requester and the user a request names stand in a room, read in
//! the writer's transaction: the checks every moderation job shares (room
//! updates and roles, invitations, kicks and bans). Apart from each job's
//! SQL so that each family depends on these and none on another.

use postgres::Transaction;

use crate::db::error::DbError;
use crate::db::jobs::{Refusal, Role};
use crate::db::rows::Stmts;

/// A room as a request on it is checked: what the room is, and the
/// requester's role in it (`None`: not a member).
pub(super) struct Standing {
    pub(super) private: bool,
    pub(super) role: Option<Role>,
}

/// The room and `user`'s role in it; `None` when there is no such room.
pub(super) fn standing(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    user: &str,
) -> Result<Option<Standing>, DbError> {
    let s = st.get(
        tx,
        "SELECT r.klav_private, r.klav_owner, m.klav_role \
         FROM rooms r LEFT JOIN room_members m ON m.room_id = r.id AND m.username = $2 \
         WHERE r.id = $1",
    )?;
    Ok(tx.query_opt(&s, &[&room, &user])?.map(|r| {
        let owner: Option<String> = r.get(1);
        let role = r.get::<_, Option<String>>(2).map(|stored| {
            if owner.as_deref() == Some(user) {
                Role::Owner
            } else {
                Role::parse(&stored).unwrap_or(Role::Member)
            }
        });
        Standing {
            private: r.get(0),
            role,
        }
    }))
}

/// A room the requester belongs to, with their role: a missing room, and a
/// private one they do not belong to, are both `RoomNotFound` (a stranger
/// must not learn that a private room exists).
pub(super) fn member_of(s: Option<Standing>) -> Result<(Standing, Role), Refusal> {
    match s {
        None => Err(Refusal::RoomNotFound),
        Some(s) => match s.role {
            Some(role) => Ok((s, role)),
            None if s.private => Err(Refusal::RoomNotFound),
            None => Err(Refusal::NotAMember),
        },
    }
}

/// A user a request names: `None` when not registered; `Some(None)` when
/// registered but not a member of `room`; otherwise their role there.
pub(super) fn target(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    user: &str,
) -> Result<Option<Option<Role>>, DbError> {
    let s = st.get(
        tx,
        "SELECT m.klav_role, r.klav_owner FROM users u \
         LEFT JOIN room_members m ON m.room_id = $1 AND m.username = u.username \
         LEFT JOIN rooms r ON r.id = $1 \
         WHERE u.username = $2",
    )?;
    Ok(tx.query_opt(&s, &[&room, &user])?.map(|r| {
        let owner: Option<String> = r.get(1);
        r.get::<_, Option<String>>(0).map(|stored| {
            if owner.as_deref() == Some(user) {
                Role::Owner
            } else {
                Role::parse(&stored).unwrap_or(Role::Member)
            }
        })
    }))
}
