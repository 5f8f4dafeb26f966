//! The newest entries of active rooms, kept in memory so that `history` — the
//! request clients send on every room switch — usually needs no database at all.
//!
//! Every entry reaches `chat_logs` through the single writer and then passes
//! through the loop (its completion), in id order. So once a room's newest entries
//! are loaded (one `HistoryFill` job), appending each committed entry keeps the
//! cache exact. A request is answered from the cache only when the cache provably
//! holds every entry the answer could contain; otherwise it goes to PostgreSQL as
//! before. Entries are kept pre-serialized, so a cached answer is a concatenation.
//!
//! Bounds: at most `per_room` entries per room (never more than retention keeps, so
//! a pruned entry cannot be served), at most `max_entries` entries and
//! `max_bytes` bytes in all (least recently used rooms are dropped), and only for
//! rooms with online members. The bytes are what the entries really hold (their
//! serialized form, which escaping can make six times the text, and their
//! names), so the cache's memory is bounded whatever members write.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::db::jobs::{ChatEntry, HistoryQuery};

struct Cached {
    /// Bytes this entry holds in memory (counted where it is built, in [`cached`]).
    bytes: usize,
    id: i64,
    ts: SystemTime,
    is_dm: bool,
    from: String,
    to: Option<String>,
    /// The entry as a `history` item, serialized once.
    json: Box<str>,
}

struct RoomLog {
    entries: VecDeque<Cached>,
    /// The cache holds every entry the room has (it has fewer than `per_room`).
    whole: bool,
    last_used: u64,
}

enum Slot {
    /// A fill is in flight (since when); entries committed meanwhile wait here.
    Filling(Vec<ChatEntry>, Instant),
    Ready(RoomLog),
}

/// A fill that has not come back by then is given up (it failed).
const FILL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HistoryCache {
    rooms: HashMap<String, Slot>,
    per_room: usize,
    max_entries: usize,
    max_bytes: usize,
    total: usize,
    /// Bytes held by the entries of ready rooms.
    bytes: usize,
    tick: u64,
    pub hits: u64,
    pub misses: u64,
}

/// The answer to a query, when the cache can give it: serialized items, oldest first.
pub type Hit<'a> = Vec<&'a str>;

