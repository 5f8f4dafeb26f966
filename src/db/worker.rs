//! A general database worker: takes jobs from the shared queue, runs each on its
//! own connection, sends the outcome back.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::error::DbError;
use super::jobs::{Completion, Job, Outcome, Ticket};
use super::notify::Notifier;
use super::outbox::Outbox;
use super::pool::{discard, Conn, Health, Source};
use super::queries::{self, Stmts};
use super::wakeup::CompletionSink;

pub(super) fn run(
    source: Source,
    rx: Receiver<(Ticket, Job)>,
    sink: CompletionSink,
    health: Arc<Health>,
    bus: Option<Arc<dyn Notifier>>,
    outbox: Option<Arc<Outbox>>,
) {
    // The worker keeps its connection (and the statements prepared on it) between
    // jobs; it goes back to the pool only when it breaks.
    let mut conn: Option<(Conn, Stmts)> = None;
    for (ticket, job) in rx.iter() {
        if health.stopping() {
            continue;
        }
        let to = To {
            bus: bus.as_deref(),
            outbox: outbox.as_deref(),
        };
        let result = run_job(&source, &health, &mut conn, to, job);
        sink.send(Completion::Db(ticket, result));
    }
}

/// Where a job's notes and webhook events go.
#[derive(Clone, Copy)]
struct To<'a> {
    bus: Option<&'a dyn Notifier>,
    outbox: Option<&'a Outbox>,
}

fn run_job(
    source: &Source,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    to: To<'_>,
    job: Job,
) -> Result<Outcome, DbError> {
    let reused = conn.is_some();
    let retry = reused.then(|| job.clone());
    match attempt(source, health, conn, to, job) {
        // A kept connection may have died while idle (PostgreSQL restarted): that
        // is not an outage, so try once more on a fresh one.
        Err(DbError::Unavailable(_)) if retry.is_some() => {
            health.observe(attempt(source, health, conn, to, retry.expect("checked")))
        }
        other => health.observe(other),
    }
}

fn attempt(
    source: &Source,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    to: To<'_>,
    job: Job,
) -> Result<Outcome, DbError> {
    if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        *conn = Some((health.get(source)?, Stmts::default()));
    }
    let (c, st) = conn.as_mut().expect("connection just ensured");
    let result = queries::run_with(&mut ***c, st, to.bus, to.outbox, job);
    if matches!(result, Err(DbError::Unavailable(_))) {
        discard(conn.take().map(|(c, _)| c));
    }
    result
}
