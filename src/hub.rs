//! The [`Hub`]: everything the handlers work with — connections, in-memory state,
//! the database and hashing pools — and the small verbs they use (send, fan out,
//! submit a job, close). It owns no socket readiness; the loop in `server/mod.rs`
//! drives it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use slab::Slab;

use crate::auth::jwt::Tokens;
use crate::auth::password::{HashJob, HashPool};
use crate::budget::UserBudget;
use crate::close::CloseReason;
use crate::config::Config;
use crate::conn::{Conn, ConnId, Phase, WsState};
use crate::db::{Db, Job, Ticket};
use crate::history_cache::HistoryCache;
use crate::metrics::Metrics;
use crate::protocol::{Event, RequestError};
use crate::state::State;
use crate::throttle::{AddrBuckets, LoginThrottle, RegisterBudget};

pub struct Hub {
    pub conns: Slab<Conn>,
    pub state: State,
    pub db: Db,
    pub hasher: HashPool,
    pub tokens: Tokens,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub login_throttle: LoginThrottle,
    pub register_budget: RegisterBudget,
    /// `/metrics` on the public listener, per client address
    /// (`KLAV_METRICS_PER_ADDR_PER_SEC`): each answer is kilobytes for a few
    /// bytes asked, so anonymous clients get only a scraper's share.
    pub public_metrics_budget: AddrBuckets,
    /// Rooms each user may create (`create_room`, `join` by name).
    pub room_budget: UserBudget,
    /// WebSocket upgrades each user may start (`KLAV_WS_OPENS_PER_USER_PER_MIN`).
    pub ws_open_budget: UserBudget,
    /// Unknown usernames each user may look up (`friend_follow`): answering
    /// `NOT_REGISTERED` tells whether an account exists, so it must not come
    /// at the request rate.
    pub lookup_budget: UserBudget,
    /// Rows each user's requests may have the database examine (`resume`,
    /// `my_rooms`): see [`crate::budget::DB_ROWS_PER_SEC`].
    pub rows_budget: UserBudget,
    pub history: HistoryCache,
    /// Slots with new output, flushed once at the end of the loop turn.
    pub dirty: Vec<usize>,
    /// Connections to close after this batch of events (handlers never remove
    /// slab entries themselves).
    pub close_soon: Vec<(ConnId, CloseReason)>,
    /// Connections to read again this turn: what stopped their reading is over
    /// (a held request finished, output drained, a session opened).
    pub again: Vec<ConnId>,
    /// Connections that used their share of a turn with input left over: read
    /// again after everyone else (see `server::reading`).
    pub busy: Vec<ConnId>,
    /// HTTP requests that may still be answered this turn, all connections
    /// together: a storm of pipelined requests on thousands of connections
    /// spreads over turns instead of making one turn (and everyone's wait) long.
    pub http_turn_left: usize,
    /// HTTP response bytes that may still be queued this turn, all connections
    /// together: what a turn costs is mostly copying responses, so large ones
    /// (`/metrics`, web assets) spread over turns too.
    pub http_bytes_left: usize,
    /// Jobs submitted and not yet completed.
    pub outstanding: usize,
    pub started: Instant,
    /// This node's place in a cluster (and its rooms' entry chains).
    pub cluster: crate::cluster::Cluster,
    /// `/metrics` as rendered this loop turn (see `handlers::http`).
    pub metrics_text: Option<String>,
    /// Bytes of large replies queued since freed memory was last given back
    /// (see `server::Server::trim_if_freed`): they come and go within a second,
    /// so the once-a-second look at buffered bytes would miss them.
    pub large_reply_bytes: usize,
}

