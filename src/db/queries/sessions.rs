//! What a connection reads and claims when it opens and gives back as it
//! goes: the one-use WebSocket tickets, the session (memberships, follows,
//! the offline queue claimed for this node), and the offline DMs released
//! or deleted once written. Separate from accounts: all of it is per
//! connection, and the offline queue's claims are shared with other nodes.

use std::time::Duration;

use postgres::GenericClient;

use crate::auth::jwt::Verified;
use crate::db::error::DbError;
use crate::db::jobs::{OfflineDm, Outcome, Role, SessionData};
use crate::db::rows::{display_nickname, room_newest_entry, Stmts};
use crate::db::tickets;

/// `Job::MintWsTicket`: the ticket stored in its own transaction.
pub(super) fn mint_ws_ticket<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    hash: &[u8],
    grant: &Verified,
    ttl: Duration,
) -> Result<Outcome, DbError> {
    let mut tx = c.transaction()?;
    let minted = tickets::mint(&mut tx, st, hash, grant, ttl)?;
    tx.commit()?;
    Ok(Outcome::WsTicketMinted { minted })
}

pub(super) fn open_session<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    claim: &str,
) -> Result<Option<SessionData>, DbError> {
    // A deleted account is no account: its upgrades are refused.
    let s = st.get(
        c,
        "SELECT nickname, klav_token_gen FROM users \
         WHERE username = $1 AND klav_deleted_at IS NULL",
    )?;
    let (nickname, generation) = match c.query_opt(&s, &[&username])? {
        None => return Ok(None),
        Some(r) => (display_nickname(username, r.get(0)), r.get(1)),
    };
    let s = st.get(
        c,
        concat!(
            "SELECT m.room_id, ",
            room_newest_entry!("r"),
            ", ",
            crate::db::rows::member_role!(),
            " FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE m.username = $1"
        ),
    )?;
    let mut rooms = Vec::new();
    let mut last_entries = Vec::new();
    let mut roles = Vec::new();
    for r in c.query(&s, &[&username])? {
        let room: String = r.get(0);
        if let Some(role @ (Role::Owner | Role::Admin)) =
            r.get::<_, Option<&str>>(2).and_then(Role::parse)
        {
            roles.push((room.clone(), role));
        }
        rooms.push(room);
        last_entries.push(r.get::<_, i64>(1));
    }
    let s = st.get(
        c,
        "SELECT followee_username FROM follows WHERE follower_username = $1",
    )?;
    let following = c
        .query(&s, &[&username])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let s = st.get(c, "SELECT blocker FROM klav_blocks WHERE blocked = $1")?;
    let blocked_by = c
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
        generation,
        rooms,
        last_entries,
        roles,
        following,
        blocked_by,
        offline,
        dropped,
    }))
}

/// `Job::ReleaseOfflineClaims`: this node's claims on offline DMs it did not
/// write (and on the dropped count, with `dropped`) are given up.
pub(super) fn release_offline_claims<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    ids: &[i64],
    dropped: bool,
    claim: &str,
) -> Result<Outcome, DbError> {
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
    Ok(Outcome::Done)
}

/// `Job::DeleteOfflineDms`: offline DMs written to a connection are gone, and
/// the dropped count it was told of is subtracted.
pub(super) fn delete_offline_dms<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    ids: &[i64],
    dropped: i64,
) -> Result<Outcome, DbError> {
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
    Ok(Outcome::Done)
}
