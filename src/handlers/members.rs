//! `room_members`: who belongs to a room, and who of them is online now;
//! with `"watch":true` this connection then hears `member_presence` as they
//! come and go, until `room_members_unwatch`, a leave, or the close (see
//! [`crate::state::RoomWatches`]).

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::strangers;
use crate::db::jobs::{Role, UserRef};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `room_members {"room_id","watch"?}`.
pub struct RoomMembers {
    room: String,
    watch: bool,
}

impl RoomMembers {
    pub fn parse(req: &Request) -> Result<RoomMembers, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        let watch = match req.body.get("watch") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(RequestError::with(
                    ErrorCode::BadRequest,
                    "\"watch\" must be true or false",
                ))
            }
        };
        Ok(RoomMembers {
            room: room.to_string(),
            watch,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if !hub.state.is_member(&cx.user, &self.room) {
            return strangers::not_a_member(hub, cx, &self.room);
        }
        let room = self.room.clone();
        let job = Job::RoomMembers {
            room: self.room,
            cluster: hub.cluster.enabled,
            watch: self.watch,
        };
        if cx.submit(hub, job) && self.watch {
            hub.state.begin_watch(cx.id, &room);
        }
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
    watch: bool,
) {
    let viewer = hub.conns.ws_user(t.conn).unwrap_or_default().to_string();
    // Still a member (a removal may have committed meanwhile) and connected.
    if watch && hub.state.is_member(&viewer, &room) {
        let names = members.iter().map(|(m, _)| m.username.clone()).collect();
        hub.state.watch_room(t.conn, &room, names);
    }
    let viewer = viewer.as_str();
    let members: Vec<Value> = members
        .into_iter()
        .map(|(m, role)| {
            // A member who blocks the viewer never appears online to them.
            let online = !hub.state.hides(viewer, &m.username)
                && match &online {
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

/// `room_members_unwatch {"room_id"}`.
pub struct Unwatch {
    room: String,
}

impl Unwatch {
    pub fn parse(req: &Request) -> Result<Unwatch, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Unwatch {
            room: room.to_string(),
        })
    }

    /// Answered whether or not the connection watched the room: the watch
    /// is gone either way.
    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        hub.state.unwatch_room(cx.id, &self.room);
        let ev = Event::new("unwatch_ack").with("room", self.room);
        hub.conns.reply(cx.id, &cx.req.req_id, ev);
        Ok(())
    }
}

/// `user` came online or went offline: every connection watching a room
/// they belong to hears it, one frame per room, except connections of users
/// `user` blocks.
pub fn announce(hub: &mut Hub, user: &str, online: bool) {
    for (room, conns) in hub.state.room_watches.audiences(user) {
        let targets: Vec<_> = conns
            .into_iter()
            .filter(|c| {
                hub.conns
                    .ws_user(*c)
                    .is_some_and(|viewer| viewer != user && !hub.state.hides(viewer, user))
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let ev = Event::new("member_presence")
            .with("room", room)
            .with("user", user)
            .with("online", online);
        hub.fan_out(&targets, &ev.shared());
    }
}
