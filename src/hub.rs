//! The [`Hub`]: what the handlers work on, and the verbs that need more than one
//! of its parts — an event to a room's or a user's connections (the state says
//! who they are, the connections take the frame), a job submitted for a user
//! (the services queue it, the state counts it). It owns no socket readiness;
//! the loop in `server/` drives it.

use std::sync::Arc;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::conn::ConnId;
use crate::conns::Conns;
use crate::db::{Job, Ticket};
use crate::history_cache::HistoryCache;
use crate::protocol::Event;
use crate::services::Services;
use crate::state::State;

/// What handlers work on. A handful of parts, each with a job of its own:
/// the connections and their output ([`Conns`]), the services handed down
/// from the server ([`Services`]), what the loop keeps in memory about users
/// and rooms ([`State`]), the newest entries of active rooms
/// ([`HistoryCache`]), and this node's place in a cluster ([`Cluster`]).
pub struct Hub {
    pub conns: Conns,
    pub svc: Services,
    pub state: State,
    pub history: HistoryCache,
    pub cluster: Cluster,
}

impl Hub {
    /// Counts `n` events fanned out.
    fn delivered(&mut self, n: usize) {
        self.svc.metrics.deliveries += n as u64;
    }

    /// Sends the same frame to many connections; returns how many got it.
    pub fn fan_out(&mut self, targets: &[ConnId], frame: &Arc<[u8]>) -> usize {
        let n = self.conns.fan_out(targets, frame);
        self.delivered(n);
        n
    }

    /// Every connection of every online member of a room gets the event.
    pub fn to_room(&mut self, room: &str, event: &Event) {
        let targets = self.state.room_conns(room);
        if !targets.is_empty() {
            let frame = event.shared();
            self.fan_out(&targets, &frame);
        }
    }

    /// Every connection of a user gets the event.
    pub fn to_user(&mut self, username: &str, event: &Event) {
        let targets = self.state.user_conns(username).to_vec();
        if !targets.is_empty() {
            let frame = event.shared();
            self.fan_out(&targets, &frame);
        }
    }

    /// An event to `targets` except `except`'s connections (e.g. `typing`,
    /// which never echoes to the typer), serialized once.
    pub fn to_others(&mut self, targets: &[ConnId], except: &[ConnId], event: &Event) {
        let targets: Vec<ConnId> = targets
            .iter()
            .copied()
            .filter(|t| !except.contains(t))
            .collect();
        if !targets.is_empty() {
            let frame = event.shared();
            self.fan_out(&targets, &frame);
        }
    }

    /// A chat entry's event (it has an `id`) to every connection of the room's
    /// online members, serialized once. `echo`: the sending connection and its
    /// request's `req_id`, which that connection alone gets in its own frame.
    /// Connections resuming the room get it after their replay instead, and
    /// connections just opened after their first request has started.
    pub fn entry_to_room(
        &mut self,
        room: &str,
        entry: i64,
        event: &Event,
        echo: Option<(ConnId, &Value)>,
    ) {
        let targets = self.state.room_conns(room);
        self.entry_to(&targets, room, entry, event, echo);
    }

    /// A chat entry's event (a DM) to every connection of a user.
    pub fn entry_to_user(&mut self, username: &str, room: &str, entry: i64, event: &Event) {
        let targets = self.state.user_conns(username).to_vec();
        self.entry_to(&targets, room, entry, event, None);
    }

    /// A change to a room's entry (edited, deleted) to `targets`: connections
    /// resuming the room (or just opened) get it after their replay (or first
    /// request), in order with the entries held back for them.
    pub fn change_to(&mut self, targets: &[ConnId], room: &str, event: &Event) {
        if targets.is_empty() {
            return;
        }
        let frame = event.shared();
        let divert = !self.state.resuming.is_empty() && self.state.resuming.contains_key(room);
        for &t in targets {
            if !(divert && self.state.divert(t, room, None, &frame)) {
                self.conns.deliver(t, room, None, &frame);
            }
        }
        self.delivered(targets.len());
    }

    fn entry_to(
        &mut self,
        targets: &[ConnId],
        room: &str,
        entry: i64,
        event: &Event,
        echo: Option<(ConnId, &Value)>,
    ) {
        if targets.is_empty() {
            return;
        }
        let json = event.json();
        let frame: Arc<[u8]> = crate::ws::text_frame(json.as_bytes()).into();
        let divert = !self.state.resuming.is_empty() && self.state.resuming.contains_key(room);
        for &t in targets {
            match echo {
                Some((sender, req_id)) if sender == t => {
                    let own = Event::json_with_req_id(&json, req_id);
                    self.conns
                        .send_bytes(t, &crate::ws::text_frame(own.as_bytes()));
                    if let Some(ws) = self.conns.ws_mut(t) {
                        ws.note_live(room, entry);
                    }
                }
                _ if divert && self.state.divert(t, room, Some(entry), &frame) => {}
                _ => self.conns.deliver(t, room, Some(entry), &frame),
            }
        }
        self.delivered(targets.len());
    }

    /// Queues a database job; false when it could not be queued. A job that
    /// writes a user's session data is counted for that user, so their session
    /// loads wait for it (see `state`).
    pub fn submit(&mut self, mut ticket: Ticket, job: Job) -> bool {
        let writer = job.session_writer().map(str::to_string);
        ticket.writes_for.clone_from(&writer);
        match self.svc.db.submit(ticket, job) {
            Ok(()) => {
                self.svc.outstanding += 1;
                if let Some(user) = writer {
                    self.state.write_started(&user);
                }
                true
            }
            Err(_) => {
                self.svc.metrics.db_rejected += 1;
                false
            }
        }
    }
}
