//! Rooms with owners (v3): `room_info`, `room_update`, `set_role`,
//! `transfer_owner`, and the `room_updated` / `role_changed` events — from
//! this node's writes and from other nodes' notes. Every permission is
//! decided by the writer in the transaction that applies the change; memory
//! (`state::roles`) only turns a plain member away without a round trip.

use serde_json::Value;

use super::ctx::Ctx;
use crate::db::jobs::{AdminJob, AdminOutcome, AdminQuery, Refusal, Role, RoleRequest, RoomView};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// The longest topic `room_update` and `create_room` accept, in characters.
pub const MAX_TOPIC: usize = 500;

/// The error a refusal is answered with.
pub fn refusal(r: Refusal) -> RequestError {
    match r {
        Refusal::RoomNotFound => ErrorCode::RoomNotFound.into(),
        Refusal::NotAMember => ErrorCode::NotAMember.into(),
        Refusal::NotAllowed => RequestError::with(
            ErrorCode::NotAllowed,
            "your role in the room does not permit it",
        ),
        Refusal::UserNotFound => ErrorCode::UserNotFound.into(),
        Refusal::TargetNotMember => RequestError::with(
            ErrorCode::NotAMember,
            "the user is not a member of the room",
        ),
        Refusal::TooManyRooms => RequestError::with(
            ErrorCode::TooManyRooms,
            "the user holds as many rooms and invitations as a user may",
        ),
    }
}

fn room_of(req: &Request) -> Result<String, RequestError> {
    Ok(req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?.to_string())
}

/// The `user` a request names (required).
pub fn user_of(req: &Request) -> Result<String, RequestError> {
    req.str("user")?
        .map(str::to_string)
        .ok_or_else(|| RequestError::with(ErrorCode::BadRequest, "\"user\" is required"))
}

/// An optional topic: a string of at most [`MAX_TOPIC`] characters (empty
/// clears it).
pub fn topic_of(req: &Request) -> Result<Option<String>, RequestError> {
    match req.body.get("topic") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.contains('\0') => Err(RequestError::with(
            ErrorCode::BadRequest,
            "\"topic\" contains a NUL character",
        )),
        Some(Value::String(t)) if t.len() > MAX_TOPIC && t.chars().count() > MAX_TOPIC => {
            Err(RequestError::with(
                ErrorCode::TextTooLong,
                format!("a topic is limited to {MAX_TOPIC} characters"),
            ))
        }
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(RequestError::with(
            ErrorCode::BadRequest,
            "\"topic\" must be a string",
        )),
    }
}

/// An optional `private` flag (a boolean).
pub fn private_of(req: &Request) -> Result<Option<bool>, RequestError> {
    match req.body.get("private") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::with(
            ErrorCode::BadRequest,
            "\"private\" must be true or false",
        )),
    }
}

/// A loaded member whose role (in memory) is below `needed` is refused at
/// once; anyone else's request goes to the database, which decides.
fn check_role(
    hub: &Hub,
    cx: &Ctx,
    room: &str,
    allowed: fn(Role) -> bool,
) -> Result<(), RequestError> {
    match hub.state.role(&cx.user, room) {
        Some(r) if !allowed(r) => Err(refusal(Refusal::NotAllowed)),
        _ => Ok(()),
    }
}

/// `room_info {"room_id"}`.
pub struct RoomInfo {
    room: String,
}