impl HistoryCache {
    pub fn new(per_room: usize, max_entries: usize, max_bytes: usize) -> HistoryCache {
        HistoryCache {
            rooms: HashMap::new(),
            per_room,
            max_entries,
            max_bytes,
            total: 0,
            bytes: 0,
            tick: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Entries kept per room (what a fill asks for).
    pub fn per_room(&self) -> usize {
        self.per_room
    }

    pub fn enabled(&self) -> bool {
        self.per_room > 0 && self.max_entries > 0 && self.max_bytes > 0
    }

    /// A committed entry; kept if its room is cached (or being filled).
    /// Appends the entries a job logged (system entries of a room change);
    /// returns the id of the last, which live events of it carry.
    pub fn append_logged(&mut self, logged: Vec<ChatEntry>) -> Option<i64> {
        let last = logged.last().map(|e| e.id);
        logged.into_iter().for_each(|e| self.append(e));
        last
    }

    pub fn append(&mut self, e: ChatEntry) {
        match self.rooms.get_mut(&e.room) {
            None => {}
            Some(Slot::Filling(pending, _)) => {
                // Only the newest `per_room` can matter once the fill arrives.
                if pending.len() >= self.per_room {
                    pending.remove(0);
                }
                pending.push(e);
            }
            Some(Slot::Ready(log)) => {
                if log.entries.back().is_some_and(|last| last.id >= e.id) {
                    return;
                }
                let c = cached(e);
                self.bytes += c.bytes;
                log.entries.push_back(c);
                self.total += 1;
                if log.entries.len() > self.per_room {
                    if let Some(old) = log.entries.pop_front() {
                        self.bytes -= old.bytes;
                    }
                    log.whole = false;
                    self.total -= 1;
                }
                self.enforce_budget();
            }
        }
    }

    /// An entry changed in place (edited, deleted): a cached copy is replaced.
    /// A fill in flight may have read it before the change: the change waits
    /// with the entries committed meanwhile and is applied over the fill.
    pub fn replace(&mut self, e: ChatEntry) {
        match self.rooms.get_mut(&e.room) {
            None => {}
            Some(Slot::Filling(pending, _)) => pending.push(e),
            Some(Slot::Ready(log)) => {
                if let Ok(i) = log.entries.binary_search_by_key(&e.id, |c| c.id) {
                    let c = cached(e);
                    self.bytes = self.bytes + c.bytes - log.entries[i].bytes;
                    log.entries[i] = c;
                    self.enforce_budget();
                }
            }
        }
    }

    /// Answers `q` from memory, or returns `None` (and the caller asks PostgreSQL;
    /// [`HistoryCache::needs_fill`] tells whether to start loading the room).
    pub fn query(&mut self, q: &HistoryQuery) -> Option<Hit<'_>> {
        self.tick += 1;
        let tick = self.tick;
        let Some(Slot::Ready(log)) = self.rooms.get_mut(&q.room) else {
            self.misses += 1;
            return None;
        };
        log.last_used = tick;
        let limit = q.limit.max(0) as usize;
        let mut out: Vec<&str> = Vec::with_capacity(limit.min(log.entries.len()));
        for c in log.entries.iter().rev() {
            if out.len() == limit {
                break;
            }
            if q.before_id.is_some_and(|b| c.id >= b)
                || q.after_id.is_some_and(|a| c.id <= a)
                || q.before.is_some_and(|b| c.ts >= b)
                || q.after.is_some_and(|a| c.ts <= a)
                || (c.is_dm && c.from != q.username && c.to.as_deref() != Some(&q.username))
            {
                continue;
            }
            out.push(&c.json);
        }
        if out.len() < limit && !log.whole {
            // Older matching entries may exist beyond what is cached.
            self.misses += 1;
            return None;
        }
        self.hits += 1;
        out.reverse();
        Some(out)
    }

    /// Whether a fill should be started for `room` (not cached, not filling).
    pub fn needs_fill(&mut self, room: &str) -> bool {
        if !self.enabled() || self.rooms.contains_key(room) {
            return false;
        }
        self.rooms
            .insert(room.to_string(), Slot::Filling(Vec::new(), Instant::now()));
        true
    }

    /// The fill came back: the newest entries as of its snapshot, oldest first.
    pub fn filled(&mut self, room: &str, limit: i64, items: Vec<ChatEntry>) {
        let Some(Slot::Filling(pending, _)) = self.rooms.remove(room) else {
            return;
        };
        self.tick += 1;
        let whole = (items.len() as i64) < limit;
        let mut log = RoomLog {
            entries: items.into_iter().map(cached).collect(),
            whole,
            last_used: self.tick,
        };
        // Entries committed (or changed) while the fill ran; some may also be
        // in it, as they were or as they are now: the later word wins.
        for e in pending {
            match log.entries.binary_search_by_key(&e.id, |c| c.id) {
                Ok(i) => log.entries[i] = cached(e),
                Err(i) if i == log.entries.len() => log.entries.push_back(cached(e)),
                Err(_) => {}
            }
        }
        while log.entries.len() > self.per_room {
            log.entries.pop_front();
            log.whole = false;
        }
        self.total += log.entries.len();
        self.bytes += log.bytes();
        self.rooms.insert(room.to_string(), Slot::Ready(log));
        self.enforce_budget();
    }

    /// Drops rooms nobody online belongs to, and fills that never came back
    /// (called once a second).
    pub fn retain_rooms(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let (mut freed, mut freed_bytes) = (0, 0);
        self.rooms.retain(|room, slot| {
            let k = match slot {
                Slot::Filling(_, since) => since.elapsed() < FILL_TIMEOUT && keep(room),
                Slot::Ready(_) => keep(room),
            };
            if !k {
                if let Slot::Ready(log) = slot {
                    freed += log.entries.len();
                    freed_bytes += log.bytes();
                }
            }
            k
        });
        self.total -= freed;
        self.bytes -= freed_bytes;
    }

    /// Drops every room that holds an entry of `author`, and every fill in
    /// flight (it may have read them before they changed): their nickname or
    /// text changed in the database (a deleted account). They are filled
    /// again when next asked for.
    pub fn forget_author(&mut self, author: &str) {
        let (mut freed, mut freed_bytes) = (0, 0);
        self.rooms.retain(|_, slot| {
            let Slot::Ready(log) = slot else {
                return false;
            };
            if !log.entries.iter().any(|c| c.from == author) {
                return true;
            }
            freed += log.entries.len();
            freed_bytes += log.bytes();
            false
        });
        self.total -= freed;
        self.bytes -= freed_bytes;
    }

    /// Drops one room (its entries could go stale: see `cluster`).
    pub fn forget(&mut self, room: &str) {
        if let Some(Slot::Ready(log)) = self.rooms.remove(room) {
            self.total -= log.entries.len();
            self.bytes -= log.bytes();
        }
    }

    /// Least recently used rooms go first when over a budget, until a tenth of
    /// it is free again: the walk over the rooms that finds them is then paid
    /// once per tenth of the budget written, not once per entry.
    fn enforce_budget(&mut self) {
        if self.total <= self.max_entries && self.bytes <= self.max_bytes {
            return;
        }
        let (entries, bytes) = (self.max_entries / 10 * 9, self.max_bytes / 10 * 9);
        let mut by_age: Vec<(u64, String)> = self
            .rooms
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ready(log) => Some((log.last_used, k.clone())),
                Slot::Filling(..) => None,
            })
            .collect();
        by_age.sort_unstable();
        for (_, room) in by_age {
            if self.total <= entries && self.bytes <= bytes {
                break;
            }
            self.forget(&room);
        }
    }

    /// Entries held in memory (for metrics).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes those entries hold (for metrics).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl RoomLog {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|c| c.bytes).sum()
    }
}

