//! Readiness → bytes → requests. mio is edge-triggered: a readable socket is read
//! until it would block, or until its share of a turn is spent (it then waits in
//! the `busy` queue), or until the turn's time is up (the read waits in a queue
//! for the next turn: see [`PutOff`](super::put_off::PutOff)). A connection that is not read for a reason
//! of its own (output backing up, a request held for an earlier one, an HTTP
//! request waiting for a worker) is put on the `again` list by whatever ends the
//! reason, since no new readiness event will come for bytes already waiting.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Token};

use super::event_loop::{Server, LISTENER, METRICS_LISTENER, WAKER};
use super::put_off::Queue;
use crate::close::CloseReason;
use crate::conn::{Conn, ConnId, Phase, OUTPUT_PAUSE_BYTES};
use crate::handlers;
use crate::http;
use crate::ws;
use tungstenite::Message;

/// Complete WebSocket messages handled per connection per turn; the rest waits for
/// the next turn so one busy client cannot starve the others.
const READ_BUDGET: usize = 64;
/// Bytes thrown away per turn from a connection that is closing.
const DISCARD_BUDGET: usize = 64 * 1024;
/// Most bytes thrown away from a closing connection before it is dropped anyway
/// (a refused client may still be sending a large request).
pub(super) const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;
/// The same for a connection closed for abuse (flooding, the buffer budget, a
/// slow consumer): enough for its close to be seen by a client that only
/// overran a little, without reading megabytes a flooder keeps pushing.
pub(super) const ABUSIVE_LINGER_BYTES: usize = 64 * 1024;
/// Read this much at a time from an HTTP connection.
const HTTP_CHUNK: usize = 16 * 1024;
/// Chunks read from one HTTP connection per turn.
const HTTP_CHUNKS_PER_TURN: usize = 1;
/// Connections accepted per turn: a connect storm is spread over turns.
const ACCEPTS_PER_TURN: usize = 128;
/// Connections accepted per turn even when the turn's time is up.
const ACCEPTS_MIN_PER_TURN: usize = 16;
/// Pause after an accept error such as running out of file descriptors, so the
/// loop does not spin on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Busy connections read per turn even when others used the turn's time, so
/// that they always move.
const BUSY_MIN_PER_TURN: usize = 4;

