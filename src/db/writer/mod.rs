//! The single writer: every job that appends to `chat_logs` or changes room
//! membership, in submission order, group-committed.
//!
//! It blocks for one job, then takes whatever else is already queued (up to the
//! batch size) and runs them all in one transaction: consecutive messages become one
//! multi-row INSERT, each room's "last message" is updated once per batch. Outcomes
//! are released only after COMMIT, so nothing is delivered before it is durable, and
//! ids, commit order and delivery order agree.
//!
//! If a batch fails with an error from PostgreSQL itself (not an outage), each job
//! is retried in its own transaction so one bad job cannot fail its neighbours.
//!
//! The run loop and the batch's transaction are here; the rest by concern:
//! - `chain`: the rooms' locks and entry chains, each room's last message,
//!   and what is stored once per batch;
//! - `messages`: the multi-row message INSERT, edits, read markers;
//! - `rooms`: create, join, leave and their system entries;
//! - `room_admin`: room updates and roles, checked against the requester's
//!   role in the same transaction; `invites`: invitations and declines;
//!   `moderation`: kicks, bans and unbans; `standing`: the checks they share;
//! - `dm`: DMs and the offline queue;
//! - `follows`: follow and unfollow with their notes;
//! - `blocks`: block and unblock (a block ends the follow the other way);
//! - `accounts`: token revocation, and the check of the batch's senders
//!   against it; `deletion`: an account's deletion;
//! - `written`: each job's result until COMMIT; `stats`: the counters.

mod accounts;
mod blocks;
mod chain;
mod deletion;
mod dm;
mod follows;
mod invites;
mod messages;
mod moderation;
mod room_admin;
mod rooms;
mod standing;
mod stats;
mod written;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use postgres::Transaction;

use super::error::DbError;
use super::jobs::{ChainLink, Completion, Job, NewMessage, Outcome, Ticket};
use super::nodes;
use super::notify::Notifier;
use super::outbox::Outbox;
use super::pool::{Conn, Health, Source};
use super::rows::Stmts;
use super::wakeup::CompletionSink;
use chain::{entry_rooms, finish_chain, lock_rooms, update_lasts, Batch};
use messages::insert_messages;
use written::{Linked, Written};

pub use rooms::new_room_id;
pub use stats::WriterStats;

/// Who hears of what the writer commits: the other nodes (in a cluster) and
/// the webhook outbox (with webhooks on).
pub(super) struct Reporters {
    pub(super) bus: Option<Arc<dyn Notifier>>,
    pub(super) outbox: Option<Arc<Outbox>>,
}

/// [`Reporters`], borrowed for one batch.
#[derive(Clone, Copy)]
struct Reports<'a> {
    bus: Option<&'a dyn Notifier>,
    outbox: Option<&'a Outbox>,
}

pub(super) fn run(
    source: Source,
    rx: Receiver<(Ticket, Job)>,
    sink: CompletionSink,
    health: Arc<Health>,
    max_batch: usize,
    reporters: Reporters,
    stats: Arc<WriterStats>,
) {
    let reports = Reports {
        bus: reporters.bus.as_deref(),
        outbox: reporters.outbox.as_deref(),
    };
    let mut conn: Option<(Conn, Stmts)> = None;
    let mut batch: Vec<(Ticket, Job)> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        if health.stopping() {
            continue;
        }
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let jobs: Vec<&Job> = batch.iter().map(|(_, j)| j).collect();
        let senders: Vec<Sender> = batch
            .iter()
            .map(|(t, _)| t.sender.as_ref().map(|(u, g)| (u.as_str(), *g)))
            .collect();
        let n = jobs.len() as u64;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(n, Ordering::Relaxed);
        stats.largest.fetch_max(n, Ordering::Relaxed);
        let results: Vec<Result<Linked, DbError>> = match write_batch(
            &source, &health, &mut conn, &jobs, &senders, reports, &stats,
        ) {
            Ok(written) => written.into_iter().map(Ok).collect(),
            Err(DbError::Query(why)) if batch.len() > 1 => {
                crate::log!(
                    Warn,
                    "write batch failed ({why}); retrying its jobs one by one"
                );
                jobs.iter()
                    .zip(&senders)
                    .map(|(j, s)| {
                        write_batch(&source, &health, &mut conn, &[j], &[*s], reports, &stats)
                            .map(|mut v| v.pop().expect("one result per job"))
                    })
                    .collect()
            }
            Err(e) => {
                let e = health.observe::<()>(Err(e)).unwrap_err();
                jobs.iter().map(|_| Err(clone_err(&e))).collect()
            }
        };
        if let Some(outbox) = reports.outbox {
            outbox.committed();
        }
        for ((ticket, job), result) in batch.drain(..).zip(results) {
            match result {
                Ok((w, Some(link))) => {
                    sink.send(Completion::Chained(ticket, w.into_outcome(job), link))
                }
                Ok((w, None)) => sink.send(Completion::Db(ticket, Ok(w.into_outcome(job)))),
                Err(e) => sink.send(Completion::Db(ticket, Err(e))),
            }
        }
    }
}