impl RoomInfo {
    pub fn parse(req: &Request) -> Result<RoomInfo, RequestError> {
        Ok(RoomInfo {
            room: room_of(req)?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let job = Job::AdminQuery(AdminQuery::Info {
            username: cx.user.clone(),
            room: self.room,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

/// `room_update {"room_id","name"?,"topic"?,"private"?}`: owner or admin.
pub struct RoomUpdate {
    room: String,
    name: Option<String>,
    topic: Option<String>,
    private: Option<bool>,
}

impl RoomUpdate {
    pub fn parse(req: &Request) -> Result<RoomUpdate, RequestError> {
        let room = room_of(req)?;
        let name = match req.body.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) => match crate::names::room_name(n) {
                Ok(Some(name)) => Some(name),
                Ok(None) => {
                    return Err(RequestError::with(
                        ErrorCode::BadRequest,
                        "a room name cannot be empty",
                    ))
                }
                Err(e) => {
                    return Err(RequestError::with(
                        ErrorCode::BadRequest,
                        format!("invalid room name: it {e}"),
                    ))
                }
            },
            Some(_) => {
                return Err(RequestError::with(
                    ErrorCode::BadRequest,
                    "\"name\" must be a string",
                ))
            }
        };
        Ok(RoomUpdate {
            room,
            name,
            topic: topic_of(req)?,
            private: private_of(req)?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        check_role(hub, cx, &self.room, Role::moderates)?;
        let by_nickname = hub.state.nickname_of(&cx.user);
        let job = Job::Admin(AdminJob::Update {
            by: cx.user.clone(),
            by_nickname,
            room: self.room,
            name: self.name,
            topic: self.topic,
            private: self.private,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

/// `set_role {"room_id","user","role"}` (`role` admin or member) and
/// `transfer_owner {"room_id","user"}`: the owner only.
pub struct SetRole {
    room: String,
    user: String,
    role: Role,
}

impl SetRole {
    pub fn parse_set_role(req: &Request) -> Result<SetRole, RequestError> {
        let room = room_of(req)?;
        let user = user_of(req)?;
        let role = match req.str("role")? {
            Some("admin") => Role::Admin,
            Some("member") => Role::Member,
            _ => {
                return Err(RequestError::with(
                    ErrorCode::BadRequest,
                    "\"role\" must be \"admin\" or \"member\"",
                ))
            }
        };
        Ok(SetRole { room, user, role })
    }

    pub fn parse_transfer(req: &Request) -> Result<SetRole, RequestError> {
        Ok(SetRole {
            room: room_of(req)?,
            user: user_of(req)?,
            role: Role::Owner,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        check_role(hub, cx, &self.room, |r| r == Role::Owner)?;
        let job = Job::Admin(AdminJob::Role {
            by: cx.user.clone(),
            room: self.room,
            user: self.user,
            role: self.role,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

fn view_event(kind: &str, v: &RoomView) -> Event {
    Event::new(kind)
        .with("room", v.room.as_str())
        .with("name", v.name.as_str())
        .with("topic", v.topic.clone())
        .with("private", v.private)
}

/// A room administration job is done.
pub fn done(hub: &mut Hub, t: &Ticket, outcome: AdminOutcome) {
    match outcome {
        AdminOutcome::Info(Err(r)) | AdminOutcome::Updated { result: Err(r), .. } => {
            hub.conns.reply_error(t.conn, &t.req_id, refusal(r))
        }
        AdminOutcome::Roles { result: Err(r), .. } => {
            hub.conns.reply_error(t.conn, &t.req_id, refusal(r))
        }
        AdminOutcome::Info(Ok(v)) => {
            let ev = view_event("room_info", &v)
                .with("owner", v.owner.clone())
                .with("role", v.role.as_str())
                .with("members", v.members);
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        AdminOutcome::Updated {
            by,
            result: Ok(v),
            logged,
        } => {
            let entry = hub.history.append_logged(logged);
            hub.state.touched_rooms.insert(v.room.clone());
            let ev = view_event("room_updated", &v).with("by", by);
            // In the room's order (the entry recording it), like any entry.
            match entry {
                Some(id) => {
                    let echo = t.req_id.as_ref().map(|r| (t.conn, r));
                    hub.entry_to_room(&v.room, id, &ev.with("id", id), echo)
                }
                None => hub.to_room(&v.room, &ev),
            }
        }
        AdminOutcome::Roles {
            request,
            by,
            room,
            user,
            role,
            result: Ok(changes),
        } => {
            // The ack first: the requester's connections hear the events as
            // every member does, after it.
            let kind = match request {
                RoleRequest::SetRole => "set_role_ack",
                RoleRequest::TransferOwner => "transfer_owner_ack",
            };
            let ev = Event::new(kind)
                .with("room", room.as_str())
                .with("user", user)
                .with("role", role.as_str());
            hub.conns.reply(t.conn, &t.req_id, ev);
            for c in changes {
                role_changed(hub, &room, &c.user, c.role, Some(&by));
            }
        }
        // Answered by `invites::done` and `moderation::done` above.
        AdminOutcome::Invited { .. }
        | AdminOutcome::Invites(_)
        | AdminOutcome::Declined { .. }
        | AdminOutcome::Pruned
        | AdminOutcome::Removed { .. }
        | AdminOutcome::Unbanned { .. }
        | AdminOutcome::Bans { .. } => {}
    }
}

/// A role changed (here or on another node): memory follows, and every
/// member's connections get `role_changed` (`by` none: ownership passed on
/// a leave).
pub fn role_changed(hub: &mut Hub, room: &str, user: &str, role: Role, by: Option<&str>) {
    hub.state.set_role(user, room, role);
    let ev = Event::new("role_changed")
        .with("room", room)
        .with("user", user)
        .with("role", role.as_str())
        .with("by", by);
    hub.to_room(room, &ev);
}

/// Another node's note of a role change; `told`: the members hear it.
pub fn heard_role(hub: &mut Hub, room: &str, user: &str, role: &str, by: Option<&str>, told: bool) {
    let Some(role) = Role::parse(role) else {
        return;
    };
    if told {
        role_changed(hub, room, user, role, by);
    } else {
        hub.state.set_role(user, room, role);
    }
}

/// Another node's note of a `room_update`: this node's members hear it.
pub fn heard_update(hub: &mut Hub, u: &crate::db::notify::RoomUpdate) {
    let ev = Event::new("room_updated")
        .with("room", u.room.as_str())
        .with("name", u.name.as_str())
        .with("topic", u.topic.clone())
        .with("private", u.private)
        .with("by", u.by.as_str())
        .with("id", u.id);
    hub.to_room(&u.room, &ev);
}
