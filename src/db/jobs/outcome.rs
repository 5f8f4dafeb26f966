//! What comes back from the database threads: [`Outcome`], one variant per
//! job kind, and the results it carries (how a join, a DM, a registration or
//! a deletion went). Apart from [`super::Job`] so that each side is read in
//! one place.

use super::*;

/// What a non-member who named a room that is not private is told: what
/// every version before private rooms told them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrangerReply {
    /// `error` `NOT_A_MEMBER`.
    NotAMember,
    /// `leave_ack` `NOT_A_MEMBER`.
    LeaveAck,
    /// `dm_ack` `SENDER_NOT_IN_ROOM` for a DM to `to`.
    DmAck { to: String },
}

/// How a `join` went.
#[derive(Clone, Debug)]
pub enum JoinResult {
    NotFound,
    /// The user is banned from the room.
    Banned,
    /// The user holds `max_rooms` memberships and open invitations.
    TooManyRooms,
    Already {
        room: String,
    },
    /// `role`: the joiner's (the owner's, when the join created the room or
    /// its owner joined it).
    Joined {
        room: String,
        role: Role,
    },
}

#[derive(Clone, Debug)]
pub enum DmResult {
    RecipientNotInRoom,
    /// The recipient blocks the sender: nothing was stored or queued.
    Blocked,
    Stored {
        id: i64,
        ts: SystemTime,
        queued: bool,
        /// The recipient has a connection on another node (which delivers it).
        elsewhere: bool,
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

/// Outstanding WebSocket tickets per user: minting another drops the oldest.
pub const WS_TICKETS_PER_USER: i64 = 20;

/// How a registration went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    Created,
    /// The name exists: nothing changed.
    Already,
    /// This existing account's name differs from the one asked only in case.
    CaseTaken(String),
    /// This account (the name, in some case) was deleted: the name stays
    /// reserved.
    Reserved(String),
}

/// What a WebSocket ticket turned out to be.
#[derive(Clone, Debug)]
pub enum TicketUse {
    /// Never minted, already used, or dropped for newer ones.
    Unknown,
    Expired,
    /// Good for one connection, as the token that minted it.
    Valid(Verified),
}

/// A job's result. Variants mirror [`Job`]'s.
#[derive(Debug)]
pub enum Outcome {
    Healthy,
    Registered(Registration),
    UsernameTaken {
        existing: Option<String>,
        /// That account was deleted: its name stays reserved.
        reserved: bool,
    },
    /// `minted`: false when the user no longer exists.
    WsTicketMinted {
        minted: bool,
    },
    WsTicket(TicketUse),
    Credentials {
        username: String,
        password: Option<String>,
        /// The user's token generation (the token a login issues carries it).
        generation: i64,
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
    /// `username`: whose budget pays for the rows read.
    MyRooms {
        username: String,
        rooms: Vec<RoomInfo>,
    },
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
    Block {
        from: String,
        to: String,
        status: BlockStatus,
    },
    Unblock {
        from: String,
        to: String,
        removed: bool,
    },
    BlockedList(Vec<UserRef>),
    /// A non-member's request about `room`: `hidden` when the room is private.
    Stranger {
        room: String,
        reply: StrangerReply,
        hidden: bool,
    },
    Pruned(u64),
    /// `logged`: the system entries the job wrote (here and below), so the loop
    /// can keep its history cache exact without reading them back.
    /// `private`: the creator was made a member (the last of `logged` is the
    /// `joined` entry).
    RoomCreated {
        room: String,
        name: String,
        creator: String,
        creator_nickname: String,
        private: bool,
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
        /// The owner left: who owns the room now (`Some(None)`: nobody, the
        /// room is empty).
        heir: Option<Option<String>>,
        logged: Vec<ChatEntry>,
    },
    Msg {
        msg: NewMessage,
        id: i64,
        ts: SystemTime,
    },
    /// A `msg` whose `client_id` was already used: the original entry.
    MsgDuplicate(Box<Duplicate>),
    /// A post of the server API on behalf of a user who is not a member of
    /// the room (checked by the writer): nothing was stored.
    PosterNotMember,
    /// What a server API read found.
    Api(ApiOutcome),
    RoomMembers {
        room: String,
        /// Each with their role (none in a room without an owner).
        members: Vec<(UserRef, Option<Role>)>,
        /// Members online anywhere (only asked in a cluster).
        online: Option<Vec<String>>,
        watch: bool,
    },
    Resume(Replay),
    Presence {
        user: String,
    },
    Heartbeat {
        /// This node had been declared dead (its presence removed): it must
        /// write its users' presence again.
        rejoined: bool,
    },
    Entries {
        room: String,
        entries: Vec<ChatEntry>,
        /// Ids of those entries that are DMs put into an offline queue.
        queued: Vec<i64>,
        members: Vec<String>,
        /// What was asked: every entry of the room up to it is among
        /// `entries` (or was before `after`).
        upto: Option<i64>,
    },
    FollowsOf {
        user: String,
        read: u64,
        following: Vec<String>,
    },
    CaughtUp(Box<CaughtUp>),
    Entry(Option<ChatEntry>),
    /// (username, nickname, connections in the cluster), any order.
    OnlineFriends(Vec<(String, String, i64)>),
    /// Of the `users` asked, those `online`.
    PresenceOf {
        users: Vec<String>,
        online: Vec<String>,
    },
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
    Admin(AdminOutcome),
    /// `Job::Revoke`: the user's new token generation, or `None` when the
    /// presenting token was revoked already or the account is gone.
    Revoked {
        username: String,
        generation: Option<i64>,
    },
    /// An ordered write (a `msg`, `room_dm`, `join`, …) whose sender's tokens were revoked (or whose
    /// account was deleted) before it was written: nothing was stored.
    SenderRevoked,
    /// `Job::DeleteAccount`: what the deletion did, or `None` when the
    /// presenting token was revoked already or the account is gone.
    AccountDeleted {
        username: String,
        deletion: Option<Box<Deletion>>,
    },
}

/// What deleting an account did, for the loop to show (the other nodes hear
/// the same from the bus).
#[derive(Debug)]
pub struct Deletion {
    /// The nickname their leaves were announced under.
    pub nickname: String,
    /// Each room they left: its `left` system entry and the entry before it.
    /// With the heir of each room they owned there (see `db::writer::rooms`).
    pub leaves: Vec<(ChatEntry, i64, Option<String>)>,
    /// (room, heir) of the rooms they owned without belonging to them.
    pub passed_on: Vec<(String, String)>,
    /// (follower, followee) of every follow removed, theirs and of them.
    pub unfollowed: Vec<(String, String)>,
    /// They had a connection somewhere (in a cluster: by `klav_presence`).
    pub was_online: bool,
}
