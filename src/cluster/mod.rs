//! The loop's side of a cluster of klav nodes that share one PostgreSQL.
//!
//! Nothing but the database connects the nodes. Each node's writer sends what
//! it committed as notifications (`db::bus`); each node's listener hands the
//! others' events to its loop, which delivers them to its own connections:
//!
//! - **Entries** of a room go through the room's chain ([`chain`]): in the
//!   room's one order, exactly once, whether they come from this node's writer
//!   or another node's notification; a gap is waited for, then read back.
//!   A room this node starts to follow when a session opens reads back what
//!   it passed over since the session was read ([`PassedOver`]).
//! - **Membership** changes ride on the `joined`/`left` entries; **follows**,
//!   **edits** and **presence** have events of their own. A bus event is
//!   never authority: a join or a follow another node announces for a user
//!   connected here is granted in memory only once it has been read back from
//!   the database (the entry with the room's members, or the user's follows);
//!   leaves and unfollows apply at once.
//! - **Presence** is decided in the database: each node writes how many
//!   connections each user has on it (`klav_presence`), and the transaction
//!   that takes a user from none anywhere to some (or back) announces it to
//!   every node, this one included. Nodes beat every few seconds
//!   (`klav_nodes`); a silent node is removed by the others with its presence.
//!
//! With the embedded database, or `KLAV_CLUSTER=off`, a node is alone: no
//! notifications are sent, presence is kept in memory, and the chains only
//! ever see this node's writer (whose batches are always in order).
//!
//! This module holds the node's cluster state; what the loop does with it
//! (delivering, presence writes, heartbeats, catching up) is in
//! `handlers::cluster`.

pub mod bus;
pub mod chain;
pub mod listener;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cluster::bus::{MemberOp, Payloads};
use crate::db::jobs::{ChainLink, ChatEntry, Outcome};
use crate::db::Ticket;
use chain::Chains;

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
    pub bus_dropped: std::sync::Arc<crate::cluster::bus::BusDropped>,
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

/// Rooms remembered in [`PassedOver`] at most; past it, new rooms are not.
const PASSED_OVER_ROOMS: usize = 100_000;
/// How long a room is remembered in [`PassedOver`] after its last entry: far
/// longer than a session read takes.
const PASSED_OVER_KEEP: Duration = Duration::from_secs(30);

/// The newest entry of each room whose entries this node heard and passed over
/// lately, having no member there. A connection's session is read before its
/// rooms are followed here: an entry committed in between was passed over, and
/// with no later entry to reveal the gap it would never reach the connection.
/// A room followed from a session read older than what was passed over reads
/// the difference back. Bounded by [`PASSED_OVER_ROOMS`] rooms (past it, the
/// gap waits for a later entry, as without this) and [`PASSED_OVER_KEEP`].
#[derive(Default)]
pub struct PassedOver {
    rooms: HashMap<String, (i64, Instant)>,
}

impl PassedOver {
    pub fn note(&mut self, room: &str, id: i64, now: Instant) {
        if let Some(seen) = self.rooms.get_mut(room) {
            *seen = (seen.0.max(id), now);
        } else if self.rooms.len() < PASSED_OVER_ROOMS {
            self.rooms.insert(room.to_string(), (id, now));
        }
    }

    /// The newest entry of `room` passed over after entry `last`, if any; the
    /// room is forgotten either way (it is followed from here on).
    pub fn take_after(&mut self, room: &str, last: i64) -> Option<i64> {
        self.rooms
            .remove(room)
            .map(|(id, _)| id)
            .filter(|id| *id > last)
    }

    /// Forgets rooms quiet for [`PASSED_OVER_KEEP`] (called once a second).
    pub fn sweep(&mut self, now: Instant) {
        self.rooms
            .retain(|_, (_, at)| now.duration_since(*at) < PASSED_OVER_KEEP);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_over_keeps_the_newest_entry_per_room_for_a_while() {
        let mut p = PassedOver::default();
        let t0 = Instant::now();
        p.note("r1", 5, t0);
        p.note("r1", 3, t0);
        p.note("r2", 7, t0);
        assert_eq!(p.take_after("r1", 4), Some(5), "the newest, after the read");
        assert_eq!(p.take_after("r1", 0), None, "forgotten once taken");
        assert_eq!(p.take_after("r2", 7), None, "nothing after what was read");
        p.note("r3", 9, t0);
        p.sweep(t0 + PASSED_OVER_KEEP);
        assert_eq!(p.take_after("r3", 0), None, "forgotten when quiet");
        for i in 0..PASSED_OVER_ROOMS + 10 {
            p.note(&format!("room{i}"), 1, t0);
        }
        assert_eq!(p.rooms.len(), PASSED_OVER_ROOMS, "bounded");
    }
}
