//! Running a scenario: resolving the server, raising the descriptor limit, starting
//! the client threads, a start gate they all wait on, progress lines and memory
//! sampling while they run.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::net::{Driver, Net, NetConfig};
use crate::nodes::{parse_addr_list, Dests, Node};
use crate::options::Options;
use crate::report::{NodeReport, Report};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the `connect` scenario holds
/// one descriptor per connection.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// The server under test and what every scenario shares about the run.
pub(crate) struct Server {
    pub opts: Options,
    /// Every node of `--addr`, in the order given (one for a single server).
    pub nodes: Vec<Node>,
    /// Where HTTP setup requests (and setup WebSockets) go: the first node.
    pub http_addr: SocketAddr,
    /// `Host` header value for `http_addr`.
    pub host: String,
    pub prefix: String,
    /// All latencies and message stamps count from here.
    pub base: Instant,
}

impl Server {
    pub(crate) fn new(opts: &Options) -> Result<Server, BenchError> {
        let names = parse_addr_list(&opts.addr).map_err(BenchError::Usage)?;
        let mut nodes = Vec::with_capacity(names.len());
        for name in names {
            let addrs: Vec<SocketAddr> = name
                .to_socket_addrs()
                .map_err(|source| BenchError::Resolve {
                    addr: name.clone(),
                    source,
                })?
                .collect();
            let addr = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| BenchError::Usage(format!("--addr {name:?} resolves to nothing")))?;
            nodes.push(Node { name, addr });
        }
        if opts.threads == 0 {
            return Err(BenchError::Usage("--threads must be at least 1".into()));
        }
        Ok(Server {
            opts: opts.clone(),
            http_addr: nodes[0].addr,
            host: nodes[0].name.clone(),
            nodes,
            prefix: opts.user_prefix.clone().unwrap_or_else(fresh_prefix),
            base: Instant::now(),
        })
    }

    /// WebSocket destinations: for every node, `n` consecutive loopback addresses
    /// starting at the node's (`127.0.0.1:P`, `127.0.0.2:P`, ...), or just the node's
    /// address when it is not IPv4 loopback. `n` is `--dest-addrs`, else
    /// `default_per_node`.
    pub fn dests(&self, default_per_node: usize) -> Arc<Dests> {
        let n = self.opts.dest_addrs.unwrap_or(default_per_node).max(1);
        Arc::new(Dests::new(&self.nodes, n))
    }

    /// An empty per-node section for the report, one entry per node.
    pub fn node_reports(&self) -> Vec<NodeReport> {
        self.nodes
            .iter()
            .map(|n| NodeReport {
                addr: n.name.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// The thread count for `conns` connections (never more threads than connections).
    pub fn threads_for(&self, conns: usize) -> usize {
        self.opts.threads.clamp(1, conns.max(1))
    }

    /// When a timed scenario's client threads stop regardless: setup, warmup,
    /// the measured window and the drain, plus a margin.
    pub fn hard_deadline(&self, start: Instant) -> Instant {
        let o = &self.opts;
        start + o.setup_timeout + o.warmup + o.duration + o.drain + Duration::from_secs(30)
    }

    pub fn net_config(&self, dests: Arc<Dests>, threads: usize, deadline: Instant) -> NetConfig {
        NetConfig {
            dests,
            max_handshakes: self.opts.connect_concurrency.div_ceil(threads).max(1),
            handshake_timeout: self.opts.timeout,
            close_timeout: Duration::from_secs(2),
            deadline,
        }
    }

    pub fn log(&self, msg: impl AsRef<str>) {
        if self.opts.progress {
            eprintln!(
                "[{:>6.1}s] {}",
                self.base.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }
}

/// Every connection reports once whether it got ready or gave up; the measured run
/// starts for all threads at one instant, when all have settled or setup time is up.
pub(crate) struct Gate {
    total: usize,
    settled: AtomicUsize,
    deadline: Instant,
    start: OnceLock<Instant>,
}

impl Gate {
    pub fn new(total: usize, deadline: Instant) -> Gate {
        Gate {
            total,
            settled: AtomicUsize::new(0),
            deadline,
            start: OnceLock::new(),
        }
    }

    pub fn settle(&self) {
        self.settled.fetch_add(1, Ordering::AcqRel);
    }

    pub fn settled(&self) -> usize {
        self.settled.load(Ordering::Acquire)
    }

    /// The start instant, once the gate is open.
    pub fn poll(&self, now: Instant) -> Option<Instant> {
        if let Some(s) = self.start.get() {
            return Some(*s);
        }
        if self.settled() >= self.total || now >= self.deadline {
            return Some(*self.start.get_or_init(|| now));
        }
        None
    }

    pub fn started(&self) -> Option<Instant> {
        self.start.get().copied()
    }
}

/// Runs one driver per thread, each with its own [`Net`], and hands the drivers back
/// when all are done. Meanwhile samples memory and prints `progress()` once a second.
pub(crate) fn run_threads<D: Driver + Send + 'static>(
    server: &Server,
    drivers: Vec<D>,
    cfg: NetConfig,
    progress: impl Fn() -> String,
    rss: &mut RssPeaks,
) -> Result<Vec<D>, BenchError> {
    let mut handles = Vec::with_capacity(drivers.len());
    for (i, mut driver) in drivers.into_iter().enumerate() {
        let cfg = cfg.clone();
        let handle = std::thread::Builder::new()
            .name(format!("klav-bench-{i}"))
            .spawn(move || -> Result<D, std::io::Error> {
                let mut net = Net::new(cfg)?;
                net.run(&mut driver)?;
                Ok(driver)
            })
            .map_err(|e| BenchError::io("spawning a client thread", e))?;
        handles.push(handle);
    }
    let mut last = Instant::now();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        rss.sample();
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            server.log(progress());
        }
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(Ok(d)) => out.push(d),
            Ok(Err(e)) => return Err(BenchError::io("client event loop", e)),
            Err(panic) => return Err(BenchError::Worker(panic_text(&panic))),
        }
    }
    Ok(out)
}

