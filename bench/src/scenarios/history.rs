//! `history`: clients in one room, preloaded with messages (sent by the clients
//! themselves, each its share, within a window), then closed-loop `history`
//! requests: requests per second and reply latency. Client `k` connects to node
//! `k mod N` of the server's nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::net::{Closed, ConnId, Driver, Flow, Net};
use crate::nodes::{round_robin, Dests};
use crate::options::HistoryOptions;
use crate::report::{ConnectionReport, Counts, Report, RequestReport};
use crate::run::{drive, Gate, RssPeaks, Server, SetupSocket};
use crate::scenarios::{bump, merge_counts, rate, setup_report};
use crate::stats::{InFlight, LatencyHist};
use crate::users::provision;

const JOIN_REQ: u64 = u64::MAX - 1;
/// Preload `msg` requests carry `req_id`s from here up; history requests count from 0.
const PRELOAD_REQ: u64 = 1 << 62;
/// Preload messages in flight per client.
const PRELOAD_WINDOW: usize = 8;

struct Plan {
    room_json: String,
    room_id: String,
    names: Vec<String>,
    tokens: Vec<Arc<str>>,
    limit: usize,
    window: usize,
    timeout: Duration,
    backoff: Duration,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    base: Instant,
    dests: Arc<Dests>,
}

struct Shared {
    gate: Gate,
    preloaded: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Joining,
    Preloading,
    Ready,
    Out,
}

struct Client {
    user: usize,
    /// The server node it connects to.
    node: usize,
    conn: Option<ConnId>,
    opened: bool,
    /// Successful `history` replies.
    ok: u64,
    phase: Phase,
    retry_at: Option<Instant>,
    preload_left: usize,
    preload_in_flight: usize,
    preload_next: u64,
    next_req: u64,
    in_flight: InFlight,
    paused_until: Option<Instant>,
}

#[derive(Default)]
struct Tally {
    opened: u64,
    setup_failed: Counts,
    lost: Counts,
    not_ready: u64,
    preload_failed: Counts,
    sent: u64,
    ok: u64,
    ok_in_window: u64,
    items: u64,
    failed: Counts,
    timed_out: u64,
}

struct HistoryDriver {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    started: bool,
    window: Option<(u64, u64, Instant, Instant)>,
    tally: Tally,
    hist: LatencyHist,
}

impl HistoryDriver {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.plan.base).as_nanos() as u64
    }

    fn send_join(&self, net: &mut Net, ci: usize) {
        if let Some(id) = self.clients[ci].conn {
            net.send(
                id,
                format!(
                    r#"{{"type":"join","room_id":{},"req_id":{JOIN_REQ}}}"#,
                    self.plan.room_json
                ),
            );
        }
    }

    fn settle(&mut self, ci: usize, phase: Phase) {
        let c = &mut self.clients[ci];
        if matches!(c.phase, Phase::Ready | Phase::Out) {
            return;
        }
        if phase == Phase::Ready && self.shared.gate.started().is_some() {
            c.phase = Phase::Out;
            self.tally.not_ready += 1;
            return;
        }
        c.phase = phase;
        self.shared.gate.settle();
    }

    fn preload(&mut self, net: &mut Net, ci: usize, now: Instant) {
        let c = &mut self.clients[ci];
        if c.phase != Phase::Preloading || c.paused_until.is_some_and(|p| now < p) {
            return;
        }
        let Some(id) = c.conn else {
            return;
        };
        while c.preload_left > 0 && c.preload_in_flight < PRELOAD_WINDOW {
            let req = PRELOAD_REQ + c.preload_next;
            let frame = format!(
                r#"{{"type":"msg","room_id":{},"text":"p:{}:{}","req_id":{req}}}"#,
                self.plan.room_json, c.user, c.preload_next
            );
            if !net.send(id, frame) {
                return;
            }
            c.preload_next += 1;
            c.preload_left -= 1;
            c.preload_in_flight += 1;
        }
        if c.preload_left == 0 && c.preload_in_flight == 0 {
            self.settle(ci, Phase::Ready);
        }
    }

    fn request(&mut self, net: &mut Net, ci: usize, now: Instant) {
        let Some((_, _, send_until, _)) = self.window else {
            return;
        };
        if now >= send_until {
            return;
        }
        let t = self.nanos(now);
        let c = &mut self.clients[ci];
        if c.phase != Phase::Ready {
            return;
        }
        let Some(id) = c.conn else {
            return;
        };
        if let Some(p) = c.paused_until {
            if now < p {
                return;
            }
            c.paused_until = None;
        }
        while c.in_flight.len() < self.plan.window {
            let req = c.next_req;
            let frame = format!(
                r#"{{"type":"history","room_id":{},"limit":{},"req_id":{req}}}"#,
                self.plan.room_json, self.plan.limit
            );
            if !net.send(id, frame) {
                return;
            }
            c.next_req += 1;
            c.in_flight.push(req, t);
            self.tally.sent += 1;
        }
    }

    fn in_window(&self, sent: u64) -> bool {
        self.window
            .is_some_and(|(from, to, _, _)| sent >= from && sent < to)
    }
}

