//! `resume`: after a reconnect, everything the client missed in its rooms since
//! the last id it saw, then `resume_ack`.
//!
//! Live traffic keeps flowing while the replay is read. So that the client sees
//! each entry above its cursors exactly once and in id order, the connection's
//! live entry events of those rooms are held back from the moment the request
//! is taken until the replay is sent (`State::begin_resume`; the job is
//! submitted after that, so its snapshot cannot miss an entry that is not held
//! back). The held events then follow the replay, minus those the replay
//! already contained. Edits and deletes of entries in those rooms are held in
//! the same queue, so they never overtake the entry they change.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::messages::entry_event;
use super::Ctx;
use crate::conn::ConnId;
use crate::db::jobs::{ResumeCursor, RoomReplay};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// Rooms one `resume` may name.
pub const MAX_ROOMS: usize = 100;
/// Entries replayed per room at most; with more, the room is not replayed
/// (`recovered:false`) and the client reloads it with `history`.
pub const MAX_REPLAY: i64 = 1000;

/// `resume {"rooms":{"<room id>": <last id seen>, …}}`.
pub struct Resume {
    rooms: Vec<ResumeCursor>,
}

fn bad(detail: &str) -> RequestError {
    RequestError::with(ErrorCode::BadRequest, detail)
}

impl Resume {
    pub fn parse(req: &Request) -> Result<Resume, RequestError> {
        let Some(Value::Object(rooms)) = req.body.get("rooms") else {
            return Err(bad("\"rooms\" must be an object of room id → last id seen"));
        };
        if rooms.len() > MAX_ROOMS {
            return Err(bad("at most 100 rooms per resume"));
        }
        let mut out = Vec::with_capacity(rooms.len());
        for (room, cursor) in rooms {
            let after = cursor
                .as_i64()
                .filter(|c| *c >= 0)
                .ok_or_else(|| bad("each cursor must be a whole number ≥ 0 (an entry id)"))?;
            if room.is_empty() || room.contains('\0') {
                return Err(bad("room ids must be non-empty strings"));
            }
            out.push(ResumeCursor {
                room: room.clone(),
                after,
            });
        }
        Ok(Resume { rooms: out })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let (mine, refused): (Vec<ResumeCursor>, Vec<ResumeCursor>) = self
            .rooms
            .into_iter()
            .partition(|c| hub.state.is_member(&cx.user, &c.room));
        let refused: Vec<String> = refused.into_iter().map(|c| c.room).collect();
        let rooms: HashSet<String> = mine.iter().map(|c| c.room.clone()).collect();
        hub.state.begin_resume(cx.id, rooms, refused);
        if mine.is_empty() {
            finish(hub, cx.id, &cx.req.req_id, Vec::new());
            return Ok(());
        }
        let job = Job::Resume {
            username: cx.user.clone(),
            rooms: mine,
            limit: MAX_REPLAY,
        };
        if !cx.submit(hub, job) {
            abandon(hub, cx.id);
        }
        Ok(())
    }
}

pub fn done(hub: &mut Hub, t: &Ticket, rooms: Vec<RoomReplay>) {
    finish(hub, t.conn, &t.req_id, rooms);
}

/// The replay, then `resume_ack`, then the live events held back meanwhile.
fn finish(hub: &mut Hub, conn: ConnId, req_id: &Option<Value>, rooms: Vec<RoomReplay>) {
    let Some(buf) = hub.state.end_resume(conn) else {
        return;
    };
    // A replay larger than this would only get the client dropped as a slow
    // consumer: rooms past it answer `recovered:false` and are reloaded.
    let budget = hub.config.max_output_bytes / 2;
    let mut used = 0;
    let mut acks = Map::new();
    let mut replayed_up_to: HashMap<String, i64> = HashMap::new();
    for r in rooms {
        let frames: Vec<Vec<u8>> = r.entries.iter().map(|e| entry_event(e).frame()).collect();
        let size: usize = frames.iter().map(Vec::len).sum();
        let fits = used + size <= budget;
        let recovered = fits && !r.pruned && !r.too_many && !buf.overflowed.contains(&r.room);
        let mut count = 0;
        if fits {
            used += size;
            for f in &frames {
                hub.send_bytes(conn, f);
            }
            count = frames.len();
            if let Some(last) = r.entries.last() {
                replayed_up_to.insert(r.room.clone(), last.id);
            }
        }
        acks.insert(r.room, json!({"recovered": recovered, "count": count}));
    }
    for room in buf.refused {
        acks.insert(
            room,
            json!({"recovered": false, "count": 0, "error": "NOT_A_MEMBER"}),
        );
    }
    hub.reply(conn, req_id, Event::new("resume_ack").with("rooms", acks));
    flush_held(hub, conn, buf.held, &replayed_up_to);
}

/// The resume failed (its job could not run): the events held back go out.
pub fn abandon(hub: &mut Hub, conn: ConnId) {
    if let Some(buf) = hub.state.end_resume(conn) {
        flush_held(hub, conn, buf.held, &HashMap::new());
    }
}

fn flush_held(
    hub: &mut Hub,
    conn: ConnId,
    held: Vec<(String, Option<i64>, std::sync::Arc<[u8]>)>,
    replayed_up_to: &HashMap<String, i64>,
) {
    for (room, id, frame) in held {
        // An entry the replay contained is dropped; a change to an entry always
        // follows (the replay may predate it; applying it twice is harmless).
        if let (Some(id), Some(up_to)) = (id, replayed_up_to.get(&room)) {
            if id <= *up_to {
                continue;
            }
        }
        hub.send_shared(conn, &frame);
    }
}
