//! Rooms and their logs as the general workers read them: `history`, the
//! history cache's fill, `my_rooms` with unread counts, member lists, and
//! retention's pruning. Separate from the writer's room SQL: none of this
//! adds entries or changes membership.

use std::time::SystemTime;

use postgres::GenericClient;

use crate::db::entry::ChatEntry;
use crate::db::error::DbError;
use crate::db::jobs::{HistoryQuery, LastMessage, Outcome, Role, RoomInfo, UserRef};
use crate::db::nodes;
use crate::db::rows::{display_nickname, entry_from_row, member_role, Stmts};

/// Entries after a room's read marker that `my_rooms` looks at to count the
/// unread ones: the count is exact up to there, and says "more" beyond.
pub const UNREAD_WINDOW: i64 = 100;

/// `Job::HistoryFill`: the newest `limit` entries of a room, every kind,
/// oldest first.
pub(super) fn history_fill<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: String,
    limit: i64,
) -> Result<Outcome, DbError> {
    let s = st.get(
        c,
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM chat_logs WHERE room_id = $1 ORDER BY id DESC LIMIT $2"
        ),
    )?;
    let mut items: Vec<ChatEntry> = c
        .query(&s, &[&room, &limit])?
        .into_iter()
        .map(entry_from_row)
        .collect();
    items.reverse();
    Ok(Outcome::HistoryFill { room, limit, items })
}

pub(super) fn history<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    q: &HistoryQuery,
) -> Result<Vec<ChatEntry>, DbError> {
    let s = st.get(
        c,
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM chat_logs \
         WHERE room_id = $1 \
           AND (kind IS DISTINCT FROM 'dm' OR from_user = $2 OR to_user = $2) \
           AND ($3::timestamptz IS NULL OR ts < $3) \
           AND ($4::timestamptz IS NULL OR ts > $4) \
           AND ($5::int8 IS NULL OR id < $5) \
           AND ($6::int8 IS NULL OR id > $6) \
         ORDER BY id DESC LIMIT $7"
        ),
    )?;
    let rows = c.query(
        &s,
        &[
            &q.room,
            &q.username,
            &q.before,
            &q.after,
            &q.before_id,
            &q.after_id,
            &q.limit,
        ],
    )?;
    let mut items: Vec<ChatEntry> = rows.into_iter().map(entry_from_row).collect();
    items.reverse();
    Ok(items)
}

pub(super) fn my_rooms<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<RoomInfo>, DbError> {
    // `unread` looks at no more than the first UNREAD_WINDOW entries after the
    // marker of each room (one index descent for a room read to its end): a
    // user in hundreds of busy rooms costs a bounded number of rows, counted
    // in `examined` and charged to the user's budget.
    let s = st.get(
        c,
        concat!(
            "SELECT r.id, r.name, r.last_message_text, r.last_message_from, \
                r.last_message_kind, r.last_message_ts, r.last_message_id, \
                l.deleted, l.edited_at, l.text, \
                COALESCE(k.last_read_id, 0), w.unread, w.seen, r.klav_private, ",
            member_role!(),
            " FROM room_members m JOIN rooms r ON r.id = m.room_id \
         LEFT JOIN chat_logs l ON l.id = r.last_message_id \
         LEFT JOIN klav_read_markers k ON k.username = $1 AND k.room_id = r.id \
         CROSS JOIN LATERAL (\
             SELECT count(*) FILTER (WHERE u.kind = 'msg' \
                        AND u.from_user IS DISTINCT FROM $1 AND NOT u.deleted) AS unread, \
                    count(*) AS seen \
             FROM (SELECT kind, from_user, deleted FROM chat_logs \
                   WHERE room_id = r.id AND id > COALESCE(k.last_read_id, 0) \
                   ORDER BY id LIMIT $2) u) w \
         WHERE m.username = $1 \
         ORDER BY r.last_message_ts DESC NULLS LAST, r.created_at DESC, r.id"
        ),
    )?;
    Ok(c.query(&s, &[&username, &UNREAD_WINDOW])?
        .into_iter()
        .map(|r| {
            let text: Option<String> = r.get(2);
            let ts: Option<SystemTime> = r.get(5);
            let last = if text.is_none() && ts.is_none() {
                None
            } else {
                // The entry as it stands now, when it is still kept.
                let deleted: Option<bool> = r.get(7);
                let current: Option<String> = r.get(9);
                Some(LastMessage {
                    id: r.get(6),
                    deleted: deleted.unwrap_or(false),
                    edited_at: r.get(8),
                    text: current.or(text).unwrap_or_default(),
                    from: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    kind: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    ts,
                })
            };
            let seen: i64 = r.get(12);
            RoomInfo {
                id: r.get(0),
                name: r.get(1),
                private: r.get(13),
                role: r
                    .get::<_, Option<&str>>(14)
                    .map(|role| Role::parse(role).unwrap_or(Role::Member)),
                last,
                read_id: r.get(10),
                unread: r.get(11),
                unread_more: seen >= UNREAD_WINDOW,
                examined: seen + 1,
            }
        })
        .collect())
}

