//! The reads a turn leaves for later, by kind of connection, so that the next
//! turns serve them in a fair order (see [`PutOff`]).

use std::collections::VecDeque;

use crate::conn::ConnId;

/// Reads put off to later turns, in three queues, each oldest first.
///
/// A turn reads for `Config::turn_work` (4 ms), then puts further reads off.
/// Whatever a client asks waits for the turn under way to end, then for its
/// own turn, then (for a database round trip) for the turn that delivers the
/// answer: short turns keep that wait short when thousands of connections are
/// busy at once.
///
/// Each turn serves, while it has time: open sessions (WebSockets of users
/// already let in) whose reads were put off, then this turn's session events;
/// then everything else put off (new connections, HTTP, closing sockets), then
/// this turn's other events; last, connections that used a whole share of an
/// earlier turn (a per-connection budget) with input left, at least
/// `reading::BUSY_MIN_PER_TURN` of them. What the time limit leaves is put off to the
/// back of its queue. A signed-in user sending one request at a time thus
/// never waits behind a connect storm or a flooder's backlog, and nobody waits
/// behind a flooder.
#[derive(Default)]
pub(super) struct PutOff {
    sessions: VecDeque<ConnId>,
    others: VecDeque<ConnId>,
    busy: VecDeque<ConnId>,
}

/// Which of [`PutOff`]'s queues.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    Sessions,
    Others,
    Busy,
}

impl PutOff {
    pub(super) fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.others.is_empty() && self.busy.is_empty()
    }

    /// How many wait in each queue: sessions, others, busy.
    pub(super) fn lens(&self) -> [usize; 3] {
        [self.sessions.len(), self.others.len(), self.busy.len()]
    }

    pub(super) fn queue(&mut self, q: Queue) -> &mut VecDeque<ConnId> {
        match q {
            Queue::Sessions => &mut self.sessions,
            Queue::Others => &mut self.others,
            Queue::Busy => &mut self.busy,
        }
    }
}
