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
//! - `written`: each job's result until COMMIT; `stats`: the counters;
//! - `commit`: each batch's mark, and a batch whose COMMIT got no answer
//!   resolved by it before its requests are answered.

mod accounts;
mod blocks;
mod chain;
mod commit;
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

use crossbeam_channel::{Receiver, RecvTimeoutError};
use postgres::Transaction;

use super::error::DbError;
use super::jobs::{ChainLink, Completion, Job, NewMessage, Outcome, Poster, Ticket};
use super::nodes;
use super::notify::Notifier;
use super::outbox::Outbox;
use super::pool::{discard, Conn, Health, Source};
use super::rows::Stmts;
use super::wakeup::CompletionSink;
use chain::{entry_rooms, finish_chain, lock_rooms, update_lasts, Batch};
use commit::{Mark, Marks, Unresolved};
use messages::insert_messages;
use written::{Linked, Written};

pub use rooms::new_room_id;
pub use stats::WriterStats;

/// What the writer is told at start besides its channels.
pub(super) struct Settings {
    /// Most jobs in one transaction (`KLAV_DB_BATCH`).
    pub max_batch: usize,
    /// This node's name, in its row of `klav_writer_batches`.
    pub node: String,
}

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
    settings: Settings,
    reporters: Reporters,
    stats: Arc<WriterStats>,
) {
    let max_batch = settings.max_batch;
    let mut w = Writer {
        source,
        health,
        conn: None,
        marks: Marks::new(&settings.node),
        unresolved: None,
        reports: Reports {
            bus: reporters.bus.as_deref(),
            outbox: reporters.outbox.as_deref(),
        },
        stats,
    };
    commit::forget_old_writers(&w.source, &w.health);
    let mut batch: Vec<(Ticket, Job)> = Vec::with_capacity(max_batch);
    loop {
        // While a batch waits to be resolved, wake up to ask again even when
        // no job arrives.
        let first = match w.unresolved {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(_) => rx.recv_timeout(commit::RESOLVE_EVERY),
        };
        let first = match first {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if w.health.stopping() {
            // Shutting down: the connections waiting for it are closing.
            w.unresolved = None;
            continue;
        }
        w.settle(&sink);
        let Some(first) = first else { continue };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (slots, unknown) = w.write(&batch);
        if let Some(outbox) = w.reports.outbox {
            // The batch's events (if it committed) are there to deliver.
            outbox.committed();
        }
        w.answer(&sink, &mut batch, slots, unknown);
    }
}

/// Sends one job's result to the loop: a committed job that added entries
/// goes to its room's chain, any other to its requester.
fn release(sink: &CompletionSink, ticket: Ticket, job: Job, result: Result<Linked, DbError>) {
    match result {
        Ok((w, Some(link))) => sink.send(Completion::Chained(ticket, w.into_outcome(job), link)),
        Ok((w, None)) => sink.send(Completion::Db(ticket, Ok(w.into_outcome(job)))),
        Err(e) => sink.send(Completion::Db(ticket, Err(e))),
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

/// A job's result once its batch is over: known, or waiting to learn whether
/// its COMMIT took effect (see `commit`).
enum Slot {
    Ready(Result<Linked, DbError>),
    Unknown(Linked),
}

/// What one transaction came to.
enum Wrote {
    Done(Vec<Linked>),
    /// Nothing of it is stored.
    Failed(DbError),
    /// COMMIT got no answer: stored or not, to be resolved by its mark.
    Unknown(Vec<Linked>, i64),
}

/// The writer thread's state between batches.
struct Writer<'n> {
    source: Source,
    health: Arc<Health>,
    conn: Option<(Conn, Stmts)>,
    marks: Marks,
    /// A batch whose COMMIT got no answer: while it is here, later batches are
    /// refused (see `commit`).
    unresolved: Option<Unresolved>,
    reports: Reports<'n>,
    stats: Arc<WriterStats>,
}

impl Writer<'_> {
    /// Writes a batch: one result per job, and the mark of the transaction
    /// whose COMMIT got no answer, if one did not.
    fn write(&mut self, batch: &[(Ticket, Job)]) -> (Vec<Slot>, Option<i64>) {
        let fail = |e: &DbError| {
            batch
                .iter()
                .map(|_| Slot::Ready(Err(clone_err(e))))
                .collect()
        };
        if self.unresolved.is_some() {
            let e = DbError::Unavailable("the outcome of an earlier write is not known yet".into());
            return (fail(&e), None);
        }
        let jobs: Vec<&Job> = batch.iter().map(|(_, j)| j).collect();
        let senders: Vec<Sender> = batch
            .iter()
            .map(|(t, _)| t.sender.as_ref().map(|(u, g)| (u.as_str(), *g)))
            .collect();
        let n = jobs.len() as u64;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.jobs.fetch_add(n, Ordering::Relaxed);
        self.stats.largest.fetch_max(n, Ordering::Relaxed);
        match self.transaction(&jobs, &senders) {
            Wrote::Done(written) => (
                written.into_iter().map(|l| Slot::Ready(Ok(l))).collect(),
                None,
            ),
            Wrote::Unknown(written, mark) => {
                (written.into_iter().map(Slot::Unknown).collect(), Some(mark))
            }
            Wrote::Failed(DbError::Query(why)) if batch.len() > 1 => {
                crate::log!(
                    Warn,
                    "write batch failed ({why}); retrying its jobs one by one"
                );
                self.one_by_one(&jobs, &senders)
            }
            Wrote::Failed(e) => {
                let e = self.health.observe::<()>(Err(e)).unwrap_err();
                (fail(&e), None)
            }
        }
    }

    /// Each job in its own transaction, after its batch failed; once one
    /// COMMIT gets no answer, the rest are refused (see `commit`).
    fn one_by_one(&mut self, jobs: &[&Job], senders: &[Sender<'_>]) -> (Vec<Slot>, Option<i64>) {
        let mut slots = Vec::with_capacity(jobs.len());
        let mut unknown = None;
        for (j, s) in jobs.iter().zip(senders) {
            if unknown.is_some() {
                let e =
                    DbError::Unavailable("the outcome of an earlier write is not known yet".into());
                slots.push(Slot::Ready(Err(e)));
                continue;
            }
            slots.push(match self.transaction(&[j], &[*s]) {
                Wrote::Done(mut v) => Slot::Ready(Ok(v.pop().expect("one result per job"))),
                Wrote::Failed(e) => Slot::Ready(Err(e)),
                Wrote::Unknown(mut v, mark) => {
                    unknown = Some(mark);
                    Slot::Unknown(v.pop().expect("one result per job"))
                }
            });
        }
        (slots, unknown)
    }

    /// Sends the batch's results to the loop, in order; the jobs whose
    /// COMMIT got no answer (`unknown`: its mark) wait, unresolved.
    fn answer(
        &mut self,
        sink: &CompletionSink,
        batch: &mut Vec<(Ticket, Job)>,
        slots: Vec<Slot>,
        unknown: Option<i64>,
    ) {
        let mut pending = Vec::new();
        let mut written = Vec::new();
        for ((ticket, job), slot) in batch.drain(..).zip(slots) {
            match slot {
                Slot::Ready(result) => release(sink, ticket, job, result),
                Slot::Unknown(linked) => {
                    pending.push((ticket, job));
                    written.push(linked);
                }
            }
        }
        if let Some(mark) = unknown {
            crate::log!(
                Warn,
                "the database did not answer the COMMIT of {} writes; their answers wait \
                 until it can tell whether they are stored",
                pending.len()
            );
            self.unresolved = Some(Unresolved {
                batch: pending,
                written,
                mark,
            });
        }
    }

    /// Asks whether the unresolved batch committed; once the database can
    /// tell, its jobs are answered with the truth.
    fn settle(&mut self, sink: &CompletionSink) {
        let Some(u) = self.unresolved.take() else {
            return;
        };
        let Some(committed) = commit::resolve(
            &self.source,
            &self.health,
            &mut self.conn,
            &self.marks,
            u.mark,
        ) else {
            self.unresolved = Some(u);
            return;
        };
        crate::log!(
            Warn,
            "the {} writes whose COMMIT got no answer {}",
            u.batch.len(),
            if committed {
                "are stored: acknowledged now"
            } else {
                "are not stored: answered UNAVAILABLE"
            }
        );
        for ((ticket, job), linked) in u.batch.into_iter().zip(u.written) {
            let result = match committed {
                true => Ok(linked),
                false => Err(DbError::Unavailable(
                    "the connection broke during COMMIT, which did not take effect".into(),
                )),
            };
            release(sink, ticket, job, result);
        }
    }

    /// One transaction of `jobs`, on the kept connection (or a fresh one).
    fn transaction(&mut self, jobs: &[&Job], senders: &[Sender<'_>]) -> Wrote {
        let mut reused = true;
        loop {
            if self.conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                match self.health.get(&self.source) {
                    Ok(c) => self.conn = Some((c, Stmts::default())),
                    Err(e) => return Wrote::Failed(e),
                }
                reused = false;
            }
            let mark = self.marks.next();
            let (c, st) = self.conn.as_mut().expect("connection just ensured");
            let wrote = match c.transaction() {
                // BEGIN failed: nothing of the batch was sent.
                Err(e) => Err(DbError::from(e)),
                Ok(mut tx) => {
                    let applied =
                        apply(&mut tx, st, jobs, senders, self.reports, &self.stats, &mark);
                    Ok(match applied {
                        Err(e) => Wrote::Failed(e),
                        Ok(written) => match tx.commit().map_err(DbError::from) {
                            Ok(()) => Wrote::Done(written),
                            // The connection broke during COMMIT.
                            Err(DbError::Unavailable(_)) => Wrote::Unknown(written, mark.batch),
                            Err(e) => Wrote::Failed(e),
                        },
                    })
                }
            };
            match wrote {
                // A kept connection may have died while idle (PostgreSQL
                // restarted): BEGIN fails before anything was sent, so one
                // retry on a fresh connection is safe and saves its senders a
                // spurious UNAVAILABLE.
                Err(DbError::Unavailable(why)) => {
                    discard(self.conn.take().map(|(c, _)| c));
                    if reused {
                        reused = false;
                        continue;
                    }
                    return Wrote::Failed(DbError::Unavailable(why));
                }
                Err(e) => return Wrote::Failed(e),
                Ok(wrote) => {
                    match &wrote {
                        Wrote::Failed(DbError::Unavailable(_)) | Wrote::Unknown(..) => {
                            discard(self.conn.take().map(|(c, _)| c));
                        }
                        // A failed statement may have left a prepared
                        // statement invalid (e.g. after a schema change);
                        // start clean.
                        Wrote::Failed(DbError::Query(_)) => {
                            if let Some((_, st)) = self.conn.as_mut() {
                                *st = Stmts::default();
                            }
                        }
                        Wrote::Done(_) => {}
                    }
                    return wrote;
                }
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
    mark: &Mark<'_>,
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
            // Checked where it stands: the batch's earlier joins and leaves
            // are written already (messages change no membership).
            if m.poster == Poster::App && !messages::is_member(tx, st, &m.room, &m.from)? {
                written.push(Some(Written::Ready(Outcome::PosterNotMember)));
                continue;
            }
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
    update_lasts(tx, st, b.lasts, mark)?;
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
