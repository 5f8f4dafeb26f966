//! The client event loop: one [`Net`] per thread owns a mio `Poll` and many
//! non-blocking WebSocket connections, and a scenario's [`Driver`] reacts to what
//! happens on them. A thread per connection could not hold the `connect` scenario's
//! tens of thousands of sockets.
//!
//! A connection goes Queued → Connecting (TCP) → Handshake (our own `GET /ws`, the
//! `101` parsed with httparse) → WebSocket (a `tungstenite` `WebSocketContext` in the
//! client role, which masks our frames and answers pings) → gone. Frames the context
//! writes land in the connection's own output buffer, which the loop flushes once per
//! turn, so tungstenite never sees a blocked write.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use crate::nodes::Dests;

/// Index of a connection inside its thread's [`Net`].
pub(crate) type ConnId = usize;

/// Largest `101` response head accepted.
const MAX_HANDSHAKE_HEAD: usize = 16 * 1024;
/// How often handshake and close deadlines are checked.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// Why a connection attempt failed or an open connection ended without us asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Refused,
    /// The TCP connect did not complete in time.
    ConnectTimeout,
    /// Connected, but no `101` in time.
    HandshakeTimeout,
    /// No local port left for this destination (spread over more `--dest-addrs`).
    AddrNotAvailable,
    /// Out of file descriptors.
    TooManyOpenFiles,
    Reset,
    /// The server closed the TCP connection (before the `101`, or after it without a
    /// closing handshake).
    Eof,
    /// The server closed the WebSocket with a closing handshake.
    ClosedByServer,
    /// The upgrade was answered with this status instead of `101`.
    Http(u16),
    /// A `101` that is not a valid WebSocket upgrade.
    BadUpgrade,
    /// A frame that breaks the WebSocket protocol.
    Protocol,
    Io(io::ErrorKind),
}

impl Failure {
    /// A short stable label used as a key in failure counts.
    pub fn label(&self) -> String {
        match self {
            Failure::Refused => "connect_refused".into(),
            Failure::ConnectTimeout => "connect_timeout".into(),
            Failure::HandshakeTimeout => "handshake_timeout".into(),
            Failure::AddrNotAvailable => "addr_not_available".into(),
            Failure::TooManyOpenFiles => "too_many_open_files".into(),
            Failure::Reset => "reset".into(),
            Failure::Eof => "eof".into(),
            Failure::ClosedByServer => "closed_by_server".into(),
            Failure::Http(s) => format!("http_{s}"),
            Failure::BadUpgrade => "bad_upgrade".into(),
            Failure::Protocol => "ws_protocol".into(),
            Failure::Io(k) => format!("io_{k:?}").to_ascii_lowercase(),
        }
    }

