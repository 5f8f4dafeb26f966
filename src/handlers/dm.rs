//! `room_dm`: a direct message between two members of a room, delivered to the
//! recipient's open connections or queued (persistently) while they are offline.

use super::messages::check_text;
use super::Ctx;
use crate::db::jobs::{ChatEntry, DmResult, NewMessage};
use crate::db::{Job, Ticket};
use crate::protocol::{ErrorCode, Event, Request, RequestError};
use crate::server::hub::Hub;

/// `room_dm {"room_id","to","text"}`.
pub struct RoomDm {
    room: String,
    to: String,
}

impl RoomDm {
    pub fn parse(req: &Request) -> Result<RoomDm, RequestError> {
        match (req.room_id()?, req.str("to")?) {
            (Some(room), Some(to)) => Ok(RoomDm {
                room: room.to_string(),
                to: to.to_string(),
            }),
            _ => Err(ErrorCode::RoomIdAndToRequired.into()),
        }
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let ack = |hub: &mut Hub, room: &str, to: &str, status: &str| {
            let ev = Event::new("dm_ack")
                .with("room", room)
                .with("to", to)
                .with("status", status);
            hub.reply(cx.id, &cx.req.req_id, ev);
        };
        if !hub.state.is_member(&cx.user, &self.room) {
            ack(hub, &self.room, &self.to, "SENDER_NOT_IN_ROOM");
            return Ok(());
        }
        let text = check_text(cx.req)?;
        // A recipient in memory has exact membership; otherwise the writer checks.
        let (recipient_known, online) = match hub.state.users.get(&self.to) {
            Some(u) if u.loaded => {
                if !u.rooms.contains(&self.room) {
                    ack(hub, &self.room, &self.to, "RECIPIENT_NOT_IN_ROOM");
                    return Ok(());
                }
                (true, !u.conns.is_empty())
            }
            _ => (false, false),
        };
        let from_nickname = hub.state.users[&cx.user].nickname.clone();
        let job = Job::Dm {
            msg: NewMessage {
                room: self.room,
                from: cx.user.clone(),
                from_nickname,
                text,
            },
            to: self.to,
            recipient_known,
            queue: !online,
        };
        hub.submit_ws(cx.id, &cx.req.req_id, job);
        Ok(())
    }
}

pub fn stored(hub: &mut Hub, t: &Ticket, msg: NewMessage, to: String, result: DmResult) {
    let room = msg.room.clone();
    let status = match result {
        DmResult::RecipientNotInRoom => "RECIPIENT_NOT_IN_ROOM",
        DmResult::Stored { id, ts, queued } => {
            hub.metrics.dms += 1;
            hub.history.append(ChatEntry {
                id,
                ts,
                kind: "dm".into(),
                room: msg.room.clone(),
                from: msg.from.clone(),
                from_nickname: msg.from_nickname.clone(),
                to: Some(to.clone()),
                text: msg.text.clone(),
            });
            if queued {
                "QUEUED"
            } else if hub.state.is_online(&to) {
                let ev = Event::new("dm")
                    .with("id", id)
                    .with("room", msg.room)
                    .with("from", msg.from)
                    .with("from_nickname", msg.from_nickname)
                    .with("to", to.as_str())
                    .with("text", msg.text);
                hub.to_user(&to, &ev);
                "DELIVERED"
            } else {
                // The recipient went offline while it was being written.
                let job = Job::QueueDm {
                    msg,
                    to: to.clone(),
                    log_id: id,
                    at: ts,
                };
                if !hub.submit(Ticket::internal(), job) {
                    crate::log!(Warn, "could not queue a DM for {to} in {room}");
                }
                "QUEUED"
            }
        }
    };
    let ev = Event::new("dm_ack")
        .with("room", room)
        .with("to", to)
        .with("status", status);
    hub.reply(t.conn, &t.req_id, ev);
}