/// [`run_threads`] with one thread per driver, each connecting to `dests`, all
/// stopped at `deadline` whatever their drivers say.
pub(crate) fn drive<D: Driver + Send + 'static>(
    server: &Server,
    drivers: Vec<D>,
    dests: Arc<Dests>,
    deadline: Instant,
    progress: impl Fn() -> String,
    rss: &mut RssPeaks,
) -> Result<Vec<D>, BenchError> {
    let cfg = server.net_config(dests, drivers.len(), deadline);
    run_threads(server, drivers, cfg, progress, rss)
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Peak resident memory of the server (if its pid is known) and of the bench.
#[derive(Debug, Default)]
pub(crate) struct RssPeaks {
    pub server_pid: Option<u32>,
    pub server_kb: Option<u64>,
    pub bench_kb: Option<u64>,
}

impl RssPeaks {
    pub fn new(server_pid: Option<u32>) -> RssPeaks {
        RssPeaks {
            server_pid,
            ..Default::default()
        }
    }

    pub fn sample(&mut self) {
        if let Some(pid) = self.server_pid {
            if let Some(kb) = vm_rss_kb(&format!("/proc/{pid}/status")) {
                self.server_kb = Some(self.server_kb.unwrap_or(0).max(kb));
            }
        }
        if let Some(kb) = vm_rss_kb("/proc/self/status") {
            self.bench_kb = Some(self.bench_kb.unwrap_or(0).max(kb));
        }
    }

    pub fn apply(&self, report: &mut Report) {
        report.server_peak_rss_kb = self.server_kb;
        report.bench_peak_rss_kb = self.bench_kb;
    }
}

/// `VmRSS` in KiB from a `/proc/<pid>/status` file.
pub(crate) fn vm_rss_kb(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_vm_rss(&text)
}

pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    parse_status_kb(status, "VmRSS:")
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of a `/proc/<pid>/status` text.
pub(crate) fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_stat_cpu_ticks(&text).map(|t| t as f64 / ticks.max(1) as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name
/// in parentheses may hold spaces, so fields are counted after its closing `)`.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A blocking WebSocket used for one-off setup steps (creating rooms) before the
/// client threads start.
pub(crate) struct SetupSocket {
    ws: tungstenite::WebSocket<TcpStream>,
    backoff: Duration,
}

impl SetupSocket {
    pub fn open(server: &Server, token: &str) -> Result<SetupSocket, BenchError> {
        Ok(SetupSocket {
            ws: open_blocking_ws(server, token)?,
            backoff: server.opts.backoff,
        })
    }

    /// Joins a room: done when the server announces our join or says we already are
    /// a member. `RATE_LIMITED` and `UNAVAILABLE` are retried after a pause, as
    /// in [`SetupSocket::request`].
    pub fn join(&mut self, room_id: &str, user: &str, req_id: u64) -> Result<(), BenchError> {
        for attempt in 0..50u32 {
            match self.try_join(room_id, user, req_id)? {
                true => return Ok(()),
                false => std::thread::sleep(self.backoff * (attempt + 1).min(10)),
            }
        }
        Err(BenchError::Setup(format!(
            "join {room_id}: still rate limited after 50 attempts"
        )))
    }

    /// One attempt at [`SetupSocket::join`]: false when it should be tried again.
    fn try_join(&mut self, room_id: &str, user: &str, req_id: u64) -> Result<bool, BenchError> {
        let frame = format!(
            r#"{{"type":"join","room_id":{},"req_id":{req_id}}}"#,
            json_str(room_id)
        );
        self.ws
            .send(tungstenite::Message::text(frame))
            .map_err(|e| BenchError::Setup(format!("sending join: {e}")))?;
        loop {
            let msg = self
                .ws
                .read()
                .map_err(|e| BenchError::Setup(format!("waiting for the join: {e}")))?;
            let tungstenite::Message::Text(text) = msg else {
                continue;
            };
            let Some(ev) = Event::parse(text.as_str()) else {
                continue;
            };
            match ev.kind() {
                "join_ack" if ev.req_num() == Some(req_id) => return Ok(true),
                "system"
                    if Event::field(&ev.event) == Some("joined")
                        && Event::field(&ev.user) == Some(user) =>
                {
                    return Ok(true)
                }
                "error"
                    if ev.req_num() == Some(req_id)
                        && matches!(ev.error_code(), "RATE_LIMITED" | "UNAVAILABLE") =>
                {
                    return Ok(false)
                }
                "error" if ev.req_num() == Some(req_id) => {
                    return Err(BenchError::Setup(format!(
                        "join {room_id} answered with error {}",
                        ev.error_code()
                    )))
                }
                _ => {}
            }
        }
    }
}

/// A blocking, authenticated WebSocket to the server's HTTP address, with
/// `--timeout` on reads and writes.
pub(crate) fn open_blocking_ws(
    server: &Server,
    token: &str,
) -> Result<tungstenite::WebSocket<TcpStream>, BenchError> {
    open_blocking_ws_from(server, token, None)
}

/// [`open_blocking_ws`] from a chosen local address.
pub(crate) fn open_blocking_ws_from(
    server: &Server,
    token: &str,
    source: Option<IpAddr>,
) -> Result<tungstenite::WebSocket<TcpStream>, BenchError> {
    use tungstenite::client::IntoClientRequest;
    let stream = crate::http::connect_from(source, server.http_addr, server.opts.timeout)
        .map_err(|e| BenchError::Setup(format!("connecting to {}: {e}", server.http_addr)))?;
    stream
        .set_read_timeout(Some(server.opts.timeout))
        .and_then(|_| stream.set_write_timeout(Some(server.opts.timeout)))
        .map_err(|e| BenchError::io("setting socket timeouts", e))?;
    let mut req = format!("ws://{}/ws", server.host)
        .into_client_request()
        .map_err(|e| BenchError::Setup(format!("building the upgrade request: {e}")))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| BenchError::Setup("token is not a valid header value".into()))?;
    req.headers_mut().insert("Authorization", auth);
    let (ws, _) = tungstenite::client(req, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
            BenchError::Setup(format!(
                "WebSocket upgrade refused with HTTP {}: {}",
                resp.status().as_u16(),
                resp.body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            ))
        }
        other => BenchError::Setup(format!("WebSocket upgrade failed: {other}")),
    })?;
    Ok(ws)
}

