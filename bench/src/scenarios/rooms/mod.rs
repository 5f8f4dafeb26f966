//! What `chat`, `fanout` and `dm` share: rooms of member connections that connect,
//! join, wait at the start gate, send in a closed or an open loop, check every
//! delivery they get, and drain. [`RoomDriver`] runs that on a client thread; a
//! scenario says through [`Traffic`] what it sends, what it owes for each send and
//! what it does with the events only it knows. [`setup`] creates the rooms, the
//! plan and the counters the threads share; [`merge`] turns the threads' counts
//! into the report.
//!
//! Member `m` of room `r` is user `r * members + m`. Connections are spread over
//! threads round-robin, and over the server's nodes by member index (member `m` of
//! every room on node `m mod N`), so every room of at least N members spans every
//! node.

pub(crate) mod merge;
pub(crate) mod setup;

pub(crate) use setup::{Counters, RoomPlan};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::Event;
use crate::net::{Closed, ConnId, Driver, Flow, Net};
use crate::report::Counts;
use crate::run::{drive, RssPeaks, Server};
use crate::scenarios::bump;
use crate::stats::{IdOrder, InFlight, LatencyHist, MsgStamp, Seen, SeqTrack};

/// `req_id` of a member's `join` (message `req_id`s are per-sender counters, far
/// below).
pub(crate) const JOIN_REQ: u64 = u64::MAX - 1;
/// Open loop: a sender with this many messages in flight skips its turn instead of
/// piling up more.
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 10_000;
/// Shortest drain, even when nothing seems outstanding.
const MIN_DRAIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting,
    Joining,
    Ready,
    /// Failed or not ready before the run started: left out of every count.
    Out,
}

/// A member that sends.
pub(crate) struct Sender {
    /// The next message's number (its `req_id`): how many it has sent.
    pub next: u64,
    pub in_flight: InFlight,
    /// After a `RATE_LIMITED`: no sending before this.
    pub paused_until: Option<Instant>,
}

/// One member connection and what it checked of what it received.
pub(crate) struct Member<X> {
    pub room: usize,
    /// Index in its room.
    pub m: usize,
    pub user: usize,
    /// The server node it connects to.
    pub node: usize,
    pub conn: Option<ConnId>,
    pub opened: bool,
    pub phase: Phase,
    join_retry: Option<Instant>,
    pub lost: bool,
    /// By stream (the scenario says which): the sequence numbers received.
    pub tracks: Vec<SeqTrack>,
    /// By stream: the server ids received, which must only grow.
    pub ids: Vec<IdOrder>,
    pub duplicates: u64,
    pub order_violations: u64,
    pub id_order_violations: u64,
    pub sender: Option<Sender>,
    /// What only its scenario keeps.
    pub own: X,
}

impl<X> Member<X> {
    /// Member `user % members` of room `user / members`, checking `tracks` sequence
    /// streams and `ids` server id streams.
    pub fn new(
        plan: &RoomPlan,
        user: usize,
        tracks: usize,
        ids: usize,
        sends: bool,
        own: X,
    ) -> Self {
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
            tracks: (0..tracks).map(|_| SeqTrack::new()).collect(),
            ids: vec![IdOrder::default(); ids],
            duplicates: 0,
            order_violations: 0,
            id_order_violations: 0,
            sender: sends.then(|| Sender {
                next: 0,
                in_flight: InFlight::new(),
                paused_until: None,
            }),
            own,
        }
    }
}

/// What a thread counted; merged into the report's connections and messages.
#[derive(Default)]
pub(crate) struct Tally {
    pub sent: u64,
    pub sent_in_window: u64,
    pub acked_in_window: u64,
    pub deliveries_in_window: u64,
    pub failed: Counts,
    pub unmatched_errors: Counts,
    pub timed_out: u64,
    pub skipped: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub id_order_violations: u64,
    pub foreign: u64,
    /// `dm`: DMs of this room that reached a member they were not sent to.
    pub misdirected: u64,
    /// `dm`: DMs answered `QUEUED` for a recipient that is not connected.
    pub queued: u64,
    /// `chat`: `typing` requests sent and `typing` events received.
    pub typing_sent: u64,
    pub typing_received: u64,
    pub setup_failed: Counts,
    pub lost: Counts,
    pub opened: u64,
    pub not_ready: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Setup,
    Run,
    Drain,
}

pub(crate) struct Times {
    pub start: Instant,
    pub measure_from_nanos: u64,
    pub measure_to_nanos: u64,
    pub send_until: Instant,
    pub drain_until: Instant,
}

impl Times {
    /// Whether something sent at `sent_nanos` counts in the measured window.
    pub fn in_window(&self, sent_nanos: u64) -> bool {
        sent_nanos >= self.measure_from_nanos && sent_nanos < self.measure_to_nanos
    }
}

