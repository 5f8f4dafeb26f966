//! The SQL behind each [`Job`], run on a worker's connection.
//!
//! Statements are prepared once per connection and cached ([`Stmts`]): a job then
//! costs one round trip instead of two.

use std::time::SystemTime;

use postgres::GenericClient;

use super::bus::Sealer;
use super::jobs::*;
use super::rows::room_newest_entry;
pub use super::rows::{display_nickname, entry_from_row, Stmts};
use super::DbError;

/// Offline DMs kept per recipient; older ones are dropped.
pub const OFFLINE_QUEUE_CAP: i64 = 100;

/// Runs a general (unordered) job that notifies nothing.
pub fn run<C: GenericClient>(c: &mut C, st: &mut Stmts, job: Job) -> Result<Outcome, DbError> {
    run_with(c, st, None, job)
}

/// Runs a general (unordered) job; `bus` seals what it notifies (in a cluster:
/// jobs that notify are only submitted there).
pub fn run_with<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    bus: Option<&Sealer>,
    job: Job,
) -> Result<Outcome, DbError> {
    let bus = || bus.ok_or_else(|| DbError::Query("a bus job on a node without the bus".into()));
    Ok(match job {
        Job::Health => {
            c.simple_query("SELECT 1")?;
            Outcome::Healthy
        }
        Job::Register {
            username,
            password_hash,
            nickname,
        } => {
            // `created` also when the row is already there with this very hash: the
            // hash carries a fresh random salt, so only this request can have
            // written it — an earlier attempt of the same job that committed before
            // its connection broke, which the worker then retried.
            let s = st.get(
                c,
                "WITH ins AS (\
                   INSERT INTO users (username, password, nickname, extra, created_at) \
                   VALUES ($1, $2, $3, '', now()) ON CONFLICT (username) DO NOTHING \
                   RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM ins) \
                     OR EXISTS (SELECT 1 FROM users WHERE username = $1 AND password = $2)",
            )?;
            let created: bool = c
                .query_one(&s, &[&username, &password_hash, &nickname])?
                .get(0);
            Outcome::Registered { created }
        }
        Job::Credentials { username } => {
            let s = st.get(c, "SELECT password FROM users WHERE username = $1")?;
            let password = c.query_opt(&s, &[&username])?.map(|r| r.get(0));
            Outcome::Credentials { username, password }
        }
        Job::UpgradePassword {
            username,
            legacy,
            new_hash,
        } => {
            let s = st.get(
                c,
                "UPDATE users SET password = $2 WHERE username = $1 AND password = $3",
            )?;
            c.execute(&s, &[&username, &new_hash, &legacy])?;
            Outcome::Done
        }
        Job::OpenSession { username, claim } => {
            let session = open_session(c, st, &username, &claim)?;
            Outcome::Session { username, session }
        }
        Job::ReleaseOfflineClaims { ids, claim } => {
            let s = st.get(
                c,
                "UPDATE klav_offline_dms SET klav_claimed_by = NULL \
                 WHERE id = ANY($1) AND klav_claimed_by = $2",
            )?;
            c.execute(&s, &[&ids, &claim])?;
            Outcome::Done
        }
        Job::Presence {
            node,
            user,
            nickname,
            conns,
        } => {
            let bus = bus()?;
            let mut tx = c.transaction()?;
            super::nodes::presence(&mut tx, st, bus, &node, &user, &nickname, conns)?;
            tx.commit()?;
            Outcome::Presence { user }
        }
        Job::Heartbeat {
            node,
            incarnation,
            timeout_secs,
        } => {
            let bus = bus()?;
            let mut tx = c.transaction()?;
            let rejoined =
                super::nodes::heartbeat(&mut tx, st, bus, &node, incarnation, timeout_secs)?;
            tx.commit()?;
            Outcome::Heartbeat { rejoined }
        }
        Job::EntryById { id } => super::nodes::entry_by_id(c, st, id)?,
        Job::FollowsOf { user, read } => super::nodes::user_follows(c, st, user, read)?,
        Job::Notify { payloads } => {
            super::nodes::send(c, st, bus()?, &payloads)?;
            Outcome::Done
        }
        Job::OnlineFriends { username } => super::nodes::online_friends(c, st, &username)?,
        Job::HistoryFill { room, limit } => {
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
            Outcome::HistoryFill { room, limit, items }
        }
        Job::DeleteOfflineDms { ids, .. } => {
            let s = st.get(c, "DELETE FROM klav_offline_dms WHERE id = ANY($1)")?;
            c.execute(&s, &[&ids])?;
            Outcome::Done
        }
        Job::History(q) => {
            let items = history(c, st, &q)?;
            Outcome::History {
                room: q.room,
                items,
            }
        }
        Job::MyRooms { username } => Outcome::MyRooms(my_rooms(c, st, &username)?),
        Job::Following { username } => {
            let s = st.get(
                c,
                "SELECT u.username, u.nickname FROM follows f \
                 JOIN users u ON u.username = f.followee_username \
                 WHERE f.follower_username = $1 ORDER BY u.username",
            )?;
            Outcome::Following(user_refs(c.query(&s, &[&username])?))
        }
        Job::Followers { username } => {
            let s = st.get(
                c,
                "SELECT u.username, u.nickname FROM follows f \
                 JOIN users u ON u.username = f.follower_username \
                 WHERE f.followee_username = $1 ORDER BY u.username",
            )?;
            Outcome::Followers(user_refs(c.query(&s, &[&username])?))
        }
        Job::Follow { from, to } => {
            let exists = st.get(c, "SELECT 1 FROM users WHERE username = $1")?;
            let status = if c.query_opt(&exists, &[&to])?.is_none() {
                FollowStatus::NotRegistered
            } else {
                let ins = st.get(
                    c,
                    "INSERT INTO follows (follower_username, followee_username, created_at) \
                     VALUES ($1, $2, now()) \
                     ON CONFLICT (follower_username, followee_username) DO NOTHING",
                )?;
                if c.execute(&ins, &[&from, &to])? == 1 {
                    FollowStatus::Followed
                } else {
                    FollowStatus::Already
                }
            };
            Outcome::Follow { from, to, status }
        }
        Job::Unfollow { from, to } => {
            let s = st.get(
                c,
                "DELETE FROM follows WHERE follower_username = $1 AND followee_username = $2",
            )?;
            let removed = c.execute(&s, &[&from, &to])? > 0;
            Outcome::Unfollow { from, to, removed }
        }
        Job::Prune { rooms, keep } => Outcome::Pruned(prune(c, st, &rooms, keep)?),
        Job::RoomMembers { room, cluster } => {
            let members = room_members(c, st, &room)?;
            let online = match cluster {
                true => Some(super::nodes::online_members(c, st, &room)?),
                false => None,
            };
            Outcome::RoomMembers {
                room,
                members,
                online,
            }
        }
        Job::Resume {
            username,
            rooms,
            limit,
        } => Outcome::Resume(resume(c, st, &username, rooms, limit)?),
        other => {
            return Err(DbError::Query(format!(
                "ordered write sent to a general worker: {other:?}"
            )))
        }
    })
}

