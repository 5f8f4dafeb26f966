//! What the loop keeps in memory so that the hot paths need no database read:
//! online users (nickname, open connections, rooms, whom they follow, who
//! blocks them: `blocks`), the online members of each room, presence
//! subscriptions indexed by the followed user, and member watches
//! (`room_watches`).
//!
//! A user's entry exists while they have an open connection, an upgrade in
//! progress, or a write to their session data under way; it is loaded from the
//! database when the first connection opens and kept exact by the loop afterwards
//! (joins, leaves and follows update it as their writes commit). The database
//! stays the truth for everyone else.
//!
//! The rule that keeps a load from going stale: a session load is never in flight
//! together with a write that changes what it reads (the user's memberships,
//! follows, offline queue). Loads wait for such writes ([`State::begin_open`]);
//! a DM for a user whose load is already in flight is parked here and handed to
//! the connection when it opens.

mod blocks;
mod resume;
mod roles;
mod room_watches;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use crate::db::jobs::{NewMessage, Role, SessionData};
use crate::ticket::ConnId;
use crate::ticket::Ticket;
pub use resume::{Held, ResumeBuffer, HELD_CAP};
pub use room_watches::{RoomWatches, MEMBER_WATCHES};

/// A DM committed while its recipient's only connection was still loading.
#[derive(Debug)]
pub struct ParkedDm {
    /// The sender's request, answered when the DM is delivered or queued.
    pub ticket: Ticket,
    pub msg: NewMessage,
    pub to: String,
    pub id: i64,
    pub ts: SystemTime,
}

#[derive(Default)]
pub struct UserState {
    pub nickname: String,
    /// Open WebSocket connections, oldest first.
    pub conns: Vec<ConnId>,
    /// Upgrades in progress (waiting to load, or loading).
    pub opening: u32,
    /// Session loads submitted and not yet answered.
    pub loads: u32,
    /// Upgrades whose session load waits for `writes` to finish.
    pub deferred_loads: Vec<ConnId>,
    /// Writes of this user's session data under way.
    pub writes: u32,
    /// Whether rooms/following below were loaded (by the first upgrade to finish).
    pub loaded: bool,
    /// The user's token generation, as far as this node knows (the highest
    /// a session load read or a revocation announced): connections and
    /// upgrades whose token is older are refused. Exact once `loaded`.
    pub generation: i64,
    pub rooms: HashSet<String>,
    /// Room → this user's role there, for the rooms where it is not `member`
    /// (see `state::roles`).
    pub roles: HashMap<String, Role>,
    pub following: HashSet<String>,
    /// Follows of this user another node announced, not granted until the
    /// database confirms them: followed user → the number of the read that
    /// settles it (see `cluster::Cluster::follows_read`).
    pub awaiting_follows: HashMap<String, u64>,
    /// The users who block this one (loaded with the session, kept exact by
    /// blocks committed here and announced by other nodes): their presence is
    /// never shown to this user.
    pub blocked_by: HashSet<String>,
    /// Blocks (`true`) and unblocks of this user heard before their session
    /// was loaded: applied over what the load read, which may be older.
    pub block_notes: Vec<(String, bool)>,
    /// Connections of this user subscribed to friends' presence.
    pub subscribed: Vec<ConnId>,
    /// DMs waiting for a connection that is loading.
    pub parked_dms: Vec<ParkedDm>,
    /// Offline-queue entries already handed to one of this user's connections,
    /// so a second connection opening at the same moment does not get them too.
    pub offline_claimed: HashSet<i64>,
    /// The count of DMs dropped from the user's queue was handed to one of
    /// their connections (like `offline_claimed`: a connection opening at the
    /// same moment does not tell it again).
    pub offline_dropped_claimed: bool,
}

/// Where a DM's recipient is, as far as delivery is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// At least one open connection: deliver live.
    Online,
    /// No open connection, but a session load in flight: it may or may not see a
    /// queue entry written now, so the DM waits for the connection in memory.
    Loading,
    /// Neither: queue it (a later load waits for that write).
    Offline,
}

