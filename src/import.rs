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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::{NoTls, Transaction};
use serde_json::{Map, Value};

use crate::auth::password::{hash_password, is_hashed};
use crate::db::{DbError, SCHEMA_SQL};

pub const USERS_FILE: &str = "users.json";
pub const FRIENDS_FILE: &str = "friends_state.json";
pub const CHAT_FILE: &str = "chat_state.json";

/// Column widths of the schema; longer values would fail half-way through the
/// transaction, so they are refused up front with their path.
const USERNAME_MAX: usize = 100;
const NICKNAME_MAX: usize = 100;
const ROOM_ID_MAX: usize = 20;
const ROOM_NAME_MAX: usize = 255;
const KIND_MAX: usize = 20;

/// Rows per INSERT: large enough that tens of thousands of entries take a handful
/// of round trips, small enough to keep each statement's arrays modest.
const BATCH: usize = 5_000;

/// Serialises concurrent imports: entry de-duplication reads before it writes.
const IMPORT_LOCK: i64 = 7_283_911;

/// How often long phases report progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    fn of(total: usize, imported: usize) -> Counts {
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

fn say(progress: &mut dyn Write, line: fmt::Arguments<'_>) {
    // Progress is advisory: a closed stderr must not fail the import.
    let _ = writeln!(progress, "{line}");
}

// ---------------------------------------------------------------------------
// Phase 1: the files, read and validated.

/// Everything the three files say, validated.
struct Source {
    users: Vec<LegacyUser>,
    /// Names in `users.json`'s `users` list that have no `userinfo`.
    listed_without_info: Vec<String>,
    /// (follower, followee), de-duplicated, without self-follows.
    follows: Vec<(String, String)>,
    layout: Layout,
    rooms: Vec<LegacyRoom>,
    notes: Vec<String>,
}

struct LegacyUser {
    username: String,
    /// Plain text, or (rarely) an argon2 PHC string that is kept as it is.
    password: String,
    nickname: String,
    extra: String,
}

struct LegacyRoom {
    /// The room's id (id-keyed layout) or name (name-keyed layout).
    key: String,
    name: String,
    created_at: Option<SystemTime>,
    /// `room_infos.<id>.last`, used only when no entry gives a last message.
    recorded_last: Option<Last>,
    members: Vec<String>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Msg,
    Dm,
    System,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Msg => "msg",
            Kind::Dm => "dm",
            Kind::System => "system",
        }
    }
}

struct Entry {
    /// Truncated to microseconds, PostgreSQL's precision, so that it compares
    /// equal to the stored value on a re-import.
    ts: SystemTime,
    kind: Kind,
    /// `system` for system entries.
    from: String,
    /// DMs only.
    to: Option<String>,
    from_nickname: Option<String>,
    text: String,
}

#[derive(Clone)]
struct Last {
    text: String,
    from: String,
    kind: String,
    ts: SystemTime,
}

/// Reading one file: where errors are reported.
struct Doc {
    file: &'static str,
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `parent.key`, or `parent["key"]` when the key is not a plain identifier
/// (room names have spaces and Hangul), so the path can be followed unambiguously.
fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{}]", Value::String(key.to_string())),
    }
}

fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

impl Doc {
    fn err(&self, path: &str, reason: impl Into<String>) -> ImportError {
        ImportError::Json {
            file: self.file,
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn expected(&self, path: &str, what: &str, v: Option<&Value>) -> ImportError {
        match v {
            None => self.err(path, format!("expected {what}, but it is missing")),
            Some(v) => self.err(path, format!("expected {what}, found {}", describe(v))),
        }
    }

    fn read(&self, dir: &Path) -> Result<Value, ImportError> {
        let file = dir.join(self.file);
        let bytes = std::fs::read(&file).map_err(|source| ImportError::Io { file, source })?;
        serde_json::from_slice(&bytes).map_err(|e| self.err("", format!("not valid JSON: {e}")))
    }

    fn object<'a>(
        &self,
        v: Option<&'a Value>,
        path: &str,
    ) -> Result<&'a Map<String, Value>, ImportError> {
        match v {
            Some(Value::Object(m)) => Ok(m),
            other => Err(self.expected(path, "an object", other)),
        }
    }

