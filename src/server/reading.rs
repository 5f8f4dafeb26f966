//! Readiness → bytes → requests. mio is edge-triggered: a readable socket is read
//! until it would block, or until a budget is spent and the connection is put on
//! the `again` list for the next turn. A connection that is not read for a reason
//! of its own (output backing up, a request held for an earlier one, an HTTP
//! request waiting for a worker) is put back on that list by whatever ends the
//! reason, since no new readiness event will come for bytes already waiting.

use std::io::{self, Read};
use std::time::Instant;

use super::Server;
use crate::close::CloseReason;
use crate::conn::{ConnId, Phase, OUTPUT_PAUSE_BYTES};
use crate::handlers;
use crate::http;
use crate::ws;
use tungstenite::Message;

/// Complete WebSocket messages handled per connection per turn; the rest waits for
/// the next turn so one busy client cannot starve the others.
const READ_BUDGET: usize = 64;
/// Bytes thrown away per turn from a connection that is closing.
const DISCARD_BUDGET: usize = 64 * 1024;
/// Bytes thrown away per turn from all closing connections together: thousands
/// of refused clients that keep sending must not make one turn long (those left
/// over wait for the next turn, or their linger deadline).
pub(super) const DISCARD_TURN_BUDGET: usize = 1024 * 1024;
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
/// Bytes read from all HTTP connections together per turn (see `DISCARD_TURN_BUDGET`).
pub(super) const HTTP_READ_TURN_BUDGET: usize = 4 * 1024 * 1024;
/// Connections accepted per turn: a connect storm is spread over turns.
pub(super) const ACCEPTS_PER_TURN: usize = 512;

impl Server {
    pub(super) fn on_readable(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conn_mut(id) else {
            return;
        };
        if conn.closing.is_some() {
            self.discard(id);
            return;
        }
        if conn.read_paused {
            return;
        }
        match conn.phase {
            Phase::Http(_) => self.read_http(id),
            Phase::Upgrading { .. } | Phase::Closed => {}
            Phase::Ws(_) => self.read_ws(id),
        }
    }

    /// Input from a connection that is closing: read and thrown away, so that
    /// closing the socket does not reset it (see `conn::Linger`).
    pub(super) fn discard(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conns.get_mut(id.slot).filter(|c| c.id == id) else {
            return;
        };
        let mut sink = [0u8; 8192];
        let mut read = 0;
        let done = loop {
            if read >= DISCARD_BUDGET || self.discard_left == 0 {
                self.hub.again.push(id);
                break false;
            }
            match conn.stream.read(&mut sink) {
                // The peer is done: once our output is out there is nothing left.
                Ok(0) => break conn.out.is_empty() || conn.linger.is_none(),
                Ok(n) => {
                    read += n;
                    self.discard_left = self.discard_left.saturating_sub(n);
                    if let Some(l) = &mut conn.linger {
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
        if done && conn.linger.is_some() {
            self.remove(id);
        }
    }

    fn read_http(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conn_mut(id) else {
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
            && self.http_read_left > 0
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
                    self.http_read_left = self.http_read_left.saturating_sub(n);
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
        handlers::http::process(&mut self.hub, id);
        if eof {
            self.http_peer_done(id);
            return;
        }
        // Stopped before the socket was empty: read again once the buffered
        // requests are answered (now, or when a worker answers: see `finish`).
        if !drained {
            if let Some(conn) = self.hub.conn(id) {
                if let Phase::Http(st) = &conn.phase {
                    if st.pending.is_none() && conn.closing.is_none() {
                        self.hub.again.push(id);
                    }
                }
            }
        }
    }

    /// The peer closed its side of an HTTP connection: finish what it asked (a
    /// pending request is answered, then the socket closes), or close now.
    fn http_peer_done(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conn_mut(id) else {
            return;
        };
        let busy = match &conn.phase {
            Phase::Http(st) => st.pending.is_some(),
            // The client is gone; an upgrade for it is pointless.
            Phase::Upgrading { .. } => false,
            Phase::Ws(_) | Phase::Closed => false,
        };
        if busy || !conn.out.is_empty() {
            conn.closing.get_or_insert(CloseReason::Peer);
            if !busy {
                self.hub.close(id, CloseReason::Peer);
            }
        } else {
            self.hub.close(id, CloseReason::Peer);
        }
    }

    fn read_ws(&mut self, id: ConnId) {
        let max_output = self.hub.config.max_output_bytes;
        let mut rearm = false;
        let mut budget_left = READ_BUDGET;
        while budget_left > 0 {
            let Some(conn) = self.hub.conns.get_mut(id.slot).filter(|c| c.id == id) else {
                break;
            };
            if conn.closing.is_some() || conn.read_paused {
                break;
            }
            if conn.out.len() > OUTPUT_PAUSE_BYTES {
                // Resumed by the flush that drains it.
                conn.read_paused = true;
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
            if !conn.out.is_empty() {
                // tungstenite queued a pong or a close reply: they count too.
                let over = conn.out.len() > max_output;
                self.hub.dirty.push(id.slot);
                if over {
                    self.hub.close(id, CloseReason::SlowConsumer);
                    break;
                }
            }
            match result {
                Ok(msg) => {
                    handlers::on_ws_message(&mut self.hub, id, msg);
                    if self.hub.close_soon.iter().any(|(c, _)| *c == id) {
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
        self.hub.again.push(id);
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
