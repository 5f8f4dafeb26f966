//! One client connection: its socket, where it is in its life
//! (HTTP → upgrading → WebSocket), and its output queue.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;
use tungstenite::protocol::WebSocketContext;

use crate::close::CloseReason;
use crate::db::jobs::OfflineDm;
pub use crate::out_queue::OutQueue;
use crate::protocol::Request;
use crate::state::Held;
pub use crate::ticket::ConnId;
use crate::ticket::Hold;

/// A connection stops having its requests read while this much output waits for
/// it, and reads again once it has drained below: a client that sends requests
/// and does not read the replies holds at most this plus one reply.
pub const OUTPUT_PAUSE_BYTES: usize = 64 * 1024;

/// An idle connection's input buffer is given back when it grew past this.
pub const IDLE_BUFFER_BYTES: usize = 4 * 1024;

/// Where a connection is in its life.
pub enum Phase {
    /// Reading HTTP requests.
    Http(HttpState),
    /// A `/ws` upgrade whose token checked out, waiting for the database to confirm
    /// the user and load their session. `leftover`: bytes read past the request.
    Upgrading {
        username: String,
        accept_key: String,
        leftover: Vec<u8>,
        /// The token's `exp`.
        token_expires: SystemTime,
        /// The token's `auth_time`: when the login it descends from was made.
        session_start: SystemTime,
        /// The token's generation: refused if the user's is newer.
        token_gen: i64,
    },
    /// An open WebSocket.
    Ws(Box<WsState>),
    /// Closed for the protocol (user accounting done); only output may remain.
    Closed,
}

#[derive(Default)]
pub struct HttpState {
    pub buf: crate::in_buf::InputBuf,
    /// How far parsing of the request at the front of `buf` got.
    pub progress: crate::http::ParseProgress,
    /// A request handed to a worker; no further request is parsed until it is
    /// answered (responses go out in request order).
    pub pending: Option<PendingHttp>,
    /// The connection's request bucket (as for WebSocket requests), made on its
    /// first request.
    pub rate: Option<RateLimit>,
}

/// What an HTTP request waiting for a worker needs to finish.
pub enum PendingHttp {
    /// `password` is kept while the name's existence is checked, then cleared
    /// once it is hashed. `addr`: the client address its budgets count under.
    Register {
        username: String,
        nickname: String,
        password: String,
        addr: IpAddr,
        keep_alive: bool,
    },
    /// `generation`: the user's token generation, once their stored password
    /// has been read (the token issued carries it).
    Login {
        username: String,
        password: String,
        addr: IpAddr,
        keep_alive: bool,
        generation: i64,
    },
    /// `POST /password`, `/logout_all`, `/account/delete`.
    Account(Box<AccountRequest>),
    /// A server API request (`/api/v1/`).
    Api(Box<crate::api_call::ApiCall>),
    Health {
        keep_alive: bool,
    },
    /// `POST /ws-ticket`: the ticket, handed out once the database has it.
    MintTicket {
        ticket: String,
        keep_alive: bool,
    },
    /// `GET /ws?ticket=`: the upgrade, checked up to the ticket, which the
    /// database is consuming. `addr`: the address its budget counts under.
    TicketUpgrade {
        accept_key: String,
        addr: IpAddr,
    },
}

/// An account change asked with a valid token: the password is checked
/// (against the stored one, on a hashing thread) before anything changes.
#[derive(Debug)]
pub struct AccountRequest {
    pub username: String,
    /// The presenting token's generation: the change is refused once it has
    /// been revoked.
    pub token_gen: i64,
    /// The current password (empty for `logout_all`, which asks none).
    pub password: String,
    pub change: AccountChange,
    /// The client address the login throttle counts under.
    pub addr: IpAddr,
    pub keep_alive: bool,
}

/// What an account request changes.
#[derive(Debug)]
pub enum AccountChange {
    /// `POST /password`: the new password (cleared once hashed).
    Password { new: String },
    /// `POST /logout_all`.
    LogoutAll,
    /// `POST /account/delete`; `erase`: the user's messages become tombstones.
    Delete { erase: bool },
}

/// Keeps one connection's requests taking effect in the order it sent them, as
/// if each waited for the reply to the one before: a request starts only once
/// the jobs it could depend on are done. Messages and DMs are the exception that
/// keeps pipelining fast: they may follow each other while earlier ones are
/// still being written, because the single writer commits them in order.
#[derive(Default)]
pub struct Sequencer {
    /// Jobs in flight that let later messages through.
    stream: u32,
    /// Jobs in flight that hold back every later request.
    exclusive: u32,
    /// The next request, waiting for those jobs. While one waits nothing more is
    /// read from the connection, so the client's own TCP window holds the rest.
    pub held: Option<(Hold, Box<Request>)>,
}