    /// An object that may be absent (or null): empty then.
    fn opt_object<'a>(
        &self,
        v: Option<&'a Value>,
        path: &str,
    ) -> Result<Option<&'a Map<String, Value>>, ImportError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            other => self.object(other, path).map(Some),
        }
    }

    fn array<'a>(&self, v: Option<&'a Value>, path: &str) -> Result<&'a [Value], ImportError> {
        match v {
            Some(Value::Array(a)) => Ok(a),
            other => Err(self.expected(path, "an array", other)),
        }
    }

    /// A string that fits a column of `max` characters and that PostgreSQL can
    /// store (no NUL).
    fn string(
        &self,
        v: Option<&Value>,
        path: &str,
        max: Option<usize>,
    ) -> Result<String, ImportError> {
        match v {
            Some(Value::String(s)) => self.check_text(s, path, max).map(|()| s.clone()),
            other => Err(self.expected(path, "a string", other)),
        }
    }

    fn opt_string(
        &self,
        v: Option<&Value>,
        path: &str,
        max: Option<usize>,
    ) -> Result<Option<String>, ImportError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            other => self.string(other, path, max).map(Some),
        }
    }

    fn check_text(&self, s: &str, path: &str, max: Option<usize>) -> Result<(), ImportError> {
        if s.contains('\0') {
            return Err(self.err(
                path,
                "contains a NUL character, which PostgreSQL cannot store",
            ));
        }
        if let Some(max) = max {
            let n = s.chars().count();
            if n > max {
                return Err(self.err(
                    path,
                    format!("is {n} characters long; the database column holds at most {max}"),
                ));
            }
        }
        Ok(())
    }

    fn username(&self, v: Option<&Value>, path: &str) -> Result<String, ImportError> {
        let s = self.string(v, path, Some(USERNAME_MAX))?;
        if s.is_empty() {
            return Err(self.err(path, "expected a username, found an empty string"));
        }
        Ok(s)
    }

    /// A key of an object that names a user.
    fn username_key(&self, key: &str, path: &str) -> Result<String, ImportError> {
        self.username(Some(&Value::String(key.to_string())), path)
    }

    fn timestamp(&self, v: Option<&Value>, path: &str) -> Result<SystemTime, ImportError> {
        let s = self.string(v, path, None)?;
        crate::time::parse_iso(&s)
            .map(to_micros)
            .ok_or_else(|| self.err(path, format!("expected an ISO-8601 timestamp, found {s:?}")))
    }
}

/// PostgreSQL keeps microseconds; dropping the rest keeps re-imports comparable.
fn to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64),
        Err(_) => t, // before 1970: no legacy data is that old; keep it unchanged
    }
}

fn read_source(dir: &Path, progress: &mut dyn Write) -> Result<Source, ImportError> {
    let mut notes = Vec::new();
    say(
        progress,
        format_args!("reading {}", dir.join(USERS_FILE).display()),
    );
    let (users, listed_without_info) = read_users(dir, &mut notes)?;
    say(
        progress,
        format_args!("reading {}", dir.join(FRIENDS_FILE).display()),
    );
    let follows = read_friends(dir, &mut notes)?;
    say(
        progress,
        format_args!("reading {}", dir.join(CHAT_FILE).display()),
    );
    let (layout, rooms) = read_chat(dir, &mut notes)?;
    let entries: usize = rooms.iter().map(|r| r.entries.len()).sum();
    say(
        progress,
        format_args!(
            "read {} users, {} follows, {} rooms, {} chat entries",
            users.len(),
            follows.len(),
            rooms.len(),
            entries
        ),
    );
    Ok(Source {
        users,
        listed_without_info,
        follows,
        layout,
        rooms,
        notes,
    })
}

/// `{"users": [names], "userinfo": {name: {username, password, extra, nickname}}}`.
fn read_users(
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<(Vec<LegacyUser>, Vec<String>), ImportError> {
    let doc = Doc { file: USERS_FILE };
    let root = doc.read(dir)?;
    let top = doc.object(Some(&root), "")?;
    let info = doc.object(top.get("userinfo"), "userinfo")?;
    let mut users = Vec::with_capacity(info.len());
    for (key, v) in info {
        let path = key_path("userinfo", key);
        let username = doc.username_key(key, &path)?;
        let fields = doc.object(Some(v), &path)?;
        let inner = doc.opt_string(fields.get("username"), &key_path(&path, "username"), None)?;
        if let Some(inner) = inner.filter(|n| n != key) {
            notes.push(format!(
                "{USERS_FILE}: {path}.username is {inner:?}; imported under the key {key:?}, \
                 the name the old server looked users up by"
            ));
        }
        let password = doc.string(fields.get("password"), &key_path(&path, "password"), None)?;
        if password.is_empty() {
            notes.push(format!(
                "{USERS_FILE}: {path}.password is empty; {key} cannot log in (empty passwords \
                 are refused)"
            ));
        }
        let nickname = doc
            .opt_string(
                fields.get("nickname"),
                &key_path(&path, "nickname"),
                Some(NICKNAME_MAX),
            )?
            .unwrap_or_default();
        // `extra` was free-form: a string is kept as it is, anything else as its JSON.
        let extra = match fields.get("extra") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => {
                doc.check_text(s, &key_path(&path, "extra"), None)?;
                s.clone()
            }
            Some(other) => other.to_string(),
        };
        users.push(LegacyUser {
            username,
            password,
            nickname,
            extra,
        });
    }
    let mut listed_without_info = Vec::new();
    if let Some(list) = top.get("users").filter(|v| !v.is_null()) {
        for (i, v) in doc.array(Some(list), "users")?.iter().enumerate() {
            let name = doc.username(Some(v), &index_path("users", i))?;
            if !info.contains_key(&name) && !listed_without_info.contains(&name) {
                listed_without_info.push(name);
            }
        }
    }
    Ok((users, listed_without_info))
}

