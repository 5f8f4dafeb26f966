//! The writer's SQL for chat messages and changes to stored entries: the
//! batch's consecutive messages in one multi-row INSERT (idempotent by
//! `client_id`), the original of a repeated one, `edit`/`delete`, and read
//! markers. Separate from rooms and DMs, whose entries are written one by one.

use std::borrow::Cow;
use std::time::SystemTime;

use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};

use super::chain::{Batch, Chain, Last};
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{
    ChainLink, Duplicate, EditResult, NewMessage, Outcome, Poster, ReadResult, Role,
};
use crate::db::notify::EntryRef;
use crate::db::outbox;
use crate::db::rows::{entry_from_row, Stmts};

/// Savepoints one batch may take for messages with a `client_id` (see
/// [`insert_messages`]); past it, the conflict check is made row by row.
/// PostgreSQL keeps a transaction's subtransactions in a 64-entry cache per
/// backend; overflowing it slows every other snapshot.
const MAX_SAVEPOINTS: u32 = 32;

/// One INSERT for all pending messages; their ids come back in input order.
///
/// A message whose `client_id` its sender already used is refused by the unique
/// index in the same statement — no lookup first. Messages with a key are
/// inserted plainly inside a savepoint, because `ON CONFLICT DO NOTHING` costs
/// every row a speculative insertion (about two thirds more per row, measured);
/// only when the index does refuse one is the run rolled back to the savepoint
/// and inserted again with `ON CONFLICT DO NOTHING`, and only then is the
/// original read back, for the retrying client.
pub(super) fn insert_messages<'a>(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    pending: &mut Vec<(usize, &'a NewMessage)>,
    written: &mut [Option<Written>],
    links: &mut [Option<ChainLink>],
    b: &mut Batch<'a, '_>,
    savepoints: &mut u32,
) -> Result<(), DbError> {
    if pending.is_empty() {
        return Ok(());
    }
    let found = insert_rows(tx, st, pending, savepoints)?;
    let mut rows: Vec<(i64, SystemTime, Option<String>, Option<String>)> = found
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Rows are inserted in input order, so sorted ids map back one to one; a
    // skipped message has no row, and a row with a client_id belongs to the first
    // pending message with that sender and key (the index allows only one).
    rows.sort_unstable_by_key(|r| r.0);
    let mut rows = rows.into_iter().peekable();
    let mut duplicates = Vec::new();
    for (idx, msg) in pending.drain(..) {
        let inserted = match (&msg.client_id, rows.peek()) {
            (None, Some(_)) => true,
            (Some(c), Some(r)) => {
                r.3.as_deref() == Some(c.as_str()) && r.2.as_deref() == Some(msg.from.as_str())
            }
            (Some(_), None) => false,
            (None, None) => {
                return Err(DbError::Query(
                    "message insert returned a short row set".into(),
                ))
            }
        };
        if !inserted {
            duplicates.push((idx, msg));
            continue;
        }
        let (id, ts, _, _) = rows.next().expect("peeked");
        links[idx] = Some(link_message(b, msg, id, ts));
        written[idx] = Some(Written::Msg { id, ts });
    }
    for (idx, msg) in duplicates {
        let cid = msg.client_id.as_deref().unwrap_or_default();
        written[idx] = Some(Written::MsgDuplicate(Box::new(duplicate(
            tx, st, &msg.from, cid,
        )?)));
    }
    Ok(())
}

/// The multi-row INSERT of [`insert_messages`], returning `id, ts, from_user,
/// client_id` of the rows stored: plain when no message carries a `client_id`,
/// otherwise see [`insert_keyed`].
fn insert_rows(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    pending: &[(usize, &NewMessage)],
    savepoints: &mut u32,
) -> Result<Vec<Row>, DbError> {
    let rooms: Vec<&str> = pending.iter().map(|(_, m)| m.room.as_str()).collect();
    let froms: Vec<&str> = pending.iter().map(|(_, m)| m.from.as_str()).collect();
    let nicks: Vec<&str> = pending
        .iter()
        .map(|(_, m)| m.from_nickname.as_str())
        .collect();
    let texts: Vec<&str> = pending.iter().map(|(_, m)| m.text.as_str()).collect();
    let cids: Vec<Option<&str>> = pending
        .iter()
        .map(|(_, m)| m.client_id.as_deref())
        .collect();
    let kinds: Vec<&str> = pending.iter().map(|(_, m)| kind_of(m)).collect();
    let plain = st.get(
        tx,
        "INSERT INTO chat_logs \
            (room_id, ts, kind, from_user, from_nickname, to_user, text, client_id) \
         SELECT r, now(), k, f, n, NULL, t, c \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
              AS u(r, f, n, t, c, k) \
         RETURNING id, ts, from_user, client_id",
    )?;
    let params: [&(dyn ToSql + Sync); 6] = [&rooms, &froms, &nicks, &texts, &cids, &kinds];
    let keyed = cids.iter().any(Option::is_some);
    if !keyed {
        return Ok(tx.query(&plain, &params)?);
    }
    insert_keyed(tx, st, &plain, &params, savepoints)
}