    fn from_io(e: &io::Error) -> Failure {
        if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
            return Failure::TooManyOpenFiles;
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::AddrNotAvailable => Failure::AddrNotAvailable,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Reset,
            io::ErrorKind::TimedOut => Failure::ConnectTimeout,
            io::ErrorKind::UnexpectedEof => Failure::Eof,
            k => Failure::Io(k),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closed {
    /// It never opened.
    Failed(Failure),
    /// It was open and ended without us asking.
    Lost(Failure),
    /// We closed it (or gave up on it).
    ByUs,
}

/// What the loop should do after a tick.
pub(crate) enum Flow {
    /// Call `on_tick` again at this time (or earlier, never later).
    Wake(Instant),
    /// This thread's part of the run is over.
    Done,
}

/// A scenario's reaction to connection events. `tag` is the driver's own index,
/// given to [`Net::connect`].
pub(crate) trait Driver {
    fn on_open(&mut self, net: &mut Net, id: ConnId, tag: usize, took: Duration, now: Instant);
    fn on_text(&mut self, net: &mut Net, id: ConnId, tag: usize, text: &str, now: Instant);
    fn on_closed(&mut self, net: &mut Net, id: ConnId, tag: usize, how: Closed, now: Instant);
    fn on_tick(&mut self, net: &mut Net, now: Instant) -> Flow;
}

/// Where and how a thread connects.
#[derive(Debug, Clone)]
pub(crate) struct NetConfig {
    /// WebSocket destinations (with each one's `Host` header); a connection picks
    /// one by the index it is given.
    pub dests: Arc<Dests>,
    /// Connects and handshakes in progress at once on this thread.
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    /// After we send a close frame, how long to wait for the server's before dropping.
    pub close_timeout: Duration,
    /// The loop ends at this time whatever the driver says: a safety net.
    pub deadline: Instant,
}

enum State {
    Queued,
    Connecting,
    Handshake {
        accept: String,
        buf: Vec<u8>,
    },
    Ws {
        ctx: Box<WebSocketContext>,
        /// Set once we sent a close frame.
        closing_deadline: Option<Instant>,
    },
    Gone,
}

struct Conn {
    tag: usize,
    dest: SocketAddr,
    /// `Host` header of the upgrade request: the node's address as given.
    host: Arc<str>,
    token: Arc<str>,
    started: Instant,
    stream: Option<TcpStream>,
    state: State,
    out: Vec<u8>,
    out_pos: usize,
    dirty: bool,
}

enum Note {
    Open {
        id: ConnId,
        tag: usize,
        took: Duration,
    },
    Text {
        id: ConnId,
        tag: usize,
        text: Utf8Bytes,
    },
    Closed {
        id: ConnId,
        tag: usize,
        how: Closed,
    },
}

/// Writes go to the connection's output buffer; reads come from the socket.
struct Adapter<'a> {
    stream: &'a mut TcpStream,
    out: &'a mut Vec<u8>,
}

impl Read for Adapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Adapter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One thread's connections and poller.
pub(crate) struct Net {
    poll: Poll,
    cfg: NetConfig,
    conns: Slab<Conn>,
    queue: VecDeque<ConnId>,
    handshaking: usize,
    notes: Vec<Note>,
    dirty: Vec<ConnId>,
    reap: Vec<ConnId>,
    ws_config: WebSocketConfig,
}

impl Net {
    pub fn new(cfg: NetConfig) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            cfg,
            conns: Slab::new(),
            queue: VecDeque::new(),
            handshaking: 0,
            notes: Vec::new(),
            dirty: Vec::new(),
            reap: Vec::new(),
            // Small read buffers: one is allocated per connection. History replies can
            // be large, so messages may be up to 16 MiB.
            ws_config: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
                .max_message_size(Some(16 << 20))
                .max_frame_size(Some(16 << 20)),
        })
    }

    /// Queues a WebSocket connection to destination `dest` (a flat index into the
    /// destination table, see [`Dests::pick`]) authenticated by `token`. The attempt
    /// starts as soon as fewer than `max_handshakes` are in progress; its outcome
    /// arrives as `on_open` or `on_closed(Failed)`.
    pub fn connect(&mut self, dest: usize, token: Arc<str>, tag: usize) -> ConnId {
        let (dest, host) = self.cfg.dests.get(dest);
        let id = self.conns.insert(Conn {
            tag,
            dest,
            host,
            token,
            started: Instant::now(),
            stream: None,
            state: State::Queued,
            out: Vec::new(),
            out_pos: 0,
            dirty: false,
        });
        self.queue.push_back(id);
        id
    }

    /// Sends one text frame; false if the connection is not open.
    pub fn send(&mut self, id: ConnId, text: String) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let (
            State::Ws {
                ctx,
                closing_deadline: None,
            },
            Some(stream),
        ) = (&mut conn.state, conn.stream.as_mut())
        else {
            return false;
        };
        let mut io = Adapter {
            stream,
            out: &mut conn.out,
        };
        if ctx.write(&mut io, Message::text(text)).is_err() {
            return false;
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id);
        }
        true
    }

    /// Closes a connection: an open one with a closing handshake (its `on_closed`
    /// comes when the server answers, or after `close_timeout`), any other at once.
    pub fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match (&mut conn.state, conn.stream.as_mut()) {
            (
                State::Ws {
                    ctx,
                    closing_deadline,
                },
                Some(stream),
            ) => {
                if closing_deadline.is_some() {
                    return;
                }
                let mut io = Adapter {
                    stream,
                    out: &mut conn.out,
                };
                let _ = ctx.close(&mut io, None);
                *closing_deadline = Some(Instant::now() + self.cfg.close_timeout);
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(id);
                }
            }
            (State::Gone, _) => {}
            _ => self.end(id, Closed::ByUs),
        }
    }

    /// Runs the loop until the driver is done or the deadline passes.
    pub fn run<D: Driver>(&mut self, driver: &mut D) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now();
        let mut next_scan = Instant::now() + SCAN_INTERVAL;
        loop {
            let now = Instant::now();
            if now >= self.cfg.deadline {
                return Ok(());
            }
            if now >= next_tick {
                match driver.on_tick(self, now) {
                    Flow::Done => return Ok(()),
                    Flow::Wake(at) => next_tick = at,
                }
            }
            // Callbacks may queue connects, sends and closes, whose failures are
            // callbacks again: settle all of it before sleeping.
            loop {
                self.start_queued();
                self.deliver(driver);
                self.flush_dirty();
                if self.notes.is_empty() {
                    break;
                }
            }
            for id in self.reap.drain(..) {
                self.conns.remove(id);
            }

            let now = Instant::now();
            if now >= next_scan {
                self.scan_deadlines(now);
                next_scan = now + SCAN_INTERVAL;
            }
            let wake = next_tick.min(next_scan).min(self.cfg.deadline);
            let timeout = if self.notes.is_empty() {
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                self.on_event(ev.token().0, ev.is_writable());
            }
        }
    }

    fn deliver<D: Driver>(&mut self, driver: &mut D) {
        while !self.notes.is_empty() {
            let notes = std::mem::take(&mut self.notes);
            let now = Instant::now();
            for note in notes {
                match note {
                    Note::Open { id, tag, took } => driver.on_open(self, id, tag, took, now),
                    Note::Text { id, tag, text } => {
                        driver.on_text(self, id, tag, text.as_str(), now)
                    }
                    Note::Closed { id, tag, how } => driver.on_closed(self, id, tag, how, now),
                }
            }
        }
    }

    fn start_queued(&mut self) {
        while self.handshaking < self.cfg.max_handshakes {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if !matches!(conn.state, State::Queued) {
                continue;
            }
            conn.started = Instant::now();
            match TcpStream::connect(conn.dest) {
                Ok(mut stream) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(id),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.end(id, Closed::Failed(Failure::from_io(&e)));
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    conn.stream = Some(stream);
                    conn.state = State::Connecting;
                    self.handshaking += 1;
                }
                Err(e) => self.end(id, Closed::Failed(Failure::from_io(&e))),
            }
        }
    }

    fn on_event(&mut self, id: ConnId, writable: bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let outcome = match conn.state {
            State::Connecting => check_connected(conn),
            State::Handshake { .. } => None,
            State::Ws { .. } => read_ws(conn, id, &mut self.notes),
            State::Queued | State::Gone => return,
        };
        if let Some(how) = outcome {
            self.end(id, how);
            return;
        }
        let conn = &mut self.conns[id];
        if matches!(conn.state, State::Handshake { .. }) {
            match read_handshake(conn, &self.ws_config) {
                Ok(false) => {}
                Ok(true) => {
                    self.handshaking -= 1;
                    let took = conn.started.elapsed();
                    self.notes.push(Note::Open {
                        id,
                        tag: conn.tag,
                        took,
                    });
                    // Frames that came with the 101, or right after it.
                    if let Some(how) = read_ws(conn, id, &mut self.notes) {
                        self.end(id, how);
                        return;
                    }
                }
                Err(how) => {
                    self.end(id, how);
                    return;
                }
            }
        }
        let conn = &mut self.conns[id];
        if (writable || conn.out.len() > conn.out_pos) && !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            conn.dirty = false;
            let Some(stream) = conn.stream.as_mut() else {
                continue;
            };
            let mut failed = None;
            while conn.out_pos < conn.out.len() {
                match stream.write(&conn.out[conn.out_pos..]) {
                    Ok(0) => {
                        failed = Some(Failure::Eof);
                        break;
                    }
                    Ok(n) => conn.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(Failure::from_io(&e));
                        break;
                    }
                }
            }
            if conn.out_pos == conn.out.len() {
                conn.out.clear();
                conn.out_pos = 0;
            } else if conn.out_pos > 64 * 1024 {
                conn.out.drain(..conn.out_pos);
                conn.out_pos = 0;
            }
            if let Some(f) = failed {
                let how = match conn.state {
                    State::Ws {
                        closing_deadline: Some(_),
                        ..
                    } => Closed::ByUs,
                    State::Ws { .. } => Closed::Lost(f),
                    _ => Closed::Failed(f),
                };
                self.end(id, how);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn scan_deadlines(&mut self, now: Instant) {
        let timeout = self.cfg.handshake_timeout;
        let expired: Vec<(ConnId, Closed)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match &c.state {
                State::Connecting if now >= c.started + timeout => {
                    Some((id, Closed::Failed(Failure::ConnectTimeout)))
                }
                State::Handshake { .. } if now >= c.started + timeout => {
                    Some((id, Closed::Failed(Failure::HandshakeTimeout)))
                }
                State::Ws {
                    closing_deadline: Some(d),
                    ..
                } if now >= *d => Some((id, Closed::ByUs)),
                _ => None,
            })
            .collect();
        for (id, how) in expired {
            self.end(id, how);
        }
    }

    /// Ends a connection: closes its socket now, tells the driver, frees the slot
    /// after the current batch (so a stale event cannot reach a reused slot).
    fn end(&mut self, id: ConnId, how: Closed) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if matches!(conn.state, State::Gone) {
            return;
        }
        if matches!(conn.state, State::Connecting | State::Handshake { .. }) {
            self.handshaking -= 1;
        }
        conn.state = State::Gone;
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        conn.out = Vec::new();
        self.notes.push(Note::Closed {
            id,
            tag: conn.tag,
            how,
        });
        self.reap.push(id);
    }
}

