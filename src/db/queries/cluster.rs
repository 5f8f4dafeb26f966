//! The cluster's jobs that write on a general worker, each in its own
//! transaction with its notes: a user's presence, this node's heartbeat, and
//! ephemeral events (typing) sealed for the other nodes. Separate because
//! only they need the bus; the cluster's reads go straight to `db::nodes`.

use postgres::GenericClient;

use crate::db::error::DbError;
use crate::db::jobs::Outcome;
use crate::db::nodes;
use crate::db::notify::{self, Notifier};
use crate::db::rows::Stmts;

/// `Job::Presence`: this node's count of `user`'s connections, and what it
/// changed in the whole cluster.
pub(super) fn presence<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    bus: &dyn Notifier,
    node: &str,
    user: String,
    nickname: &str,
    conns: u32,
) -> Result<Outcome, DbError> {
    let mut tx = c.transaction()?;
    nodes::presence(&mut tx, st, bus, node, &user, nickname, conns)?;
    tx.commit()?;
    Ok(Outcome::Presence { user })
}

/// `Job::Heartbeat`: this node kept alive, dead nodes removed.
pub(super) fn heartbeat<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    bus: &dyn Notifier,
    node: &str,
    incarnation: i64,
    timeout_secs: i64,
) -> Result<Outcome, DbError> {
    let mut tx = c.transaction()?;
    let rejoined = nodes::heartbeat(&mut tx, st, bus, node, incarnation, timeout_secs)?;
    tx.commit()?;
    Ok(Outcome::Heartbeat { rejoined })
}

/// `Job::Notify`: events the loop packed, sealed and sent, never stored.
pub(super) fn notify<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    bus: &dyn Notifier,
    payloads: &[String],
) -> Result<Outcome, DbError> {
    notify::send(c, st, &bus.seal(payloads))?;
    Ok(Outcome::Done)
}
