//! What the loop asks of the database threads ([`Job`]) and what comes back
//! ([`Outcome`]), as plain data. Outcomes carry back the inputs the loop needs to
//! finish the request (who, which room, what text), so the loop keeps no per-job
//! bookkeeping beyond the [`Ticket`].

use std::time::SystemTime;

use super::DbError;
use crate::auth::password::HashOutcome;
pub use crate::ticket::Ticket;

/// A finished job, delivered to the loop.
pub enum Completion {
    Db(Ticket, Result<Outcome, DbError>),
    Hash(Ticket, HashOutcome),
}

/// A chat message or DM on its way into `chat_logs`.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub room: String,
    pub from: String,
    pub from_nickname: String,
    pub text: String,
    /// The sender's idempotency key: a second entry with the same key from the
    /// same sender is never stored (the database's unique index decides).
    pub client_id: Option<String>,
}

/// A persisted `chat_logs` row, as `history` returns it.
#[derive(Clone, Debug)]
pub struct ChatEntry {
    pub id: i64,
    pub ts: SystemTime,
    pub kind: String,
    pub room: String,
    pub from: String,
    pub from_nickname: String,
    pub to: Option<String>,
    pub text: String,
    pub client_id: Option<String>,
    pub edited_at: Option<SystemTime>,
    /// A tombstone: the author deleted it (its text is empty).
    pub deleted: bool,
}

/// A queued DM for a user who was offline.
#[derive(Clone, Debug)]
pub struct OfflineDm {
    pub id: i64,
    pub room: String,
    pub from: String,
    pub from_nickname: String,
    pub text: String,
    pub at: SystemTime,
}

/// What the loop needs about a user when their connection opens.
#[derive(Clone, Debug)]
pub struct SessionData {
    pub nickname: String,
    pub rooms: Vec<String>,
    pub following: Vec<String>,
    pub offline: Vec<OfflineDm>,
}

#[derive(Clone, Debug)]
pub struct LastMessage {
    /// The entry shown (unknown for rows the old server wrote).
    pub id: Option<i64>,
    /// That entry is now a tombstone (its text is empty).
    pub deleted: bool,
    pub edited_at: Option<SystemTime>,
    pub text: String,
    pub from: String,
    pub kind: String,
    pub ts: Option<SystemTime>,
}

#[derive(Clone, Debug)]
pub struct RoomInfo {
    pub id: String,
    pub name: String,
    pub last: Option<LastMessage>,
    /// The user's read marker (0: none).
    pub read_id: i64,
    /// `msg` entries of others, not deleted, above the marker, among those kept.
    pub unread: i64,
}

/// One room of a `resume`: where the client stands.
#[derive(Clone, Debug)]
pub struct ResumeCursor {
    pub room: String,
    pub after: i64,
    /// The first entry of the room the connection was sent live, if any: it
    /// already has that one and every later one, so only the user's own DMs
    /// (which are never sent back to their sender live) are replayed above it.
    pub before: Option<i64>,
}

/// One room's replay, oldest first.
#[derive(Clone, Debug)]
pub struct RoomReplay {
    pub room: String,
    pub entries: Vec<ChatEntry>,
    /// Entries after the cursor were pruned by retention.
    pub pruned: bool,
    /// More entries than the replay limit: none are replayed.
    pub too_many: bool,
}

/// How an `edit` or `delete` went.
#[derive(Clone, Debug)]
pub enum EditResult {
    /// No such entry, not visible to the user, or already deleted.
    NotFound,
    /// Someone else's entry, or a system entry.
    NotAuthor,
    /// The entry as it now stands.
    Done(Box<ChatEntry>),
}

/// How a `read` went.
#[derive(Clone, Debug)]
pub enum ReadResult {
    /// The room has no entry with that id.
    NotFound,
    /// The stored marker; `moved` when this request advanced it.
    Marker { id: i64, moved: bool },
}

#[derive(Clone, Debug)]
pub struct UserRef {
    pub username: String,
    pub nickname: String,
}

#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub room: String,
    pub username: String,
    pub limit: i64,
    pub before: Option<SystemTime>,
    pub after: Option<SystemTime>,
    pub before_id: Option<i64>,
    pub after_id: Option<i64>,
}

#[derive(Clone, Debug)]
pub enum JoinBy {
    Id(String),
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowStatus {
    NotRegistered,
    Already,
    Followed,
}

/// Work for the database threads. Variants below "ordered writes" go to the single
/// writer (see [`Job::is_ordered_write`]).
#[derive(Clone, Debug)]
pub enum Job {
    Health,
    Register {
        username: String,
        password_hash: String,
        nickname: String,
    },
    /// The stored password field (PHC string or legacy plain text) of a user.
    Credentials {
        username: String,
    },
    /// Replaces a legacy plain-text password with its hash, if still unchanged.
    UpgradePassword {
        username: String,
        legacy: String,
        new_hash: String,
    },
    OpenSession {
        username: String,
    },
    /// The newest `limit` entries of a room, of every kind, to fill the history cache.
    HistoryFill {
        room: String,
        limit: i64,
    },
    /// Offline DMs written to one of `username`'s connections.
    DeleteOfflineDms {
        username: String,
        ids: Vec<i64>,
    },
    History(HistoryQuery),
    MyRooms {
        username: String,
    },
    Following {
        username: String,
    },
    Followers {
        username: String,
    },
    Follow {
        from: String,
        to: String,
    },
    Unfollow {
        from: String,
        to: String,
    },
    /// Every member of a room, sorted by username.
    RoomMembers {
        room: String,
    },
    /// The entries after each cursor a user may see, at most `limit` + 1 per room
    /// (one more tells "too many").
    Resume {
        username: String,
        rooms: Vec<ResumeCursor>,
        limit: i64,
    },
    /// Retention: keep the newest `keep` entries of each room.
    Prune {
        rooms: Vec<String>,
        keep: u64,
    },

