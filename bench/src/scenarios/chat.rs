//! `chat` and `fanout`: rooms of member connections, some of which send; every member
//! checks every delivery for order and duplicates, and at the end every message the
//! server acknowledged (echoed to its sender) is checked to have reached every member.
//!
//! Member `m` of room `r` is user `r * members + m`; members `0..senders` of a room
//! send, as sender `r * senders + m`. Connections are spread over threads round-robin,
//! and over the server's nodes by member index (member `m` of every room on node
//! `m mod N`), so every room of at least N members spans every node.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::net::{Closed, ConnId, Driver, Flow, Net};
use crate::nodes::{member_node, Dests};
use crate::options::ChatOptions;
use crate::report::{ConnectionReport, Counts, MessageReport, NodeReport, Report, SetupReport};
use crate::run::{run_threads, Gate, RssPeaks, Server, SetupSocket};
use crate::scenarios::login::{LoginLoad, LoginTiming};
use crate::scenarios::{bump, merge_counts, rate};
use crate::stats::{IdOrder, InFlight, LatencyHist, MsgStamp, Seen, SeqTrack, MAX_TRACKED_SEQ};
use crate::users::provision;

/// `req_id` of a member's `join` (message `req_id`s are sequence numbers, far below).
const JOIN_REQ: u64 = u64::MAX - 1;
/// Open loop: a sender with this many messages in flight skips its turn instead of
/// piling up more.
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 10_000;
/// Shortest drain, even when nothing seems outstanding.
const MIN_DRAIN: Duration = Duration::from_millis(200);
/// Longest a text may be (the server refuses more than 4000 characters).
const MAX_TEXT: usize = 4000;

struct Plan {
    rooms_json: Vec<String>,
    room_ids: Vec<String>,
    names: Vec<String>,
    tokens: Vec<Arc<str>>,
    members: usize,
    senders: usize,
    total_senders: usize,
    window: usize,
    rate: Option<f64>,
    msg_size: usize,
    /// `--client-ids`: this run's prefix of every `client_id` (sequence numbers
    /// restart each run, users may not: keys must not repeat an earlier run's).
    client_id_prefix: Option<String>,
    typing_every: Option<Duration>,
    timeout: Duration,
    backoff: Duration,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    base: Instant,
    dests: Arc<Dests>,
}

impl Plan {
    /// The node of a member connection: by its index in its room.
    fn node_of_user(&self, user: usize) -> usize {
        member_node(user % self.members, self.dests.nodes())
    }

    /// The node of sender `j` of any room (member `j` of the room).
    fn node_of_sender(&self, j: usize) -> usize {
        member_node(j, self.dests.nodes())
    }
}

struct Shared {
    gate: Gate,
    ready_in_room: Vec<AtomicU64>,
    /// Deliveries still expected (sends × room size, minus errors and arrivals).
    outstanding: AtomicI64,
    sent: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    ready: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Joining,
    Ready,
    /// Failed or not ready before the run started: left out of every count.
    Out,
}

struct SenderState {
    id: u32,
    next_seq: u64,
    in_flight: InFlight,
    paused_until: Option<Instant>,
}

struct Member {
    room: usize,
    user: usize,
    /// The server node it connects to.
    node: usize,
    conn: Option<ConnId>,
    opened: bool,
    phase: Phase,
    join_retry: Option<Instant>,
    lost: bool,
    tracks: Vec<SeqTrack>,
    /// The server ids of its room's messages, which must only grow.
    ids: IdOrder,
    duplicates: u64,
    order_violations: u64,
    id_order_violations: u64,
    sender: Option<SenderState>,
    /// `--typing-every-ms`: when this member sends its next `typing`.
    next_typing: Option<Instant>,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    sent_in_window: u64,
    acked_in_window: u64,
    deliveries_in_window: u64,
    failed: Counts,
    unmatched_errors: Counts,
    timed_out: u64,
    skipped: u64,
    duplicates: u64,
    order_violations: u64,
    id_order_violations: u64,
    foreign: u64,
    setup_failed: Counts,
    lost: Counts,
    opened: u64,
    not_ready: u64,
    typing_sent: u64,
    typing_received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Setup,
    Run,
    Drain,
}

