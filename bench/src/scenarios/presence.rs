//! `presence`: follower connections follow every target and subscribe to presence;
//! then each target connects, stays online a while, disconnects, stays offline a
//! while, again and again. Every target open should bring one `presence_change
//! online` to every follower, every close one `offline`.
//!
//! Latency of `online` counts from the start of the target's TCP connect (the server
//! cannot announce it earlier); of `offline`, from when the target sent its close.
//!
//! With several server nodes, the targets connect to node 0 and the followers are
//! spread over the other nodes, so that every event crosses nodes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::net::{Closed, ConnId, Driver, Flow, Net};
use crate::nodes::{presence_follower_node, presence_target_node, Dests};
use crate::options::PresenceOptions;
use crate::report::{ConnectionReport, Counts, PresenceReport, Report};
use crate::run::{drive, Gate, RssPeaks, Server};
use crate::scenarios::{bump, merge_counts, rate, setup_report};
use crate::stats::LatencyHist;
use crate::users::provision;

/// `req_id` of `presence_friends_subscribe`; follows use the target index.
const SUBSCRIBE_REQ: u64 = u64::MAX - 2;
/// Follows in flight per follower.
const FOLLOW_WINDOW: usize = 10;
/// See the chat scenario: a grace period before trusting "nothing outstanding".
const MIN_DRAIN: Duration = Duration::from_millis(200);

struct Plan {
    names_json: Vec<String>,
    tokens: Vec<Arc<str>>,
    targets: usize,
    target_of: HashMap<String, usize>,
    online: Duration,
    offline: Duration,
    backoff: Duration,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    base: Instant,
    dests: Arc<Dests>,
}

impl Plan {
    fn target_node(&self, t: usize) -> usize {
        presence_target_node(t, self.dests.nodes())
    }
}

struct Shared {
    gate: Gate,
    ready_followers: AtomicU64,
    online_base: Vec<AtomicU64>,
    offline_base: Vec<AtomicU64>,
    outstanding: AtomicI64,
    expected: AtomicU64,
    received: AtomicU64,
    targets_finished: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FPhase {
    Connecting,
    Following,
    Subscribing,
    Ready,
    Out,
}

struct Follower {
    user: usize,
    /// Its index among the followers.
    k: usize,
    /// The server node it connects to.
    node: usize,
    conn: Option<ConnId>,
    opened: bool,
    /// `presence_change` events received, and of them about targets on other nodes.
    events: u64,
    events_from_other_nodes: u64,
    phase: FPhase,
    to_follow: VecDeque<usize>,
    follows_in_flight: usize,
    paused_until: Option<Instant>,
    /// Last status seen per target: `Some(true)` online.
    last: Vec<Option<bool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TState {
    Idle { next_at: Option<Instant> },
    Connecting,
    Online { close_at: Instant },
    Closing,
    Finished,
}

struct Target {
    t: usize,
    conn: Option<ConnId>,
    state: TState,
}

#[derive(Default)]
struct Tally {
    opened: u64,
    setup_failed: Counts,
    lost: Counts,
    not_ready: u64,
    target_opens: u64,
    target_closes: u64,
    target_failures: Counts,
    received: u64,
    received_in_window: u64,
    repeated: u64,
}

struct PresenceDriver {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    followers: Vec<Follower>,
    targets: Vec<Target>,
    started: bool,
    times: Option<(u64, Instant, Instant)>,
    tally: Tally,
    online_hist: LatencyHist,
    offline_hist: LatencyHist,
}

/// Tags: followers even, targets odd.
fn follower_tag(i: usize) -> usize {
    2 * i
}
fn target_tag(j: usize) -> usize {
    2 * j + 1
}
fn is_follower(tag: usize) -> bool {
    tag.is_multiple_of(2)
}

impl PresenceDriver {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.plan.base).as_nanos() as u64
    }

