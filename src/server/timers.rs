//! Per-connection deadlines — the HTTP timeout, the WebSocket ping and its
//! answer, the end of a fresh WebSocket's opening hold, the end of a lingering
//! close — kept in one min-heap instead of a walk over every connection.
//!
//! Deadlines move later all the time (every frame from a client pushes its ping
//! back), so the heap is lazy: an entry is only a time to look at a connection
//! again. When it comes due, the connection's real deadline is computed from its
//! state; if that is still ahead, the connection is simply filed again. Only a
//! deadline that moves *earlier* (a close starting) needs a new entry, and
//! [`Server::schedule`] adds one only then.

use std::time::Instant;

use super::deadlines::{deadline, token_deadline};
use super::event_loop::Server;
use crate::close::CloseReason;
use crate::conn::{ConnId, Phase};

impl Server {
    /// Files the connection under its deadline, unless it is already filed at
    /// that time or earlier. Cheap: call it after any change of state.
    pub(super) fn schedule(&mut self, id: ConnId) {
        let config = self.hub.svc.config.clone();
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        let Some(at) = deadline(conn, &config) else {
            return;
        };
        if conn.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        conn.wake_at = Some(at);
        self.timers.file(at, id);
    }

    /// Acts on every connection whose time has come.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some((at, id)) = self.timers.pop_due(now) {
            let Some(conn) = self.hub.conns.get_mut(id) else {
                continue;
            };
            if conn.wake_at != Some(at) {
                // Superseded by an earlier entry.
                continue;
            }
            conn.wake_at = None;
            due.push(id);
        }
        if due.is_empty() {
            return;
        }
        for &id in &due {
            self.on_timer(id, now);
        }
        self.process_closes();
        for id in due {
            self.schedule(id);
        }
        self.flush_dirty();
    }

    fn on_timer(&mut self, id: ConnId, now: Instant) {
        let config = self.hub.svc.config.clone();
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        if conn.life.linger().is_some_and(|l| now >= l.until) {
            self.remove(id);
            return;
        }
        if deadline(conn, &config).is_none_or(|d| now < d) {
            return;
        }
        if let Phase::Ws(ws) = &mut conn.phase {
            if ws.throttled_until.is_some_and(|t| now >= t) {
                // Its second of flooding is over: read it again (after others).
                ws.throttled_until = None;
                self.hub.conns.busy.push(id);
                return;
            }
            // No first request came in time: what the connection's opening hold
            // kept back goes out.
            if ws.opening.as_ref().is_some_and(|h| now >= h.until) {
                let held = ws.opening.take().expect("checked").held;
                crate::handlers::resume::release(&mut self.hub, id, held);
                return;
            }
            if token_deadline(ws, &config).is_some_and(|d| now >= d) {
                let left = ws.token_expires.saturating_duration_since(now);
                if left.is_zero() {
                    self.hub.conns.close(id, CloseReason::TokenExpired);
                } else {
                    ws.token_warned = true;
                    crate::handlers::tokens::expiring(&mut self.hub, id, left);
                }
                return;
            }
        }
        let Some(conn) = self.hub.conns.get_mut(id) else {
            return;
        };
        match &mut conn.phase {
            // HTTP: nothing complete arrived in time. WebSocket: a ping went
            // unanswered (close 1001).
            Phase::Http(_) => self.hub.conns.close(id, CloseReason::Timeout),
            // A message started and not finished within the HTTP timeout.
            Phase::Ws(ws)
                if ws
                    .unfinished_since
                    .is_some_and(|t| now >= t + config.http_timeout) =>
            {
                self.hub.conns.close(id, CloseReason::Incomplete)
            }
            Phase::Ws(ws) if ws.ping_sent.is_some() => {
                self.hub.conns.close(id, CloseReason::Timeout)
            }
            Phase::Ws(ws) => {
                ws.ping_sent = Some(now);
                // An unmasked, empty ping frame.
                self.hub.conns.send_bytes(id, &[0x89, 0x00]);
            }
            Phase::Upgrading { .. } | Phase::Closed => {}
        }
    }
}
