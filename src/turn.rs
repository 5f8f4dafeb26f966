//! What one turn of the event loop may still spend. The loop starts a fresh
//! [`Turn`] before each poll and hands it to what reads: a turn's work stays
//! short however many clients want something at once, and whatever is left
//! over waits for the next turn (see `server::reading`).

use std::time::Instant;

/// HTTP requests answered per loop turn, all connections together: a storm of
/// pipelined requests on thousands of connections spreads over turns instead of
/// making one turn (and everyone's wait) long.
pub const HTTP_REQUESTS_PER_TURN: usize = 2048;

/// HTTP response bytes queued per loop turn, all connections together (a turn
/// may pass it by one response). Copying responses into queues and then into
/// sockets is most of what an HTTP request costs the loop: 2,048 `/metrics`
/// answers of ~5 KB made turns of 40 ms, during which everyone else waited.
pub const HTTP_RESPONSE_BYTES_PER_TURN: usize = 256 * 1024;

/// Bytes read from all HTTP connections together per turn.
pub const HTTP_READ_PER_TURN: usize = 4 * 1024 * 1024;

/// Bytes thrown away per turn from all closing connections together: thousands
/// of refused clients that keep sending must not make one turn long (those left
/// over wait for the next turn, or their linger deadline).
pub const DISCARD_PER_TURN: usize = 1024 * 1024;

pub struct Turn {
    /// When reading should stop (`Config::turn_work` after the poll returned).
    pub deadline: Instant,
    /// HTTP requests that may still be answered.
    pub http_requests_left: usize,
    /// HTTP response bytes that may still be queued.
    pub http_bytes_left: usize,
    /// Bytes HTTP connections may still have read.
    pub http_read_left: usize,
    /// Bytes closing connections may still have thrown away.
    pub discard_left: usize,
    /// `/metrics` as rendered this turn: a burst of requests (a pipelining
    /// client, many scrapers) costs one rendering.
    pub metrics_text: Option<String>,
}

impl Turn {
    pub fn new(deadline: Instant) -> Turn {
        Turn {
            deadline,
            http_requests_left: HTTP_REQUESTS_PER_TURN,
            http_bytes_left: HTTP_RESPONSE_BYTES_PER_TURN,
            http_read_left: HTTP_READ_PER_TURN,
            discard_left: DISCARD_PER_TURN,
            metrics_text: None,
        }
    }

    /// Whether this turn's time for reading is up.
    pub fn over(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Whether this turn's HTTP budget (requests or response bytes) is spent:
    /// the connections still waiting are answered next turn.
    pub fn http_spent(&self) -> bool {
        self.http_requests_left == 0 || self.http_bytes_left == 0
    }
}
