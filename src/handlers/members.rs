//! `room_members`: who belongs to a room, and who of them is online now.

use serde_json::{json, Value};

use super::ctx::Ctx;
use crate::db::jobs::UserRef;
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
    members: Vec<UserRef>,
    online: Option<Vec<String>>,
) {
    let viewer = hub.conns.ws_user(t.conn).unwrap_or_default();
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| {
            // A member who blocks the viewer never appears online to them.
            let online = !hub.state.hides(viewer, &m.username)
                && match &online {
                    Some(list) => list.contains(&m.username),
                    None => hub.state.is_online(&m.username),
                };
            json!({"username": m.username, "nickname": m.nickname, "online": online})
        })
        .collect();
    let ev = Event::new("room_members")
        .with("room", room)
        .with("members", members);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
