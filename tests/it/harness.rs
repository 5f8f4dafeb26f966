//! The integration-test harness: one throwaway PostgreSQL cluster per test run (or
//! the server named by `DATABASE_URL`), a fresh database per test cloned from a
//! template that already has the schema, the real server on an ephemeral port, and
//! small HTTP and WebSocket clients over real sockets.
//!
//! Every test starts with `use crate::harness::*;`, which also brings the general
//! parts of `crate::support` (HTTP by hand, the binary as a child process,
//! hand-made frames, `/metrics`, tokens, waiting, the operating system's view,
//! chat set-ups). The parts only some tests need (several nodes, the browser,
//! friends, the legacy JSON files) are imported from their `support` module by
//! name.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use klav::config::Config;
use klav::db::embedded::{Cluster, ClusterOptions};
use klav::server::Running;
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

pub use crate::support::chat::*;
pub use crate::support::frames::*;
pub use crate::support::jwt::*;
pub use crate::support::klav::*;
use crate::support::logs;
pub use crate::support::os::*;
pub use crate::support::raw_http::*;
pub use crate::support::scrape::*;
pub use crate::support::wait::*;

pub const SECRET: &str = "it-secret-long-enough-for-hs256-keys";

/// The password test users register with: long enough for the server's
/// default `KLAV_MIN_PASSWORD_LEN`.
pub const PASSWORD: &str = "it-password";

/// The shared PostgreSQL for this run.
pub struct Pg {
    /// URL of the maintenance database (`postgres`).
    admin_url: String,
    template: String,
    /// Set when the harness runs its own cluster (held, never read, so that
    /// it lives for the whole run).
    #[allow(dead_code)]
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

/// A client of the database at `url`.
pub fn connect_db(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
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
        self.create_db(Some(&self.template))
    }

    /// A new empty database (no schema), e.g. to lay out the old server's tables.
    pub fn empty_db(&self) -> String {
        self.create_db(None)
    }

    /// A database of a name no other test uses, copied from `template` if given.
    fn create_db(&self, template: Option<&str>) -> String {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name = format!("klav_it_{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&self.admin_url, postgres::NoTls).unwrap();
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        admin.batch_execute(&sql).unwrap();
        with_dbname(&self.admin_url, &name)
    }
}

/// A test configuration: loopback, ephemeral port, few threads, fixed secret.
pub fn test_config() -> Config {
    // In-process servers log through a shared writer thread that no test's
    // output capture owns; the harness keeps the lines and shows them with a
    // failing test (`support::logs`). Keep to what matters.
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
    /// The configuration it was started with.
    #[allow(dead_code)]
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
        logs::server_started();
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
        let mut last = None;
        poll(
            WAIT,
            Duration::from_millis(100),
            || match TestServer::try_config(db_url, config.clone()) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("restart on port {port}: {e}; retrying");
                    last = Some(e);
                    None
                }
            },
        )
        .unwrap_or_else(|| panic!("restart on port {port}: {}", last.unwrap()))
    }

    /// Graceful stop; returns the database URL for a restart.
    pub fn stop(mut self) -> String {
        if let Some(r) = self.running.take() {
            r.stop();
        }
        self.db_url.clone()
    }

    pub fn db(&self) -> postgres::Client {
        connect_db(&self.db_url)
    }

    /// The one number a query such as `SELECT count(*) …` answers, asked on a
    /// connection of its own.
    pub fn count(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> i64 {
        self.db().query_one(sql, params).unwrap().get(0)
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

    /// A token for `user` (password [`PASSWORD`]).
    pub fn token(&self, user: &str) -> String {
        self.login_token(user, PASSWORD)
    }

    /// A token from a login that must succeed.
    pub fn login_token(&self, user: &str, password: &str) -> String {
        let r = self.login(user, password);
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
        logs::show_if_failing();
    }
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
    #[track_caller]
    pub fn recv(&mut self) -> Value {
        self.try_recv(WAIT).expect("an event within the wait")
    }

    /// The next event, which must be of type `kind`.
    #[track_caller]
    pub fn expect(&mut self, kind: &str) -> Value {
        let ev = self.recv();
        assert_eq!(ev["type"], kind, "expected a {kind} event, got {ev}");
        assert!(ev["ts"].is_string(), "every event has ts: {ev}");
        ev
    }

    /// Asserts nothing arrives for a short while.
    #[track_caller]
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

    /// Writes every request, then flushes once: they arrive back to back.
    pub fn pipeline(&mut self, reqs: impl IntoIterator<Item = Value>) {
        for r in reqs {
            self.sock.write(Message::text(r.to_string())).unwrap();
        }
        self.sock.flush().unwrap();
    }

    /// The first event (within `wait`) that `wanted` picks, skipping any other;
    /// `what` names it if none comes.
    fn next_where(&mut self, wait: Duration, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .try_recv(left)
                .unwrap_or_else(|| panic!("no {what} within the wait"));
            if wanted(&ev) {
                return ev;
            }
        }
    }

    /// The next event of type `kind`, skipping any other (presence, system
    /// events, ...).
    pub fn next_of(&mut self, kind: &str) -> Value {
        self.next_where(WAIT, &format!("{kind} event"), |ev| ev["type"] == kind)
    }

    /// Nothing of type `kind` arrives for a short while (other events may).
    pub fn none_of(&mut self, kind: &str) {
        let deadline = Instant::now() + QUIET;
        while let Some(ev) = self.try_recv(deadline.saturating_duration_since(Instant::now())) {
            assert_ne!(ev["type"], kind, "unexpected {ev}");
        }
    }

    /// Skips events until `user`'s `presence_change` (within `wait`), which must
    /// say `status`.
    pub fn presence_of(&mut self, user: &str, status: &str, wait: Duration) {
        let what = format!("presence_change {status} for {user}");
        let ev = self.next_where(wait, &what, |ev| {
            ev["type"] == "presence_change" && ev["user"] == user
        });
        assert_eq!(ev["status"], status, "{ev}");
    }

    /// Every event until `quiet` passes without one.
    pub fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        while let Some(ev) = self.try_recv(quiet) {
            got.push(ev);
        }
        got
    }

    /// Reads until the server's close frame; returns the text events that came
    /// first and the close frame. Any other end is a failure.
    pub fn events_until_close(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        self.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        let mut events = Vec::new();
        loop {
            match self.sock.read() {
                Ok(Message::Text(t)) => events.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(c)) => return (events, c),
                Ok(_) => {}
                Err(e) => panic!(
                    "expected a close frame after {} events, got: {e}",
                    events.len()
                ),
            }
        }
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

/// None of `conns` receives anything for [`QUIET`] (one wait for all of them).
#[track_caller]
pub fn all_silent(conns: &mut [&mut Ws]) {
    std::thread::sleep(QUIET);
    for (i, ws) in conns.iter_mut().enumerate() {
        if let Some(ev) = ws.try_recv(Duration::from_millis(10)) {
            panic!("connection #{i} expected no event, got {ev}");
        }
    }
}
