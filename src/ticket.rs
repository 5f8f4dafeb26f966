//! Who is waiting for a piece of background work: a connection (by slot and
//! generation) and what to echo back to it. The database and hashing layers carry
//! tickets without knowing what a connection is; only the loop looks inside.

use std::fmt;
use std::time::Instant;

use serde_json::Value;

/// A connection's identity: its slab slot plus a generation, because slots are
/// reused and a late reply for a closed connection must not reach its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: usize,
    pub gen: u64,
}

impl ConnId {
    /// No connection (background jobs).
    pub const NONE: ConnId = ConnId {
        slot: usize::MAX,
        gen: 0,
    };
}

/// How a request's job holds back its connection's later requests until it is
/// done (see `conn::Sequencer`): a connection's requests take effect in the order
/// it sent them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Background work: holds nothing.
    Nothing,
    /// A message or DM: later messages may be submitted meanwhile (the single
    /// writer keeps their order); anything else waits.
    Stream,
    /// Anything else: every later request waits for it.
    Exclusive,
}

/// Who is waiting for a job: a connection (and the `req_id` to echo), or nobody.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub conn: ConnId,
    pub req_id: Option<Value>,
    /// When the job was submitted (for the job latency histogram).
    pub at: Instant,
    /// Whether the job holds back its connection's later requests.
    pub hold: Hold,
    /// The user whose session data (rooms, follows, offline queue) the job
    /// changes: their session loads wait until it is done, so a load never
    /// misses a write that was already under way.
    pub writes_for: Option<String>,
    /// The WebSocket user an ordered write was asked by, and the token
    /// generation of their connection: the writer refuses the job when that
    /// generation was revoked before it is written (messages carry theirs).
    pub sender: Option<(String, i64)>,
}

impl Ticket {
    pub fn new(conn: ConnId, req_id: Option<Value>) -> Ticket {
        Ticket {
            conn,
            req_id,
            at: Instant::now(),
            hold: Hold::Nothing,
            writes_for: None,
            sender: None,
        }
    }

    /// For background jobs whose outcome nobody waits for.
    pub fn internal() -> Ticket {
        Ticket::new(ConnId::NONE, None)
    }

    pub fn writing_for(mut self, username: &str) -> Ticket {
        self.writes_for = Some(username.to_string());
        self
    }
}

/// A job could not be queued: its queue is full (or its threads have stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queue full")
    }
}

impl std::error::Error for QueueFull {}
