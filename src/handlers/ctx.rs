//! What every request handler is given: [`Ctx`].

use crate::conn::ConnId;
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Request, RequestError};
use crate::ticket::Hold;

/// A request as handlers see it: who sent it, on which connection, with what,
/// and how its job holds back the connection's later requests.
pub struct Ctx<'a> {
    pub id: ConnId,
    pub user: String,
    pub req: &'a Request,
    pub hold: Hold,
}

impl Ctx<'_> {
    /// The token generation of the connection's token (0 if it is gone).
    pub fn token_gen(&self, hub: &Hub) -> i64 {
        match hub.conns.get(self.id).map(|c| &c.phase) {
            Some(crate::conn::Phase::Ws(ws)) => ws.token_gen,
            _ => 0,
        }
    }

    /// Queues the request's database job; if the queue is full the client gets
    /// `UNAVAILABLE` at once (and this returns false). Until the job is done, the
    /// connection's later requests wait as the request's [`Hold`] says.
    pub fn submit(&self, hub: &mut Hub, job: Job) -> bool {
        let mut ticket = Ticket::new(self.id, self.req.req_id.clone());
        ticket.hold = self.hold;
        // Messages carry their generation themselves (and are the hot path).
        if job.is_ordered_write() && !matches!(job, Job::Msg(_) | Job::Dm { .. }) {
            ticket.sender = Some((self.user.clone(), self.token_gen(hub)));
        }
        if hub.submit(ticket, job) {
            if let Some(ws) = hub.conns.ws_mut(self.id) {
                ws.seq.started(self.hold);
            }
            true
        } else {
            hub.conns.reply_error(
                self.id,
                &self.req.req_id,
                RequestError::with(ErrorCode::Unavailable, "database queue is full"),
            );
            false
        }
    }
}
