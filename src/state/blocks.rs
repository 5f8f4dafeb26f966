//! Who blocks each loaded user, as the loop keeps it: filled by the session
//! load, kept exact by blocks committed here and announced by other nodes.

use std::collections::{HashMap, HashSet};

use super::State;

impl State {
    /// Records a committed block (`on`) or unblock of `blocked` by `blocker`:
    /// a blocked user no longer follows the blocker (the block's transaction
    /// removed the follow) and is never shown their presence. Kept until the
    /// load for a user whose session is loading.
    pub fn block_changed(&mut self, blocker: &str, blocked: &str, on: bool) {
        let Some(user) = self.users.get_mut(blocked) else {
            return;
        };
        if !user.loaded {
            user.block_notes.push((blocker.to_string(), on));
            return;
        }
        if on {
            user.blocked_by.insert(blocker.to_string());
            self.unfollowed(blocked, blocker);
        } else {
            user.blocked_by.remove(blocker);
        }
    }

    /// A deleted account's blocks are gone: nobody loaded is blocked by them.
    pub fn forget_blocker(&mut self, blocker: &str) {
        for user in self.users.values_mut() {
            user.blocked_by.remove(blocker);
        }
    }

    /// Whether `subject`'s presence is hidden from `viewer` (the subject
    /// blocks the viewer): a viewer is always loaded, so memory knows.
    pub fn hides(&self, viewer: &str, subject: &str) -> bool {
        self.users
            .get(viewer)
            .is_some_and(|u| u.blocked_by.contains(subject))
    }

    /// After the bus was lost (notes may have been missed): who blocks each
    /// loaded user becomes what the database holds, `blocks` being
    /// (blocker, blocked) for every loaded user as the blocked.
    pub fn reconcile_blocks(&mut self, blocks: &[(String, String)]) {
        let mut want: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (blocker, blocked) in blocks {
            want.entry(blocked).or_default().insert(blocker);
        }
        let empty = HashSet::new();
        for user in self.loaded_users() {
            let want = want.get(user.as_str()).unwrap_or(&empty);
            let have = &self.users[&user].blocked_by;
            let gone: Vec<String> = have
                .iter()
                .filter(|b| !want.contains(b.as_str()))
                .cloned()
                .collect();
            let new: Vec<String> = want
                .iter()
                .filter(|b| !have.contains(**b))
                .map(|b| b.to_string())
                .collect();
            for blocker in gone {
                self.block_changed(&blocker, &user, false);
            }
            for blocker in new {
                self.block_changed(&blocker, &user, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::jobs::SessionData;
    use crate::ticket::ConnId;

    fn session(following: &[&str], blocked_by: &[&str]) -> SessionData {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        SessionData {
            nickname: "B".into(),
            rooms: vec![],
            last_entries: vec![],
            roles: vec![],
            following: names(following),
            blocked_by: names(blocked_by),
            offline: vec![],
            dropped: 0,
            generation: 0,
        }
    }

    #[test]
    fn blocks_heard_while_loading_apply_over_the_load() {
        let mut s = State::default();
        let id = ConnId { slot: 1, gen: 1 };
        s.begin_open("b", id);
        // Heard before the load answered, which read the follow and no block.
        s.block_changed("a", "b", true);
        s.block_changed("c", "b", false);
        s.finish_open("b", Some(&session(&["a", "x"], &["c"])));
        assert!(s.hides("b", "a") && !s.hides("b", "c"));
        assert!(!s.users["b"].following.contains("a"));
        assert!(s.users["b"].following.contains("x"));
        assert!(!s.hides("a", "b"), "one-way");

        s.reconcile_blocks(&[("c".into(), "b".into()), ("x".into(), "b".into())]);
        assert!(!s.hides("b", "a") && s.hides("b", "c") && s.hides("b", "x"));
        assert!(!s.users["b"].following.contains("x"), "the block ended it");
    }
}
