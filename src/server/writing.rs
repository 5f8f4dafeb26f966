//! Output queues → sockets, once per turn per connection that has something new,
//! and every close: a connection's interest is derived from its state in one
//! place ([`Server::sync_interest`]), and every close klav starts goes through
//! [`Server::close_conn`] and ends in a lingering close.

use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use tungstenite::protocol::CloseFrame;

use super::event_loop::Server;
use crate::close::CloseReason;
use crate::conn::{ConnId, Life, Linger, Phase, OUTPUT_PAUSE_BYTES};
use crate::handlers;
use crate::ws;

/// How long a connection told to close may take to take its last bytes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long input is read and thrown away after the write side is shut down,
/// waiting for the peer to close (nginx's `lingering_timeout`).
const LINGER_READ: Duration = Duration::from_secs(2);

impl Server {
    /// Applies the close requests gathered during this turn.
    pub(super) fn process_closes(&mut self) {
        while !self.hub.conns.close_soon.is_empty() {
            let batch = std::mem::take(&mut self.hub.conns.close_soon);
            for (id, reason) in batch {
                self.close_conn(id, reason);
            }
        }
    }

    /// Starts closing a connection; the first reason stands. Its user goes
    /// offline now, not when its last bytes leave.
    pub(super) fn close_conn(&mut self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        if conn.life.is_lingering() {
            return;
        }
        let plan = reason.plan();
        if let Some(level) = plan.log {
            if crate::log::enabled(level) {
                crate::log::line(
                    level,
                    format_args!(
                        "closing a connection from {}: {}",
                        conn.peer,
                        reason.label()
                    ),
                );
            }
        }
        if !plan.drop_unsent {
            handlers::resume::flush_opening_on_close(&mut self.hub, id);
        }
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        if let (Phase::Ws(ws), Some((code, text))) = (&mut conn.phase, plan.frame) {
            if plan.drop_unsent {
                conn.out.truncate_unstarted();
            }
            let mut io = ws::Io::new(&mut conn.stream, &mut conn.out);
            let frame = CloseFrame {
                code,
                reason: text.into(),
            };
            let _ = ws.ctx.close(&mut io, Some(frame));
        }
        if let Phase::Http(st) = &mut conn.phase {
            // No further request will be read: its input is not needed.
            st.buf.release();
        }
        conn.life.close(reason);
        let reason = conn.life.closing().unwrap_or(reason);
        self.hub.svc.metrics.closed(reason);
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let max_discard = if reason.plan().abusive {
            super::reading::ABUSIVE_LINGER_BYTES
        } else {
            super::reading::LINGER_MAX_BYTES
        };
        conn.life = Life::Lingering(
            reason,
            Linger {
                until: Instant::now() + CLOSE_LINGER,
                shut: false,
                discarded: 0,
                max_discard,
            },
        );
        handlers::session::on_closed(&mut self.hub, id);
        // Its input buffers are gone (released above, or with its phase).
        self.count_input(id);
        if reason == CloseReason::Error {
            self.remove(id);
            return;
        }
        self.schedule(id);
        self.hub.conns.dirty.push(id.slot);
    }

    /// Drops a connection for good. (A close klav started was counted when it
    /// started; one that ends here directly, a broken socket, is counted here.)
    pub(super) fn remove(&mut self, id: ConnId) {
        handlers::session::on_closed(&mut self.hub, id);
        if let Some(conn) = self.hub.conns.get_mut(id) {
            let counted = conn.life.is_lingering();
            let reason = conn.life.closing().unwrap_or(CloseReason::Peer);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.input_held = self.input_held.saturating_sub(conn.input_counted);
            self.hub.conns.remove(id);
            if !counted {
                self.hub.svc.metrics.closed(reason);
            }
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.hub.conns.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for slot in dirty.drain(..) {
            self.flush(slot);
        }
        // Output queued while flushing (the next piece of an offline queue)
        // goes out on the next turn, which then does not wait.
        let queued_meanwhile = std::mem::replace(&mut self.hub.conns.dirty, dirty);
        self.hub.conns.dirty.extend(queued_meanwhile);
    }

    fn flush(&mut self, slot: usize) {
        let Some(conn) = self.hub.conns.at_mut(slot) else {
            return;
        };
        let id = conn.id;
        match conn.out.write_to(&mut conn.stream) {
            Err(_) => {
                conn.life.close(CloseReason::Error);
                self.remove(id);
                return;
            }
            Ok(true) if conn.life.is_lingering() => {
                self.sync_interest(id);
                self.shut_and_linger(id);
                return;
            }
            Ok(all_out) => {
                let drained = all_out || conn.out.len() <= OUTPUT_PAUSE_BYTES;
                if !self.draining && drained && conn.life.resume() {
                    self.hub.conns.again.push(id);
                }
            }
        }
        self.sync_interest(id);
        handlers::session::on_flushed(&mut self.hub, id);
    }

    /// Everything queued is written: shut the write side down (the peer sees
    /// EOF after our last byte) and read until the peer closes too.
    fn shut_and_linger(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let Some(linger) = conn.life.linger_mut() else {
            return;
        };
        if !linger.shut {
            linger.shut = true;
            linger.until = Instant::now() + LINGER_READ;
            if conn.stream.shutdown(Shutdown::Write).is_err() {
                self.remove(id);
                return;
            }
            self.schedule(id);
        }
        self.discard(id);
    }

    /// Registers exactly the interest the connection's state calls for: always
    /// READABLE (edge-triggered: pausing a reader is the loop's business, not
    /// the kernel's), WRITABLE only while output waits.
    pub(super) fn sync_interest(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let want_writable = !conn.out.is_empty();
        if want_writable == conn.writable_registered {
            return;
        }
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self
            .poll
            .registry()
            .reregister(&mut conn.stream, Token(id.slot), interest)
            .is_ok()
        {
            conn.writable_registered = want_writable;
        }
    }
}
