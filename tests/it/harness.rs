//! The integration-test harness: one throwaway PostgreSQL cluster per test run (or
//! the server named by `DATABASE_URL`), a fresh database per test cloned from a
//! template that already has the schema, the real server on an ephemeral port, and
//! small HTTP and WebSocket clients over real sockets.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use klav::config::Config;
use klav::db::embedded::{Cluster, ClusterOptions};
use klav::server::Running;
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

pub const SECRET: &str = "it-secret-long-enough-for-hs256-keys";

/// The password test users register with: long enough for the server's
/// default `KLAV_MIN_PASSWORD_LEN`.
pub const PASSWORD: &str = "it-password";

/// The shared PostgreSQL for this run.
pub struct Pg {
    /// URL of the maintenance database (`postgres`).
    admin_url: String,
    template: String,
    /// Set when the harness runs its own cluster (kept for the whole run).
    cluster: Option<Cluster>,
}

static PG: OnceLock<Pg> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

pub fn pg() -> &'static Pg {
    PG.get_or_init(|| {
        let pid = std::process::id();
        let (admin_url, cluster) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => (
                klav::config::normalise_database_url(url.trim()).expect("DATABASE_URL"),
                None,
            ),
            _ => {
                let dir = std::env::temp_dir().join(format!("klav-it-{pid}"));
                let _ = std::fs::remove_dir_all(&dir);
                let cluster = Cluster::start(&dir, &test_cluster_options())
                    .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
                watchdog(&dir);
                (cluster.url("postgres"), Some(cluster))
            }
        };
        let template = format!("klav_it_tpl_{pid}");
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("connect to the test PostgreSQL");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {template}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {template}"))
            .unwrap();
        let tpl_url = with_dbname(&admin_url, &template);
        klav::db::apply_schema(&tpl_url.parse().unwrap()).expect("schema applies");
        Pg {
            admin_url,
            template,
            cluster,
        }
    })
}