/// What a room scenario adds to [`RoomDriver`]. Its hooks take the whole driver, so
/// they can use the members and counts it keeps as well as their own (`traffic`).
pub(crate) trait Traffic: Sized {
    /// What a member keeps for this scenario alone.
    type Own;

    /// Looks at a frame before it is parsed: `None` drops it now, else whether it is
    /// one of the kinds a joined member wants (errors always are).
    fn screen(d: &mut RoomDriver<Self>, text: &str) -> Option<bool>;

    /// The frame of the `k`-th message of sender member `mi`, sent `t` nanoseconds
    /// into the run; `None` when it cannot be sent.
    fn frame(d: &RoomDriver<Self>, mi: usize, k: u64, t: u64) -> Option<String>;

    /// What the `k`-th message of sender member `mi` owes (replies and deliveries
    /// still to come) once sent, and gives back when it fails.
    fn owed(d: &RoomDriver<Self>, mi: usize, k: u64) -> i64;

    /// An event of a kind the driver does not handle itself (it handles `system`,
    /// `join_ack` and `error`).
    fn on_event(d: &mut RoomDriver<Self>, net: &mut Net, mi: usize, ev: &Event, now: Instant);

    /// Member `mi` got ready in time.
    fn on_ready(_d: &mut RoomDriver<Self>, _mi: usize) {}

    /// Member `mi`, ready, lost its connection.
    fn on_lost(_d: &mut RoomDriver<Self>, _mi: usize) {}

    /// Called on every tick of the measured run before the senders' turn; returns
    /// when it wants to be called again.
    fn on_run(_d: &mut RoomDriver<Self>, _net: &mut Net, _now: Instant) -> Option<Instant> {
        None
    }
}

/// One client thread's share of a room scenario's members.
pub(crate) struct RoomDriver<S: Traffic> {
    pub plan: Arc<RoomPlan>,
    pub shared: Arc<Counters>,
    pub members: Vec<Member<S::Own>>,
    /// Indexes of the members that send.
    senders: Vec<usize>,
    stage: Stage,
    pub times: Option<Times>,
    pub tally: Tally,
    pub delivery: LatencyHist,
    pub ack: LatencyHist,
    paced: u64,
    rr: usize,
    connects_started_at: Option<Instant>,
    all_settled_at: Option<Instant>,
    pub traffic: S,
}

impl<S: Traffic> RoomDriver<S> {
    pub fn new(
        plan: Arc<RoomPlan>,
        shared: Arc<Counters>,
        members: Vec<Member<S::Own>>,
        traffic: S,
    ) -> RoomDriver<S> {
        let senders = (0..members.len())
            .filter(|&mi| members[mi].sender.is_some())
            .collect();
        RoomDriver {
            plan,
            shared,
            members,
            senders,
            stage: Stage::Start,
            times: None,
            tally: Tally::default(),
            delivery: LatencyHist::new(),
            ack: LatencyHist::new(),
            paced: 0,
            rr: 0,
            connects_started_at: None,
            all_settled_at: None,
            traffic,
        }
    }

