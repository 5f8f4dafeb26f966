//! Room administration as the general workers read it: `room_info`.
//! Separate from the writer's `room_admin`: nothing here changes a room.

use postgres::GenericClient;

use crate::db::error::DbError;
use crate::db::jobs::{AdminOutcome, AdminRead, Outcome, Refusal, Role, RoomView};
use crate::db::rows::Stmts;

pub(super) fn run<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    read: AdminRead,
) -> Result<Outcome, DbError> {
    Ok(Outcome::Admin(match read {
        AdminRead::Info { username, room } => AdminOutcome::Info(info(c, st, &username, room)?),
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