impl Sequencer {
    pub fn can_start(&self, hold: Hold) -> bool {
        self.exclusive == 0 && (hold == Hold::Stream || self.stream == 0)
    }

    pub fn started(&mut self, hold: Hold) {
        match hold {
            Hold::Stream => self.stream += 1,
            Hold::Exclusive => self.exclusive += 1,
            Hold::Nothing => {}
        }
    }

    pub fn finished(&mut self, hold: Hold) {
        match hold {
            Hold::Stream => self.stream = self.stream.saturating_sub(1),
            Hold::Exclusive => self.exclusive = self.exclusive.saturating_sub(1),
            Hold::Nothing => {}
        }
    }

    /// The held request, if it may start now.
    pub fn release(&mut self) -> Option<(Hold, Box<Request>)> {
        match &self.held {
            Some((hold, _)) if self.can_start(*hold) => self.held.take(),
            _ => None,
        }
    }
}

/// What the rate limit says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Refused with `RATE_LIMITED`.
    Refused,
    /// Refused, and the client has kept flooding long enough to be closed.
    Flood,
}

/// Frame bytes one request token pays for: a request costs one token per started
/// 4 KiB, so a connection's budget bounds the bytes the loop parses for it, not
/// only how many requests (a 64 KiB frame of JSON costs sixteen normal ones).
pub const BYTES_PER_TOKEN: usize = 4096;

/// The tokens a frame of `len` bytes costs.
pub fn request_cost(len: usize) -> f64 {
    len.div_ceil(BYTES_PER_TOKEN).max(1) as f64
}

/// Reply bytes one request token pays for. Replies are built from memory and
/// copied, which is cheaper per byte than parsing, but a client asking for
/// megabytes (a long cached history, a large replay) must not get them at the
/// price of a small request: past the first [`REPLY_BYTES_PER_TOKEN`], each
/// started 16 KiB of a reply costs a token.
pub const REPLY_BYTES_PER_TOKEN: usize = 16 * 1024;

/// The tokens a reply of `len` bytes costs on top of its request.
pub fn reply_cost(len: usize) -> f64 {
    (len / REPLY_BYTES_PER_TOKEN) as f64
}

/// How deep into debt (in bursts) large replies may take a bucket.
const MAX_DEBT_BURSTS: f64 = 4.0;

/// Refused frame bytes in one second past which a connection is not read for
/// the rest of that second (see [`RateLimit::refused`]).
pub const THROTTLE_REFUSED_BYTES: usize = 256 * 1024;

/// A connection's request token bucket, and the rule for closing a flooder.
/// Refusing a request is cheap, so a burst over the limit only costs the client
/// its refused requests; a connection is closed only when it is refused more than
/// `rate` times a second for `flood_secs` seconds in a row.
pub struct RateLimit {
    tokens: f64,
    at: Instant,
    window_start: Instant,
    refused_in_window: f64,
    /// Bytes of the frames refused in the current second.
    refused_bytes: usize,
    flooding_secs: u32,
}

impl RateLimit {
    pub fn new(burst: f64, now: Instant) -> RateLimit {
        RateLimit {
            tokens: burst,
            at: now,
            window_start: now,
            refused_in_window: 0.0,
            refused_bytes: 0,
            flooding_secs: 0,
        }
    }

    /// Takes `cost` tokens (a request costs one per started
    /// [`BYTES_PER_TOKEN`] of its frame: parsing is paid per byte).
    pub fn admit(
        &mut self,
        now: Instant,
        cost: f64,
        rate: f64,
        burst: f64,
        flood_secs: u32,
    ) -> Admit {
        let window = now.duration_since(self.window_start).as_secs_f64();
        if window >= 1.0 {
            // A full second just ended: did it count as flooding? A quiet second
            // in between (the window ran over two seconds) breaks the run.
            if window < 2.0 && self.refused_in_window > rate {
                self.flooding_secs += 1;
            } else {
                self.flooding_secs = 0;
            }
            self.window_start = now;
            self.refused_in_window = 0.0;
            self.refused_bytes = 0;
        }
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            return Admit::Yes;
        }
        self.refused_in_window += cost;
        if self.flooding_secs >= flood_secs {
            Admit::Flood
        } else {
            Admit::Refused
        }
    }

    /// Takes `cost` tokens for work already done (a large reply), whatever is
    /// left: the bucket may go into debt, so the client's next requests wait
    /// until it has paid. The debt is bounded, so one huge reply cannot lock a
    /// client out for long.
    pub fn charge(&mut self, cost: f64, burst: f64) {
        self.tokens = (self.tokens - cost).max(-MAX_DEBT_BURSTS * burst);
    }

    /// Records a refused frame of `len` bytes; when this second's refused
    /// frames pass [`THROTTLE_REFUSED_BYTES`], returns the end of the second:
    /// the connection is not read until then. (A burst of small requests is
    /// only refused; a flood of large frames is held back by TCP instead of
    /// being read, unmasked and validated only to be refused.)
    pub fn refused(&mut self, len: usize) -> Option<Instant> {
        self.refused_bytes += len;
        (self.refused_bytes > THROTTLE_REFUSED_BYTES)
            .then(|| self.window_start + std::time::Duration::from_secs(1))
    }
}

