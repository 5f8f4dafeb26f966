//! The server API's own reads (`/api/v1/`), as plain data: the key check,
//! and what an application asks about users and rooms that no WebSocket
//! request asks in the same form. Its writes are the WebSocket requests'
//! ordered-writer jobs (a post is a [`super::Job::Msg`], a member added a
//! [`super::Job::Join`], …), with what tells them apart: [`Poster`],
//! [`super::JoinBy::Added`], [`BY_APP`].

use super::{ChatEntry, Role, UserRef};

/// The requester of a moderation job the server API asked for (a member
/// removed or banned by the application): a reserved username (see
/// `names`), so that no user is it. Events and bans show it as `by`.
pub const BY_APP: &str = "system";

/// The `from_nickname` of an announcement: a system entry the server API
/// posted (`POST /api/v1/rooms/{id}/messages` without `from`). The entries
/// the server writes itself (joins, leaves, a room created) have `system`.
pub const ANNOUNCEMENT: &str = "announcement";

/// Who vouches for a message's sender being a member of its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poster {
    /// A connection of the sender's: the loop checked the membership in
    /// memory, which the same writes keep exact.
    Member,
    /// The server API, on behalf of `from`: the writer checks the membership
    /// in the transaction that stores it (the user may be online on no node).
    App,
    /// The server API's announcement: stored as a `system` entry from
    /// `system` (nickname [`ANNOUNCEMENT`]); every member receives it.
    Announcement,
}

/// Reads of the server API, for the general workers.
#[derive(Clone, Debug)]
pub enum ApiQuery {
    /// The live key with this SHA-256 (see `db::api_keys::check`).
    Key { hash: [u8; 32] },
    /// A registered, not deleted user.
    User { username: String },
    /// Whether a room exists.
    Room { room: String },
    /// A room's entries as the application sees them: every kind but DMs,
    /// newest `limit` matching the filters, oldest first.
    History {
        room: String,
        limit: i64,
        before_id: Option<i64>,
        after_id: Option<i64>,
    },
    /// A room's members with their roles and, with `cluster`, who has a
    /// connection on any node.
    Members { room: String, cluster: bool },
    /// Connections of each of `users` on every node (a cluster's presence
    /// rows).
    Presence { users: Vec<String> },
}

/// A user as the API names them.
#[derive(Clone, Debug)]
pub struct ApiUser {
    pub username: String,
    pub nickname: String,
}

/// What a server API read found.
#[derive(Debug)]
pub enum ApiOutcome {
    /// The key's name, when it is live.
    Key(Option<String>),
    User(Option<ApiUser>),
    Room(bool),
    /// `None`: no such room.
    History(Option<Vec<ChatEntry>>),
    /// `None`: no such room. The members (sorted by username) with their
    /// role (none in a room without an owner), and those online anywhere.
    Members(Option<ApiMembers>),
    /// (user, connections in the cluster) of the users asked who have any.
    Presence(Vec<(String, i64)>),
}

/// A room's members as `GET /api/v1/rooms/{id}/members` shows them.
#[derive(Debug)]
pub struct ApiMembers {
    pub members: Vec<(UserRef, Option<Role>)>,
    /// Only asked in a cluster (a node alone knows from memory).
    pub online: Option<Vec<String>>,
}
