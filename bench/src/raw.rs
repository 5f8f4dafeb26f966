//! Byte-level client connections for the `abuse` attacks. [`crate::net`] speaks
//! WebSocket the way a well-behaved client does; an attack needs what it never does:
//! bytes written without reading the answers, a request left half-sent, a fragmented
//! message never finished. Here a connection is plain HTTP or a WebSocket whose
//! frames the caller builds itself ([`client_frame`]); what comes back is read only
//! while the connection is `reading`, and parsed just enough to tell how the server
//! answered (HTTP status, WebSocket close code) and to answer its pings.
//!
//! One [`RawNet`] per thread, like [`crate::net::Net`]: a mio poller and thousands of
//! non-blocking sockets. Outgoing bytes are shared `Arc<[u8]>` chunks, so thousands
//! of connections sending the same 64 KiB cost the bench one copy of it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event as MioEvent;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

use crate::net::Flow;

pub(crate) type RawId = usize;

/// Bytes shared by many connections.
pub(crate) type Chunk = Arc<[u8]>;

/// Largest frame or response accepted from the server.
const MAX_INBOUND: usize = 16 << 20;
/// A response that came at most this long before the server closed is taken as the
/// reason it closed.
const LAST_WORD: Duration = Duration::from_secs(1);
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read from one connection per loop turn, so one fast sender cannot keep
/// the loop from the others and from its timers.
const READ_BUDGET: usize = 256 * 1024;

/// How a raw connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// It never opened: a connect error or the upgrade's HTTP status (`http_429`).
    NotOpened(String),
    /// The server ended it after it opened: `close_1008`, `http_413`, `eof`, `reset`.
    ByServer(String),
    /// We closed it.
    ByUs,
}

/// What an attack connection reacts to.
pub(crate) trait RawDriver {
    /// TCP connected (HTTP) or upgraded with `101` (WebSocket).
    fn on_open(&mut self, net: &mut RawNet, id: RawId, tag: usize, now: Instant);
    /// A complete text message (WebSocket).
    fn on_text(&mut self, net: &mut RawNet, id: RawId, tag: usize, text: &str, now: Instant);
    /// An HTTP response's status (HTTP), or a close frame's code (WebSocket).
    fn on_status(&mut self, tag: usize, label: String);
    /// The connection is gone; `sent` is how many bytes it wrote in all.
    fn on_end(&mut self, net: &mut RawNet, tag: usize, end: End, sent: u64, now: Instant);
    fn on_tick(&mut self, net: &mut RawNet, now: Instant) -> Flow;
}

/// HTTP, or a WebSocket authenticated with this token.
pub(crate) enum Proto {
    Http,
    Ws(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Connecting,
    Upgrading,
    Open,
    Gone,
}

struct RawConn {
    tag: usize,
    dest: SocketAddr,
    ws: Option<Arc<str>>,
    accept: String,
    phase: Phase,
    stream: Option<TcpStream>,
    started: Instant,
    reading: bool,
    out: VecDeque<Chunk>,
    out_pos: usize,
    pending: usize,
    inbuf: Vec<u8>,
    message: Vec<u8>,
    last_status: Option<(String, Instant)>,
    dirty: bool,
    sent: u64,
}

enum Note {
    Open(RawId, usize),
    Text(RawId, usize, String),
    Status(usize, String),
    End(usize, End, u64),
}

/// One thread's raw connections.
pub(crate) struct RawNet {
    poll: Poll,
    dests: Arc<Vec<SocketAddr>>,
    host: String,
    max_handshakes: usize,
    handshake_timeout: Duration,
    deadline: Instant,
    conns: Slab<RawConn>,
    queue: VecDeque<RawId>,
    handshaking: usize,
    notes: Vec<Note>,
    dirty: Vec<RawId>,
    to_read: Vec<RawId>,
    reap: Vec<RawId>,
}

impl RawNet {
    pub fn new(
        dests: Arc<Vec<SocketAddr>>,
        host: String,
        max_handshakes: usize,
        handshake_timeout: Duration,
        deadline: Instant,
    ) -> io::Result<RawNet> {
        Ok(RawNet {
            poll: Poll::new()?,
            dests,
            host,
            max_handshakes: max_handshakes.max(1),
            handshake_timeout,
            deadline,
            conns: Slab::new(),
            queue: VecDeque::new(),
            handshaking: 0,
            notes: Vec::new(),
            dirty: Vec::new(),
            to_read: Vec::new(),
            reap: Vec::new(),
        })
    }

