//! Phase 1: the three files, read and validated completely before the database
//! is touched; a problem names the file and the path inside it.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::files::{CHAT_FILE, FRIENDS_FILE, USERS_FILE};
use super::report::{say, ImportError, Layout};
use crate::auth::password::{check_stored_hash, is_hashed};

/// Column widths of the schema; longer values would fail half-way through the
/// transaction, so they are refused up front with their path.
const USERNAME_MAX: usize = 100;
const NICKNAME_MAX: usize = 100;
const ROOM_ID_MAX: usize = 20;
const ROOM_NAME_MAX: usize = 255;
const KIND_MAX: usize = 20;

/// Everything the three files say, validated.
pub(super) struct Source {
    pub(super) users: Vec<LegacyUser>,
    /// Names in `users.json`'s `users` list that have no `userinfo`.
    pub(super) listed_without_info: Vec<String>,
    /// (follower, followee), de-duplicated, without self-follows.
    pub(super) follows: Vec<(String, String)>,
    pub(super) layout: Layout,
    pub(super) rooms: Vec<LegacyRoom>,
    pub(super) notes: Vec<String>,
}

pub(super) struct LegacyUser {
    pub(super) username: String,
    /// Plain text, or (rarely) an argon2 PHC string that is kept as it is.
    pub(super) password: String,
    pub(super) nickname: String,
    pub(super) extra: String,
}

pub(super) struct LegacyRoom {
    /// The room's id (id-keyed layout) or name (name-keyed layout).
    pub(super) key: String,
    pub(super) name: String,
    pub(super) created_at: Option<SystemTime>,
    /// `room_infos.<id>.last`, used only when no entry gives a last message.
    pub(super) recorded_last: Option<Last>,
    pub(super) members: Vec<String>,
    pub(super) entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Msg,
    Dm,
    System,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Msg => "msg",
            Kind::Dm => "dm",
            Kind::System => "system",
        }
    }
}

pub(super) struct Entry {
    /// Truncated to microseconds, PostgreSQL's precision, so that it compares
    /// equal to the stored value on a re-import.
    pub(super) ts: SystemTime,
    pub(super) kind: Kind,
    /// `system` for system entries.
    pub(super) from: String,
    /// DMs only.
    pub(super) to: Option<String>,
    pub(super) from_nickname: Option<String>,
    pub(super) text: String,
}

#[derive(Clone)]
pub(super) struct Last {
    pub(super) text: String,
    pub(super) from: String,
    pub(super) kind: String,
    pub(super) ts: SystemTime,
}

/// Reading one file: where errors are reported.
pub(super) struct Doc {
    pub(super) file: &'static str,
}

pub(super) fn describe(v: &Value) -> &'static str {
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
pub(super) fn key_path(parent: &str, key: &str) -> String {
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

pub(super) fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

impl Doc {
    pub(super) fn err(&self, path: &str, reason: impl Into<String>) -> ImportError {
        ImportError::Json {
            file: self.file,
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(super) fn expected(&self, path: &str, what: &str, v: Option<&Value>) -> ImportError {
        match v {
            None => self.err(path, format!("expected {what}, but it is missing")),
            Some(v) => self.err(path, format!("expected {what}, found {}", describe(v))),
        }
    }

    pub(super) fn read(&self, dir: &Path) -> Result<Value, ImportError> {
        let file = dir.join(self.file);
        let bytes = std::fs::read(&file).map_err(|source| ImportError::Io { file, source })?;
        serde_json::from_slice(&bytes).map_err(|e| self.err("", format!("not valid JSON: {e}")))
    }

    pub(super) fn object<'a>(
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
    pub(super) fn opt_object<'a>(
        &self,
        v: Option<&'a Value>,
        path: &str,
    ) -> Result<Option<&'a Map<String, Value>>, ImportError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            other => self.object(other, path).map(Some),
        }
    }

    pub(super) fn array<'a>(
        &self,
        v: Option<&'a Value>,
        path: &str,
    ) -> Result<&'a [Value], ImportError> {
        match v {
            Some(Value::Array(a)) => Ok(a),
            other => Err(self.expected(path, "an array", other)),
        }
    }

    /// A string that fits a column of `max` characters and that PostgreSQL can
    /// store (no NUL).
    pub(super) fn string(
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

    pub(super) fn opt_string(
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

    pub(super) fn check_text(
        &self,
        s: &str,
        path: &str,
        max: Option<usize>,
    ) -> Result<(), ImportError> {
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

    pub(super) fn username(&self, v: Option<&Value>, path: &str) -> Result<String, ImportError> {
        let s = self.string(v, path, Some(USERNAME_MAX))?;
        if s.is_empty() {
            return Err(self.err(path, "expected a username, found an empty string"));
        }
        Ok(s)
    }

    /// A key of an object that names a user.
    pub(super) fn username_key(&self, key: &str, path: &str) -> Result<String, ImportError> {
        self.username(Some(&Value::String(key.to_string())), path)
    }

    pub(super) fn timestamp(
        &self,
        v: Option<&Value>,
        path: &str,
    ) -> Result<SystemTime, ImportError> {
        let s = self.string(v, path, None)?;
        crate::time::parse_iso(&s)
            .map(to_micros)
            .ok_or_else(|| self.err(path, format!("expected an ISO-8601 timestamp, found {s:?}")))
    }
}

/// PostgreSQL keeps microseconds; dropping the rest keeps re-imports comparable.
pub(super) fn to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64),
        Err(_) => t, // before 1970: no legacy data is that old; keep it unchanged
    }
}

pub(super) fn read_source(dir: &Path, progress: &mut dyn Write) -> Result<Source, ImportError> {
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
pub(super) fn read_users(
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
        // An argon2 string is stored as it is, so it must be one the server will
        // verify: out-of-bounds parameters would make every login of this user
        // fail (and are how a crafted file would try to stall or crash logins).
        if is_hashed(&password) {
            if let Err(e) = check_stored_hash(&password) {
                return Err(ImportError::Json {
                    file: USERS_FILE,
                    path: key_path(&path, "password"),
                    reason: format!(
                        "user {key:?} has an argon2 password hash the server refuses: {e}"
                    ),
                });
            }
        }
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
pub(super) fn read_friends(
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, String)>, ImportError> {
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
pub(super) fn read_chat(
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

pub(super) fn new_room(key: &str, name: &str) -> LegacyRoom {
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
pub(super) fn read_room_info(
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
pub(super) fn read_entry(doc: &Doc, v: &Value, path: &str) -> Result<Entry, ImportError> {
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
