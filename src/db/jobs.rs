//! What the loop asks of the database threads ([`Job`]) and what comes back
//! ([`Outcome`]), as plain data. Outcomes carry back the inputs the loop needs to
//! finish the request (who, which room, what text), so the loop keeps no per-job
//! bookkeeping beyond the [`Ticket`].

use std::time::SystemTime;

mod admin;
mod api;
mod outcome;

use super::error::DbError;
use crate::auth::jwt::Verified;
use crate::auth::password::HashOutcome;
pub use crate::ticket::Ticket;

/// A finished job, delivered to the loop.
pub enum Completion {
    Db(Ticket, Result<Outcome, DbError>),
    /// A committed job that added entries to a room: delivered in the room's
    /// order (see `cluster::chain`).
    Chained(Ticket, Outcome, ChainLink),
    Hash(Ticket, HashOutcome),
    /// Events another node committed (see `bus`).
    Bus(Vec<super::notify::BusEvent>),
    /// The bus listener (re)connected: anything may have been missed before.
    BusConnected,
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
    /// Who vouches for the sender's membership (see [`Poster`]).
    pub poster: Poster,
    /// The token generation of the sending connection: the writer stores
    /// nothing of a sender whose tokens of that generation have been revoked
    /// (see `db::writer::accounts`).
    pub token_gen: i64,
}

/// Where a job's entries sit in their room's order: the room's entry before
/// the first of them, and the last of them. The loop delivers a room's entries
/// only in this order (see `cluster::chain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub room: String,
    pub prev: i64,
    pub last: i64,
}

/// One room's entries after a node's cursor.
#[derive(Clone, Debug, Default)]
pub struct RoomCatchUp {
    pub room: String,
    pub entries: Vec<ChatEntry>,
    /// Ids of the DMs among them that went to an offline queue.
    pub queued: Vec<i64>,
    /// The room's members now.
    pub members: Vec<String>,
}

/// What [`Job::CatchUp`] found.
#[derive(Clone, Debug, Default)]
pub struct CaughtUp {
    pub rooms: Vec<RoomCatchUp>,
    /// (user, room, the room's newest entry id) for every membership of the
    /// users asked.
    pub memberships: Vec<(String, String, i64)>,
    /// (follower, followee) for the users asked.
    pub follows: Vec<(String, String)>,
    /// (blocker, blocked) for the users asked, as the blocked.
    pub blocks: Vec<(String, String)>,
    /// (user, room, role) of the users asked, where the role is not `member`.
    pub roles: Vec<(String, String, Role)>,
    /// (user, token generation) for the users asked; `i64::MAX` for an
    /// account deleted.
    pub generations: Vec<(String, i64)>,
    /// (user, nickname) of the watched users online anywhere.
    pub online: Vec<(String, String)>,
}

pub use super::entry::ChatEntry;
pub(crate) use admin::open_invite;
pub use admin::*;
pub use api::*;
pub use outcome::*;

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
    /// The user's token generation: tokens of an older one are refused.
    pub generation: i64,
    pub rooms: Vec<String>,
    /// Each room's newest entry id when it was read (see `cluster::chain`).
    pub last_entries: Vec<i64>,
    /// The user's role in those rooms where it is not `member`.
    pub roles: Vec<(String, Role)>,
    pub following: Vec<String>,
    /// The users who block this user (their presence is hidden from them).
    pub blocked_by: Vec<String>,
    pub offline: Vec<OfflineDm>,
    /// Offline DMs dropped from the user's full queue since a connection of
    /// theirs was last told (claimed like `offline`; 0 when none, or when
    /// another live node holds the claim).
    pub dropped: i64,
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
    pub private: bool,
    /// The user's role in it (none in a room without an owner: `my_rooms`
    /// shows such a room as before owners existed).
    pub role: Option<Role>,
    pub last: Option<LastMessage>,
    /// The user's read marker (0: none).
    pub read_id: i64,
    /// `msg` entries of others, not deleted, above the marker, among those kept
    /// — counted among the first [`super::queries::UNREAD_WINDOW`] entries
    /// after the marker.
    pub unread: i64,
    /// The count stopped at that window: there may be more.
    pub unread_more: bool,
    /// Rows the count looked at (charged to the user's budget).
    pub examined: i64,
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
    /// The request's row or byte budget ran out before this room: none are
    /// replayed (the client reloads the room with `history`).
    pub over_budget: bool,
}

