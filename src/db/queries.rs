//! The SQL behind each [`Job`], run on a worker's connection.
//!
//! Statements are prepared once per connection and cached ([`Stmts`]): a job then
//! costs one round trip instead of two.

use std::time::SystemTime;

use postgres::GenericClient;

use super::error::DbError;
use super::jobs::*;
use super::notify::Notifier;
use super::rows::room_newest_entry;
pub use super::rows::{display_nickname, entry_from_row, Stmts};

/// Entries after a room's read marker that `my_rooms` looks at to count the
/// unread ones: the count is exact up to there, and says "more" beyond.
pub const UNREAD_WINDOW: i64 = 100;

/// Runs a general (unordered) job that notifies nothing.
pub fn run<C: GenericClient>(c: &mut C, st: &mut Stmts, job: Job) -> Result<Outcome, DbError> {
    run_with(c, st, None, job)
}

/// Runs a general (unordered) job; `bus` seals what it notifies (in a cluster:
/// jobs that notify are only submitted there).
pub fn run_with<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    bus: Option<&dyn Notifier>,
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
            let mut tx = c.transaction()?;
            let result = register(&mut tx, st, &username, &password_hash, &nickname)?;
            tx.commit()?;
            Outcome::Registered(result)
        }
        Job::UsernameTaken { username } => Outcome::UsernameTaken {
            existing: same_name(c, st, &username)?.map(|(name, _)| name),
        },
        Job::MintWsTicket { hash, grant, ttl } => {
            let mut tx = c.transaction()?;
            let minted = super::tickets::mint(&mut tx, st, &hash, &grant, ttl)?;
            tx.commit()?;
            Outcome::WsTicketMinted { minted }
        }
        Job::TakeWsTicket { hash } => Outcome::WsTicket(super::tickets::take(c, st, &hash)?),
        Job::PruneWsTickets => Outcome::Pruned(super::tickets::prune(c, st)?),
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
        Job::ReleaseOfflineClaims {
            username,
            ids,
            dropped,
            claim,
        } => {
            let s = st.get(
                c,
                "UPDATE klav_offline_dms SET klav_claimed_by = NULL \
                 WHERE id = ANY($1) AND klav_claimed_by = $2",
            )?;
            c.execute(&s, &[&ids, &claim])?;
            if dropped {
                let s = st.get(
                    c,
                    "UPDATE klav_offline_dropped SET klav_claimed_by = NULL \
                     WHERE recipient = $1 AND klav_claimed_by = $2",
                )?;
                c.execute(&s, &[&username, &claim])?;
            }
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
            super::notify::send(c, st, &bus()?.seal(&payloads))?;
            Outcome::Done
        }
        Job::OnlineFriends { username } => super::nodes::online_friends(c, st, &username)?,
        Job::PresenceOf { users } => super::nodes::presence_of(c, st, users)?,
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
        Job::DeleteOfflineDms {
            username,
            ids,
            dropped,
        } => {
            let s = st.get(c, "DELETE FROM klav_offline_dms WHERE id = ANY($1)")?;
            c.execute(&s, &[&ids])?;
            if dropped > 0 {
                // Only what was told is subtracted: drops counted meanwhile
                // stay for the next connection.
                let s = st.get(
                    c,
                    "UPDATE klav_offline_dropped \
                     SET dropped = dropped - $2, klav_claimed_by = NULL WHERE recipient = $1",
                )?;
                c.execute(&s, &[&username, &dropped])?;
                let s = st.get(
                    c,
                    "DELETE FROM klav_offline_dropped WHERE recipient = $1 AND dropped <= 0",
                )?;
                c.execute(&s, &[&username])?;
            }
            Outcome::Done
        }
        Job::History(q) => {
            let items = history(c, st, &q)?;
            Outcome::History {
                room: q.room,
                items,
            }
        }
        Job::MyRooms { username } => Outcome::MyRooms {
            rooms: my_rooms(c, st, &username)?,
            username,
        },
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
            rows,
            bytes,
        } => Outcome::Resume(resume(
            c,
            st,
            &username,
            rooms,
            ReplayBudget { limit, rows, bytes },
        )?),
        other => {
            return Err(DbError::Query(format!(
                "ordered write sent to a general worker: {other:?}"
            )))
        }
    })
}

/// First key of the advisory lock on a lowercased username (the second is
/// its hash): registrations of names equal but for case take turns.
pub const USERNAME_LOCK: i32 = 7_283_912;

/// The existing username equal to `username` without regard to case, the
/// same spelling first (rows from before the rule may differ only in case),
/// with its stored password field.
fn same_name<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Option<(String, String)>, DbError> {
    let s = st.get(
        c,
        "SELECT username, password FROM users WHERE lower(username) = lower($1) \
         ORDER BY username = $1 DESC LIMIT 1",
    )?;
    Ok(c.query_opt(&s, &[&username])?.map(|r| (r.get(0), r.get(1))))
}