/// `{"following": {user: [followees]}}`.
fn read_friends(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<(String, String)>, ImportError> {
    let doc = Doc { file: FRIENDS_FILE };
    let root = doc.read(dir)?;
    let top = doc.object(Some(&root), "")?;
    let following = doc.object(top.get("following"), "following")?;
    let mut seen = HashSet::new();
    let mut follows = Vec::new();
    for (key, list) in following {
        let path = key_path("following", key);
        let follower = doc.username_key(key, &path)?;
        for (i, v) in doc.array(Some(list), &path)?.iter().enumerate() {
            let followee = doc.username(Some(v), &index_path(&path, i))?;
            if followee == follower {
                notes.push(format!(
                    "{FRIENDS_FILE}: {path}[{i}]: {follower} follows itself; ignored (Klav \
                     refuses self-follows)"
                ));
                continue;
            }
            if seen.insert((follower.clone(), followee.clone())) {
                follows.push((follower.clone(), followee));
            }
        }
    }
    Ok(follows)
}

/// Either layout of `chat_state.json`.
fn read_chat(
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<(Layout, Vec<LegacyRoom>), ImportError> {
    let doc = Doc { file: CHAT_FILE };
    let root = doc.read(dir)?;
    let top = doc.object(Some(&root), "")?;
    if !["room_members", "chat_logs", "room_infos"]
        .iter()
        .any(|k| top.contains_key(*k))
    {
        return Err(doc.err(
            "",
            "expected an object with room_members, chat_logs and (in the newer layout) \
             room_infos; found none of them",
        ));
    }
    let members = doc.opt_object(top.get("room_members"), "room_members")?;
    let logs = doc.opt_object(top.get("chat_logs"), "chat_logs")?;
    let infos = match top.get("room_infos") {
        None => None,
        Some(v) => Some(doc.object(Some(v), "room_infos")?),
    };
    let layout = if infos.is_some() {
        Layout::ById
    } else {
        Layout::ByName
    };

    // Every room any of the three maps mentions, infos first.
    let mut keys: Vec<&String> = Vec::new();
    let mut seen: HashSet<&String> = HashSet::new();
    for map in [infos, members, logs].into_iter().flatten() {
        for k in map.keys() {
            if seen.insert(k) {
                keys.push(k);
            }
        }
    }

    let mut rooms = Vec::with_capacity(keys.len());
    for key in keys {
        let mut room = match (layout, infos.and_then(|i| i.get(key))) {
            (Layout::ByName, _) => {
                let path = key_path(
                    if members.is_some_and(|m| m.contains_key(key)) {
                        "room_members"
                    } else {
                        "chat_logs"
                    },
                    key,
                );
                doc.check_text(key, &path, Some(ROOM_NAME_MAX))?;
                new_room(key, key)
            }
            (Layout::ById, info) => {
                let path = key_path("room_infos", key);
                if key.is_empty() {
                    return Err(doc.err(&path, "empty room id"));
                }
                doc.check_text(key, &path, Some(ROOM_ID_MAX))?;
                match info {
                    Some(info) => read_room_info(&doc, key, info, &path, notes)?,
                    None => {
                        notes.push(format!(
                            "{CHAT_FILE}: room {key} has members or entries but no room_infos; \
                             imported with its id as its name"
                        ));
                        new_room(key, key)
                    }
                }
            }
        };
        if let Some(list) = members.and_then(|m| m.get(key)) {
            let path = key_path("room_members", key);
            if !list.is_null() {
                for (i, v) in doc.array(Some(list), &path)?.iter().enumerate() {
                    let user = doc.username(Some(v), &index_path(&path, i))?;
                    if !room.members.contains(&user) {
                        room.members.push(user);
                    }
                }
            }
        }
        if let Some(list) = logs.and_then(|m| m.get(key)) {
            let path = key_path("chat_logs", key);
            if !list.is_null() {
                for (i, v) in doc.array(Some(list), &path)?.iter().enumerate() {
                    room.entries
                        .push(read_entry(&doc, v, &index_path(&path, i))?);
                }
            }
        }
        rooms.push(room);
    }
    Ok((layout, rooms))
}

fn new_room(key: &str, name: &str) -> LegacyRoom {
    LegacyRoom {
        key: key.to_string(),
        name: name.to_string(),
        created_at: None,
        recorded_last: None,
        members: Vec::new(),
        entries: Vec::new(),
    }
}

/// `room_infos.<id>`: `{id, name, created_at, last}`.
fn read_room_info(
    doc: &Doc,
    key: &str,
    info: &Value,
    path: &str,
    notes: &mut Vec<String>,
) -> Result<LegacyRoom, ImportError> {
    let fields = doc.object(Some(info), path)?;
    if let Some(id) = doc.opt_string(fields.get("id"), &key_path(path, "id"), None)? {
        if id != key {
            notes.push(format!(
                "{CHAT_FILE}: {path}.id is {id:?}; imported under the key {key:?}, which \
                 room_members and chat_logs use"
            ));
        }
    }
    let name = doc.string(
        fields.get("name"),
        &key_path(path, "name"),
        Some(ROOM_NAME_MAX),
    )?;
    let mut room = new_room(key, &name);
    let created = key_path(path, "created_at");
    room.created_at = match fields.get("created_at") {
        None | Some(Value::Null) => None,
        v => Some(doc.timestamp(v, &created)?),
    };
    let last_path = key_path(path, "last");
    room.recorded_last = match doc.opt_object(fields.get("last"), &last_path)? {
        None => None,
        Some(last) => Some(Last {
            text: doc.string(last.get("text"), &key_path(&last_path, "text"), None)?,
            from: doc.string(
                last.get("from"),
                &key_path(&last_path, "from"),
                Some(USERNAME_MAX),
            )?,
            kind: doc.string(
                last.get("kind"),
                &key_path(&last_path, "kind"),
                Some(KIND_MAX),
            )?,
            ts: doc.timestamp(last.get("ts"), &key_path(&last_path, "ts"))?,
        }),
    };
    Ok(room)
}

/// One chat log entry: `{ts, kind, room, from, text, to?, from_nickname?}`.
fn read_entry(doc: &Doc, v: &Value, path: &str) -> Result<Entry, ImportError> {
    let fields = doc.object(Some(v), path)?;
    let ts = doc.timestamp(fields.get("ts"), &key_path(path, "ts"))?;
    let kind_path = key_path(path, "kind");
    let kind = match doc.string(fields.get("kind"), &kind_path, None)?.as_str() {
        "msg" => Kind::Msg,
        "dm" => Kind::Dm,
        "system" => Kind::System,
        other => {
            return Err(doc.err(
                &kind_path,
                format!("expected \"msg\", \"dm\" or \"system\", found {other:?}"),
            ))
        }
    };
    // The entry's own `room` repeats its key; the key is what the old server used.
    doc.opt_string(fields.get("room"), &key_path(path, "room"), None)?;
    let text = doc.string(fields.get("text"), &key_path(path, "text"), None)?;
    let from_path = key_path(path, "from");
    let nick_path = key_path(path, "from_nickname");
    let (from, to, from_nickname) = match kind {
        Kind::System => {
            doc.opt_string(fields.get("from"), &from_path, None)?;
            doc.opt_string(fields.get("from_nickname"), &nick_path, None)?;
            ("system".to_string(), None, None)
        }
        Kind::Msg | Kind::Dm => {
            let from = doc.username(fields.get("from"), &from_path)?;
            let nick = doc
                .opt_string(fields.get("from_nickname"), &nick_path, Some(NICKNAME_MAX))?
                .filter(|n| !n.is_empty());
            let to_path = key_path(path, "to");
            let to = if kind == Kind::Dm {
                Some(doc.username(fields.get("to"), &to_path)?)
            } else {
                doc.opt_string(fields.get("to"), &to_path, None)?;
                None
            };
            (from, to, nick)
        }
    };
    Ok(Entry {
        ts,
        kind,
        from,
        to,
        from_nickname,
        text,
    })
}

// ---------------------------------------------------------------------------
// Phase 2: what the database already holds.

/// Users to create because something references them and nobody has them.
struct MissingUser {
    username: String,
    nickname: String,
}

/// The rows to write, each already checked against the database.
struct Plan {
    /// Indexes into `Source::users` of the users not in the database.
    new_users: Vec<usize>,
    missing: Vec<MissingUser>,
    /// The database id of each `Source::rooms` room.
    room_ids: Vec<String>,
    /// Indexes into `Source::rooms` of the rooms to create.
    new_rooms: Vec<usize>,
    memberships_total: usize,
    new_memberships: Vec<(String, String)>,
    new_follows: Vec<(String, String)>,
    entries_total: usize,
    /// (room index, entry index), oldest first.
    new_entries: Vec<(usize, usize)>,
    /// Entries skipped as pruned by retention since the previous import.
    pruned: usize,
    /// Each room's newest entry that `my_rooms` shows, with its room id.
    lasts: Vec<(String, Last)>,
}

impl Plan {
    fn dry_summary(&self, source: &Source) -> Summary {
        let mut summary = Summary {
            dry_run: true,
            layout: source.layout,
            users: Counts::of(source.users.len(), self.new_users.len()),
            follows: Counts::of(source.follows.len(), self.new_follows.len()),
            rooms: Counts::of(source.rooms.len(), self.new_rooms.len()),
            memberships: Counts::of(self.memberships_total, self.new_memberships.len()),
            entries: Counts::of(self.entries_total, self.new_entries.len()),
            missing_users: self.missing.iter().map(|m| m.username.clone()).collect(),
            notes: source.notes.clone(),
        };
        self.note_pruned(&mut summary);
        summary
    }

    fn note_pruned(&self, summary: &mut Summary) {
        if self.pruned > 0 {
            summary.notes.push(format!(
                "{} chat entries older than the oldest entry already imported in their room \
                 were skipped: retention pruned them since the previous import, and adding \
                 them again would list them after newer messages",
                self.pruned
            ));
        }
    }
}

/// Whether the five tables exist (a database of ours or of the old server).
fn schema_present(tx: &mut Transaction<'_>) -> Result<bool, ImportError> {
    let row = tx.query_one(
        "SELECT to_regclass('users') IS NOT NULL AND to_regclass('rooms') IS NOT NULL \
            AND to_regclass('room_members') IS NOT NULL AND to_regclass('chat_logs') IS NOT NULL \
            AND to_regclass('follows') IS NOT NULL",
        &[],
    )?;
    Ok(row.get(0))
}

fn plan(
    tx: &mut Transaction<'_>,
    source: &Source,
    progress: &mut dyn Write,
) -> Result<Plan, ImportError> {
    say(progress, format_args!("comparing with the database"));
    let (new_users, missing) = plan_users(tx, source)?;
    let (room_ids, new_rooms) = plan_rooms(tx, source)?;

    let existing_members: HashSet<(String, String)> = tx
        .query(
            "SELECT room_id, username FROM room_members WHERE room_id = ANY($1)",
            &[&room_ids],
        )?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut memberships_total = 0;
    let mut new_memberships = Vec::new();
    for (room, id) in source.rooms.iter().zip(&room_ids) {
        for user in &room.members {
            memberships_total += 1;
            let pair = (id.clone(), user.clone());
            if !existing_members.contains(&pair) {
                new_memberships.push(pair);
            }
        }
    }

    let followers: Vec<&str> = source.follows.iter().map(|(a, _)| a.as_str()).collect();
    let existing_follows: HashSet<(String, String)> = tx
        .query(
            "SELECT follower_username, followee_username FROM follows \
             WHERE follower_username = ANY($1)",
            &[&followers],
        )?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let new_follows = source
        .follows
        .iter()
        .filter(|f| !existing_follows.contains(*f))
        .cloned()
        .collect();

    let entries = plan_entries(tx, source, &room_ids, &new_rooms)?;
    let lasts = source
        .rooms
        .iter()
        .zip(&room_ids)
        .filter_map(|(room, id)| last_of(room, source.layout).map(|l| (id.clone(), l)))
        .collect();
    Ok(Plan {
        new_users,
        missing,
        room_ids,
        new_rooms,
        memberships_total,
        new_memberships,
        new_follows,
        entries_total: entries.total,
        new_entries: entries.new,
        pruned: entries.pruned,
        lasts,
    })
}

fn plan_users(
    tx: &mut Transaction<'_>,
    source: &Source,
) -> Result<(Vec<usize>, Vec<MissingUser>), ImportError> {
    let known: HashSet<&str> = source.users.iter().map(|u| u.username.as_str()).collect();
    // Referenced users in a stable order, each with the newest nickname its entries
    // show. Recipients count too: an unowned name could later be registered by
    // anyone, who would then see the DMs addressed to it.
    let mut referenced: Vec<&str> = Vec::new();
    let mut nick_of: HashMap<&str, (SystemTime, &str)> = HashMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for name in &source.listed_without_info {
        if seen.insert(name) {
            referenced.push(name);
        }
    }
    for (a, b) in &source.follows {
        for n in [a.as_str(), b.as_str()] {
            if seen.insert(n) {
                referenced.push(n);
            }
        }
    }
    for room in &source.rooms {
        for n in &room.members {
            if seen.insert(n) {
                referenced.push(n);
            }
        }
        for e in &room.entries {
            if e.kind == Kind::System {
                continue;
            }
            for n in [Some(e.from.as_str()), e.to.as_deref()]
                .into_iter()
                .flatten()
            {
                if seen.insert(n) {
                    referenced.push(n);
                }
            }
            if let Some(nick) = &e.from_nickname {
                let slot = nick_of.entry(e.from.as_str()).or_insert((e.ts, nick));
                if e.ts >= slot.0 {
                    *slot = (e.ts, nick);
                }
            }
        }
    }
    let missing_refs: Vec<&str> = referenced
        .into_iter()
        .filter(|n| !known.contains(n))
        .collect();

    let all: Vec<&str> = source
        .users
        .iter()
        .map(|u| u.username.as_str())
        .chain(missing_refs.iter().copied())
        .collect();
    let existing: HashSet<String> = tx
        .query(
            "SELECT username FROM users WHERE username = ANY($1)",
            &[&all],
        )?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let new_users = (0..source.users.len())
        .filter(|&i| !existing.contains(&source.users[i].username))
        .collect();
    let missing = missing_refs
        .into_iter()
        .filter(|n| !existing.contains(*n))
        .map(|n| MissingUser {
            username: n.to_string(),
            nickname: nick_of.get(n).map_or(n, |(_, nick)| nick).to_string(),
        })
        .collect();
    Ok((new_users, missing))
}

/// Resolves every room to its database id; returns the ids and which rooms to create.
fn plan_rooms(
    tx: &mut Transaction<'_>,
    source: &Source,
) -> Result<(Vec<String>, Vec<usize>), ImportError> {
    let keys: Vec<&str> = source.rooms.iter().map(|r| r.key.as_str()).collect();
    match source.layout {
        Layout::ById => {
            let existing: HashSet<String> = tx
                .query("SELECT id FROM rooms WHERE id = ANY($1)", &[&keys])?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let new_rooms = (0..keys.len())
                .filter(|&i| !existing.contains(keys[i]))
                .collect();
            Ok((keys.iter().map(|k| k.to_string()).collect(), new_rooms))
        }
        Layout::ByName => {
            // The oldest room of each name: the one `join` by name picks.
            let by_name: HashMap<String, String> = tx
                .query(
                    "SELECT DISTINCT ON (name) name, id FROM rooms WHERE name = ANY($1) \
                     ORDER BY name, created_at, id",
                    &[&keys],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut ids: Vec<String> = Vec::with_capacity(keys.len());
            let mut new_rooms = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                match by_name.get(*key) {
                    Some(id) => ids.push(id.clone()),
                    None => {
                        ids.push(String::new());
                        new_rooms.push(i);
                    }
                }
            }
            // Mint ids until none collides with the database or with each other.
            let mut pending: Vec<usize> = new_rooms.clone();
            let mut minted: HashSet<String> = HashSet::new();
            while !pending.is_empty() {
                for &i in &pending {
                    let mut id = crate::db::new_room_id();
                    while !minted.insert(id.clone()) {
                        id = crate::db::new_room_id();
                    }
                    ids[i] = id;
                }
                let candidates: Vec<&str> = pending.iter().map(|&i| ids[i].as_str()).collect();
                let taken: HashSet<String> = tx
                    .query("SELECT id FROM rooms WHERE id = ANY($1)", &[&candidates])?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                pending.retain(|&i| taken.contains(&ids[i]));
            }
            Ok((ids, new_rooms))
        }
    }
}

/// How an entry is recognised as already imported.
type EntryKey = (
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn entry_key(room_id: &str, e: &Entry) -> EntryKey {
    (
        room_id.to_string(),
        Some(micros(e.ts)),
        Some(e.kind.as_str().to_string()),
        Some(e.from.clone()),
        e.to.clone(),
        Some(e.text.clone()),
    )
}

/// Which of the files' entries to write.
struct EntryPlan {
    /// Entries in the files.
    total: usize,
    /// (room index, entry index), oldest first.
    new: Vec<(usize, usize)>,
    /// Entries skipped as pruned by retention since the previous import.
    pruned: usize,
}

/// Decides which entries are new.
///
/// Retention keeps the newest entries of a room, so after an import the oldest
/// ones may be gone. A file entry older than the oldest entry that *is* found in
/// its room is taken as pruned, not new: history is ordered by id, so adding it
/// again would show an old message after newer ones.
fn plan_entries(
    tx: &mut Transaction<'_>,
    source: &Source,
    room_ids: &[String],
    new_rooms: &[usize],
) -> Result<EntryPlan, ImportError> {
    let fresh: HashSet<usize> = new_rooms.iter().copied().collect();
    let existing_ids: Vec<&str> = (0..room_ids.len())
        .filter(|i| !fresh.contains(i) && !source.rooms[*i].entries.is_empty())
        .map(|i| room_ids[i].as_str())
        .collect();
    let mut present: HashMap<EntryKey, u32> = HashMap::new();
    if !existing_ids.is_empty() {
        for r in tx.query(
            "SELECT room_id, ts, kind, from_user, to_user, text FROM chat_logs \
             WHERE room_id = ANY($1)",
            &[&existing_ids],
        )? {
            let ts: Option<SystemTime> = r.get(1);
            let key: EntryKey = (
                r.get(0),
                ts.map(micros),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
            );
            *present.entry(key).or_insert(0) += 1;
        }
    }
    let mut total = 0;
    let mut new_entries: Vec<(usize, usize)> = Vec::new();
    let mut pruned = 0;
    for (ri, room) in source.rooms.iter().enumerate() {
        total += room.entries.len();
        let mut order: Vec<usize> = (0..room.entries.len()).collect();
        order.sort_by_key(|&i| room.entries[i].ts);
        let mut oldest_found: Option<SystemTime> = None;
        let mut candidates = Vec::new();
        for i in order {
            let e = &room.entries[i];
            if !present.is_empty() {
                if let Some(n) = present.get_mut(&entry_key(&room_ids[ri], e)) {
                    if *n > 0 {
                        *n -= 1;
                        oldest_found = Some(oldest_found.map_or(e.ts, |t: SystemTime| t.min(e.ts)));
                        continue;
                    }
                }
            }
            candidates.push(i);
        }
        for i in candidates {
            if oldest_found.is_some_and(|t| room.entries[i].ts < t) {
                pruned += 1;
            } else {
                new_entries.push((ri, i));
            }
        }
    }
    // Globally oldest first, so ids follow time within every room (history pages
    // by id) and across rooms.
    new_entries.sort_by_key(|&(r, i)| (source.rooms[r].entries[i].ts, r, i));
    Ok(EntryPlan {
        total,
        new: new_entries,
        pruned,
    })
}

/// The last message `my_rooms` shows for a room. The id-keyed layout is what the
/// server maintains: the newest `msg` or `system` entry (DMs never count). For the
/// name-keyed layout the old server derived it from the newest `msg`, else the
/// newest `system` entry. With no such entry, `room_infos.last` if recorded.
fn last_of(room: &LegacyRoom, layout: Layout) -> Option<Last> {
    let newest = |pred: &dyn Fn(Kind) -> bool| {
        room.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| pred(e.kind))
            // Later in the file wins a tie.
            .max_by_key(|(i, e)| (e.ts, *i))
            .map(|(_, e)| e)
    };
    let entry = match layout {
        Layout::ById => newest(&|k| k != Kind::Dm),
        Layout::ByName => newest(&|k| k == Kind::Msg).or_else(|| newest(&|k| k == Kind::System)),
    };
    match entry {
        Some(e) => Some(Last {
            text: e.text.clone(),
            from: e.from.clone(),
            kind: e.kind.as_str().to_string(),
            ts: e.ts,
        }),
        None => room.recorded_last.clone(),
    }
}

// ---------------------------------------------------------------------------
// Phase 3: the writes.

fn write(
    tx: &mut Transaction<'_>,
    source: &Source,
    plan: Plan,
    progress: &mut dyn Write,
) -> Result<Summary, ImportError> {
    // Users. Plain-text passwords are hashed here, so that imported users log in
    // with their old passwords and no plain text is ever stored.
    let plain: Vec<&str> = plan
        .new_users
        .iter()
        .map(|&i| source.users[i].password.as_str())
        .filter(|p| !is_hashed(p))
        .collect();
    let mut hashed = hash_all(&plain, progress).into_iter();
    let mut names = Vec::new();
    let mut passwords = Vec::new();
    let mut nicknames = Vec::new();
    let mut extras = Vec::new();
    for &i in &plan.new_users {
        let u = &source.users[i];
        names.push(u.username.clone());
        passwords.push(if is_hashed(&u.password) {
            u.password.clone()
        } else {
            hashed.next().expect("one hash per plain-text password")
        });
        nicknames.push(u.nickname.clone());
        extras.push(u.extra.clone());
    }
    let inserted_users = insert_users(tx, &names, &passwords, &nicknames, &extras)?.len();

    let names: Vec<String> = plan.missing.iter().map(|m| m.username.clone()).collect();
    let passwords: Vec<String> = plan.missing.iter().map(|_| unusable_password()).collect();
    let nicknames: Vec<String> = plan.missing.iter().map(|m| m.nickname.clone()).collect();
    let extras = vec![String::new(); names.len()];
    let created = insert_users(tx, &names, &passwords, &nicknames, &extras)?;
    let created: HashSet<String> = created.into_iter().collect();
    let missing_users: Vec<String> = names.into_iter().filter(|n| created.contains(n)).collect();

    // Rooms.
    let ids: Vec<&str> = plan
        .new_rooms
        .iter()
        .map(|&i| plan.room_ids[i].as_str())
        .collect();
    let room_names: Vec<&str> = plan
        .new_rooms
        .iter()
        .map(|&i| source.rooms[i].name.as_str())
        .collect();
    // A room without a recorded creation time is as old as its first entry.
    let created_at: Vec<Option<SystemTime>> = plan
        .new_rooms
        .iter()
        .map(|&i| {
            let r = &source.rooms[i];
            r.created_at
                .or_else(|| r.entries.iter().map(|e| e.ts).min())
        })
        .collect();
    let inserted_rooms = tx
        .query(
            "INSERT INTO rooms (id, name, created_at) \
             SELECT i, n, COALESCE(c, now()) \
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(i, n, c) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            &[&ids, &room_names, &created_at],
        )?
        .len();
    if source.layout == Layout::ByName && inserted_rooms != ids.len() {
        // A minted id was taken between the check and the insert (the server
        // created a room meanwhile): rare enough that running again is the answer.
        return Err(ImportError::Db(DbError::Query(
            "a newly minted room id was taken concurrently; run the import again".into(),
        )));
    }

    // Memberships and follows.
    let (rooms_col, users_col): (Vec<&str>, Vec<&str>) = plan
        .new_memberships
        .iter()
        .map(|(r, u)| (r.as_str(), u.as_str()))
        .unzip();
    let inserted_members = tx.execute(
        "INSERT INTO room_members (room_id, username, joined_at) \
         SELECT r, u, now() FROM unnest($1::text[], $2::text[]) AS t(r, u) \
         ON CONFLICT (room_id, username) DO NOTHING",
        &[&rooms_col, &users_col],
    )? as usize;
    let (followers, followees): (Vec<&str>, Vec<&str>) = plan
        .new_follows
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .unzip();
    let inserted_follows = tx.execute(
        "INSERT INTO follows (follower_username, followee_username, created_at) \
         SELECT a, b, now() FROM unnest($1::text[], $2::text[]) AS t(a, b) \
         ON CONFLICT (follower_username, followee_username) DO NOTHING",
        &[&followers, &followees],
    )? as usize;

    let inserted_entries = insert_entries(tx, source, &plan, progress)?;

    // Last messages: only where the import brings something newer than what the
    // room shows, so a re-import, or a room the server has written to since,
    // keeps its last message.
    let mut l_ids = Vec::new();
    let mut l_texts = Vec::new();
    let mut l_froms = Vec::new();
    let mut l_kinds = Vec::new();
    let mut l_ts = Vec::new();
    for (id, l) in &plan.lasts {
        l_ids.push(id.as_str());
        l_texts.push(l.text.as_str());
        l_froms.push(l.from.as_str());
        l_kinds.push(l.kind.as_str());
        l_ts.push(l.ts);
    }
    tx.execute(
        "UPDATE rooms SET last_message_text = u.t, last_message_from = u.f, \
                last_message_kind = u.k, last_message_ts = u.ts \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
              AS u(id, t, f, k, ts) \
         WHERE rooms.id = u.id \
           AND (rooms.last_message_ts IS NULL OR rooms.last_message_ts < u.ts)",
        &[&l_ids, &l_texts, &l_froms, &l_kinds, &l_ts],
    )?;

    let mut summary = Summary {
        dry_run: false,
        layout: source.layout,
        users: Counts::of(source.users.len(), inserted_users),
        follows: Counts::of(source.follows.len(), inserted_follows),
        rooms: Counts::of(source.rooms.len(), inserted_rooms),
        memberships: Counts::of(plan.memberships_total, inserted_members),
        entries: Counts::of(plan.entries_total, inserted_entries),
        missing_users,
        notes: source.notes.clone(),
    };
    plan.note_pruned(&mut summary);
    Ok(summary)
}

/// Inserts users that do not exist yet; returns the usernames inserted.
fn insert_users(
    tx: &mut Transaction<'_>,
    names: &[String],
    passwords: &[String],
    nicknames: &[String],
    extras: &[String],
) -> Result<Vec<String>, ImportError> {
    let mut inserted = Vec::new();
    for start in (0..names.len()).step_by(BATCH) {
        let end = (start + BATCH).min(names.len());
        let rows = tx.query(
            "INSERT INTO users (username, password, nickname, extra, created_at) \
             SELECT u, p, n, e, now() \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(u, p, n, e) \
             ON CONFLICT (username) DO NOTHING RETURNING username",
            &[
                &&names[start..end],
                &&passwords[start..end],
                &&nicknames[start..end],
                &&extras[start..end],
            ],
        )?;
        inserted.extend(rows.into_iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(inserted)
}

/// The password of a user created for a dangling reference: nobody knows it, so
/// nobody can log in as that user (an administrator can set one later).
///
/// It is deliberately not an argon2 string: the server treats any other stored
/// value as a legacy plain-text password and compares the typed password with it,
/// in constant time. 256 random bits behind a `!disabled:` prefix cannot be
/// guessed, and the prefix tells a reader of the table what it is.
fn unusable_password() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random source failed");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("!disabled:{hex}")
}

/// Hashes on all cores (argon2id takes tens of milliseconds each by design);
/// results in input order.
fn hash_all(passwords: &[&str], progress: &mut dyn Write) -> Vec<String> {
    if passwords.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(passwords.len());
    say(
        progress,
        format_args!("hashing {} passwords on {threads} threads", passwords.len()),
    );
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut out = vec![String::new(); passwords.len()];
    std::thread::scope(|s| {
        let (next, done) = (&next, &done);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(pw) = passwords.get(i) else { break };
                        mine.push((i, hash_password(pw)));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    mine
                })
            })
            .collect();
        let mut reported = Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if reported.elapsed() >= PROGRESS_EVERY {
                reported = Instant::now();
                let n = done.load(Ordering::Relaxed);
                say(progress, format_args!("  hashed {n}/{}", passwords.len()));
            }
        }
        for w in workers {
            for (i, h) in w.join().expect("a hashing thread panicked") {
                out[i] = h;
            }
        }
    });
    out
}