/// Who asked for a job and with which token generation (see `Ticket::sender`).
type Sender<'a> = Option<(&'a str, i64)>;

fn clone_err(e: &DbError) -> DbError {
    match e {
        DbError::Unavailable(s) => DbError::Unavailable(s.clone()),
        DbError::Query(s) => DbError::Query(s.clone()),
    }
}

fn write_batch(
    source: &Source,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    jobs: &[&Job],
    senders: &[Sender<'_>],
    reports: Reports<'_>,
    stats: &WriterStats,
) -> Result<Vec<Linked>, DbError> {
    let mut reused = true;
    loop {
        if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            *conn = Some((health.get(source)?, Stmts::default()));
            reused = false;
        }
        // Outer `Err`: BEGIN failed, nothing of the batch was sent.
        let attempt: Result<Result<Vec<Linked>, DbError>, DbError> = {
            let (c, st) = conn.as_mut().expect("connection just ensured");
            match c.transaction() {
                Err(e) => Err(e.into()),
                Ok(mut tx) => {
                    let result =
                        apply(&mut tx, st, jobs, senders, reports, stats).and_then(|outcomes| {
                            tx.commit()?;
                            Ok(outcomes)
                        });
                    if matches!(result, Err(DbError::Query(_))) {
                        // A failed statement may have left a prepared statement
                        // invalid (e.g. after a schema change); start clean.
                        *st = Stmts::default();
                    }
                    Ok(result)
                }
            }
        };
        match attempt {
            // A kept connection may have died while idle (PostgreSQL restarted):
            // BEGIN fails before anything was sent, so one retry on a fresh
            // connection is safe and saves its senders a spurious UNAVAILABLE.
            Err(DbError::Unavailable(why)) => {
                *conn = None;
                if reused {
                    reused = false;
                    continue;
                }
                return Err(DbError::Unavailable(why));
            }
            Err(e) => return Err(e),
            Ok(result) => {
                if matches!(result, Err(DbError::Unavailable(_))) {
                    *conn = None;
                }
                return result;
            }
        }
    }
}