/// Settings that make a disposable cluster fast.
pub fn test_cluster_options() -> ClusterOptions {
    let mut opts = ClusterOptions::default();
    opts.settings.extend(
        [
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "400"),
            ("shared_buffers", "64MB"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    opts
}

/// The test process cannot run code at exit, so a small shell process waits for
/// it to end, then stops the cluster (SIGQUIT: immediate) and removes it.
pub fn watchdog(dir: &std::path::Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         pid=$(head -1 '{d}/pg/postmaster.pid' 2>/dev/null); \
         [ -n \"$pid\" ] && kill -QUIT \"$pid\" 2>/dev/null; sleep 2; rm -rf '{d}'",
        pid = std::process::id(),
        d = dir.display()
    );
    let _ = std::process::Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Replaces the database name in a `postgresql://` URL.
pub fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Pg {
    /// A new database with the schema, private to one test.
    pub fn fresh_db(&self) -> String {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name = format!("klav_it_{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&self.admin_url, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE {}",
                self.template
            ))
            .unwrap();
        with_dbname(&self.admin_url, &name)
    }

    /// A new empty database (no schema), e.g. to lay out the old server's tables.
    pub fn empty_db(&self) -> String {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name = format!("klav_it_{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&self.admin_url, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        with_dbname(&self.admin_url, &name)
    }
}

/// A test configuration: loopback, ephemeral port, few threads, fixed secret.
pub fn test_config() -> Config {
    // In-process servers log through a shared writer thread that no test's
    // output capture owns: keep to what matters.
    klav::log::set_level(klav::log::Level::Warn);
    let mut c = Config::defaults();
    c.host = "127.0.0.1".into();
    c.port = 0;
    c.db_workers = 2;
    c.hash_workers = 1;
    c.jwt_secret = Some(SECRET.into());
    // Tests register many users from one address; the budget has its own tests.
    c.register_per_addr = 1_000_000;
    // Tests read counters from `/metrics` often; the budget has its own test.
    c.metrics_per_addr_per_sec = 1_000_000;
    c
}

/// A running server on its own database.
pub struct TestServer {
    pub addr: SocketAddr,
    pub db_url: String,
    pub config: Config,
    running: Option<Running>,
}

impl TestServer {
    /// Where `/metrics` is served when `KLAV_METRICS_ADDR` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.metrics_addr)
    }

    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    /// With configuration changes.
    pub fn with(f: impl FnOnce(&mut Config)) -> TestServer {
        let url = pg().fresh_db();
        TestServer::on_db(&url, f)
    }

    /// On an existing database (e.g. after a restart).
    pub fn on_db(db_url: &str, f: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        f(&mut config);
        TestServer::try_config(db_url, config).unwrap_or_else(|e| panic!("server start: {e}"))
    }

    /// On an existing database with a given configuration; the start's error if
    /// it fails (e.g. the port is taken).
    pub fn try_config(
        db_url: &str,
        config: Config,
    ) -> Result<TestServer, klav::server::StartError> {
        let running = klav::server::start(config.clone(), db_url, SECRET.as_bytes())?;
        Ok(TestServer {
            addr: running.addr,
            db_url: db_url.to_string(),
            config,
            running: Some(running),
        })
    }

    /// A restart on the database and port of a server that was stopped, so that
    /// clients that remember the address (browsers) can come back. The port is
    /// retried for a while in case a client socket holds it meanwhile.
    pub fn restart_on(db_url: &str, port: u16) -> TestServer {
        let mut config = test_config();
        config.port = port;
        let deadline = Instant::now() + WAIT;
        loop {
            match TestServer::try_config(db_url, config.clone()) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart on port {port}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restart on port {port}: {e}"),
            }
        }
    }

    /// Graceful stop; returns the database URL for a restart.
    pub fn stop(mut self) -> String {
        if let Some(r) = self.running.take() {
            r.stop();
        }
        self.db_url.clone()
    }

    pub fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.db_url, postgres::NoTls).unwrap()
    }

    /// One HTTP request on a fresh connection.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        http_to(self.addr, method, path, body)
    }

    pub fn post(&self, path: &str, body: Value) -> Response {
        self.http("POST", path, Some(&body.to_string()))
    }

    pub fn register(&self, user: &str, password: &str) -> Response {
        self.post("/register", json!({"username": user, "password": password}))
    }

    pub fn login(&self, user: &str, password: &str) -> Response {
        self.post("/login", json!({"username": user, "password": password}))
    }

    /// Registers `user` (password [`PASSWORD`]) and returns a token.
    pub fn user(&self, user: &str) -> String {
        let r = self.register(user, PASSWORD);
        assert_eq!(r.status, 200, "register {user}: {}", r.body);
        self.token(user)
    }

    /// Registers with a nickname.
    pub fn user_nick(&self, user: &str, nickname: &str) -> String {
        let r = self.post(
            "/register",
            json!({"username": user, "password": PASSWORD, "nickname": nickname}),
        );
        assert_eq!(r.status, 200, "register {user}: {}", r.body);
        self.token(user)
    }

    pub fn token(&self, user: &str) -> String {
        let r = self.login(user, PASSWORD);
        assert_eq!(r.status, 200, "login {user}: {}", r.body);
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// A ticket from `POST /ws-ticket` for `token` (which must be good).
    pub fn ws_ticket(&self, token: &str) -> String {
        let r = ws_ticket_at(self.addr, Some(token));
        assert_eq!(r.status, 200, "ws-ticket: {}", r.body);
        r.json()["ticket"].as_str().unwrap().to_string()
    }

    /// An authenticated WebSocket (token in the query string).
    pub fn ws(&self, token: &str) -> Ws {
        Ws::connect(self.addr, token).unwrap_or_else(|(s, b)| panic!("upgrade refused: {s} {b}"))
    }

    /// Registers, logs in and connects.
    pub fn client(&self, user: &str) -> Ws {
        let t = self.user(user);
        self.ws(&t)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}

/// A TCP connection to `addr` from a chosen loopback source address (all of
/// 127.0.0.0/8 is local), to act as different clients.
pub fn connect_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(dst) = addr else {
        panic!("IPv4 expected")
    };
    // SAFETY: plain socket calls on a descriptor we own; it is handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(src);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len),
            0,
            "bind"
        );
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as libc::sa_family_t;
        da.sin_port = dst.port().to_be();
        da.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        assert_eq!(
            libc::connect(fd, &da as *const _ as *const libc::sockaddr, len),
            0,
            "connect"
        );
        let s = <TcpStream as std::os::unix::io::FromRawFd>::from_raw_fd(fd);
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or("").to_string()
    }
}

