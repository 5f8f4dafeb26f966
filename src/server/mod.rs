//! The event loop: one thread, one `mio::Poll`, every socket.
//!
//! A turn of the loop: wait for readiness (or a worker's wake-up, or the 1-second
//! tick) → accept → read what is readable, within a budget per connection → apply
//! finished jobs → close what asked to close → write each connection's pending
//! output once → housekeeping (timeouts, pings, retention) once a second.
//!
//! Nothing here blocks: database and hashing work is handed to threads through
//! bounded queues, and socket writes that would block stay queued until the
//! socket is writable (WRITABLE interest is registered only while output waits).

pub mod hub;

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

use crate::auth::jwt::Tokens;
use crate::auth::password::HashPool;
use crate::config::Config;
use crate::conn::{Conn, ConnId, HttpState, Phase};
use crate::db::{Completion, CompletionSink, Db, DbError, DbSettings, Job, Ticket, Wakeup};
use crate::handlers;
use crate::history_cache::HistoryCache;
use crate::http;
use crate::metrics::Metrics;
use crate::state::State;
use crate::throttle::{LoginThrottle, RegisterBudget};
use crate::ws;
use hub::{CloseReason, Hub};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Complete WebSocket messages handled per connection per turn; the rest waits for
/// the next turn so one busy client cannot starve the others.
const READ_BUDGET: usize = 64;
/// Completions applied per turn before sockets get their turn again.
const COMPLETION_BUDGET: usize = 8192;
/// Stop reading a connection's requests while this much output is waiting for it.
const READ_PAUSE_BYTES: usize = 256 * 1024;
/// How long a connection that was told to close may take to take its last bytes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Pause after an accept error such as running out of file descriptors, so the
/// loop does not spin on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const TICK: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, io::Error),
    Address(String),
    Io(io::Error),
    Db(DbError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Address(a) => write!(f, "invalid listen address {a}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Db(e) => write!(f, "cannot prepare the database: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A server running on its own thread.
pub struct Running {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Asks for a graceful shutdown (returns at once).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wakeup.wake();
    }

    /// Waits until the server has shut down.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Graceful shutdown, then wait for it.
    pub fn stop(self) {
        self.request_stop();
        self.join();
    }

    /// Whether the loop thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            self.wakeup.wake();
            let _ = t.join();
        }
    }
}

