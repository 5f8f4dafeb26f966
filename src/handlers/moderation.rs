//! Kicks and bans (v3): `kick`, `ban`, `unban`, `room_bans`. The writer
//! decides, in the room's order, whether the moderator may remove the user
//! and ends the membership with a system entry; here the removal reaches
//! memory (the user is no longer a member on this node: `State::left` also
//! drops what their connections held of the room) and the room — the
//! removed user's connections included, with this last event.

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::room_admin::{refusal, user_of};
use crate::db::jobs::{AdminJob, AdminOutcome, AdminQuery, Ban, Refusal, RemoveStatus, Role};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// The longest reason `kick` and `ban` accept, in characters.
pub const MAX_REASON: usize = 500;

fn room_of(req: &Request) -> Result<String, RequestError> {
    Ok(req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?.to_string())
}

/// A plain member (as memory knows them) is refused at once; the writer
/// decides for everyone else.
fn check_moderator(hub: &Hub, cx: &Ctx, room: &str) -> Result<(), RequestError> {
    match hub.state.role(&cx.user, room) {
        Some(Role::Member) => Err(refusal(Refusal::NotAllowed)),
        _ => Ok(()),
    }
}

/// `kick {"room_id","user","reason"?}` and `ban {…}`.
pub struct Remove {
    room: String,
    user: String,
    reason: Option<String>,
    ban: bool,
}

impl Remove {
    pub fn parse(req: &Request, ban: bool) -> Result<Remove, RequestError> {
        let room = room_of(req)?;
        let user = user_of(req)?;
        let reason = match req.body.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if t.contains('\0') => {
                return Err(RequestError::with(
                    ErrorCode::BadRequest,
                    "\"reason\" contains a NUL character",
                ))
            }
            Some(Value::String(t)) if t.len() > MAX_REASON && t.chars().count() > MAX_REASON => {
                return Err(RequestError::with(
                    ErrorCode::TextTooLong,
                    format!("a reason is limited to {MAX_REASON} characters"),
                ))
            }
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => {
                return Err(RequestError::with(
                    ErrorCode::BadRequest,
                    "\"reason\" must be a string",
                ))
            }
        };
        Ok(Remove {
            room,
            user,
            reason,
            ban,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        check_moderator(hub, cx, &self.room)?;
        let job = Job::Admin(AdminJob::Remove {
            by: cx.user.clone(),
            by_nickname: hub.state.nickname_of(&cx.user),
            room: self.room,
            user: self.user,
            reason: self.reason,
            ban: self.ban,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

/// `unban {"room_id","user"}` and `room_bans {"room_id"}` (`user` none).
pub struct Bans {
    room: String,
    user: Option<String>,
}

impl Bans {
    pub fn parse_unban(req: &Request) -> Result<Bans, RequestError> {
        Ok(Bans {
            room: room_of(req)?,
            user: Some(user_of(req)?),
        })
    }

    pub fn parse_list(req: &Request) -> Result<Bans, RequestError> {
        Ok(Bans {
            room: room_of(req)?,
            user: None,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        check_moderator(hub, cx, &self.room)?;
        let job = match self.user {
            Some(user) => Job::Admin(AdminJob::Unban {
                by: cx.user.clone(),
                room: self.room,
                user,
            }),
            None => Job::AdminQuery(AdminQuery::Bans {
                username: cx.user.clone(),
                room: self.room,
            }),
        };
        cx.submit(hub, job);
        Ok(())
    }
}

/// The `system` event of a removal.
pub fn removal_event(
    room: &str,
    user: &str,
    nickname: &str,
    banned: bool,
    by: &str,
    reason: Option<&str>,
) -> Event {
    Event::new("system")
        .with("room", room)
        .with("event", if banned { "banned" } else { "kicked" })
        .with("user", user)
        .with("user_nickname", nickname)
        .with("by", by)
        .with("reason", reason)
}

/// A membership a moderator ended (committed here, or heard from another
/// node in the room's order): the user stops being a member here first, so
/// nothing of the room reaches them after this event, which every member and
/// the removed user's connections get.
pub fn removed(hub: &mut Hub, room: &str, user: &str, entry: i64, ev: Event) {
    hub.state.left(user, room);
    let ev = ev.with("id", entry);
    hub.entry_to_room(room, entry, &ev, None);
    hub.entry_to_user(user, room, entry, &ev);
}

fn bans_json(list: &[Ban]) -> Vec<Value> {
    list.iter()
        .map(|b| {
            json!({
                "username": b.username,
                "by": b.by,
                "reason": b.reason,
                "at": crate::time::format_iso(b.at),
            })
        })
        .collect()
}

/// A moderation job is done. `None`: not one of this family's outcomes.
pub fn done(hub: &mut Hub, t: &Ticket, outcome: AdminOutcome) -> Option<AdminOutcome> {
    match outcome {
        AdminOutcome::Removed { result: Err(r), .. }
        | AdminOutcome::Unbanned { result: Err(r), .. }
        | AdminOutcome::Bans { result: Err(r), .. } => {
            hub.conns.reply_error(t.conn, &t.req_id, refusal(r))
        }
        AdminOutcome::Removed {
            by,
            room,
            user,
            reason,
            ban,
            result: Ok(status),
            removed: gone,
        } => {
            let kind = if ban { "ban_ack" } else { "kick_ack" };
            let ack = Event::new(kind)
                .with("room", room.as_str())
                .with("user", user.as_str())
                .with("status", status.as_str());
            hub.conns.reply(t.conn, &t.req_id, ack);
            if let Some(r) = gone {
                let entry = hub.history.append_logged(r.logged);
                hub.state.touched_rooms.insert(room.clone());
                let banned = matches!(status, RemoveStatus::Banned);
                let ev = removal_event(&room, &user, &r.nickname, banned, &by, reason.as_deref());
                match entry {
                    Some(id) => removed(hub, &room, &user, id, ev),
                    None => hub.state.left(&user, &room),
                }
            }
        }
        AdminOutcome::Unbanned {
            room,
            user,
            result: Ok(was),
        } => {
            let ev = Event::new("unban_ack")
                .with("room", room)
                .with("user", user)
                .with("status", if was { "UNBANNED" } else { "NOT_BANNED" });
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        AdminOutcome::Bans {
            room,
            result: Ok(list),
        } => {
            let ev = Event::new("room_bans")
                .with("room", room)
                .with("bans", bans_json(&list));
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        other => return Some(other),
    }
    None
}
