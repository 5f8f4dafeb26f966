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

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::Receiver;
use postgres::{GenericClient, Transaction};

use super::error::DbError;
use super::jobs::*;
use super::notify::{EntryRef, MemberOp, Notes, Notifier};
use super::offline_queue;
use super::pool::{Conn, Health, Source};
use super::queries::{entry_from_row, Stmts};
use super::rows::room_newest_entry;
use super::wakeup::CompletionSink;
use crate::names::SystemText;

/// What the writer has done, for `/metrics` (and the cluster's cost).
#[derive(Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Jobs in them.
    pub jobs: AtomicU64,
    /// The most jobs one batch held.
    pub largest: AtomicU64,
    /// `pg_notify` payloads sent (one per ~7,800 bytes of a batch's events).
    pub notifications: AtomicU64,
}

/// A room's newest entry in this batch, written to `rooms.last_message_*` at the
/// end. Borrowed from the batch's jobs where it can be: a message costs no copy.
struct Last<'a> {
    id: i64,
    text: Cow<'a, str>,
    from: &'a str,
    kind: &'static str,
}

type Lasts<'a> = HashMap<Cow<'a, str>, Last<'a>>;

/// What a batch's writes add to as they go: each room's newest entry (stored in
/// `rooms` once, at the end) and the rooms' entry chains.
struct Batch<'a, 'n> {
    lasts: Lasts<'a>,
    chain: Chain<'n>,
}

/// A job's result and, if it added entries, where they sit in their room.
type Linked = (Written, Option<ChainLink>);

/// Per batch: each room's newest entry id as entries are added (the room's row
/// is locked first, see [`lock_rooms`]), what changed, and the notifications
/// for the other nodes (`None` when this node runs alone).
struct Chain<'n> {
    last: HashMap<String, i64>,
    /// Entry id → the entry before it in its room, for this batch's entries.
    prevs: HashMap<i64, i64>,
    moved: HashSet<String>,
    notes: Option<Box<dyn Notes + 'n>>,
    /// This node's name, in a cluster.
    node: Option<String>,
}

impl Chain<'_> {
    /// Records an entry added to `room`: returns the entry before it, and
    /// queues the entry's notification.
    fn append(&mut self, e: &EntryRef<'_>, op: Option<&MemberOp>, queued: bool) -> i64 {
        let last = self.last.entry(e.room.to_string()).or_insert(0);
        let prev = *last;
        *last = e.id;
        self.prevs.insert(e.id, prev);
        if !self.moved.contains(e.room) {
            self.moved.insert(e.room.to_string());
        }
        if let Some(notes) = &mut self.notes {
            notes.entry(e, prev, op, queued);
        }
        prev
    }

    /// The link of the entries one job wrote (all in one room).
    fn link(&self, logged: &[ChatEntry]) -> Option<ChainLink> {
        let (first, last) = (logged.first()?, logged.last()?);
        Some(ChainLink {
            room: first.room.clone(),
            prev: *self.prevs.get(&first.id)?,
            last: last.id,
        })
    }

    /// Adds a note for the other nodes, in a cluster.
    fn note(&mut self, add: impl FnOnce(&mut dyn Notes)) {
        if let Some(notes) = &mut self.notes {
            add(notes.as_mut());
        }
    }
}

/// What the database produced for one job; joined with the job itself (moved,
/// never copied) into its [`Outcome`] once the batch has committed.
enum Written {
    Msg {
        id: i64,
        ts: SystemTime,
    },
    MsgDuplicate(Box<Duplicate>),
    RoomCreated {
        room: String,
        logged: Vec<ChatEntry>,
    },
    Join {
        result: JoinResult,
        logged: Vec<ChatEntry>,
    },
    Leave {
        was_member: bool,
        logged: Vec<ChatEntry>,
    },
    Dm(DmResult),
    Ready(Outcome),
}

