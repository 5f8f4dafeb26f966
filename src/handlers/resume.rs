//! `resume`: after a reconnect, everything the client missed in its rooms since
//! the last id it saw, then `resume_ack`.
//!
//! Live traffic keeps flowing while the replay is read, and the client must see
//! each entry above its cursors exactly once and in id order. Three rules give
//! that:
//! - While a resume is answered, the connection's live entry events of its
//!   rooms are held back (`State::begin_resume`; the job is submitted after
//!   that, so its snapshot cannot miss an entry that is not held back). They
//!   then follow the replay, minus those the replay already contained. Edits
//!   and deletes of entries in those rooms are held in the same queue, so they
//!   never overtake the entry they change.
//! - A fresh connection holds back all its live entry events until its first
//!   request starts, or [`OPENING_HOLD`] passes (`conn::OpeningHold`): a client
//!   that opens with `resume` is sent nothing live before the request is taken,
//!   and what was held for the resumed rooms carries over into the resume.
//! - The replay never contains what the connection was already sent live: it
//!   stops below the first entry of the room the connection got live
//!   (`WsState::first_live`), since every later entry was sent too. Live events
//!   that overtook a later `resume` keep their place.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::ctx::Ctx;
use super::messages::entry_event;
use crate::close::CloseReason;
use crate::conn::ConnId;
use crate::db::jobs::{Replay, ResumeCursor, RoomReplay};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};
use crate::state::Held;

/// Rooms one `resume` may name.
pub const MAX_ROOMS: usize = 100;
/// Entries replayed per room at most; with more, the room is not replayed
/// (`recovered:false`) and the client reloads it with `history`.
pub const MAX_REPLAY: i64 = 1000;
/// Rows one `resume` may have the database examine (entries counted, rooms
/// looked up): with more, the rooms past it answer `recovered:false`.
pub const ROWS_PER_REQUEST: i64 = 2_000;
/// How long a fresh connection's live entry events wait for its first request
/// at most: long enough for a client's `resume` sent right after the upgrade to
/// arrive, short enough that a client that sends nothing barely notices.
pub const OPENING_HOLD: Duration = Duration::from_secs(1);

/// `resume {"rooms":{"<room id>": <last id seen>, …}}`.
pub struct Resume {
    rooms: Vec<ResumeCursor>,
    /// When this is the connection's first request: what its opening hold
    /// kept back.
    opening: Option<Held>,
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
                before: None,
            });
        }
        Ok(Resume {
            rooms: out,
            opening: None,
        })
    }

    /// This is the connection's first request: it takes over what the opening
    /// hold kept back.
    pub fn carry(&mut self, held: Held) {
        self.opening = Some(held);
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let (mut mine, refused): (Vec<ResumeCursor>, Vec<ResumeCursor>) = self
            .rooms
            .into_iter()
            .partition(|c| hub.state.is_member(&cx.user, &c.room));
        let refused: Vec<String> = refused.into_iter().map(|c| c.room).collect();
        let rooms: HashSet<String> = mine.iter().map(|c| c.room.clone()).collect();
        // The opening hold's events of these rooms stay held until the replay
        // (which will contain them); the others go out now.
        let mut carried = Held::default();
        if let Some(mut held) = self.opening {
            carried = held.split_off(&rooms);
            if !release(hub, cx.id, held) {
                return Ok(());
            }
        }
        if let Some(ws) = hub.conns.ws_mut(cx.id) {
            for c in &mut mine {
                c.before = ws.first_live.get(c.room.as_str()).copied();
            }
        }
        // Rooms the user does not belong to are answered `NOT_A_MEMBER`, or
        // `ROOM_NOT_FOUND` when private (see `strangers`): the job finds out.
        let strangers = refused.clone();
        hub.state.begin_resume(cx.id, rooms, refused, carried);
        // What the replay may cost is fixed before anything is read: the
        // user's row budget, at most a request's share of it.
        let mut rows = hub
            .svc
            .budgets
            .rows
            .available(&cx.user, Instant::now())
            .min(ROWS_PER_REQUEST as f64) as i64;
        if rows < mine.len() as i64 {
            // Not even the rooms can be looked up: every one is reloaded.
            if let Some(buf) = hub.state.resume_buffers.get_mut(&cx.id) {
                buf.skipped = mine.drain(..).map(|c| c.room).collect();
            }
            rows = 0;
        }
        if mine.is_empty() && strangers.is_empty() {
            finish(hub, cx.id, &cx.req.req_id, Vec::new(), &[]);
            return Ok(());
        }
        // Reserved now, so that the user's other connections cannot spend
        // it at the same time; what the job did not use is given back.
        hub.svc
            .budgets
            .rows
            .charge(&cx.user, rows as f64, Instant::now());
        let job = Job::Resume {
            username: cx.user.clone(),
            rooms: mine,
            strangers,
            limit: MAX_REPLAY,
            rows,
            bytes: replay_bytes(hub),
        };
        if !cx.submit(hub, job) {
            hub.svc
                .budgets
                .rows
                .charge(&cx.user, -(rows as f64), Instant::now());
            abandon(hub, cx.id);
        }
        Ok(())
    }
}

/// A room the budget did not reach: `recovered:false`, nothing replayed.
fn over_budget(room: String) -> RoomReplay {
    RoomReplay {
        room,
        entries: Vec::new(),
        pruned: false,
        too_many: false,
        over_budget: true,
    }
}