/// A piece of the offline queue queued on a connection: once the output reaches
/// `mark`, its DMs are deleted and the `dropped` it told of are subtracted.
pub struct OfflinePiece {
    pub mark: u64,
    pub ids: Vec<i64>,
    pub dropped: i64,
}

/// An open WebSocket's state.
pub struct WsState {
    pub ctx: WebSocketContext,
    pub username: String,
    pub rate: RateLimit,
    /// When a complete frame (of any kind) last arrived.
    pub last_frame: Instant,
    pub ping_sent: Option<Instant>,
    /// The piece of the offline queue being written.
    pub offline_ack: Option<OfflinePiece>,
    /// Offline DMs loaded and not yet queued (sent in pieces as the socket
    /// drains).
    pub offline_pending: VecDeque<OfflineDm>,
    /// How many DMs were dropped from the user's full queue, told after the
    /// queued ones (`offline_dm_dropped`); 0 once told, or when nothing was.
    pub offline_dropped: i64,
    pub seq: Sequencer,
    /// Bytes of data frames read and not yet part of a complete message (a
    /// frame or a fragmented message under way), and since when there have been
    /// any: such a message must be completed in time.
    pub unfinished: usize,
    pub unfinished_since: Option<Instant>,
    /// When the token the connection last presented (upgrade or `auth`)
    /// expires, on the loop's clock.
    pub token_expires: Instant,
    /// `token_expiring` was sent for that token.
    pub token_warned: bool,
    /// That token's `auth_time`: `refresh_token` never extends the login
    /// past it plus `KLAV_SESSION_MAX_DAYS`.
    pub session_start: SystemTime,
    /// That token's generation: a revocation of it closes the connection.
    pub token_gen: i64,
    /// Room → id of the first entry event this connection was sent live. A
    /// room's entries reach a connection in id order, so it has been sent every
    /// later one too: a `resume` replays only what lies below, and never an
    /// entry the connection already got.
    pub first_live: HashMap<Box<str>, i64>,
    /// Live entry events held back since the connection opened (see
    /// [`OpeningHold`]); `None` once its first request started or the hold ran
    /// out.
    pub opening: Option<OpeningHold>,
    /// Refused more than its rate this second: nothing more is read from it
    /// until then (TCP holds the rest back), so a flooder costs the loop about
    /// twice its rate, not whatever it can send.
    pub throttled_until: Option<Instant>,
}

impl WsState {
    /// A live entry event of `room` went out to this connection. Runs per
    /// recipient of every fan-out: after the room's first entry it is one
    /// lookup and allocates nothing.
    pub fn note_live(&mut self, room: &str, id: i64) {
        if !self.first_live.contains_key(room) {
            self.first_live.insert(room.into(), id);
        }
    }
}

/// A fresh connection's live entry events are held back until its first
/// request starts, or until `until`: a client that opens with `resume` then
/// sees nothing live that its replay will also contain (the held events of the
/// resumed rooms follow the replay instead), and any other client gets them
/// in order right away.
pub struct OpeningHold {
    pub until: Instant,
    pub held: Held,
}

/// A connection klav has decided to close: its last output is being written,
/// then its write side is shut down and its input read and thrown away until the
/// peer closes too (or `until`, or too many bytes). Closing a socket with unread
/// input makes the kernel answer with a reset, and the client would lose what
/// was sent to it: the final HTTP response, the close frame.
#[derive(Debug)]
pub struct Linger {
    /// When the connection is dropped whatever happens.
    pub until: Instant,
    /// Whether the write side is shut down (everything queued was written).
    pub shut: bool,
    /// Bytes read and thrown away so far.
    pub discarded: usize,
    /// Most bytes thrown away before the connection is dropped anyway.
    pub max_discard: usize,
}

