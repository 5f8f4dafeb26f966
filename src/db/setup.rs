//! The schema, applied at every start by every node, one node at a time.
//!
//! Nodes started together on an empty database (a first rollout with several
//! replicas) would otherwise run `schema.sql` side by side, and their DDL
//! deadlocks (`CREATE TABLE IF NOT EXISTS` races, `ALTER TABLE` locks taken in
//! different orders). So setup holds a session-level advisory lock
//! ([`SCHEMA_LOCK`]) on its own connection: the nodes take turns, and each
//! after the first finds the schema in place.
//!
//! Older nodes still running keep writing meanwhile. `schema.sql` takes
//! `ACCESS EXCLUSIVE` locks (`ALTER TABLE`), which wait for their transactions
//! and make theirs wait in turn, so setup:
//! - skips the script when the database already has exactly this schema
//!   (the digest of `schema.sql` recorded in `klav_schema_applied` by the
//!   last setup): a rolling restart of one release takes no table lock;
//! - otherwise waits at most [`LOCK_WAIT`] for each table lock and, when it
//!   cannot have one (or PostgreSQL picks it in a deadlock), rolls back and
//!   tries again after a pause: it never holds a lock while waiting long, so
//!   a running node's transaction is never the one chosen to fail.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::NoTls;

use super::error::DbError;

/// The schema; see `schema.sql`.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Key of the session-level advisory lock that serialises schema setup across
/// nodes ("klavSCHM"). Distinct from the import's transaction-level lock.
const SCHEMA_LOCK: i64 = 0x6b6c_6176_5343_484d;

/// Longest wait for one table lock during setup (`lock_timeout`): well under
/// PostgreSQL's default `deadlock_timeout` (1 s), so that in a lock cycle with
/// a running node's transaction it is setup that gives up first.
const LOCK_WAIT: Duration = Duration::from_millis(200);

/// How long setup keeps trying to take its table locks before it gives up.
const SETUP_DEADLINE: Duration = Duration::from_secs(120);

/// Applies `schema.sql` unless the database has it already, holding
/// [`SCHEMA_LOCK`] throughout; see the module documentation.
pub fn apply_schema(pg: &postgres::Config) -> Result<(), DbError> {
    let mut client = pg
        .connect(NoTls)
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    // Waits for whichever node is setting up; released when this session ends
    // even if this process dies.
    client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
    let result = apply_locked(&mut client);
    // Dropping the connection releases the lock too; unlock for clarity.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK]);
    result
}

/// The script, if needed, in one transaction, retried while its table locks
/// cannot be had (see [`LOCK_WAIT`]).
fn apply_locked(client: &mut postgres::Client) -> Result<(), DbError> {
    if schema_current(client)? {
        return Ok(());
    }
    client.batch_execute(&format!("SET lock_timeout = '{}ms'", LOCK_WAIT.as_millis()))?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match run_script(client) {
            Err(e) if gave_way(&e) && started.elapsed() < SETUP_DEADLINE => {
                crate::log!(
                    Info,
                    "schema setup waits for running transactions ({}); trying again",
                    e.as_db_error().map(|d| d.message()).unwrap_or_default()
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other.map_err(DbError::from),
        }
    }
}

fn run_script(client: &mut postgres::Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(SCHEMA_SQL)?;
    tx.execute(
        "INSERT INTO klav_schema_applied (singleton, digest) VALUES (true, md5($1)) \
         ON CONFLICT (singleton) DO UPDATE SET digest = EXCLUDED.digest, applied_at = now()",
        &[&SCHEMA_SQL],
    )?;
    tx.commit()
}

/// Whether the last setup applied exactly this `schema.sql`.
fn schema_current(client: &mut postgres::Client) -> Result<bool, DbError> {
    let known: bool = client
        .query_one("SELECT to_regclass('klav_schema_applied') IS NOT NULL", &[])?
        .get(0);
    if !known {
        return Ok(false);
    }
    let row = client.query_opt(
        "SELECT 1 FROM klav_schema_applied WHERE digest = md5($1)",
        &[&SCHEMA_SQL],
    )?;
    Ok(row.is_some())
}

/// Whether setup gave way to other transactions: its lock wait ran out, or
/// PostgreSQL chose it to break a deadlock.
fn gave_way(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}
