//! Members' roles in memory (v3), kept with the memberships they belong to,
//! and what a membership's end drops from its user's connections:
//! loaded with the session, changed as role changes commit here or are heard
//! from other nodes, dropped when the membership ends. Only `owner` and
//! `admin` are kept; a member without an entry is a `member`. The writer
//! decides every permission in its transaction; memory lets the loop refuse a
//! plain member's moderation request without a round trip.

use super::State;
use crate::db::jobs::Role;
use crate::db::notify::Removal;

/// Removals kept at most while their entries are awaited; past it, the
/// oldest are forgotten (their entries are then shown as a plain `left`).
pub const REMOVALS_CAP: usize = 1_000;

impl State {
    /// Another node's kick or ban, heard before the entry that carries it:
    /// kept if it concerns this node (the user, or members of the room, are
    /// here) until that entry is delivered.
    pub fn note_removal(&mut self, r: Removal) {
        let here = self.room_members.contains_key(&r.room)
            || self.users.get(&r.user).is_some_and(|u| u.loaded);
        if !here {
            return;
        }
        if self.removals.len() >= REMOVALS_CAP {
            if let Some(&oldest) = self.removals.keys().min() {
                self.removals.remove(&oldest);
            }
        }
        self.removals.insert(r.id, r);
    }

    /// A membership ended: nothing of the room may reach the user's
    /// connections after the event that ends it. Live events of the room held
    /// back for a `resume` in flight are dropped and the room is no longer
    /// held (its replay is refused), and the user's typing mark goes.
    pub(super) fn forget_room(&mut self, user: &str, room: &str) {
        self.typing.remove(&(user.to_string(), room.to_string()));
        let Some(conns) = self.resuming.get_mut(room) else {
            return;
        };
        let mine: Vec<_> = self.users.get(user).map_or(Vec::new(), |u| u.conns.clone());
        conns.retain(|c| !mine.contains(c));
        if conns.is_empty() {
            self.resuming.remove(room);
        }
        for c in &mine {
            if let Some(buf) = self.resume_buffers.get_mut(c) {
                buf.rooms.remove(room);
                buf.held.events.retain(|(r, _, _)| r != room);
                buf.held.overflowed.remove(room);
            }
        }
    }

    /// After the bus was lost: every loaded user's roles made what the
    /// database holds (`roles`: theirs that are not `member`).
    pub fn reconcile_roles(&mut self, roles: &[(String, String, Role)]) {
        for u in self.users.values_mut().filter(|u| u.loaded) {
            u.roles.clear();
        }
        for (user, room, role) in roles {
            self.set_role(user, room, *role);
        }
    }

    /// `user`'s role in `room`, if they are a loaded member of it.
    pub fn role(&self, user: &str, room: &str) -> Option<Role> {
        let u = self.users.get(user).filter(|u| u.loaded)?;
        if !u.rooms.contains(room) {
            return None;
        }
        Some(u.roles.get(room).copied().unwrap_or(Role::Member))
    }

