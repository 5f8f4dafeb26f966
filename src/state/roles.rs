//! Members' roles in memory (v3), kept with the memberships they belong to:
//! loaded with the session, changed as role changes commit here or are heard
//! from other nodes, dropped when the membership ends. Only `owner` and
//! `admin` are kept; a member without an entry is a `member`. The writer
//! decides every permission in its transaction; memory lets the loop refuse a
//! plain member's moderation request without a round trip.

use super::State;
use crate::db::jobs::Role;

impl State {
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
            offline: vec![],
            dropped: 0,
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
}
