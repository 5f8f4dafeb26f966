//! Every connection klav holds, and the one way anything reaches one.
//!
//! [`Conns`] owns the slab of connections (each found by a [`ConnId`]: slot and
//! generation, so a reply for a connection that is gone is dropped rather than
//! given to its successor) and the lists the loop works through each turn:
//! connections with new output (`dirty`), to close (`close_soon`), to read again
//! (`again`) and that used their share of a turn (`busy`).
//!
//! All output is queued here, and the output cap (`KLAV_MAX_OUTPUT_BYTES`) is
//! checked in one place, [`push_out`]: a connection whose backlog passes it
//! is closed as a slow consumer. Handlers never write to sockets and never
//! remove connections; the loop flushes `dirty` once a turn and carries out
//! `close_soon`.

use std::sync::Arc;

use serde_json::Value;
use slab::Slab;

use crate::close::CloseReason;
use crate::config::Config;
use crate::conn::{Conn, ConnId, Phase, WsState};
use crate::protocol::{Event, RequestError};

pub struct Conns {
    all: Slab<Conn>,
    /// Slots with new output, flushed once at the end of the loop turn.
    pub dirty: Vec<usize>,
    /// Connections to close after this batch of events (handlers never remove
    /// slab entries themselves).
    pub close_soon: Vec<(ConnId, CloseReason)>,
    /// Connections to read again this turn: what stopped their reading is over
    /// (a held request finished, output drained, a session opened).
    pub again: Vec<ConnId>,
    /// Connections that used their share of a turn with input left over: read
    /// again after everyone else (see `server::reading`).
    pub busy: Vec<ConnId>,
    /// Bytes of large replies queued since freed memory was last given back
    /// (see `server::Server::trim_if_freed`): they come and go within a second,
    /// so the once-a-second look at buffered bytes would miss them.
    pub large_reply_bytes: usize,
    /// `KLAV_MAX_OUTPUT_BYTES`.
    max_output: usize,
    /// `KLAV_RATE_BURST`: how deep large replies may take a request bucket.
    rate_burst: f64,
}

