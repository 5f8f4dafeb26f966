//! `klav import-json <DIR>`: brings the state of the JSON-file server (the
//! generation before the old PostgreSQL server) into our schema: `users.json`,
//! `friends_state.json` and `chat_state.json`.
//!
//! Three phases, so that a bad file never leaves a half-imported database:
//! 1. read and validate all three files completely; nothing touches the database
//!    yet, and a problem is reported with the file and the path inside it;
//! 2. in one transaction, find out what the database already holds, so that a
//!    re-import adds only what is new (a dry run stops here and rolls back);
//! 3. hash the new users' passwords on all cores, write everything with multi-row
//!    INSERTs over arrays (a round trip per few thousand rows, not per row), and
//!    commit once.
//!
//! What counts as "already present":
//! - users, rooms (by id), memberships and follows: their keys, as the tables'
//!   unique constraints define them; an existing user is never overwritten, so a
//!   password already upgraded by a login stays as it is;
//! - chat entries have no natural key: an entry is present when the room already
//!   holds one with the same (ts, kind, from_user, to_user, text), counted as a
//!   multiset so that two identical entries in the file are both imported once.
//!
//! Rooms of the older name-keyed `chat_state.json` map to the oldest room of that
//! name in the database when there is one (the room a `join` by name would pick,
//! and the one a previous import of the same file created, because imported rooms
//! get their first entry's time as `created_at`), else to a freshly minted id.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use postgres::NoTls;

use crate::db::{DbError, SCHEMA_SQL};

mod files;
mod plan;
mod report;
mod source;
mod write;

pub use files::{CHAT_FILE, FRIENDS_FILE, USERS_FILE};
use plan::{plan, schema_present};
use report::say;
pub use report::{Counts, ImportError, Layout, Summary};
use source::read_source;
use write::write;

/// Serialises concurrent imports: entry de-duplication reads before it writes.
const IMPORT_LOCK: i64 = 7_283_911;

/// Imports the three JSON files of `dir` into the database at `database_url`, in
/// one transaction. With `dry_run`, validates and counts, then rolls back
/// (the schema is applied only by a real import). Progress lines go to `progress`.
pub fn import_dir(
    database_url: &str,
    dir: &Path,
    dry_run: bool,
    progress: &mut dyn Write,
) -> Result<Summary, ImportError> {
    let source = read_source(dir, progress)?;

    let mut pg: postgres::Config = database_url.parse().map_err(|e: postgres::Error| {
        ImportError::Db(DbError::Query(format!("invalid database URL: {e}")))
    })?;
    pg.application_name("klav-import");
    pg.connect_timeout(Duration::from_secs(10));
    if !dry_run {
        crate::db::apply_schema(&pg).map_err(ImportError::Db)?;
    }
    let mut client = pg
        .connect(NoTls)
        .map_err(|e| ImportError::Db(DbError::Unavailable(e.to_string())))?;
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IMPORT_LOCK])?;
    if dry_run && !schema_present(&mut tx)? {
        // A dry run must not change the database; the schema goes into the
        // transaction that is rolled back, so the queries below have tables.
        tx.batch_execute(SCHEMA_SQL)?;
    }
    let plan = plan(&mut tx, &source, progress)?;
    if dry_run {
        let summary = plan.dry_summary(&source);
        tx.rollback()?;
        return Ok(summary);
    }
    let summary = write(&mut tx, &source, plan, progress)?;
    say(progress, format_args!("committing"));
    tx.commit()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::plan::last_of;
    use super::report::Layout;
    use super::source::*;
    use super::write::unusable_password;
    use crate::auth::password::is_hashed;

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(key_path("", "chat_logs"), "chat_logs");
        assert_eq!(key_path("chat_logs", "r_1234abcd"), "chat_logs.r_1234abcd");
        assert_eq!(
            key_path("chat_logs", "새 대화방"),
            "chat_logs[\"새 대화방\"]"
        );
        assert_eq!(key_path("x", "a.b"), "x[\"a.b\"]");
        assert_eq!(index_path("chat_logs.r_1", 3), "chat_logs.r_1[3]");
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let t = UNIX_EPOCH + Duration::new(1_761_038_784, 400_576_999);
        assert_eq!(
            to_micros(t),
            UNIX_EPOCH + Duration::new(1_761_038_784, 400_576_000)
        );
    }

    fn entry(secs: u64, kind: Kind, text: &str) -> Entry {
        Entry {
            ts: UNIX_EPOCH + Duration::from_secs(secs),
            kind,
            from: if kind == Kind::System {
                "system"
            } else {
                "alice"
            }
            .into(),
            to: (kind == Kind::Dm).then(|| "bob".to_string()),
            from_nickname: None,
            text: text.into(),
        }
    }

    #[test]
    fn last_message_rules_per_layout() {
        let mut room = new_room("r_1", "room");
        room.entries = vec![
            entry(1, Kind::Msg, "old msg"),
            entry(2, Kind::System, "joined"),
            entry(3, Kind::Dm, "secret"),
        ];
        // What the server maintains: the newest msg or system entry, never a DM.
        assert_eq!(last_of(&room, Layout::ById).unwrap().text, "joined");
        // The old server's rule for name-keyed files: msg first.
        assert_eq!(last_of(&room, Layout::ByName).unwrap().text, "old msg");
        room.entries.retain(|e| e.kind != Kind::Msg);
        assert_eq!(last_of(&room, Layout::ByName).unwrap().text, "joined");
        room.entries.clear();
        assert!(last_of(&room, Layout::ById).is_none());
        room.recorded_last = Some(Last {
            text: "recorded".into(),
            from: "system".into(),
            kind: "system".into(),
            ts: UNIX_EPOCH,
        });
        assert_eq!(last_of(&room, Layout::ById).unwrap().text, "recorded");
    }

    #[test]
    fn unusable_passwords_are_not_hashes_and_differ() {
        let (a, b) = (unusable_password(), unusable_password());
        assert!(a.starts_with("!disabled:") && a.len() == 74);
        assert!(!is_hashed(&a));
        assert_ne!(a, b);
    }
}