fn cached(e: ChatEntry) -> Cached {
    let json = crate::protocol::history_item(&e)
        .to_string()
        .into_boxed_str();
    Cached {
        bytes: std::mem::size_of::<Cached>()
            + json.len()
            + e.from.len()
            + e.to.as_ref().map_or(0, String::len),
        id: e.id,
        ts: e.ts,
        is_dm: e.kind == "dm",
        from: e.from,
        to: e.to,
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn entry(id: i64, kind: &str, from: &str, to: Option<&str>) -> ChatEntry {
        ChatEntry {
            id,
            ts: UNIX_EPOCH + Duration::from_secs(id as u64),
            kind: kind.into(),
            room: "r".into(),
            from: from.into(),
            from_nickname: from.into(),
            to: to.map(str::to_string),
            text: format!("t{id}"),
            client_id: None,
            edited_at: None,
            deleted: false,
            deleted_by: None,
        }
    }

    fn q(user: &str, limit: i64) -> HistoryQuery {
        HistoryQuery {
            room: "r".into(),
            username: user.into(),
            limit,
            before: None,
            after: None,
            before_id: None,
            after_id: None,
        }
    }

    fn ids(hit: Hit<'_>) -> Vec<i64> {
        hit.iter()
            .map(|j| {
                serde_json::from_str::<serde_json::Value>(j).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn fill_merge_and_queries() {
        let mut c = HistoryCache::new(5, 100, 1 << 20);
        assert!(c.query(&q("a", 3)).is_none());
        assert!(c.needs_fill("r"));
        assert!(!c.needs_fill("r"));
        // Committed while the fill runs: 3 is in both, 4 only here.
        c.append(entry(3, "msg", "a", None));
        c.append(entry(4, "dm", "a", Some("b")));
        c.filled(
            "r",
            5,
            vec![
                entry(1, "system", "system", None),
                entry(2, "msg", "b", None),
                entry(3, "msg", "a", None),
            ],
        );
        assert_eq!(ids(c.query(&q("a", 10)).unwrap()), [1, 2, 3, 4]);
        // DMs only for their parties; the room is whole, so short answers are complete.
        assert_eq!(ids(c.query(&q("z", 10)).unwrap()), [1, 2, 3]);
        let mut f = q("a", 2);
        f.before_id = Some(4);
        assert_eq!(ids(c.query(&f).unwrap()), [2, 3]);
        // Past the per-room cap the cache is no longer whole.
        c.append(entry(5, "msg", "a", None));
        c.append(entry(6, "msg", "a", None));
        assert_eq!(ids(c.query(&q("a", 3)).unwrap()), [4, 5, 6]);
        assert!(c.query(&q("a", 10)).is_none(), "older entries may exist");
        assert_eq!(c.total(), 5);
        c.retain_rooms(|_| false);
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn edits_replace_cached_entries_even_while_filling() {
        let mut c = HistoryCache::new(5, 100, 1 << 20);
        assert!(c.needs_fill("r"));
        // Edited while the fill runs: the fill may hold the old text.
        let mut edited = entry(2, "msg", "b", None);
        edited.text = "new".into();
        c.replace(edited.clone());
        c.filled(
            "r",
            5,
            vec![entry(1, "msg", "a", None), entry(2, "msg", "b", None)],
        );
        let texts = |c: &mut HistoryCache| -> Vec<String> {
            c.query(&q("a", 10))
                .unwrap()
                .iter()
                .map(|j| {
                    serde_json::from_str::<serde_json::Value>(j).unwrap()["text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(texts(&mut c), ["t1", "new"]);
        // Deleted once ready: a tombstone in place.
        let mut gone = entry(1, "msg", "a", None);
        gone.text = String::new();
        gone.deleted = true;
        c.replace(gone);
        assert_eq!(texts(&mut c), ["", "new"]);
        assert_eq!(c.total(), 2);
    }

    #[test]
    fn budget_drops_least_recently_used() {
        let mut c = HistoryCache::new(10, 4, 1 << 20);
        for room in ["r", "s"] {
            assert!(c.needs_fill(room));
            let mut items = vec![
                entry(1, "msg", "a", None),
                entry(2, "msg", "a", None),
                entry(3, "msg", "a", None),
            ];
            for i in &mut items {
                i.room = room.into();
            }
            c.filled(room, 10, items);
        }
        assert!(c.total() <= 4);
        assert!(c.query(&q("a", 1)).is_none(), "r was least recently used");
    }

    #[test]
    fn budget_counts_bytes_on_append_and_fill() {
        // Room for about three entries of 16 KB of text each.
        let mut c = HistoryCache::new(200, 1000, 50_000);
        let big = |id: i64, room: &str| {
            let mut e = entry(id, "msg", "a", None);
            e.room = room.into();
            e.text = "x".repeat(16_000);
            e
        };
        assert!(c.needs_fill("r"));
        c.filled("r", 200, vec![big(1, "r")]);
        for id in 2..=10 {
            c.append(big(id, "r"));
            assert!(c.bytes() <= 50_000, "{} bytes after entry {id}", c.bytes());
        }
        assert!(c.total() < 10);
        // Control characters escape to six bytes each: counted as stored.
        assert!(c.needs_fill("s"));
        let mut ctl = entry(1, "msg", "a", None);
        ctl.room = "s".into();
        ctl.text = "\u{1}".repeat(4000);
        c.filled("s", 200, vec![ctl]);
        assert!(c.bytes() >= 24_000, "{}", c.bytes());
        assert!(c.bytes() <= 50_000);
        c.retain_rooms(|_| false);
        assert_eq!((c.total(), c.bytes()), (0, 0));
    }
}
