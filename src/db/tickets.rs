//! WebSocket tickets in the database: what `POST /ws-ticket` hands out and
//! `GET /ws?ticket=` takes back, on any node of a cluster.
//!
//! Only the ticket's SHA-256 is stored: the table (a backup, a replica) is no
//! key to anyone's session. A ticket is taken by deleting its row, so of two
//! upgrades presenting it, on one node or two, exactly one gets it.

use std::time::Duration;

use postgres::GenericClient;

use super::error::DbError;
use super::jobs::{TicketUse, WS_TICKETS_PER_USER};
use super::rows::Stmts;
use crate::auth::jwt::Verified;

/// Stores a ticket for `grant` (false: the user no longer exists, or the
/// grant's token generation was revoked), valid for
/// `ttl` by the database's clock, which every node shares; then keeps only the
/// user's newest [`WS_TICKETS_PER_USER`] unexpired ones.
pub fn mint<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    hash: &[u8],
    grant: &Verified,
    ttl: Duration,
) -> Result<bool, DbError> {
    let ins = st.get(
        c,
        "INSERT INTO klav_ws_tickets \
             (hash, username, token_expires, auth_time, expires_at, created_at, token_gen) \
         SELECT $1, u.username, $3, $4, \
                clock_timestamp() + make_interval(secs => $5::float8), clock_timestamp(), $6 \
         FROM users u WHERE u.username = $2 \
           AND u.klav_deleted_at IS NULL AND u.klav_token_gen <= $6",
    )?;
    let minted = c.execute(
        &ins,
        &[
            &hash,
            &grant.username,
            &grant.expires,
            &grant.auth_time,
            &ttl.as_secs_f64(),
            &grant.generation,
        ],
    )? == 1;
    if minted {
        let trim = st.get(
            c,
            "DELETE FROM klav_ws_tickets WHERE username = $1 \
               AND (expires_at <= clock_timestamp() \
                    OR hash IN (SELECT hash FROM klav_ws_tickets WHERE username = $1 \
                                ORDER BY created_at DESC OFFSET $2))",
        )?;
        c.execute(&trim, &[&grant.username, &WS_TICKETS_PER_USER])?;
    }
    Ok(minted)
}

/// Takes a ticket: whatever it was, it is gone after this.
pub fn take<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    hash: &[u8],
) -> Result<TicketUse, DbError> {
    let s = st.get(
        c,
        "DELETE FROM klav_ws_tickets WHERE hash = $1 \
         RETURNING username, token_expires, auth_time, expires_at > clock_timestamp(), \
                   token_gen",
    )?;
    Ok(match c.query_opt(&s, &[&hash])? {
        None => TicketUse::Unknown,
        Some(r) if !r.get::<_, bool>(3) => TicketUse::Expired,
        Some(r) => TicketUse::Valid(Verified {
            username: r.get(0),
            expires: r.get(1),
            auth_time: r.get(2),
            generation: r.get(4),
        }),
    })
}

/// Deletes every expired ticket; how many there were.
pub fn prune<C: GenericClient>(c: &mut C, st: &mut Stmts) -> Result<u64, DbError> {
    let s = st.get(
        c,
        "DELETE FROM klav_ws_tickets WHERE expires_at <= clock_timestamp()",
    )?;
    Ok(c.execute(&s, &[])?)
}