    fn follow_more(&mut self, net: &mut Net, fi: usize, now: Instant) {
        let f = &mut self.followers[fi];
        if f.phase != FPhase::Following || f.paused_until.is_some_and(|p| now < p) {
            return;
        }
        let Some(id) = f.conn else {
            return;
        };
        while f.follows_in_flight < FOLLOW_WINDOW {
            let Some(t) = f.to_follow.pop_front() else {
                break;
            };
            net.send(
                id,
                format!(
                    r#"{{"type":"friend_follow","to":{},"req_id":{t}}}"#,
                    self.plan.names_json[t]
                ),
            );
            f.follows_in_flight += 1;
        }
        if f.to_follow.is_empty() && f.follows_in_flight == 0 {
            f.phase = FPhase::Subscribing;
            net.send(
                id,
                format!(r#"{{"type":"presence_friends_subscribe","req_id":{SUBSCRIBE_REQ}}}"#),
            );
        }
    }

    fn follower_out(&mut self, fi: usize, label: String) {
        let f = &mut self.followers[fi];
        if matches!(f.phase, FPhase::Ready | FPhase::Out) {
            return;
        }
        f.phase = FPhase::Out;
        bump(&mut self.tally.setup_failed, label);
        self.shared.gate.settle();
    }

    fn follower_text(&mut self, net: &mut Net, fi: usize, ev: &Event, now: Instant) {
        let phase = self.followers[fi].phase;
        match ev.kind() {
            "friend_follow_ack" if phase == FPhase::Following => {
                let status = Event::field(&ev.status).unwrap_or("");
                let f = &mut self.followers[fi];
                f.follows_in_flight = f.follows_in_flight.saturating_sub(1);
                if status == "FOLLOWED" || status == "ALREADY" {
                    self.follow_more(net, fi, now);
                } else {
                    self.follower_out(fi, format!("follow_{status}"));
                }
            }
            "online_friends" if phase == FPhase::Subscribing => {
                if self.shared.gate.started().is_some() {
                    self.followers[fi].phase = FPhase::Out;
                    self.tally.not_ready += 1;
                } else {
                    self.followers[fi].phase = FPhase::Ready;
                    self.shared.ready_followers.fetch_add(1, Ordering::AcqRel);
                    self.shared.gate.settle();
                }
            }
            "presence_change" if phase == FPhase::Ready => {
                let Some(&t) = Event::field(&ev.user).and_then(|u| self.plan.target_of.get(u))
                else {
                    return;
                };
                let online = match Event::field(&ev.status) {
                    Some("online") => true,
                    Some("offline") => false,
                    _ => return,
                };
                let target_node = self.plan.target_node(t);
                let f = &mut self.followers[fi];
                f.events += 1;
                if f.node != target_node {
                    f.events_from_other_nodes += 1;
                }
                if f.last[t] == Some(online) {
                    self.tally.repeated += 1;
                }
                f.last[t] = Some(online);
                self.tally.received += 1;
                self.shared.received.fetch_add(1, Ordering::Relaxed);
                self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                let base = if online {
                    &self.shared.online_base[t]
                } else {
                    &self.shared.offline_base[t]
                }
                .load(Ordering::Acquire);
                if let Some((from, to, _)) = self.times {
                    if base >= from && base < self.nanos(to) {
                        self.tally.received_in_window += 1;
                        let latency = self.nanos(now).saturating_sub(base);
                        if online {
                            self.online_hist.record_nanos(latency);
                        } else {
                            self.offline_hist.record_nanos(latency);
                        }
                    }
                }
            }
            "error" => {
                let code = ev.error_code().to_string();
                let transient = code == "RATE_LIMITED" || code == "UNAVAILABLE";
                match (phase, ev.req_num()) {
                    (FPhase::Following, Some(t)) if (t as usize) < self.plan.targets => {
                        let f = &mut self.followers[fi];
                        f.follows_in_flight = f.follows_in_flight.saturating_sub(1);
                        if transient {
                            f.to_follow.push_back(t as usize);
                            f.paused_until = Some(now + self.plan.backoff);
                        } else {
                            self.follower_out(fi, format!("follow_{code}"));
                        }
                    }
                    (FPhase::Subscribing, Some(SUBSCRIBE_REQ)) => {
                        if transient {
                            // Subscribe again after the pause.
                            let f = &mut self.followers[fi];
                            f.phase = FPhase::Following;
                            f.paused_until = Some(now + self.plan.backoff);
                        } else {
                            self.follower_out(fi, format!("subscribe_{code}"));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Records that a target went (or is going) offline: every ready follower should
    /// hear about it.
    fn target_went_offline(&mut self, ti: usize, now: Instant) {
        let t = self.targets[ti].t;
        self.shared.offline_base[t].store(self.nanos(now), Ordering::Release);
        self.expect_event();
        self.tally.target_closes += 1;
    }

    fn expect_event(&self) {
        let n = self.shared.ready_followers.load(Ordering::Acquire);
        self.shared.expected.fetch_add(n, Ordering::AcqRel);
        self.shared
            .outstanding
            .fetch_add(n as i64, Ordering::AcqRel);
    }

    fn finish_target(&mut self, ti: usize) {
        if self.targets[ti].state != TState::Finished {
            self.targets[ti].state = TState::Finished;
            self.shared.targets_finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn tick_targets(&mut self, net: &mut Net, now: Instant, send_until: Instant) -> Instant {
        let mut wake = now + Duration::from_millis(20);
        for ti in 0..self.targets.len() {
            match self.targets[ti].state {
                TState::Idle { next_at } => {
                    if now >= send_until {
                        self.finish_target(ti);
                    } else if next_at.is_none_or(|at| now >= at) {
                        let t = self.targets[ti].t;
                        self.shared.online_base[t].store(self.nanos(now), Ordering::Release);
                        let dest = self.plan.dests.pick(self.plan.target_node(t), t);
                        let id = net.connect(dest, self.plan.tokens[t].clone(), target_tag(ti));
                        self.targets[ti].conn = Some(id);
                        self.targets[ti].state = TState::Connecting;
                    } else if let Some(at) = next_at {
                        wake = wake.min(at);
                    }
                }
                TState::Online { close_at } => {
                    if now >= close_at || now >= send_until {
                        self.target_went_offline(ti, now);
                        self.targets[ti].state = TState::Closing;
                        if let Some(id) = self.targets[ti].conn {
                            net.close(id);
                        }
                    } else {
                        wake = wake.min(close_at);
                    }
                }
                TState::Connecting | TState::Closing | TState::Finished => {}
            }
        }
        wake
    }
}

impl Driver for PresenceDriver {
    fn on_open(&mut self, net: &mut Net, _id: ConnId, tag: usize, _took: Duration, now: Instant) {
        self.tally.opened += 1;
        if is_follower(tag) {
            let fi = tag / 2;
            self.followers[fi].opened = true;
            if self.followers[fi].phase == FPhase::Connecting {
                self.followers[fi].phase = FPhase::Following;
                self.follow_more(net, fi, now);
            }
        } else {
            let ti = tag / 2;
            if self.targets[ti].state == TState::Connecting {
                self.tally.target_opens += 1;
                self.expect_event();
                self.targets[ti].state = TState::Online {
                    close_at: now + self.plan.online,
                };
            }
        }
    }

    fn on_text(&mut self, net: &mut Net, _id: ConnId, tag: usize, text: &str, now: Instant) {
        if !is_follower(tag) {
            return;
        }
        if let Some(ev) = Event::parse(text) {
            self.follower_text(net, tag / 2, &ev, now);
        }
    }

    fn on_closed(&mut self, _net: &mut Net, _id: ConnId, tag: usize, how: Closed, now: Instant) {
        if is_follower(tag) {
            let fi = tag / 2;
            self.followers[fi].conn = None;
            let label = match how {
                Closed::Failed(f) | Closed::Lost(f) => f.label(),
                Closed::ByUs => return,
            };
            if self.followers[fi].phase == FPhase::Ready {
                bump(&mut self.tally.lost, label);
            } else {
                self.follower_out(fi, label);
            }
            return;
        }
        let ti = tag / 2;
        self.targets[ti].conn = None;
        let next_at = Some(now + self.plan.offline);
        match (self.targets[ti].state, how) {
            (TState::Connecting, Closed::Failed(f) | Closed::Lost(f)) => {
                bump(&mut self.tally.target_failures, f.label());
                self.targets[ti].state = TState::Idle { next_at };
            }
            (TState::Online { .. }, _) => {
                // Dropped by the server: that is an offline too.
                self.target_went_offline(ti, now);
                self.targets[ti].state = TState::Idle { next_at };
            }
            (TState::Closing, _) => self.targets[ti].state = TState::Idle { next_at },
            _ => {}
        }
    }

    fn on_tick(&mut self, net: &mut Net, now: Instant) -> Flow {
        if !self.started {
            self.started = true;
            // Followers share the nodes other than the targets' one.
            let per_node = self.plan.dests.nodes().saturating_sub(1).max(1);
            for fi in 0..self.followers.len() {
                let f = &self.followers[fi];
                let dest = self.plan.dests.pick(f.node, f.k / per_node);
                let id = net.connect(dest, self.plan.tokens[f.user].clone(), follower_tag(fi));
                self.followers[fi].conn = Some(id);
            }
        }
        let Some((_, _, drain_until)) = self.times else {
            for fi in 0..self.followers.len() {
                self.follow_more(net, fi, now);
            }
            let Some(start) = self.shared.gate.poll(now) else {
                return Flow::Wake(now + Duration::from_millis(5));
            };
            let measure_from = start + self.plan.warmup;
            let send_until = measure_from + self.plan.duration;
            self.times = Some((
                self.nanos(measure_from),
                send_until,
                send_until + self.plan.drain,
            ));
            for f in self.followers.iter_mut() {
                if !matches!(f.phase, FPhase::Ready | FPhase::Out) {
                    f.phase = FPhase::Out;
                    self.tally.not_ready += 1;
                    if let Some(id) = f.conn {
                        net.close(id);
                    }
                }
            }
            // Stagger the targets over one cycle so their events do not all coincide.
            let cycle = self.plan.online + self.plan.offline;
            for tgt in self.targets.iter_mut() {
                let offset = cycle.mul_f64(tgt.t as f64 / self.plan.targets as f64);
                tgt.state = TState::Idle {
                    next_at: Some(start + offset),
                };
            }
            return Flow::Wake(now);
        };
        let send_until = self.times.expect("set").1;
        let wake = self.tick_targets(net, now, send_until);
        if now < send_until {
            return Flow::Wake(wake.min(send_until));
        }
        let all_finished =
            self.shared.targets_finished.load(Ordering::Acquire) >= self.plan.targets;
        let nothing_left = self.shared.outstanding.load(Ordering::Acquire) <= 0;
        if (all_finished && nothing_left && now >= send_until + MIN_DRAIN) || now >= drain_until {
            Flow::Done
        } else {
            Flow::Wake(now + Duration::from_millis(10))
        }
    }
}

pub(crate) fn run(server: &Server, po: &PresenceOptions) -> Result<Report, BenchError> {
    let opts = &server.opts;
    if po.targets == 0 || po.followers == 0 {
        return Err(BenchError::Usage(
            "--targets and --followers must be at least 1".into(),
        ));
    }
    server.log(format!(
        "presence: {} targets, {} followers each following every target",
        po.targets, po.followers
    ));
    let (users, prov) = provision(server, po.targets + po.followers, true)?;
    let dests = server.dests(1);
    let plan = Arc::new(Plan {
        names_json: users.names.iter().map(|n| json_str(n)).collect(),
        target_of: users.names[..po.targets]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect(),
        tokens: users.tokens,
        targets: po.targets,
        online: po.online,
        offline: po.offline,
        backoff: opts.backoff,
        warmup: opts.warmup,
        duration: opts.duration,
        drain: opts.drain,
        base: server.base,
        dests: dests.clone(),
    });
    let now = Instant::now();
    let shared = Arc::new(Shared {
        gate: Gate::new(po.followers, now + opts.setup_timeout),
        ready_followers: AtomicU64::new(0),
        online_base: (0..po.targets).map(|_| AtomicU64::new(0)).collect(),
        offline_base: (0..po.targets).map(|_| AtomicU64::new(0)).collect(),
        outstanding: AtomicI64::new(0),
        expected: AtomicU64::new(0),
        received: AtomicU64::new(0),
        targets_finished: AtomicUsize::new(0),
    });
    let threads = server.threads_for(po.followers + po.targets);
    let drivers: Vec<PresenceDriver> = (0..threads)
        .map(|th| PresenceDriver {
            plan: plan.clone(),
            shared: shared.clone(),
            followers: (th..po.followers)
                .step_by(threads)
                .map(|k| Follower {
                    user: po.targets + k,
                    k,
                    node: presence_follower_node(k, server.nodes.len()),
                    conn: None,
                    opened: false,
                    events: 0,
                    events_from_other_nodes: 0,
                    phase: FPhase::Connecting,
                    to_follow: (0..po.targets).collect(),
                    follows_in_flight: 0,
                    paused_until: None,
                    last: vec![None; po.targets],
                })
                .collect(),
            targets: (th..po.targets)
                .step_by(threads)
                .map(|t| Target {
                    t,
                    conn: None,
                    state: TState::Idle { next_at: None },
                })
                .collect(),
            started: false,
            times: None,
            tally: Tally::default(),
            online_hist: LatencyHist::new(),
            offline_hist: LatencyHist::new(),
        })
        .collect();
    let deadline = server.hard_deadline(now);
    let mut rss = RssPeaks::new(opts.server_pid);
    let progress = {
        let shared = shared.clone();
        let followers = po.followers;
        move || {
            if shared.gate.started().is_some() {
                format!(
                    "presence events expected {} received {}",
                    shared.expected.load(Ordering::Relaxed),
                    shared.received.load(Ordering::Relaxed)
                )
            } else {
                format!(
                    "setup: {} of {followers} followers settled, {} ready",
                    shared.gate.settled(),
                    shared.ready_followers.load(Ordering::Relaxed)
                )
            }
        }
    };
    let drivers = drive(server, drivers, dests, deadline, progress, &mut rss)?;

    let measured = opts.duration.as_secs_f64();
    let mut conns = ConnectionReport {
        attempted: po.followers as u64,
        ..Default::default()
    };
    let mut p = PresenceReport {
        targets: po.targets as u64,
        followers: shared.ready_followers.load(Ordering::Relaxed),
        expected: shared.expected.load(Ordering::Relaxed),
        ..Default::default()
    };
    let mut online = LatencyHist::new();
    let mut offline = LatencyHist::new();
    let mut in_window = 0;
    let mut nodes = server.node_reports();
    for t in 0..po.targets {
        nodes[plan.target_node(t)].presence_targets += 1;
    }
    for d in &drivers {
        for f in &d.followers {
            let n = &mut nodes[f.node];
            n.connections += 1;
            n.opened += u64::from(f.opened);
            n.presence_events += f.events;
            n.presence_events_from_other_nodes += f.events_from_other_nodes;
        }
        let t = &d.tally;
        conns.opened += t.opened;
        conns.not_ready += t.not_ready;
        merge_counts(&mut conns.failed, &t.setup_failed);
        merge_counts(&mut conns.lost, &t.lost);
        p.target_opens += t.target_opens;
        p.target_closes += t.target_closes;
        merge_counts(&mut p.target_failures, &t.target_failures);
        p.received += t.received;
        p.repeated_status += t.repeated;
        in_window += t.received_in_window;
        online.merge(&d.online_hist);
        offline.merge(&d.offline_hist);
    }
    // Target connections are counted under the presence section, not here.
    conns.opened = conns.opened.saturating_sub(p.target_opens);
    p.missing = p.expected.saturating_sub(p.received);
    p.unexpected = p.received.saturating_sub(p.expected);
    p.events_per_sec = rate(in_window, measured);
    let mut report = Report {
        measured_secs: measured,
        setup: setup_report(
            server,
            po.targets + po.followers,
            &prov,
            shared.gate.started(),
        ),
        connections: Some(conns),
        presence: Some(p),
        nodes,
        ..Default::default()
    };
    if let Some(l) = online.summary() {
        report.latency.insert("presence_online".into(), l);
    }
    if let Some(l) = offline.summary() {
        report.latency.insert("presence_offline".into(), l);
    }
    rss.apply(&mut report);
    Ok(report)
}
