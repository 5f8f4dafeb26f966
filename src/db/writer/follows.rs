//! Follows in the writer (`follow` and `unfollow` are ordered writes, see
//! `Job::is_ordered_write`): the general workers' SQL ([`queries::run`]),
//! plus the note that tells the other nodes. Separate from the families that
//! add entries: a follow adds none.

use postgres::Transaction;

use super::chain::Chain;
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{FollowStatus, Job, Outcome};
use crate::db::queries;
use crate::db::rows::Stmts;

/// `Job::Follow` / `Job::Unfollow`: small and rare, so the shared SQL takes the
/// job by value; a change is noted for the other nodes.
pub(super) fn write_follow(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    job: &Job,
) -> Result<Linked, DbError> {
    if let (Some(_), Job::Follow { to, .. }) = (&chain.node, job) {
        // A block of the follower by `to` on another node decides first, or
        // sees this follow (see `blocks`).
        super::blocks::lock_blocks_of(tx, st, to)?;
    }
    let outcome = queries::run(tx, st, job.clone())?;
    match &outcome {
        Outcome::Follow {
            from,
            to,
            status: FollowStatus::Followed,
        } => chain.note(|n| n.follow(from, to, true)),
        Outcome::Unfollow {
            from,
            to,
            removed: true,
        } => chain.note(|n| n.follow(from, to, false)),
        _ => {}
    }
    Ok((Written::Ready(outcome), None))
}