fn user_refs(rows: Vec<postgres::Row>) -> Vec<UserRef> {
    rows.into_iter()
        .map(|r| {
            let username: String = r.get(0);
            let nickname = display_nickname(&username, r.get(1));
            UserRef { username, nickname }
        })
        .collect()
}

fn open_session<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    claim: &str,
) -> Result<Option<SessionData>, DbError> {
    let s = st.get(c, "SELECT nickname FROM users WHERE username = $1")?;
    let nickname = match c.query_opt(&s, &[&username])? {
        None => return Ok(None),
        Some(r) => display_nickname(username, r.get(0)),
    };
    let s = st.get(
        c,
        concat!(
            "SELECT m.room_id, ",
            room_newest_entry!("r"),
            " FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE m.username = $1"
        ),
    )?;
    let (rooms, last_entries) = c
        .query(&s, &[&username])?
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .unzip();
    let s = st.get(
        c,
        "SELECT followee_username FROM follows WHERE follower_username = $1",
    )?;
    let following = c
        .query(&s, &[&username])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    // Claimed for this node, unless another live node holds them (it is
    // delivering them to a connection of this user right now).
    let s = st.get(
        c,
        "UPDATE klav_offline_dms o SET klav_claimed_by = $2 \
         WHERE o.recipient = $1 AND (o.klav_claimed_by IS NULL OR o.klav_claimed_by = $2 \
            OR NOT EXISTS (SELECT 1 FROM klav_nodes n \
                           WHERE n.name || ':' || n.incarnation = o.klav_claimed_by)) \
         RETURNING id, room_id, from_user, from_nickname, text, sent_at",
    )?;
    let mut rows = c.query(&s, &[&username, &claim])?;
    rows.sort_unstable_by_key(|r| r.get::<_, i64>(0));
    let offline = rows
        .into_iter()
        .map(|r| OfflineDm {
            id: r.get(0),
            room: r.get(1),
            from: r.get(2),
            from_nickname: r.get(3),
            text: r.get(4),
            at: r.get(5),
        })
        .collect();
    Ok(Some(SessionData {
        nickname,
        rooms,
        last_entries,
        following,
        offline,
    }))
}