/// After a writability (or error) event on a connecting socket: connected → send the
/// upgrade request; refused → the failure; not yet → nothing.
fn check_connected(conn: &mut Conn) -> Option<Closed> {
    let stream = conn.stream.as_mut()?;
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Closed::Failed(Failure::from_io(&e))),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
        Err(e) => return Some(Closed::Failed(Failure::from_io(&e))),
    }
    let key = generate_key();
    let accept = derive_accept_key(key.as_bytes());
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
        conn.host, conn.token
    );
    conn.out.extend_from_slice(request.as_bytes());
    conn.state = State::Handshake {
        accept,
        buf: Vec::with_capacity(512),
    };
    None
}

/// Reads what is available of the `101`. `Ok(true)`: the connection is now a WebSocket.
fn read_handshake(conn: &mut Conn, config: &WebSocketConfig) -> Result<bool, Closed> {
    let State::Handshake { accept, buf } = &mut conn.state else {
        return Ok(false);
    };
    let Some(stream) = conn.stream.as_mut() else {
        return Ok(false);
    };
    let mut chunk = [0u8; 4096];
    let mut eof = false;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Closed::Failed(Failure::from_io(&e))),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let status = resp.code.unwrap_or(0);
            if status != 101 {
                return Err(Closed::Failed(Failure::Http(status)));
            }
            let ok = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes()
            });
            if !ok {
                return Err(Closed::Failed(Failure::BadUpgrade));
            }
            let rest = buf[head_len..].to_vec();
            conn.state = State::Ws {
                ctx: Box::new(WebSocketContext::from_partially_read(
                    rest,
                    Role::Client,
                    Some(*config),
                )),
                closing_deadline: None,
            };
            Ok(true)
        }
        Ok(httparse::Status::Partial) if eof => Err(Closed::Failed(Failure::Eof)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HANDSHAKE_HEAD => {
            Err(Closed::Failed(Failure::BadUpgrade))
        }
        Ok(httparse::Status::Partial) => Ok(false),
        Err(_) => Err(Closed::Failed(Failure::BadUpgrade)),
    }
}

/// Reads every complete frame available; text frames become notes.
fn read_ws(conn: &mut Conn, id: ConnId, notes: &mut Vec<Note>) -> Option<Closed> {
    let State::Ws {
        ctx,
        closing_deadline,
    } = &mut conn.state
    else {
        return None;
    };
    let stream = conn.stream.as_mut()?;
    let by_us = closing_deadline.is_some();
    let mut io = Adapter {
        stream,
        out: &mut conn.out,
    };
    loop {
        match ctx.read(&mut io) {
            Ok(Message::Text(text)) => notes.push(Note::Text {
                id,
                tag: conn.tag,
                text,
            }),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if by_us {
                    return Some(Closed::ByUs);
                }
                return Some(Closed::Lost(match e {
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                        Failure::ClosedByServer
                    }
                    tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ) => Failure::Eof,
                    tungstenite::Error::Io(e) => Failure::from_io(&e),
                    _ => Failure::Protocol,
                }));
            }
        }
    }
}
