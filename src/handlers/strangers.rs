//! What a non-member is told about a room they named. Before private rooms it
//! was always the same (`NOT_A_MEMBER`, or the request's own refusal), and old
//! clients rely on it; a private room must instead look exactly like a room
//! that does not exist (`ROOM_NOT_FOUND`), or anyone could probe for it.
//!
//! Memory knows the requester's memberships exactly, but not whether a room
//! they do not belong to is private: that is read where it is stored, and only
//! on this refusal path (paid for by the request bucket like any request), so
//! a member's request never costs the read.

use super::ctx::Ctx;
use crate::db::jobs::StrangerReply;
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, RequestError};

/// Refuses a non-member's request about `room` once its privacy is known.
pub fn refuse(
    hub: &mut Hub,
    cx: &Ctx,
    room: &str,
    reply: StrangerReply,
) -> Result<(), RequestError> {
    let job = Job::Stranger {
        room: room.to_string(),
        reply,
    };
    cx.submit(hub, job);
    Ok(())
}

/// Refuses with `error` `NOT_A_MEMBER`, or `ROOM_NOT_FOUND` for a private room.
pub fn not_a_member(hub: &mut Hub, cx: &Ctx, room: &str) -> Result<(), RequestError> {
    refuse(hub, cx, room, StrangerReply::NotAMember)
}

pub fn done(hub: &mut Hub, t: &Ticket, room: &str, reply: StrangerReply, hidden: bool) {
    if hidden {
        let e = RequestError::new(ErrorCode::RoomNotFound);
        return hub.conns.reply_error(t.conn, &t.req_id, e);
    }
    match reply {
        StrangerReply::NotAMember => {
            hub.conns
                .reply_error(t.conn, &t.req_id, ErrorCode::NotAMember.into());
        }
        StrangerReply::LeaveAck => {
            let ev = Event::new("leave_ack")
                .with("room", room)
                .with("status", "NOT_A_MEMBER");
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
        StrangerReply::DmAck { to } => {
            // `room_dm`'s own refusal of a sender outside the room.
            let ev = Event::new("dm_ack")
                .with("room", room)
                .with("to", to)
                .with("status", "SENDER_NOT_IN_ROOM");
            hub.conns.reply(t.conn, &t.req_id, ev);
        }
    }
}