/// Multi-row INSERTs of the new entries, oldest first; returns how many were written.
fn insert_entries(
    tx: &mut Transaction<'_>,
    source: &Source,
    plan: &Plan,
    progress: &mut dyn Write,
) -> Result<usize, ImportError> {
    let total = plan.new_entries.len();
    if total == 0 {
        return Ok(0);
    }
    say(progress, format_args!("writing {total} chat entries"));
    // from_nickname: the entry's own, else the sender's nickname, else the username.
    let nick_of: HashMap<&str, &str> = source
        .users
        .iter()
        .filter(|u| !u.nickname.is_empty())
        .map(|u| (u.username.as_str(), u.nickname.as_str()))
        .collect();
    let mut written = 0;
    let mut reported = Instant::now();
    for chunk in plan.new_entries.chunks(BATCH) {
        let mut rooms = Vec::with_capacity(chunk.len());
        let mut ts = Vec::with_capacity(chunk.len());
        let mut kinds = Vec::with_capacity(chunk.len());
        let mut froms = Vec::with_capacity(chunk.len());
        let mut nicks = Vec::with_capacity(chunk.len());
        let mut tos = Vec::with_capacity(chunk.len());
        let mut texts = Vec::with_capacity(chunk.len());
        for &(r, i) in chunk {
            let e = &source.rooms[r].entries[i];
            rooms.push(plan.room_ids[r].as_str());
            ts.push(e.ts);
            kinds.push(e.kind.as_str());
            froms.push(e.from.as_str());
            nicks.push(match (&e.from_nickname, e.kind) {
                (_, Kind::System) => "system",
                (Some(n), _) => n.as_str(),
                (None, _) => nick_of
                    .get(e.from.as_str())
                    .copied()
                    .unwrap_or(e.from.as_str()),
            });
            tos.push(e.to.as_deref());
            texts.push(e.text.as_str());
        }
        written += tx.execute(
            "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
             SELECT r, ts, k, f, n, t, x \
             FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[]) WITH ORDINALITY AS u(r, ts, k, f, n, t, x, o) \
             ORDER BY o",
            &[&rooms, &ts, &kinds, &froms, &nicks, &tos, &texts],
        )? as usize;
        if reported.elapsed() >= PROGRESS_EVERY && written < total {
            reported = Instant::now();
            say(progress, format_args!("  written {written}/{total}"));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

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
