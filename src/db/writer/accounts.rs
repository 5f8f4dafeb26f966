//! The writer's SQL for accounts: revoking a user's tokens (with a new
//! password or without), and the check that keeps a revoked sender's
//! messages out.
//!
//! A revocation moves `users.klav_token_gen` on; every connection carries its
//! token's generation, and each message its sender's (every other ordered
//! write its asker's, on its ticket). Other nodes hear of a
//! revocation on the bus and close the connections, but a message sent there
//! in the meantime may already be on its way to a writer. So the writer reads
//! its senders' generations once per batch, locking their rows (`FOR SHARE`):
//! a revocation committed first is seen, one that comes later waits for the
//! batch, and a message either committed before the revocation or is not
//! stored at all.

use std::collections::HashMap;

use postgres::Transaction;

use super::chain::Chain;
use super::written::{Linked, Written};
use crate::db::error::DbError;
use crate::db::jobs::{Job, Outcome};
use crate::db::rows::Stmts;

/// `Job::Revoke`: the user's token generation moved on (and their password
/// replaced, with `new_hash`), their WebSocket tickets dropped, and every
/// node told; nothing when the presenting token (`token_gen`) is revoked
/// already or the account is gone.
pub(super) fn write_revoke(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: &mut Chain<'_>,
    username: &str,
    token_gen: i64,
    new_hash: Option<&str>,
) -> Result<Linked, DbError> {
    let s = st.get(
        tx,
        "UPDATE users SET klav_token_gen = klav_token_gen + 1, \
                password = COALESCE($3, password) \
         WHERE username = $1 AND klav_deleted_at IS NULL AND klav_token_gen <= $2 \
         RETURNING klav_token_gen",
    )?;
    let generation: Option<i64> = tx
        .query_opt(&s, &[&username, &token_gen, &new_hash])?
        .map(|r| r.get(0));
    if let Some(g) = generation {
        drop_tickets(tx, st, username)?;
        chain.note(|n| n.revoked(username, g));
    }
    let outcome = Outcome::Revoked {
        username: username.to_string(),
        generation,
    };
    Ok((Written::Ready(outcome), None))
}

/// Every WebSocket ticket of the user: minted from tokens now revoked.
pub(super) fn drop_tickets(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
) -> Result<(), DbError> {
    let s = st.get(tx, "DELETE FROM klav_ws_tickets WHERE username = $1")?;
    tx.execute(&s, &[&username])?;
    Ok(())
}

/// The stored token generation of each sender of the batch's messages and
/// DMs (`i64::MAX` for a deleted account), their rows locked until COMMIT so
/// that no revocation commits in between. Empty when the batch sends nothing.
pub(super) fn sender_generations(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    jobs: &[&Job],
    asked_by: &[Option<(&str, i64)>],
) -> Result<HashMap<String, i64>, DbError> {
    let mut senders: Vec<&str> = jobs
        .iter()
        .zip(asked_by)
        .filter_map(|(j, asked)| match j {
            Job::Msg(m) | Job::Dm { msg: m, .. } => Some(m.from.as_str()),
            _ => asked.map(|(user, _)| user),
        })
        .collect();
    if senders.is_empty() {
        return Ok(HashMap::new());
    }
    senders.sort_unstable();
    senders.dedup();
    // Locked in name order: two writers' batches never wait for each other
    // in a circle over the same users.
    let s = st.get(
        tx,
        "SELECT username, CASE WHEN klav_deleted_at IS NULL THEN klav_token_gen \
                               ELSE 9223372036854775807 END \
         FROM users WHERE username = ANY($1) ORDER BY username FOR SHARE",
    )?;
    Ok(tx
        .query(&s, &[&senders])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A revocation or deletion this batch wrote: its user's later messages in the
/// batch are checked against the new generation.
pub(super) fn revoked_in_batch(generations: &mut HashMap<String, i64>, w: &Written) {
    match w {
        Written::Ready(Outcome::Revoked {
            username,
            generation: Some(g),
        }) => {
            generations.insert(username.clone(), *g);
        }
        Written::Ready(Outcome::AccountDeleted {
            username,
            deletion: Some(_),
        }) => {
            generations.insert(username.clone(), i64::MAX);
        }
        _ => {}
    }
}

/// Whether a sender's token (of generation `token_gen`) was revoked before
/// their job could be written (a sender without a row is left as before:
/// nothing to revoke).
pub(super) fn revoked(generations: &HashMap<String, i64>, user: &str, token_gen: i64) -> bool {
    generations.get(user).is_some_and(|g| token_gen < *g)
}