#[derive(Default)]
pub struct State {
    pub users: HashMap<String, UserState>,
    /// Room id → loaded users who are members.
    pub room_members: HashMap<String, HashSet<String>>,
    /// Followed username → subscribed connections of their followers.
    pub watchers: HashMap<String, HashSet<ConnId>>,
    /// Connections watching rooms' members' presence (`room_members` with
    /// `watch`).
    pub room_watches: RoomWatches,
    /// Users who gained their first watcher since the loop last looked (a
    /// cluster node must find out whether they are online: see
    /// `cluster::Cluster::look_up_new_watches`).
    pub newly_watched: Vec<String>,
    /// Rooms written to since the last retention pass.
    pub touched_rooms: HashSet<String>,
    /// Open WebSockets and upgrades per client address (a budget).
    pub per_addr: HashMap<IpAddr, usize>,
    /// Room → connections with a `resume` in flight that covers it.
    pub resuming: HashMap<String, Vec<ConnId>>,
    pub resume_buffers: HashMap<ConnId, ResumeBuffer>,
    /// (user, room) → when their last `typing` was forwarded.
    pub typing: HashMap<(String, String), Instant>,
    /// Kicks and bans heard from other nodes, by the id of the entry that
    /// ends the membership, until that entry is delivered here (see
    /// `state::roles`).
    pub removals: HashMap<i64, crate::db::notify::Removal>,
}

impl State {
    pub fn addr_conns(&self, addr: IpAddr) -> usize {
        self.per_addr.get(&addr).copied().unwrap_or(0)
    }

    pub fn addr_conn_opened(&mut self, addr: IpAddr) {
        *self.per_addr.entry(addr).or_default() += 1;
    }

