//! A batch whose COMMIT got no answer: the connection broke while PostgreSQL
//! was committing it (the primary died, a failover began), so the batch may or
//! may not be stored. Its requests are neither acknowledged nor refused until
//! the writer can tell which: every batch records its number in
//! `klav_writer_batches` in its own transaction ([`Mark`]), and after
//! reconnecting the writer reads that row back ([`resolve`]): the batch is
//! acknowledged exactly when it is there, and refused (`UNAVAILABLE`, nothing
//! stored) when it is not. Until then, later batches are refused at once, so
//! that answers keep the order of the commits.

use std::time::Duration;

use postgres::Transaction;

use super::written::Linked;
use crate::db::error::DbError;
use crate::db::jobs::{Job, Ticket};
use crate::db::pool::{discard, Conn, Health, Source};
use crate::db::rows::Stmts;

/// How often a writer holding an unresolved batch asks again while no new job
/// arrives.
pub(super) const RESOLVE_EVERY: Duration = Duration::from_millis(250);

/// Forgotten rows of writers that stopped (one per process start).
const FORGET_WRITERS_AFTER: &str = "7 days";

/// This writer's row in `klav_writer_batches`, and the number of its latest
/// transaction.
pub(super) struct Marks {
    /// Random per process: a restarted node is a new writer.
    writer: String,
    node: String,
    last: i64,
}

/// One transaction's mark, written with it (see [`Marks::next`]).
pub(super) struct Mark<'m> {
    pub(super) writer: &'m str,
    pub(super) node: &'m str,
    pub(super) batch: i64,
}

impl Marks {
    pub(super) fn new(node: &str) -> Marks {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random source failed");
        Marks {
            writer: seed.iter().map(|b| format!("{b:02x}")).collect(),
            node: node.to_string(),
            last: 0,
        }
    }

    /// The mark of the next transaction.
    pub(super) fn next(&mut self) -> Mark<'_> {
        self.last += 1;
        Mark {
            writer: &self.writer,
            node: &self.node,
            batch: self.last,
        }
    }
}

/// The statement that records a mark, for a batch that updates no room's
/// last message (one that does records it in the same statement, see
/// `chain::update_lasts`).
pub(super) fn record(tx: &mut Transaction<'_>, st: &mut Stmts, m: &Mark) -> Result<(), DbError> {
    let s = st.get(
        tx,
        "INSERT INTO klav_writer_batches (writer, node, batch) VALUES ($1, $2, $3) \
         ON CONFLICT (writer) DO UPDATE SET batch = EXCLUDED.batch, updated_at = now()",
    )?;
    tx.execute(&s, &[&m.writer, &m.node, &m.batch])?;
    Ok(())
}

/// A batch whose COMMIT got no answer, with what it wrote (valid if it did
/// commit) and its mark.
pub(super) struct Unresolved {
    pub(super) batch: Vec<(Ticket, Job)>,
    pub(super) written: Vec<Linked>,
    pub(super) mark: i64,
}

/// Whether the batch marked `mark` committed, asked on a fresh connection:
/// `None` while PostgreSQL cannot answer.
pub(super) fn resolve(
    source: &Source,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    marks: &Marks,
    mark: i64,
) -> Option<bool> {
    if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        *conn = Some((health.get(source).ok()?, Stmts::default()));
    }
    let (c, _) = conn.as_mut().expect("connection just ensured");
    let read = c.query_opt(
        "SELECT batch FROM klav_writer_batches WHERE writer = $1",
        &[&marks.writer],
    );
    match read.map_err(DbError::from) {
        Ok(row) => Some(row.is_some_and(|r| r.get::<_, i64>(0) >= mark)),
        Err(e) => {
            crate::log!(Debug, "cannot resolve an unanswered commit yet: {e}");
            discard(conn.take().map(|(c, _)| c));
            None
        }
    }
}

/// Forgets the rows of writers gone for [`FORGET_WRITERS_AFTER`] (best
/// effort, once at start).
pub(super) fn forget_old_writers(source: &Source, health: &Health) {
    let Ok(mut c) = health.get(source) else {
        return;
    };
    let _ = c.execute(
        &format!(
            "DELETE FROM klav_writer_batches WHERE updated_at < now() - interval '{FORGET_WRITERS_AFTER}'"
        ),
        &[],
    );
}