    /// Queues a connection to destination `dest % dests`; `reading` says whether
    /// what the server sends is read once it is open.
    pub fn connect(&mut self, dest: usize, proto: Proto, reading: bool, tag: usize) -> RawId {
        let dest = self.dests[dest % self.dests.len()];
        let id = self.conns.insert(RawConn {
            tag,
            dest,
            ws: match proto {
                Proto::Http => None,
                Proto::Ws(t) => Some(t),
            },
            accept: String::new(),
            phase: Phase::Queued,
            stream: None,
            started: Instant::now(),
            reading,
            out: VecDeque::new(),
            out_pos: 0,
            pending: 0,
            inbuf: Vec::new(),
            message: Vec::new(),
            last_status: None,
            dirty: false,
            sent: 0,
        });
        self.queue.push_back(id);
        id
    }

    /// Queues bytes on an open connection; false if it is not open.
    pub fn send(&mut self, id: RawId, bytes: Chunk) -> bool {
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        if c.phase != Phase::Open {
            return false;
        }
        c.pending += bytes.len();
        c.out.push_back(bytes);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
        true
    }

    /// Bytes queued on a connection and not yet written to its socket.
    pub fn pending(&self, id: RawId) -> usize {
        self.conns.get(id).map_or(0, |c| c.pending)
    }