fn history<C: GenericClient>(
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

fn my_rooms<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<RoomInfo>, DbError> {
    // `unread` walks (room_id, id) over at most what retention keeps per room.
    let s = st.get(
        c,
        "SELECT r.id, r.name, r.last_message_text, r.last_message_from, \
                r.last_message_kind, r.last_message_ts, r.last_message_id, \
                l.deleted, l.edited_at, l.text, \
                COALESCE(k.last_read_id, 0), \
                (SELECT count(*) FROM chat_logs u \
                 WHERE u.room_id = r.id AND u.id > COALESCE(k.last_read_id, 0) \
                   AND u.kind = 'msg' AND u.from_user IS DISTINCT FROM $1 \
                   AND NOT u.deleted) \
         FROM room_members m JOIN rooms r ON r.id = m.room_id \
         LEFT JOIN chat_logs l ON l.id = r.last_message_id \
         LEFT JOIN klav_read_markers k ON k.username = $1 AND k.room_id = r.id \
         WHERE m.username = $1 \
         ORDER BY r.last_message_ts DESC NULLS LAST, r.created_at DESC, r.id",
    )?;
    Ok(c.query(&s, &[&username])?
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
            RoomInfo {
                id: r.get(0),
                name: r.get(1),
                last,
                read_id: r.get(10),
                unread: r.get(11),
            }
        })
        .collect())
}

fn room_members<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
) -> Result<Vec<UserRef>, DbError> {
    let s = st.get(
        c,
        "SELECT u.username, u.nickname FROM room_members m \
         JOIN users u ON u.username = m.username \
         WHERE m.room_id = $1 ORDER BY u.username",
    )?;
    Ok(user_refs(c.query(&s, &[&room])?))
}

/// Each room's entries after its cursor that `username` may see, oldest first:
/// below the cursor's `before`, when it has one, except the user's DMs to
/// others (the connection never got those live).
fn resume<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    rooms: Vec<ResumeCursor>,
    limit: i64,
) -> Result<Vec<RoomReplay>, DbError> {
    let pruned = st.get(c, "SELECT klav_pruned_upto FROM rooms WHERE id = $1")?;
    let entries = st.get(
        c,
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM chat_logs \
             WHERE room_id = $1 AND id > $2 \
               AND (kind IS DISTINCT FROM 'dm' OR from_user = $3 OR to_user = $3) \
               AND ($5::bigint IS NULL OR id < $5 \
                    OR (kind = 'dm' AND from_user = $3 AND to_user IS DISTINCT FROM $3)) \
             ORDER BY id LIMIT $4"
        ),
    )?;
    let mut out = Vec::with_capacity(rooms.len());
    for cursor in rooms {
        let upto: Option<i64> = c
            .query_opt(&pruned, &[&cursor.room])?
            .and_then(|r| r.get(0));
        let mut items: Vec<ChatEntry> = c
            .query(
                &entries,
                &[
                    &cursor.room,
                    &cursor.after,
                    &username,
                    &(limit + 1),
                    &cursor.before,
                ],
            )?
            .into_iter()
            .map(entry_from_row)
            .collect();
        let too_many = items.len() as i64 > limit;
        if too_many {
            items.clear();
        }
        out.push(RoomReplay {
            pruned: upto.is_some_and(|u| u > cursor.after),
            room: cursor.room,
            entries: items,
            too_many,
        });
    }
    Ok(out)
}

fn prune<C: GenericClient>(
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