    /// Nanoseconds since the run's base instant.
    pub fn nanos(&self, t: Instant) -> u64 {
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
        S::on_ready(self, mi);
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
        let m = &self.members[mi];
        let (Some(conn), Some(s)) = (m.conn, m.sender.as_ref()) else {
            return false;
        };
        if m.phase != Phase::Ready || m.lost {
            return false;
        }
        let k = s.next;
        let Some(frame) = S::frame(self, mi, k, t) else {
            return false;
        };
        if !net.send(conn, frame) {
            return false;
        }
        let s = self.members[mi].sender.as_mut().expect("a sender");
        s.next += 1;
        s.in_flight.push(k, t);
        self.tally.sent += 1;
        if self.times.as_ref().is_some_and(|w| w.in_window(t)) {
            self.tally.sent_in_window += 1;
        }
        let owed = S::owed(self, mi, k);
        self.shared.outstanding.fetch_add(owed, Ordering::AcqRel);
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Closed loop: tops up the sender's window.
    pub fn refill(&mut self, net: &mut Net, mi: usize, now: Instant) {
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

    /// Open loop: sends whatever the schedule says is due by now, over this
    /// thread's senders in turn.
    fn pace(&mut self, net: &mut Net, now: Instant) -> Option<Instant> {
        let rate = self.plan.rate?;
        let times = self.times.as_ref()?;
        if self.senders.is_empty() || now >= times.send_until {
            return None;
        }
        let local_rate = rate * self.senders.len() as f64 / self.plan.total_senders as f64;
        let start = times.start;
        let due = (now.duration_since(start).as_secs_f64() * local_rate) as u64;
        let mut budget = 5_000;
        while self.paced < due && budget > 0 {
            budget -= 1;
            self.paced += 1;
            let mut sent = false;
            for _ in 0..self.senders.len() {
                let mi = self.senders[self.rr % self.senders.len()];
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
        for i in 0..self.senders.len() {
            let mi = self.senders[i];
            self.refill(net, mi, start);
        }
    }

    /// Checks what member `mi` received: `stamp`, counted in sequence stream `track`
    /// and server id stream `ids`. Returns `None` for a duplicate, else its latency
    /// and whether it was sent in the measured window (then it is recorded as a
    /// delivery).
    pub fn check_delivery(
        &mut self,
        mi: usize,
        track: usize,
        ids: usize,
        stamp: &MsgStamp,
        ev: &Event,
        now: Instant,
    ) -> Option<(u64, bool)> {
        let m = &mut self.members[mi];
        match m.tracks[track].record(stamp.seq) {
            Seen::Duplicate => {
                self.tally.duplicates += 1;
                m.duplicates += 1;
                return None;
            }
            Seen::OutOfOrder => {
                self.tally.order_violations += 1;
                m.order_violations += 1;
            }
            Seen::New => {}
        }
        if let Some(id) = ev.id_num() {
            if !m.ids[ids].record(id) {
                self.tally.id_order_violations += 1;
                m.id_order_violations += 1;
            }
        }
        if m.phase == Phase::Ready {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
        let latency = self.nanos(now).saturating_sub(stamp.sent_nanos);
        let in_window = self
            .times
            .as_ref()
            .is_some_and(|t| t.in_window(stamp.sent_nanos));
        if in_window {
            self.delivery.record_nanos(latency);
            self.tally.deliveries_in_window += 1;
        }
        Some((latency, in_window))
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
        let matched = match (m.sender.as_mut(), ev.req_num()) {
            (Some(s), Some(k)) if k != JOIN_REQ => {
                let hit = s.in_flight.complete(k).is_some();
                if hit && code == "RATE_LIMITED" {
                    s.paused_until = Some(now + self.plan.backoff);
                }
                hit.then_some(k)
            }
            _ => None,
        };
        let Some(k) = matched else {
            bump(&mut self.tally.unmatched_errors, code);
            return;
        };
        bump(&mut self.tally.failed, code);
        let owed = S::owed(self, mi, k);
        self.shared.outstanding.fetch_sub(owed, Ordering::AcqRel);
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.refill(net, mi, now);
    }

    fn local_in_flight(&self) -> usize {
        self.members
            .iter()
            .filter_map(|m| m.sender.as_ref())
            .map(|s| s.in_flight.len())
            .sum()
    }

    fn expire(&mut self, now: Instant) {
        let cutoff = self
            .nanos(now)
            .saturating_sub(self.plan.timeout.as_nanos() as u64);
        for m in &mut self.members {
            if let Some(s) = m.sender.as_mut() {
                self.tally.timed_out += s.in_flight.expire(cutoff) as u64;
            }
        }
    }
}

impl<S: Traffic> Driver for RoomDriver<S> {
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
        let Some(wanted) = S::screen(self, text) else {
            return;
        };
        // In a big room most frames during setup are other members' `joined`
        // events; once joined, a member only cares about its scenario's events and
        // errors.
        if self.members[tag].phase != Phase::Joining && !wanted && !text.contains("\"error\"") {
            return;
        }
        let Some(ev) = Event::parse(text) else {
            return;
        };
        match ev.kind() {
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
            _ => S::on_event(self, net, tag, &ev, now),
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
                S::on_lost(self, tag);
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
                if let Some(next) = S::on_run(self, net, now) {
                    wake = wake.min(next);
                }
                if self.plan.rate.is_some() {
                    if let Some(next) = self.pace(net, now) {
                        wake = wake.min(next);
                    }
                } else {
                    for i in 0..self.senders.len() {
                        let mi = self.senders[i];
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

/// Runs the drivers, one a thread, until they are done or the run's hard deadline
/// (counted from `now`) passes, printing `progress()` once a second; returns them
/// and the peak memory seen meanwhile.
pub(crate) fn run_drivers<S: Traffic>(
    server: &Server,
    plan: &RoomPlan,
    drivers: Vec<RoomDriver<S>>,
    now: Instant,
    progress: impl Fn() -> String,
) -> Result<(Vec<RoomDriver<S>>, RssPeaks), BenchError>
where
    RoomDriver<S>: Send + 'static,
{
    let mut rss = RssPeaks::new(server.opts.server_pid);
    let deadline = server.hard_deadline(now);
    let dests = plan.dests.clone();
    let drivers = drive(server, drivers, dests, deadline, progress, &mut rss)?;
    Ok((drivers, rss))
}
