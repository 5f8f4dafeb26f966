//! Why a connection closes, and the one place that decides what each reason means:
//! the WebSocket close code and text the client is told, how loudly it is logged,
//! and whether queued output is kept or dropped first.
//!
//! Every close klav starts ends the same way (see `server/`): the final bytes are
//! written, the write side is shut down, and input is read and discarded until the
//! peer closes or a short deadline passes — so the kernel never answers unread
//! input with a reset that would destroy what was sent.

use tungstenite::protocol::frame::coding::CloseCode;

use crate::log::Level;

/// Why a connection is being closed (also a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed (EOF, close frame, reset).
    Peer,
    /// An HTTP exchange ended (`Connection: close`, errors).
    HttpDone,
    /// An HTTP client refused for asking too much (429: its request bucket,
    /// the `/metrics` budget): what it still sends is read only briefly.
    Refused,
    /// Nothing complete arrived in time (HTTP timeout, unanswered ping).
    Timeout,
    /// Its output passed the cap: close 1008.
    SlowConsumer,
    /// A frame or message over the limit: close 1009.
    TooBig,
    /// Invalid UTF-8 in a text frame: close 1007.
    BadUtf8,
    /// A WebSocket protocol violation: close 1002.
    Protocol,
    /// Kept flooding past the rate limit for several seconds: close 1008.
    Flood,
    /// All clients together held more than the buffer budget, and this
    /// connection held the most: close 1008.
    Budget,
    /// A fragmented message (or a frame) was not completed in time: close 1008.
    Incomplete,
    /// The server is shutting down: close 1001.
    Shutdown,
    /// Its token expired (`KLAV_WS_TOKEN_EXPIRY=close`): close 1008.
    TokenExpired,
    /// The user's tokens were revoked (a password change, `logout_all`), on
    /// any node: close 1008.
    Revoked,
    /// The user's account was deleted, on any node: close 1008.
    AccountDeleted,
    /// The server API disconnected the user (every socket on every node):
    /// close 1008.
    Disconnected,
    /// A socket error.
    Error,
}

/// What closing for a reason means.
pub struct ClosePlan {
    /// The close frame a WebSocket gets (none: the peer already closed, or the
    /// socket is broken).
    pub frame: Option<(CloseCode, &'static str)>,
    /// Queued output not yet started is dropped before the close frame (a slow
    /// consumer would never read it anyway).
    pub drop_unsent: bool,
    /// The log level of the "closing a connection" line (none: not logged).
    pub log: Option<Level>,
    /// The close was earned by abuse: what the client still sends is read for
    /// a short while only (see `server::reading::ABUSIVE_LINGER_BYTES`).
    pub abusive: bool,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::HttpDone => "http_done",
            CloseReason::Refused => "refused",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooBig => "too_big",
            CloseReason::BadUtf8 => "bad_utf8",
            CloseReason::Protocol => "protocol",
            CloseReason::Flood => "flood",
            CloseReason::Budget => "budget",
            CloseReason::Incomplete => "incomplete",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Revoked => "revoked",
            CloseReason::AccountDeleted => "account_deleted",
            CloseReason::Disconnected => "disconnected",
            CloseReason::Error => "error",
        }
    }

    pub fn plan(self) -> ClosePlan {
        use CloseReason::*;
        let frame = match self {
            SlowConsumer => Some((CloseCode::Policy, "output buffer limit exceeded")),
            Flood => Some((CloseCode::Policy, "request rate limit exceeded")),
            Budget => Some((CloseCode::Policy, "server buffer budget exceeded")),
            Incomplete => Some((CloseCode::Policy, "message not completed in time")),
            TokenExpired => Some((CloseCode::Policy, "token expired")),
            Revoked => Some((CloseCode::Policy, "session revoked")),
            AccountDeleted => Some((CloseCode::Policy, "account deleted")),
            Disconnected => Some((CloseCode::Policy, "disconnected by server")),
            TooBig => Some((CloseCode::Size, "message too big")),
            BadUtf8 => Some((CloseCode::Invalid, "invalid UTF-8")),
            Protocol => Some((CloseCode::Protocol, "protocol error")),
            Shutdown => Some((CloseCode::Away, "server shutting down")),
            Timeout => Some((CloseCode::Away, "idle timeout")),
            Peer | HttpDone | Refused | Error => None,
        };
        let log = match self {
            SlowConsumer | Flood | TooBig | Budget => Some(Level::Warn),
            Protocol | BadUtf8 | Error | Incomplete => Some(Level::Debug),
            _ => None,
        };
        ClosePlan {
            frame,
            drop_unsent: matches!(self, SlowConsumer | Budget),
            log,
            abusive: matches!(self, SlowConsumer | Budget | Flood | Incomplete | Refused),
        }
    }

    pub const ALL: [CloseReason; 17] = [
        CloseReason::Peer,
        CloseReason::HttpDone,
        CloseReason::Refused,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::TooBig,
        CloseReason::BadUtf8,
        CloseReason::Protocol,
        CloseReason::Flood,
        CloseReason::Budget,
        CloseReason::Incomplete,
        CloseReason::Shutdown,
        CloseReason::TokenExpired,
        CloseReason::Revoked,
        CloseReason::AccountDeleted,
        CloseReason::Disconnected,
        CloseReason::Error,
    ];
}
