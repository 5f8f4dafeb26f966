//! `history`: a member's view of a room's log, newest `limit` entries matching
//! the filters, oldest first. DMs are visible only to their two parties.

use serde_json::Value;

use super::ctx::Ctx;
use super::strangers;
use crate::db::jobs::{ChatEntry, HistoryQuery};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{history_item, ErrorCode, Event, Request, RequestError};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 200;

/// `history {"room_id","limit"?,"before"?,"after"?,"before_id"?,"after_id"?}`.
pub struct History {
    query: HistoryQuery,
}

fn timestamp(req: &Request, name: &str) -> Result<Option<std::time::SystemTime>, RequestError> {
    match req.str(name)? {
        None => Ok(None),
        Some(s) => crate::time::parse_iso(s).map(Some).ok_or_else(|| {
            RequestError::with(
                ErrorCode::BadRequest,
                format!("\"{name}\" must be an ISO-8601 timestamp"),
            )
        }),
    }
}

impl History {
    pub fn parse(req: &Request) -> Result<History, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        let limit = req
            .int("limit")?
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT);
        Ok(History {
            query: HistoryQuery {
                room: room.to_string(),
                username: String::new(),
                limit,
                before: timestamp(req, "before")?,
                after: timestamp(req, "after")?,
                before_id: req.int("before_id")?,
                after_id: req.int("after_id")?,
            },
        })
    }

    pub fn apply(mut self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if !hub.state.is_member(&cx.user, &self.query.room) {
            return strangers::not_a_member(hub, cx, &self.query.room);
        }
        self.query.username = cx.user.clone();
        let cached = hub
            .history
            .query(&self.query)
            .map(|items| cached_reply(&self.query.room, &items, &cx.req.req_id));
        if let Some(frame) = cached {
            hub.conns.send_reply(cx.id, &frame);
            return Ok(());
        }
        if hub.history.needs_fill(&self.query.room) {
            let fill = Job::HistoryFill {
                room: self.query.room.clone(),
                limit: hub.history.per_room() as i64,
            };
            hub.submit(Ticket::internal(), fill);
        }
        cx.submit(hub, Job::History(self.query));
        Ok(())
    }
}

/// A `history` reply assembled from pre-serialized items: the same JSON an
/// [`Event`] would produce, without building it value by value.
fn cached_reply(room: &str, items: &[&str], req_id: &Option<Value>) -> Vec<u8> {
    let len: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut json = String::with_capacity(len + 128);
    json.push_str("{\"type\":\"history\",\"ts\":\"");
    json.push_str(&crate::time::now_iso());
    json.push_str("\",\"room\":");
    json.push_str(&Value::from(room).to_string());
    json.push_str(",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(item);
    }
    json.push(']');
    if let Some(id) = req_id {
        json.push_str(",\"req_id\":");
        json.push_str(&id.to_string());
    }
    json.push('}');
    crate::ws::text_frame(json.as_bytes())
}

/// A room's newest entries, read to fill the history cache.
pub fn filled(hub: &mut Hub, room: &str, limit: i64, items: Vec<ChatEntry>) {
    hub.history.filled(room, limit, items);
}

pub fn done(hub: &mut Hub, t: &Ticket, room: String, items: Vec<ChatEntry>) {
    let items: Vec<Value> = items.iter().map(history_item).collect();
    let ev = Event::new("history")
        .with("room", room)
        .with("items", items);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
