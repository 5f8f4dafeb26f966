//! `resume`: what each room has after a reconnecting client's cursor, paid
//! for before it is read (row and byte budgets fixed up front). Its own
//! module: the largest read a general worker does, in steps (the rooms'
//! heads, each room counted, the entries that fit loaded at once).

use std::collections::HashMap;

use postgres::{GenericClient, Statement};

use crate::db::entry::ChatEntry;
use crate::db::error::DbError;
use crate::db::jobs::{Replay, ResumeCursor, RoomReplay};
use crate::db::rows::{entry_from_row, room_newest_entry, Stmts};

/// What one `resume` may cost the database and the reply.
pub(super) struct ReplayBudget {
    /// Entries replayed per room at most.
    pub(super) limit: i64,
    /// Rows examined in all.
    pub(super) rows: i64,
    /// Reply bytes (estimated from the stored sizes).
    pub(super) bytes: usize,
}

/// What a replayed entry adds to its event beyond its text, nickname, sender
/// and client id (field names, id, room, time): an estimate, checked again
/// against the real frames on the loop.
const ENTRY_EVENT_OVERHEAD: usize = 160;

/// Rows a room with new entries costs the budget on top of its entries: the
/// query that counts them is a round trip and an index descent of its own.
pub const ROOM_LOOKUP_ROWS: i64 = 4;

/// Each room's entries after its cursor that `username` may see, oldest first:
/// below the cursor's `before`, when it has one, except the user's DMs to
/// others (the connection never got those live).
///
/// Paid for before it is done: one query finds the rooms with anything new at
/// all; each of those is then counted (ids and stored sizes, never text), room
/// by room, until the row budget is spent; only the rooms whose entries fit the
/// byte budget have their entries loaded, in one query. Rooms past either
/// budget are answered `over_budget` and the client pages them with `history`.
pub(super) fn resume<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    rooms: Vec<ResumeCursor>,
    budget: ReplayBudget,
) -> Result<Replay, DbError> {
    let ids: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
    let mut newest = room_heads(c, st, &ids)?;
    let sizes = st.get(
        c,
        "SELECT id, octet_length(text) + octet_length(from_nickname) \
                + octet_length(from_user) + COALESCE(octet_length(client_id), 0) \
         FROM chat_logs \
         WHERE room_id = $1 AND id > $2 \
           AND (kind IS DISTINCT FROM 'dm' OR from_user = $3 OR to_user = $3) \
           AND ($5::bigint IS NULL OR id < $5 \
                OR (kind = 'dm' AND from_user = $3 AND to_user IS DISTINCT FROM $3)) \
         ORDER BY id LIMIT $4",
    )?;
    // The first query looks at one row per room named.
    let examined = rooms.len() as i64;
    let mut tally = Tally {
        rows_left: budget.rows - examined,
        bytes_left: budget.bytes,
        examined,
        load: Vec::new(),
    };
    let mut out = Vec::with_capacity(rooms.len());
    for cursor in rooms {
        let head = newest.remove(&cursor.room).unwrap_or((None, 0));
        out.push(count_room(
            c,
            &sizes,
            username,
            cursor,
            head,
            budget.limit,
            &mut tally,
        )?);
    }
    if !tally.load.is_empty() {
        load_entries(c, st, &tally.load, &mut out)?;
    }
    Ok(Replay {
        username: username.to_string(),
        rooms: out,
        hidden: Vec::new(),
        examined: tally.examined,
        reserved: budget.rows,
    })
}

/// Each named room's `klav_pruned_upto` and newest entry id.
fn room_heads<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    ids: &[&str],
) -> Result<HashMap<String, (Option<i64>, i64)>, DbError> {
    let heads = st.get(
        c,
        concat!(
            "SELECT id, klav_pruned_upto, ",
            room_newest_entry!("rooms"),
            " FROM rooms WHERE id = ANY($1)"
        ),
    )?;
    Ok(c.query(&heads, &[&ids])?
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// What is left of a `resume`'s budget as its rooms are counted, the rows it
/// has examined, and the entries to load.
struct Tally {
    rows_left: i64,
    bytes_left: usize,
    examined: i64,
    load: Vec<i64>,
}

/// One room of a `resume`: nothing to replay, or over the budget, or too
/// many entries; otherwise its entries' ids are added to those to load.
/// `head` is the room's `klav_pruned_upto` and newest entry id.
fn count_room<C: GenericClient>(
    c: &mut C,
    sizes: &Statement,
    username: &str,
    cursor: ResumeCursor,
    head: (Option<i64>, i64),
    limit: i64,
    tally: &mut Tally,
) -> Result<RoomReplay, DbError> {
    let (pruned_upto, last) = head;
    let mut replay = RoomReplay {
        pruned: pruned_upto.is_some_and(|u| u > cursor.after),
        room: cursor.room,
        entries: Vec::new(),
        too_many: false,
        over_budget: false,
    };
    if last <= cursor.after {
        // Nothing after the cursor: nothing to count.
        return Ok(replay);
    }
    if tally.rows_left <= 0 {
        replay.over_budget = true;
        return Ok(replay);
    }
    let take = (limit + 1).min(tally.rows_left);
    let found: Vec<(i64, i32)> = c
        .query(
            sizes,
            &[
                &replay.room,
                &cursor.after,
                &username,
                &take,
                &cursor.before,
            ],
        )?
        .into_iter()
        .map(|r| (r.get(0), r.get::<_, Option<i32>>(1).unwrap_or(0)))
        .collect();
    let n = found.len() as i64;
    tally.rows_left -= n + ROOM_LOOKUP_ROWS;
    tally.examined += n + ROOM_LOOKUP_ROWS;
    if n > limit {
        replay.too_many = true;
    } else if n == take && take <= limit {
        // Counting stopped at the row budget: more may follow.
        replay.over_budget = true;
    } else {
        let size: usize = found
            .iter()
            .map(|(_, len)| *len as usize + ENTRY_EVENT_OVERHEAD)
            .sum();
        if size > tally.bytes_left {
            replay.over_budget = true;
        } else {
            tally.bytes_left -= size;
            tally.load.extend(found.iter().map(|(id, _)| *id));
        }
    }
    Ok(replay)
}

/// The entries of `load`, in one query, into their rooms' replays.
fn load_entries<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    load: &[i64],
    out: &mut [RoomReplay],
) -> Result<(), DbError> {
    let s = st.get(
        c,
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM chat_logs WHERE id = ANY($1) ORDER BY id"
        ),
    )?;
    let mut by_room: HashMap<String, Vec<ChatEntry>> = HashMap::new();
    for e in c.query(&s, &[&load])?.into_iter().map(entry_from_row) {
        by_room.entry(e.room.clone()).or_default().push(e);
    }
    for r in out {
        if let Some(entries) = by_room.remove(&r.room) {
            r.entries = entries;
        }
    }
    Ok(())
}