/// Binds, connects to the database (applying the schema) and starts the loop.
pub fn start(config: Config, database_url: &str, jwt_secret: &[u8]) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let addr: SocketAddr = format!("{}:{}", bracket_v6(&config.host), config.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (config.host.as_str(), config.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| StartError::Address(config.host.clone()))
        })?;
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| StartError::Bind(addr, e))?;
    std_listener.set_nonblocking(true).map_err(StartError::Io)?;
    // std listens with a backlog of 128; a burst of connects wants more.
    // SAFETY: listen(2) on a socket we own; calling it again only resizes the backlog.
    unsafe {
        libc::listen(std_listener.as_raw_fd(), 4096);
    }
    let local = std_listener.local_addr().map_err(StartError::Io)?;
    let mut listener = TcpListener::from_std(std_listener);

    let poll = Poll::new().map_err(StartError::Io)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(StartError::Io)?;
    let waker = mio::Waker::new(poll.registry(), WAKER).map_err(StartError::Io)?;
    let wakeup = Arc::new(Wakeup::new(waker));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let sink = CompletionSink::new(done_tx, wakeup.clone());

    let db = Db::start(
        &DbSettings {
            url: database_url.to_string(),
            workers: config.db_workers,
            batch: config.db_batch,
        },
        sink.clone(),
    )
    .map_err(StartError::Db)?;
    let hasher = HashPool::start(config.hash_workers, sink);
    let tokens = Tokens::new(jwt_secret, config.jwt_algorithm, config.jwt_expire_minutes);

    let stop = Arc::new(AtomicBool::new(false));
    let login_throttle = LoginThrottle::new(
        config.login_max_failures,
        config.login_max_failures_per_addr,
        config.login_window,
    );
    let register_budget = RegisterBudget::from_config(&config);
    let per_room = match config.max_logs_per_room {
        0 => crate::handlers::history::MAX_LIMIT as usize,
        n => (n as usize).min(crate::handlers::history::MAX_LIMIT as usize),
    };
    let history = HistoryCache::new(per_room, config.history_cache_entries);
    let server = Server {
        poll,
        listener: Some(listener),
        hub: Hub {
            conns: Slab::with_capacity(1024),
            state: State::default(),
            db,
            hasher,
            tokens,
            config,
            metrics: Metrics::default(),
            login_throttle,
            register_budget,
            history,
            dirty: Vec::new(),
            close_soon: Vec::new(),
            again: Vec::new(),
            outstanding: 0,
            started: Instant::now(),
        },
        completions: done_rx,
        wakeup: wakeup.clone(),
        stop: stop.clone(),
        next_gen: 1,
        accept_paused_until: None,
        lingering: Vec::new(),
        draining: false,
    };
    let thread = std::thread::Builder::new()
        .name("klav-loop".into())
        .spawn(move || server.run())
        .map_err(StartError::Io)?;
    Ok(Running {
        addr: local,
        stop,
        wakeup,
        thread: Some(thread),
    })
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    hub: Hub,
    completions: Receiver<Completion>,
    wakeup: Arc<Wakeup>,
    stop: Arc<AtomicBool>,
    next_gen: u64,
    accept_paused_until: Option<Instant>,
    /// Connections told to close, with the time by which they are dropped anyway.
    lingering: Vec<(ConnId, Instant)>,
    /// Shutting down: no new requests are read.
    draining: bool,
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_prune = Instant::now() + self.hub.config.retention_interval;
        let mut drain_deadline: Option<Instant> = None;
        crate::log!(Info, "serving");
        loop {
            let now = Instant::now();
            let timeout = if !self.hub.again.is_empty() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::log!(Error, "poll failed: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(slot) => {
                        if ev.is_writable() {
                            self.hub.dirty.push(slot);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if let Some(id) = self.hub.conns.get(slot).map(|c| c.id) {
                                self.on_readable(id);
                            }
                        }
                    }
                }
            }
            self.drain_completions();
            let again = std::mem::take(&mut self.hub.again);
            for id in again {
                self.on_readable(id);
            }
            self.process_closes();
            self.flush_dirty();

            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.housekeeping(now);
                if now >= next_prune {
                    next_prune = now + self.hub.config.retention_interval;
                    self.retention();
                }
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept();
            }
            if drain_deadline.is_none() && self.stop.load(Ordering::Acquire) {
                drain_deadline = Some(now + self.hub.config.shutdown_timeout);
                self.begin_shutdown();
            }
            if let Some(deadline) = drain_deadline {
                if self.shutdown_step(now >= deadline) {
                    break;
                }
                next_tick = next_tick.min(now + Duration::from_millis(20));
            }
        }
        crate::log!(Info, "event loop stopped");
        // Workers finish what is queued (the writer commits it), then stop.
        let Server { hub, .. } = self;
        let Hub { db, hasher, .. } = hub;
        db.shutdown();
        hasher.shutdown();
    }

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    self.hub.metrics.accepted += 1;
                    let _ = stream.set_nodelay(true);
                    let entry = self.hub.conns.vacant_entry();
                    let slot = entry.key();
                    let id = ConnId {
                        slot,
                        gen: self.next_gen,
                    };
                    self.next_gen += 1;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(slot), Interest::READABLE)
                    {
                        crate::log!(Warn, "cannot register a connection: {e}");
                        continue;
                    }
                    entry.insert(Conn {
                        id,
                        stream,
                        peer,
                        phase: Phase::Http(HttpState::default()),
                        out: Default::default(),
                        writable_registered: false,
                        closing: None,
                        read_paused: false,
                        since: Instant::now(),
                    });
                    // Over the connection cap: answer 503 and close.
                    if self.hub.conns.len() > self.hub.config.max_connections {
                        self.hub
                            .send_bytes(id, &http::error(503, "too many connections", false));
                        self.hub.conn_mut(id).expect("just inserted").closing =
                            Some(CloseReason::HttpDone);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically EMFILE/ENFILE. Pending connections stay in the
                    // backlog; retry shortly instead of spinning on readiness.
                    crate::log!(Warn, "accept failed: {e}; pausing accepts briefly");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
    }

    fn on_readable(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conn_mut(id) else {
            return;
        };
        if conn.closing.is_some() {
            // Draining to close: discard input so the socket does not stay readable.
            let mut sink = [0u8; 4096];
            loop {
                match conn.stream.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            return;
        }
        if conn.read_paused {
            return;
        }
        match conn.phase {
            Phase::Http(_) => self.read_http(id),
            Phase::Upgrading { .. } | Phase::Closed => {}
            Phase::Ws(_) => self.read_ws(id),
        }
    }

    fn read_http(&mut self, id: ConnId) {
        let Some(conn) = self.hub.conn_mut(id) else {
            return;
        };
        let Phase::Http(st) = &mut conn.phase else {
            return;
        };
        let mut eof = false;
        let mut chunk = [0u8; 16 * 1024];
        // Read no more than one maximal request ahead.
        while st.buf.len() <= http::MAX_HEAD + http::MAX_BODY {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if st.buf.is_empty() && st.pending.is_none() {
                        conn.since = Instant::now();
                    }
                    st.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        handlers::http::process(&mut self.hub, id);
        if eof {
            // The peer is done sending. Finish what it asked (a pending request is
            // answered, then the socket closes), or close now.
            if let Some(conn) = self.hub.conn_mut(id) {
                let busy = match &conn.phase {
                    Phase::Http(st) => st.pending.is_some(),
                    Phase::Upgrading { .. } => true,
                    Phase::Ws(_) | Phase::Closed => false,
                };
                if busy || !conn.out.is_empty() {
                    conn.closing.get_or_insert(CloseReason::Peer);
                    if matches!(conn.phase, Phase::Upgrading { .. }) {
                        // The client is gone; an upgrade for it is pointless.
                        self.hub.close(id, CloseReason::Peer);
                    }
                } else {
                    self.hub.close(id, CloseReason::Peer);
                }
            }
        }
    }

    fn read_ws(&mut self, id: ConnId) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.hub.conn_mut(id) else {
                return;
            };
            if conn.closing.is_some() || conn.read_paused {
                return;
            }
            let Phase::Ws(ws) = &mut conn.phase else {
                return;
            };
            let mut io = ws::Io {
                stream: &mut conn.stream,
                out: &mut conn.out,
            };
            let result = ws.ctx.read(&mut io);
            if !conn.out.is_empty() {
                // tungstenite queued a pong or a close reply.
                self.hub.dirty.push(id.slot);
            }
            match result {
                Ok(msg) => {
                    handlers::on_ws_message(&mut self.hub, id, msg);
                    if self.hub.close_soon.iter().any(|(c, _)| *c == id) {
                        // Told to close (e.g. a flood): take no further requests.
                        return;
                    }
                }
                Err(e) => {
                    self.on_ws_error(id, e);
                    return;
                }
            }
        }
        // Budget spent: input may remain buffered; come back next turn.
        self.hub.again.push(id);
    }

    fn on_ws_error(&mut self, id: ConnId, e: tungstenite::Error) {
        use tungstenite::error::{CapacityError, Error as WsError};
        match e {
            WsError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                self.hub.close(id, CloseReason::TooBig)
            }
            WsError::Capacity(_) => self.hub.close(id, CloseReason::TooBig),
            WsError::Utf8(_) => self.hub.close(id, CloseReason::BadUtf8),
            WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed => {
                // The close handshake finished (tungstenite queued its reply) or the
                // peer vanished: flush what is queued, then close.
                if let Some(conn) = self.hub.conn_mut(id) {
                    conn.closing.get_or_insert(CloseReason::Peer);
                    self.hub.dirty.push(id.slot);
                }
                self.hub.close(id, CloseReason::Peer);
            }
            WsError::Protocol(_) => self.hub.close(id, CloseReason::Protocol),
            _ => self.hub.close(id, CloseReason::Error),
        }
    }

    fn drain_completions(&mut self) {
        self.wakeup.reset();
        for _ in 0..COMPLETION_BUDGET {
            match self.completions.try_recv() {
                Ok(c) => {
                    self.hub.outstanding = self.hub.outstanding.saturating_sub(1);
                    handlers::on_completion(&mut self.hub, c);
                }
                Err(_) => return,
            }
        }
        // More are waiting: make sure the next poll returns at once.
        self.wakeup.wake();
    }

    /// Applies the close requests gathered during this turn.
    fn process_closes(&mut self) {
        if self.hub.close_soon.is_empty() {
            return;
        }
        // One close per connection: a fan-out that overflows a slow consumer asks
        // once per frame; the first reason stands.
        let mut done = std::collections::HashSet::new();
        while !self.hub.close_soon.is_empty() {
            let batch = std::mem::take(&mut self.hub.close_soon);
            for (id, reason) in batch {
                if done.insert(id) {
                    self.close_conn(id, reason);
                }
            }
        }
    }

    fn close_conn(&mut self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.hub.conn_mut(id) else {
            return;
        };
        match reason {
            CloseReason::SlowConsumer | CloseReason::Flood | CloseReason::TooBig => {
                crate::log!(
                    Warn,
                    "closing a connection from {}: {}",
                    conn.peer,
                    reason.label()
                )
            }
            CloseReason::Protocol | CloseReason::BadUtf8 | CloseReason::Error => {
                crate::log!(
                    Debug,
                    "closing a connection from {}: {}",
                    conn.peer,
                    reason.label()
                )
            }
            _ => {}
        }
        let code = match reason {
            CloseReason::SlowConsumer | CloseReason::Flood => Some(CloseCode::Policy),
            CloseReason::TooBig => Some(CloseCode::Size),
            CloseReason::BadUtf8 => Some(CloseCode::Invalid),
            CloseReason::Protocol => Some(CloseCode::Protocol),
            CloseReason::Shutdown => Some(CloseCode::Away),
            CloseReason::Timeout => Some(CloseCode::Away),
            _ => None,
        };
        let graceful = match (&mut conn.phase, code) {
            (Phase::Ws(ws), Some(code)) => {
                if reason == CloseReason::SlowConsumer {
                    conn.out.truncate_unstarted();
                }
                let mut io = ws::Io {
                    stream: &mut conn.stream,
                    out: &mut conn.out,
                };
                let reason_text = match reason {
                    CloseReason::SlowConsumer => "output buffer limit exceeded",
                    CloseReason::Flood => "request rate limit exceeded",
                    CloseReason::TooBig => "message too big",
                    CloseReason::Shutdown => "server shutting down",
                    CloseReason::Timeout => "idle timeout",
                    _ => "",
                };
                let _ = ws.ctx.close(
                    &mut io,
                    Some(CloseFrame {
                        code,
                        reason: reason_text.into(),
                    }),
                );
                true
            }
            // Output already queued (a final HTTP response, a close reply) goes first.
            (_, _) => conn.closing.is_some() && reason != CloseReason::Shutdown,
        };
        if graceful && !conn.out.is_empty() {
            conn.closing = Some(reason);
            self.lingering.push((id, Instant::now() + CLOSE_LINGER));
            self.hub.dirty.push(id.slot);
            // The user goes offline now, not when the last bytes leave.
            handlers::session::on_closed(&mut self.hub, id);
            return;
        }
        conn.closing = Some(reason);
        self.remove(id);
    }

    /// Drops a connection for good.
    fn remove(&mut self, id: ConnId) {
        handlers::session::on_closed(&mut self.hub, id);
        if let Some(conn) = self.hub.conn_mut(id) {
            let reason = conn.closing.unwrap_or(CloseReason::Peer);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.hub.conns.remove(id.slot);
            self.hub.metrics.closed(reason);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.hub.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for slot in dirty.drain(..) {
            let Some(conn) = self.hub.conns.get_mut(slot) else {
                continue;
            };
            let id = conn.id;
            match conn.out.write_to(&mut conn.stream) {
                Ok(true) => {
                    if conn.writable_registered {
                        conn.writable_registered = false;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(slot),
                            Interest::READABLE,
                        );
                    }
                    if conn.closing.is_some() {
                        self.remove(id);
                        continue;
                    }
                    handlers::session::on_flushed(&mut self.hub, id);
                    let draining = self.draining;
                    if let Some(conn) = self.hub.conn_mut(id) {
                        // While shutting down, reading stays paused for good.
                        if conn.read_paused && !draining {
                            conn.read_paused = false;
                            self.hub.again.push(id);
                        }
                    }
                }
                Ok(false) => {
                    if !conn.writable_registered {
                        conn.writable_registered = true;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(slot),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    if conn.out.len() > READ_PAUSE_BYTES {
                        conn.read_paused = true;
                    } else if conn.read_paused && !self.draining {
                        conn.read_paused = false;
                        self.hub.again.push(id);
                    }
                    handlers::session::on_flushed(&mut self.hub, id);
                }
                Err(_) => {
                    conn.closing.get_or_insert(CloseReason::Error);
                    self.remove(id);
                }
            }
        }
        self.hub.dirty = dirty;
    }

    /// Once a second: timeouts, pings, lingering closes.
    fn housekeeping(&mut self, now: Instant) {
        let http_timeout = self.hub.config.http_timeout;
        let ping = self.hub.config.ws_ping_interval;
        let mut expired = Vec::new();
        let mut to_ping = Vec::new();
        for (_, conn) in self.hub.conns.iter_mut() {
            if conn.closing.is_some() {
                continue;
            }
            match &mut conn.phase {
                Phase::Http(st) => {
                    if st.pending.is_none() && now.duration_since(conn.since) > http_timeout {
                        expired.push(conn.id);
                    }
                }
                Phase::Upgrading { .. } | Phase::Closed => {}
                Phase::Ws(ws) => match ws.ping_sent {
                    Some(sent) if now.duration_since(sent) > ping => expired.push(conn.id),
                    Some(_) => {}
                    None if now.duration_since(ws.last_frame) > ping => {
                        ws.ping_sent = Some(now);
                        to_ping.push(conn.id);
                    }
                    None => {}
                },
            }
        }
        for id in expired {
            // HTTP: just close; WebSocket: close 1001 (the peer stopped answering).
            self.close_conn(id, CloseReason::Timeout);
        }
        for id in to_ping {
            // An unmasked, empty ping frame.
            self.hub.send_bytes(id, &[0x89, 0x00]);
        }
        self.hub.login_throttle.sweep(now);
        self.hub.register_budget.sweep(now);
        let members = &self.hub.state.room_members;
        self.hub
            .history
            .retain_rooms(|room| members.contains_key(room));
        let lingering = std::mem::take(&mut self.lingering);
        for (id, deadline) in lingering {
            if self.hub.conn(id).is_none() {
                continue;
            }
            if now >= deadline {
                self.remove(id);
            } else {
                self.lingering.push((id, deadline));
            }
        }
        self.flush_dirty();
    }

    fn retention(&mut self) {
        let keep = self.hub.config.max_logs_per_room;
        if keep == 0 || self.hub.state.touched_rooms.is_empty() {
            return;
        }
        let rooms: Vec<String> = self.hub.state.touched_rooms.drain().collect();
        if !self.hub.submit(
            Ticket::internal(),
            Job::Prune {
                rooms: rooms.clone(),
                keep,
            },
        ) {
            // Try again next time.
            self.hub.state.touched_rooms.extend(rooms);
        }
    }

    fn begin_shutdown(&mut self) {
        crate::log!(
            Info,
            "shutting down: no new connections; finishing queued work"
        );
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        // Stop taking requests; what was accepted is finished below.
        self.draining = true;
        for (_, conn) in self.hub.conns.iter_mut() {
            conn.read_paused = true;
        }
    }

    /// One step of a graceful shutdown; true when it is complete.
    fn shutdown_step(&mut self, deadline_passed: bool) -> bool {
        if self.hub.outstanding > 0 && !deadline_passed {
            return false;
        }
        let open: Vec<ConnId> = self
            .hub
            .conns
            .iter()
            .filter(|(_, c)| c.closing.is_none())
            .map(|(_, c)| c.id)
            .collect();
        for id in open {
            self.close_conn(id, CloseReason::Shutdown);
        }
        self.flush_dirty();
        if self.hub.conns.is_empty() || deadline_passed {
            return true;
        }
        false
    }
}
