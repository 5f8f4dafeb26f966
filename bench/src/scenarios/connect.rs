//! `connect`: opens many idle authenticated WebSockets as fast as the handshake
//! concurrency allows, holds them, and reports how many opened, why the others did
//! not, how long a handshake took, and how much memory the server needed.
//! Connection `k` goes to node `k mod N` of the server's nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::net::{Closed, ConnId, Driver, Flow, Net};
use crate::nodes::{round_robin, Dests};
use crate::options::ConnectOptions;
use crate::report::{ConnectionReport, Counts, Report};
use crate::run::{drive, Gate, RssPeaks, Server};
use crate::scenarios::{bump, merge_counts, rate, setup_report};
use crate::stats::LatencyHist;
use crate::users::provision;

/// Connections per destination address when `--dest-addrs` is not given.
const CONNS_PER_DEST: usize = 10_000;

struct Shared {
    gate: Gate,
    open: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
}

struct ConnectDriver {
    shared: Arc<Shared>,
    /// Global connection indexes of this thread.
    conns: Vec<usize>,
    tokens: Arc<Vec<Arc<str>>>,
    dests: Arc<Dests>,
    hold: Duration,
    started: bool,
    hold_until: Option<Instant>,
    first_attempt: Option<Instant>,
    opened: u64,
    /// Opened connections by node.
    opened_by_node: Vec<u64>,
    failed: Counts,
    lost: Counts,
    hist: LatencyHist,
}

impl ConnectDriver {
    fn node_of(&self, k: usize) -> usize {
        round_robin(k, self.dests.nodes())
    }
}

impl Driver for ConnectDriver {
    fn on_open(&mut self, _net: &mut Net, _id: ConnId, tag: usize, took: Duration, _now: Instant) {
        self.opened += 1;
        let node = self.node_of(self.conns[tag]);
        self.opened_by_node[node] += 1;
        self.hist.record_nanos(took.as_nanos() as u64);
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        self.shared.gate.settle();
    }

    fn on_text(&mut self, _net: &mut Net, _id: ConnId, _tag: usize, _text: &str, _now: Instant) {}

    fn on_closed(&mut self, _net: &mut Net, _id: ConnId, _tag: usize, how: Closed, _now: Instant) {
        match how {
            Closed::Failed(f) => {
                bump(&mut self.failed, f.label());
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.shared.gate.settle();
            }
            Closed::Lost(f) => {
                bump(&mut self.lost, f.label());
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
            }
            Closed::ByUs => {}
        }
    }

    fn on_tick(&mut self, net: &mut Net, now: Instant) -> Flow {
        if !self.started {
            self.started = true;
            self.first_attempt = Some(now);
            let nodes = self.dests.nodes();
            for (tag, &k) in self.conns.iter().enumerate() {
                let dest = self.dests.pick(self.node_of(k), k / nodes);
                net.connect(dest, self.tokens[k % self.tokens.len()].clone(), tag);
            }
        }
        if let Some(until) = self.hold_until {
            return if now >= until {
                Flow::Done
            } else {
                Flow::Wake(until)
            };
        }
        match self.shared.gate.poll(now) {
            Some(settled) => {
                let until = settled + self.hold;
                self.hold_until = Some(until);
                Flow::Wake(until.max(now))
            }
            None => Flow::Wake(now + Duration::from_millis(20)),
        }
    }
}

pub(crate) fn run(server: &Server, co: &ConnectOptions) -> Result<Report, BenchError> {
    let opts = &server.opts;
    if co.connections == 0 {
        return Err(BenchError::Usage("--connections must be at least 1".into()));
    }
    let users = co
        .users
        .unwrap_or_else(|| co.connections.div_ceil(100))
        .clamp(1, co.connections);
    let limit = crate::run::raise_nofile_limit();
    if limit > 0 && (co.connections as u64) + 64 > limit {
        server.log(format!(
            "warning: {} connections but the descriptor limit is {limit}",
            co.connections
        ));
    }
    server.log(format!(
        "connect: {} connections over {users} users",
        co.connections
    ));
    let (set, prov) = provision(server, users, true)?;
    let tokens = Arc::new(set.tokens);
    let per_node = co.connections.div_ceil(server.nodes.len());
    let dests = server.dests(per_node.div_ceil(CONNS_PER_DEST));
    let threads = server.threads_for(co.connections);
    let now = Instant::now();
    let shared = Arc::new(Shared {
        gate: Gate::new(co.connections, now + opts.setup_timeout),
        open: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    let drivers: Vec<ConnectDriver> = (0..threads)
        .map(|t| ConnectDriver {
            shared: shared.clone(),
            conns: (t..co.connections).step_by(threads).collect(),
            tokens: tokens.clone(),
            dests: dests.clone(),
            hold: co.hold,
            started: false,
            hold_until: None,
            first_attempt: None,
            opened: 0,
            opened_by_node: vec![0; server.nodes.len()],
            failed: Counts::new(),
            lost: Counts::new(),
            hist: LatencyHist::new(),
        })
        .collect();
    server.log(format!(
        "destinations: {}",
        dests
            .addrs()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let deadline = now + opts.setup_timeout + co.hold + Duration::from_secs(30);
    let mut rss = RssPeaks::new(opts.server_pid);
    let progress = {
        let shared = shared.clone();
        let total = co.connections;
        move || {
            format!(
                "open {} failed {} lost {} (settled {}/{total}{})",
                shared.open.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
                shared.lost.load(Ordering::Relaxed),
                shared.gate.settled(),
                if shared.gate.started().is_some() {
                    ", holding"
                } else {
                    ""
                }
            )
        }
    };
    let drivers = drive(server, drivers, dests, deadline, progress, &mut rss)?;

    let settled = shared.gate.started();
    let mut conns = ConnectionReport {
        attempted: co.connections as u64,
        ..Default::default()
    };
    let mut hist = LatencyHist::new();
    let mut first = None;
    let mut nodes = server.node_reports();
    let node_count = nodes.len();
    for k in 0..co.connections {
        nodes[round_robin(k, node_count)].connections += 1;
    }
    for d in &drivers {
        conns.opened += d.opened;
        for (n, opened) in nodes.iter_mut().zip(&d.opened_by_node) {
            n.opened += opened;
        }
        merge_counts(&mut conns.failed, &d.failed);
        merge_counts(&mut conns.lost, &d.lost);
        hist.merge(&d.hist);
        first = match (first, d.first_attempt) {
            (None, x) => x,
            (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
            (a, None) => a,
        };
    }
    if let (Some(from), Some(to)) = (first, settled) {
        conns.open_secs = to.saturating_duration_since(from).as_secs_f64();
        conns.opened_per_sec = rate(conns.opened, conns.open_secs);
    }
    let mut report = Report {
        measured_secs: co.hold.as_secs_f64(),
        setup: setup_report(server, users, &prov, first),
        connections: Some(conns),
        nodes,
        ..Default::default()
    };
    if let Some(l) = hist.summary() {
        report.latency.insert("connect".into(), l);
    }
    rss.apply(&mut report);
    Ok(report)
}
