//! Live entry events held back from a connection until what must reach it
//! first has been sent (a `resume`'s replay, or a fresh connection's first
//! request): [`Held`], [`ResumeBuffer`], and the `State` methods that start,
//! divert into and end them.

use std::collections::HashSet;
use std::sync::Arc;

use super::State;
use crate::ticket::ConnId;

/// Live entry events held back from one connection, in delivery order, until
/// what must reach it first has been sent: a `resume`'s replay, or (on a fresh
/// connection) whatever its first request is (see `handlers/resume.rs`).
#[derive(Default)]
pub struct Held {
    /// (room, entry id, frame): entries (by id) and changes to entries
    /// (`None`: edits and deletes, which must not overtake their entry).
    pub events: Vec<(String, Option<i64>, Arc<[u8]>)>,
    /// Rooms some of whose events were dropped because [`HELD_CAP`] was reached:
    /// the client must be told to reload them, or be disconnected.
    pub overflowed: HashSet<String>,
}

impl Held {
    /// Holds one event, or drops it past the cap (marking its room).
    pub fn push(&mut self, room: &str, entry: Option<i64>, frame: &Arc<[u8]>) {
        if self.events.len() >= HELD_CAP {
            if !self.overflowed.contains(room) {
                self.overflowed.insert(room.to_string());
            }
        } else {
            self.events.push((room.to_string(), entry, frame.clone()));
        }
    }

    /// Takes out what belongs to `rooms`, order kept on both sides: a first
    /// request that resumes some rooms keeps holding those until its replay.
    pub fn split_off(&mut self, rooms: &HashSet<String>) -> Held {
        let (taken, kept) = std::mem::take(&mut self.events)
            .into_iter()
            .partition(|(room, _, _)| rooms.contains(room));
        self.events = kept;
        let (overflowed, others) = std::mem::take(&mut self.overflowed)
            .into_iter()
            .partition(|room| rooms.contains(room));
        self.overflowed = others;
        Held {
            events: taken,
            overflowed,
        }
    }
}

/// Live entry events held back from one connection while its `resume` replay is
/// read, so that replay and live traffic together show each entry once, in id
/// order (see `handlers/resume.rs`).
#[derive(Default)]
pub struct ResumeBuffer {
    pub rooms: HashSet<String>,
    pub held: Held,
    /// Rooms of the request the user does not belong to.
    pub refused: Vec<String>,
    /// Rooms of the user the budget could not even look up: answered
    /// `recovered:false` with the replay.
    pub skipped: Vec<String>,
}

/// Live events held per connection at most (by a resume, or on a fresh
/// connection before its first request); past it, the rooms affected answer
/// `recovered:false`, or the connection is closed when it cannot be told.
pub const HELD_CAP: usize = 10_000;

impl State {
    /// Starts holding back live entries of `rooms` from connection `id`, after
    /// `held`: what was already held back for those rooms.
    pub fn begin_resume(
        &mut self,
        id: ConnId,
        rooms: HashSet<String>,
        refused: Vec<String>,
        held: Held,
    ) {
        for room in &rooms {
            self.resuming.entry(room.clone()).or_default().push(id);
        }
        self.resume_buffers.insert(
            id,
            ResumeBuffer {
                rooms,
                held,
                refused,
                skipped: Vec::new(),
            },
        );
    }

    /// Stops holding back; returns what was held (none if the connection had no
    /// resume in flight).
    pub fn end_resume(&mut self, id: ConnId) -> Option<ResumeBuffer> {
        let buf = self.resume_buffers.remove(&id)?;
        for room in &buf.rooms {
            if let Some(conns) = self.resuming.get_mut(room) {
                conns.retain(|c| *c != id);
                if conns.is_empty() {
                    self.resuming.remove(room);
                }
            }
        }
        Some(buf)
    }

    /// Holds a live entry back from a resuming connection; false when the
    /// connection is not resuming that room (send it now).
    pub fn divert(
        &mut self,
        id: ConnId,
        room: &str,
        entry: Option<i64>,
        frame: &Arc<[u8]>,
    ) -> bool {
        if !self.resuming.get(room).is_some_and(|c| c.contains(&id)) {
            return false;
        }
        let Some(buf) = self.resume_buffers.get_mut(&id) else {
            return false;
        };
        buf.held.push(room, entry, frame);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::id;

    #[test]
    fn resume_holds_back_only_its_rooms_and_bounds_what_it_holds() {
        let mut s = State::default();
        let frame: Arc<[u8]> = Arc::from(&b"x"[..]);
        s.begin_resume(
            id(1),
            ["r".to_string()].into(),
            vec!["q".into()],
            Held::default(),
        );
        assert!(s.divert(id(1), "r", Some(10), &frame));
        assert!(
            !s.divert(id(1), "other", Some(11), &frame),
            "not resuming that room"
        );
        assert!(
            !s.divert(id(2), "r", Some(12), &frame),
            "another connection"
        );
        for i in 0..HELD_CAP {
            s.divert(id(1), "r", Some(100 + i as i64), &frame);
        }
        let buf = s.end_resume(id(1)).unwrap();
        assert_eq!(buf.held.events.len(), HELD_CAP);
        assert_eq!(buf.held.events[0].1, Some(10));
        assert!(buf.held.overflowed.contains("r"));
        assert_eq!(buf.refused, ["q"]);
        assert!(s.resuming.is_empty() && s.end_resume(id(1)).is_none());
        assert!(!s.divert(id(1), "r", Some(13), &frame));
    }

    #[test]
    fn held_events_split_by_room_keeping_their_order() {
        let frame: Arc<[u8]> = Arc::from(&b"x"[..]);
        let mut h = Held::default();
        for (room, id) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)] {
            h.push(room, Some(id), &frame);
        }
        h.push("b", None, &frame);
        h.overflowed.insert("b".into());
        h.overflowed.insert("c".into());
        let taken = h.split_off(&["b".to_string()].into());
        let ids = |h: &Held| h.events.iter().map(|e| e.1).collect::<Vec<_>>();
        assert_eq!(ids(&taken), [Some(2), Some(5), None]);
        assert_eq!(ids(&h), [Some(1), Some(3), Some(4)]);
        assert_eq!(taken.overflowed, ["b".to_string()].into());
        assert_eq!(h.overflowed, ["c".to_string()].into());
    }
}
