//! The database side of the cluster: which nodes are alive, which users have
//! connections where (presence), and what a node reads back when it may have
//! missed notifications.
//!
//! Presence changes of one user are serialised by an advisory lock on the
//! user (the same lock a DM takes to decide between "delivered elsewhere" and
//! "queued"), so exactly one transaction sees a user's first connection in the
//! cluster open, or their last one close, and announces it.

use postgres::{GenericClient, Transaction};

use super::error::DbError;
use super::jobs::*;
use super::notify::{send_notes, Notes, Notifier};
use super::rows::{display_nickname, entry_from_row, room_newest_entry, Stmts};

/// First key of the advisory lock per user (the second is the name's hash).
pub const USER_LOCK: i32 = 7_283_911;

/// Entries read back per room at most after a gap; a node cut off for longer
/// delivers the newest of them (clients reload older ones with `history`).
pub const CATCH_UP_LIMIT: i64 = 2_000;

/// Locks `user`'s presence for the rest of the transaction.
pub fn lock_user<C: GenericClient>(c: &mut C, st: &mut Stmts, user: &str) -> Result<(), DbError> {
    let s = st.get(c, "SELECT pg_advisory_xact_lock($1, hashtext($2))")?;
    c.execute(&s, &[&USER_LOCK, &user])?;
    Ok(())
}

fn anywhere<C: GenericClient>(c: &mut C, st: &mut Stmts, user: &str) -> Result<bool, DbError> {
    let s = st.get(
        c,
        "SELECT EXISTS (SELECT 1 FROM klav_presence WHERE username = $1)",
    )?;
    Ok(c.query_one(&s, &[&user])?.get(0))
}

/// Whether `user` has a connection on a live node other than `node`.
pub fn elsewhere<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    user: &str,
    node: &str,
) -> Result<bool, DbError> {
    let s = st.get(
        c,
        "SELECT EXISTS (SELECT 1 FROM klav_presence WHERE username = $1 AND node <> $2)",
    )?;
    Ok(c.query_one(&s, &[&user, &node])?.get(0))
}

/// Writes this node's count of a user's connections; announces the user
/// online or offline when that changed whether they are connected anywhere.
pub fn presence(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    notifier: &dyn Notifier,
    node: &str,
    user: &str,
    nickname: &str,
    conns: u32,
) -> Result<(), DbError> {
    lock_user(tx, st, user)?;
    let before = anywhere(tx, st, user)?;
    if conns > 0 {
        let s = st.get(
            tx,
            "INSERT INTO klav_presence (node, username, conns) VALUES ($1, $2, $3) \
             ON CONFLICT (username, node) DO UPDATE SET conns = EXCLUDED.conns",
        )?;
        tx.execute(&s, &[&node, &user, &(conns as i32)])?;
    } else {
        let s = st.get(
            tx,
            "DELETE FROM klav_presence WHERE username = $1 AND node = $2",
        )?;
        tx.execute(&s, &[&user, &node])?;
    }
    let after = conns > 0 || anywhere(tx, st, user)?;
    if before != after {
        // The loop does not know the nickname before the user's first session
        // load (their presence is written before it) nor after a last
        // connection that closed before it: the database does.
        let nickname = if nickname.is_empty() {
            let s = st.get(tx, "SELECT nickname FROM users WHERE username = $1")?;
            tx.query_opt(&s, &[&user])?
                .map(|r| display_nickname(user, r.get(0)))
                .unwrap_or_else(|| user.to_string())
        } else {
            nickname.to_string()
        };
        let mut notes = notifier.notes();
        notes.presence(user, &nickname, after);
        send_notes(tx, st, notes)?;
    }
    Ok(())
}

/// Removes the presence rows of `nodes` (dead, or this node's previous life)
/// and announces offline every user who is now connected nowhere.
fn clear_presence(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    notifier: &dyn Notifier,
    rows: Vec<postgres::Row>,
) -> Result<usize, DbError> {
    let mut users: Vec<String> = rows.into_iter().map(|r| r.get(0)).collect();
    users.sort_unstable();
    users.dedup();
    let mut notes: Box<dyn Notes + '_> = notifier.notes();
    let nick = st.get(tx, "SELECT nickname FROM users WHERE username = $1")?;
    for user in &users {
        lock_user(tx, st, user)?;
        if !anywhere(tx, st, user)? {
            let nickname = tx
                .query_opt(&nick, &[user])?
                .map(|r| display_nickname(user, r.get(0)))
                .unwrap_or_else(|| user.clone());
            notes.presence(user, &nickname, false);
        }
    }
    send_notes(tx, st, notes)?;
    Ok(users.len())
}