impl Server {
    /// Accepts every pending connection of one listener (the public one, or the
    /// metrics one).
    pub(super) fn accept(&mut self, metrics: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let listener = if metrics {
            self.metrics_listener.as_ref()
        } else {
            self.listener.as_ref()
        };
        let Some(listener) = listener else {
            return;
        };
        let mut accepted = Vec::new();
        loop {
            if accepted.len() >= ACCEPTS_PER_TURN
                || (accepted.len() >= ACCEPTS_MIN_PER_TURN && self.turn.over())
            {
                // Edge-triggered: no new event comes for those still waiting.
                self.accept_more = !metrics;
                break;
            }
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    self.hub.svc.metrics.accepted += 1;
                    let _ = stream.set_nodelay(true);
                    let gen = self.next_gen;
                    self.next_gen += 1;
                    let registry = self.poll.registry();
                    let inserted = self.hub.conns.insert_with(|slot| {
                        if let Err(e) =
                            registry.register(&mut stream, Token(slot), Interest::READABLE)
                        {
                            crate::log!(Warn, "cannot register a connection: {e}");
                            return None;
                        }
                        let mut conn = Conn::new(ConnId { slot, gen }, stream, peer);
                        conn.metrics_only = metrics;
                        Some(conn)
                    });
                    let Some(id) = inserted else {
                        continue;
                    };
                    let over = self.hub.conns.len() > self.hub.svc.config.max_connections;
                    accepted.push((id, over));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically EMFILE/ENFILE. Pending connections stay in the
                    // backlog; retry shortly instead of spinning on readiness.
                    crate::log!(Warn, "accept failed: {e}; pausing accepts briefly");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
        for (id, over) in accepted {
            self.schedule(id);
            // Over the connection cap: answer 503 and close.
            if over {
                handlers::http::respond(
                    &mut self.hub,
                    id,
                    http::error(503, "too many connections", false),
                    false,
                );
            }
        }
    }

    /// This turn's readiness events, with what earlier turns put off: open
    /// sessions first, then everything else (new connections, HTTP, closing
    /// sockets), then accepts (see [`PutOff`](super::put_off::PutOff)).
    pub(super) fn read_events(&mut self, events: &Events) {
        self.read_put_off(Queue::Sessions);
        let mut others = std::mem::take(&mut self.others_ready);
        let mut accept_main = std::mem::take(&mut self.accept_more);
        let mut accept_metrics = false;
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept_main = true,
                METRICS_LISTENER => accept_metrics = true,
                WAKER => {}
                Token(slot) => {
                    if ev.is_writable() {
                        self.hub.conns.dirty.push(slot);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        match self.hub.conns.at(slot) {
                            Some(c) if c.is_session() => self.read_or_put_off(c.id),
                            Some(c) => others.push(c.id),
                            None => {}
                        }
                    }
                }
            }
        }
        self.read_put_off(Queue::Others);
        for id in others.drain(..) {
            self.read_or_put_off(id);
        }
        self.others_ready = others;
        if accept_main {
            self.accept(false);
        }
        if accept_metrics {
            self.accept(true);
        }
    }

    /// A readiness event: read now, or, once this turn's time is up, put the
    /// read off to the next turn (edge-triggered: the event will not come again).
    pub(super) fn read_or_put_off(&mut self, id: ConnId) {
        if !self.turn.over() {
            self.on_readable(id);
        } else {
            self.put_off(id, false);
        }
    }

    /// Adds the connection to the back of its queue, unless it waits in one.
    fn put_off(&mut self, id: ConnId, busy: bool) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        if conn.put_off {
            return;
        }
        conn.put_off = true;
        let q = if busy {
            Queue::Busy
        } else if conn.is_session() {
            Queue::Sessions
        } else {
            Queue::Others
        };
        self.put_off.queue(q).push_back(id);
        if busy {
            self.hub.svc.metrics.reads_busy += 1;
        } else {
            self.hub.svc.metrics.reads_put_off += 1;
        }
    }

    /// Takes the next connection of a queue, if it is still there.
    fn take_put_off(&mut self, q: Queue) -> Option<Option<ConnId>> {
        let id = self.put_off.queue(q).pop_front()?;
        Some(self.hub.conns.get_mut(id).map(|conn| {
            conn.put_off = false;
            id
        }))
    }

    /// Reads of open sessions (or of the others) put off by earlier turns'
    /// time limit, oldest first, while the turn has time (at least one, so the
    /// queue always moves).
    fn read_put_off(&mut self, q: Queue) {
        let mut served = 0;
        while served == 0 || !self.turn.over() {
            let Some(next) = self.take_put_off(q) else {
                break;
            };
            if let Some(id) = next {
                served += 1;
                self.on_readable(id);
                self.schedule(id);
            }
        }
    }

    /// Connections asked to be read again this turn (a held request finished,
    /// output drained): read while the turn has time, the rest put off.
    pub(super) fn read_again(&mut self) {
        let mut again = std::mem::take(&mut self.hub.conns.again);
        // Several reasons may have asked for the same connection.
        again.sort_unstable_by_key(|c| (c.slot, c.gen));
        again.dedup();
        for id in again {
            if !self.turn.over() {
                self.on_readable(id);
            } else {
                self.put_off(id, false);
            }
            // Whatever put it on the list may have moved its deadline.
            self.schedule(id);
        }
    }

    /// Connections that used their share of earlier turns, oldest first, while
    /// the turn has time (and at least a few); then this turn's busy ones join
    /// the queue's back.
    pub(super) fn read_busy(&mut self) {
        let mut served = 0;
        let queued = self.put_off.lens()[2];
        while served < queued && (served < BUSY_MIN_PER_TURN || !self.turn.over()) {
            let Some(next) = self.take_put_off(Queue::Busy) else {
                break;
            };
            served += 1;
            if let Some(id) = next {
                self.on_readable(id);
                self.schedule(id);
            }
        }
        for id in std::mem::take(&mut self.hub.conns.busy) {
            self.put_off(id, true);
        }
        self.hub.svc.metrics.reads_waiting = self.put_off.lens();
    }

    pub(super) fn on_readable(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        if conn.life.is_closing() {
            self.discard(id);
            return;
        }
        if conn.life.is_paused() {
            return;
        }
        match conn.phase {
            Phase::Http(_) => self.read_http(id),
            Phase::Upgrading { .. } | Phase::Closed => return,
            Phase::Ws(_) => self.read_ws(id),
        }
        if self.count_input(id) > self.hub.svc.config.max_client_buffer_bytes {
            // Freed now, not at the next check: a read takes at most one
            // request's worth past the budget.
            self.hub.svc.metrics.budget_overruns += 1;
            self.enforce_buffer_budget();
        }
    }

    /// Brings the running total of input held up to date with what one
    /// connection holds now (after a read, or its close); returns the total.
    pub(super) fn count_input(&mut self, id: ConnId) -> usize {
        if let Some(conn) = self.hub.conns.get_mut(id) {
            let now = conn.input_held();
            let before = std::mem::replace(&mut conn.input_counted, now);
            self.input_held = self.input_held.saturating_sub(before) + now;
        }
        self.input_held
    }

    /// Input from a connection that is closing: read and thrown away, so that
    /// closing the socket does not reset it (see `conn::Linger`).
    pub(super) fn discard(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let mut sink = [0u8; 8192];
        let mut read = 0;
        let mut more = false;
        let done = loop {
            if read >= DISCARD_BUDGET || self.turn.discard_left == 0 {
                more = true;
                break false;
            }
            match conn.stream.read(&mut sink) {
                // The peer is done: once our output is out there is nothing left.
                Ok(0) => break conn.out.is_empty() || !conn.life.is_lingering(),
                Ok(n) => {
                    read += n;
                    self.turn.discard_left = self.turn.discard_left.saturating_sub(n);
                    if let Some(l) = conn.life.linger_mut() {
                        l.discarded += n;
                        if l.discarded > l.max_discard {
                            break true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let lingering = conn.life.is_lingering();
        if more {
            self.hub.conns.busy.push(id);
        }
        if done && lingering {
            self.remove(id);
        }
    }

    fn read_http(&mut self, id: ConnId) {
        if self.turn.http_spent() {
            // Nothing more is answered this turn (reading ahead would only
            // copy): first in the next, as this connection had no share yet.
            self.put_off(id, false);
            return;
        }
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let Phase::Http(st) = &mut conn.phase else {
            return;
        };
        let mut eof = false;
        let mut drained = false;
        let mut chunk = [0u8; HTTP_CHUNK];
        // Read no more than one maximal request ahead (the rest stays in the
        // kernel until the buffered requests are answered), and a few chunks a
        // turn: thousands of connections sending at once each get a short turn.
        let mut chunks = 0;
        while st.buf.len() <= http::MAX_HEAD + http::MAX_BODY
            && chunks < HTTP_CHUNKS_PER_TURN
            && self.turn.http_read_left > 0
        {
            chunks += 1;
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if st.buf.is_empty() && st.pending.is_none() {
                        conn.since = Instant::now();
                    }
                    st.buf.extend(&chunk[..n]);
                    self.turn.http_read_left = self.turn.http_read_left.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        handlers::http::process(&mut self.hub, &mut self.turn, id);
        if eof {
            self.http_peer_done(id);
            return;
        }
        // Stopped before the socket was empty: read again once the buffered
        // requests are answered (now, or when a worker answers: see `finish`).
        if !drained {
            if let Some(conn) = self.hub.conns.get(id) {
                if let Phase::Http(st) = &conn.phase {
                    if st.pending.is_none() && !conn.life.is_closing() {
                        self.hub.conns.busy.push(id);
                    }
                }
            }
        }
    }

    /// The peer closed its side of an HTTP connection: finish what it asked (a
    /// pending request is answered, then the socket closes), or close now.
    fn http_peer_done(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let busy = match &conn.phase {
            Phase::Http(st) => st.pending.is_some(),
            // The client is gone; an upgrade for it is pointless.
            Phase::Upgrading { .. } => false,
            Phase::Ws(_) | Phase::Closed => false,
        };
        if busy || !conn.out.is_empty() {
            conn.life.close(CloseReason::Peer);
            if !busy {
                self.hub.conns.close(id, CloseReason::Peer);
            }
        } else {
            self.hub.conns.close(id, CloseReason::Peer);
        }
    }

    fn read_ws(&mut self, id: ConnId) {
        let mut rearm = false;
        let mut budget_left = READ_BUDGET;
        while budget_left > 0 {
            let Some(conn) = self.hub.conns.get_mut(id) else {
                break;
            };
            if conn.life.is_closing() || conn.life.is_paused() {
                break;
            }
            if conn.out.len() > OUTPUT_PAUSE_BYTES {
                // Resumed by the flush that drains it.
                conn.life.pause();
                break;
            }
            let Phase::Ws(ws) = &mut conn.phase else {
                break;
            };
            if ws.throttled_until.is_some() {
                // Read again when its timer fires.
                rearm = true;
                break;
            }
            if ws.seq.held.is_some() {
                // Resumed when the request it waits for is done.
                break;
            }
            let mut io = ws::Io::new(&mut conn.stream, &mut conn.out);
            let result = ws.ctx.read(&mut io);
            ws.unfinished += io.read;
            match &result {
                Ok(Message::Text(_) | Message::Binary(_)) => {
                    ws.unfinished = 0;
                    ws.unfinished_since = None;
                }
                // A control frame: its 6-byte header (masked) and payload.
                Ok(Message::Ping(p) | Message::Pong(p)) => {
                    ws.unfinished = ws.unfinished.saturating_sub(6 + p.len());
                }
                _ => {}
            }
            if ws.unfinished > 0 && ws.unfinished_since.is_none() {
                ws.unfinished_since = Some(Instant::now());
                rearm = true;
            } else if ws.unfinished == 0 {
                ws.unfinished_since = None;
            }
            // tungstenite may have queued a pong or a close reply: they
            // count too.
            if !self.hub.conns.check_output(id) {
                break;
            }
            match result {
                Ok(msg) => {
                    handlers::on_ws_message(&mut self.hub, id, msg);
                    if self.hub.conns.close_soon.iter().any(|(c, _)| *c == id) {
                        // Told to close (e.g. a flood): take no further requests.
                        break;
                    }
                }
                Err(e) => {
                    self.on_ws_error(id, e);
                    break;
                }
            }
            budget_left -= 1;
        }
        if rearm {
            // A message under way has a deadline now.
            self.schedule(id);
        }
        if budget_left > 0 {
            return;
        }
        // Budget spent: input may remain buffered; come back next turn.
        self.hub.conns.busy.push(id);
    }

    fn on_ws_error(&mut self, id: ConnId, e: tungstenite::Error) {
        use tungstenite::error::{Error as WsError, ProtocolError};
        let reason = match e {
            WsError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            WsError::Capacity(_) => CloseReason::TooBig,
            WsError::Utf8(_) => CloseReason::BadUtf8,
            // The close handshake finished (tungstenite queued its reply) or the
            // peer vanished: flush what is queued, then close.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed => CloseReason::Peer,
            WsError::Protocol(_) => CloseReason::Protocol,
            _ => CloseReason::Error,
        };
        // At once, not at the end of the turn: a peer that sent its close must
        // not be handed anything more (it would be written after the close
        // reply and never read); its user is offline from here on.
        self.close_conn(id, reason);
    }
}