    pub fn addr_conn_closed(&mut self, addr: IpAddr) {
        if let Some(n) = self.per_addr.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&addr);
            }
        }
    }

    /// An upgrade for `username` starts. True when its session may be loaded now;
    /// false when it waits for the user's writes under way (it is handed back by
    /// [`State::write_done`]).
    pub fn begin_open(&mut self, username: &str, id: ConnId) -> bool {
        let user = self.users.entry(username.to_string()).or_default();
        user.opening += 1;
        if user.writes > 0 {
            user.deferred_loads.push(id);
            false
        } else {
            true
        }
    }

    /// A session load was submitted.
    pub fn load_submitted(&mut self, username: &str) {
        if let Some(user) = self.users.get_mut(username) {
            user.loads += 1;
        }
    }

    /// A session load came back (whether or not its connection is still there).
    /// Returns the DMs parked for the user if no connection of theirs is open or
    /// opening any more: the caller queues them.
    pub fn load_done(&mut self, username: &str) -> Vec<ParkedDm> {
        let Some(user) = self.users.get_mut(username) else {
            return Vec::new();
        };
        user.loads = user.loads.saturating_sub(1);
        self.take_orphaned_dms(username)
    }

    /// The parked DMs of a user nothing of whose is open or opening any more,
    /// then drops the entry if nothing else keeps it.
    fn take_orphaned_dms(&mut self, username: &str) -> Vec<ParkedDm> {
        let orphaned = match self.users.get_mut(username) {
            Some(u) if u.conns.is_empty() && u.opening == 0 => std::mem::take(&mut u.parked_dms),
            _ => Vec::new(),
        };
        self.maybe_unload(username);
        orphaned
    }

    /// A write of `username`'s session data was submitted.
    pub fn write_started(&mut self, username: &str) {
        self.users.entry(username.to_string()).or_default().writes += 1;
    }

    /// A write of `username`'s session data is done (committed or failed); when
    /// it was the last one, the upgrades that waited for it may load now.
    pub fn write_done(&mut self, username: &str) -> Vec<ConnId> {
        let Some(user) = self.users.get_mut(username) else {
            return Vec::new();
        };
        user.writes = user.writes.saturating_sub(1);
        let ready = if user.writes == 0 {
            std::mem::take(&mut user.deferred_loads)
        } else {
            Vec::new()
        };
        self.maybe_unload(username);
        ready
    }

    pub fn reach(&self, username: &str) -> Reach {
        match self.users.get(username) {
            Some(u) if !u.conns.is_empty() => Reach::Online,
            Some(u) if u.loads > 0 => Reach::Loading,
            _ => Reach::Offline,
        }
    }

    /// The session load for an upgrade finished. The first load fills the entry;
    /// later ones are ignored, since memory has been kept exact since then.
    /// Returns false when the user does not exist (anymore).
    pub fn finish_open(&mut self, username: &str, session: Option<&SessionData>) -> bool {
        let Some(user) = self.users.get_mut(username) else {
            return false;
        };
        user.opening = user.opening.saturating_sub(1);
        match session {
            Some(s) => {
                user.generation = user.generation.max(s.generation);
                if !user.loaded {
                    user.loaded = true;
                    user.nickname = s.nickname.clone();
                    user.rooms = s.rooms.iter().cloned().collect();
                    user.roles = s.roles.iter().cloned().collect();
                    user.following = s.following.iter().cloned().collect();
                    user.blocked_by = s.blocked_by.iter().cloned().collect();
                    for room in &s.rooms {
                        self.room_members
                            .entry(room.clone())
                            .or_default()
                            .insert(username.to_string());
                    }
                    for (blocker, on) in std::mem::take(&mut user.block_notes) {
                        self.block_changed(&blocker, username, on);
                    }
                }
                true
            }
            None => {
                self.maybe_unload(username);
                false
            }
        }
    }

    /// An upgrade that will not open (its connection closed first, or its load
    /// failed). Returns the DMs parked for the user if nothing of theirs is left
    /// to deliver them to: the caller queues them.
    pub fn cancel_open(&mut self, username: &str, id: ConnId) -> Vec<ParkedDm> {
        let Some(user) = self.users.get_mut(username) else {
            return Vec::new();
        };
        user.opening = user.opening.saturating_sub(1);
        user.deferred_loads.retain(|c| *c != id);
        self.take_orphaned_dms(username)
    }

    /// Adds an open connection; true if it is the user's first (they came online).
    pub fn add_conn(&mut self, username: &str, id: ConnId) -> bool {
        let user = self.users.entry(username.to_string()).or_default();
        user.conns.push(id);
        user.conns.len() == 1
    }

    /// Removes a closed connection (and its subscription); true if it was the
    /// user's last (they went offline).
    pub fn remove_conn(&mut self, username: &str, id: ConnId) -> bool {
        self.unsubscribe(username, id);
        self.unwatch_conn(id);
        let Some(user) = self.users.get_mut(username) else {
            return false;
        };
        let before = user.conns.len();
        user.conns.retain(|c| *c != id);
        let went_offline = before > 0 && user.conns.is_empty();
        self.maybe_unload(username);
        went_offline
    }

    /// Drops a user's entry once nothing keeps it (no connection, no upgrade).
    fn maybe_unload(&mut self, username: &str) {
        let Some(user) = self.users.get(username) else {
            return;
        };
        if !user.conns.is_empty()
            || user.opening > 0
            || user.loads > 0
            || user.writes > 0
            || !user.parked_dms.is_empty()
        {
            return;
        }
        let user = self.users.remove(username).expect("present");
        for room in user.rooms {
            if let Some(members) = self.room_members.get_mut(&room) {
                members.remove(username);
                if members.is_empty() {
                    self.room_members.remove(&room);
                }
            }
        }
    }

    /// The name a user is shown under in system entries: their nickname, or
    /// their username when they have none (or are not loaded).
    pub fn nickname_of(&self, username: &str) -> String {
        self.users
            .get(username)
            .map(|u| u.nickname.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| username.to_string())
    }

    pub fn is_online(&self, username: &str) -> bool {
        self.users
            .get(username)
            .is_some_and(|u| !u.conns.is_empty())
    }

    pub fn is_member(&self, username: &str, room: &str) -> bool {
        self.member(username, room).is_some()
    }

    /// A loaded user who is a member of `room` (memory is exact for them).
    pub fn member(&self, username: &str, room: &str) -> Option<&UserState> {
        self.users
            .get(username)
            .filter(|u| u.loaded && u.rooms.contains(room))
    }

    /// Records a committed join, if the user is in memory.
    /// Users whose session is loaded (their memberships and follows are in memory).
    pub fn loaded_users(&self) -> Vec<String> {
        self.users
            .iter()
            .filter(|(_, u)| u.loaded)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn joined(&mut self, username: &str, room: &str) {
        self.member_joined(room, username);
        if let Some(user) = self.users.get_mut(username) {
            if user.loaded {
                user.rooms.insert(room.to_string());
                self.room_members
                    .entry(room.to_string())
                    .or_default()
                    .insert(username.to_string());
            }
        }
    }

    /// Records a committed leave (or a kick or ban): the membership, the role,
    /// what the user's connections held of the room and their watches of it go.
    pub fn left(&mut self, username: &str, room: &str) {
        self.member_left(room, username);
        self.forget_room(username, room);
        if let Some(user) = self.users.get_mut(username) {
            user.rooms.remove(room);
            user.roles.remove(room);
        }
        if let Some(members) = self.room_members.get_mut(room) {
            members.remove(username);
            if members.is_empty() {
                self.room_members.remove(room);
            }
        }
    }

    /// Every open connection of every loaded member of `room`.
    pub fn room_conns(&self, room: &str) -> Vec<ConnId> {
        let mut out = Vec::new();
        if let Some(members) = self.room_members.get(room) {
            for m in members {
                if let Some(u) = self.users.get(m) {
                    out.extend_from_slice(&u.conns);
                }
            }
        }
        out
    }

    pub fn user_conns(&self, username: &str) -> &[ConnId] {
        self.users.get(username).map_or(&[], |u| &u.conns)
    }

    /// Subscribes a connection to the presence of everyone its user follows.
    pub fn subscribe(&mut self, username: &str, id: ConnId) {
        let Some(user) = self.users.get_mut(username) else {
            return;
        };
        if user.subscribed.contains(&id) {
            return;
        }
        user.subscribed.push(id);
        for f in &user.following {
            watch(&mut self.watchers, &mut self.newly_watched, f, [id]);
        }
    }

    pub fn unsubscribe(&mut self, username: &str, id: ConnId) {
        let Some(user) = self.users.get_mut(username) else {
            return;
        };
        let before = user.subscribed.len();
        user.subscribed.retain(|c| *c != id);
        if before == user.subscribed.len() {
            return;
        }
        for f in &user.following {
            if let Some(w) = self.watchers.get_mut(f) {
                w.remove(&id);
                if w.is_empty() {
                    self.watchers.remove(f);
                }
            }
        }
    }

    /// Records a committed follow: the follower's subscribed connections start
    /// watching the followed user.
    pub fn followed(&mut self, from: &str, to: &str) {
        let Some(user) = self.users.get_mut(from) else {
            return;
        };
        user.awaiting_follows.remove(to);
        if !user.loaded || !user.following.insert(to.to_string()) {
            return;
        }
        if !user.subscribed.is_empty() {
            let ids = user.subscribed.iter().copied();
            watch(&mut self.watchers, &mut self.newly_watched, to, ids);
        }
    }

    /// Records a committed unfollow (a follow awaiting its read is not
    /// granted by that read any more).
    pub fn unfollowed(&mut self, from: &str, to: &str) {
        let Some(user) = self.users.get_mut(from) else {
            return;
        };
        user.awaiting_follows.remove(to);
        if !user.following.remove(to) {
            return;
        }
        if let Some(w) = self.watchers.get_mut(to) {
            for c in &user.subscribed {
                w.remove(c);
            }
            if w.is_empty() {
                self.watchers.remove(to);
            }
        }
    }
}

