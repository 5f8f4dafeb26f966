//! One `chat_logs` row: what jobs return and what the bus carries between nodes.

use std::time::SystemTime;

/// A persisted `chat_logs` row, as `history` returns it.
#[derive(Clone, Debug, PartialEq)]
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
    /// Who deleted it, when a moderator did (the room's owner or an admin).
    pub deleted_by: Option<String>,
}