    /// Records `user`'s role in `room` (committed here or on another node).
    /// Kept for a loaded user even before their membership reaches memory (a
    /// creator's role may be heard before the join that made them a member
    /// is granted); dropped with the membership.
    pub fn set_role(&mut self, user: &str, room: &str, role: Role) {
        let Some(u) = self.users.get_mut(user).filter(|u| u.loaded) else {
            return;
        };
        match role {
            Role::Member => {
                u.roles.remove(room);
            }
            _ => {
                u.roles.insert(room.to_string(), role);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::jobs::SessionData;
    use crate::ticket::ConnId;

    #[test]
    fn roles_live_with_memberships() {
        let mut s = State::default();
        let id = ConnId { slot: 1, gen: 1 };
        s.begin_open("a", id);
        let session = SessionData {
            nickname: "A".into(),
            rooms: vec!["r1".into(), "r2".into()],
            last_entries: vec![0, 0],
            roles: vec![("r1".into(), Role::Owner)],
            following: vec![],
            blocked_by: vec![],
            offline: vec![],
            dropped: 0,
            generation: 0,
        };
        s.finish_open("a", Some(&session));
        s.add_conn("a", id);
        assert_eq!(s.role("a", "r1"), Some(Role::Owner));
        assert_eq!(s.role("a", "r2"), Some(Role::Member));
        assert_eq!(s.role("a", "r3"), None);
        s.set_role("a", "r2", Role::Admin);
        assert_eq!(s.role("a", "r2"), Some(Role::Admin));
        s.set_role("a", "r2", Role::Member);
        assert_eq!(s.role("a", "r2"), Some(Role::Member));
        // Leaving drops the role: joining again starts as a member.
        s.left("a", "r1");
        assert_eq!(s.role("a", "r1"), None);
        s.joined("a", "r1");
        assert_eq!(s.role("a", "r1"), Some(Role::Member));
    }

    #[test]
    fn a_membership_ending_drops_what_its_connections_held_of_the_room() {
        use crate::state::Held;
        use std::sync::Arc;
        let mut s = State::default();
        let id = ConnId { slot: 1, gen: 1 };
        s.begin_open("a", id);
        s.finish_open("a", Some(&session_of(&["r", "q"])));
        s.add_conn("a", id);
        let frame: Arc<[u8]> = Arc::from(&b"x"[..]);
        s.begin_resume(
            id,
            ["r".to_string(), "q".to_string()].into(),
            vec![],
            Held::default(),
        );
        assert!(s.divert(id, "r", Some(1), &frame));
        assert!(s.divert(id, "q", Some(2), &frame));
        s.typing
            .insert(("a".into(), "r".into()), std::time::Instant::now());
        s.left("a", "r");
        assert!(
            !s.divert(id, "r", Some(3), &frame),
            "no longer held for the resume"
        );
        assert!(s.typing.is_empty());
        let buf = s.end_resume(id).unwrap();
        assert_eq!(buf.rooms, ["q".to_string()].into());
        let held: Vec<_> = buf.held.events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(held, ["q"]);
    }

    #[test]
    fn roles_are_made_what_the_database_holds_after_a_catch_up() {
        let mut s = State::default();
        let id = ConnId { slot: 1, gen: 1 };
        s.begin_open("a", id);
        s.finish_open("a", Some(&session_of(&["r", "q"])));
        s.set_role("a", "r", Role::Admin);
        s.reconcile_roles(&[("a".into(), "q".into(), Role::Owner)]);
        assert_eq!(s.role("a", "r"), Some(Role::Member));
        assert_eq!(s.role("a", "q"), Some(Role::Owner));
    }

    #[test]
    fn removals_are_kept_for_this_node_only_and_bounded() {
        let mut s = State::default();
        let id = ConnId { slot: 1, gen: 1 };
        s.begin_open("a", id);
        s.finish_open("a", Some(&session_of(&["r"])));
        let removal = |id: i64, user: &str, room: &str| Removal {
            room: room.into(),
            id,
            user: user.into(),
            banned: false,
            by: "m".into(),
            reason: None,
        };
        // Neither the user nor a member of the room is here: not kept.
        s.note_removal(removal(1, "x", "elsewhere"));
        assert!(s.removals.is_empty());
        for i in 0..(REMOVALS_CAP as i64 + 5) {
            s.note_removal(removal(10 + i, "x", "r"));
        }
        assert_eq!(s.removals.len(), REMOVALS_CAP);
        assert!(!s.removals.contains_key(&10), "the oldest went first");
        s.note_removal(removal(5, "a", "nowhere"));
        assert!(s.removals.contains_key(&5), "the user is here");
    }

    fn session_of(rooms: &[&str]) -> SessionData {
        SessionData {
            nickname: "A".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            last_entries: vec![0; rooms.len()],
            roles: vec![],
            following: vec![],
            blocked_by: vec![],
            offline: vec![],
            dropped: 0,
            generation: 0,
        }
    }
}