/// At start: this name's previous life (and presence of nodes no longer
/// registered) is cleared, and the node registers as alive. Returns whether
/// another process with this name was alive moments ago (a misconfiguration,
/// or a restart right after a crash).
pub fn register(
    c: &mut postgres::Client,
    notifier: &dyn Notifier,
    node: &str,
    incarnation: i64,
    timeout_secs: i64,
) -> Result<bool, DbError> {
    let mut st = Stmts::default();
    let mut tx = c.transaction()?;
    let was_alive = tx
        .query_opt(
            "SELECT heartbeat_at > now() - make_interval(secs => $2) FROM klav_nodes \
             WHERE name = $1",
            &[&node, &(timeout_secs as f64)],
        )?
        .is_some_and(|r| r.get::<_, bool>(0));
    tx.execute(
        "INSERT INTO klav_nodes (name, incarnation, started_at, heartbeat_at) \
         VALUES ($1, $2, now(), now()) \
         ON CONFLICT (name) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
             started_at = now(), heartbeat_at = now()",
        &[&node, &incarnation],
    )?;
    let rows = tx.query(
        "DELETE FROM klav_presence p WHERE p.node = $1 \
            OR NOT EXISTS (SELECT 1 FROM klav_nodes n WHERE n.name = p.node) \
         RETURNING username",
        &[&node],
    )?;
    clear_presence(&mut tx, &mut st, notifier, rows)?;
    tx.commit()?;
    Ok(was_alive)
}

/// At a clean stop: this node's presence goes (announced) and it leaves.
pub fn unregister(c: &mut postgres::Client, notifier: &dyn Notifier) -> Result<(), DbError> {
    let node = notifier.node();
    let mut st = Stmts::default();
    let mut tx = c.transaction()?;
    let rows = tx.query(
        "DELETE FROM klav_presence WHERE node = $1 RETURNING username",
        &[&node],
    )?;
    clear_presence(&mut tx, &mut st, notifier, rows)?;
    tx.execute("DELETE FROM klav_nodes WHERE name = $1", &[&node])?;
    tx.commit()?;
    Ok(())
}

pub fn heartbeat(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    notifier: &dyn Notifier,
    node: &str,
    incarnation: i64,
    timeout_secs: i64,
) -> Result<bool, DbError> {
    let s = st.get(
        tx,
        "UPDATE klav_nodes SET heartbeat_at = now() WHERE name = $1 AND incarnation = $2",
    )?;
    let mut rejoined = false;
    if tx.execute(&s, &[&node, &incarnation])? == 0 {
        // Declared dead while alive (a long stall, a lost database): its
        // presence was removed and announced; it registers again and the loop
        // writes its users' presence anew.
        let s = st.get(
            tx,
            "INSERT INTO klav_nodes (name, incarnation, started_at, heartbeat_at) \
             VALUES ($1, $2, now(), now()) \
             ON CONFLICT (name) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
                 heartbeat_at = now()",
        )?;
        tx.execute(&s, &[&node, &incarnation])?;
        rejoined = true;
    }
    let s = st.get(
        tx,
        "DELETE FROM klav_nodes WHERE heartbeat_at < now() - make_interval(secs => $1) \
         RETURNING name",
    )?;
    let dead: Vec<String> = tx
        .query(&s, &[&(timeout_secs as f64)])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if !dead.is_empty() {
        crate::log!(Warn, "nodes gone silent, their users offline: {dead:?}");
        let s = st.get(
            tx,
            "DELETE FROM klav_presence WHERE node = ANY($1) RETURNING username",
        )?;
        let rows = tx.query(&s, &[&dead])?;
        clear_presence(tx, st, notifier, rows)?;
    }
    Ok(rejoined)
}

fn entries_after<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
    after: i64,
    upto: Option<i64>,
) -> Result<Vec<ChatEntry>, DbError> {
    // The newest CATCH_UP_LIMIT, oldest first.
    let s = st.get(
        c,
        concat!(
            "SELECT * FROM (SELECT ",
            entry_columns!(),
            " FROM chat_logs WHERE room_id = $1 AND id > $2 \
               AND ($3::int8 IS NULL OR id <= $3) ORDER BY id DESC LIMIT $4) t ORDER BY id"
        ),
    )?;
    Ok(c.query(&s, &[&room, &after, &upto, &CATCH_UP_LIMIT])?
        .into_iter()
        .map(entry_from_row)
        .collect())
}