impl SetupSocket {
    /// Sends `request` (a JSON object without `req_id`) and returns the first reply of
    /// type `reply_type` (or an error) carrying our `req_id`. `RATE_LIMITED` and
    /// `UNAVAILABLE` are retried after a pause.
    pub fn request(
        &mut self,
        request: &str,
        reply_type: &str,
        req_id: u64,
    ) -> Result<serde_json::Value, BenchError> {
        let body = request.trim_end().trim_end_matches('}');
        let frame = format!("{body},\"req_id\":{req_id}}}");
        for attempt in 0..50u32 {
            self.ws
                .send(tungstenite::Message::text(frame.clone()))
                .map_err(|e| BenchError::Setup(format!("sending {request}: {e}")))?;
            loop {
                let msg = self
                    .ws
                    .read()
                    .map_err(|e| BenchError::Setup(format!("waiting for {reply_type}: {e}")))?;
                let tungstenite::Message::Text(text) = msg else {
                    continue;
                };
                let Some(ev) = Event::parse(text.as_str()) else {
                    continue;
                };
                if ev.req_num() != Some(req_id) && ev.req_id.is_some() {
                    continue;
                }
                if ev.kind() == "error" {
                    let code = ev.error_code().to_string();
                    if code == "RATE_LIMITED" || code == "UNAVAILABLE" {
                        std::thread::sleep(self.backoff * (attempt + 1).min(10));
                        break;
                    }
                    return Err(BenchError::Setup(format!(
                        "{request} answered with error {code}"
                    )));
                }
                if ev.kind() == reply_type {
                    return serde_json::from_str(text.as_str())
                        .map_err(|e| BenchError::Setup(format!("unparseable {reply_type}: {e}")));
                }
            }
        }
        Err(BenchError::Setup(format!(
            "{request}: still rate limited after 50 attempts"
        )))
    }

