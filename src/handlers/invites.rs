//! Invitations (v3): `invite`, `my_invites`, `decline_invite`, and the
//! `invited` event — from this node's writes and from other nodes' notes.
//! An invitation is accepted by `join {"room_id"}` (see `rooms`). Who may
//! invite, bans, blocks and the invitee's bound are decided by the writer in
//! the transaction that stores the invitation.

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::room_admin::{refusal, user_of};
use crate::db::jobs::{AdminJob, AdminOutcome, AdminQuery, Invite, InviteStatus};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `invite {"room_id","user"}`.
pub struct InviteUser {
    room: String,
    user: String,
}

impl InviteUser {
    pub fn parse(req: &Request) -> Result<InviteUser, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(InviteUser {
            room: room.to_string(),
            user: user_of(req)?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let job = Job::Admin(AdminJob::Invite {
            by: cx.user.clone(),
            by_nickname: hub.state.nickname_of(&cx.user),
            room: self.room,
            user: self.user,
            max_rooms: hub.svc.config.max_rooms_per_user as i64,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

/// `my_invites {}`.
pub fn my_invites(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let job = Job::AdminQuery(AdminQuery::MyInvites {
        username: cx.user.clone(),
    });
    cx.submit(hub, job);
    Ok(())
}

/// `decline_invite {"room_id"}`.
pub struct Decline {
    room: String,
}

impl Decline {
    pub fn parse(req: &Request) -> Result<Decline, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Decline {
            room: room.to_string(),
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let job = Job::Admin(AdminJob::Decline {
            user: cx.user.clone(),
            room: self.room,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

fn invite_fields(i: &Invite) -> Value {
    json!({
        "room": i.room,
        "name": i.name,
        "private": i.private,
        "by": i.by,
        "by_nickname": i.by_nickname,
    })
}

/// The `invited` event to every connection of the invitee on this node.
pub fn invited(hub: &mut Hub, user: &str, i: &Invite) {
    let mut ev = Event::new("invited");
    if let Value::Object(fields) = invite_fields(i) {
        for (k, v) in fields {
            ev = ev.with(&k, v);
        }
    }
    hub.to_user(user, &ev);
}

/// An invitation job is done. `None`: not one of this family's outcomes.
pub fn done(hub: &mut Hub, t: &Ticket, outcome: AdminOutcome) -> Option<AdminOutcome> {
    match outcome {
        AdminOutcome::Invited { result: Err(r), .. } => {
            hub.conns.reply_error(t.conn, &t.req_id, refusal(r))
        }
        AdminOutcome::Invited {
            room,
            user,
            result: Ok(status),
            invite,
        } => {
            let ev = Event::new("invite_ack")
                .with("room", room)
                .with("user", user.as_str())
                .with("status", status.as_str());
            hub.conns.reply(t.conn, &t.req_id, ev);
            if let (InviteStatus::Invited, Some(i)) = (status, invite) {
                invited(hub, &user, &i);
            }
        }
        AdminOutcome::Invites(list) => {
            let items: Vec<Value> = list
                .iter()
                .map(|i| {
                    let mut v = invite_fields(i);
                    v["at"] = crate::time::format_iso(i.at).into();
                    v
                })
                .collect();
            let ev = Event::new("invites").with("invites", items);
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        AdminOutcome::Declined { room, declined } => {
            let status = if declined { "DECLINED" } else { "NO_INVITE" };
            let ev = Event::new("decline_ack")
                .with("room", room)
                .with("status", status);
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        AdminOutcome::Pruned => {}
        other => return Some(other),
    }
    None
}
