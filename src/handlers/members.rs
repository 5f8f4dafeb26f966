//! `room_members`: who belongs to a room, and who of them is online now.

use serde_json::{json, Value};

use super::ctx::Ctx;
use crate::db::jobs::{Role, UserRef};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `room_members {"room_id"}`.
pub struct RoomMembers {
    room: String,
}

impl RoomMembers {
    pub fn parse(req: &Request) -> Result<RoomMembers, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(RoomMembers {
            room: room.to_string(),
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if !hub.state.is_member(&cx.user, &self.room) {
            return Err(ErrorCode::NotAMember.into());
        }
        let job = Job::RoomMembers {
            room: self.room,
            cluster: hub.cluster.enabled,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

/// The list is read from the database (members who are offline are not in
/// memory); `online` is from memory when the answer arrives, or, in a cluster,
/// from the database (connections on any node).
pub fn done(
    hub: &mut Hub,
    t: &Ticket,
    room: String,
    members: Vec<(UserRef, Option<Role>)>,
    online: Option<Vec<String>>,
) {
    let members: Vec<Value> = members
        .into_iter()
        .map(|(m, role)| {
            let online = match &online {
                Some(list) => list.contains(&m.username),
                None => hub.state.is_online(&m.username),
            };
            let mut v = json!({"username": m.username, "nickname": m.nickname, "online": online});
            // A room without an owner lists its members as before roles existed.
            if let Some(role) = role {
                v["role"] = role.as_str().into();
            }
            v
        })
        .collect();
    let ev = Event::new("room_members")
        .with("room", room)
        .with("members", members);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
