//! Who blocks each loaded user, as the loop keeps it: filled by the session
//! load, kept exact by blocks committed here and announced by other nodes.

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

    /// Whether `subject`'s presence is hidden from `viewer` (the subject
    /// blocks the viewer): a viewer is always loaded, so memory knows.
    pub fn hides(&self, viewer: &str, subject: &str) -> bool {
        self.users
            .get(viewer)
            .is_some_and(|u| u.blocked_by.contains(subject))
    }
}