impl Written {
    fn into_outcome(self, job: Job) -> Outcome {
        match (self, job) {
            (Written::Msg { id, ts }, Job::Msg(msg)) => Outcome::Msg { msg, id, ts },
            (Written::MsgDuplicate(d), Job::Msg(_)) => Outcome::MsgDuplicate(d),
            (Written::RoomCreated { room, logged }, Job::CreateRoom { name, .. }) => {
                Outcome::RoomCreated { room, name, logged }
            }
            (
                Written::Join { result, logged },
                Job::Join {
                    username, nickname, ..
                },
            ) => Outcome::Join {
                username,
                nickname,
                result,
                logged,
            },
            (
                Written::Leave { was_member, logged },
                Job::Leave {
                    username,
                    nickname,
                    room,
                },
            ) => Outcome::Leave {
                username,
                nickname,
                room,
                was_member,
                logged,
            },
            (Written::Dm(result), Job::Dm { msg, to, .. }) => Outcome::Dm { msg, to, result },
            (Written::Ready(outcome), _) => outcome,
            _ => Outcome::Done,
        }
    }
}

pub(super) fn run(
    source: Source,
    rx: Receiver<(Ticket, Job)>,
    sink: CompletionSink,
    health: Arc<Health>,
    max_batch: usize,
    bus: Option<Arc<dyn Notifier>>,
    stats: Arc<WriterStats>,
) {
    let bus = bus.as_deref();
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
        let n = jobs.len() as u64;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(n, Ordering::Relaxed);
        stats.largest.fetch_max(n, Ordering::Relaxed);
        let results: Vec<Result<(Written, Option<ChainLink>), DbError>> =
            match write_batch(&source, &health, &mut conn, &jobs, bus, &stats) {
                Ok(written) => written.into_iter().map(Ok).collect(),
                Err(DbError::Query(why)) if batch.len() > 1 => {
                    crate::log!(
                        Warn,
                        "write batch failed ({why}); retrying its jobs one by one"
                    );
                    jobs.iter()
                        .map(|j| {
                            write_batch(&source, &health, &mut conn, &[j], bus, &stats)
                                .map(|mut v| v.pop().expect("one result per job"))
                        })
                        .collect()
                }
                Err(e) => {
                    let e = health.observe::<()>(Err(e)).unwrap_err();
                    jobs.iter().map(|_| Err(clone_err(&e))).collect()
                }
            };
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
    bus: Option<&dyn Notifier>,
    stats: &WriterStats,
) -> Result<Vec<(Written, Option<ChainLink>)>, DbError> {
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
                    let result = apply(&mut tx, st, jobs, bus, stats).and_then(|outcomes| {
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

fn apply<'a>(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    jobs: &[&'a Job],
    bus: Option<&dyn Notifier>,
    stats: &WriterStats,
) -> Result<Vec<(Written, Option<ChainLink>)>, DbError> {
    let mut written: Vec<Option<Written>> = Vec::with_capacity(jobs.len());
    let mut links: Vec<Option<ChainLink>> = vec![None; jobs.len()];
    let mut b = Batch {
        lasts: HashMap::new(),
        chain: Chain {
            last: HashMap::new(),
            prevs: HashMap::new(),
            moved: HashSet::new(),
            notes: bus.map(|b| b.notes()),
            node: bus.map(|b| b.node().to_string()),
        },
    };
    lock_rooms(tx, st, &entry_rooms(jobs), &mut b.chain)?;
    // Consecutive messages waiting for their multi-row INSERT: (index, message).
    let mut pending: Vec<(usize, &'a NewMessage)> = Vec::new();
    let mut savepoints = 0;
    for &job in jobs {
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
        let idx = written.len();
        let w =
            match job {
                Job::CreateRoom {
                    creator_nickname,
                    name,
                    ..
                } => {
                    let mut logged = Vec::new();
                    let room = create_room(tx, st, name, creator_nickname, &mut b, &mut logged)?;
                    links[idx] = b.chain.link(&logged);
                    Written::RoomCreated { room, logged }
                }
                Job::Join {
                    username,
                    nickname,
                    by,
                } => {
                    let mut logged = Vec::new();
                    let result = join(tx, st, username, nickname, by, &mut b, &mut logged)?;
                    links[idx] = b.chain.link(&logged);
                    Written::Join { result, logged }
                }
                Job::Leave {
                    username,
                    nickname,
                    room,
                } => {
                    let s = st.get(
                        tx,
                        "DELETE FROM room_members WHERE room_id = $1 AND username = $2",
                    )?;
                    let was_member = tx.execute(&s, &[room, username])? > 0;
                    let mut logged = Vec::new();
                    if was_member {
                        let text = SystemText::Left { nickname }.render();
                        let op = MemberOp {
                            joined: false,
                            user: username.clone(),
                            nickname: nickname.clone(),
                        };
                        system_entry(tx, st, room, text, &mut b, Some(&op), &mut logged)?;
                    }
                    links[idx] = b.chain.link(&logged);
                    Written::Leave { was_member, logged }
                }
                Job::Dm {
                    msg,
                    to,
                    recipient_known,
                    queue,
                } => {
                    let (result, link) =
                        dm(tx, st, msg, to, *recipient_known, *queue, &mut b.chain)?;
                    links[idx] = link;
                    Written::Dm(result)
                }
                Job::QueueDm {
                    msg,
                    to,
                    log_id,
                    at,
                } => {
                    if b.chain.node.is_some() {
                        // Another node's writer may be queueing for them too.
                        super::nodes::lock_user(tx, st, to)?;
                    }
                    queue_dm(tx, st, msg, to, *log_id, *at)?;
                    Written::Ready(Outcome::DmQueued {
                        room: msg.room.clone(),
                        to: to.clone(),
                    })
                }
                Job::Edit { username, id, text } => {
                    let delete = text.is_none();
                    let result = edit(tx, st, username, *id, text.as_deref())?;
                    if let EditResult::Done(entry) = &result {
                        b.chain.note(|n| n.change(entry));
                    }
                    Written::Ready(Outcome::Edit { delete, result })
                }
                Job::ReadEntries { room, after, upto } => Written::Ready(
                    super::nodes::read_entries(tx, st, room.clone(), *after, *upto)?,
                ),
                Job::CatchUp {
                    rooms,
                    users,
                    watched,
                } => Written::Ready(super::nodes::catch_up(
                    tx,
                    st,
                    rooms.clone(),
                    users.clone(),
                    watched.clone(),
                )?),
                Job::Read { username, room, id } => {
                    let result = read_marker(tx, st, username, room, *id)?;
                    if let ReadResult::Marker { id, moved: true } = result {
                        b.chain.note(|n| n.read_marker(username, room, id));
                    }
                    Written::Ready(Outcome::Read {
                        username: username.clone(),
                        room: room.clone(),
                        result,
                    })
                }
                // Small and rare: the shared SQL takes its job by value.
                Job::Follow { .. } | Job::Unfollow { .. } => {
                    let outcome = super::queries::run(tx, st, job.clone())?;
                    match &outcome {
                        Outcome::Follow {
                            from,
                            to,
                            status: FollowStatus::Followed,
                        } => b.chain.note(|n| n.follow(from, to, true)),
                        Outcome::Unfollow {
                            from,
                            to,
                            removed: true,
                        } => b.chain.note(|n| n.follow(from, to, false)),
                        _ => {}
                    }
                    Written::Ready(outcome)
                }
                other => {
                    return Err(DbError::Query(format!(
                        "unordered job sent to the writer: {other:?}"
                    )))
                }
            };
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
    finish_chain(tx, st, b.chain, stats)?;
    Ok(written
        .into_iter()
        .map(|w| w.expect("every job has a result"))
        .zip(links)
        .collect())
}

/// The existing rooms the batch's jobs add entries to (a room found by name or
/// created during the batch is locked when it is found).
fn entry_rooms(jobs: &[&Job]) -> Vec<String> {
    let mut rooms: Vec<String> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Msg(m) => Some(m.room.clone()),
            Job::Dm { msg, .. } => Some(msg.room.clone()),
            Job::Leave { room, .. } => Some(room.clone()),
            Job::Join {
                by: JoinBy::Id(id), ..
            } => Some(id.clone()),
            _ => None,
        })
        .collect();
    rooms.sort_unstable();
    rooms.dedup();
    rooms
}

/// Locks the rooms' rows in id order (every writer of every node takes them in
/// the same order, so two batches cannot deadlock) and reads each room's newest
/// entry id. While a room is locked, no other transaction adds entries to it, so
/// its ids commit in order: every node sees one order per room.
fn lock_rooms(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    rooms: &[String],
    chain: &mut Chain<'_>,
) -> Result<(), DbError> {
    if rooms.is_empty() {
        return Ok(());
    }
    let s = st.get(
        tx,
        concat!(
            "SELECT id, ",
            room_newest_entry!("rooms"),
            " FROM rooms WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
        ),
    )?;
    for row in tx.query(&s, &[&rooms])? {
        chain.last.insert(row.get(0), row.get(1));
    }
    Ok(())
}

/// Stores each room's newest entry id and sends the batch's notifications;
/// both take effect at COMMIT, together with the entries.
fn finish_chain(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    chain: Chain<'_>,
    stats: &WriterStats,
) -> Result<(), DbError> {
    if !chain.moved.is_empty() {
        let (rooms, ids): (Vec<&str>, Vec<i64>) = chain
            .moved
            .iter()
            .map(|r| (r.as_str(), chain.last[r]))
            .unzip();
        let s = st.get(
            tx,
            "UPDATE rooms SET klav_last_entry_id = u.e \
             FROM unnest($1::text[], $2::int8[]) AS u(id, e) WHERE rooms.id = u.id",
        )?;
        tx.execute(&s, &[&rooms, &ids])?;
    }
    if let Some(notes) = chain.notes {
        if !notes.is_empty() {
            let payloads = notes.seal();
            stats
                .notifications
                .fetch_add(payloads.len() as u64, Ordering::Relaxed);
            super::notify::send(tx, st, &payloads)?;
        }
    }
    Ok(())
}

/// Savepoints one batch may take for messages with a `client_id` (see
/// [`insert_messages`]); past it, the conflict check is made row by row.
/// PostgreSQL keeps a transaction's subtransactions in a 64-entry cache per
/// backend; overflowing it slows every other snapshot.
const MAX_SAVEPOINTS: u32 = 32;

/// One INSERT for all pending messages; their ids come back in input order.
///
/// A message whose `client_id` its sender already used is refused by the unique
/// index in the same statement — no lookup first. Messages with a key are
/// inserted plainly inside a savepoint, because `ON CONFLICT DO NOTHING` costs
/// every row a speculative insertion (about two thirds more per row, measured);
/// only when the index does refuse one is the run rolled back to the savepoint
/// and inserted again with `ON CONFLICT DO NOTHING`, and only then is the
/// original read back, for the retrying client.
fn insert_messages<'a>(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    pending: &mut Vec<(usize, &'a NewMessage)>,
    written: &mut [Option<Written>],
    links: &mut [Option<ChainLink>],
    b: &mut Batch<'a, '_>,
    savepoints: &mut u32,
) -> Result<(), DbError> {
    if pending.is_empty() {
        return Ok(());
    }
    let rooms: Vec<&str> = pending.iter().map(|(_, m)| m.room.as_str()).collect();
    let froms: Vec<&str> = pending.iter().map(|(_, m)| m.from.as_str()).collect();
    let nicks: Vec<&str> = pending
        .iter()
        .map(|(_, m)| m.from_nickname.as_str())
        .collect();
    let texts: Vec<&str> = pending.iter().map(|(_, m)| m.text.as_str()).collect();
    let cids: Vec<Option<&str>> = pending
        .iter()
        .map(|(_, m)| m.client_id.as_deref())
        .collect();
    let plain = st.get(
        tx,
        "INSERT INTO chat_logs \
            (room_id, ts, kind, from_user, from_nickname, to_user, text, client_id) \
         SELECT r, now(), 'msg', f, n, NULL, t, c \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
              AS u(r, f, n, t, c) \
         RETURNING id, ts, from_user, client_id",
    )?;
    let params: [&(dyn postgres::types::ToSql + Sync); 5] = [&rooms, &froms, &nicks, &texts, &cids];
    let keyed = cids.iter().any(Option::is_some);
    let found = if !keyed {
        tx.query(&plain, &params)?
    } else {
        let skipping = st.get(
            tx,
            "INSERT INTO chat_logs \
                (room_id, ts, kind, from_user, from_nickname, to_user, text, client_id) \
             SELECT r, now(), 'msg', f, n, NULL, t, c \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                  AS u(r, f, n, t, c) \
             ON CONFLICT (from_user, client_id) WHERE client_id IS NOT NULL DO NOTHING \
             RETURNING id, ts, from_user, client_id",
        )?;
        if *savepoints < MAX_SAVEPOINTS {
            *savepoints += 1;
            tx.batch_execute("SAVEPOINT klav_keyed")?;
            match tx.query(&plain, &params) {
                Ok(rows) => {
                    tx.batch_execute("RELEASE SAVEPOINT klav_keyed")?;
                    rows
                }
                Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT klav_keyed")?;
                    tx.query(&skipping, &params)?
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            tx.query(&skipping, &params)?
        }
    };
    let mut rows: Vec<(i64, SystemTime, Option<String>, Option<String>)> = found
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Rows are inserted in input order, so sorted ids map back one to one; a
    // skipped message has no row, and a row with a client_id belongs to the first
    // pending message with that sender and key (the index allows only one).
    rows.sort_unstable_by_key(|r| r.0);
    let mut rows = rows.into_iter().peekable();
    let mut duplicates = Vec::new();
    for (idx, msg) in pending.drain(..) {
        let inserted = match (&msg.client_id, rows.peek()) {
            (None, Some(_)) => true,
            (Some(c), Some(r)) => {
                r.3.as_deref() == Some(c.as_str()) && r.2.as_deref() == Some(msg.from.as_str())
            }
            (Some(_), None) => false,
            (None, None) => {
                return Err(DbError::Query(
                    "message insert returned a short row set".into(),
                ))
            }
        };
        if !inserted {
            duplicates.push((idx, msg));
            continue;
        }
        let (id, ts, _, _) = rows.next().expect("peeked");
        let prev = b.chain.append(
            &EntryRef {
                id,
                ts,
                kind: "msg",
                room: &msg.room,
                from: &msg.from,
                from_nickname: &msg.from_nickname,
                to: None,
                text: &msg.text,
                client_id: msg.client_id.as_deref(),
            },
            None,
            false,
        );
        links[idx] = Some(ChainLink {
            room: msg.room.clone(),
            prev,
            last: id,
        });
        b.lasts.insert(
            Cow::Borrowed(msg.room.as_str()),
            Last {
                id,
                text: Cow::Borrowed(msg.text.as_str()),
                from: msg.from.as_str(),
                kind: "msg",
            },
        );
        written[idx] = Some(Written::Msg { id, ts });
    }
    for (idx, msg) in duplicates {
        let cid = msg.client_id.as_deref().unwrap_or_default();
        written[idx] = Some(Written::MsgDuplicate(Box::new(duplicate(
            tx, st, &msg.from, cid,
        )?)));
    }
    Ok(())
}

/// The entry `from` stored earlier with `client_id` (it conflicted just now).
fn duplicate(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    from: &str,
    client_id: &str,
) -> Result<Duplicate, DbError> {
    let s = st.get(
        tx,
        concat!(
            "SELECT ",
            entry_columns!(),
            ", EXISTS (SELECT 1 FROM klav_offline_dms o WHERE o.log_id = chat_logs.id) \
             FROM chat_logs WHERE from_user = $1 AND client_id = $2"
        ),
    )?;
    let row = tx
        .query_opt(&s, &[&from, &client_id])?
        .ok_or_else(|| DbError::Query("the entry a client_id conflicted with is gone".into()))?;
    let queued: bool = row.get(11);
    Ok(Duplicate {
        entry: entry_from_row(row),
        queued,
    })
}

/// `edit` / `delete` (`text: None`), after the checks the protocol promises.
fn edit(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    id: i64,
    text: Option<&str>,
) -> Result<EditResult, DbError> {
    let s = st.get(
        tx,
        "SELECT c.kind, c.from_user, c.to_user, c.deleted, \
                EXISTS (SELECT 1 FROM room_members m \
                        WHERE m.room_id = c.room_id AND m.username = $2) \
         FROM chat_logs c WHERE c.id = $1 FOR UPDATE",
    )?;
    let Some(row) = tx.query_opt(&s, &[&id, &username])? else {
        return Ok(EditResult::NotFound);
    };
    let kind: Option<String> = row.get(0);
    let from: Option<String> = row.get(1);
    let to: Option<String> = row.get(2);
    let (deleted, member): (bool, bool) = (row.get(3), row.get(4));
    let is_dm = kind.as_deref() == Some("dm");
    let visible =
        member && (!is_dm || from.as_deref() == Some(username) || to.as_deref() == Some(username));
    if !visible || deleted {
        return Ok(EditResult::NotFound);
    }
    if !matches!(kind.as_deref(), Some("msg" | "dm")) || from.as_deref() != Some(username) {
        return Ok(EditResult::NotAuthor);
    }
    let row = match text {
        Some(text) => {
            let s = st.get(
                tx,
                concat!(
                    "UPDATE chat_logs SET text = $2, edited_at = now() WHERE id = $1 RETURNING ",
                    entry_columns!()
                ),
            )?;
            let row = tx.query_one(&s, &[&id, &text])?;
            let q = st.get(
                tx,
                "UPDATE klav_offline_dms SET text = $2 WHERE log_id = $1",
            )?;
            tx.execute(&q, &[&id, &text])?;
            row
        }
        None => {
            let s = st.get(
                tx,
                concat!(
                    "UPDATE chat_logs SET text = '', deleted = true WHERE id = $1 RETURNING ",
                    entry_columns!()
                ),
            )?;
            let row = tx.query_one(&s, &[&id])?;
            let q = st.get(tx, "DELETE FROM klav_offline_dms WHERE log_id = $1")?;
            tx.execute(&q, &[&id])?;
            row
        }
    };
    Ok(EditResult::Done(Box::new(entry_from_row(row))))
}

/// Moves `username`'s marker in `room` forward to `id`, if the room has that entry
/// and the user may see it.
fn read_marker(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    room: &str,
    id: i64,
) -> Result<ReadResult, DbError> {
    // A DM between two others is as absent as an id the room does not have.
    let s = st.get(
        tx,
        "SELECT 1 FROM chat_logs WHERE id = $1 AND room_id = $2 \
           AND (kind IS DISTINCT FROM 'dm' OR from_user = $3 OR to_user = $3)",
    )?;
    if tx.query_opt(&s, &[&id, &room, &username])?.is_none() {
        return Ok(ReadResult::NotFound);
    }
    let s = st.get(
        tx,
        "INSERT INTO klav_read_markers (username, room_id, last_read_id) VALUES ($1, $2, $3) \
         ON CONFLICT (username, room_id) DO UPDATE \
            SET last_read_id = EXCLUDED.last_read_id, updated_at = now() \
            WHERE klav_read_markers.last_read_id < EXCLUDED.last_read_id \
         RETURNING last_read_id",
    )?;
    if let Some(r) = tx.query_opt(&s, &[&username, &room, &id])? {
        return Ok(ReadResult::Marker {
            id: r.get(0),
            moved: true,
        });
    }
    let s = st.get(
        tx,
        "SELECT last_read_id FROM klav_read_markers WHERE username = $1 AND room_id = $2",
    )?;
    let marker: i64 = tx.query_one(&s, &[&username, &room])?.get(0);
    Ok(ReadResult::Marker {
        id: marker,
        moved: false,
    })
}

fn update_lasts(tx: &mut Transaction<'_>, st: &mut Stmts, lasts: Lasts<'_>) -> Result<(), DbError> {
    if lasts.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(lasts.len());
    let mut entry_ids = Vec::with_capacity(lasts.len());
    let mut texts = Vec::with_capacity(lasts.len());
    let mut froms = Vec::with_capacity(lasts.len());
    let mut kinds = Vec::with_capacity(lasts.len());
    for (id, l) in &lasts {
        ids.push(id.as_ref());
        entry_ids.push(l.id);
        texts.push(l.text.as_ref());
        froms.push(l.from);
        kinds.push(l.kind);
    }
    let s = st.get(
        tx,
        "UPDATE rooms SET last_message_text = u.t, last_message_from = u.f, \
                last_message_kind = u.k, last_message_ts = now(), last_message_id = u.e \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
              AS u(id, t, f, k, e) \
         WHERE rooms.id = u.id",
    )?;
    tx.execute(&s, &[&ids, &texts, &froms, &kinds, &entry_ids])?;
    Ok(())
}

fn system_entry(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    text: String,
    b: &mut Batch<'_, '_>,
    op: Option<&MemberOp>,
    logged: &mut Vec<ChatEntry>,
) -> Result<(), DbError> {
    let s = st.get(
        tx,
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
         VALUES ($1, now(), 'system', 'system', 'system', NULL, $2) RETURNING id, ts",
    )?;
    let row = tx.query_one(&s, &[&room, &text])?;
    let id: i64 = row.get(0);
    b.lasts.insert(
        Cow::Owned(room.to_string()),
        Last {
            id,
            text: Cow::Owned(text.clone()),
            from: "system",
            kind: "system",
        },
    );
    let entry = ChatEntry {
        id,
        ts: row.get(1),
        kind: "system".into(),
        room: room.to_string(),
        from: "system".into(),
        from_nickname: "system".into(),
        to: None,
        text,
        client_id: None,
        edited_at: None,
        deleted: false,
    };
    b.chain.append(&EntryRef::of(&entry), op, false);
    logged.push(entry);
    Ok(())
}

/// A fresh `r_` + 8 lowercase hex digits from the OS's cryptographic RNG.
pub fn new_room_id() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS random source failed");
    format!("r_{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

fn create_room(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    name: &str,
    creator_nickname: &str,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<String, DbError> {
    let s = st.get(
        tx,
        "INSERT INTO rooms (id, name, created_at) VALUES ($1, $2, clock_timestamp()) \
         ON CONFLICT (id) DO NOTHING",
    )?;
    loop {
        let id = new_room_id();
        if tx.execute(&s, &[&id, &name])? == 1 {
            let text = SystemText::Created {
                room: name,
                creator: creator_nickname,
            }
            .render();
            // A new room: nobody else can add to it before this commits.
            b.chain.last.insert(id.clone(), 0);
            system_entry(tx, st, &id, text, b, None, logged)?;
            return Ok(id);
        }
    }
}

fn join(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    nickname: &str,
    by: &JoinBy,
    b: &mut Batch<'_, '_>,
    logged: &mut Vec<ChatEntry>,
) -> Result<JoinResult, DbError> {
    let room = match by {
        JoinBy::Id(id) => {
            let s = st.get(tx, "SELECT 1 FROM rooms WHERE id = $1")?;
            if tx.query_opt(&s, &[id])?.is_none() {
                return Ok(JoinResult::NotFound);
            }
            id.clone()
        }
        JoinBy::Name(name) => {
            let s = st.get(
                tx,
                "SELECT id FROM rooms WHERE name = $1 ORDER BY created_at, id LIMIT 1",
            )?;
            match tx.query_opt(&s, &[name])? {
                Some(r) => {
                    let id: String = r.get(0);
                    if !b.chain.last.contains_key(&id) {
                        // Found by name mid-batch: locked out of order. A
                        // deadlock with another node is detected by PostgreSQL
                        // and fails this batch, whose jobs are retried alone.
                        lock_rooms(tx, st, std::slice::from_ref(&id), &mut b.chain)?;
                    }
                    id
                }
                None => create_room(tx, st, name, nickname, b, logged)?,
            }
        }
    };
    let s = st.get(
        tx,
        "INSERT INTO room_members (room_id, username, joined_at) VALUES ($1, $2, now()) \
         ON CONFLICT (room_id, username) DO NOTHING",
    )?;
    if tx.execute(&s, &[&room, &username])? == 0 {
        return Ok(JoinResult::Already { room });
    }
    let text = SystemText::Joined { nickname }.render();
    let op = MemberOp {
        joined: true,
        user: username.to_string(),
        nickname: nickname.to_string(),
    };
    system_entry(tx, st, &room, text, b, Some(&op), logged)?;
    Ok(JoinResult::Joined { room })
}

fn dm(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    msg: &NewMessage,
    to: &str,
    recipient_known: bool,
    queue: bool,
    chain: &mut Chain<'_>,
) -> Result<(DmResult, Option<ChainLink>), DbError> {
    if !recipient_known {
        let s = st.get(
            tx,
            "SELECT 1 FROM room_members WHERE room_id = $1 AND username = $2",
        )?;
        if tx.query_opt(&s, &[&msg.room, &to])?.is_none() {
            return Ok((DmResult::RecipientNotInRoom, None));
        }
    }
    let s = st.get(
        tx,
        "INSERT INTO chat_logs \
            (room_id, ts, kind, from_user, from_nickname, to_user, text, client_id) \
         VALUES ($1, now(), 'dm', $2, $3, $4, $5, $6) \
         ON CONFLICT (from_user, client_id) WHERE client_id IS NOT NULL DO NOTHING \
         RETURNING id, ts",
    )?;
    let inserted = tx.query_opt(
        &s,
        &[
            &msg.room,
            &msg.from,
            &msg.from_nickname,
            &to,
            &msg.text,
            &msg.client_id,
        ],
    )?;
    let Some(row) = inserted else {
        let cid = msg.client_id.as_deref().unwrap_or_default();
        let d = duplicate(tx, st, &msg.from, cid)?;
        return Ok((DmResult::Duplicate(Box::new(d)), None));
    };
    let (id, ts): (i64, SystemTime) = (row.get(0), row.get(1));
    // Offline here: in a cluster, a connection on another live node takes it
    // (decided under the recipient's presence lock, so it cannot close unseen).
    let mut elsewhere = false;
    if let (true, Some(node)) = (queue, chain.node.as_deref()) {
        super::nodes::lock_user(tx, st, to)?;
        elsewhere = super::nodes::elsewhere(tx, st, to, node)?;
    }
    let queue = queue && !elsewhere;
    let prev = chain.append(
        &EntryRef {
            id,
            ts,
            kind: "dm",
            room: &msg.room,
            from: &msg.from,
            from_nickname: &msg.from_nickname,
            to: Some(to),
            text: &msg.text,
            client_id: msg.client_id.as_deref(),
        },
        None,
        queue,
    );
    if queue {
        queue_dm(tx, st, msg, to, id, ts)?;
    }
    let link = ChainLink {
        room: msg.room.clone(),
        prev,
        last: id,
    };
    Ok((
        DmResult::Stored {
            id,
            ts,
            queued: queue,
            elsewhere,
        },
        Some(link),
    ))
}

/// Adds a DM to `to`'s offline queue and drops what the queue's bounds say must
/// go (see [`offline_queue`]), counting it for the recipient. In a cluster the
/// caller holds the recipient's lock, so two writers never judge one queue at
/// once.
fn queue_dm<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    msg: &NewMessage,
    to: &str,
    log_id: i64,
    at: SystemTime,
) -> Result<(), DbError> {
    // The statement's snapshot does not see its own insert: it is added to the
    // queue read back.
    let ins = st.get(
        c,
        "WITH ins AS (\
            INSERT INTO klav_offline_dms \
                (recipient, room_id, log_id, from_user, from_nickname, text, sent_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, from_user) \
         SELECT id, from_user FROM klav_offline_dms WHERE recipient = $1 \
         UNION ALL SELECT id, from_user FROM ins",
    )?;
    let rows = c.query(
        &ins,
        &[
            &to,
            &msg.room,
            &log_id,
            &msg.from,
            &msg.from_nickname,
            &msg.text,
            &at,
        ],
    )?;
    let queue: Vec<(i64, &str)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let gone = offline_queue::evictions(&queue, &msg.from);
    if gone.is_empty() {
        return Ok(());
    }
    // Counted as actually deleted: one delivered meanwhile is not "dropped".
    let drop = st.get(
        c,
        "WITH gone AS (\
            DELETE FROM klav_offline_dms WHERE recipient = $1 AND id = ANY($2) RETURNING 1) \
         INSERT INTO klav_offline_dropped (recipient, dropped) \
         SELECT $1, count(*) FROM gone HAVING count(*) > 0 \
         ON CONFLICT (recipient) DO UPDATE \
            SET dropped = klav_offline_dropped.dropped + EXCLUDED.dropped",
    )?;
    c.execute(&drop, &[&to, &gone])?;
    Ok(())
}
