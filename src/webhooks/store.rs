//! The outbox's SQL on the delivery side: claiming runs of due events (one
//! run per order key, led by the key's oldest undelivered event), recording
//! each attempt, the gauges `/metrics` shows, pruning, and what the CLI lists
//! and replays. The rows are written by the transactions that report them
//! (`db::outbox`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use postgres::Client;

use crate::db::DbError;

/// The condition of an event still to deliver (the pending index's), for
/// the table as it is named or aliased.
macro_rules! pending {
    () => {
        "delivered_at IS NULL AND dead_at IS NULL"
    };
    ($t:literal) => {
        concat!($t, ".delivered_at IS NULL AND ", $t, ".dead_at IS NULL")
    };
}

/// How long a claim holds its events from other nodes' threads. A thread
/// renews it while it works through a run; a node killed mid-delivery leaves
/// its events to the others once it lapses (or to itself, restarted under
/// the same name, at once: see [`release_node`]).
pub const LEASE: Duration = Duration::from_secs(60);

/// Delivered events are kept this long (for inspection), then pruned.
const KEEP_DELIVERED: &str = "1 day";

/// An event claimed for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub order_key: String,
    pub created_at: SystemTime,
    /// The event's `data`, as JSON text.
    pub data: String,
}

impl Claimed {
    /// The POST body: `{"id","type","ts","data"}`; the same on every attempt.
    pub fn body(&self) -> String {
        format!(
            "{{\"id\":\"evt_{}\",\"type\":{},\"ts\":\"{}\",\"data\":{}}}",
            self.id,
            serde_json::Value::from(self.kind.as_str()),
            crate::time::format_iso(self.created_at),
            self.data
        )
    }
}

/// Claims up to `keys` order keys' runs of at most `run` events each, for
/// `node`, in one transaction. A key is taken only when its oldest undelivered
/// event is due (or, with `probe`, waiting out a backoff) and unclaimed, and
/// only together with that event: a run never starts after an event another
/// thread holds, so a key's events go out one at a time, in id order.
/// Rows another transaction has locked are skipped (`SKIP LOCKED`), never
/// waited for. Returns the runs, each in id order.
pub fn claim(
    c: &mut Client,
    node: &str,
    keys: i64,
    run: i64,
    probe: bool,
) -> Result<Vec<Vec<Claimed>>, DbError> {
    let mut tx = c.transaction()?;
    let candidates = tx.query(
        concat!(
            // Each order key with pending events, by a skip scan of the
            // pending index: as many probes as keys, however long the backlog.
            "WITH RECURSIVE keys(k) AS (\
                (SELECT order_key FROM klav_webhook_outbox WHERE ",
            pending!(),
            " ORDER BY order_key LIMIT 1) \
              UNION ALL \
                SELECT (SELECT order_key FROM klav_webhook_outbox WHERE ",
            pending!(),
            " AND order_key > keys.k ORDER BY order_key LIMIT 1) \
                FROM keys WHERE keys.k IS NOT NULL), ",
            // The keys whose oldest pending event is due (or, probing, waiting
            // out a backoff) and unclaimed.
            "due AS (\
                SELECT h.order_key FROM keys CROSS JOIN LATERAL (\
                    SELECT id, order_key, next_attempt_at, claimed_until \
                    FROM klav_webhook_outbox WHERE order_key = keys.k AND ",
            pending!(),
            " ORDER BY id LIMIT 1) h \
                WHERE keys.k IS NOT NULL \
                  AND (CASE WHEN $3 THEN h.next_attempt_at > now() \
                            ELSE h.next_attempt_at <= now() END) \
                  AND (h.claimed_until IS NULL OR h.claimed_until < now()) \
                ORDER BY CASE WHEN $3 THEN h.next_attempt_at END, h.id LIMIT $1), ",
            // Their first events, numbered from the head.
            "runs AS (\
                SELECT r.id, first_value(r.id) OVER w AS head, row_number() OVER w AS n \
                FROM due CROSS JOIN LATERAL (\
                    SELECT id, order_key FROM klav_webhook_outbox \
                    WHERE order_key = due.order_key AND ",
            pending!(),
            " ORDER BY id LIMIT $2) r \
                WINDOW w AS (PARTITION BY r.order_key ORDER BY r.id)) \
             SELECT id, head, n FROM runs"
        ),
        &[&keys, &run, &probe],
    )?;
    // Then the candidates are locked, by id: a statement of its own, so that
    // the lookup goes by the primary key whatever the planner believes of the
    // table's size (joined to the CTE, an outbox that grew since it was last
    // analyzed was scanned once per candidate: seconds per claim under a backlog).
    let ids: Vec<i64> = candidates.iter().map(|r| r.get(0)).collect();
    let place: HashMap<i64, (i64, i64)> = candidates
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let rows = tx.query(
        concat!(
            "SELECT id, type, order_key, created_at, payload::text FROM klav_webhook_outbox \
             WHERE id = ANY($1) AND ",
            pending!(),
            " AND (claimed_until IS NULL OR claimed_until < now()) \
             ORDER BY order_key, id \
             FOR UPDATE SKIP LOCKED"
        ),
        &[&ids],
    )?;
    // A key whose head this transaction did not lock (another thread holds
    // it, or delivered it meanwhile) is left alone entirely.
    let place_of = |id: i64| place.get(&id).copied().unwrap_or((0, 0));
    let heads: HashSet<i64> = rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .filter(|&id| place_of(id).0 == id)
        .collect();
    let mut runs: Vec<Vec<Claimed>> = Vec::new();
    for r in rows {
        let (head, n) = place_of(r.get(0));
        if !heads.contains(&head) {
            continue;
        }
        let e = Claimed {
            id: r.get(0),
            kind: r.get(1),
            order_key: r.get(2),
            created_at: r.get(3),
            data: r.get(4),
        };
        match runs.last_mut() {
            // Consecutive within a key: rows come ordered by key, then id.
            Some(last) if last[0].order_key == e.order_key => {
                // A gap (an event of the key skipped as locked) ends the run:
                // what follows it must wait for it.
                if n == last.len() as i64 + 1 {
                    last.push(e);
                }
            }
            _ => runs.push(vec![e]),
        }
    }
    let ids: Vec<i64> = runs.iter().flatten().map(|e| e.id).collect();
    if !ids.is_empty() {
        tx.execute(
            "UPDATE klav_webhook_outbox SET claimed_by = $2, \
                    claimed_until = now() + $3 * interval '1 second' \
             WHERE id = ANY($1)",
            &[&ids, &node, &(LEASE.as_secs() as f64)],
        )?;
    }
    tx.commit()?;
    Ok(runs)
}

