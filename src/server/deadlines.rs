//! The connections' deadlines as data: a lazy min-heap of times to look at a
//! connection again ([`Timers`]), and the deadline a connection's state gives
//! ([`deadline`]). What happens when one comes due is in `timers`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::conn::{Conn, ConnId, Phase, WsState};

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    /// The earliest time something may be due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Files a connection to be looked at `at`.
    pub(super) fn file(&mut self, at: Instant, id: ConnId) {
        self.heap.push(Reverse((at, id.slot, id.gen)));
    }

    /// The earliest entry due by `now`, taken off the heap.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, ConnId)> {
        let &Reverse((at, slot, gen)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((at, ConnId { slot, gen }))
    }
}

/// When the connection needs looking at next, from its state alone.
pub(super) fn deadline(conn: &Conn, config: &Config) -> Option<Instant> {
    if let Some(linger) = conn.life.linger() {
        return Some(linger.until);
    }
    if conn.life.is_closing() {
        return None;
    }
    match &conn.phase {
        Phase::Http(st) if st.pending.is_none() => Some(conn.since + config.http_timeout),
        Phase::Http(_) | Phase::Upgrading { .. } | Phase::Closed => None,
        Phase::Ws(ws) => {
            let ping = match ws.ping_sent {
                Some(sent) => sent + config.ws_ping_interval,
                None => ws.last_frame + config.ws_ping_interval,
            };
            let unfinished = ws.unfinished_since.map(|t| t + config.http_timeout);
            let token = token_deadline(ws, config);
            let opening = ws.opening.as_ref().map(|h| h.until);
            Some(
                [unfinished, token, opening, ws.throttled_until]
                    .into_iter()
                    .flatten()
                    .fold(ping, Instant::min),
            )
        }
    }
}

/// A token `token_expiring` is sent this long before it expires.
pub const TOKEN_WARNING: Duration = Duration::from_secs(60);

/// With `KLAV_WS_TOKEN_EXPIRY=close`: when the token's warning is due (until it
/// is sent), then when it expires.
pub(super) fn token_deadline(ws: &WsState, config: &Config) -> Option<Instant> {
    if !config.ws_token_expiry_close {
        return None;
    }
    Some(if ws.token_warned {
        ws.token_expires
    } else {
        ws.token_expires
            .checked_sub(TOKEN_WARNING)
            .unwrap_or(ws.token_expires)
    })
}
