//! Live member presence: connections that asked `room_members` with
//! `"watch":true` hear `member_presence` when a member of the room comes
//! online or goes offline. Indexed both ways: by room (who watches it, and
//! all of its members, online or not, on any node), by member (the watched
//! rooms a user belongs to, so a presence change finds its audiences without
//! a scan), and by connection (its watches, oldest first, to drop the oldest
//! past [`MEMBER_WATCHES`] and all of them when it closes).
//!
//! A room's members are read from the database when its first watch here
//! starts (with the members loaded here added) and kept since by the joins
//! and leaves this node applies or hears. Those heard while the read is
//! under way are logged and applied over it, in order, when it answers: the
//! read may have seen them or not, and applying them again is harmless.

use std::collections::{HashMap, HashSet, VecDeque};

use super::State;
use crate::ticket::ConnId;

/// Rooms one connection may watch at once; watching one more drops the
/// oldest (a presence change then costs at most this many frames per
/// connection watching).
pub const MEMBER_WATCHES: usize = 10;

/// One watched room: the connections here that watch it, and its members.
#[derive(Default)]
struct RoomWatch {
    conns: Vec<ConnId>,
    members: HashSet<String>,
}

/// A room some connections asked to watch, whose members are being read:
/// the joins (`true`) and leaves heard since, in order.
#[derive(Default)]
struct PendingRoom {
    conns: HashSet<ConnId>,
    changes: Vec<(String, bool)>,
}

#[derive(Default)]
pub struct RoomWatches {
    rooms: HashMap<String, RoomWatch>,
    /// Member → the watched rooms they belong to.
    by_member: HashMap<String, HashSet<String>>,
    /// Connection → the rooms it watches, oldest first.
    by_conn: HashMap<ConnId, VecDeque<String>>,
    /// Rooms whose watch was asked and not answered yet; at most one per
    /// connection (`room_members` holds the connection's later requests).
    pending: HashMap<String, PendingRoom>,
    pending_by_conn: HashMap<ConnId, String>,
}

impl RoomWatches {
    /// Whether `user` belongs to a room watched here.
    pub fn watches(&self, user: &str) -> bool {
        self.by_member.contains_key(user)
    }

    /// The watched rooms `user` belongs to, each with its watching connections.
    pub fn audiences(&self, user: &str) -> Vec<(String, Vec<ConnId>)> {
        let Some(rooms) = self.by_member.get(user) else {
            return Vec::new();
        };
        rooms
            .iter()
            .filter_map(|r| Some((r.clone(), self.rooms.get(r)?.conns.clone())))
            .collect()
    }