/// Runs a batch's jobs in `tx`, in order: the rooms they add to locked first,
/// consecutive messages gathered into one INSERT, every other job written
/// where it stands; each room's last message, newest entry id, the batch's
/// webhook events (one INSERT) and its notes stored at the end.
fn apply<'a>(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    jobs: &[&'a Job],
    senders: &[Sender<'_>],
    reports: Reports<'_>,
    stats: &WriterStats,
) -> Result<Vec<Linked>, DbError> {
    let mut written: Vec<Option<Written>> = Vec::with_capacity(jobs.len());
    let mut links: Vec<Option<ChainLink>> = vec![None; jobs.len()];
    let mut b = Batch::new(reports.bus, reports.outbox.is_some());
    lock_rooms(tx, st, &entry_rooms(jobs), &mut b.chain)?;
    let mut generations = accounts::sender_generations(tx, st, jobs, senders)?;
    // Consecutive messages waiting for their multi-row INSERT: (index, message).
    let mut pending: Vec<(usize, &'a NewMessage)> = Vec::new();
    let mut savepoints = 0;
    for (&job, sender) in jobs.iter().zip(senders) {
        let revoked = match job {
            Job::Msg(m) | Job::Dm { msg: m, .. } => {
                accounts::revoked(&generations, &m.from, m.token_gen)
            }
            _ => sender.is_some_and(|(user, gen)| accounts::revoked(&generations, user, gen)),
        };
        if revoked {
            written.push(Some(Written::Ready(Outcome::SenderRevoked)));
            continue;
        }
        if let Job::Msg(m) = job {
            pending.push((written.len(), m));
            written.push(None);
            continue;
        }
        insert_messages(
            tx,
            st,
            &mut pending,
            &mut written,
            &mut links,
            &mut b,
            &mut savepoints,
        )?;
        let (w, link) = write_one(tx, st, &mut b, job)?;
        // Messages after a revocation in the same batch are checked against it.
        accounts::revoked_in_batch(&mut generations, &w);
        links[written.len()] = link;
        written.push(Some(w));
    }
    insert_messages(
        tx,
        st,
        &mut pending,
        &mut written,
        &mut links,
        &mut b,
        &mut savepoints,
    )?;
    update_lasts(tx, st, b.lasts)?;
    if let (Some(outbox), Some(events)) = (reports.outbox, &b.chain.events) {
        outbox.insert(tx, st, events)?;
    }
    finish_chain(tx, st, b.chain, stats)?;
    Ok(written
        .into_iter()
        .map(|w| w.expect("every job has a result"))
        .zip(links)
        .collect())
}

/// Writes one job that is not a message: one call per kind.
fn write_one(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    b: &mut Batch<'_, '_>,
    job: &Job,
) -> Result<Linked, DbError> {
    match job {
        Job::CreateRoom {
            creator,
            creator_nickname,
            name,
            private,
            topic,
        } => {
            let new = rooms::NewRoom {
                name,
                creator,
                creator_nickname,
                private: *private,
                topic: topic.as_deref(),
            };
            rooms::write_create_room(tx, st, b, &new)
        }
        Job::Admin(a) => room_admin::write_admin(tx, st, b, a),
        Job::Join {
            username,
            nickname,
            by,
            max_rooms,
        } => rooms::write_join(tx, st, b, username, nickname, by, *max_rooms),
        Job::Leave {
            username,
            nickname,
            room,
        } => rooms::write_leave(tx, st, b, username, nickname, room),
        Job::Dm {
            msg,
            to,
            recipient_known,
            queue,
        } => dm::write_dm(tx, st, &mut b.chain, msg, to, *recipient_known, *queue),
        Job::QueueDm {
            msg,
            to,
            log_id,
            at,
        } => dm::write_queue_dm(tx, st, &mut b.chain, msg, to, *log_id, *at),
        Job::Edit { username, id, text } => {
            messages::write_edit(tx, st, &mut b.chain, username, *id, text.as_deref())
        }
        Job::ReadEntries { room, after, upto } => {
            let outcome = nodes::read_entries(tx, st, room.clone(), *after, *upto)?;
            Ok((Written::Ready(outcome), None))
        }
        Job::CatchUp {
            rooms,
            users,
            watched,
        } => {
            let outcome = nodes::catch_up(tx, st, rooms.clone(), users.clone(), watched.clone())?;
            Ok((Written::Ready(outcome), None))
        }
        Job::Read { username, room, id } => {
            messages::write_read(tx, st, &mut b.chain, username, room, *id)
        }
        Job::Follow { .. } | Job::Unfollow { .. } => {
            follows::write_follow(tx, st, &mut b.chain, job)
        }
        Job::Block { from, to, cap } => blocks::write_block(tx, st, &mut b.chain, from, to, *cap),
        Job::Unblock { from, to } => blocks::write_unblock(tx, st, &mut b.chain, from, to),
        Job::Revoke {
            username,
            token_gen,
            new_hash,
        } => accounts::write_revoke(
            tx,
            st,
            &mut b.chain,
            username,
            *token_gen,
            new_hash.as_deref(),
        ),
        Job::DeleteAccount {
            username,
            token_gen,
            erase,
        } => deletion::write_delete_account(tx, st, b, username, *token_gen, *erase),
        other => Err(DbError::Query(format!(
            "unordered job sent to the writer: {other:?}"
        ))),
    }
}