/// Reads one response (head + Content-Length body) from a stream; `None` on EOF.
pub fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    Some(Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

/// Whether the server closed the connection (EOF or reset) within `wait`.
pub fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A gauge or counter from `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http_to(addr, "GET", "/metrics", None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A `/ws?token=` upgrade written by hand (`headers`: more header lines, each
/// ending in CRLF); returns the socket and the status.
pub fn upgrade_status(addr: SocketAddr, token: &str, headers: &str) -> (TcpStream, u16) {
    let (s, r) = upgrade_response(addr, token, headers);
    (s, r.status)
}

/// [`upgrade_status`], with the whole response.
pub fn upgrade_response(addr: SocketAddr, token: &str, headers: &str) -> (TcpStream, Response) {
    let mut s = connect(addr);
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .unwrap();
    let r = read_response(&mut s).expect("an upgrade response");
    (s, r)
}

/// A blocking WebSocket client with timeouts.
pub struct Ws {
    pub sock: tungstenite::WebSocket<TcpStream>,
    next_req: u64,
}

/// How long a test waits for an event that must come.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure an event does not come.
pub const QUIET: Duration = Duration::from_millis(300);

impl Ws {
    /// Connects with `?token=`; on refusal returns the status and body.
    pub fn connect(addr: SocketAddr, token: &str) -> Result<Ws, (u16, String)> {
        Ws::connect_with(addr, &format!("/ws?token={token}"), &[])
    }

    /// Connects with `?ticket=` (from `POST /ws-ticket`).
    pub fn connect_ticket(addr: SocketAddr, ticket: &str) -> Result<Ws, (u16, String)> {
        Ws::connect_with(addr, &format!("/ws?ticket={ticket}"), &[])
    }

    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, (u16, String)> {
        Ws::connect_stream(connect(addr), path, headers)
    }

    /// The upgrade over a stream the caller prepared (e.g. with a small receive
    /// buffer); on refusal returns the status and body.
    pub fn connect_stream(
        stream: TcpStream,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, (u16, String)> {
        use tungstenite::client::IntoClientRequest;
        let addr = stream.peer_addr().unwrap();
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tungstenite::client::client(req, stream) {
            Ok((sock, _)) => Ok(Ws { sock, next_req: 1 }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((status, body))
            }
            Err(e) => panic!("upgrade failed: {e}"),
        }
    }

    pub fn send(&mut self, v: Value) {
        self.sock.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_raw(&mut self, m: Message) {
        self.sock.send(m).unwrap();
    }

    /// The next event, or `None` after `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        self.sock.get_mut().set_read_timeout(Some(wait)).unwrap();
        loop {
            match self.sock.read() {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("events are JSON"))
                }
                Ok(Message::Close(c)) => panic!("connection closed by the server: {c:?}"),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(e) => panic!("websocket read: {e}"),
            }
        }
    }

    /// The next event (which must arrive).
    pub fn recv(&mut self) -> Value {
        self.try_recv(WAIT).expect("an event within the wait")
    }

    /// The next event, which must be of type `kind`.
    pub fn expect(&mut self, kind: &str) -> Value {
        let ev = self.recv();
        assert_eq!(ev["type"], kind, "expected a {kind} event, got {ev}");
        assert!(ev["ts"].is_string(), "every event has ts: {ev}");
        ev
    }

    /// Asserts nothing arrives for a short while.
    pub fn silent(&mut self) {
        if let Some(ev) = self.try_recv(QUIET) {
            panic!("expected no event, got {ev}");
        }
    }

    /// Sends a request with a fresh `req_id` and returns the reply carrying it
    /// (events without that `req_id` that arrive first are returned in `.1`).
    pub fn request(&mut self, mut v: Value) -> Value {
        let id = format!("r{}", self.next_req);
        self.next_req += 1;
        v["req_id"] = Value::String(id.clone());
        self.send(v);
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = self
                .try_recv(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|| panic!("no reply to request {id}"));
            if ev["req_id"] == Value::String(id.clone()) {
                return ev;
            }
        }
    }

    /// Waits for the server's close frame; returns it.
    pub fn expect_close(&mut self) -> Option<CloseFrame> {
        self.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        loop {
            match self.sock.read() {
                Ok(Message::Close(c)) => return c,
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        }
    }

    /// Creates a room and returns its id.
    pub fn create_room(&mut self, name: &str) -> String {
        let ack = self.request(json!({"type": "create_room", "name": name}));
        assert_eq!(ack["status"], "CREATED", "{ack}");
        ack["room_id"].as_str().unwrap().to_string()
    }

    /// Joins a room by id and consumes the own `joined` event.
    pub fn join(&mut self, room: &str) {
        self.send(json!({"type": "join", "room_id": room}));
        let ev = self.expect("system");
        assert_eq!(ev["event"], "joined", "{ev}");
        assert_eq!(ev["room"], room);
    }

    pub fn close(mut self) {
        let _ = self.sock.close(None);
        let _ = self.sock.flush();
        // Read until the server's close reply, so the close is complete.
        self.sock
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        while self.sock.read().is_ok() {}
    }
}

