//! `create_room`, `join`, `leave`, `my_rooms`.

use std::time::Instant;

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::room_admin::{private_of, role_changed, topic_of};
use super::strangers;
use crate::db::jobs::{ChatEntry, JoinBy, JoinResult, Outcome, Role, RoomInfo, StrangerReply};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// Rooms are kept for good: each user may create `KLAV_ROOMS_CREATED_PER_HOUR`
/// of them an hour (a `join` by name counts, since it may create one).
fn take_room_token(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    if hub.svc.budgets.rooms.admit(&cx.user, Instant::now()) {
        return Ok(());
    }
    Err(RequestError::with(
        ErrorCode::RateLimited,
        format!(
            "room creation is limited to {} per hour",
            hub.svc.config.rooms_created_per_hour
        ),
    ))
}

/// `create_room {"name","private"?,"topic"?}`: a fresh room, owned by its
/// creator. The creator of a public room is not made a member (as before
/// owners existed); the creator of a private one is, in the same step. The
/// name follows the rules of [`crate::names::room_name`]; an empty or bad one
/// gets `create_room_ack` `INVALID`.
pub struct CreateRoom {
    name: Option<String>,
    private: bool,
    topic: Option<String>,
}

impl CreateRoom {
    pub fn parse(req: &Request) -> Result<CreateRoom, RequestError> {
        let name = req
            .str("name")?
            .and_then(|n| crate::names::room_name(n).ok().flatten());
        Ok(CreateRoom {
            name,
            private: private_of(req)?.unwrap_or(false),
            topic: topic_of(req)?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let Some(name) = self.name else {
            let ev = Event::new("create_room_ack").with("status", "INVALID");
            hub.conns.reply(cx.id, &cx.req.req_id, ev);
            return Ok(());
        };
        if self.private {
            // The creator becomes a member: the same bound as a join.
            check_room_count(hub, cx)?;
        }
        take_room_token(hub, cx)?;
        let job = Job::CreateRoom {
            creator: cx.user.clone(),
            creator_nickname: hub.state.nickname_of(&cx.user),
            name,
            private: self.private,
            topic: self.topic,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

/// A room created: acknowledged; a private room's creator is its member
/// (and owner) now, and their connections get its `joined` entry.
pub fn created(hub: &mut Hub, t: &Ticket, outcome: Outcome) {
    let Outcome::RoomCreated {
        room,
        name,
        creator,
        creator_nickname,
        private,
        logged,
    } = outcome
    else {
        return;
    };
    let entry = hub.history.append_logged(logged);
    hub.state.touched_rooms.insert(room.clone());
    let mut ev = Event::new("create_room_ack")
        .with("status", "CREATED")
        .with("room_id", room.as_str())
        .with("name", name);
    if private {
        ev = ev.with("private", true);
    }
    hub.conns.reply(t.conn, &t.req_id, ev);
    // A room the server API made without an owner has no member yet.
    if private && !creator.is_empty() {
        hub.state.joined(&creator, &room);
        hub.state.set_role(&creator, &room, Role::Owner);
        let ev = Event::new("system")
            .with("room", room.as_str())
            .with("event", "joined")
            .with("user", creator)
            .with("user_nickname", creator_nickname);
        system_to_room(hub, &room, ev, entry);
    }
}

/// A user belongs to at most `KLAV_MAX_ROOMS_PER_USER` rooms. Earlier
/// requests of this connection are done (see `conn::Sequencer`), so the
/// count in memory is exact.
fn check_room_count(hub: &Hub, cx: &Ctx) -> Result<(), RequestError> {
    let joined = hub.state.users.get(&cx.user).map_or(0, |u| u.rooms.len());
    if joined >= hub.svc.config.max_rooms_per_user {
        return Err(too_many_rooms(hub.svc.config.max_rooms_per_user));
    }
    Ok(())
}

fn too_many_rooms(max: usize) -> RequestError {
    RequestError::with(
        ErrorCode::TooManyRooms,
        format!("a user belongs to at most {max} rooms (open invitations count); leave one first"),
    )
}

/// `join {"room_id"}` or `join {"room": "<name>"}`.
pub struct Join {
    by: JoinBy,
}

impl Join {
    pub fn parse(req: &Request) -> Result<Join, RequestError> {
        if let Some(id) = req.str("room_id")? {
            return Ok(Join {
                by: JoinBy::Id(id.to_string()),
            });
        }
        // By name, the room is created when none has the name: the name must
        // be one a new room may have.
        match crate::names::room_name(req.str("room")?.unwrap_or("")) {
            Ok(Some(name)) => Ok(Join {
                by: JoinBy::Name(name),
            }),
            Ok(None) => Err(ErrorCode::RoomIdOrNameRequired.into()),
            Err(e) => Err(RequestError::with(
                ErrorCode::BadRequest,
                format!("invalid room name: it {e}"),
            )),
        }
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if let JoinBy::Id(room) = &self.by {
            // Memory is exact for online users: no round trip for a repeat join.
            if hub.state.is_member(&cx.user, room) {
                let ev = Event::new("join_ack")
                    .with("room", room.as_str())
                    .with("status", "ALREADY");
                hub.conns.reply(cx.id, &cx.req.req_id, ev);
                return Ok(());
            }
        }
        check_room_count(hub, cx)?;
        if matches!(self.by, JoinBy::Name(_)) {
            // Joining by name creates the room when none has that name.
            take_room_token(hub, cx)?;
        }
        let job = Job::Join {
            username: cx.user.clone(),
            nickname: hub.state.nickname_of(&cx.user),
            by: self.by,
            max_rooms: hub.svc.config.max_rooms_per_user as i64,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

/// `entry`: the id of the system entry the join wrote (live `system` events
/// carry it, so a client can resume from it).
pub fn join_done(
    hub: &mut Hub,
    t: &Ticket,
    username: String,
    nickname: String,
    r: JoinResult,
    logged: Vec<ChatEntry>,
) {
    let entry = hub.history.append_logged(logged);
    match r {
        JoinResult::NotFound => {
            hub.conns
                .reply_error(t.conn, &t.req_id, ErrorCode::RoomNotFound.into());
        }
        JoinResult::Banned => {
            let e = RequestError::with(ErrorCode::Banned, "you are banned from this room");
            hub.conns.reply_error(t.conn, &t.req_id, e);
        }
        JoinResult::TooManyRooms => {
            let e = too_many_rooms(hub.svc.config.max_rooms_per_user);
            hub.conns.reply_error(t.conn, &t.req_id, e);
        }
        JoinResult::Already { room } => {
            // Memory may not have known (e.g. joined by name).
            hub.state.joined(&username, &room);
            let ev = Event::new("join_ack")
                .with("room", room)
                .with("status", "ALREADY");
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        JoinResult::Joined { room, role } => {
            hub.state.joined(&username, &room);
            hub.state.set_role(&username, &room, role);
            hub.state.touched_rooms.insert(room.clone());
            let ev = Event::new("system")
                .with("room", room.as_str())
                .with("event", "joined")
                .with("user", username)
                .with("user_nickname", nickname);
            system_to_room(hub, &room, ev, entry);
        }
    }
}

/// `leave {"room_id"}`.
pub struct Leave {
    room: String,
}

impl Leave {
    pub fn parse(req: &Request) -> Result<Leave, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Leave {
            room: room.to_string(),
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if !hub.state.is_member(&cx.user, &self.room) {
            return strangers::refuse(hub, cx, &self.room, StrangerReply::LeaveAck);
        }
        let job = Job::Leave {
            username: cx.user.clone(),
            nickname: hub.state.nickname_of(&cx.user),
            room: self.room,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

/// A leave committed: the `left` entry to the room (the leaver's connections
/// included, as they are members until now), then, if the leaver owned the
/// room, its new owner's `role_changed`.
pub fn leave_done(hub: &mut Hub, t: &Ticket, outcome: Outcome) {
    let Outcome::Leave {
        username,
        nickname,
        room,
        was_member,
        heir,
        logged,
    } = outcome
    else {
        return;
    };
    let entry = hub.history.append_logged(logged);
    if was_member {
        hub.state.left(&username, &room);
        hub.state.touched_rooms.insert(room.clone());
        let ev = Event::new("system")
            .with("room", room.as_str())
            .with("event", "left")
            .with("user", username)
            .with("user_nickname", nickname);
        system_to_room(hub, &room, ev, entry);
        if let Some(Some(heir)) = heir {
            role_changed(hub, &room, &heir, Role::Owner, None);
        }
    }
    let status = if was_member { "LEFT" } else { "NOT_A_MEMBER" };
    let ev = Event::new("leave_ack")
        .with("room", room)
        .with("status", status);
    hub.conns.reply(t.conn, &t.req_id, ev);
}

fn system_to_room(hub: &mut Hub, room: &str, ev: Event, entry: Option<i64>) {
    match entry {
        Some(id) => hub.entry_to_room(room, id, &ev.with("id", id), None),
        None => hub.to_room(room, &ev),
    }
}

/// `my_rooms {}`. Its unread counts read rows in every room of the user, so it
/// is paid from the user's budget of rows examined: refused while the budget
/// is in debt, and charged what it read once it is done.
pub fn my_rooms(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let now = Instant::now();
    if !hub.svc.budgets.rows.has(&cx.user, now) {
        let wait = hub.svc.budgets.rows.wait(&cx.user, now);
        return Err(RequestError::with(
            ErrorCode::RateLimited,
            format!(
                "my_rooms is limited by the rows it reads; retry in {} ms",
                wait.as_millis().max(1)
            ),
        ));
    }
    // Reserved now (the least it reads: a row per room), so that the user's
    // other connections see it spent; the rest is charged when it is done.
    let reserved = my_rooms_reservation(hub, &cx.user);
    hub.svc.budgets.rows.charge(&cx.user, reserved, now);
    let job = Job::MyRooms {
        username: cx.user.clone(),
    };
    if !cx.submit(hub, job) {
        hub.svc.budgets.rows.charge(&cx.user, -reserved, now);
    }
    Ok(())
}

fn my_rooms_reservation(hub: &Hub, user: &str) -> f64 {
    hub.state
        .users
        .get(user)
        .map_or(1, |u| u.rooms.len().max(1)) as f64
}

pub fn my_rooms_done(hub: &mut Hub, t: &Ticket, user: &str, rooms: Vec<RoomInfo>) {
    // Settled even when the connection is gone: closing it early must not
    // make the read free.
    let examined: i64 = rooms.iter().map(|r| r.examined).sum();
    hub.svc.metrics.budgeted_rows += examined as u64;
    let reserved = my_rooms_reservation(hub, user);
    hub.svc
        .budgets
        .rows
        .charge(user, examined as f64 - reserved, Instant::now());
    let ids: Vec<Value> = rooms.iter().map(|r| Value::from(r.id.as_str())).collect();
    let info: Vec<Value> = rooms
        .into_iter()
        .map(|r| {
            let last = match r.last {
                None => Value::Null,
                Some(l) => {
                    let mut v = json!({
                        "text": if l.deleted { String::new() } else { l.text },
                        "from": l.from,
                        "kind": l.kind,
                        "ts": l.ts.map(crate::time::format_iso),
                    });
                    if let Some(id) = l.id {
                        v["id"] = id.into();
                    }
                    if l.deleted {
                        v["deleted"] = true.into();
                    } else if let Some(at) = l.edited_at {
                        v["edited_at"] = crate::time::format_iso(at).into();
                    }
                    v
                }
            };
            let mut v = json!({
                "id": r.id,
                "name": r.name,
                "last": last,
                "read_id": r.read_id,
                "unread": r.unread,
            });
            // A room without an owner is shown as before owners existed.
            if let Some(role) = r.role {
                v["private"] = r.private.into();
                v["role"] = role.as_str().into();
            }
            if r.unread_more {
                v["unread_more"] = true.into();
            }
            v
        })
        .collect();
    let ev = Event::new("my_rooms")
        .with("rooms", ids)
        .with("rooms_info", info);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
