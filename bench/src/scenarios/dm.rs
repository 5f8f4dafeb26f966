//! `dm`: rooms of a few members each, where every connected member sends `room_dm`s
//! to the other members of its room in turn. Every recipient checks every `dm` it
//! gets (exactly once, in each sender's order, by its text and by the server's id);
//! every sender times its `dm_ack`s and checks their status. At the end every DM the
//! server answered `DELIVERED` is checked to have reached its recipient.
//!
//! Member `m` of room `r` is user `r * members + m`. The last `offline` members of
//! each room join it during setup and disconnect: they are never connected during
//! the run, so DMs to them must be answered `QUEUED`. Every other member connects,
//! joins, and sends. Its `k`-th DM goes to the others of its room in turn (see
//! [`dm_target`]); the text is a [`MsgStamp`] whose `sender` is the pair (sender
//! user, recipient member) and whose `seq` counts that pair's DMs, so a recipient
//! tracks each sender's sequence on its own and the sender's acknowledged set is
//! exactly what that recipient must hold. Connections are spread over threads
//! round-robin and over the server's nodes by member index, as in `chat`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::net::{Closed, ConnId, Driver, Flow, Net};
use crate::nodes::{member_node, Dests};
use crate::options::DmOptions;
use crate::report::{ConnectionReport, Counts, MessageReport, NodeReport, Report, SetupReport};
use crate::run::{run_threads, Gate, RssPeaks, Server, SetupSocket};
use crate::scenarios::{bump, merge_counts, rate};
use crate::stats::{IdOrder, InFlight, LatencyHist, MsgStamp, Seen, SeqTrack, MAX_TRACKED_SEQ};
use crate::users::provision;

/// `req_id` of a member's `join` (DM `req_id`s are per-sender counters, far below).
const JOIN_REQ: u64 = u64::MAX - 1;
/// Open loop: a sender with this many DMs in flight skips its turn.
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 10_000;
/// Shortest drain, even when nothing seems outstanding.
const MIN_DRAIN: Duration = Duration::from_millis(200);
/// Longest a text may be (the server refuses more than 4000 characters).
const MAX_TEXT: usize = 4000;

/// The recipient (member index in the room) of the `k`-th DM of member `from`, and
/// that DM's sequence number among the DMs from `from` to it: the other members in
/// turn, `from` skipped, so each gets every `(members - 1)`-th DM.
pub(crate) fn dm_target(members: usize, from: usize, k: u64) -> (usize, u64) {
    let others = (members.max(2) - 1) as u64;
    let j = (k % others) as usize;
    let to = if j >= from { j + 1 } else { j };
    (to, k / others)
}

struct Plan {
    rooms_json: Vec<String>,
    room_ids: Vec<String>,
    names: Vec<String>,
    names_json: Vec<String>,
    tokens: Vec<Arc<str>>,
    members: usize,
    /// Members `0..online` of each room connect and send; the rest stay offline.
    online: usize,
    total_senders: usize,
    window: usize,
    rate: Option<f64>,
    msg_size: usize,
    /// `--client-ids`: this run's prefix of every `client_id`.
    client_id_prefix: Option<String>,
    timeout: Duration,
    backoff: Duration,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    base: Instant,
    dests: Arc<Dests>,
}

impl Plan {
    /// The node of member `m` of any room.
    fn node_of_member(&self, m: usize) -> usize {
        member_node(m, self.dests.nodes())
    }

    /// The stamp's `sender` of DMs from `from_user` to member `to` of its room.
    fn stream(&self, from_user: usize, to: usize) -> u32 {
        (from_user * self.members + to) as u32
    }
}

struct Shared {
    gate: Gate,
    /// Per user: connected, ready and not lost. A `QUEUED` answer for a recipient
    /// that is live is wrong; for one that is not, its connection is the problem.
    live: Vec<AtomicBool>,
    /// Replies and deliveries still expected: each DM to a connected member owes an
    /// ack and a delivery, each DM to an offline one an ack.
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
    /// The next DM's number (its `req_id`); see [`dm_target`].
    next: u64,
    in_flight: InFlight,
    /// By recipient member: the pair sequence numbers answered `DELIVERED`.
    acked: Vec<SeqTrack>,
    /// DMs answered `QUEUED` for a recipient that is not connected.
    queued: u64,
    paused_until: Option<Instant>,
}