// ---------------------------------------------------------------------------------
// The real binary as a child process.

/// `klav` running as a child process, with its stderr collected.
pub struct Klav {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    /// While set, nobody reads its stderr: the pipe fills and writes to it block.
    stall: Arc<std::sync::atomic::AtomicBool>,
}

/// `klav` as a child process on a data directory (embedded PostgreSQL unless `env`
/// sets `DATABASE_URL`), listening on an ephemeral loopback port, with extra
/// environment variables.
pub fn spawn_klav(data_dir: &Path, env: &[(&str, &str)]) -> Klav {
    spawn_klav_with(data_dir, env, None)
}

/// As [`spawn_klav`], optionally under a file descriptor limit (soft and hard).
pub fn spawn_klav_with(data_dir: &Path, env: &[(&str, &str)], max_fds: Option<u64>) -> Klav {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_klav"));
    cmd.env_remove("DATABASE_URL")
        .env("KLAV_DATA_DIR", data_dir)
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", SECRET)
        .env("KLAV_REGISTER_PER_ADDR", "1000000")
        .env("KLAV_METRICS_PER_ADDR_PER_SEC", "1000000");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(n) = max_fds {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let log = log.clone();
        let stall = stall.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                while stall.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "klav did not report its address; stderr:\n{}",
                log.lock().unwrap()
            );
        }
    };
    Klav {
        child,
        addr,
        stderr: log,
        reader: Some(reader),
        stall,
    }
}

impl Klav {
    /// Stops (or resumes) reading its stderr.
    pub fn stall_stderr(&self, stalled: bool) {
        self.stall
            .store(stalled, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything it wrote to stderr (call after it exited).
    pub fn full_stderr(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.stderr()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Its exit status, if it exits within `wait`.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then its exit status (it must exit within 30 s).
    pub fn terminate(&mut self) -> ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for Klav {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGTERM to a child, then its exit status (it must exit within 30 s).
pub fn terminate(child: &mut Child) -> ExitStatus {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "klav did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP request to `addr` on a fresh connection (`Connection: close`).
pub fn http_to(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut s = connect(addr);
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s).expect("a response")
}

/// `POST /ws-ticket` to `addr`, with `Authorization: Bearer <token>` (none:
/// without the header).
pub fn ws_ticket_at(addr: SocketAddr, token: Option<&str>) -> Response {
    let mut s = connect(addr);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST /ws-ticket HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s).expect("a response")
}

/// Registers `user` (password [`PASSWORD`]) on the server at `addr` and returns a token.
pub fn user_at(addr: SocketAddr, user: &str) -> String {
    let body = json!({"username": user, "password": PASSWORD}).to_string();
    let r = http_to(addr, "POST", "/register", Some(&body));
    assert_eq!(r.status, 200, "register {user}: {}", r.body);
    let r = http_to(addr, "POST", "/login", Some(&body));
    assert_eq!(r.status, 200, "login {user}: {}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}