/// `Job::RoomMembers`: every member of `room` and, in a cluster, the ones
/// connected to any node.
pub(super) fn members_and_presence<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: String,
    cluster: bool,
) -> Result<Outcome, DbError> {
    let members = room_members(c, st, &room)?;
    let online = match cluster {
        true => Some(nodes::online_members(c, st, &room)?),
        false => None,
    };
    Ok(Outcome::RoomMembers {
        room,
        members,
        online,
        watch: false,
    })
}

pub(super) fn room_members<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
) -> Result<Vec<(UserRef, Option<Role>)>, DbError> {
    let s = st.get(
        c,
        concat!(
            "SELECT u.username, u.nickname, ",
            member_role!(),
            " FROM room_members m JOIN users u ON u.username = m.username \
              JOIN rooms r ON r.id = m.room_id \
              WHERE m.room_id = $1 ORDER BY u.username"
        ),
    )?;
    Ok(c.query(&s, &[&room])?
        .into_iter()
        .map(|r| {
            let username: String = r.get(0);
            let nickname = display_nickname(&username, r.get(1));
            let role = r
                .get::<_, Option<&str>>(2)
                .map(|role| Role::parse(role).unwrap_or(Role::Member));
            (UserRef { username, nickname }, role)
        })
        .collect())
}

pub(super) fn prune<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    rooms: &[String],
    keep: u64,
) -> Result<u64, DbError> {
    // The room remembers the newest id pruned, so `resume` can tell a client
    // that entries after its cursor are gone.
    let s = st.get(
        c,
        "WITH gone AS (\
            DELETE FROM chat_logs WHERE room_id = $1 AND id <= \
            (SELECT id FROM chat_logs WHERE room_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1) \
            RETURNING id), \
         mark AS (\
            UPDATE rooms SET klav_pruned_upto = \
                GREATEST(COALESCE(klav_pruned_upto, 0), (SELECT max(id) FROM gone)) \
            WHERE id = $1 AND EXISTS (SELECT 1 FROM gone)) \
         SELECT count(*) FROM gone",
    )?;
    let keep = keep as i64;
    let mut deleted = 0;
    for room in rooms {
        let n: i64 = c.query_one(&s, &[room, &keep])?.get(0);
        deleted += n as u64;
    }
    Ok(deleted)
}

/// Whether `room` exists and is private.
pub(super) fn is_private<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
) -> Result<bool, DbError> {
    let s = st.get(c, "SELECT 1 FROM rooms WHERE id = $1 AND klav_private")?;
    Ok(c.query_opt(&s, &[&room])?.is_some())
}

/// Which of `rooms` exist and are private.
pub(super) fn private_among<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    rooms: &[String],
) -> Result<Vec<String>, DbError> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let s = st.get(
        c,
        "SELECT id FROM rooms WHERE id = ANY($1) AND klav_private",
    )?;
    Ok(c.query(&s, &[&rooms])?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}