/// Adds watchers of `user`, noting them in `newly_watched` if they had none.
fn watch(
    watchers: &mut HashMap<String, HashSet<ConnId>>,
    newly_watched: &mut Vec<String>,
    user: &str,
    ids: impl IntoIterator<Item = ConnId>,
) {
    let w = match watchers.get_mut(user) {
        Some(w) => w,
        None => {
            newly_watched.push(user.to_string());
            watchers.entry(user.to_string()).or_default()
        }
    };
    w.extend(ids);
}

/// A connection id for the tests of this module and its submodules.
#[cfg(test)]
fn id(n: usize) -> ConnId {
    ConnId {
        slot: n,
        gen: n as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(rooms: &[&str], following: &[&str]) -> SessionData {
        SessionData {
            nickname: "N".into(),
            generation: 0,
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            last_entries: vec![0; rooms.len()],
            roles: vec![],
            following: following.iter().map(|s| s.to_string()).collect(),
            blocked_by: vec![],
            offline: vec![],
            dropped: 0,
        }
    }

    #[test]
    fn first_and_last_connection() {
        let mut s = State::default();
        assert!(s.begin_open("a", id(1)));
        assert!(s.finish_open("a", Some(&session(&["r1"], &[]))));
        assert!(s.add_conn("a", id(1)));
        assert!(s.begin_open("a", id(2)));
        assert!(s.finish_open("a", Some(&session(&[], &[]))));
        assert!(!s.add_conn("a", id(2)));
        // The second load did not overwrite what memory knew.
        assert!(s.is_member("a", "r1"));
        assert!(!s.remove_conn("a", id(1)));
        assert!(s.remove_conn("a", id(2)));
        assert!(s.users.is_empty() && s.room_members.is_empty());
    }

    #[test]
    fn loads_wait_for_the_users_writes() {
        let mut s = State::default();
        assert!(s.begin_open("a", id(1)));
        s.load_submitted("a");
        assert!(s.finish_open("a", Some(&session(&[], &[]))));
        s.add_conn("a", id(1));
        s.load_done("a");
        // A join under way when the only connection closes keeps the entry...
        s.write_started("a");
        s.remove_conn("a", id(1));
        assert!(s.users.contains_key("a"));
        // ... and a new upgrade waits for it.
        assert!(!s.begin_open("a", id(2)));
        assert_eq!(s.reach("a"), Reach::Offline);
        s.joined("a", "r");
        assert_eq!(s.write_done("a"), vec![id(2)]);
        s.load_submitted("a");
        assert_eq!(s.reach("a"), Reach::Loading);
        // The join is in memory: the (later) load is ignored.
        assert!(s.finish_open("a", Some(&session(&[], &[]))));
        assert!(s.is_member("a", "r"));
        s.add_conn("a", id(2));
        s.load_done("a");
        assert_eq!(s.reach("a"), Reach::Online);
        assert!(s.remove_conn("a", id(2)));
        assert!(s.users.is_empty());
    }

    #[test]
    fn watchers_follow_follows() {
        let mut s = State::default();
        s.begin_open("f", id(1));
        s.finish_open("f", Some(&session(&[], &["x"])));
        s.add_conn("f", id(1));
        s.add_conn("f", id(2));
        s.subscribe("f", id(1));
        assert_eq!(s.watchers["x"].len(), 1);
        s.followed("f", "y");
        assert!(s.watchers["y"].contains(&id(1)));
        assert_eq!(std::mem::take(&mut s.newly_watched), ["x", "y"]);
        // A second watcher of someone watched already is nothing new.
        s.subscribe("f", id(2));
        assert_eq!(s.watchers["y"].len(), 2);
        assert!(s.newly_watched.is_empty());
        s.unsubscribe("f", id(2));
        s.unfollowed("f", "x");
        assert!(!s.watchers.contains_key("x"));
        s.remove_conn("f", id(1));
        assert!(!s.watchers.contains_key("y"));
    }
}
