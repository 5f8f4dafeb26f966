//! A node's cluster state, and the [`Work`] its decisions hand back to the
//! loop: the cluster decides (in each room's order, from what it has heard),
//! the handlers do (answer, deliver, submit).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::bus::{MemberOp, Payloads};
use super::chain::Chains;
use super::passed_over::PassedOver;
use crate::db::jobs::{ChainLink, ChatEntry, Job, Outcome};
use crate::db::Ticket;

/// A batch of a room's entries that waits for the entries before it.
pub enum Held {
    /// This node's own job: answered and delivered when its turn comes.
    Local(Box<(Ticket, Outcome, ChainLink)>),
    /// Another node's entry.
    Remote(Box<RemoteEntry>),
    /// Another node's entry (this id) too large to notify: it is read back.
    Reference(i64),
}

pub struct RemoteEntry {
    pub entry: ChatEntry,
    pub op: Option<MemberOp>,
    pub queued: bool,
}

/// This node's writes of one user's presence (one at a time, so they cannot
/// overtake each other).
#[derive(Default)]
pub struct PresenceWrite {
    /// The count last written (`None`: not written, or it failed).
    pub written: Option<u32>,
    pub busy: bool,
}

pub struct Cluster {
    /// Whether other nodes may share the database (see `Config::clustered`).
    pub enabled: bool,
    pub node: String,
    pub incarnation: i64,
    pub chains: Chains<Held>,
    /// Membership changes of entries that travelled by reference, by entry id.
    pub ref_ops: HashMap<i64, MemberOp>,
    /// Edits of entries not delivered here yet, by room.
    pub waiting_changes: HashMap<String, Vec<ChatEntry>>,
    pub presence: HashMap<String, PresenceWrite>,
    /// Watched users this node last announced online (cluster mode).
    pub online: HashSet<String>,
    /// Watched users whose presence this node does not know yet (they started
    /// being watched here, and `online` may be wrong about them): when the read
    /// of their presence was asked.
    pub presence_unknown: HashMap<String, Instant>,
    pub next_beat: Instant,
    pub beat_busy: bool,
    /// Ephemeral events (typing) to notify on the next tick, in one job.
    pub outbox: Option<Payloads>,
    /// Whether the bus has connected once (the first connect needs no catch-up).
    pub connected_once: bool,
    pub catching_up: bool,
    /// A catch-up that failed, to try again.
    pub catch_up_due: bool,
    /// Other nodes' entries this node passed over (no member here).
    pub passed_over: PassedOver,
    /// Reads of whom a user follows, under way for follows the bus announced:
    /// user → (the latest read's number, when it was asked).
    pub follow_reads: HashMap<String, (u64, Instant)>,
    /// Numbers the next of those reads.
    pub next_follow_read: u64,
    /// What the bus listener dropped, by reason (it counts; `/metrics` reads).
    pub bus_dropped: std::sync::Arc<super::bus::BusDropped>,
}

impl Cluster {
    pub fn new(enabled: bool, node: String, incarnation: i64) -> Cluster {
        Cluster {
            enabled,
            node,
            incarnation,
            chains: Chains::default(),
            ref_ops: HashMap::new(),
            waiting_changes: HashMap::new(),
            presence: HashMap::new(),
            online: HashSet::new(),
            presence_unknown: HashMap::new(),
            next_beat: Instant::now(),
            beat_busy: false,
            connected_once: false,
            catching_up: false,
            catch_up_due: false,
            passed_over: PassedOver::default(),
            bus_dropped: Default::default(),
            outbox: None,
            follow_reads: HashMap::new(),
            next_follow_read: 1,
        }
    }

    /// What this node writes into the offline DMs it hands to a connection.
    pub fn claim(&self) -> String {
        format!("{}:{}", self.node, self.incarnation)
    }

    pub fn tracked_rooms(&self) -> usize {
        self.chains.len()
    }
}

/// What the cluster's decisions leave for the loop to do, in order. Running one
/// may give more (the handlers ask the cluster again: `Advance`, `Release`),
/// which comes before what was left.
pub enum Work {
    /// This node's own job whose turn has come: finish it (its handler
    /// answers and delivers), then its entries count as delivered.
    Finish(Box<(Ticket, Outcome, ChainLink)>),
    /// Another node's entry whose turn has come: deliver it here.
    Deliver(Box<RemoteEntry>),
    /// Entries up to `last` of `room` were delivered: ask the chain what that
    /// releases ([`Cluster::advance`]); whether the room has members here
    /// decides whether it starts being tracked.
    Advance { room: String, last: i64 },
    /// Ask the chain for the next batch of `room` that may go now
    /// ([`Cluster::release`]).
    Release {
        room: String,
        read_upto: Option<i64>,
    },
    /// An edit or delete of an entry delivered here: send it on.
    Change(ChatEntry),
    /// A user watched here went online or offline: tell their watchers.
    Announce {
        user: String,
        name: String,
        online: bool,
    },
    /// A database job to submit.
    Submit(Submit),
    /// A room's history cache may have gone stale: forget it.
    Forget(String),
}

/// A job of the cluster's that could not be queued.
pub enum Failed {
    Presence(String),
    Heartbeat,
    CatchUp,
}

/// A database job the cluster wants submitted; `failed` says what to undo
/// when it cannot be queued (none: the clock asks again).
pub struct Submit {
    pub job: Job,
    pub failed: Option<Failed>,
}

impl Submit {
    /// A job whose failure to be queued needs no undoing.
    pub fn job(job: Job) -> Submit {
        Submit { job, failed: None }
    }
}

impl Work {
    /// A job whose failure to be queued needs no undoing.
    pub fn submit(job: Job) -> Work {
        Work::Submit(Submit::job(job))
    }
}

impl From<Submit> for Work {
    fn from(s: Submit) -> Work {
        Work::Submit(s)
    }
}
/// The node's default name: the host name and the port it serves.
pub fn default_node_name(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // when the name fits.
    let host = unsafe {
        if libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            "klav".to_string()
        }
    };
    // At most 64 bytes (the bus carries it), cut at a character boundary: a
    // host name is not always ASCII.
    let mut name = format!("{host}:{port}");
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}