/// The INSERT of messages some of which carry a `client_id`: `plain` inside a
/// savepoint while the batch has one to spare, and again skipping conflicts
/// (`ON CONFLICT DO NOTHING`) only when the unique index refused a row; past
/// [`MAX_SAVEPOINTS`], skipping conflicts at once.
fn insert_keyed(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    plain: &Statement,
    params: &[&(dyn ToSql + Sync)],
    savepoints: &mut u32,
) -> Result<Vec<Row>, DbError> {
    let skipping = st.get(
        tx,
        "INSERT INTO chat_logs \
            (room_id, ts, kind, from_user, from_nickname, to_user, text, client_id) \
         SELECT r, now(), k, f, n, NULL, t, c \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
              AS u(r, f, n, t, c, k) \
         ON CONFLICT (from_user, client_id) WHERE client_id IS NOT NULL DO NOTHING \
         RETURNING id, ts, from_user, client_id",
    )?;
    if *savepoints < MAX_SAVEPOINTS {
        *savepoints += 1;
        tx.batch_execute("SAVEPOINT klav_keyed")?;
        match tx.query(plain, params) {
            Ok(rows) => {
                tx.batch_execute("RELEASE SAVEPOINT klav_keyed")?;
                Ok(rows)
            }
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT klav_keyed")?;
                Ok(tx.query(&skipping, params)?)
            }
            Err(e) => Err(e.into()),
        }
    } else {
        Ok(tx.query(&skipping, params)?)
    }
}

/// The `kind` a message is stored as: an announcement of the server API is a
/// `system` entry, everything else a `msg`.
fn kind_of(m: &NewMessage) -> &'static str {
    match m.poster {
        Poster::Announcement => "system",
        Poster::Member | Poster::App => "msg",
    }
}

/// Whether `user` is a member of `room` (a post of the server API on their
/// behalf: the loop's memory may not know them).
pub(super) fn is_member(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    user: &str,
) -> Result<bool, DbError> {
    let s = st.get(
        tx,
        "SELECT 1 FROM room_members WHERE room_id = $1 AND username = $2",
    )?;
    Ok(tx.query_opt(&s, &[&room, &user])?.is_some())
}

/// A message just stored: linked into its room's chain (and noted for the
/// other nodes), made the room's last message, both borrowed from the job,
/// and reported to the webhook. Returns its link.
fn link_message<'a>(
    b: &mut Batch<'a, '_>,
    msg: &'a NewMessage,
    id: i64,
    ts: SystemTime,
) -> ChainLink {
    let prev = b.chain.append(
        &EntryRef {
            id,
            ts,
            kind: kind_of(msg),
            room: &msg.room,
            from: &msg.from,
            from_nickname: &msg.from_nickname,
            to: None,
            text: &msg.text,
            client_id: msg.client_id.as_deref(),
        },
        None,
        false,
    );
    b.lasts.insert(
        Cow::Borrowed(msg.room.as_str()),
        Last {
            id,
            text: Cow::Borrowed(msg.text.as_str()),
            from: msg.from.as_str(),
            kind: kind_of(msg),
        },
    );
    b.chain.report(|| {
        outbox::message_created(
            kind_of(msg),
            &msg.room,
            id,
            ts,
            &msg.from,
            &msg.from_nickname,
            &msg.text,
            msg.client_id.as_deref(),
        )
    });
    ChainLink {
        room: msg.room.clone(),
        prev,
        last: id,
    }
}

/// The entry `from` stored earlier with `client_id` (it conflicted just now).
pub(super) fn duplicate(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    from: &str,
    client_id: &str,
) -> Result<Duplicate, DbError> {
    let s = st.get(
        tx,
        concat!(
            "SELECT ",
            entry_columns!(),
            ", EXISTS (SELECT 1 FROM klav_offline_dms o WHERE o.log_id = chat_logs.id) \
             FROM chat_logs WHERE from_user = $1 AND client_id = $2"
        ),
    )?;
    let row = tx
        .query_opt(&s, &[&from, &client_id])?
        .ok_or_else(|| DbError::Query("the entry a client_id conflicted with is gone".into()))?;
    let queued: bool = row.get(12);
    Ok(Duplicate {
        entry: entry_from_row(row),
        queued,
    })
}

/// `Job::Edit`: the edit or delete, noted for the other nodes when it was made.
pub(super) fn write_edit(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    username: &str,
    id: i64,
    text: Option<&str>,
) -> Result<Linked, DbError> {
    let delete = text.is_none();
    let result = edit(tx, st, username, id, text)?;
    if let EditResult::Done(entry) = &result {
        chain.note(|n| n.change(entry));
    }
    Ok((Written::Ready(Outcome::Edit { delete, result }), None))
}

