//! Helpers every database thread shares: the per-connection statement cache,
//! and turning rows into entries and names.

use std::collections::HashMap;
use std::time::SystemTime;

use postgres::{GenericClient, Statement};

use super::entry::ChatEntry;

/// SQL for the id of a room's newest entry, for the `rooms` row named `$r`:
/// `klav_last_entry_id`, which the writer keeps; for a room it has not written
/// to yet (the old server's rooms) the largest id in its log; 0 for an empty
/// room. A literal, so that statements built with it stay `&'static str`.
macro_rules! room_newest_entry {
    ($r:literal) => {
        concat!(
            "COALESCE(",
            $r,
            ".klav_last_entry_id, (SELECT max(l.id) FROM chat_logs l WHERE l.room_id = ",
            $r,
            ".id), 0)"
        )
    };
}
pub(crate) use room_newest_entry;

/// A member's role as a statement selects it: `rooms.klav_owner` names the
/// owner, `room_members.klav_role` the others' roles (`m`, `r` aliased so);
/// NULL in a room without an owner (one of the old server's, or one left
/// empty), which is shown as before owners existed.
macro_rules! member_role {
    () => {
        "CASE WHEN r.klav_owner IS NULL THEN NULL \
              WHEN r.klav_owner = m.username THEN 'owner' ELSE m.klav_role END"
    };
}
pub(crate) use member_role;

/// Prepared statements of one connection, keyed by their SQL text.
#[derive(Default)]
pub struct Stmts(HashMap<&'static str, Statement>);

impl Stmts {
    pub fn get<C: GenericClient>(
        &mut self,
        c: &mut C,
        sql: &'static str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql)?;
        self.0.insert(sql, s.clone());
        Ok(s)
    }
}

/// The nickname to show: the stored one, or the username when it is empty.
/// Rows written before nicknames were checked (or imported) may hold line
/// breaks and other controls: they are replaced here, where every nickname
/// read from the database passes, so none reaches a session, a system text or
/// another client as it was.
pub fn display_nickname(username: &str, nickname: Option<String>) -> String {
    let shown = match nickname {
        Some(n) if !n.is_empty() => n,
        _ => username.to_string(),
    };
    match crate::names::printable(&shown) {
        std::borrow::Cow::Borrowed(_) => shown,
        std::borrow::Cow::Owned(clean) => clean,
    }
}

/// A `chat_logs` row selected as `entry_columns!()` (old rows may have NULLs).
pub fn entry_from_row(r: postgres::Row) -> ChatEntry {
    let from: Option<String> = r.get(4);
    let from = from.unwrap_or_default();
    let nick: Option<String> = r.get(5);
    let ts: Option<SystemTime> = r.get(1);
    let kind: Option<String> = r.get(2);
    let text: Option<String> = r.get(7);
    ChatEntry {
        id: r.get(0),
        ts: ts.unwrap_or(std::time::UNIX_EPOCH),
        kind: kind.unwrap_or_else(|| "msg".into()),
        room: r.get(3),
        from_nickname: display_nickname(&from, nick),
        from,
        to: r.get(6),
        text: text.unwrap_or_default(),
        client_id: r.get(8),
        edited_at: r.get(9),
        deleted: r.get(10),
        deleted_by: r.get(11),
    }
}