struct Times {
    start: Instant,
    measure_from_nanos: u64,
    measure_to_nanos: u64,
    send_until: Instant,
    drain_until: Instant,
}

struct ChatDriver {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    members: Vec<Member>,
    sender_idx: Vec<usize>,
    stage: Stage,
    times: Option<Times>,
    tally: Tally,
    delivery: LatencyHist,
    ack: LatencyHist,
    paced: u64,
    rr: usize,
    connects_started_at: Option<Instant>,
    all_settled_at: Option<Instant>,
}

impl ChatDriver {
    fn new(plan: Arc<Plan>, shared: Arc<Shared>, thread: usize, threads: usize) -> ChatDriver {
        let total = plan.rooms_json.len() * plan.members;
        let mut members = Vec::new();
        let mut sender_idx = Vec::new();
        for k in (thread..total).step_by(threads) {
            let room = k / plan.members;
            let m = k % plan.members;
            let sender = (m < plan.senders).then(|| SenderState {
                id: (room * plan.senders + m) as u32,
                next_seq: 0,
                in_flight: InFlight::new(),
                paused_until: None,
            });
            if sender.is_some() {
                sender_idx.push(members.len());
            }
            members.push(Member {
                room,
                user: k,
                node: plan.node_of_user(k),
                conn: None,
                opened: false,
                phase: Phase::Connecting,
                join_retry: None,
                lost: false,
                tracks: (0..plan.senders).map(|_| SeqTrack::new()).collect(),
                ids: IdOrder::default(),
                duplicates: 0,
                order_violations: 0,
                id_order_violations: 0,
                sender,
                next_typing: None,
            });
        }
        ChatDriver {
            plan,
            shared,
            members,
            sender_idx,
            stage: Stage::Start,
            times: None,
            tally: Tally::default(),
            delivery: LatencyHist::new(),
            ack: LatencyHist::new(),
            paced: 0,
            rr: 0,
            connects_started_at: None,
            all_settled_at: None,
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.plan.base).as_nanos() as u64
    }

    fn send_join(&mut self, net: &mut Net, mi: usize) {
        let m = &self.members[mi];
        if let Some(id) = m.conn {
            let frame = format!(
                r#"{{"type":"join","room_id":{},"req_id":{JOIN_REQ}}}"#,
                self.plan.rooms_json[m.room]
            );
            net.send(id, frame);
        }
    }

    fn became_ready(&mut self, mi: usize) {
        let m = &mut self.members[mi];
        if m.phase != Phase::Joining {
            return;
        }
        if self.shared.gate.started().is_some() {
            // Too late: the run started without it.
            m.phase = Phase::Out;
            self.tally.not_ready += 1;
            return;
        }
        m.phase = Phase::Ready;
        self.shared.ready_in_room[m.room].fetch_add(1, Ordering::AcqRel);
        self.shared.ready.fetch_add(1, Ordering::Relaxed);
        self.shared.gate.settle();
    }

    fn setup_failed(&mut self, mi: usize, label: String) {
        let m = &mut self.members[mi];
        if matches!(m.phase, Phase::Connecting | Phase::Joining) {
            m.phase = Phase::Out;
            bump(&mut self.tally.setup_failed, label);
            self.shared.gate.settle();
        }
    }

    fn sending(&self, now: Instant) -> bool {
        self.stage == Stage::Run && self.times.as_ref().is_some_and(|t| now < t.send_until)
    }