/// Extends the claim on `ids` (the rest of a run still being delivered).
pub fn renew(c: &mut Client, node: &str, ids: &[i64]) -> Result<(), DbError> {
    c.execute(
        "UPDATE klav_webhook_outbox SET claimed_until = now() + $3 * interval '1 second' \
         WHERE id = ANY($1) AND claimed_by = $2 AND delivered_at IS NULL",
        &[&ids, &node, &(LEASE.as_secs() as f64)],
    )?;
    Ok(())
}

/// Gives up the claim on `ids` (the rest of a run after a failure, which
/// waits behind its head anyway).
pub fn release(c: &mut Client, node: &str, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    c.execute(
        "UPDATE klav_webhook_outbox SET claimed_by = NULL, claimed_until = NULL \
         WHERE id = ANY($1) AND claimed_by = $2 AND delivered_at IS NULL",
        &[&ids, &node],
    )?;
    Ok(())
}

/// Releases every claim `node` holds: called at start, when they can only be
/// those of this node's previous life (killed mid-delivery).
pub fn release_node(c: &mut Client, node: &str) -> Result<u64, DbError> {
    Ok(c.execute(
        "UPDATE klav_webhook_outbox SET claimed_by = NULL, claimed_until = NULL \
         WHERE claimed_by = $1 AND delivered_at IS NULL",
        &[&node],
    )?)
}

/// The receiver answered 2xx to each of `done` (id, status): one statement
/// for the outcomes a claim's senders reported together.
pub fn delivered_all(c: &mut Client, done: &[(i64, u16)]) -> Result<(), DbError> {
    if done.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = done.iter().map(|d| d.0).collect();
    let statuses: Vec<i32> = done.iter().map(|d| i32::from(d.1)).collect();
    c.execute(
        "UPDATE klav_webhook_outbox o SET delivered_at = now(), attempts = attempts + 1, \
                last_status = d.status, last_error = NULL, claimed_by = NULL, claimed_until = NULL \
         FROM unnest($1::int8[], $2::int4[]) AS d(id, status) WHERE o.id = d.id",
        &[&ids, &statuses],
    )?;
    Ok(())
}