    /// Starts (or stops) reading what the server sends.
    pub fn set_reading(&mut self, id: RawId, reading: bool) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.reading && reading {
                self.to_read.push(id);
            }
            c.reading = reading;
        }
    }

    /// Drops one connection (no closing handshake); its end is reported as ours.
    pub fn close(&mut self, id: RawId) {
        self.end(id, End::ByUs);
    }

    /// Drops every connection at once (no closing handshake): the abuser leaves.
    pub fn drop_all(&mut self) {
        let ids: Vec<RawId> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.end(id, End::ByUs);
        }
    }

    /// Runs until the driver is done or the deadline passes.
    pub fn run<D: RawDriver>(&mut self, driver: &mut D) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now();
        let mut next_scan = Instant::now() + SCAN_INTERVAL;
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                self.drop_all();
                self.deliver(driver);
                return Ok(());
            }
            if now >= next_tick {
                match driver.on_tick(self, now) {
                    Flow::Done => {
                        self.drop_all();
                        self.deliver(driver);
                        return Ok(());
                    }
                    Flow::Wake(at) => next_tick = at,
                }
            }
            for id in std::mem::take(&mut self.to_read) {
                self.on_event(id, true, false, true);
            }
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
                self.scan_handshakes(now);
                next_scan = now + SCAN_INTERVAL;
            }
            let wake = if self.to_read.is_empty() {
                next_tick.min(next_scan).min(self.deadline)
            } else {
                now
            };
            match self
                .poll
                .poll(&mut events, Some(wake.saturating_duration_since(now)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                let (id, readable, writable, gone) = event_bits(ev);
                self.on_event(id, readable, writable, gone);
            }
        }
    }

    fn deliver<D: RawDriver>(&mut self, driver: &mut D) {
        while !self.notes.is_empty() {
            let now = Instant::now();
            for note in std::mem::take(&mut self.notes) {
                match note {
                    Note::Open(id, tag) => driver.on_open(self, id, tag, now),
                    Note::Text(id, tag, text) => driver.on_text(self, id, tag, &text, now),
                    Note::Status(tag, label) => driver.on_status(tag, label),
                    Note::End(tag, end, sent) => driver.on_end(self, tag, end, sent, now),
                }
            }
        }
    }

    fn start_queued(&mut self) {
        while self.handshaking < self.max_handshakes {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.phase != Phase::Queued {
                continue;
            }
            c.started = Instant::now();
            match TcpStream::connect(c.dest) {
                Ok(mut stream) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(id),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.end(id, End::NotOpened(io_label(&e)));
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    c.stream = Some(stream);
                    c.phase = Phase::Connecting;
                    self.handshaking += 1;
                }
                Err(e) => self.end(id, End::NotOpened(io_label(&e))),
            }
        }
    }

    fn on_event(&mut self, id: RawId, readable: bool, writable: bool, gone: bool) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        match c.phase {
            Phase::Queued | Phase::Gone => return,
            Phase::Connecting => {
                let stream = c.stream.as_mut().expect("connecting has a socket");
                match stream.take_error() {
                    Ok(Some(e)) | Err(e) => return self.end(id, End::NotOpened(io_label(&e))),
                    Ok(None) => {}
                }
                match stream.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => return self.end(id, End::NotOpened(io_label(&e))),
                }
                if let Some(token) = &c.ws {
                    let key = generate_key();
                    c.accept = derive_accept_key(key.as_bytes());
                    let req = format!(
                        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n",
                        self.host
                    );
                    c.out.push_back(Arc::from(req.into_bytes()));
                    c.phase = Phase::Upgrading;
                } else {
                    c.phase = Phase::Open;
                    self.handshaking -= 1;
                    self.notes.push(Note::Open(id, c.tag));
                }
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push(id);
                }
                return;
            }
            Phase::Upgrading => {
                let (eof, err) = loop {
                    match read_chunk(c) {
                        Got::Data(_) => {}
                        Got::Blocked => break (false, None),
                        Got::Eof => break (true, None),
                        Got::Failed(label) => break (false, Some(label)),
                    }
                };
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&c.inbuf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let ok = status == 101
                            && resp.headers.iter().any(|h| {
                                h.name.eq_ignore_ascii_case("sec-websocket-accept")
                                    && h.value == c.accept.as_bytes()
                            });
                        if !ok {
                            let label = if status == 101 {
                                "bad_upgrade".to_string()
                            } else {
                                format!("http_{status}")
                            };
                            return self.end(id, End::NotOpened(label));
                        }
                        c.inbuf.drain(..n);
                        c.phase = Phase::Open;
                        self.handshaking -= 1;
                        self.notes.push(Note::Open(id, c.tag));
                        // Frames that came with the 101 are handled on the next read.
                        if c.reading && !c.inbuf.is_empty() {
                            self.to_read.push(id);
                        }
                    }
                    Ok(httparse::Status::Partial) if !eof && err.is_none() => {}
                    Ok(httparse::Status::Partial) | Err(_) => {
                        let label = err.unwrap_or_else(|| "eof".to_string());
                        return self.end(id, End::NotOpened(label));
                    }
                }
                return;
            }
            Phase::Open => {}
        }
        if (readable && c.reading) || gone {
            let mut budget = READ_BUDGET;
            loop {
                let read = read_chunk(c);
                if let Some(end) = parse_inbound(c, id, &mut self.notes) {
                    return self.end(id, end);
                }
                let err = match read {
                    Got::Data(n) => {
                        budget = budget.saturating_sub(n);
                        if budget == 0 {
                            // More may be waiting: go on next turn, after the others.
                            self.to_read.push(id);
                            break;
                        }
                        continue;
                    }
                    Got::Blocked => break,
                    Got::Eof => None,
                    Got::Failed(label) => Some(label),
                };
                let recent = c
                    .last_status
                    .take()
                    .filter(|(_, at)| at.elapsed() <= LAST_WORD)
                    .map(|(l, _)| l);
                let label = recent.or(err).unwrap_or_else(|| "eof".to_string());
                return self.end(id, End::ByServer(label));
            }
        }
        if (writable || !c.out.is_empty()) && !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    fn flush_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            c.dirty = false;
            let Some(stream) = c.stream.as_mut() else {
                continue;
            };
            let mut failed = None;
            while let Some(chunk) = c.out.front() {
                match stream.write(&chunk[c.out_pos..]) {
                    Ok(0) => {
                        failed = Some("eof".to_string());
                        break;
                    }
                    Ok(n) => {
                        c.sent += n as u64;
                        c.out_pos += n;
                        if c.phase == Phase::Open {
                            c.pending = c.pending.saturating_sub(n);
                        }
                        if c.out_pos == chunk.len() {
                            c.out.pop_front();
                            c.out_pos = 0;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(io_label(&e));
                        break;
                    }
                }
            }
            if let Some(label) = failed {
                let end = if c.phase == Phase::Open {
                    End::ByServer(label)
                } else {
                    End::NotOpened(label)
                };
                self.end(id, end);
            }
        }
    }

    fn scan_handshakes(&mut self, now: Instant) {
        let timeout = self.handshake_timeout;
        let expired: Vec<(RawId, Phase)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.phase, Phase::Connecting | Phase::Upgrading)
                    && now >= c.started + timeout
            })
            .map(|(id, c)| (id, c.phase))
            .collect();
        for (id, phase) in expired {
            let label = if phase == Phase::Connecting {
                "connect_timeout"
            } else {
                "handshake_timeout"
            };
            self.end(id, End::NotOpened(label.to_string()));
        }
    }

    fn end(&mut self, id: RawId, end: End) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.phase == Phase::Gone {
            return;
        }
        if matches!(c.phase, Phase::Connecting | Phase::Upgrading) {
            self.handshaking -= 1;
        }
        c.phase = Phase::Gone;
        if let Some(mut stream) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        c.out = VecDeque::new();
        c.inbuf = Vec::new();
        c.message = Vec::new();
        c.pending = 0;
        self.notes.push(Note::End(c.tag, end, c.sent));
        self.reap.push(id);
    }
}

/// (connection, readable, writable, the server closed or reset it)
fn event_bits(ev: &MioEvent) -> (RawId, bool, bool, bool) {
    (
        ev.token().0,
        ev.is_readable(),
        ev.is_writable(),
        ev.is_read_closed() || ev.is_error(),
    )
}

enum Got {
    Data(usize),
    Blocked,
    Eof,
    Failed(String),
}

