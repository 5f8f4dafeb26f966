//! The writer's SQL for room administration (v3): `room_update`, `set_role`
//! and `transfer_owner`, each checked against the requester's role in the
//! transaction that applies it (the room's row is locked with the batch's
//! rooms, so two moderators acting at once are ordered); invitations and
//! moderation are dispatched from here to their files. The checks they all
//! share are in `standing`.

use postgres::Transaction;

use super::chain::Batch;
use super::rooms::system_entry;
use super::standing::{member_of, standing, target};
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::RoomView;
use crate::db::jobs::{AdminJob, AdminOutcome, Outcome, Refusal, Role, RoleChange, RoleRequest};
use crate::db::notify::RoomUpdate;
use crate::db::rows::Stmts;
use crate::names::SystemText;

/// One administrative job: its outcome is ready at COMMIT.
pub(super) fn write_admin(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    job: &AdminJob,
) -> Result<Linked, DbError> {
    match job {
        AdminJob::Update {
            by,
            by_nickname,
            room,
            name,
            topic,
            private,
        } => {
            let change = Update {
                name: name.as_deref(),
                topic: topic.as_deref(),
                private: *private,
            };
            let mut logged = Vec::new();
            let result = update(tx, st, b, room, by, by_nickname, &change, &mut logged)?;
            let link = b.chain.link(&logged);
            let outcome = AdminOutcome::Updated {
                by: by.clone(),
                result,
                logged,
            };
            Ok((Written::Ready(Outcome::Admin(outcome)), link))
        }
        AdminJob::Role {
            by,
            room,
            user,
            role,
        } => {
            let result = set_role(tx, st, b, room, by, user, *role)?;
            let request = match role {
                Role::Owner => RoleRequest::TransferOwner,
                _ => RoleRequest::SetRole,
            };
            let outcome = AdminOutcome::Roles {
                request,
                by: by.clone(),
                room: room.clone(),
                user: user.clone(),
                role: *role,
                result,
            };
            Ok((Written::Ready(Outcome::Admin(outcome)), None))
        }
        AdminJob::Invite {
            by,
            by_nickname,
            room,
            user,
            max_rooms,
        } => {
            let inviter = super::invites::Inviter {
                by,
                by_nickname,
                max_rooms: *max_rooms,
            };
            let outcome = super::invites::invite(tx, st, b, &inviter, room, user)?;
            Ok((Written::Ready(Outcome::Admin(outcome)), None))
        }
        AdminJob::Decline { user, room } => {
            let outcome = super::invites::decline(tx, st, user, room)?;
            Ok((Written::Ready(Outcome::Admin(outcome)), None))
        }
        AdminJob::Remove {
            by,
            by_nickname,
            room,
            user,
            reason,
            ban,
        } => {
            let r = super::moderation::Removing {
                by,
                by_nickname,
                room,
                user,
                reason: reason.as_deref(),
                ban: *ban,
            };
            super::moderation::write_remove(tx, st, b, &r)
        }
        AdminJob::Unban { by, room, user } => {
            super::moderation::write_unban(tx, st, by, room, user)
        }
    }
}

/// What a `room_update` changes (`None`: unchanged).
struct Update<'a> {
    name: Option<&'a str>,
    topic: Option<&'a str>,
    private: Option<bool>,
}

#[allow(clippy::too_many_arguments)]
fn update(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    room: &str,
    by: &str,
    by_nickname: &str,
    change: &Update<'_>,
    logged: &mut Vec<crate::db::entry::ChatEntry>,
) -> Result<Result<RoomView, Refusal>, DbError> {
    let (_, role) = match member_of(standing(tx, st, room, by)?) {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    if !role.moderates() {
        return Ok(Err(Refusal::NotAllowed));
    }
    let s = st.get(
        tx,
        "UPDATE rooms SET name = COALESCE($2, name), klav_topic = COALESCE($3, klav_topic), \
                klav_private = COALESCE($4, klav_private) \
         WHERE id = $1 RETURNING name, klav_topic, klav_private, klav_owner, \
               (SELECT count(*) FROM room_members WHERE room_id = $1)",
    )?;
    let r = tx.query_one(&s, &[&room, &change.name, &change.topic, &change.private])?;
    let view = RoomView {
        room: room.to_string(),
        name: r.get(0),
        topic: r.get(1),
        private: r.get(2),
        owner: r.get(3),
        role,
        members: r.get(4),
    };
    let text = SystemText::Updated {
        nickname: by_nickname,
    }
    .render();
    system_entry(tx, st, room, text, b, None, logged)?;
    let update = RoomUpdate {
        room: room.to_string(),
        id: logged.last().map_or(0, |e| e.id),
        name: view.name.clone(),
        topic: view.topic.clone(),
        private: view.private,
        by: by.to_string(),
    };
    b.chain.note(|n| n.room_updated(&update));
    Ok(Ok(view))
}

/// `set_role` (`role` admin or member) and `transfer_owner` (`role` owner):
/// the owner only; the target must be a member. The owner's own role changes
/// only by passing ownership on.
fn set_role(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    room: &str,
    by: &str,
    user: &str,
    role: Role,
) -> Result<Result<Vec<RoleChange>, Refusal>, DbError> {
    let (_, mine) = match member_of(standing(tx, st, room, by)?) {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    if mine != Role::Owner {
        return Ok(Err(Refusal::NotAllowed));
    }
    let current = match target(tx, st, room, user)? {
        None => return Ok(Err(Refusal::UserNotFound)),
        Some(None) => return Ok(Err(Refusal::TargetNotMember)),
        Some(Some(r)) => r,
    };
    if current == role {
        return Ok(Ok(Vec::new()));
    }
    if user == by {
        // The owner stays owner until they pass it on.
        return Ok(Err(Refusal::NotAllowed));
    }
    let set = st.get(
        tx,
        "UPDATE room_members SET klav_role = $3 WHERE room_id = $1 AND username = $2",
    )?;
    let changes = if role == Role::Owner {
        let s = st.get(tx, "UPDATE rooms SET klav_owner = $2 WHERE id = $1")?;
        tx.execute(&s, &[&room, &user])?;
        tx.execute(&set, &[&room, &by, &Role::Admin.as_str()])?;
        tx.execute(&set, &[&room, &user, &Role::Admin.as_str()])?;
        vec![
            RoleChange {
                user: user.to_string(),
                role: Role::Owner,
            },
            RoleChange {
                user: by.to_string(),
                role: Role::Admin,
            },
        ]
    } else {
        tx.execute(&set, &[&room, &user, &role.as_str()])?;
        vec![RoleChange {
            user: user.to_string(),
            role,
        }]
    };
    for c in &changes {
        b.chain
            .note(|n| n.role(room, &c.user, c.role.as_str(), Some(by), true));
    }
    Ok(Ok(changes))
}