impl Hub {
    /// The connection, if `id` still names it (slot and generation).
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.slot).filter(|c| c.id == id)
    }

    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.slot).filter(|c| c.id == id)
    }

    /// An open WebSocket's state.
    pub fn ws_mut(&mut self, id: ConnId) -> Option<&mut WsState> {
        match &mut self.conn_mut(id)?.phase {
            Phase::Ws(ws) => Some(ws),
            _ => None,
        }
    }

    /// The user of an open WebSocket connection.
    pub fn ws_user(&self, id: ConnId) -> Option<&str> {
        match &self.conn(id)?.phase {
            Phase::Ws(ws) => Some(ws.username.as_str()),
            _ => None,
        }
    }

    /// Queues bytes for a connection; a connection whose output passes the cap is
    /// closed as a slow consumer.
    pub fn send_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        let max = self.config.max_output_bytes;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        // A direct reply counts only what was already waiting: one large reply
        // (a long history) is fine, and a client that does not read its replies
        // is stopped long before by the request pause (`OUTPUT_PAUSE_BYTES`).
        let backlog = conn.out.len();
        conn.out.push(bytes);
        let over = backlog > max;
        self.dirty.push(id.slot);
        if over {
            self.close_soon.push((id, CloseReason::SlowConsumer));
        }
    }

    /// Queues a frame shared with other recipients.
    pub fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>) {
        let max = self.config.max_output_bytes;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing.is_some() || !matches!(conn.phase, Phase::Ws(_)) {
            return;
        }
        conn.out.push_shared(frame);
        let over = conn.out.len() > max;
        self.dirty.push(id.slot);
        if over {
            self.close_soon.push((id, CloseReason::SlowConsumer));
        }
    }

    /// Sends one event to one WebSocket connection.
    pub fn send_event(&mut self, id: ConnId, event: &Event) {
        self.send_bytes(id, &event.frame());
    }

    /// A direct reply: echoes the request's `req_id`. A large one is charged to
    /// the connection's request bucket (see [`Hub::send_reply`]).
    pub fn reply(&mut self, id: ConnId, req_id: &Option<Value>, event: Event) {
        self.send_reply(id, &event.reply_to(req_id).frame());
    }

    /// Queues a reply frame built by its handler, charging the connection's
    /// request bucket for its size ([`crate::conn::reply_cost`]): what a
    /// request makes klav copy is paid for like what it makes klav parse.
    pub fn send_reply(&mut self, id: ConnId, frame: &[u8]) {
        self.charge_reply(id, frame.len());
        self.send_bytes(id, frame);
    }

    /// Charges the connection's request bucket for `len` bytes of reply.
    pub fn charge_reply(&mut self, id: ConnId, len: usize) {
        let cost = crate::conn::reply_cost(len);
        if cost > 0.0 {
            let burst = self.config.rate_burst;
            if let Some(ws) = self.ws_mut(id) {
                ws.rate.charge(cost, burst);
            }
            self.large_reply_bytes += len;
        }
    }

    pub fn reply_error(&mut self, id: ConnId, req_id: &Option<Value>, err: RequestError) {
        self.reply(id, req_id, Event::error(&err));
    }

    /// Sends the same frame to many connections; returns how many got it.
    pub fn fan_out(&mut self, targets: &[ConnId], frame: &Arc<[u8]>) -> usize {
        for &t in targets {
            self.send_shared(t, frame);
        }
        self.metrics.deliveries += targets.len() as u64;
        targets.len()
    }

    /// Every connection of every online member of a room gets the event.
    pub fn to_room(&mut self, room: &str, event: &Event) {
        let targets = self.state.room_conns(room);
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
                self.deliver(t, room, None, &frame);
            }
        }
        self.metrics.deliveries += targets.len() as u64;
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
                    self.send_bytes(t, &crate::ws::text_frame(own.as_bytes()));
                    if let Some(ws) = self.ws_mut(t) {
                        ws.note_live(room, entry);
                    }
                }
                _ if divert && self.state.divert(t, room, Some(entry), &frame) => {}
                _ => self.deliver(t, room, Some(entry), &frame),
            }
        }
        self.metrics.deliveries += targets.len() as u64;
    }

    /// A live entry event (`entry`: its id; `None`: a change to an entry) to one
    /// WebSocket: held back while the connection's opening hold lasts, otherwise
    /// queued like [`Hub::send_shared`], noting the room's first live entry (see
    /// `WsState::first_live`). One slab lookup per recipient, as a plain send.
    pub fn deliver(&mut self, t: ConnId, room: &str, entry: Option<i64>, frame: &Arc<[u8]>) {
        let max = self.config.max_output_bytes;
        let Some(conn) = self.conn_mut(t) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        if let Some(hold) = &mut ws.opening {
            hold.held.push(room, entry, frame);
            return;
        }
        if let Some(id) = entry {
            ws.note_live(room, id);
        }
        conn.out.push_shared(frame);
        let over = conn.out.len() > max;
        self.dirty.push(t.slot);
        if over {
            self.close_soon.push((t, CloseReason::SlowConsumer));
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

    /// Queues a database job; false when it could not be queued. A job that
    /// writes a user's session data is counted for that user, so their session
    /// loads wait for it (see `state`).
    pub fn submit(&mut self, mut ticket: Ticket, job: Job) -> bool {
        let writer = job.session_writer().map(str::to_string);
        ticket.writes_for.clone_from(&writer);
        match self.db.submit(ticket, job) {
            Ok(()) => {
                self.outstanding += 1;
                if let Some(user) = writer {
                    self.state.write_started(&user);
                }
                true
            }
            Err(_) => {
                self.metrics.db_rejected += 1;
                false
            }
        }
    }

    /// Queues a hashing job; false when its queue is full.
    pub fn submit_hash(&mut self, ticket: Ticket, job: HashJob) -> bool {
        match self.hasher.submit(ticket, job) {
            Ok(()) => {
                self.outstanding += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Whether this turn's HTTP budget (requests or response bytes) is spent:
    /// the connections still waiting are answered next turn.
    pub fn http_turn_spent(&self) -> bool {
        self.http_turn_left == 0 || self.http_bytes_left == 0
    }

    /// Queues a final or keep-alive HTTP response; a final one closes the
    /// connection after it (and nothing further is parsed from it). It counts
    /// against this turn's HTTP response bytes.
    pub fn respond(&mut self, id: ConnId, bytes: &[u8], keep_alive: bool) {
        self.http_bytes_left = self.http_bytes_left.saturating_sub(bytes.len());
        self.send_bytes(id, bytes);
        if !keep_alive {
            if let Some(conn) = self.conn_mut(id) {
                conn.closing = Some(CloseReason::HttpDone);
            }
            self.close(id, CloseReason::HttpDone);
        }
    }

    pub fn close(&mut self, id: ConnId, reason: CloseReason) {
        self.close_soon.push((id, reason));
    }
}