/// An attempt failed: the next one after the backoff (1 s, doubling with each
/// attempt, at most [`MAX_BACKOFF_SECS`]); dead-lettered once its
/// `give_up_at` (24 hours after it was written, or retried) has passed.
/// Returns whether it was dead-lettered.
pub fn failed(c: &mut Client, id: i64, status: Option<u16>, error: &str) -> Result<bool, DbError> {
    let row = c.query_one(
        "UPDATE klav_webhook_outbox SET attempts = attempts + 1, \
                last_status = $2, last_error = left($3, 500), \
                claimed_by = NULL, claimed_until = NULL, \
                next_attempt_at = now() + least(power(2, least(attempts, 20)), $4) * interval '1 second', \
                dead_at = CASE WHEN give_up_at < now() THEN now() END \
         WHERE id = $1 RETURNING dead_at IS NOT NULL",
        &[&id, &status.map(i32::from), &error, &(MAX_BACKOFF_SECS as f64)],
    )?;
    Ok(row.get(0))
}

/// The longest wait between two attempts of one event.
pub const MAX_BACKOFF_SECS: u64 = 3600;

/// The receiver answered again after failures: every event waiting out a
/// backoff is due now, so that its backlog drains at once rather than at each
/// event's next attempt (up to an hour away).
pub fn receiver_back(c: &mut Client) -> Result<u64, DbError> {
    Ok(c.execute(
        "UPDATE klav_webhook_outbox SET next_attempt_at = now() \
         WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at > now()",
        &[],
    )?)
}

/// (pending, age in seconds of the oldest pending, dead-lettered).
pub fn gauges(c: &mut Client) -> Result<(u64, u64, u64), DbError> {
    let r = c.query_one(
        "SELECT p.n, p.age, (SELECT count(*) FROM klav_webhook_outbox WHERE dead_at IS NOT NULL) \
         FROM (SELECT count(*) AS n, \
                      COALESCE(extract(epoch FROM now() - min(created_at)), 0)::int8 AS age \
               FROM klav_webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL) p",
        &[],
    )?;
    let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    Ok((n(0), n(1), n(2)))
}

/// Deletes delivered events older than a day, a bounded number at a time.
pub fn prune(c: &mut Client) -> Result<u64, DbError> {
    Ok(c.execute(
        &format!(
            "DELETE FROM klav_webhook_outbox WHERE id IN (\
                SELECT id FROM klav_webhook_outbox \
                WHERE delivered_at < now() - interval '{KEEP_DELIVERED}' LIMIT 10000)"
        ),
        &[],
    )?)
}

/// A dead-lettered event, as `klav webhooks failed` lists it.
pub struct Dead {
    pub id: i64,
    pub kind: String,
    pub created_at: SystemTime,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// Every dead-lettered event, oldest first.
pub fn list_dead(c: &mut Client) -> Result<Vec<Dead>, DbError> {
    Ok(c.query(
        "SELECT id, type, created_at, attempts, last_status, last_error \
             FROM klav_webhook_outbox WHERE dead_at IS NOT NULL ORDER BY id",
        &[],
    )?
    .into_iter()
    .map(|r| Dead {
        id: r.get(0),
        kind: r.get(1),
        created_at: r.get(2),
        attempts: r.get(3),
        last_status: r.get(4),
        last_error: r.get(5),
    })
    .collect())
}

/// Makes dead-lettered events due again (`id`: that one; `None`: all), with
/// a fresh count of attempts; they are given up again 24 hours after this.
/// Returns how many.
pub fn retry(c: &mut Client, id: Option<i64>) -> Result<u64, DbError> {
    Ok(c.execute(
        "UPDATE klav_webhook_outbox SET dead_at = NULL, attempts = 0, \
                next_attempt_at = now(), give_up_at = now() + interval '24 hours' \
         WHERE dead_at IS NOT NULL AND ($1::int8 IS NULL OR id = $1)",
        &[&id],
    )?)
}
