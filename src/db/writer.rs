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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::Receiver;
use postgres::{GenericClient, NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use super::jobs::*;
use super::queries::{Stmts, OFFLINE_QUEUE_CAP};
use super::{CompletionSink, DbError, Health, Pool};

type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// A room's newest entry in this batch, written to `rooms.last_message_*` at the end.
struct Last {
    text: String,
    from: String,
    kind: &'static str,
}

pub(super) fn run(
    pool: Pool,
    rx: Receiver<(Ticket, Job)>,
    sink: CompletionSink,
    health: Arc<Health>,
    max_batch: usize,
) {
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
        let jobs: Vec<Job> = batch.iter().map(|(_, j)| j.clone()).collect();
        let results = match write_batch(&pool, &health, &mut conn, jobs) {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(DbError::Query(why)) if batch.len() > 1 => {
                crate::log!(
                    Warn,
                    "write batch failed ({why}); retrying its jobs one by one"
                );
                batch
                    .iter()
                    .map(|(_, j)| {
                        write_batch(&pool, &health, &mut conn, vec![j.clone()])
                            .map(|mut v| v.pop().expect("one outcome per job"))
                    })
                    .collect()
            }
            Err(e) => {
                let e = health.observe::<()>(Err(e)).unwrap_err();
                batch.iter().map(|_| Err(clone_err(&e))).collect::<Vec<_>>()
            }
        };
        for ((ticket, _), result) in batch.drain(..).zip(results) {
            sink.send(Completion::Db(ticket, result));
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
    pool: &Pool,
    health: &Health,
    conn: &mut Option<(Conn, Stmts)>,
    jobs: Vec<Job>,
) -> Result<Vec<Outcome>, DbError> {
    let mut jobs = Some(jobs);
    let mut reused = true;
    loop {
        if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            *conn = Some((health.get(pool)?, Stmts::default()));
            reused = false;
        }
        // Outer `Err`: BEGIN failed, nothing of the batch was sent.
        let attempt: Result<Result<Vec<Outcome>, DbError>, DbError> = {
            let (c, st) = conn.as_mut().expect("connection just ensured");
            match c.transaction() {
                Err(e) => Err(e.into()),
                Ok(mut tx) => {
                    let jobs = jobs.take().expect("jobs are applied once");
                    let result = apply(&mut tx, st, jobs).and_then(|outcomes| {
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

fn apply(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    jobs: Vec<Job>,
) -> Result<Vec<Outcome>, DbError> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(jobs.len());
    let mut lasts: HashMap<String, Last> = HashMap::new();
    // Consecutive messages waiting for their multi-row INSERT: (index, message).
    let mut pending: Vec<(usize, NewMessage)> = Vec::new();
    for job in jobs {
        if let Job::Msg(m) = job {
            pending.push((outcomes.len(), m));
            outcomes.push(None);
            continue;
        }
        insert_messages(tx, st, &mut pending, &mut outcomes, &mut lasts)?;
        let outcome = match job {
            Job::CreateRoom {
                creator: _,
                creator_nickname,
                name,
            } => {
                let mut logged = Vec::new();
                let room = create_room(tx, st, &name, &creator_nickname, &mut lasts, &mut logged)?;
                Outcome::RoomCreated { room, name, logged }
            }
            Job::Join {
                username,
                nickname,
                by,
            } => {
                let mut logged = Vec::new();
                let result = join(tx, st, &username, &nickname, by, &mut lasts, &mut logged)?;
                Outcome::Join {
                    username,
                    nickname,
                    result,
                    logged,
                }
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
                let was_member = tx.execute(&s, &[&room, &username])? > 0;
                let mut logged = Vec::new();
                if was_member {
                    let text = format!("{nickname} 님이 나가셨습니다");
                    system_entry(tx, st, &room, &text, &mut lasts, &mut logged)?;
                }
                Outcome::Leave {
                    username,
                    nickname,
                    room,
                    was_member,
                    logged,
                }
            }
            Job::Dm {
                msg,
                to,
                recipient_known,
                queue,
            } => {
                let result = dm(tx, st, &msg, &to, recipient_known, queue)?;
                Outcome::Dm { msg, to, result }
            }
            Job::QueueDm {
                msg,
                to,
                log_id,
                at,
            } => {
                queue_dm(tx, st, &msg, &to, log_id, at)?;
                Outcome::Done
            }
            job @ (Job::Follow { .. } | Job::Unfollow { .. }) => super::queries::run(tx, st, job)?,
            other => {
                return Err(DbError::Query(format!(
                    "unordered job sent to the writer: {other:?}"
                )))
            }
        };
        outcomes.push(Some(outcome));
    }
    insert_messages(tx, st, &mut pending, &mut outcomes, &mut lasts)?;
    update_lasts(tx, st, lasts)?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every job has an outcome"))
        .collect())
}

/// One INSERT for all pending messages; their ids come back in input order.
fn insert_messages(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    pending: &mut Vec<(usize, NewMessage)>,
    outcomes: &mut [Option<Outcome>],
    lasts: &mut HashMap<String, Last>,
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
    let s = st.get(
        tx,
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
         SELECT r, now(), 'msg', f, n, NULL, t \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(r, f, n, t) \
         RETURNING id, ts",
    )?;
    let mut rows: Vec<(i64, SystemTime)> = tx
        .query(&s, &[&rooms, &froms, &nicks, &texts])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if rows.len() != pending.len() {
        return Err(DbError::Query(
            "message insert returned a short row set".into(),
        ));
    }
    // Rows are inserted in input order, so sorted ids map back one to one.
    rows.sort_unstable_by_key(|r| r.0);
    for ((idx, msg), (id, ts)) in pending.drain(..).zip(rows) {
        lasts.insert(
            msg.room.clone(),
            Last {
                text: msg.text.clone(),
                from: msg.from.clone(),
                kind: "msg",
            },
        );
        outcomes[idx] = Some(Outcome::Msg { msg, id, ts });
    }
    Ok(())
}

fn update_lasts(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    lasts: HashMap<String, Last>,
) -> Result<(), DbError> {
    if lasts.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(lasts.len());
    let mut texts = Vec::with_capacity(lasts.len());
    let mut froms = Vec::with_capacity(lasts.len());
    let mut kinds = Vec::with_capacity(lasts.len());
    for (id, l) in lasts {
        ids.push(id);
        texts.push(l.text);
        froms.push(l.from);
        kinds.push(l.kind);
    }
    let s = st.get(
        tx,
        "UPDATE rooms SET last_message_text = u.t, last_message_from = u.f, \
                last_message_kind = u.k, last_message_ts = now() \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(id, t, f, k) \
         WHERE rooms.id = u.id",
    )?;
    tx.execute(&s, &[&ids, &texts, &froms, &kinds])?;
    Ok(())
}

fn system_entry(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    room: &str,
    text: &str,
    lasts: &mut HashMap<String, Last>,
    logged: &mut Vec<ChatEntry>,
) -> Result<(), DbError> {
    let s = st.get(
        tx,
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
         VALUES ($1, now(), 'system', 'system', 'system', NULL, $2) RETURNING id, ts",
    )?;
    let row = tx.query_one(&s, &[&room, &text])?;
    logged.push(ChatEntry {
        id: row.get(0),
        ts: row.get(1),
        kind: "system".into(),
        room: room.to_string(),
        from: "system".into(),
        from_nickname: "system".into(),
        to: None,
        text: text.to_string(),
    });
    lasts.insert(
        room.to_string(),
        Last {
            text: text.to_string(),
            from: "system".into(),
            kind: "system",
        },
    );
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
    lasts: &mut HashMap<String, Last>,
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
            let text = format!("대화방 \"{name}\"을 {creator_nickname} 님이 만들었습니다");
            system_entry(tx, st, &id, &text, lasts, logged)?;
            return Ok(id);
        }
    }
}

fn join(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    nickname: &str,
    by: JoinBy,
    lasts: &mut HashMap<String, Last>,
    logged: &mut Vec<ChatEntry>,
) -> Result<JoinResult, DbError> {
    let room = match by {
        JoinBy::Id(id) => {
            let s = st.get(tx, "SELECT 1 FROM rooms WHERE id = $1")?;
            if tx.query_opt(&s, &[&id])?.is_none() {
                return Ok(JoinResult::NotFound);
            }
            id
        }
        JoinBy::Name(name) => {
            let s = st.get(
                tx,
                "SELECT id FROM rooms WHERE name = $1 ORDER BY created_at, id LIMIT 1",
            )?;
            match tx.query_opt(&s, &[&name])? {
                Some(r) => r.get(0),
                None => create_room(tx, st, &name, nickname, lasts, logged)?,
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
    let text = format!("{nickname} 님이 입장하셨습니다");
    system_entry(tx, st, &room, &text, lasts, logged)?;
    Ok(JoinResult::Joined { room })
}

fn dm(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    msg: &NewMessage,
    to: &str,
    recipient_known: bool,
    queue: bool,
) -> Result<DmResult, DbError> {
    if !recipient_known {
        let s = st.get(
            tx,
            "SELECT 1 FROM room_members WHERE room_id = $1 AND username = $2",
        )?;
        if tx.query_opt(&s, &[&msg.room, &to])?.is_none() {
            return Ok(DmResult::RecipientNotInRoom);
        }
    }
    let s = st.get(
        tx,
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
         VALUES ($1, now(), 'dm', $2, $3, $4, $5) RETURNING id, ts",
    )?;
    let row = tx.query_one(
        &s,
        &[&msg.room, &msg.from, &msg.from_nickname, &to, &msg.text],
    )?;
    let (id, ts): (i64, SystemTime) = (row.get(0), row.get(1));
    if queue {
        queue_dm(tx, st, msg, to, id, ts)?;
    }
    Ok(DmResult::Stored {
        id,
        ts,
        queued: queue,
    })
}

fn queue_dm<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    msg: &NewMessage,
    to: &str,
    log_id: i64,
    at: SystemTime,
) -> Result<(), DbError> {
    let ins = st.get(
        c,
        "INSERT INTO klav_offline_dms \
            (recipient, room_id, log_id, from_user, from_nickname, text, sent_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )?;
    c.execute(
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
    let trim = st.get(
        c,
        "DELETE FROM klav_offline_dms WHERE recipient = $1 AND id <= \
         (SELECT id FROM klav_offline_dms WHERE recipient = $1 \
          ORDER BY id DESC OFFSET $2 LIMIT 1)",
    )?;
    c.execute(&trim, &[&to, &OFFLINE_QUEUE_CAP])?;
    Ok(())
}