    /// The rooms connection `id` watches, oldest first.
    pub fn of_conn(&self, id: ConnId) -> Vec<String> {
        self.by_conn
            .get(&id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Users watched in `members` of `room` from now on (for those newly
    /// watched: pushed to `newly`).
    fn add_members(
        &mut self,
        room: &str,
        members: impl IntoIterator<Item = String>,
        newly: &mut Vec<String>,
    ) {
        let Some(w) = self.rooms.get_mut(room) else {
            return;
        };
        for m in members {
            if !w.members.insert(m.clone()) {
                continue;
            }
            let rooms = match self.by_member.get_mut(&m) {
                Some(r) => r,
                None => {
                    newly.push(m.clone());
                    self.by_member.entry(m).or_default()
                }
            };
            rooms.insert(room.to_string());
        }
    }

    fn remove_member(&mut self, room: &str, user: &str) {
        let Some(w) = self.rooms.get_mut(room) else {
            return;
        };
        if !w.members.remove(user) {
            return;
        }
        if let Some(rooms) = self.by_member.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.by_member.remove(user);
            }
        }
    }

    /// Connection `id` asked to watch `room`: joins and leaves are logged
    /// until its read answers (an earlier ask that never did is forgotten).
    fn begin(&mut self, id: ConnId, room: &str) {
        self.end_pending(id);
        self.pending_by_conn.insert(id, room.to_string());
        let p = self.pending.entry(room.to_string()).or_default();
        p.conns.insert(id);
    }

    /// Ends connection `id`'s pending ask; returns the changes logged for it.
    fn end_pending(&mut self, id: ConnId) -> Vec<(String, bool)> {
        let Some(room) = self.pending_by_conn.remove(&id) else {
            return Vec::new();
        };
        let Some(p) = self.pending.get_mut(&room) else {
            return Vec::new();
        };
        p.conns.remove(&id);
        if p.conns.is_empty() {
            self.pending
                .remove(&room)
                .map(|p| p.changes)
                .unwrap_or_default()
        } else {
            p.changes.clone()
        }
    }

    /// Logs a join or leave of `room` for the reads under way.
    fn log(&mut self, room: &str, user: &str, joined: bool) {
        if let Some(p) = self.pending.get_mut(room) {
            p.changes.push((user.to_string(), joined));
        }
    }

    /// Ends connection `id`'s watch of `room`; false if it had none. The
    /// room's members stop being watched with its last watch.
    fn remove(&mut self, id: ConnId, room: &str) -> bool {
        let Some(q) = self.by_conn.get_mut(&id) else {
            return false;
        };
        let before = q.len();
        q.retain(|r| r != room);
        if q.len() == before {
            return false;
        }
        if q.is_empty() {
            self.by_conn.remove(&id);
        }
        let Some(w) = self.rooms.get_mut(room) else {
            return true;
        };
        w.conns.retain(|c| *c != id);
        if w.conns.is_empty() {
            let w = self.rooms.remove(room).expect("present");
            for m in w.members {
                if let Some(rooms) = self.by_member.get_mut(&m) {
                    rooms.remove(room);
                    if rooms.is_empty() {
                        self.by_member.remove(&m);
                    }
                }
            }
        }
        true
    }
}

impl State {
    /// Whether this node follows `user`'s presence: a subscribed follower
    /// or a member watch here.
    pub fn is_watched(&self, user: &str) -> bool {
        self.watchers.contains_key(user) || self.room_watches.watches(user)
    }

    /// Every user whose presence this node follows.
    pub fn watched_users(&self) -> Vec<String> {
        let mut users: HashSet<&String> = self.watchers.keys().collect();
        users.extend(self.room_watches.by_member.keys());
        users.into_iter().cloned().collect()
    }

    /// Connection `id` asked to watch `room` (its members are read next).
    pub fn begin_watch(&mut self, id: ConnId, room: &str) {
        self.room_watches.begin(id, room);
    }

    /// Connection `id` watches `room`, whose `members` were just read. Past
    /// [`MEMBER_WATCHES`] the connection's oldest watch ends (returned).
    pub fn watch_room(&mut self, id: ConnId, room: &str, members: Vec<String>) -> Option<String> {
        let changes = self.room_watches.end_pending(id);
        let rw = &mut self.room_watches;
        if rw
            .by_conn
            .get(&id)
            .is_some_and(|q| q.iter().any(|r| r == room))
        {
            return None;
        }
        let dropped = match rw.by_conn.get(&id) {
            Some(q) if q.len() >= MEMBER_WATCHES => q.front().cloned(),
            _ => None,
        };
        if let Some(old) = &dropped {
            rw.remove(id, old);
        }
        rw.by_conn
            .entry(id)
            .or_default()
            .push_back(room.to_string());
        let fresh = !rw.rooms.contains_key(room);
        rw.rooms.entry(room.to_string()).or_default().conns.push(id);
        if fresh {
            // Members loaded here are exact; the read may predate a join.
            let mut all = members;
            if let Some(here) = self.room_members.get(room) {
                all.extend(here.iter().cloned());
            }
            let mut newly = Vec::new();
            self.room_watches.add_members(room, all, &mut newly);
            for (user, joined) in changes {
                match joined {
                    true => self.room_watches.add_members(room, [user], &mut newly),
                    false => self.room_watches.remove_member(room, &user),
                }
            }
            self.note_newly_watched(newly);
        }
        dropped
    }

