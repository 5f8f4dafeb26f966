//! Entries this node passed over, for the connections that bring their rooms
//! here a moment later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
