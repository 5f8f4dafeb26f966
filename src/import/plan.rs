//! Phase 2: what the database already holds, so a re-import adds only what is new.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::Transaction;

use super::report::{say, Counts, ImportError, Layout, Summary};
use super::source::*;

/// Users to create because something references them and nobody has them.
pub(super) struct MissingUser {
    pub(super) username: String,
    pub(super) nickname: String,
}

/// The rows to write, each already checked against the database.
pub(super) struct Plan {
    /// Indexes into `Source::users` of the users not in the database.
    pub(super) new_users: Vec<usize>,
    pub(super) missing: Vec<MissingUser>,
    /// The database id of each `Source::rooms` room.
    pub(super) room_ids: Vec<String>,
    /// Indexes into `Source::rooms` of the rooms to create.
    pub(super) new_rooms: Vec<usize>,
    pub(super) memberships_total: usize,
    pub(super) new_memberships: Vec<(String, String)>,
    pub(super) new_follows: Vec<(String, String)>,
    pub(super) entries_total: usize,
    /// (room index, entry index), oldest first.
    pub(super) new_entries: Vec<(usize, usize)>,
    /// Entries skipped as pruned by retention since the previous import.
    pub(super) pruned: usize,
    /// Each room's newest entry that `my_rooms` shows, with its room id.
    pub(super) lasts: Vec<(String, Last)>,
}

impl Plan {
    pub(super) fn dry_summary(&self, source: &Source) -> Summary {
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

    pub(super) fn note_pruned(&self, summary: &mut Summary) {
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
pub(super) fn schema_present(tx: &mut Transaction<'_>) -> Result<bool, ImportError> {
    let row = tx.query_one(
        "SELECT to_regclass('users') IS NOT NULL AND to_regclass('rooms') IS NOT NULL \
            AND to_regclass('room_members') IS NOT NULL AND to_regclass('chat_logs') IS NOT NULL \
            AND to_regclass('follows') IS NOT NULL",
        &[],
    )?;
    Ok(row.get(0))
}

pub(super) fn plan(
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

pub(super) fn plan_users(
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
pub(super) fn plan_rooms(
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
pub(super) type EntryKey = (
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(super) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

pub(super) fn entry_key(room_id: &str, e: &Entry) -> EntryKey {
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
pub(super) struct EntryPlan {
    /// Entries in the files.
    pub(super) total: usize,
    /// (room index, entry index), oldest first.
    pub(super) new: Vec<(usize, usize)>,
    /// Entries skipped as pruned by retention since the previous import.
    pub(super) pruned: usize,
}

/// Decides which entries are new.
///
/// Retention keeps the newest entries of a room, so after an import the oldest
/// ones may be gone. A file entry older than the oldest entry that *is* found in
/// its room is taken as pruned, not new: history is ordered by id, so adding it
/// again would show an old message after newer ones.
pub(super) fn plan_entries(
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
pub(super) fn last_of(room: &LegacyRoom, layout: Layout) -> Option<Last> {
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