/// The most a replay may queue: a larger one would only get the client
/// dropped as a slow consumer. Rooms past it answer `recovered:false` and are
/// reloaded with `history`.
fn replay_bytes(hub: &Hub) -> usize {
    hub.svc.config.max_output_bytes / 2
}

pub fn done(hub: &mut Hub, t: &Ticket, replay: Replay) {
    // What the job reserved and did not use goes back. Settled even when the
    // connection is gone: closing it early must not make the replay free.
    hub.svc.metrics.budgeted_rows += replay.examined as u64;
    hub.svc.budgets.rows.charge(
        &replay.username,
        (replay.examined - replay.reserved) as f64,
        Instant::now(),
    );
    finish(hub, t.conn, &t.req_id, replay.rooms, &replay.hidden);
}

/// The replay, then `resume_ack`, then the live events held back meanwhile.
/// Frames are built a room at a time and only while they fit the reply's
/// budget (the database sized the rooms from their stored text; escaping can
/// make the frames larger).
/// `hidden`: the rooms of `buf.refused` that are private.
fn finish(
    hub: &mut Hub,
    conn: ConnId,
    req_id: &Option<Value>,
    mut rooms: Vec<RoomReplay>,
    hidden: &[String],
) {
    let Some(mut buf) = hub.state.end_resume(conn) else {
        return;
    };
    rooms.extend(buf.skipped.drain(..).map(over_budget));
    let budget = replay_bytes(hub);
    let mut used = 0;
    let mut acks = Map::new();
    let mut replayed: HashMap<String, Vec<i64>> = HashMap::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for r in rooms {
        if !buf.rooms.contains(&r.room) {
            // The user was removed from the room meanwhile: nothing of it.
            let refused = json!({"recovered": false, "count": 0, "error": "NOT_A_MEMBER"});
            acks.insert(r.room, refused);
            continue;
        }
        frames.clear();
        let mut size = 0;
        let mut fits = !r.over_budget;
        for e in &r.entries {
            let f = entry_event(e).frame();
            size += f.len();
            if used + size > budget {
                fits = false;
                frames.clear();
                break;
            }
            frames.push(f);
        }
        let recovered = fits && !r.pruned && !r.too_many && !buf.held.overflowed.contains(&r.room);
        let mut count = 0;
        if fits {
            used += size;
            for f in &frames {
                hub.conns.send_bytes(conn, f);
            }
            count = frames.len();
            if !r.entries.is_empty() {
                replayed.insert(r.room.clone(), r.entries.iter().map(|e| e.id).collect());
            }
        }
        acks.insert(r.room, json!({"recovered": recovered, "count": count}));
    }
    drop(frames);
    // The replay is a reply: its size is charged like one.
    hub.conns.charge_reply(conn, used);
    for room in buf.refused {
        let error = if hidden.contains(&room) {
            "ROOM_NOT_FOUND"
        } else {
            "NOT_A_MEMBER"
        };
        acks.insert(
            room,
            json!({"recovered": false, "count": 0, "error": error}),
        );
    }
    hub.conns
        .reply(conn, req_id, Event::new("resume_ack").with("rooms", acks));
    flush_held(hub, conn, buf.held, &replayed);
}

/// The resume failed (its job could not run): the events held back go out, as
/// [`release`] says.
pub fn abandon(hub: &mut Hub, conn: ConnId) {
    if let Some(buf) = hub.state.end_resume(conn) {
        release(hub, conn, buf.held);
    }
}

/// Held events end without a replay to follow: a fresh connection's first
/// request is not `resume` (or none came in time), or a resume failed.
/// Everything held goes out, in order. Unless some of it was dropped past the
/// cap: no answer can tell the client which entries it is missing, so it is
/// disconnected as a slow consumer and resumes on its next connection (returns
/// false then).
pub fn release(hub: &mut Hub, conn: ConnId, held: Held) -> bool {
    if !held.overflowed.is_empty() {
        hub.conns.close(conn, CloseReason::SlowConsumer);
        return false;
    }
    flush_held(hub, conn, held, &HashMap::new());
    true
}

/// The connection closes while its opening hold lasts: what was held goes out
/// ahead of the close, as it would have without the hold (a DM among it was
/// answered `DELIVERED` to its sender). Called only for closes that keep unsent
/// output.
pub fn flush_opening_on_close(hub: &mut Hub, id: ConnId) {
    let Some(opening) = hub.conns.ws_mut(id).and_then(|ws| ws.opening.take()) else {
        return;
    };
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    for (_, _, frame) in &opening.held.events {
        conn.out.push_shared(frame);
    }
    hub.conns.dirty.push(id.slot);
}

/// Sends what was held back, minus the entries the replay contained (`replayed`:
/// each room's replayed ids, ascending). The events of rooms that overflowed
/// are dropped: they are incomplete, and those rooms answered
/// `recovered:false` (the client reloads them with `history`); a room with
/// nothing sent live yet so stays without a first live entry, and a later
/// resume still replays it from its cursor.
fn flush_held(hub: &mut Hub, conn: ConnId, held: Held, replayed: &HashMap<String, Vec<i64>>) {
    for (room, id, frame) in held.events {
        if held.overflowed.contains(&room) {
            continue;
        }
        // A change to an entry always follows (the replay may predate it;
        // applying it twice is harmless).
        if let (Some(id), Some(ids)) = (id, replayed.get(&room)) {
            if ids.binary_search(&id).is_ok() {
                continue;
            }
        }
        hub.conns.deliver(conn, &room, id, &frame);
    }
}