/// Inserts the account unless its name is taken in any case. Without the lock
/// two registrations of `Mina` and `mina` (on two nodes, say) would both find
/// nothing and both insert; with it the second finds the first.
fn register(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    password_hash: &str,
    nickname: &str,
) -> Result<Registration, DbError> {
    let lock = st.get(tx, "SELECT pg_advisory_xact_lock($1, hashtext(lower($2)))")?;
    tx.execute(&lock, &[&USERNAME_LOCK, &username])?;
    match same_name(tx, st, username)? {
        // Already there with this very hash: the hash carries a fresh random
        // salt, so only this request can have written it — an earlier attempt
        // of the same job that committed before its connection broke, which
        // the worker then retried.
        Some((name, stored)) if name == username => Ok(if stored == password_hash {
            Registration::Created
        } else {
            Registration::Already
        }),
        Some((name, _)) => Ok(Registration::CaseTaken(name)),
        None => {
            let s = st.get(
                tx,
                "INSERT INTO users (username, password, nickname, extra, created_at) \
                 VALUES ($1, $2, $3, '', now()) ON CONFLICT (username) DO NOTHING",
            )?;
            // A row inserted without the lock (`klav import-json`) is the
            // only way the name can have appeared since.
            Ok(
                match tx.execute(&s, &[&username, &password_hash, &nickname])? {
                    1 => Registration::Created,
                    _ => Registration::Already,
                },
            )
        }
    }
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
    // How many were dropped from a full queue, claimed the same way.
    let s = st.get(
        c,
        "UPDATE klav_offline_dropped d SET klav_claimed_by = $2 \
         WHERE d.recipient = $1 AND d.dropped > 0 \
           AND (d.klav_claimed_by IS NULL OR d.klav_claimed_by = $2 \
            OR NOT EXISTS (SELECT 1 FROM klav_nodes n \
                           WHERE n.name || ':' || n.incarnation = d.klav_claimed_by)) \
         RETURNING dropped",
    )?;
    let dropped = c
        .query_opt(&s, &[&username, &claim])?
        .map_or(0, |r| r.get(0));
    Ok(Some(SessionData {
        nickname,
        rooms,
        last_entries,
        following,
        offline,
        dropped,
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
    // `unread` looks at no more than the first UNREAD_WINDOW entries after the
    // marker of each room (one index descent for a room read to its end): a
    // user in hundreds of busy rooms costs a bounded number of rows, counted
    // in `examined` and charged to the user's budget.
    let s = st.get(
        c,
        "SELECT r.id, r.name, r.last_message_text, r.last_message_from, \
                r.last_message_kind, r.last_message_ts, r.last_message_id, \
                l.deleted, l.edited_at, l.text, \
                COALESCE(k.last_read_id, 0), w.unread, w.seen \
         FROM room_members m JOIN rooms r ON r.id = m.room_id \
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
         ORDER BY r.last_message_ts DESC NULLS LAST, r.created_at DESC, r.id",
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
                last,
                read_id: r.get(10),
                unread: r.get(11),
                unread_more: seen >= UNREAD_WINDOW,
                examined: seen + 1,
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

/// What one `resume` may cost the database and the reply.
struct ReplayBudget {
    /// Entries replayed per room at most.
    limit: i64,
    /// Rows examined in all.
    rows: i64,
    /// Reply bytes (estimated from the stored sizes).
    bytes: usize,
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
fn resume<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    rooms: Vec<ResumeCursor>,
    budget: ReplayBudget,
) -> Result<Replay, DbError> {
    let ids: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
    let heads = st.get(
        c,
        concat!(
            "SELECT id, klav_pruned_upto, ",
            room_newest_entry!("rooms"),
            " FROM rooms WHERE id = ANY($1)"
        ),
    )?;
    let mut newest: std::collections::HashMap<String, (Option<i64>, i64)> = c
        .query(&heads, &[&ids])?
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
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
    let mut examined = rooms.len() as i64;
    let mut rows_left = budget.rows - examined;
    let mut bytes_left = budget.bytes;
    let mut load: Vec<i64> = Vec::new();
    let mut out = Vec::with_capacity(rooms.len());
    for cursor in rooms {
        let (pruned_upto, last) = newest.remove(&cursor.room).unwrap_or((None, 0));
        let mut replay = RoomReplay {
            pruned: pruned_upto.is_some_and(|u| u > cursor.after),
            room: cursor.room,
            entries: Vec::new(),
            too_many: false,
            over_budget: false,
        };
        if last <= cursor.after {
            // Nothing after the cursor: nothing to count.
            out.push(replay);
            continue;
        }
        if rows_left <= 0 {
            replay.over_budget = true;
            out.push(replay);
            continue;
        }
        let take = (budget.limit + 1).min(rows_left);
        let found: Vec<(i64, i32)> = c
            .query(
                &sizes,
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
        rows_left -= n + ROOM_LOOKUP_ROWS;
        examined += n + ROOM_LOOKUP_ROWS;
        if n > budget.limit {
            replay.too_many = true;
        } else if n == take && take <= budget.limit {
            // Counting stopped at the row budget: more may follow.
            replay.over_budget = true;
        } else {
            let size: usize = found
                .iter()
                .map(|(_, len)| *len as usize + ENTRY_EVENT_OVERHEAD)
                .sum();
            if size > bytes_left {
                replay.over_budget = true;
            } else {
                bytes_left -= size;
                load.extend(found.iter().map(|(id, _)| *id));
            }
        }
        out.push(replay);
    }
    if !load.is_empty() {
        let s = st.get(
            c,
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM chat_logs WHERE id = ANY($1) ORDER BY id"
            ),
        )?;
        let mut by_room: std::collections::HashMap<String, Vec<ChatEntry>> =
            std::collections::HashMap::new();
        for e in c.query(&s, &[&load])?.into_iter().map(entry_from_row) {
            by_room.entry(e.room.clone()).or_default().push(e);
        }
        for r in &mut out {
            if let Some(entries) = by_room.remove(&r.room) {
                r.entries = entries;
            }
        }
    }
    Ok(Replay {
        username: username.to_string(),
        rooms: out,
        examined,
        reserved: budget.rows,
    })
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
