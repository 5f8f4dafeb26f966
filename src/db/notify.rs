//! What a transaction tells the other nodes of a cluster, as the database
//! threads see it. Every transaction that changes what other nodes show
//! (entries, edits, presence, follows, blocks, read markers) adds [`Notes`] as it works
//! and sends them with `pg_notify` before it commits: PostgreSQL delivers them
//! to every listening node in commit order, and only if the transaction
//! commits. One batch of the writer is one transaction, so notes go per batch,
//! not per message.
//!
//! How notes are encoded and sealed, and how a node opens what it hears, is
//! the cluster's business (`cluster::bus`): it hands the database threads a
//! [`Notifier`]. A node alone has none, and its transactions note nothing.

use std::time::SystemTime;

use postgres::GenericClient;

use super::entry::ChatEntry;
use super::error::DbError;
use super::rows::Stmts;

/// The channel every node listens on.
pub const CHANNEL: &str = "klav";

/// A change of room membership carried with the system entry that announces it
/// (the entry's text names the nickname, not the user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberOp {
    pub joined: bool,
    pub user: String,
    pub nickname: String,
}

/// A membership ended by a moderator (a kick, or a ban): noted just before
/// the system entry that ends it, whose id it names, so that the node that
/// delivers that entry knows it for a removal (see `handlers::moderation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub room: String,
    /// The system entry ending the membership.
    pub id: i64,
    pub user: String,
    pub banned: bool,
    pub by: String,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
/// What a node hears from another (or, for presence, from the database).
pub enum BusEvent {
    /// A new entry of a room; `prev` is the room's entry before it.
    Entry {
        entry: ChatEntry,
        prev: i64,
        op: Option<MemberOp>,
        /// A DM put into its recipient's offline queue (nobody delivers it live).
        queued: bool,
    },
    /// A new entry too large to carry: read it back (ids `prev` < id ≤ `id`).
    EntryRef {
        room: String,
        prev: i64,
        id: i64,
        op: Option<MemberOp>,
    },
    /// An entry edited or deleted (the row as it is now).
    Change { entry: ChatEntry },
    /// An entry edited, too large to carry: read it back.
    ChangeRef { room: String, id: i64 },
    /// A user's first connection in the cluster opened, or their last closed.
    Presence {
        user: String,
        nickname: String,
        online: bool,
    },
    /// `from` followed (`on`) or unfollowed `to`.
    Follow { from: String, to: String, on: bool },
    /// `blocker` blocked (`on`) or unblocked `blocked`.
    Block {
        blocker: String,
        blocked: String,
        on: bool,
    },
    /// A user's read marker in a room moved (their other connections hear it).
    ReadMarker { user: String, room: String, id: i64 },
    /// Someone is typing in a room (ephemeral: never stored).
    Typing {
        room: String,
        user: String,
        nickname: String,
    },
    /// A user's role in a room changed (`by`: who changed it; none when
    /// ownership passed on a leave or came with creating the room). `told`:
    /// the room's members are told (`role_changed`); otherwise only memory
    /// changes (the creator of a room becoming its owner).
    Role {
        room: String,
        user: String,
        role: String,
        by: Option<String>,
        told: bool,
    },
    /// `user` was invited to a room (their connections are told).
    Invited { user: String, invite: Invite },
    /// The next entry of the room ends a membership by a kick or a ban.
    Removal(Removal),
    /// A room's name, topic or privacy changed (`room_update`).
    RoomUpdated(RoomUpdate),
    /// Every token of `user` older than `generation` was revoked (a password
    /// change, `logout_all`).
    Revoked { user: String, generation: i64 },
    /// The server API disconnected `user`: every WebSocket of theirs on
    /// every node closes (1008 `disconnected by server`); their tokens stay
    /// valid.
    Disconnected { user: String },
    /// `user`'s account was deleted (their tokens revoked up to `generation`);
    /// `erased`: their messages became tombstones. The leaves, the follows
    /// removed and their going offline come as events of their own.
    AccountDeleted {
        user: String,
        generation: i64,
        erased: bool,
    },
}

