//! The writer's SQL for direct messages: the DM stored in its room's log and,
//! for a recipient connected nowhere, put into their bounded offline queue in
//! the same transaction. Separate from room messages: a DM is written alone,
//! after a membership check, and may be queued.

use std::time::SystemTime;

use postgres::{GenericClient, Transaction};

use super::chain::Chain;
use super::messages::duplicate;
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{ChainLink, DmResult, NewMessage, Outcome};
use crate::db::nodes;
use crate::db::notify::EntryRef;
use crate::db::offline_queue;
use crate::db::outbox::{self, QueuedDm};
use crate::db::queries::blocks::blocks;
use crate::db::rows::Stmts;

/// `Job::Dm`: the DM, linked into its room's chain.
pub(super) fn write_dm(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    msg: &NewMessage,
    to: &str,
    recipient_known: bool,
    queue: bool,
) -> Result<Linked, DbError> {
    let (result, link) = dm(tx, st, msg, to, recipient_known, queue, chain)?;
    Ok((Written::Dm(result), link))
}

/// `Job::QueueDm`: a DM already logged, queued for its recipient who went
/// offline before it was delivered.
pub(super) fn write_queue_dm(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    msg: &NewMessage,
    to: &str,
    log_id: i64,
    at: SystemTime,
) -> Result<Linked, DbError> {
    if chain.node.is_some() {
        // Another node's writer may be queueing for them too.
        nodes::lock_user(tx, st, to)?;
    }
    queue_dm(tx, st, msg, to, log_id, at)?;
    chain.report(|| outbox::dm_queued(&queued(msg, to, log_id, at)));
    Ok((
        Written::Ready(Outcome::DmQueued {
            room: msg.room.clone(),
            to: to.to_string(),
        }),
        None,
    ))
}

fn dm(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    msg: &NewMessage,
    to: &str,
    recipient_known: bool,
    queue: bool,
    chain: &mut Chain<'_>,
) -> Result<(DmResult, Option<ChainLink>), DbError> {
    if !recipient_known {
        let s = st.get(
            tx,
            "SELECT 1 FROM room_members WHERE room_id = $1 AND username = $2",
        )?;
        if tx.query_opt(&s, &[&msg.room, &to])?.is_none() {
            return Ok((DmResult::RecipientNotInRoom, None));
        }
    }
    // A block of the sender by the recipient is read by the INSERT itself: no
    // round trip of its own for the DMs nobody blocked.
    let s = st.get(
        tx,
        "INSERT INTO chat_logs \
            (room_id, ts, kind, from_user, from_nickname, to_user, text, client_id) \
         SELECT $1::text, now(), 'dm', $2::text, $3::text, $4::text, $5::text, $6::text \
         WHERE NOT EXISTS \
            (SELECT 1 FROM klav_blocks WHERE blocker = $4::text AND blocked = $2::text) \
         ON CONFLICT (from_user, client_id) WHERE client_id IS NOT NULL DO NOTHING \
         RETURNING id, ts",
    )?;
    let inserted = tx.query_opt(
        &s,
        &[
            &msg.room,
            &msg.from,
            &msg.from_nickname,
            &to,
            &msg.text,
            &msg.client_id,
        ],
    )?;
    let Some(row) = inserted else {
        // Asked only when the DM stored nothing: a block, or a repeated client_id.
        if blocks(tx, st, to, &msg.from)? {
            return Ok((DmResult::Blocked, None));
        }
        let cid = msg.client_id.as_deref().unwrap_or_default();
        let d = duplicate(tx, st, &msg.from, cid)?;
        return Ok((DmResult::Duplicate(Box::new(d)), None));
    };
    let (id, ts): (i64, SystemTime) = (row.get(0), row.get(1));
    // Offline here: in a cluster, a connection on another live node takes it
    // (decided under the recipient's presence lock, so it cannot close unseen).
    let mut elsewhere = false;
    if let (true, Some(node)) = (queue, chain.node.as_deref()) {
        nodes::lock_user(tx, st, to)?;
        elsewhere = nodes::elsewhere(tx, st, to, node)?;
    }
    let queue = queue && !elsewhere;
    let prev = chain.append(
        &EntryRef {
            id,
            ts,
            kind: "dm",
            room: &msg.room,
            from: &msg.from,
            from_nickname: &msg.from_nickname,
            to: Some(to),
            text: &msg.text,
            client_id: msg.client_id.as_deref(),
        },
        None,
        queue,
    );
    if queue {
        queue_dm(tx, st, msg, to, id, ts)?;
        chain.report(|| outbox::dm_queued(&queued(msg, to, id, ts)));
    }
    let link = ChainLink {
        room: msg.room.clone(),
        prev,
        last: id,
    };
    Ok((
        DmResult::Stored {
            id,
            ts,
            queued: queue,
            elsewhere,
        },
        Some(link),
    ))
}

/// What `dm.queued` reports of a DM queued for `to`.
fn queued<'a>(msg: &'a NewMessage, to: &'a str, id: i64, ts: SystemTime) -> QueuedDm<'a> {
    QueuedDm {
        room: &msg.room,
        id,
        ts,
        from: &msg.from,
        from_nickname: &msg.from_nickname,
        recipient: to,
        text: &msg.text,
    }
}

/// Adds a DM to `to`'s offline queue and drops what the queue's bounds say must
/// go (see [`offline_queue`]), counting it for the recipient. In a cluster the
/// caller holds the recipient's lock, so two writers never judge one queue at
/// once.
fn queue_dm<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    msg: &NewMessage,
    to: &str,
    log_id: i64,
    at: SystemTime,
) -> Result<(), DbError> {
    // The statement's snapshot does not see its own insert: it is added to the
    // queue read back.
    let ins = st.get(
        c,
        "WITH ins AS (\
            INSERT INTO klav_offline_dms \
                (recipient, room_id, log_id, from_user, from_nickname, text, sent_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, from_user) \
         SELECT id, from_user FROM klav_offline_dms WHERE recipient = $1 \
         UNION ALL SELECT id, from_user FROM ins",
    )?;
    let rows = c.query(
        &ins,
        &[
            &to,
            &msg.room,
            &log_id,
            &msg.from,
            &msg.from_nickname,
            &msg.text,
            &at,
        ],
    )?;
    let queue: Vec<(i64, &str)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let gone = offline_queue::evictions(&queue, &msg.from);
    if gone.is_empty() {
        return Ok(());
    }
    // Counted as actually deleted: one delivered meanwhile is not "dropped".
    let drop = st.get(
        c,
        "WITH gone AS (\
            DELETE FROM klav_offline_dms WHERE recipient = $1 AND id = ANY($2) RETURNING 1) \
         INSERT INTO klav_offline_dropped (recipient, dropped) \
         SELECT $1, count(*) FROM gone HAVING count(*) > 0 \
         ON CONFLICT (recipient) DO UPDATE \
            SET dropped = klav_offline_dropped.dropped + EXCLUDED.dropped",
    )?;
    c.execute(&drop, &[&to, &gone])?;
    Ok(())
}
