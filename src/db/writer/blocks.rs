//! Blocks in the writer (`block` and `unblock` are ordered writes, see
//! `Job::is_ordered_write`): the row in `klav_blocks`, the blocked user's
//! follow of the blocker removed in the same transaction, and the notes that
//! tell the other nodes.
//!
//! A block and a follow the other way committed at the same moment on two
//! nodes must not both stand: in a cluster each takes the same advisory lock
//! (on the blocker, who is the followed user) before it reads, so the later
//! one sees the earlier one's row.

use postgres::{GenericClient, Transaction};

use super::chain::Chain;
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{BlockStatus, Outcome};
use crate::db::queries::blocks::blocks;
use crate::db::rows::Stmts;

/// The advisory lock class of "the blocks of (and follows of) one user".
const BLOCKS_LOCK: i32 = 7_283_913;

/// Serialises, across the writers of a cluster, the writes that decide
/// whether `blocker` blocks someone and whether that someone follows them.
pub(super) fn lock_blocks_of<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    blocker: &str,
) -> Result<(), DbError> {
    let s = st.get(c, "SELECT pg_advisory_xact_lock($1, hashtext($2))")?;
    c.execute(&s, &[&BLOCKS_LOCK, &blocker])?;
    Ok(())
}

/// `Job::Block`: `from` blocks `to` (a registered user), unless `from`
/// blocks `cap` users already.
pub(super) fn write_block(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    from: &str,
    to: &str,
    cap: i64,
) -> Result<Linked, DbError> {
    let status = block(tx, st, chain, from, to, cap)?;
    let outcome = Outcome::Block {
        from: from.to_string(),
        to: to.to_string(),
        status,
    };
    Ok((Written::Ready(outcome), None))
}

fn block(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    from: &str,
    to: &str,
    cap: i64,
) -> Result<BlockStatus, DbError> {
    if chain.node.is_some() {
        lock_blocks_of(tx, st, from)?;
    }
    let s = st.get(tx, "SELECT 1 FROM users WHERE username = $1")?;
    if tx.query_opt(&s, &[&to])?.is_none() {
        return Ok(BlockStatus::NotRegistered);
    }
    // The cap is counted in the same statement that inserts.
    let s = st.get(
        tx,
        "INSERT INTO klav_blocks (blocker, blocked, created_at) \
         SELECT $1::text, $2::text, now() \
         WHERE (SELECT count(*) FROM klav_blocks WHERE blocker = $1::text) < $3::bigint \
         ON CONFLICT (blocker, blocked) DO NOTHING",
    )?;
    if tx.execute(&s, &[&from, &to, &cap])? == 0 {
        return Ok(match blocks(tx, st, from, to)? {
            true => BlockStatus::Already,
            false => BlockStatus::Full,
        });
    }
    let s = st.get(
        tx,
        "DELETE FROM follows WHERE follower_username = $1 AND followee_username = $2",
    )?;
    let unfollowed = tx.execute(&s, &[&to, &from])? > 0;
    chain.note(|n| {
        n.block(from, to, true);
        if unfollowed {
            n.follow(to, from, false);
        }
    });
    Ok(BlockStatus::Blocked)
}

/// `Job::Unblock`: whether `from` blocked `to` until now.
pub(super) fn write_unblock(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    from: &str,
    to: &str,
) -> Result<Linked, DbError> {
    let s = st.get(
        tx,
        "DELETE FROM klav_blocks WHERE blocker = $1 AND blocked = $2",
    )?;
    let removed = tx.execute(&s, &[&from, &to])? > 0;
    if removed {
        chain.note(|n| n.block(from, to, false));
    }
    let outcome = Outcome::Unblock {
        from: from.to_string(),
        to: to.to_string(),
        removed,
    };
    Ok((Written::Ready(outcome), None))
}