/// Reads one chunk into the connection's buffer.
fn read_chunk(c: &mut RawConn) -> Got {
    let Some(stream) = c.stream.as_mut() else {
        return Got::Eof;
    };
    if c.inbuf.len() > MAX_INBOUND {
        return Got::Failed("response_too_large".into());
    }
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Got::Eof,
            Ok(n) => {
                c.inbuf.extend_from_slice(&chunk[..n]);
                return Got::Data(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Got::Failed(io_label(&e)),
        }
    }
}

/// Consumes complete HTTP responses or WebSocket frames from the buffer; `Some` when
/// the server's frames end the connection (a close frame, a broken frame).
fn parse_inbound(c: &mut RawConn, id: RawId, notes: &mut Vec<Note>) -> Option<End> {
    if c.ws.is_none() {
        let mut used = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&c.inbuf[used..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let len: usize = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if c.inbuf.len() - used < n + len {
                        break;
                    }
                    let label = format!("http_{}", resp.code.unwrap_or(0));
                    used += n + len;
                    c.last_status = Some((label.clone(), Instant::now()));
                    notes.push(Note::Status(c.tag, label));
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    used = c.inbuf.len();
                    break;
                }
            }
        }
        c.inbuf.drain(..used);
        return None;
    }
    let mut used = 0;
    let mut end = None;
    while let Some(f) = parse_server_frame(&c.inbuf[used..]) {
        let payload = &c.inbuf[used + f.header..used + f.header + f.len];
        match f.opcode {
            0x0..=0x2 => {
                c.message.extend_from_slice(payload);
                if f.fin {
                    if let Ok(text) = std::str::from_utf8(&c.message) {
                        notes.push(Note::Text(id, c.tag, text.to_string()));
                    }
                    c.message.clear();
                }
            }
            0x8 => {
                let label = match payload {
                    [a, b, ..] => format!("close_{}", u16::from_be_bytes([*a, *b])),
                    _ => "close_none".to_string(),
                };
                notes.push(Note::Status(c.tag, label.clone()));
                end = Some(End::ByServer(label));
                break;
            }
            0x9 => {
                let pong: Chunk = Arc::from(client_frame(0xA, true, payload));
                c.pending += pong.len();
                c.out.push_back(pong);
            }
            _ => {}
        }
        used += f.header + f.len;
    }
    c.inbuf.drain(..used);
    if end.is_none() && c.inbuf.len() > MAX_INBOUND {
        end = Some(End::ByServer("frame_too_large".into()));
    }
    end
}

struct FrameHead {
    fin: bool,
    opcode: u8,
    header: usize,
    len: usize,
}

/// A complete frame from the server at the start of `buf` (its payload is not masked;
/// a masked one is read as if it were not, which only garbles its text).
fn parse_server_frame(buf: &[u8]) -> Option<FrameHead> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut header): (usize, usize) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        header += 4;
    }
    (buf.len() >= header.checked_add(len)?).then_some(FrameHead {
        fin,
        opcode,
        header,
        len,
    })
}

/// A masked client frame. The mask is random per frame; a frame built once and sent
/// many times keeps its one mask, which the server cannot tell from a fresh one.
pub(crate) fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key: [u8; 4] = generate_key().as_bytes()[..4]
        .try_into()
        .expect("a key has more than 4 bytes");
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn io_label(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
        return "too_many_open_files".into();
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect_refused".into(),
        io::ErrorKind::AddrNotAvailable => "addr_not_available".into(),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "reset".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        k => format!("io_{k:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_and_sized() {
        let f = client_frame(0x1, false, &[b'a'; 300]);
        assert_eq!(f[0], 0x01, "FIN clear, text");
        assert_eq!(f[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 300);
        let key = &f[4..8];
        assert!(f[8..]
            .iter()
            .enumerate()
            .all(|(i, b)| b ^ key[i % 4] == b'a'));
        let f = client_frame(0x9, true, b"");
        assert_eq!((f[0], f[1], f.len()), (0x89, 0x80, 6));
        let f = client_frame(0x1, true, &vec![b'x'; 70_000]);
        assert_eq!(f[1], 0x80 | 127);
    }

    #[test]
    fn server_frames_parse_only_when_complete() {
        let mut buf = vec![0x88, 2, 0x03, 0xf0];
        let f = parse_server_frame(&buf).unwrap();
        assert_eq!((f.fin, f.opcode, f.header, f.len), (true, 8, 2, 2));
        buf.truncate(3);
        assert!(parse_server_frame(&buf).is_none());
        let mut big = vec![0x81, 126, 0x01, 0x00];
        big.extend(vec![b'x'; 256]);
        assert_eq!(parse_server_frame(&big).unwrap().len, 256);
        assert!(parse_server_frame(&big[..100]).is_none());
    }
}