/// Where a connection is in its life, as far as reading and closing go. (What
/// it speaks — HTTP, an upgrade, a WebSocket — is its [`Phase`].)
///
/// `Open` ⇄ `Paused` while output backs up and drains; `Open`/`Paused` →
/// `Closing` once klav decides to close it (nothing more is taken from it;
/// what it waits for, an answer or its last output, comes first) → `Lingering`
/// once the close begins → gone. A connection whose peer vanished, or whose
/// socket broke, is dropped from any state.
#[derive(Debug)]
pub enum Life {
    /// Read as input arrives.
    Open,
    /// Not read while its output drains below [`OUTPUT_PAUSE_BYTES`]: a client
    /// that sends requests and does not read the replies holds at most that
    /// plus one reply.
    Paused,
    /// To close, for this reason (the first given stands): no further request
    /// is taken.
    Closing(CloseReason),
    /// Its close has begun (see [`Linger`]).
    Lingering(CloseReason, Linger),
}

impl Life {
    /// Why it is closing, once it is.
    pub fn closing(&self) -> Option<CloseReason> {
        match self {
            Life::Open | Life::Paused => None,
            Life::Closing(r) | Life::Lingering(r, _) => Some(*r),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing().is_some()
    }

    /// Decides to close it; a reason given earlier stands.
    pub fn close(&mut self, reason: CloseReason) {
        if matches!(self, Life::Open | Life::Paused) {
            *self = Life::Closing(reason);
        }
    }

    pub fn linger(&self) -> Option<&Linger> {
        match self {
            Life::Lingering(_, l) => Some(l),
            _ => None,
        }
    }

    pub fn linger_mut(&mut self) -> Option<&mut Linger> {
        match self {
            Life::Lingering(_, l) => Some(l),
            _ => None,
        }
    }

    pub fn is_lingering(&self) -> bool {
        matches!(self, Life::Lingering(..))
    }

    /// Stops reading it until its output drains (an open connection only).
    pub fn pause(&mut self) {
        if matches!(self, Life::Open) {
            *self = Life::Paused;
        }
    }

    /// Reads it again; true when it was paused.
    pub fn resume(&mut self) -> bool {
        let paused = matches!(self, Life::Paused);
        if paused {
            *self = Life::Open;
        }
        paused
    }

    pub fn is_paused(&self) -> bool {
        matches!(self, Life::Paused)
    }
}

/// One client connection.
pub struct Conn {
    pub id: ConnId,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub phase: Phase,
    pub out: OutQueue,
    /// WRITABLE interest is registered (only while output is pending).
    pub writable_registered: bool,
    pub life: Life,
    /// Start of the current HTTP request (or of idleness), for the HTTP timeout.
    pub since: Instant,
    /// When the loop's timer structure will look at this connection next.
    pub wake_at: Option<Instant>,
    /// The client address this WebSocket (or upgrade) is counted under.
    pub counted_addr: Option<IpAddr>,
    /// Accepted on the `KLAV_METRICS_ADDR` listener: only `/metrics` is served.
    pub metrics_only: bool,
    /// Waits in one of the loop's queues of reads put off to a later turn
    /// (see `server::reading`).
    pub put_off: bool,
    /// Its share of the loop's running total of client input held, as last
    /// counted (see `server::reading`).
    pub input_counted: usize,
}

impl Conn {
    /// What the connection's unparsed input holds in memory: an HTTP
    /// request's buffer (its capacity), an upgrade's leftover bytes, a
    /// WebSocket message under way.
    pub fn input_held(&self) -> usize {
        match &self.phase {
            Phase::Http(st) => st.buf.capacity(),
            Phase::Upgrading { leftover, .. } => leftover.capacity(),
            Phase::Ws(ws) => ws.unfinished,
            Phase::Closed => 0,
        }
    }

    /// An open WebSocket of a user already let in (served before new
    /// connections and HTTP when a turn is short of time).
    pub fn is_session(&self) -> bool {
        matches!(self.phase, Phase::Ws(_)) && !self.life.is_closing()
    }

    pub fn new(id: ConnId, stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            id,
            stream,
            peer,
            phase: Phase::Http(HttpState::default()),
            out: OutQueue::default(),
            writable_registered: false,
            life: Life::Open,
            since: Instant::now(),
            wake_at: None,
            counted_addr: None,
            metrics_only: false,
            put_off: false,
            input_counted: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_refused_large_frames_pauses_reading_but_small_bursts_do_not() {
        let now = Instant::now();
        let mut r = RateLimit::new(5.0, now);
        // 300 small requests refused in one second: only refused.
        for _ in 0..300 {
            assert_eq!(r.refused(60), None);
        }
        let mut big = RateLimit::new(5.0, now);
        let mut paused = None;
        for _ in 0..5 {
            paused = paused.or(big.refused(64 * 1024));
        }
        assert_eq!(paused, Some(now + std::time::Duration::from_secs(1)));
    }
}
