//! `login`: closed-loop `POST /login` over keep-alive connections, one blocking
//! thread each (the server's password hashing, not the socket count, is what is
//! measured). Also runs in the background of `chat --with-login-clients`. Client `c`
//! connects to node `c mod N` of the server's nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::json_str;
use crate::http::{HttpClient, HttpError};
use crate::nodes::round_robin;
use crate::options::LoginOptions;
use crate::report::{Counts, NodeReport, Report, RequestReport, SetupReport};
use crate::run::{panic_text, RssPeaks, Server};
use crate::scenarios::{bump, merge_counts, rate};
use crate::stats::LatencyHist;
use crate::users::provision;

/// When the login loop runs: it waits for `start` to return the window (the chat's
/// start gate, or a fixed window), and gives up waiting at `give_up`.
pub(crate) struct LoginTiming {
    pub window: Box<dyn Fn() -> Option<(Instant, Instant)> + Send + Sync>,
    pub give_up: Instant,
}

/// Counters shared with the progress line.
#[derive(Default)]
pub(crate) struct LoginProgress {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Default)]
struct ThreadOut {
    /// The server node this client talks to.
    node: usize,
    /// Got at least one HTTP response.
    answered: bool,
    sent: u64,
    ok: u64,
    ok_in_window: u64,
    failed: Counts,
    timed_out: u64,
    hist: LatencyHist,
}

/// A running login load.
pub(crate) struct LoginLoad {
    clients: usize,
    handles: Vec<JoinHandle<ThreadOut>>,
    pub progress: Arc<LoginProgress>,
}

impl LoginLoad {
    pub fn start(
        server: &Server,
        names: Arc<Vec<String>>,
        clients: usize,
        timing: Arc<LoginTiming>,
    ) -> Result<LoginLoad, BenchError> {
        let progress = Arc::new(LoginProgress::default());
        let mut handles = Vec::with_capacity(clients);
        let password = json_str(&server.opts.password);
        for c in 0..clients {
            let names = names.clone();
            let timing = timing.clone();
            let progress = progress.clone();
            let password = password.clone();
            let node = round_robin(c, server.nodes.len());
            let mut http = HttpClient::new(
                server.nodes[node].addr,
                &server.nodes[node].name,
                server.opts.timeout,
            );
            let h = std::thread::Builder::new()
                .name(format!("klav-login-{c}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut out = ThreadOut {
                        node,
                        ..Default::default()
                    };
                    let (measure_from, until) = loop {
                        if let Some(w) = (timing.window)() {
                            break w;
                        }
                        if Instant::now() >= timing.give_up {
                            return out;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    };
                    let mut k = c;
                    while Instant::now() < until {
                        let name = &names[k % names.len()];
                        k += clients;
                        let body =
                            format!(r#"{{"username":{},"password":{password}}}"#, json_str(name));
                        let started = Instant::now();
                        out.sent += 1;
                        let result = http.post_json("/login", &body);
                        let took = started.elapsed();
                        out.answered |= result.is_ok();
                        match result {
                            Ok(resp) if resp.status == 200 => {
                                out.ok += 1;
                                progress.ok.fetch_add(1, Ordering::Relaxed);
                                if started >= measure_from && started < until {
                                    out.ok_in_window += 1;
                                    out.hist.record_nanos(took.as_nanos() as u64);
                                }
                            }
                            Ok(resp) => {
                                bump(&mut out.failed, format!("http_{}", resp.status));
                                progress.failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(HttpError::Timeout) => {
                                out.timed_out += 1;
                                progress.failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                bump(&mut out.failed, e.label());
                                progress.failed.fetch_add(1, Ordering::Relaxed);
                                // Do not spin on a server that refuses connections.
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    out
                })
                .map_err(|e| BenchError::io("spawning a login thread", e))?;
            handles.push(h);
        }
        Ok(LoginLoad {
            clients,
            handles,
            progress,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for every thread; returns the report section and the latency histogram,
    /// and counts each client under its node in `nodes` when given.
    pub fn finish(
        self,
        measured_secs: f64,
        mut nodes: Option<&mut [NodeReport]>,
    ) -> Result<(RequestReport, LatencyHist), BenchError> {
        let mut r = RequestReport {
            clients: self.clients as u64,
            ..Default::default()
        };
        let mut hist = LatencyHist::new();
        let mut ok_in_window = 0;
        for h in self.handles {
            let out = h.join().map_err(|p| BenchError::Worker(panic_text(&p)))?;
            if let Some(n) = nodes.as_mut().and_then(|n| n.get_mut(out.node)) {
                n.connections += 1;
                n.opened += u64::from(out.answered);
                n.requests_ok += out.ok;
            }
            r.sent += out.sent;
            r.ok += out.ok;
            r.timed_out += out.timed_out;
            merge_counts(&mut r.failed, &out.failed);
            ok_in_window += out.ok_in_window;
            hist.merge(&out.hist);
        }
        r.per_sec = rate(ok_in_window, measured_secs);
        Ok((r, hist))
    }
}

pub(crate) fn run(server: &Server, lo: &LoginOptions) -> Result<Report, BenchError> {
    if lo.clients == 0 {
        return Err(BenchError::Usage("--clients must be at least 1".into()));
    }
    let users = lo.users.unwrap_or(lo.clients).max(1);
    // Registration only: the loop below is the login measurement itself.
    let (set, prov) = provision(server, users, false)?;
    let names = Arc::new(set.names);
    let start = Instant::now();
    let measure_from = start + server.opts.warmup;
    let until = measure_from + server.opts.duration;
    let timing = Arc::new(LoginTiming {
        window: Box::new(move || Some((measure_from, until))),
        give_up: until,
    });
    let setup_secs = server.base.elapsed().as_secs_f64();
    let load = LoginLoad::start(server, names, lo.clients, timing)?;
    let mut rss = RssPeaks::new(server.opts.server_pid);
    let mut last = Instant::now();
    while !load.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        rss.sample();
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            server.log(format!(
                "logins ok {} failed {}",
                load.progress.ok.load(Ordering::Relaxed),
                load.progress.failed.load(Ordering::Relaxed)
            ));
        }
    }
    let measured = server.opts.duration.as_secs_f64();
    let mut nodes = server.node_reports();
    let (req, hist) = load.finish(measured, Some(&mut nodes))?;
    let mut report = Report {
        measured_secs: measured,
        setup: SetupReport {
            users: users as u64,
            registered: prov.created,
            already_registered: prov.already,
            setup_secs,
            ..Default::default()
        },
        requests: Some(req),
        nodes,
        ..Default::default()
    };
    if let Some(l) = hist.summary() {
        report.latency.insert("login".into(), l);
    }
    rss.apply(&mut report);
    Ok(report)
}