/// A `resume`'s replay and the rows it examined (charged to the user's replay
/// budget).
#[derive(Clone, Debug)]
pub struct Replay {
    /// Whose budget pays for the rows examined.
    pub username: String,
    pub rooms: Vec<RoomReplay>,
    /// The private rooms among the job's `strangers`.
    pub hidden: Vec<String>,
    pub examined: i64,
    /// The rows reserved for it (the job's `rows`).
    pub reserved: i64,
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
    /// Added to the room with this id by the server API (`PUT
    /// /api/v1/rooms/{id}/members/{user}`): a private room needs no
    /// invitation; a ban still refuses it.
    Added(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowStatus {
    NotRegistered,
    Already,
    Followed,
    /// The followed user blocks the follower: nothing was stored.
    Blocked,
}

/// How a `block` went (`SELF` is answered on the loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStatus {
    NotRegistered,
    Already,
    Blocked,
    /// The blocker blocks as many users as the cap allows already: nothing
    /// was stored.
    Full,
}

/// Work for the database threads. Variants below "ordered writes" go to the single
/// writer (see [`Job::is_ordered_write`]).
#[derive(Clone, Debug)]
pub enum Job {
    Health,
    /// A new account, unless a name equal to it but for case exists (decided
    /// under a lock on the lowercased name, so on every node at once).
    Register {
        username: String,
        password_hash: String,
        nickname: String,
    },
    /// The existing username equal to this one without regard to case (the
    /// same one first), before a registration hashes anything.
    UsernameTaken {
        username: String,
    },
    /// Stores a WebSocket ticket (its SHA-256) for `grant.username`, valid for
    /// `ttl` by the database's clock; trims the user's tickets to the newest
    /// [`WS_TICKETS_PER_USER`] and drops their expired ones.
    MintWsTicket {
        hash: Vec<u8>,
        grant: Verified,
        ttl: std::time::Duration,
    },
    /// Deletes a ticket and returns what it was for: a ticket opens one
    /// connection, on whichever node deletes it first.
    TakeWsTicket {
        hash: Vec<u8>,
    },
    /// Deletes every expired ticket (the retention tick).
    PruneWsTickets,
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
    /// A user's memberships, follows and offline queue; the queued DMs not
    /// claimed by another live node are claimed for `claim` (this node).
    OpenSession {
        username: String,
        claim: String,
    },
    /// Offline DMs claimed by this node but not written: another node may take
    /// them (and the count of dropped ones, with `dropped`).
    ReleaseOfflineClaims {
        username: String,
        ids: Vec<i64>,
        dropped: bool,
        claim: String,
    },
    /// This node's count of `user`'s connections (0: none), and whether that
    /// made them online or offline in the whole cluster (see `cluster`).
    Presence {
        node: String,
        user: String,
        nickname: String,
        conns: u32,
    },
    /// Keeps this node alive in `klav_nodes` and removes dead nodes and their
    /// presence (announcing who went offline).
    Heartbeat {
        node: String,
        incarnation: i64,
        timeout_secs: i64,
    },
    /// Entries of a room after `after` (up to `upto`), and its members now: what a
    /// node missed. Runs on the writer, after every write submitted before it.
    ReadEntries {
        room: String,
        after: i64,
        upto: Option<i64>,
    },
    /// After the bus was lost: entries of every tracked room after its cursor, the
    /// memberships and follows of `users`, and which of `watched` are online.
    CatchUp {
        rooms: Vec<(String, i64)>,
        users: Vec<String>,
        watched: Vec<String>,
    },
    /// Whom `user` follows, as the database has it: a follow the bus announced
    /// is granted in memory only once such a read finds it (`read` numbers the
    /// reads, see `cluster::presence`).
    FollowsOf {
        user: String,
        read: u64,
    },
    /// One entry as it is now (an edit that was too large to notify).
    EntryById {
        id: i64,
    },
    /// The users `username` follows who are online anywhere in the cluster.
    OnlineFriends {
        username: String,
    },
    /// Which of `users` are online anywhere in the cluster (users this node
    /// has just started watching).
    PresenceOf {
        users: Vec<String>,
    },
    /// Ephemeral events (typing) for the other nodes: notified, never stored.
    Notify {
        payloads: Vec<String>,
    },
    /// The newest `limit` entries of a room, of every kind, to fill the history cache.
    HistoryFill {
        room: String,
        limit: i64,
    },
    /// Offline DMs written to one of `username`'s connections, and how many
    /// dropped ones it was told of (`offline_dm_dropped`).
    DeleteOfflineDms {
        username: String,
        ids: Vec<i64>,
        dropped: i64,
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
    /// `from` blocks `to` unless `from` blocks `cap` users already; the
    /// follow `to` → `from` goes in the same transaction.
    Block {
        from: String,
        to: String,
        cap: i64,
    },
    Unblock {
        from: String,
        to: String,
    },
    /// Whether a room a non-member named is private (it is then answered
    /// `ROOM_NOT_FOUND`, as a room that does not exist; see `handlers::strangers`).
    Stranger {
        room: String,
        reply: StrangerReply,
    },
    /// Whom `username` blocks, sorted by username.
    BlockedList {
        username: String,
    },
    /// Every member of a room, sorted by username; with `cluster`, each with
    /// whether they have a connection on any node.
    RoomMembers {
        room: String,
        cluster: bool,
        /// The asking connection starts watching the room's members (carried
        /// back to the loop).
        watch: bool,
    },
    /// The entries after each cursor a user may see, at most `limit` per room,
    /// within a budget fixed before anything is read: at most `rows` rows
    /// examined in all (ids and sizes only), and text loaded only for entries
    /// whose rooms fit in `bytes` of reply.
    Resume {
        username: String,
        rooms: Vec<ResumeCursor>,
        /// Rooms named that the user does not belong to: which are private?
        strangers: Vec<String>,
        limit: i64,
        rows: i64,
        bytes: usize,
    },
    /// Retention: keep the newest `keep` entries of each room.
    Prune {
        rooms: Vec<String>,
        keep: u64,
    },
    /// Reads of room administration (`room_info`).
    AdminQuery(AdminQuery),

    /// What the server API reads (see [`ApiQuery`]).
    Api(ApiQuery),

    // ordered writes
    /// `private`: the creator is made a member (the owner) in the same
    /// transaction; a public room's creator is its owner without being a member.
    /// An empty `creator`: a room the server API created without an owner
    /// (nobody is made a member of it; `creator_nickname` names who is shown
    /// creating it).
    CreateRoom {
        creator: String,
        creator_nickname: String,
        name: String,
        private: bool,
        topic: Option<String>,
    },
    /// `max_rooms`: a join that uses no invitation is refused when the user
    /// holds this many memberships and open invitations together.
    Join {
        username: String,
        nickname: String,
        by: JoinBy,
        max_rooms: i64,
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
    /// Room administration: roles, the room's name, topic and privacy.
    Admin(AdminJob),
    /// Revokes every token of `username` (moves their token generation on),
    /// setting `new_hash` as their password if given; refused when the
    /// presenting token's generation `token_gen` is already revoked or the
    /// account is gone. Ordered with the messages it must stop.
    Revoke {
        username: String,
        token_gen: i64,
        new_hash: Option<String>,
    },
    /// Deletes the account of `username` (see `db::writer::deletion`);
    /// refused as [`Job::Revoke`] is. `erase`: their messages and DMs become
    /// tombstones.
    DeleteAccount {
        username: String,
        token_gen: i64,
        erase: bool,
    },
}

impl Job {
    /// The user whose session data (memberships, follows, offline queue) this
    /// job changes, if any: that user's session loads wait until it is done.
    pub fn session_writer(&self) -> Option<&str> {
        match self {
            Job::Join { username, .. }
            | Job::Leave { username, .. }
            | Job::CreateRoom {
                creator: username,
                private: true,
                ..
            }
            | Job::DeleteAccount { username, .. }
            | Job::DeleteOfflineDms { username, .. } => Some(username),
            Job::Presence { user, .. } => Some(user),
            Job::Follow { from, .. } | Job::Unfollow { from, .. } => Some(from),
            // The blocked user's follows and blockers are what a block changes.
            Job::Block { to, .. } | Job::Unblock { to, .. } => Some(to),
            Job::Dm {
                to, queue: true, ..
            }
            | Job::QueueDm { to, .. } => Some(to),
            // The removed user's memberships, the target's role.
            Job::Admin(AdminJob::Remove { user, .. } | AdminJob::Role { user, .. }) => Some(user),
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
                | Job::Block { .. }
                | Job::Unblock { .. }
                | Job::CreateRoom { .. }
                | Job::Join { .. }
                | Job::Leave { .. }
                | Job::Msg(_)
                | Job::Dm { .. }
                | Job::QueueDm { .. }
                | Job::Edit { .. }
                | Job::Read { .. }
                | Job::ReadEntries { .. }
                | Job::CatchUp { .. }
                | Job::Admin(_)
                | Job::Revoke { .. }
                | Job::DeleteAccount { .. }
        )
    }
}