fn queued_among<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
    entries: &[ChatEntry],
) -> Result<Vec<i64>, DbError> {
    let dms: Vec<i64> = entries
        .iter()
        .filter(|e| e.kind == "dm")
        .map(|e| e.id)
        .collect();
    if dms.is_empty() {
        return Ok(Vec::new());
    }
    let s = st.get(
        c,
        "SELECT log_id FROM klav_offline_dms WHERE room_id = $1 AND log_id = ANY($2)",
    )?;
    Ok(c.query(&s, &[&room, &dms])?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

fn members<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
) -> Result<Vec<String>, DbError> {
    let s = st.get(c, "SELECT username FROM room_members WHERE room_id = $1")?;
    Ok(c.query(&s, &[&room])?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

pub fn read_entries<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: String,
    after: i64,
    upto: Option<i64>,
) -> Result<Outcome, DbError> {
    let entries = entries_after(c, st, &room, after, upto)?;
    let queued = queued_among(c, st, &room, &entries)?;
    let members = members(c, st, &room)?;
    Ok(Outcome::Entries {
        room,
        entries,
        queued,
        members,
        upto,
    })
}

pub fn catch_up<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    rooms: Vec<(String, i64)>,
    users: Vec<String>,
    watched: Vec<String>,
) -> Result<Outcome, DbError> {
    let mut out = CaughtUp::default();
    for (room, after) in rooms {
        let entries = entries_after(c, st, &room, after, None)?;
        let queued = queued_among(c, st, &room, &entries)?;
        let members = members(c, st, &room)?;
        out.rooms.push(RoomCatchUp {
            room,
            entries,
            queued,
            members,
        });
    }
    let s = st.get(
        c,
        concat!(
            "SELECT m.username, m.room_id, ",
            room_newest_entry!("r"),
            " FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE m.username = ANY($1)"
        ),
    )?;
    out.memberships = c
        .query(&s, &[&users])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    out.follows = follows_of(c, st, &users)?;
    // Revocations announced while the bus was lost: each user's generation
    // (deleted accounts as the highest).
    let s = st.get(
        c,
        "SELECT username, CASE WHEN klav_deleted_at IS NULL THEN klav_token_gen \
                               ELSE 9223372036854775807 END \
         FROM users WHERE username = ANY($1)",
    )?;
    out.generations = c
        .query(&s, &[&users])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let s = st.get(
        c,
        "SELECT blocker, blocked FROM klav_blocks WHERE blocked = ANY($1)",
    )?;
    out.blocks = c
        .query(&s, &[&users])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let s = st.get(
        c,
        concat!(
            "SELECT m.username, m.room_id, ",
            crate::db::rows::member_role!(),
            " FROM room_members m JOIN rooms r ON r.id = m.room_id \
              WHERE m.username = ANY($1) AND (r.klav_owner = m.username OR m.klav_role <> 'member')"
        ),
    )?;
    out.roles = c
        .query(&s, &[&users])?
        .into_iter()
        .filter_map(|r| {
            let role = crate::db::jobs::Role::parse(r.get::<_, Option<&str>>(2)?)?;
            Some((r.get(0), r.get(1), role))
        })
        .collect();
    let s = st.get(
        c,
        "SELECT u.username, u.nickname FROM users u WHERE u.username = ANY($1) \
           AND EXISTS (SELECT 1 FROM klav_presence p WHERE p.username = u.username)",
    )?;
    out.online = c
        .query(&s, &[&watched])?
        .into_iter()
        .map(|r| {
            let user: String = r.get(0);
            let nick = display_nickname(&user, r.get(1));
            (user, nick)
        })
        .collect();
    Ok(Outcome::CaughtUp(Box::new(out)))
}

/// (follower, followee) for every follow of `users`.
fn follows_of<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    users: &[String],
) -> Result<Vec<(String, String)>, DbError> {
    let s = st.get(
        c,
        "SELECT follower_username, followee_username FROM follows \
         WHERE follower_username = ANY($1)",
    )?;
    Ok(c.query(&s, &[&users])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Whom `user` follows now (see [`Job::FollowsOf`]).
pub fn user_follows<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    user: String,
    read: u64,
) -> Result<Outcome, DbError> {
    let following = follows_of(c, st, std::slice::from_ref(&user))?
        .into_iter()
        .map(|(_, to)| to)
        .collect();
    Ok(Outcome::FollowsOf {
        user,
        read,
        following,
    })
}

pub fn online_friends<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Outcome, DbError> {
    let s = st.get(
        c,
        "SELECT f.followee_username, u.nickname, sum(p.conns)::int8 \
         FROM follows f \
         JOIN klav_presence p ON p.username = f.followee_username \
         JOIN users u ON u.username = f.followee_username \
         WHERE f.follower_username = $1 GROUP BY 1, 2",
    )?;
    Ok(Outcome::OnlineFriends(
        c.query(&s, &[&username])?
            .into_iter()
            .map(|r| {
                let user: String = r.get(0);
                let nick = display_nickname(&user, r.get(1));
                (user, nick, r.get(2))
            })
            .collect(),
    ))
}

pub fn presence_of<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    users: Vec<String>,
) -> Result<Outcome, DbError> {
    let s = st.get(
        c,
        "SELECT DISTINCT username FROM klav_presence WHERE username = ANY($1)",
    )?;
    let online = c
        .query(&s, &[&users])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Outcome::PresenceOf { users, online })
}

pub fn online_members<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    room: &str,
) -> Result<Vec<String>, DbError> {
    let s = st.get(
        c,
        "SELECT m.username FROM room_members m WHERE m.room_id = $1 \
           AND EXISTS (SELECT 1 FROM klav_presence p WHERE p.username = m.username)",
    )?;
    Ok(c.query(&s, &[&room])?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

pub fn entry_by_id<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    id: i64,
) -> Result<Outcome, DbError> {
    let s = st.get(
        c,
        concat!("SELECT ", entry_columns!(), " FROM chat_logs WHERE id = $1"),
    )?;
    Ok(Outcome::Entry(c.query_opt(&s, &[&id])?.map(entry_from_row)))
}
