//! What an import tells its caller: why it failed ([`ImportError`]), what it
//! did or would do ([`Summary`]), and progress lines while it works.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::files::{CHAT_FILE, USERS_FILE};
use crate::db::DbError;

/// How often long phases report progress.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why an import did not happen. In every case nothing was imported: the
/// transaction is rolled back (or was never opened).
#[derive(Debug)]
pub enum ImportError {
    /// A file cannot be read (missing, unreadable).
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A file is not valid JSON, or does not have the expected shape. `path` is
    /// where inside the file (`chat_logs.r_1234abcd[3].ts`), empty for the whole file.
    Json {
        file: &'static str,
        path: String,
        reason: String,
    },
    /// PostgreSQL could not be reached or refused a statement.
    Db(DbError),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Io { file, source } => {
                write!(f, "cannot read {}: {source}", file.display())
            }
            ImportError::Json { file, path, reason } if path.is_empty() => {
                write!(f, "{file}: {reason}")
            }
            ImportError::Json { file, path, reason } => write!(f, "{file}: {path}: {reason}"),
            ImportError::Db(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<postgres::Error> for ImportError {
    fn from(e: postgres::Error) -> Self {
        ImportError::Db(DbError::from(e))
    }
}

/// Which of the two `chat_state.json` layouts was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Rooms keyed by id, names in `room_infos`.
    ById,
    /// The older variant: rooms keyed by name, no `room_infos`.
    ByName,
}

/// Rows of one kind: how many were written, and how many were already present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub imported: u64,
    pub skipped: u64,
}

impl Counts {
    pub(crate) fn of(total: usize, imported: usize) -> Counts {
        Counts {
            imported: imported as u64,
            skipped: total.saturating_sub(imported) as u64,
        }
    }
}

/// What an import did (or, for a dry run, would do).
#[derive(Debug, Clone)]
pub struct Summary {
    pub dry_run: bool,
    pub layout: Layout,
    /// Users of `users.json` (`userinfo`).
    pub users: Counts,
    pub follows: Counts,
    pub rooms: Counts,
    pub memberships: Counts,
    pub entries: Counts,
    /// Users referenced (as members, senders, recipients, follows, or listed in
    /// `users` without `userinfo`) but absent from `users.json` and from the
    /// database, created with a password nobody can log in with.
    pub missing_users: Vec<String>,
    /// Things worth knowing that did not stop the import.
    pub notes: Vec<String>,
}

impl Summary {
    /// Whether nothing at all was (or would be) written.
    pub fn is_noop(&self) -> bool {
        [
            self.users,
            self.follows,
            self.rooms,
            self.memberships,
            self.entries,
        ]
        .iter()
        .all(|c| c.imported == 0)
            && self.missing_users.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            writeln!(f, "dry run: nothing was written. An import would do this:")?;
        }
        let layout = match self.layout {
            Layout::ById => "rooms keyed by id",
            Layout::ByName => "rooms keyed by name (older layout)",
        };
        writeln!(f, "{CHAT_FILE}: {layout}")?;
        let verb = if self.dry_run {
            "to import"
        } else {
            "imported"
        };
        writeln!(f, "{:<14}{verb:>11}{:>18}", "", "already present")?;
        for (what, c) in [
            ("users", self.users),
            ("follows", self.follows),
            ("rooms", self.rooms),
            ("memberships", self.memberships),
            ("chat entries", self.entries),
        ] {
            writeln!(f, "{what:<14}{:>11}{:>18}", c.imported, c.skipped)?;
        }
        if !self.missing_users.is_empty() {
            let verb = if self.dry_run { "to create" } else { "created" };
            writeln!(
                f,
                "users {verb} for references missing from {USERS_FILE} \
                 ({}; they cannot log in): {}",
                self.missing_users.len(),
                self.missing_users.join(", ")
            )?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

pub(crate) fn say(progress: &mut dyn Write, line: fmt::Arguments<'_>) {
    // Progress is advisory: a closed stderr must not fail the import.
    let _ = writeln!(progress, "{line}");
}