/// `edit` / `delete` (`text: None`), after the checks the protocol promises.
fn edit(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    id: i64,
    text: Option<&str>,
) -> Result<EditResult, DbError> {
    // The requester's role in the entry's room (NULL: not a member), for a
    // moderator's delete.
    let s = st.get(
        tx,
        "SELECT c.kind, c.from_user, c.to_user, c.deleted, m.username IS NOT NULL, \
                CASE WHEN r.klav_owner = $2 THEN 'owner' ELSE m.klav_role END \
         FROM chat_logs c LEFT JOIN room_members m ON m.room_id = c.room_id AND m.username = $2 \
         LEFT JOIN rooms r ON r.id = c.room_id \
         WHERE c.id = $1 FOR UPDATE OF c",
    )?;
    let Some(row) = tx.query_opt(&s, &[&id, &username])? else {
        return Ok(EditResult::NotFound);
    };
    let kind: Option<String> = row.get(0);
    let from: Option<String> = row.get(1);
    let to: Option<String> = row.get(2);
    let (deleted, member): (bool, bool) = (row.get(3), row.get(4));
    let is_dm = kind.as_deref() == Some("dm");
    let visible =
        member && (!is_dm || from.as_deref() == Some(username) || to.as_deref() == Some(username));
    if !visible || deleted {
        return Ok(EditResult::NotFound);
    }
    // The owner and admins of a room may delete its messages (not DMs, and
    // never edit them); everyone else only their own entries.
    let role: Option<String> = row.get(5);
    let moderates = role
        .as_deref()
        .and_then(Role::parse)
        .is_some_and(Role::moderates);
    let own = from.as_deref() == Some(username);
    let moderated = !own && text.is_none() && kind.as_deref() == Some("msg") && moderates;
    if !matches!(kind.as_deref(), Some("msg" | "dm")) || !(own || moderated) {
        return Ok(EditResult::NotAuthor);
    }
    let deleted_by = moderated.then_some(username);
    let row = match text {
        Some(text) => {
            let s = st.get(
                tx,
                concat!(
                    "UPDATE chat_logs SET text = $2, edited_at = now() WHERE id = $1 RETURNING ",
                    entry_columns!()
                ),
            )?;
            let row = tx.query_one(&s, &[&id, &text])?;
            let q = st.get(
                tx,
                "UPDATE klav_offline_dms SET text = $2 WHERE log_id = $1",
            )?;
            tx.execute(&q, &[&id, &text])?;
            row
        }
        None => {
            let s = st.get(
                tx,
                concat!(
                    "UPDATE chat_logs SET text = '', deleted = true, klav_deleted_by = $2 \
                     WHERE id = $1 RETURNING ",
                    entry_columns!()
                ),
            )?;
            let row = tx.query_one(&s, &[&id, &deleted_by])?;
            let q = st.get(tx, "DELETE FROM klav_offline_dms WHERE log_id = $1")?;
            tx.execute(&q, &[&id])?;
            row
        }
    };
    Ok(EditResult::Done(Box::new(entry_from_row(row))))
}

/// `Job::Read`: the marker moved, noted for the other nodes when it did.
pub(super) fn write_read(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    username: &str,
    room: &str,
    id: i64,
) -> Result<Linked, DbError> {
    let result = read_marker(tx, st, username, room, id)?;
    if let ReadResult::Marker { id, moved: true } = result {
        chain.note(|n| n.read_marker(username, room, id));
    }
    Ok((
        Written::Ready(Outcome::Read {
            username: username.to_string(),
            room: room.to_string(),
            result,
        }),
        None,
    ))
}

/// Moves `username`'s marker in `room` forward to `id`, if the room has that entry
/// and the user may see it.
fn read_marker(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    room: &str,
    id: i64,
) -> Result<ReadResult, DbError> {
    // A DM between two others is as absent as an id the room does not have.
    let s = st.get(
        tx,
        "SELECT 1 FROM chat_logs WHERE id = $1 AND room_id = $2 \
           AND (kind IS DISTINCT FROM 'dm' OR from_user = $3 OR to_user = $3)",
    )?;
    if tx.query_opt(&s, &[&id, &room, &username])?.is_none() {
        return Ok(ReadResult::NotFound);
    }
    let s = st.get(
        tx,
        "INSERT INTO klav_read_markers (username, room_id, last_read_id) VALUES ($1, $2, $3) \
         ON CONFLICT (username, room_id) DO UPDATE \
            SET last_read_id = EXCLUDED.last_read_id, updated_at = now() \
            WHERE klav_read_markers.last_read_id < EXCLUDED.last_read_id \
         RETURNING last_read_id",
    )?;
    if let Some(r) = tx.query_opt(&s, &[&username, &room, &id])? {
        return Ok(ReadResult::Marker {
            id: r.get(0),
            moved: true,
        });
    }
    let s = st.get(
        tx,
        "SELECT last_read_id FROM klav_read_markers WHERE username = $1 AND room_id = $2",
    )?;
    let marker: i64 = tx.query_one(&s, &[&username, &room])?.get(0);
    Ok(ReadResult::Marker {
        id: marker,
        moved: false,
    })
}