    // ordered writes
    CreateRoom {
        creator: String,
        creator_nickname: String,
        name: String,
    },
    Join {
        username: String,
        nickname: String,
        by: JoinBy,
    },
    Leave {
        username: String,
        nickname: String,
        room: String,
    },
    Msg(NewMessage),
    /// `recipient_known`: the loop already knows the recipient is a member (they are
    /// online); otherwise the writer checks. `queue`: the recipient is offline.
    Dm {
        msg: NewMessage,
        to: String,
        recipient_known: bool,
        queue: bool,
    },
    /// `edit` (`text`) or `delete` (`text: None`) of the user's own entry:
    /// ordered with the messages it changes.
    Edit {
        username: String,
        id: i64,
        text: Option<String>,
    },
    /// Moves a user's read marker forward.
    Read {
        username: String,
        room: String,
        id: i64,
    },
    /// Queues an already-logged DM whose recipient went offline before delivery.
    QueueDm {
        msg: NewMessage,
        to: String,
        log_id: i64,
        at: SystemTime,
    },
}

impl Job {
    /// The user whose session data (memberships, follows, offline queue) this
    /// job changes, if any: that user's session loads wait until it is done.
    pub fn session_writer(&self) -> Option<&str> {
        match self {
            Job::Join { username, .. }
            | Job::Leave { username, .. }
            | Job::DeleteOfflineDms { username, .. } => Some(username),
            Job::Follow { from, .. } | Job::Unfollow { from, .. } => Some(from),
            Job::Dm {
                to, queue: true, ..
            }
            | Job::QueueDm { to, .. } => Some(to),
            _ => None,
        }
    }

    /// Jobs that write `chat_logs`, membership or follows go to the single writer,
    /// so that one connection's pipelined requests commit (and are answered, and
    /// update memory) in the order they were sent.
    pub fn is_ordered_write(&self) -> bool {
        matches!(
            self,
            Job::Follow { .. }
                | Job::Unfollow { .. }
                | Job::CreateRoom { .. }
                | Job::Join { .. }
                | Job::Leave { .. }
                | Job::Msg(_)
                | Job::Dm { .. }
                | Job::QueueDm { .. }
                | Job::Edit { .. }
                | Job::Read { .. }
        )
    }
}

/// How a `join` went.
#[derive(Clone, Debug)]
pub enum JoinResult {
    NotFound,
    Already { room: String },
    Joined { room: String },
}

#[derive(Clone, Debug)]
pub enum DmResult {
    RecipientNotInRoom,
    Stored {
        id: i64,
        ts: SystemTime,
        queued: bool,
    },
    /// The sender already stored an entry with this `client_id`: nothing new.
    Duplicate(Box<Duplicate>),
}

/// The entry an earlier send with the same `client_id` stored.
#[derive(Clone, Debug)]
pub struct Duplicate {
    pub entry: ChatEntry,
    /// A DM still waiting in its recipient's offline queue.
    pub queued: bool,
}

/// A job's result. Variants mirror [`Job`]'s.
#[derive(Debug)]
pub enum Outcome {
    Healthy,
    Registered {
        created: bool,
    },
    Credentials {
        username: String,
        password: Option<String>,
    },
    Done,
    Session {
        username: String,
        session: Option<SessionData>,
    },
    History {
        room: String,
        items: Vec<ChatEntry>,
    },
    /// Oldest first.
    HistoryFill {
        room: String,
        limit: i64,
        items: Vec<ChatEntry>,
    },
    MyRooms(Vec<RoomInfo>),
    Following(Vec<UserRef>),
    Followers(Vec<UserRef>),
    Follow {
        from: String,
        to: String,
        status: FollowStatus,
    },
    Unfollow {
        from: String,
        to: String,
        removed: bool,
    },
    Pruned(u64),
    /// `logged`: the system entries the job wrote (here and below), so the loop
    /// can keep its history cache exact without reading them back.
    RoomCreated {
        room: String,
        name: String,
        logged: Vec<ChatEntry>,
    },
    Join {
        username: String,
        nickname: String,
        result: JoinResult,
        logged: Vec<ChatEntry>,
    },
    Leave {
        username: String,
        nickname: String,
        room: String,
        was_member: bool,
        logged: Vec<ChatEntry>,
    },
    Msg {
        msg: NewMessage,
        id: i64,
        ts: SystemTime,
    },
    /// A `msg` whose `client_id` was already used: the original entry.
    MsgDuplicate(Box<Duplicate>),
    RoomMembers {
        room: String,
        members: Vec<UserRef>,
    },
    Resume(Vec<RoomReplay>),
    Edit {
        delete: bool,
        result: EditResult,
    },
    Read {
        username: String,
        room: String,
        result: ReadResult,
    },
    Dm {
        msg: NewMessage,
        to: String,
        result: DmResult,
    },
    /// A DM whose recipient had gone offline is now in their queue.
    DmQueued {
        room: String,
        to: String,
    },
}
