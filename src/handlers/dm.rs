//! `room_dm`: a direct message between two members of a room, delivered to the
//! recipient's open connections or queued (persistently) while they are offline.

use super::ctx::Ctx;
use super::messages::{check_text, client_id_taken};
use super::strangers;
use crate::db::jobs::{ChatEntry, DmResult, NewMessage, StrangerReply};
use serde_json::Value;

use crate::conn::ConnId;
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};
use crate::state::{ParkedDm, Reach};

/// `room_dm {"room_id","to","text","client_id"?}`.
pub struct RoomDm {
    room: String,
    to: String,
    client_id: Option<String>,
}

impl RoomDm {
    pub fn parse(req: &Request) -> Result<RoomDm, RequestError> {
        match (req.room_id()?, req.str("to")?) {
            (Some(room), Some(to)) => Ok(RoomDm {
                room: room.to_string(),
                to: to.to_string(),
                client_id: req.client_id()?,
            }),
            _ => Err(ErrorCode::RoomIdAndToRequired.into()),
        }
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let refuse = |hub: &mut Hub, status: &str| {
            ack_to(hub, cx.id, &cx.req.req_id, &self.room, &self.to, status);
            Ok(())
        };
        if !hub.state.is_member(&cx.user, &self.room) {
            let reply = StrangerReply::DmAck { to: self.to };
            return strangers::refuse(hub, cx, &self.room, reply);
        }
        let text = check_text(cx.req)?;
        // A recipient in memory has exact membership; otherwise the writer checks.
        let recipient_known = match hub.state.users.get(&self.to) {
            Some(u) if u.loaded => {
                if !u.rooms.contains(&self.room) {
                    return refuse(hub, "RECIPIENT_NOT_IN_ROOM");
                }
                true
            }
            _ => false,
        };
        // Known blocked (the sender is loaded, so memory knows who blocks
        // them): refused without a write. Otherwise the writer checks, in
        // the DM's own transaction, what memory may not have heard yet.
        if hub.state.hides(&cx.user, &self.to) {
            return refuse(hub, "BLOCKED");
        }
        // Queued in the same transaction only when nobody can be loading the
        // recipient's queue meanwhile (their loads wait for this write); anything
        // else is decided when the DM has committed.
        let queue = hub.state.reach(&self.to) == Reach::Offline;
        let from_nickname = hub.state.users[&cx.user].nickname.clone();
        let job = Job::Dm {
            msg: NewMessage {
                poster: crate::db::jobs::Poster::Member,
                room: self.room,
                from: cx.user.clone(),
                from_nickname,
                text,
                client_id: self.client_id,
                token_gen: cx.token_gen(hub),
            },
            to: self.to,
            recipient_known,
            queue,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

fn ack_to(hub: &mut Hub, conn: ConnId, req_id: &Option<Value>, room: &str, to: &str, status: &str) {
    let ev = Event::new("dm_ack")
        .with("room", room)
        .with("to", to)
        .with("status", status);
    hub.conns.reply(conn, req_id, ev);
}

/// Answers the sender of a DM.
pub fn ack(hub: &mut Hub, t: &Ticket, room: &str, to: &str, status: &str) {
    ack_to(hub, t.conn, &t.req_id, room, to, status);
}

fn dm_event(msg: &NewMessage, to: &str, id: i64) -> Event {
    let ev = Event::new("dm")
        .with("id", id)
        .with("room", msg.room.as_str())
        .with("from", msg.from.as_str())
        .with("from_nickname", msg.from_nickname.as_str())
        .with("to", to)
        .with("text", msg.text.as_str());
    match &msg.client_id {
        Some(c) => ev.with("client_id", c.as_str()),
        None => ev,
    }
}

/// The DM has committed: deliver it to the recipient's open connections, hand it
/// to a connection of theirs that is loading, or queue it.
pub fn stored(hub: &mut Hub, t: &Ticket, msg: NewMessage, to: String, result: DmResult) {
    let (id, ts, queued) = match result {
        DmResult::RecipientNotInRoom => {
            return ack(hub, t, &msg.room, &to, "RECIPIENT_NOT_IN_ROOM");
        }
        DmResult::Blocked => return ack(hub, t, &msg.room, &to, "BLOCKED"),
        DmResult::Stored {
            id,
            ts,
            queued,
            elsewhere,
        } => {
            if elsewhere {
                // Another node has the recipient's connection and delivers it.
                hub.svc.metrics.dms += 1;
                remember(hub, &msg, &to, id, ts);
                return ack(hub, t, &msg.room, &to, "DELIVERED");
            }
            (id, ts, queued)
        }
        DmResult::Duplicate(d) if d.entry.kind != "dm" => {
            return hub.conns.reply_error(t.conn, &t.req_id, client_id_taken());
        }
        DmResult::Duplicate(d) => {
            // A retry: the original stands, and its sender hears how it went.
            let status = if d.queued { "QUEUED" } else { "DELIVERED" };
            let to = d.entry.to.clone().unwrap_or(to);
            return ack(hub, t, &d.entry.room, &to, status);
        }
    };
    hub.svc.metrics.dms += 1;
    remember(hub, &msg, &to, id, ts);
    if queued {
        return ack(hub, t, &msg.room, &to, "QUEUED");
    }
    match hub.state.reach(&to) {
        Reach::Online => {
            hub.entry_to_user(&to, &msg.room, id, &dm_event(&msg, &to, id));
            ack(hub, t, &msg.room, &to, "DELIVERED");
        }
        Reach::Loading => {
            // Its load may have read the queue already: the opening connection
            // gets it from memory instead, and the sender hears when it does.
            let parked = ParkedDm {
                ticket: Ticket::new(t.conn, t.req_id.clone()),
                msg,
                to: to.clone(),
                id,
                ts,
            };
            if let Some(user) = hub.state.users.get_mut(&to) {
                user.parked_dms.push(parked);
            }
        }
        Reach::Offline => {
            // The recipient went offline while it was being written.
            queue_parked(
                hub,
                vec![ParkedDm {
                    ticket: Ticket::new(t.conn, t.req_id.clone()),
                    msg,
                    to,
                    id,
                    ts,
                }],
            );
        }
    }
}

/// Keeps the history cache exact.
fn remember(hub: &mut Hub, msg: &NewMessage, to: &str, id: i64, ts: std::time::SystemTime) {
    hub.history.append(ChatEntry {
        id,
        ts,
        kind: "dm".into(),
        room: msg.room.clone(),
        from: msg.from.clone(),
        from_nickname: msg.from_nickname.clone(),
        to: Some(to.to_string()),
        text: msg.text.clone(),
        client_id: msg.client_id.clone(),
        edited_at: None,
        deleted: false,
        deleted_by: None,
    });
}

/// Puts committed DMs into their recipient's offline queue; each sender is
/// answered `QUEUED` once that has committed.
pub fn queue_parked(hub: &mut Hub, parked: Vec<ParkedDm>) {
    for p in parked {
        let room = p.msg.room.clone();
        let (conn, req_id) = (p.ticket.conn, p.ticket.req_id.clone());
        let recipient = p.to.clone();
        let job = Job::QueueDm {
            msg: p.msg,
            to: p.to,
            log_id: p.id,
            at: p.ts,
        };
        if !hub.submit(Ticket::new(conn, req_id.clone()), job) {
            crate::log!(Warn, "could not queue a DM for {recipient} in {room}");
            hub.conns.reply_error(
                conn,
                &req_id,
                RequestError::with(
                    ErrorCode::Unavailable,
                    "the DM is stored but could not be queued for its recipient",
                ),
            );
        }
    }
}

/// A connection of `to` has opened: the DMs parked for it are delivered.
pub fn deliver_parked(hub: &mut Hub, to: &str) {
    let parked = match hub.state.users.get_mut(to) {
        Some(u) => std::mem::take(&mut u.parked_dms),
        None => return,
    };
    for p in parked {
        hub.entry_to_user(to, &p.msg.room, p.id, &dm_event(&p.msg, to, p.id));
        ack(hub, &p.ticket, &p.msg.room, to, "DELIVERED");
    }
}
