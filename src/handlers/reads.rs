//! `read`: a user's read marker per room, which only moves forward and is
//! synced to the user's other connections (other members are not told).

use super::ctx::Ctx;
use super::strangers;
use crate::db::jobs::ReadResult;
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `read {"room_id","id"}`.
pub struct Read {
    room: String,
    id: i64,
}

impl Read {
    pub fn parse(req: &Request) -> Result<Read, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Read {
            room: room.to_string(),
            id: req.entry_id()?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if !hub.state.is_member(&cx.user, &self.room) {
            return strangers::not_a_member(hub, cx, &self.room);
        }
        if self.id <= 0 {
            return Err(ErrorCode::MessageNotFound.into());
        }
        // Through the writer: ordered with the messages it refers to.
        let job = Job::Read {
            username: cx.user.clone(),
            room: self.room,
            id: self.id,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

pub fn done(hub: &mut Hub, t: &Ticket, username: &str, room: String, result: ReadResult) {
    let (id, moved) = match result {
        ReadResult::NotFound => {
            return hub
                .conns
                .reply_error(t.conn, &t.req_id, ErrorCode::MessageNotFound.into())
        }
        ReadResult::Marker { id, moved } => (id, moved),
    };
    if moved {
        let ev = Event::new("read_marker")
            .with("room", room.as_str())
            .with("id", id);
        let others: Vec<_> = hub
            .state
            .user_conns(username)
            .iter()
            .copied()
            .filter(|c| *c != t.conn)
            .collect();
        if !others.is_empty() {
            hub.fan_out(&others, &ev.shared());
        }
    }
    let ev = Event::new("read_ack").with("room", room).with("id", id);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