/// What is queued: a frame or response of the connection's own, or a frame
/// shared with other recipients (serialized and framed once).
enum Out<'a> {
    Own(&'a [u8]),
    Shared(&'a Arc<[u8]>),
}

impl Conns {
    pub fn new(config: &Config) -> Conns {
        Conns {
            all: Slab::with_capacity(1024),
            dirty: Vec::new(),
            close_soon: Vec::new(),
            again: Vec::new(),
            busy: Vec::new(),
            large_reply_bytes: 0,
            max_output: config.max_output_bytes,
            rate_burst: config.rate_burst,
        }
    }

    /// The connection, if `id` still names it (slot and generation).
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.all.get(id.slot).filter(|c| c.id == id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.all.get_mut(id.slot).filter(|c| c.id == id)
    }

    /// Whatever holds `slot` now (a readiness event names a slot only).
    pub fn at(&self, slot: usize) -> Option<&Conn> {
        self.all.get(slot)
    }

    pub fn at_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.all.get_mut(slot)
    }

    /// An open WebSocket's state.
    pub fn ws_mut(&mut self, id: ConnId) -> Option<&mut WsState> {
        match &mut self.get_mut(id)?.phase {
            Phase::Ws(ws) => Some(ws),
            _ => None,
        }
    }

    /// The user of an open WebSocket connection.
    pub fn ws_user(&self, id: ConnId) -> Option<&str> {
        match &self.get(id)?.phase {
            Phase::Ws(ws) => Some(ws.username.as_str()),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.all.iter().map(|(_, c)| c)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.all.iter_mut().map(|(_, c)| c)
    }

    /// A new connection in a free slot; `make` gets its id's slot first (the
    /// socket is registered under it before the connection exists).
    pub fn insert_with(&mut self, make: impl FnOnce(usize) -> Option<Conn>) -> Option<ConnId> {
        let entry = self.all.vacant_entry();
        let conn = make(entry.key())?;
        let id = conn.id;
        entry.insert(conn);
        Some(id)
    }

    /// Drops a connection for good (the loop's business: see `server::writing`).
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        self.get(id)?;
        Some(self.all.remove(id.slot))
    }

    /// Queues output for a connection: the one place output is queued and the
    /// cap is checked (see [`push_out`]).
    fn queued(&mut self, id: ConnId, out: Out<'_>) {
        let max = self.max_output;
        let Some(conn) = self.all.get_mut(id.slot).filter(|c| c.id == id) else {
            return;
        };
        if conn.life.is_closing() {
            return;
        }
        let over = push_out(conn, out, max);
        self.pushed(id, over);
    }

    /// Output was pushed: the connection is to be written, and closed when
    /// its queue went over the cap.
    fn pushed(&mut self, id: ConnId, over: bool) {
        self.dirty.push(id.slot);
        if over {
            self.close_soon.push((id, CloseReason::SlowConsumer));
        }
    }

    /// Output queued behind the send path's back — tungstenite's pong or close
    /// reply — counted against the cap as if it had been queued here; false
    /// when the connection is to close for it.
    pub fn check_output(&mut self, id: ConnId) -> bool {
        let max = self.max_output;
        let Some(conn) = self.get(id) else {
            return false;
        };
        if conn.out.is_empty() {
            return true;
        }
        let over = conn.out.len() > max;
        self.dirty.push(id.slot);
        if over {
            self.close(id, CloseReason::SlowConsumer);
        }
        !over
    }

    /// Queues bytes for a connection (see [`push_out`] for the cap).
    pub fn send_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        self.queued(id, Out::Own(bytes));
    }

    /// Queues a frame shared with other recipients, to an open WebSocket.
    pub fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>) {
        if !self
            .get(id)
            .is_some_and(|c| matches!(c.phase, Phase::Ws(_)))
        {
            return;
        }
        self.queued(id, Out::Shared(frame));
    }

    /// Sends one event to one WebSocket connection.
    pub fn send_event(&mut self, id: ConnId, event: &Event) {
        self.send_bytes(id, &event.frame());
    }

    /// A direct reply: echoes the request's `req_id`. A large one is charged to
    /// the connection's request bucket (see [`Conns::send_reply`]).
    pub fn reply(&mut self, id: ConnId, req_id: &Option<Value>, event: Event) {
        self.send_reply(id, &event.reply_to(req_id).frame());
    }

    pub fn reply_error(&mut self, id: ConnId, req_id: &Option<Value>, err: RequestError) {
        self.reply(id, req_id, Event::error(&err));
    }

    /// Queues a reply frame built by its handler, charging the connection's
    /// request bucket for its size ([`crate::conn::reply_cost`]): what a
    /// request makes klav copy is paid for like what it makes klav parse.
    pub fn send_reply(&mut self, id: ConnId, frame: &[u8]) {
        // A job the server API asked for is answered over HTTP: the family
        // that shows its outcome has no WebSocket to reply to.
        if self.ws_mut(id).is_none() {
            return;
        }
        self.charge_reply(id, frame.len());
        self.send_bytes(id, frame);
    }

    /// Charges the connection's request bucket for `len` bytes of reply.
    pub fn charge_reply(&mut self, id: ConnId, len: usize) {
        let cost = crate::conn::reply_cost(len);
        if cost > 0.0 {
            let burst = self.rate_burst;
            if let Some(ws) = self.ws_mut(id) {
                ws.rate.charge(cost, burst);
            }
            self.large_reply_bytes += len;
        }
    }

    /// Sends the same frame to many connections; returns how many it was sent
    /// to (the caller counts the deliveries).
    pub fn fan_out(&mut self, targets: &[ConnId], frame: &Arc<[u8]>) -> usize {
        for &t in targets {
            self.send_shared(t, frame);
        }
        targets.len()
    }

    /// A live entry event (`entry`: its id; `None`: a change to an entry) to one
    /// WebSocket: held back while the connection's opening hold lasts, otherwise
    /// queued like [`Conns::send_shared`], noting the room's first live entry
    /// (see `WsState::first_live`). One slab lookup per recipient, as a plain
    /// send.
    pub fn deliver(&mut self, t: ConnId, room: &str, entry: Option<i64>, frame: &Arc<[u8]>) {
        let max = self.max_output;
        let Some(conn) = self.all.get_mut(t.slot).filter(|c| c.id == t) else {
            return;
        };
        if conn.life.is_closing() {
            return;
        }
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        if let Some(hold) = &mut ws.opening {
            hold.held.push(room, entry, frame);
            return;
        }
        if let Some(id) = entry {
            ws.note_live(room, id);
        }
        let over = push_out(conn, Out::Shared(frame), max);
        self.pushed(t, over);
    }

    /// Queues a final or keep-alive HTTP response; a final one closes the
    /// connection after it (and nothing further is parsed from it).
    pub fn respond(&mut self, id: ConnId, bytes: &[u8], keep_alive: bool) {
        self.send_bytes(id, bytes);
        if !keep_alive {
            self.finish(id, CloseReason::HttpDone);
        }
    }

    /// Queues a final HTTP response refusing a client that asked too much (a
    /// 429): what it still sends is read only briefly.
    pub fn refuse(&mut self, id: ConnId, bytes: &[u8]) {
        self.send_bytes(id, bytes);
        self.finish(id, CloseReason::Refused);
    }

    /// Nothing further is taken from the connection; it closes once its last
    /// output is out.
    fn finish(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(conn) = self.get_mut(id) {
            conn.life.close(reason);
        }
        self.close(id, reason);
    }

    pub fn close(&mut self, id: ConnId, reason: CloseReason) {
        self.close_soon.push((id, reason));
    }
}

/// Pushes output onto a connection's queue; true when the queue is now over
/// the cap. A connection's own output counts only what was already waiting
/// (one large reply, a long history, is fine; a client that does not read its
/// replies is stopped long before by the request pause, `OUTPUT_PAUSE_BYTES`);
/// a shared frame counts itself too.
fn push_out(conn: &mut Conn, out: Out<'_>, max: usize) -> bool {
    match out {
        Out::Own(bytes) => {
            let backlog = conn.out.len();
            conn.out.push(bytes);
            backlog > max
        }
        Out::Shared(frame) => {
            conn.out.push_shared(frame);
            conn.out.len() > max
        }
    }
}