struct Member {
    room: usize,
    /// Index in its room.
    m: usize,
    user: usize,
    node: usize,
    conn: Option<ConnId>,
    opened: bool,
    phase: Phase,
    join_retry: Option<Instant>,
    lost: bool,
    /// By sender member: the pair sequence numbers received.
    tracks: Vec<SeqTrack>,
    /// By sender member: the server ids of its DMs, which must only grow.
    ids: Vec<IdOrder>,
    duplicates: u64,
    order_violations: u64,
    id_order_violations: u64,
    sender: SenderState,
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
    misdirected: u64,
    setup_failed: Counts,
    lost: Counts,
    opened: u64,
    not_ready: u64,
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

impl Times {
    fn in_window(&self, sent_nanos: u64) -> bool {
        sent_nanos >= self.measure_from_nanos && sent_nanos < self.measure_to_nanos
    }
}

struct DmDriver {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    members: Vec<Member>,
    stage: Stage,
    times: Option<Times>,
    tally: Tally,
    delivery: LatencyHist,
    ack: LatencyHist,
    ack_queued: LatencyHist,
    paced: u64,
    rr: usize,
    connects_started_at: Option<Instant>,
    all_settled_at: Option<Instant>,
}

impl DmDriver {
    fn new(plan: Arc<Plan>, shared: Arc<Shared>, thread: usize, threads: usize) -> DmDriver {
        let rooms = plan.rooms_json.len();
        let connected: Vec<usize> = (0..rooms)
            .flat_map(|r| (0..plan.online).map(move |m| (r, m)))
            .map(|(r, m)| r * plan.members + m)
            .collect();
        let members = connected
            .into_iter()
            .skip(thread)
            .step_by(threads)
            .map(|user| {
                let m = user % plan.members;
                Member {
                    room: user / plan.members,
                    m,
                    user,
                    node: plan.node_of_member(m),
                    conn: None,
                    opened: false,
                    phase: Phase::Connecting,
                    join_retry: None,
                    lost: false,
                    tracks: (0..plan.members).map(|_| SeqTrack::new()).collect(),
                    ids: vec![IdOrder::default(); plan.members],
                    duplicates: 0,
                    order_violations: 0,
                    id_order_violations: 0,
                    sender: SenderState {
                        next: 0,
                        in_flight: InFlight::new(),
                        acked: (0..plan.members).map(|_| SeqTrack::new()).collect(),
                        queued: 0,
                        paused_until: None,
                    },
                }
            })
            .collect();
        DmDriver {
            plan,
            shared,
            members,
            stage: Stage::Start,
            times: None,
            tally: Tally::default(),
            delivery: LatencyHist::new(),
            ack: LatencyHist::new(),
            ack_queued: LatencyHist::new(),
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
        self.shared.live[m.user].store(true, Ordering::Release);
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

    /// What a DM to member `to` still owes when it is sent: an ack, and a delivery
    /// when the recipient is one of the connected members.
    fn owed(&self, to: usize) -> i64 {
        if to < self.plan.online {
            2
        } else {
            1
        }
    }

    /// Sends the next DM of member `mi`; false if it could not.
    fn send_next(&mut self, net: &mut Net, mi: usize, now: Instant) -> bool {
        let t = self.nanos(now);
        let in_window = self.times.as_ref().is_some_and(|w| w.in_window(t));
        let plan = &self.plan;
        let m = &mut self.members[mi];
        let Some(conn) = m.conn else {
            return false;
        };
        if m.phase != Phase::Ready || m.lost {
            return false;
        }
        let k = m.sender.next;
        let (to, seq) = dm_target(plan.members, m.m, k);
        if seq >= MAX_TRACKED_SEQ {
            return false;
        }
        let text = MsgStamp {
            sender: plan.stream(m.user, to),
            seq,
            sent_nanos: t,
        }
        .encode(plan.msg_size);
        let room = &plan.rooms_json[m.room];
        let to_name = &plan.names_json[m.room * plan.members + to];
        let frame = match &plan.client_id_prefix {
            Some(run) => format!(
                r#"{{"type":"room_dm","room_id":{room},"to":{to_name},"text":"{text}","req_id":{k},"client_id":"{run}-{}-{k}"}}"#,
                m.user
            ),
            None => format!(
                r#"{{"type":"room_dm","room_id":{room},"to":{to_name},"text":"{text}","req_id":{k}}}"#
            ),
        };
        if !net.send(conn, frame) {
            return false;
        }
        m.sender.next += 1;
        m.sender.in_flight.push(k, t);
        self.tally.sent += 1;
        if in_window {
            self.tally.sent_in_window += 1;
        }
        let owed = self.owed(to);
        self.shared.outstanding.fetch_add(owed, Ordering::AcqRel);
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Closed loop: tops up the sender's window.
    fn refill(&mut self, net: &mut Net, mi: usize, now: Instant) {
        if self.plan.rate.is_some() || !self.sending(now) {
            return;
        }
        loop {
            let s = &mut self.members[mi].sender;
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

    /// Open loop: sends whatever the schedule says is due by now, over this
    /// thread's members in turn.
    fn pace(&mut self, net: &mut Net, now: Instant) -> Option<Instant> {
        let rate = self.plan.rate?;
        let times = self.times.as_ref()?;
        if self.members.is_empty() || now >= times.send_until {
            return None;
        }
        let local_rate = rate * self.members.len() as f64 / self.plan.total_senders as f64;
        let start = times.start;
        let due = (now.duration_since(start).as_secs_f64() * local_rate) as u64;
        let mut budget = 5_000;
        while self.paced < due && budget > 0 {
            budget -= 1;
            self.paced += 1;
            let mut sent = false;
            for _ in 0..self.members.len() {
                let mi = self.rr % self.members.len();
                self.rr += 1;
                let busy = self.members[mi].sender.in_flight.len() >= OPEN_LOOP_MAX_IN_FLIGHT;
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
        for m in &mut self.members {
            if matches!(m.phase, Phase::Connecting | Phase::Joining) {
                m.phase = Phase::Out;
                self.tally.not_ready += 1;
                if let Some(id) = m.conn {
                    net.close(id);
                }
            }
        }
        self.stage = Stage::Run;
        for mi in 0..self.members.len() {
            self.refill(net, mi, start);
        }
    }

    /// A `dm` arrived at member `mi`.
    fn on_dm(&mut self, mi: usize, ev: &Event, now: Instant) {
        let Some(stamp) = Event::field(&ev.text).and_then(MsgStamp::decode) else {
            self.tally.foreign += 1;
            return;
        };
        let plan = &self.plan;
        let m = &mut self.members[mi];
        let from_user = stamp.sender as usize / plan.members;
        let to = stamp.sender as usize % plan.members;
        let from = from_user % plan.members;
        if from_user / plan.members != m.room
            || from >= plan.online
            || from == m.m
            || stamp.seq >= MAX_TRACKED_SEQ
        {
            self.tally.foreign += 1;
            return;
        }
        if to != m.m {
            // One of ours, sent to another member of this room.
            self.tally.misdirected += 1;
            return;
        }
        match m.tracks[from].record(stamp.seq) {
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
            if !m.ids[from].record(id) {
                self.tally.id_order_violations += 1;
                m.id_order_violations += 1;
            }
        }
        if m.phase == Phase::Ready {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
        if self
            .times
            .as_ref()
            .is_some_and(|t| t.in_window(stamp.sent_nanos))
        {
            let now_nanos = now.saturating_duration_since(plan.base).as_nanos() as u64;
            self.delivery
                .record_nanos(now_nanos.saturating_sub(stamp.sent_nanos));
            self.tally.deliveries_in_window += 1;
        }
    }

    /// A `dm_ack` arrived at sender `mi`.
    fn on_ack(&mut self, net: &mut Net, mi: usize, ev: &Event, now: Instant) {
        let Some(k) = ev.req_num().filter(|&k| k != JOIN_REQ) else {
            bump(&mut self.tally.unmatched_errors, "dm_ack_without_req_id");
            return;
        };
        let now_nanos = self.nanos(now);
        let window = self
            .times
            .as_ref()
            .map(|t| (t.measure_from_nanos, t.measure_to_nanos));
        let plan = &self.plan;
        let m = &mut self.members[mi];
        if k >= m.sender.next {
            bump(&mut self.tally.unmatched_errors, "dm_ack_unknown_req_id");
            return;
        }
        let (to, seq) = dm_target(plan.members, m.m, k);
        let online_to = to < plan.online;
        // A late ack (after `--timeout`) still says what happened to the DM; only
        // its latency is no longer counted.
        let sent = m.sender.in_flight.complete(k);
        let in_window = match (sent, window) {
            (Some(s), Some((from, until))) => s >= from && s < until,
            _ => false,
        };
        let latency = sent.map(|s| now_nanos.saturating_sub(s));
        let mut settled: i64 = 1;
        match Event::field(&ev.status).unwrap_or("NONE") {
            "DELIVERED" if online_to => {
                if m.sender.acked[to].record(seq) == Seen::Duplicate {
                    bump(&mut self.tally.failed, "ACKED_TWICE");
                }
                if in_window {
                    self.ack.record_nanos(latency.unwrap_or(0));
                    self.tally.acked_in_window += 1;
                }
            }
            "QUEUED"
                if !online_to
                    || !self.shared.live[m.room * plan.members + to].load(Ordering::Acquire) =>
            {
                // Offline by design, or a recipient whose connection failed (reported
                // with the connections): queued is right, and no delivery will come.
                m.sender.queued += 1;
                settled += i64::from(online_to);
                if in_window {
                    self.ack_queued.record_nanos(latency.unwrap_or(0));
                    self.tally.acked_in_window += 1;
                }
            }
            status => {
                let label = match status {
                    "DELIVERED" => "DELIVERED_TO_OFFLINE",
                    "QUEUED" => "QUEUED_WHILE_ONLINE",
                    other => other,
                };
                bump(&mut self.tally.failed, label);
                settled += i64::from(online_to);
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.shared.outstanding.fetch_sub(settled, Ordering::AcqRel);
        if sent.is_some() {
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
        let matched = ev
            .req_num()
            .filter(|&k| k != JOIN_REQ && m.sender.in_flight.complete(k).is_some());
        let Some(k) = matched else {
            bump(&mut self.tally.unmatched_errors, code);
            return;
        };
        if code == "RATE_LIMITED" {
            m.sender.paused_until = Some(now + self.plan.backoff);
        }
        let (to, _) = dm_target(self.plan.members, m.m, k);
        bump(&mut self.tally.failed, code);
        let owed = self.owed(to);
        self.shared.outstanding.fetch_sub(owed, Ordering::AcqRel);
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.refill(net, mi, now);
    }

    fn local_in_flight(&self) -> usize {
        self.members.iter().map(|m| m.sender.in_flight.len()).sum()
    }

    fn expire(&mut self, now: Instant) {
        let cutoff = self
            .nanos(now)
            .saturating_sub(self.plan.timeout.as_nanos() as u64);
        for m in &mut self.members {
            self.tally.timed_out += m.sender.in_flight.expire(cutoff) as u64;
        }
    }
}

impl Driver for DmDriver {
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
        // Once joined, a member only cares about `dm`, `dm_ack` and `error`
        // (`offline_dm` does not match: the quote is not before `dm`).
        if self.members[tag].phase != Phase::Joining
            && !text.contains("\"dm")
            && !text.contains("\"error\"")
        {
            return;
        }
        let Some(ev) = Event::parse(text) else {
            return;
        };
        match ev.kind() {
            "dm" => self.on_dm(tag, &ev, now),
            "dm_ack" => self.on_ack(net, tag, &ev, now),
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
                let m = &mut self.members[tag];
                m.lost = true;
                self.shared.live[m.user].store(false, Ordering::Release);
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
                if self.plan.rate.is_some() {
                    if let Some(next) = self.pace(net, now) {
                        wake = wake.min(next);
                    }
                } else {
                    for mi in 0..self.members.len() {
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

/// Checks the sizes before anything is set up.
fn check(d: &DmOptions) -> Result<(), BenchError> {
    if d.rooms == 0 {
        return Err(BenchError::Usage("--rooms must be at least 1".into()));
    }
    if d.members < 2 {
        return Err(BenchError::Usage(
            "--members must be at least 2 (a sender and a recipient)".into(),
        ));
    }
    if d.offline >= d.members {
        return Err(BenchError::Usage(format!(
            "--offline must be below --members ({}): at least one member sends",
            d.members
        )));
    }
    if d.rooms.saturating_mul(d.members).saturating_mul(d.members) > u32::MAX as usize {
        return Err(BenchError::Usage(
            "--rooms x --members x --members must fit in 32 bits".into(),
        ));
    }
    if d.window == 0 {
        return Err(BenchError::Usage("--window must be at least 1".into()));
    }
    if d.msg_size > MAX_TEXT {
        return Err(BenchError::Usage(format!(
            "--msg-size must be at most {MAX_TEXT}"
        )));
    }
    if d.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    Ok(())
}

/// Runs `dm`.
pub(crate) fn run(server: &Server, d: &DmOptions) -> Result<Report, BenchError> {
    check(d)?;
    let opts = &server.opts;
    let (rooms, members) = (d.rooms, d.members);
    let online = members - d.offline;
    let total = rooms * members;
    let connected = rooms * online;
    server.log(format!(
        "dm: {rooms} rooms x {members} members ({} offline), {}",
        d.offline,
        match d.rate {
            Some(r) => format!("open loop at {r} DMs/s"),
            None => format!("closed loop, window {}", d.window),
        }
    ));
    let (users, prov) = provision(server, total, true)?;

    let mut setup = SetupSocket::open(server, &users.tokens[0])?;
    let room_names: Vec<String> = (0..rooms)
        .map(|r| format!("{}-dm-{r}", server.prefix))
        .collect();
    let room_ids = setup.create_rooms(&room_names)?;
    setup.close();
    server.log(format!("created {rooms} rooms"));
    // The offline members join once and leave: members the DMs can be queued for.
    for (r, room_id) in room_ids.iter().enumerate() {
        for m in online..members {
            let user = r * members + m;
            let mut s = SetupSocket::open(server, &users.tokens[user])?;
            s.join(room_id, &users.names[user], 1)?;
            s.close_and_wait();
        }
    }
    if d.offline > 0 {
        server.log(format!(
            "{} offline members joined and left",
            rooms * d.offline
        ));
    }

    let dests = server.dests(1);
    let plan = Arc::new(Plan {
        rooms_json: room_ids.iter().map(|r| json_str(r)).collect(),
        room_ids,
        names_json: users.names.iter().map(|n| json_str(n)).collect(),
        names: users.names,
        tokens: users.tokens,
        members,
        online,
        total_senders: connected,
        window: d.window,
        rate: d.rate,
        msg_size: d.msg_size,
        client_id_prefix: d.client_ids.then(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_nanos());
            format!("{nanos:x}")
        }),
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
        gate: Gate::new(connected, now + opts.setup_timeout),
        live: (0..total).map(|_| AtomicBool::new(false)).collect(),
        outstanding: AtomicI64::new(0),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ready: AtomicU64::new(0),
    });
    let threads = server.threads_for(connected);
    let drivers: Vec<DmDriver> = (0..threads)
        .map(|t| DmDriver::new(plan.clone(), shared.clone(), t, threads))
        .collect();
    let deadline = server.hard_deadline(now);

    let mut rss = RssPeaks::new(opts.server_pid);
    let progress = {
        let shared = shared.clone();
        move || {
            if shared.gate.started().is_some() {
                format!(
                    "sent {} delivered {} failed {} outstanding {}",
                    shared.sent.load(Ordering::Relaxed),
                    shared.delivered.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                    shared.outstanding.load(Ordering::Relaxed)
                )
            } else {
                format!(
                    "setup: {} of {connected} connections settled, {} ready",
                    shared.gate.settled(),
                    shared.ready.load(Ordering::Relaxed)
                )
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
    let (conns, msgs, hists) = merge(&plan, rooms, drivers, start, measured, &mut report.nodes);
    report.connections = Some(conns);
    report.messages = Some(msgs);
    for (name, hist) in [
        ("delivery", hists.delivery),
        ("ack", hists.ack),
        ("ack_queued", hists.ack_queued),
    ] {
        if let Some(l) = hist.summary() {
            report.latency.insert(name.into(), l);
        }
    }
    rss.apply(&mut report);
    Ok(report)
}

struct Hists {
    delivery: LatencyHist,
    ack: LatencyHist,
    ack_queued: LatencyHist,
}

/// Combines the threads' counts and computes missing deliveries: what every sender
/// was answered `DELIVERED` for, per recipient, is what that recipient must hold,
/// when both were ready at the start. The same counts go to each recipient's node.
fn merge(
    plan: &Plan,
    rooms: usize,
    drivers: Vec<DmDriver>,
    start: Option<Instant>,
    measured: f64,
    nodes: &mut [NodeReport],
) -> (ConnectionReport, MessageReport, Hists) {
    let mut conns = ConnectionReport {
        attempted: (rooms * plan.online) as u64,
        ..Default::default()
    };
    let mut msgs = MessageReport {
        rooms: rooms as u64,
        members_per_room: plan.members as u64,
        senders: plan.online as u64,
        offline_per_room: (plan.members - plan.online) as u64,
        ..Default::default()
    };
    let mut hists = Hists {
        delivery: LatencyHist::new(),
        ack: LatencyHist::new(),
        ack_queued: LatencyHist::new(),
    };
    let (mut sent_in_window, mut acked_in_window, mut deliveries_in_window) = (0, 0, 0);
    let mut settled_at = None;
    let mut connects_from = None;
    // Each room's connected members by index; `None` when not ready at the start.
    let mut by_room: Vec<Vec<Option<Member>>> = (0..rooms)
        .map(|_| (0..plan.online).map(|_| None).collect())
        .collect();
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
        msgs.misdirected += t.misdirected;
        sent_in_window += t.sent_in_window;
        acked_in_window += t.acked_in_window;
        deliveries_in_window += t.deliveries_in_window;
        hists.delivery.merge(&d.delivery);
        hists.ack.merge(&d.ack);
        hists.ack_queued.merge(&d.ack_queued);
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
                n.messages_sent += m.sender.next;
                n.duplicates += m.duplicates;
                n.order_violations += m.order_violations;
                n.id_order_violations += m.id_order_violations;
            }
            msgs.acked += m.sender.acked.iter().map(SeqTrack::count).sum::<u64>();
            msgs.queued += m.sender.queued;
            if m.phase == Phase::Ready {
                let (room, i) = (m.room, m.m);
                by_room[room][i] = Some(m);
            }
        }
    }
    for members in &by_room {
        for sender in members.iter().flatten() {
            let sender_node = plan.node_of_member(sender.m);
            for recipient in members.iter().flatten() {
                if recipient.m == sender.m {
                    continue;
                }
                let acked = &sender.sender.acked[recipient.m];
                let got = &recipient.tracks[sender.m];
                let common = got.count_common(acked);
                msgs.deliveries_expected += acked.count();
                msgs.deliveries_received += common;
                msgs.unacked_deliveries += got.count() - common;
                if let Some(n) = nodes.get_mut(recipient.node) {
                    n.deliveries_expected += acked.count();
                    n.deliveries_received += common;
                    if recipient.node != sender_node {
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
    let open_end = settled_at.or(start);
    if let (Some(from), Some(to)) = (connects_from, open_end) {
        conns.open_secs = to.saturating_duration_since(from).as_secs_f64();
        conns.opened_per_sec = rate(conns.opened, conns.open_secs);
    }
    (conns, msgs, hists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_targets_take_the_others_in_turn() {
        // Member 1 of 4 sends to 0, 2, 3, 0, 2, 3, ...; each pair counts from 0.
        let got: Vec<(usize, u64)> = (0..7).map(|k| dm_target(4, 1, k)).collect();
        assert_eq!(
            got,
            vec![(0, 0), (2, 0), (3, 0), (0, 1), (2, 1), (3, 1), (0, 2)]
        );
        // Every member, every recipient: never itself, each pair's numbers 0, 1, 2, ...
        for members in 2..6 {
            for from in 0..members {
                let mut next = vec![0u64; members];
                for k in 0..40 {
                    let (to, seq) = dm_target(members, from, k);
                    assert_ne!(to, from);
                    assert!(to < members);
                    assert_eq!(seq, next[to], "members {members} from {from} k {k}");
                    next[to] += 1;
                }
            }
        }
    }

    #[test]
    fn sizes_are_checked() {
        let ok = DmOptions::default();
        assert!(check(&ok).is_ok());
        for bad in [
            DmOptions {
                members: 1,
                ..Default::default()
            },
            DmOptions {
                members: 3,
                offline: 3,
                ..Default::default()
            },
            DmOptions {
                rooms: 0,
                ..Default::default()
            },
            DmOptions {
                window: 0,
                ..Default::default()
            },
            DmOptions {
                msg_size: 4001,
                ..Default::default()
            },
            DmOptions {
                rate: Some(0.0),
                ..Default::default()
            },
            DmOptions {
                rooms: 1 << 20,
                members: 1 << 8,
                ..Default::default()
            },
        ] {
            assert!(matches!(check(&bad), Err(BenchError::Usage(_))), "{bad:?}");
        }
    }
}