    /// Ends connection `id`'s watch of `room`; false if it had none.
    pub fn unwatch_room(&mut self, id: ConnId, room: &str) -> bool {
        self.room_watches.remove(id, room)
    }

    /// Ends every watch of a closed connection.
    pub(super) fn unwatch_conn(&mut self, id: ConnId) {
        self.room_watches.end_pending(id);
        for room in self.room_watches.of_conn(id) {
            self.room_watches.remove(id, &room);
        }
    }

    /// A committed join (here or on another node): a watched room's members
    /// gain the user.
    pub fn member_joined(&mut self, room: &str, user: &str) {
        self.room_watches.log(room, user, true);
        let mut newly = Vec::new();
        self.room_watches
            .add_members(room, [user.to_string()], &mut newly);
        self.note_newly_watched(newly);
    }

    /// A committed leave (or removal): the user is no longer a member of a
    /// watched room, and their own connections' watches of it end.
    pub(super) fn member_left(&mut self, room: &str, user: &str) {
        self.room_watches.log(room, user, false);
        self.room_watches.remove_member(room, user);
        let conns = self.user_conns(user).to_vec();
        for id in conns {
            self.room_watches.remove(id, room);
        }
    }

    /// Users whose presence a member watch started to follow: a cluster node
    /// looks up whether they are online (friend watches note theirs).
    fn note_newly_watched(&mut self, users: Vec<String>) {
        for u in users {
            if !self.watchers.contains_key(&u) {
                self.newly_watched.push(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::id;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_eleventh_watch_drops_the_oldest_and_members_follow_the_watches() {
        let mut s = State::default();
        for n in 0..MEMBER_WATCHES {
            let room = format!("r{n}");
            assert_eq!(s.watch_room(id(1), &room, names(&["m", "x"])), None);
        }
        assert_eq!(s.room_watches.audiences("m").len(), MEMBER_WATCHES);
        assert_eq!(std::mem::take(&mut s.newly_watched), ["m", "x"]);
        // Again the same room: nothing changes.
        assert_eq!(s.watch_room(id(1), "r3", vec![]), None);
        assert_eq!(s.watch_room(id(1), "new", names(&["y"])), Some("r0".into()));
        assert_eq!(s.room_watches.of_conn(id(1))[0], "r1");
        assert_eq!(s.room_watches.audiences("m").len(), MEMBER_WATCHES - 1);
        assert!(s.is_watched("y"));

        s.member_joined("new", "z");
        assert!(s.is_watched("z"));
        s.member_left("new", "z");
        assert!(!s.is_watched("z"));
        assert!(s.unwatch_room(id(1), "new"));
        assert!(!s.unwatch_room(id(1), "new"));
        assert!(!s.is_watched("y"));
        s.unwatch_conn(id(1));
        assert!(!s.is_watched("m") && s.room_watches.by_conn.is_empty());
        assert!(s.room_watches.rooms.is_empty());
    }

    #[test]
    fn joins_and_leaves_heard_while_the_members_are_read_apply_over_the_read() {
        let mut s = State::default();
        s.begin_watch(id(1), "r");
        s.begin_watch(id(2), "r");
        // Heard while reading; the read (older or newer) says m is a member.
        s.member_joined("r", "j");
        s.member_left("r", "m");
        assert!(!s.is_watched("j"), "nobody watches yet");
        s.watch_room(id(1), "r", names(&["m", "k"]));
        assert!(s.is_watched("j") && s.is_watched("k") && !s.is_watched("m"));
        // The second read answers later: the watch stands already, exact.
        s.watch_room(id(2), "r", names(&["m"]));
        assert!(!s.is_watched("m"));
        assert!(s.room_watches.pending.is_empty());
        // An ask whose connection closes first leaves nothing behind.
        s.begin_watch(id(3), "q");
        s.unwatch_conn(id(3));
        assert!(s.room_watches.pending.is_empty() && s.room_watches.pending_by_conn.is_empty());
    }
}