/// An open invitation as `invited` and `my_invites` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub room: String,
    pub name: String,
    pub private: bool,
    pub by: String,
    pub by_nickname: String,
    pub at: SystemTime,
}

/// A `room_update` as the room's members are told of it: the room as it now
/// is, who changed it, and the system entry recording it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomUpdate {
    pub room: String,
    pub id: i64,
    pub name: String,
    pub topic: Option<String>,
    pub private: bool,
    pub by: String,
}

/// The fields of an entry, borrowed (the writer encodes without copying).
pub struct EntryRef<'a> {
    pub id: i64,
    pub ts: SystemTime,
    pub kind: &'a str,
    pub room: &'a str,
    pub from: &'a str,
    pub from_nickname: &'a str,
    pub to: Option<&'a str>,
    pub text: &'a str,
    pub client_id: Option<&'a str>,
}

impl<'a> EntryRef<'a> {
    pub fn of(e: &'a ChatEntry) -> EntryRef<'a> {
        EntryRef {
            id: e.id,
            ts: e.ts,
            kind: &e.kind,
            room: &e.room,
            from: &e.from,
            from_nickname: &e.from_nickname,
            to: e.to.as_deref(),
            text: &e.text,
            client_id: e.client_id.as_deref(),
        }
    }
}

/// A transaction's notes for the other nodes, encoded as they are added.
pub trait Notes {
    /// A new entry of a room; `prev` is the room's entry before it, `queued` a
    /// DM put into its recipient's offline queue.
    fn entry(&mut self, e: &EntryRef<'_>, prev: i64, op: Option<&MemberOp>, queued: bool);
    /// An entry edited or deleted (the row as it is now).
    fn change(&mut self, e: &ChatEntry);
    fn read_marker(&mut self, user: &str, room: &str, id: i64);
    fn follow(&mut self, from: &str, to: &str, on: bool);
    fn block(&mut self, blocker: &str, blocked: &str, on: bool);
    /// A user's first connection in the cluster opened (`online`), or their
    /// last closed.
    fn presence(&mut self, user: &str, nickname: &str, online: bool);
    /// A user's role in a room changed (see [`BusEvent::Role`]).
    fn role(&mut self, room: &str, user: &str, role: &str, by: Option<&str>, told: bool);
    /// `user` was invited to a room.
    fn invited(&mut self, user: &str, invite: &Invite);
    /// A kick or ban: noted before the entry it names.
    fn removal(&mut self, r: &Removal);
    /// A room's name, topic or privacy changed.
    fn room_updated(&mut self, u: &RoomUpdate);
    /// `user`'s tokens older than `generation` were revoked.
    fn revoked(&mut self, user: &str, generation: i64);
    /// `user`'s account was deleted (and, `erased`, their messages).
    fn account_deleted(&mut self, user: &str, generation: i64, erased: bool);
    fn is_empty(&self) -> bool;
    /// The payloads to send, sealed now: last thing before the commit, so that
    /// their time is close to when they are heard.
    fn seal(self: Box<Self>) -> Vec<String>;
}

/// What the cluster hands the database threads to note with.
pub trait Notifier: Send + Sync {
    /// This node's name.
    fn node(&self) -> &str;
    /// Notes for one transaction.
    fn notes(&self) -> Box<dyn Notes + '_>;
    /// Seals event arrays the loop packed itself (`typing`).
    fn seal(&self, bodies: &[String]) -> Vec<String>;
}

/// Sends sealed payloads on [`CHANNEL`], in order; they reach the other nodes
/// when (and only if) the transaction commits.
pub fn send<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    payloads: &[String],
) -> Result<(), DbError> {
    if payloads.is_empty() {
        return Ok(());
    }
    let s = st.get(
        c,
        "SELECT pg_notify('klav', p) FROM unnest($1::text[]) WITH ORDINALITY AS t(p, n) \
         ORDER BY n",
    )?;
    c.query(&s, &[&payloads])?;
    Ok(())
}

/// Sends a transaction's notes (nothing when there are none).
pub fn send_notes<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    notes: Box<dyn Notes + '_>,
) -> Result<(), DbError> {
    if notes.is_empty() {
        return Ok(());
    }
    send(c, st, &notes.seal())
}