impl Driver for HistoryDriver {
    fn on_open(&mut self, net: &mut Net, _id: ConnId, tag: usize, _took: Duration, _now: Instant) {
        self.tally.opened += 1;
        self.clients[tag].opened = true;
        if self.clients[tag].phase == Phase::Connecting {
            self.clients[tag].phase = Phase::Joining;
            self.send_join(net, tag);
        }
    }

    fn on_text(&mut self, net: &mut Net, _id: ConnId, tag: usize, text: &str, now: Instant) {
        let Some(ev) = Event::parse(text) else {
            return;
        };
        let phase = self.clients[tag].phase;
        match ev.kind() {
            "system" | "join_ack" if phase == Phase::Joining => {
                let me = self.plan.names[self.clients[tag].user].as_str();
                let joined = ev.kind() == "join_ack"
                    || (Event::field(&ev.event) == Some("joined")
                        && Event::field(&ev.user) == Some(me)
                        && Event::field(&ev.room) == Some(self.plan.room_id.as_str()));
                if joined {
                    self.clients[tag].phase = Phase::Preloading;
                    self.preload(net, tag, now);
                }
            }
            "message" if phase == Phase::Preloading => {
                let me = self.plan.names[self.clients[tag].user].as_str();
                if Event::field(&ev.from) == Some(me)
                    && Event::field(&ev.text).is_some_and(|t| t.starts_with("p:"))
                {
                    let c = &mut self.clients[tag];
                    c.preload_in_flight = c.preload_in_flight.saturating_sub(1);
                    self.shared.preloaded.fetch_add(1, Ordering::Relaxed);
                    self.preload(net, tag, now);
                }
            }
            "history" => {
                let Some(req) = ev.req_num() else {
                    return;
                };
                if let Some(sent) = self.clients[tag].in_flight.complete(req) {
                    self.tally.ok += 1;
                    self.clients[tag].ok += 1;
                    self.shared.ok.fetch_add(1, Ordering::Relaxed);
                    self.tally.items += ev.items.as_ref().map_or(0, |i| i.len() as u64);
                    if self.in_window(sent) {
                        self.tally.ok_in_window += 1;
                        self.hist.record_nanos(self.nanos(now).saturating_sub(sent));
                    }
                    self.request(net, tag, now);
                }
            }
            "error" => {
                let code = ev.error_code().to_string();
                let transient = code == "RATE_LIMITED" || code == "UNAVAILABLE";
                match ev.req_num() {
                    Some(JOIN_REQ) if phase == Phase::Joining => {
                        if transient {
                            self.clients[tag].retry_at = Some(now + self.plan.backoff);
                        } else {
                            bump(&mut self.tally.setup_failed, format!("join_{code}"));
                            self.settle(tag, Phase::Out);
                        }
                    }
                    Some(r) if r >= PRELOAD_REQ && phase == Phase::Preloading => {
                        let c = &mut self.clients[tag];
                        c.preload_in_flight = c.preload_in_flight.saturating_sub(1);
                        if transient {
                            c.preload_left += 1;
                            c.paused_until = Some(now + self.plan.backoff);
                        } else {
                            bump(&mut self.tally.preload_failed, code);
                        }
                        self.preload(net, tag, now);
                    }
                    Some(r)
                        if r < PRELOAD_REQ && self.clients[tag].in_flight.complete(r).is_some() =>
                    {
                        bump(&mut self.tally.failed, code.clone());
                        self.shared.failed.fetch_add(1, Ordering::Relaxed);
                        if code == "RATE_LIMITED" {
                            self.clients[tag].paused_until = Some(now + self.plan.backoff);
                        }
                        self.request(net, tag, now);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn on_closed(&mut self, _net: &mut Net, _id: ConnId, tag: usize, how: Closed, _now: Instant) {
        let phase = self.clients[tag].phase;
        self.clients[tag].conn = None;
        let label = match &how {
            Closed::Failed(f) | Closed::Lost(f) => f.label(),
            Closed::ByUs => return,
        };
        match phase {
            Phase::Ready => bump(&mut self.tally.lost, label),
            Phase::Out => {}
            _ => {
                bump(&mut self.tally.setup_failed, label);
                self.settle(tag, Phase::Out);
            }
        }
    }

    fn on_tick(&mut self, net: &mut Net, now: Instant) -> Flow {
        if !self.started {
            self.started = true;
            let nodes = self.plan.dests.nodes();
            for ci in 0..self.clients.len() {
                let (user, node) = (self.clients[ci].user, self.clients[ci].node);
                let dest = self.plan.dests.pick(node, user / nodes);
                let id = net.connect(dest, self.plan.tokens[user].clone(), ci);
                self.clients[ci].conn = Some(id);
            }
        }
        if self.window.is_none() {
            for ci in 0..self.clients.len() {
                let c = &mut self.clients[ci];
                if c.phase == Phase::Joining && c.retry_at.is_some_and(|t| now >= t) {
                    c.retry_at = None;
                    self.send_join(net, ci);
                }
                self.preload(net, ci, now);
            }
            let Some(start) = self.shared.gate.poll(now) else {
                return Flow::Wake(now + Duration::from_millis(5));
            };
            let measure_from = start + self.plan.warmup;
            let send_until = measure_from + self.plan.duration;
            self.window = Some((
                self.nanos(measure_from),
                self.nanos(send_until),
                send_until,
                send_until + self.plan.drain.min(self.plan.timeout),
            ));
            for c in self.clients.iter_mut() {
                if !matches!(c.phase, Phase::Ready | Phase::Out) {
                    c.phase = Phase::Out;
                    self.tally.not_ready += 1;
                    if let Some(id) = c.conn {
                        net.close(id);
                    }
                }
            }
        }
        let (_, _, send_until, drain_until) = self.window.expect("set above");
        let cutoff = self
            .nanos(now)
            .saturating_sub(self.plan.timeout.as_nanos() as u64);
        let mut in_flight = 0;
        for c in self.clients.iter_mut() {
            self.tally.timed_out += c.in_flight.expire(cutoff) as u64;
            in_flight += c.in_flight.len();
        }
        if now < send_until {
            for ci in 0..self.clients.len() {
                self.request(net, ci, now);
            }
            Flow::Wake((now + Duration::from_millis(20)).min(send_until))
        } else if in_flight == 0 || now >= drain_until {
            Flow::Done
        } else {
            Flow::Wake(now + Duration::from_millis(10))
        }
    }
}

pub(crate) fn run(server: &Server, ho: &HistoryOptions) -> Result<Report, BenchError> {
    let opts = &server.opts;
    if ho.clients == 0 || ho.window == 0 || ho.limit == 0 {
        return Err(BenchError::Usage(
            "--clients, --window and --limit must be at least 1".into(),
        ));
    }
    server.log(format!(
        "history: {} clients, limit {}, preload {}",
        ho.clients, ho.limit, ho.preload
    ));
    let (users, prov) = provision(server, ho.clients, true)?;
    let mut setup = SetupSocket::open(server, &users.tokens[0])?;
    let room_id = setup
        .create_rooms(&[format!("{}-history", server.prefix)])?
        .remove(0);
    setup.close();

    let dests = server.dests(1);
    let plan = Arc::new(Plan {
        room_json: json_str(&room_id),
        room_id,
        names: users.names,
        tokens: users.tokens,
        limit: ho.limit,
        window: ho.window,
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
        gate: Gate::new(ho.clients, now + opts.setup_timeout),
        preloaded: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let threads = server.threads_for(ho.clients);
    let drivers: Vec<HistoryDriver> = (0..threads)
        .map(|t| HistoryDriver {
            plan: plan.clone(),
            shared: shared.clone(),
            clients: (t..ho.clients)
                .step_by(threads)
                .map(|k| Client {
                    user: k,
                    node: round_robin(k, server.nodes.len()),
                    conn: None,
                    opened: false,
                    ok: 0,
                    phase: Phase::Connecting,
                    retry_at: None,
                    // Client k sends its share of the preload.
                    preload_left: ho.preload / ho.clients
                        + usize::from(k < ho.preload % ho.clients),
                    preload_in_flight: 0,
                    preload_next: 0,
                    next_req: 0,
                    in_flight: InFlight::new(),
                    paused_until: None,
                })
                .collect(),
            started: false,
            window: None,
            tally: Tally::default(),
            hist: LatencyHist::new(),
        })
        .collect();
    let deadline = server.hard_deadline(now);
    let mut rss = RssPeaks::new(opts.server_pid);
    let progress = {
        let shared = shared.clone();
        let preload = ho.preload;
        move || {
            if shared.gate.started().is_some() {
                format!(
                    "history ok {} failed {}",
                    shared.ok.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed)
                )
            } else {
                format!(
                    "setup: preloaded {}/{preload}",
                    shared.preloaded.load(Ordering::Relaxed)
                )
            }
        }
    };
    let drivers = drive(server, drivers, dests, deadline, progress, &mut rss)?;

    let measured = opts.duration.as_secs_f64();
    let mut conns = ConnectionReport {
        attempted: ho.clients as u64,
        ..Default::default()
    };
    let mut req = RequestReport {
        clients: ho.clients as u64,
        preloaded: Some(shared.preloaded.load(Ordering::Relaxed)),
        ..Default::default()
    };
    let mut hist = LatencyHist::new();
    let mut ok_in_window = 0;
    let mut items = 0;
    let mut nodes = server.node_reports();
    for d in &drivers {
        for c in &d.clients {
            let n = &mut nodes[c.node];
            n.connections += 1;
            n.opened += u64::from(c.opened);
            n.requests_ok += c.ok;
        }
        let t = &d.tally;
        conns.opened += t.opened;
        conns.not_ready += t.not_ready;
        merge_counts(&mut conns.failed, &t.setup_failed);
        merge_counts(&mut conns.lost, &t.lost);
        for (code, n) in &t.preload_failed {
            *req.failed.entry(format!("preload_{code}")).or_insert(0) += n;
        }
        req.sent += t.sent;
        req.ok += t.ok;
        req.timed_out += t.timed_out;
        merge_counts(&mut req.failed, &t.failed);
        ok_in_window += t.ok_in_window;
        items += t.items;
        hist.merge(&d.hist);
    }
    req.per_sec = rate(ok_in_window, measured);
    req.mean_items = (req.ok > 0).then(|| items as f64 / req.ok as f64);
    let mut report = Report {
        measured_secs: measured,
        setup: setup_report(server, ho.clients, &prov, shared.gate.started()),
        connections: Some(conns),
        requests: Some(req),
        nodes,
        ..Default::default()
    };
    if let Some(l) = hist.summary() {
        report.latency.insert("history".into(), l);
    }
    rss.apply(&mut report);
    Ok(report)
}