    /// Sends the next message of sender member `mi`; false if it could not.
    fn send_next(&mut self, net: &mut Net, mi: usize, now: Instant) -> bool {
        let t = self.nanos(now);
        let (from, to) = self
            .times
            .as_ref()
            .map(|t| (t.measure_from_nanos, t.measure_to_nanos))
            .unwrap_or((0, 0));
        let m = &mut self.members[mi];
        let (Some(conn), Some(s)) = (m.conn, m.sender.as_mut()) else {
            return false;
        };
        if m.phase != Phase::Ready || m.lost {
            return false;
        }
        let seq = s.next_seq;
        if seq >= MAX_TRACKED_SEQ {
            return false;
        }
        let text = MsgStamp {
            sender: s.id,
            seq,
            sent_nanos: t,
        }
        .encode(self.plan.msg_size);
        let frame = if let Some(run) = &self.plan.client_id_prefix {
            format!(
                r#"{{"type":"msg","room_id":{},"text":"{text}","req_id":{seq},"client_id":"{run}-{}-{seq}"}}"#,
                self.plan.rooms_json[m.room], s.id
            )
        } else {
            format!(
                r#"{{"type":"msg","room_id":{},"text":"{text}","req_id":{seq}}}"#,
                self.plan.rooms_json[m.room]
            )
        };
        if !net.send(conn, frame) {
            return false;
        }
        s.next_seq += 1;
        s.in_flight.push(seq, t);
        self.tally.sent += 1;
        if t >= from && t < to {
            self.tally.sent_in_window += 1;
        }
        let room_size = self.shared.ready_in_room[m.room].load(Ordering::Acquire) as i64;
        self.shared
            .outstanding
            .fetch_add(room_size, Ordering::AcqRel);
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Closed loop: tops up the sender's window.
    fn refill(&mut self, net: &mut Net, mi: usize, now: Instant) {
        if self.plan.rate.is_some() || !self.sending(now) {
            return;
        }
        loop {
            let Some(s) = self.members[mi].sender.as_mut() else {
                return;
            };
            if let Some(p) = s.paused_until {
                if now < p {
                    return;
                }
                s.paused_until = None;
            }
            if s.in_flight.len() >= self.plan.window || !self.send_next(net, mi, now) {
                return;
            }
        }
    }

    /// `--typing-every-ms`: each ready member sends `typing` on its own schedule
    /// (spread over the interval so they do not all fire at once).
    fn send_typing(&mut self, net: &mut Net, now: Instant) -> Option<Instant> {
        let every = self.plan.typing_every?;
        let mut next = None::<Instant>;
        for mi in 0..self.members.len() {
            let m = &mut self.members[mi];
            let (Some(conn), Phase::Ready, false) = (m.conn, m.phase, m.lost) else {
                continue;
            };
            let due = *m
                .next_typing
                .get_or_insert_with(|| now + every.mul_f64((m.user % 97) as f64 / 97.0));
            if now >= due {
                let frame = format!(
                    r#"{{"type":"typing","room_id":{}}}"#,
                    self.plan.rooms_json[m.room]
                );
                if net.send(conn, frame) {
                    self.tally.typing_sent += 1;
                }
                m.next_typing = Some(due + every);
            }
            let at = m.next_typing.expect("set above");
            next = Some(next.map_or(at, |n: Instant| n.min(at)));
        }
        next
    }

    /// Open loop: sends whatever the schedule says is due by now.
    fn pace(&mut self, net: &mut Net, now: Instant) -> Option<Instant> {
        let rate = self.plan.rate?;
        let times = self.times.as_ref()?;
        if self.sender_idx.is_empty() || now >= times.send_until {
            return None;
        }
        let local_rate = rate * self.sender_idx.len() as f64 / self.plan.total_senders as f64;
        let start = times.start;
        let due = (now.duration_since(start).as_secs_f64() * local_rate) as u64;
        let mut budget = 5_000;
        while self.paced < due && budget > 0 {
            budget -= 1;
            self.paced += 1;
            let mut sent = false;
            for _ in 0..self.sender_idx.len() {
                let mi = self.sender_idx[self.rr % self.sender_idx.len()];
                self.rr += 1;
                let busy = self.members[mi]
                    .sender
                    .as_ref()
                    .is_none_or(|s| s.in_flight.len() >= OPEN_LOOP_MAX_IN_FLIGHT);
                if !busy && self.send_next(net, mi, now) {
                    sent = true;
                    break;
                }
            }
            if !sent {
                self.tally.skipped += 1;
            }
        }
        Some(start + Duration::from_secs_f64((self.paced + 1) as f64 / local_rate))
    }

    fn begin(&mut self, net: &mut Net, start: Instant) {
        let p = &self.plan;
        let measure_from = start + p.warmup;
        let send_until = measure_from + p.duration;
        self.times = Some(Times {
            start,
            measure_from_nanos: self.nanos(measure_from),
            measure_to_nanos: self.nanos(send_until),
            send_until,
            drain_until: send_until + p.drain,
        });
        for mi in 0..self.members.len() {
            let m = &mut self.members[mi];
            if matches!(m.phase, Phase::Connecting | Phase::Joining) {
                m.phase = Phase::Out;
                self.tally.not_ready += 1;
                if let Some(id) = m.conn {
                    net.close(id);
                }
            }
        }
        self.stage = Stage::Run;
        for i in 0..self.sender_idx.len() {
            let mi = self.sender_idx[i];
            self.refill(net, mi, start);
        }
    }

    fn on_message(&mut self, net: &mut Net, mi: usize, ev: &Event, now: Instant) {
        let Some(stamp) = Event::field(&ev.text).and_then(MsgStamp::decode) else {
            self.tally.foreign += 1;
            return;
        };
        let senders = self.plan.senders;
        let m = &mut self.members[mi];
        if stamp.sender as usize / senders != m.room || stamp.seq >= MAX_TRACKED_SEQ {
            self.tally.foreign += 1;
            return;
        }
        match m.tracks[stamp.sender as usize % senders].record(stamp.seq) {
            Seen::Duplicate => {
                self.tally.duplicates += 1;
                m.duplicates += 1;
                return;
            }
            Seen::OutOfOrder => {
                self.tally.order_violations += 1;
                m.order_violations += 1;
            }
            Seen::New => {}
        }
        if let Some(id) = ev.id_num() {
            if !m.ids.record(id) {
                self.tally.id_order_violations += 1;
                m.id_order_violations += 1;
            }
        }
        if m.phase == Phase::Ready {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
        let now_nanos = now.saturating_duration_since(self.plan.base).as_nanos() as u64;
        let latency = now_nanos.saturating_sub(stamp.sent_nanos);
        let in_window = self.times.as_ref().is_some_and(|t| {
            stamp.sent_nanos >= t.measure_from_nanos && stamp.sent_nanos < t.measure_to_nanos
        });
        if in_window {
            self.delivery.record_nanos(latency);
            self.tally.deliveries_in_window += 1;
        }
        let own = m.sender.as_mut().filter(|s| s.id == stamp.sender);
        if let Some(s) = own {
            if s.in_flight.complete(stamp.seq).is_some() && in_window {
                self.ack.record_nanos(latency);
                self.tally.acked_in_window += 1;
            }
            self.refill(net, mi, now);
        }
    }

    fn on_error(&mut self, net: &mut Net, mi: usize, ev: &Event, now: Instant) {
        let code = ev.error_code().to_string();
        let m = &mut self.members[mi];
        if ev.req_num() == Some(JOIN_REQ) && m.phase == Phase::Joining {
            if code == "RATE_LIMITED" || code == "UNAVAILABLE" {
                m.join_retry = Some(now + self.plan.backoff);
            } else {
                self.setup_failed(mi, format!("join_{code}"));
            }
            return;
        }
        let room = m.room;
        let matched = match (m.sender.as_mut(), ev.req_num()) {
            (Some(s), Some(seq)) => {
                let hit = s.in_flight.complete(seq).is_some();
                if hit && code == "RATE_LIMITED" {
                    s.paused_until = Some(now + self.plan.backoff);
                }
                hit
            }
            _ => false,
        };
        if matched {
            bump(&mut self.tally.failed, code);
            let room_size = self.shared.ready_in_room[room].load(Ordering::Acquire) as i64;
            self.shared
                .outstanding
                .fetch_sub(room_size, Ordering::AcqRel);
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            self.refill(net, mi, now);
        } else {
            bump(&mut self.tally.unmatched_errors, code);
        }
    }

    fn local_in_flight(&self) -> usize {
        self.sender_idx
            .iter()
            .filter_map(|&mi| self.members[mi].sender.as_ref())
            .map(|s| s.in_flight.len())
            .sum()
    }

    fn expire(&mut self, now: Instant) {
        let cutoff = self
            .nanos(now)
            .saturating_sub(self.plan.timeout.as_nanos() as u64);
        for &mi in &self.sender_idx {
            if let Some(s) = self.members[mi].sender.as_mut() {
                self.tally.timed_out += s.in_flight.expire(cutoff) as u64;
            }
        }
    }
}

impl Driver for ChatDriver {
    fn on_open(&mut self, net: &mut Net, _id: ConnId, tag: usize, _took: Duration, _now: Instant) {
        self.tally.opened += 1;
        let m = &mut self.members[tag];
        m.opened = true;
        if m.phase == Phase::Connecting {
            m.phase = Phase::Joining;
            self.send_join(net, tag);
        }
    }

    fn on_text(&mut self, net: &mut Net, _id: ConnId, tag: usize, text: &str, now: Instant) {
        if text.contains("\"typing\"") {
            self.tally.typing_received += 1;
            return;
        }
        // In a big room most frames during setup are other members' `joined`
        // events; once joined, a member only cares about messages and errors.
        if self.members[tag].phase != Phase::Joining
            && !text.contains("\"message\"")
            && !text.contains("\"error\"")
        {
            return;
        }
        let Some(ev) = Event::parse(text) else {
            return;
        };
        match ev.kind() {
            "message" => self.on_message(net, tag, &ev, now),
            "system" => {
                let m = &self.members[tag];
                if m.phase == Phase::Joining
                    && Event::field(&ev.event) == Some("joined")
                    && Event::field(&ev.user) == Some(self.plan.names[m.user].as_str())
                    && Event::field(&ev.room) == Some(self.plan.room_ids[m.room].as_str())
                {
                    self.became_ready(tag);
                }
            }
            "join_ack" if ev.req_num().is_none_or(|r| r == JOIN_REQ) => self.became_ready(tag),
            "error" => self.on_error(net, tag, &ev, now),
            _ => {}
        }
    }

    fn on_closed(&mut self, _net: &mut Net, _id: ConnId, tag: usize, how: Closed, _now: Instant) {
        let phase = self.members[tag].phase;
        self.members[tag].conn = None;
        match (phase, how) {
            (Phase::Connecting | Phase::Joining, Closed::Failed(f) | Closed::Lost(f)) => {
                self.setup_failed(tag, f.label())
            }
            (Phase::Connecting | Phase::Joining, Closed::ByUs) => {
                self.setup_failed(tag, "closed".into())
            }
            (Phase::Ready, Closed::Failed(f) | Closed::Lost(f)) => {
                self.members[tag].lost = true;
                bump(&mut self.tally.lost, f.label());
            }
            _ => {}
        }
    }

    fn on_tick(&mut self, net: &mut Net, now: Instant) -> Flow {
        match self.stage {
            Stage::Start => {
                self.connects_started_at = Some(now);
                let nodes = self.plan.dests.nodes();
                for mi in 0..self.members.len() {
                    let (user, node) = (self.members[mi].user, self.members[mi].node);
                    let dest = self.plan.dests.pick(node, user / nodes);
                    let id = net.connect(dest, self.plan.tokens[user].clone(), mi);
                    self.members[mi].conn = Some(id);
                }
                self.stage = Stage::Setup;
                Flow::Wake(now + Duration::from_millis(5))
            }
            Stage::Setup => {
                for mi in 0..self.members.len() {
                    let m = &mut self.members[mi];
                    if m.phase == Phase::Joining && m.join_retry.is_some_and(|t| now >= t) {
                        m.join_retry = None;
                        self.send_join(net, mi);
                    }
                }
                if self.all_settled_at.is_none()
                    && self.members.iter().all(|m| m.phase != Phase::Connecting)
                {
                    self.all_settled_at = Some(now);
                }
                match self.shared.gate.poll(now) {
                    Some(start) => {
                        self.begin(net, start);
                        Flow::Wake(now)
                    }
                    None => Flow::Wake(now + Duration::from_millis(5)),
                }
            }
            Stage::Run => {
                let times = self.times.as_ref().expect("running");
                if now >= times.send_until {
                    self.stage = Stage::Drain;
                    return Flow::Wake(now);
                }
                let send_until = times.send_until;
                self.expire(now);
                let mut wake = (now + Duration::from_millis(20)).min(send_until);
                if let Some(next) = self.send_typing(net, now) {
                    wake = wake.min(next);
                }
                if self.plan.rate.is_some() {
                    if let Some(next) = self.pace(net, now) {
                        wake = wake.min(next);
                    }
                } else {
                    for i in 0..self.sender_idx.len() {
                        let mi = self.sender_idx[i];
                        self.refill(net, mi, now);
                    }
                }
                Flow::Wake(wake)
            }
            Stage::Drain => {
                self.expire(now);
                let times = self.times.as_ref().expect("running");
                // Another thread may still be finishing a send it began just before
                // the end; a short grace period keeps its deliveries counted here.
                let grace_over = now >= times.send_until + MIN_DRAIN;
                let settled = self.shared.outstanding.load(Ordering::Acquire) <= 0
                    && self.local_in_flight() == 0;
                if (settled && grace_over) || now >= times.drain_until {
                    Flow::Done
                } else {
                    Flow::Wake(now + Duration::from_millis(10))
                }
            }
        }
    }
}

/// Runs `chat` (or `fanout`, which is `chat` with one room).
pub(crate) fn run(server: &Server, co: &ChatOptions, fanout: bool) -> Result<Report, BenchError> {
    let opts = &server.opts;
    let rooms = if fanout { 1 } else { co.rooms };
    if rooms == 0 || co.members == 0 {
        return Err(BenchError::Usage(
            "--rooms and --members must be at least 1".into(),
        ));
    }
    if co.senders == 0 || co.senders > co.members {
        return Err(BenchError::Usage(format!(
            "--senders must be between 1 and --members ({})",
            co.members
        )));
    }
    if co.window == 0 {
        return Err(BenchError::Usage("--window must be at least 1".into()));
    }
    if co.msg_size > MAX_TEXT {
        return Err(BenchError::Usage(format!(
            "--msg-size must be at most {MAX_TEXT}"
        )));
    }
    if co.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    let total = rooms * co.members;
    server.log(format!(
        "chat: {rooms} rooms x {} members, {} senders/room, {}",
        co.members,
        co.senders,
        match co.rate {
            Some(r) => format!("open loop at {r} msgs/s"),
            None => format!("closed loop, window {}", co.window),
        }
    ));
    let (users, prov) = provision(server, total, true)?;

    let mut setup = SetupSocket::open(server, &users.tokens[0])?;
    let names: Vec<String> = (0..rooms)
        .map(|r| format!("{}-room-{r}", server.prefix))
        .collect();
    let room_ids = setup.create_rooms(&names)?;
    setup.close();
    server.log(format!("created {rooms} rooms"));

    let dests = server.dests(1);
    let plan = Arc::new(Plan {
        rooms_json: room_ids.iter().map(|r| json_str(r)).collect(),
        room_ids,
        names: users.names,
        tokens: users.tokens,
        members: co.members,
        senders: co.senders,
        total_senders: rooms * co.senders,
        window: co.window,
        rate: co.rate,
        msg_size: co.msg_size,
        client_id_prefix: co.client_ids.then(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{nanos:x}")
        }),
        typing_every: co.typing_every,
        timeout: opts.timeout,
        backoff: opts.backoff,
        warmup: opts.warmup,
        duration: opts.duration,
        drain: opts.drain,
        base: server.base,
        dests: dests.clone(),
    });
    let now = Instant::now();
    let shared = Arc::new(Shared {
        gate: Gate::new(total, now + opts.setup_timeout),
        ready_in_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
        outstanding: AtomicI64::new(0),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ready: AtomicU64::new(0),
    });
    let threads = server.threads_for(total);
    let drivers: Vec<ChatDriver> = (0..threads)
        .map(|t| ChatDriver::new(plan.clone(), shared.clone(), t, threads))
        .collect();
    let deadline = server.hard_deadline(now);

    let login = if co.with_login_clients > 0 {
        let gate_shared = shared.clone();
        let (warmup, duration) = (opts.warmup, opts.duration);
        let timing = Arc::new(LoginTiming {
            window: Box::new(move || {
                gate_shared
                    .gate
                    .started()
                    .map(|s| (s + warmup, s + warmup + duration))
            }),
            give_up: now + opts.setup_timeout,
        });
        Some(LoginLoad::start(
            server,
            Arc::new(plan.names.clone()),
            co.with_login_clients,
            timing,
        )?)
    } else {
        None
    };
    let login_progress = login.as_ref().map(|l| l.progress.clone());

    let mut rss = RssPeaks::new(opts.server_pid);
    let progress = {
        let shared = shared.clone();
        move || {
            let base = if shared.gate.started().is_some() {
                format!(
                    "sent {} delivered {} failed {} outstanding {}",
                    shared.sent.load(Ordering::Relaxed),
                    shared.delivered.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                    shared.outstanding.load(Ordering::Relaxed)
                )
            } else {
                format!(
                    "setup: {} of {total} connections settled, {} ready",
                    shared.gate.settled(),
                    shared.ready.load(Ordering::Relaxed)
                )
            };
            match &login_progress {
                Some(l) => format!(
                    "{base}; logins ok {} failed {}",
                    l.ok.load(Ordering::Relaxed),
                    l.failed.load(Ordering::Relaxed)
                ),
                None => base,
            }
        }
    };
    let drivers = run_threads(
        server,
        drivers,
        server.net_config(dests, threads, deadline),
        progress,
        &mut rss,
    )?;

    let start = shared.gate.started();
    let setup_secs = start
        .map(|s| s.duration_since(server.base).as_secs_f64())
        .unwrap_or(0.0);
    let measured = opts.duration.as_secs_f64();
    let mut report = Report {
        measured_secs: measured,
        setup: SetupReport {
            users: total as u64,
            registered: prov.created,
            already_registered: prov.already,
            logins: prov.logins,
            tokens_minted: prov.minted,
            setup_secs,
            ..Default::default()
        },
        ..Default::default()
    };
    report.nodes = server.node_reports();
    let (conns, msgs, delivery, ack) =
        merge(&plan, rooms, drivers, start, measured, &mut report.nodes);
    report.connections = Some(conns);
    report.messages = Some(msgs);
    if let Some(l) = delivery.summary() {
        report.latency.insert("delivery".into(), l);
    }
    if let Some(l) = ack.summary() {
        report.latency.insert("ack".into(), l);
    }
    if let Some(load) = login {
        let (r, hist) = load.finish(measured, None)?;
        report.background_login = Some(r);
        if let Some(l) = hist.summary() {
            report.latency.insert("background_login".into(), l);
        }
    }
    rss.apply(&mut report);
    Ok(report)
}

/// Combines the threads' counts and computes missing deliveries: for each sender,
/// its acknowledged set is what its own connection received of its messages; every
/// member that was ready at the start should hold exactly that set. The same counts
/// go to each member's node in `nodes`.
fn merge(
    plan: &Plan,
    rooms: usize,
    drivers: Vec<ChatDriver>,
    start: Option<Instant>,
    measured: f64,
    nodes: &mut [NodeReport],
) -> (ConnectionReport, MessageReport, LatencyHist, LatencyHist) {
    let mut conns = ConnectionReport {
        attempted: (rooms * plan.members) as u64,
        ..Default::default()
    };
    let mut msgs = MessageReport {
        rooms: rooms as u64,
        members_per_room: plan.members as u64,
        senders: plan.senders as u64,
        ..Default::default()
    };
    let mut delivery = LatencyHist::new();
    let mut ack = LatencyHist::new();
    let mut sent_in_window = 0;
    let mut acked_in_window = 0;
    let mut deliveries_in_window = 0;
    let mut settled_at = None;
    let mut connects_from = None;
    // Members by room, only those that were ready when the run started.
    let mut by_room: Vec<Vec<Member>> = (0..rooms).map(|_| Vec::new()).collect();
    for d in drivers {
        let t = &d.tally;
        conns.opened += t.opened;
        conns.not_ready += t.not_ready;
        merge_counts(&mut conns.failed, &t.setup_failed);
        merge_counts(&mut conns.lost, &t.lost);
        msgs.sent += t.sent;
        merge_counts(&mut msgs.failed, &t.failed);
        merge_counts(&mut msgs.unmatched_errors, &t.unmatched_errors);
        msgs.timed_out += t.timed_out;
        msgs.skipped += t.skipped;
        msgs.duplicates += t.duplicates;
        msgs.order_violations += t.order_violations;
        msgs.id_order_violations += t.id_order_violations;
        msgs.foreign += t.foreign;
        msgs.typing_sent += t.typing_sent;
        msgs.typing_received += t.typing_received;
        sent_in_window += t.sent_in_window;
        acked_in_window += t.acked_in_window;
        deliveries_in_window += t.deliveries_in_window;
        delivery.merge(&d.delivery);
        ack.merge(&d.ack);
        settled_at = settled_at.max(d.all_settled_at);
        connects_from = match (connects_from, d.connects_started_at) {
            (None, x) => x,
            (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
            (a, None) => a,
        };
        for m in d.members {
            if let Some(n) = nodes.get_mut(m.node) {
                n.connections += 1;
                n.opened += u64::from(m.opened);
                n.messages_sent += m.sender.as_ref().map_or(0, |s| s.next_seq);
                n.duplicates += m.duplicates;
                n.order_violations += m.order_violations;
                n.id_order_violations += m.id_order_violations;
            }
            if m.phase == Phase::Ready {
                by_room[m.room].push(m);
            }
        }
    }
    for members in by_room.iter_mut() {
        members.sort_by_key(|m| m.user);
        let ready = members.len() as u64;
        for j in 0..plan.senders {
            let sender_user = members.first().map(|m| m.room * plan.members + j);
            let acked = members
                .iter()
                .find(|m| Some(m.user) == sender_user && m.sender.is_some())
                .map(|m| &m.tracks[j]);
            let empty = SeqTrack::new();
            let acked = acked.unwrap_or(&empty);
            msgs.acked += acked.count();
            msgs.deliveries_expected += acked.count() * ready;
            let sender_node = plan.node_of_sender(j);
            for m in members.iter() {
                let common = m.tracks[j].count_common(acked);
                msgs.deliveries_received += common;
                msgs.unacked_deliveries += m.tracks[j].count() - common;
                if let Some(n) = nodes.get_mut(m.node) {
                    n.deliveries_expected += acked.count();
                    n.deliveries_received += common;
                    if m.node != sender_node {
                        n.deliveries_from_other_nodes += common;
                    }
                }
            }
        }
    }
    msgs.missing = msgs
        .deliveries_expected
        .saturating_sub(msgs.deliveries_received);
    for n in nodes.iter_mut() {
        n.missing = n.deliveries_expected.saturating_sub(n.deliveries_received);
    }
    msgs.sent_per_sec = rate(sent_in_window, measured);
    msgs.acked_per_sec = rate(acked_in_window, measured);
    msgs.deliveries_per_sec = rate(deliveries_in_window, measured);
    let open_end = match (settled_at, start) {
        (Some(a), _) => Some(a),
        (None, s) => s,
    };
    if let (Some(from), Some(to)) = (connects_from, open_end) {
        conns.open_secs = to.saturating_duration_since(from).as_secs_f64();
        conns.opened_per_sec = rate(conns.opened, conns.open_secs);
    }
    (conns, msgs, delivery, ack)
}
