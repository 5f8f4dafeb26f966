//! A general database worker: takes jobs from the shared queue, runs each on its
//! own connection, sends the outcome back.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::error::DbError;
use super::jobs::{Completion, Job, Outcome, Ticket};
use super::notify::Notifier;
use super::pool::{discard, Conn, Health, Source};
use super::queries::{self, Stmts};
use super::wakeup::CompletionSink;

pub(super) fn run(
    source: Source,
    rx: Receiver<(Ticket, Job)>,
    sink: CompletionSink,
    health: Arc<Health>,
    bus: Option<Arc<dyn Notifier>>,
) {
    // The worker keeps its connection (and the statements prepared on it) between
    // jobs; it goes back to the pool only when it breaks.
    let mut conn: Option<(Conn, Stmts)> = None;
    for (ticket, job) in rx.iter() {
        if health.stopping() {
            continue;
        }
        let result = run_job(&source, &health, &mut conn, bus.as_deref(), job);
        sink.send(Completion::Db(ticket, result));
    }
}

fn run_job(
    source: &Source,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    bus: Option<&dyn Notifier>,
    job: Job,
) -> Result<Outcome, DbError> {
    let reused = conn.is_some();
    let retry = reused.then(|| job.clone());
    match attempt(source, health, conn, bus, job) {
        // A kept connection may have died while idle (PostgreSQL restarted): that
        // is not an outage, so try once more on a fresh one.
        Err(DbError::Unavailable(_)) if retry.is_some() => {
            health.observe(attempt(source, health, conn, bus, retry.expect("checked")))
        }
        other => health.observe(other),
    }
}

fn attempt(
    source: &Source,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    bus: Option<&dyn Notifier>,
    job: Job,
) -> Result<Outcome, DbError> {
    if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        *conn = Some((health.get(source)?, Stmts::default()));
    }
    let (c, st) = conn.as_mut().expect("connection just ensured");
    let result = queries::run_with(&mut ***c, st, bus, job);
    if matches!(result, Err(DbError::Unavailable(_))) {
        discard(conn.take().map(|(c, _)| c));
    }
    result
}