    /// Creates one room per name; returns their ids in order.
    pub fn create_rooms(&mut self, names: &[String]) -> Result<Vec<String>, BenchError> {
        let mut ids = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let reply = self.request(
                &format!(r#"{{"type":"create_room","name":{}}}"#, json_str(name)),
                "create_room_ack",
                i as u64 + 1,
            )?;
            match (reply["status"].as_str(), reply["room_id"].as_str()) {
                (Some("CREATED"), Some(id)) => ids.push(id.to_string()),
                _ => {
                    return Err(BenchError::Setup(format!(
                        "create_room {name:?} answered {reply}"
                    )))
                }
            }
        }
        Ok(ids)
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }

    /// Closes and reads until the server has answered the close (or `--timeout`
    /// passed): by then it has let the connection go, and the user is offline
    /// unless it has other connections.
    pub fn close_and_wait(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        while self.ws.read().is_ok() {}
    }
}

/// A prefix unique to this run: time, process id and a per-process counter (runs in
/// one test process may start within the same millisecond), in base 36 to stay short.
pub(crate) fn fresh_prefix() -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "kb{}{}x{}",
        base36(millis % 36u64.pow(7)),
        base36(u64::from(std::process::id()) % 1296),
        base36(RUNS.fetch_add(1, Ordering::Relaxed) as u64)
    )
}

pub(crate) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::spread_loopback;

    #[test]
    fn loopback_spread_skips_network_and_broadcast_parts() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let v = spread_loopback(a, 3);
        assert_eq!(
            v,
            vec![
                "127.0.0.1:5000".parse::<SocketAddr>().unwrap(),
                "127.0.0.2:5000".parse().unwrap(),
                "127.0.0.3:5000".parse().unwrap()
            ]
        );
        let a: SocketAddr = "127.0.0.254:80".parse().unwrap();
        let v = spread_loopback(a, 3);
        assert_eq!(v[1], "127.0.1.1:80".parse::<SocketAddr>().unwrap());
        assert_eq!(v.len(), 3);
        // Not loopback: only the given address.
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(spread_loopback(a, 4), vec![a]);
        let a: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(spread_loopback(a, 4), vec![a]);
    }

    #[test]
    fn vm_rss_is_read_from_status_text() {
        let status = "Name:\tklav\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(vm_rss_kb("/proc/self/status").unwrap() > 0);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "1234 (klav (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert!(cpu_secs(std::process::id()).is_some());
        let status = "VmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(2048));
    }

    #[test]
    fn gate_opens_when_all_settle_or_at_deadline() {
        let now = Instant::now();
        let g = Gate::new(2, now + Duration::from_secs(60));
        assert_eq!(g.poll(now), None);
        g.settle();
        assert_eq!(g.poll(now), None);
        g.settle();
        let t = g.poll(now + Duration::from_millis(1)).unwrap();
        assert_eq!(g.poll(now + Duration::from_secs(5)), Some(t));
        let g = Gate::new(5, now + Duration::from_secs(1));
        assert_eq!(g.poll(now), None);
        assert!(g.poll(now + Duration::from_secs(2)).is_some());
    }
}
