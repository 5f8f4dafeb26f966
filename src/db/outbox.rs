//! The webhook outbox as the writing threads see it: the events a transaction
//! reports, built as it works and inserted with one statement before it
//! commits, so that an event exists exactly when what it reports does.
//!
//! Only when `KLAV_WEBHOOK_URL` is set: a transaction then carries an
//! [`Events`] list; otherwise `None`, and nothing is built or written.
//! Delivery (claims, retries, dead letters) is `webhooks`' business; this
//! module only adds rows, and wakes the delivery threads once they are
//! committed ([`Signal`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use postgres::GenericClient;
use serde_json::{json, Value};

use super::error::DbError;
use super::rows::Stmts;

/// One event to report, not yet stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `message.created`, `dm.queued`, `room.member_joined`, …
    pub kind: &'static str,
    pub room: Option<String>,
    /// What delivery keeps in order (see `schema.sql`): the room, the
    /// recipient of a queued DM, or the user.
    pub order_key: String,
    /// The event's `data`.
    pub data: Value,
}

/// A transaction's events, in the order it wrote what they report.
pub type Events = Vec<Event>;

/// How a member left a room, for `room.member_left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure<'a> {
    /// `leave`, or their account's deletion.
    Left,
    /// Removed by a moderator (`by`), banned or not.
    Removed { by: &'a str, banned: bool },
}

/// `message.created`: a room message stored, a member's or one the server API
/// posted (`kind` `msg`, or `system` for an announcement); DMs and the
/// joined/left entries are not reported so.
#[allow(clippy::too_many_arguments)]
pub fn message_created(
    kind: &str,
    room: &str,
    id: i64,
    ts: SystemTime,
    from: &str,
    from_nickname: &str,
    text: &str,
    client_id: Option<&str>,
) -> Event {
    Event {
        kind: "message.created",
        room: Some(room.to_string()),
        order_key: room.to_string(),
        data: json!({
            "room_id": room,
            "message_id": id,
            "ts": crate::time::format_iso(ts),
            "kind": kind,
            "from": from,
            "from_nickname": from_nickname,
            "text": text,
            "client_id": client_id,
        }),
    }
}

/// What [`dm_queued`] reports: a DM stored for a recipient connected nowhere.
pub struct QueuedDm<'a> {
    pub room: &'a str,
    pub id: i64,
    pub ts: SystemTime,
    pub from: &'a str,
    pub from_nickname: &'a str,
    pub recipient: &'a str,
    pub text: &'a str,
}

/// `dm.queued`: the push-notification hook. Kept in order per recipient.
pub fn dm_queued(q: &QueuedDm<'_>) -> Event {
    Event {
        kind: "dm.queued",
        room: Some(q.room.to_string()),
        order_key: format!("dm:{}", q.recipient),
        data: json!({
            "room_id": q.room,
            "message_id": q.id,
            "ts": crate::time::format_iso(q.ts),
            "recipient": q.recipient,
            "from": q.from,
            "from_nickname": q.from_nickname,
            "text": q.text,
        }),
    }
}

/// `room.member_joined`.
pub fn member_joined(room: &str, user: &str, nickname: &str) -> Event {
    Event {
        kind: "room.member_joined",
        room: Some(room.to_string()),
        order_key: room.to_string(),
        data: json!({"room_id": room, "user": user, "user_nickname": nickname}),
    }
}

/// `room.member_left`, with `kicked`/`banned` (and the moderator, `by`) when
/// a moderator removed them.
pub fn member_left(room: &str, user: &str, nickname: &str, how: Departure<'_>) -> Event {
    let (kicked, banned, by) = match how {
        Departure::Left => (false, false, None),
        Departure::Removed { by, banned } => (!banned, banned, Some(by)),
    };
    Event {
        kind: "room.member_left",
        room: Some(room.to_string()),
        order_key: room.to_string(),
        data: json!({
            "room_id": room,
            "user": user,
            "user_nickname": nickname,
            "kicked": kicked,
            "banned": banned,
            "by": by,
        }),
    }
}

/// `user.registered`.
pub fn user_registered(user: &str, nickname: &str) -> Event {
    Event {
        kind: "user.registered",
        room: None,
        order_key: format!("user:{user}"),
        data: json!({"user": user, "nickname": nickname}),
    }
}

/// `user.deleted`; `erased`: their messages were emptied too.
pub fn user_deleted(user: &str, erased: bool) -> Event {
    Event {
        kind: "user.deleted",
        room: None,
        order_key: format!("user:{user}"),
        data: json!({"user": user, "erased": erased}),
    }
}

/// Stores `events` in one statement, their ids in list order (a room's
/// events are added while its row is locked, so ids follow the room's order).
pub fn insert<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    events: &[Event],
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let rooms: Vec<Option<&str>> = events.iter().map(|e| e.room.as_deref()).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.order_key.as_str()).collect();
    let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    let s = st.get(
        c,
        "INSERT INTO klav_webhook_outbox (type, room_id, order_key, payload) \
         SELECT k, r, o, p::jsonb \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
              WITH ORDINALITY AS u(k, r, o, p, n) \
         ORDER BY n",
    )?;
    c.execute(&s, &[&kinds, &rooms, &keys, &data])?;
    Ok(())
}

/// The outbox of a node with webhooks on, shared by the threads that write
/// events and those that deliver them.
#[derive(Default)]
pub struct Outbox {
    /// Raised once events are committed.
    pub signal: Signal,
    /// Events were inserted in a transaction not yet known to be committed.
    written: AtomicBool,
    /// What `/metrics` shows of delivery.
    pub stats: OutboxStats,
}

/// Delivery as `/metrics` shows it: attempts by outcome, counted by the
/// delivery threads, and the outbox's gauges, read by them every few seconds.
#[derive(Default)]
pub struct OutboxStats {
    /// Events waiting for delivery (not dead-lettered), cluster-wide.
    pub pending: AtomicU64,
    /// Age in seconds of the oldest of them (0 when none).
    pub oldest_pending_secs: AtomicU64,
    /// Events dead-lettered (kept until retried).
    pub dead: AtomicU64,
    /// Attempts answered 2xx, by status code.
    delivered: Mutex<BTreeMap<String, u64>>,
    /// Attempts that failed, by status code or `timeout`, `connect`, `error`.
    failed: Mutex<BTreeMap<String, u64>>,
}

/// Counts by status label, in label order.
pub type ByStatus = Vec<(String, u64)>;

impl OutboxStats {
    /// One attempt's outcome: `ok` a 2xx, `status` its label.
    pub fn attempt(&self, ok: bool, status: &str) {
        let map = if ok { &self.delivered } else { &self.failed };
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(status.to_string()).or_insert(0) += 1;
    }

    /// (delivered, failed) counts by status label.
    pub fn attempts(&self) -> (ByStatus, ByStatus) {
        let read = |m: &Mutex<BTreeMap<String, u64>>| {
            let m = m.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        (read(&self.delivered), read(&self.failed))
    }

    /// The gauges, as of the last read of the outbox.
    pub fn set_gauges(&self, pending: u64, oldest_secs: u64, dead: u64) {
        self.pending.store(pending, Ordering::Relaxed);
        self.oldest_pending_secs
            .store(oldest_secs, Ordering::Relaxed);
        self.dead.store(dead, Ordering::Relaxed);
    }
}

impl Outbox {
    /// Stores `events` in `c`'s transaction; [`committed`](Self::committed)
    /// wakes the delivery threads once it commits.
    pub fn insert<C: GenericClient>(
        &self,
        c: &mut C,
        st: &mut Stmts,
        events: &[Event],
    ) -> Result<(), DbError> {
        if events.is_empty() {
            return Ok(());
        }
        insert(c, st, events)?;
        self.written.store(true, Ordering::Release);
        Ok(())
    }

    /// A transaction committed: wakes the delivery threads if it held events
    /// (a rolled-back one only costs them one look).
    pub fn committed(&self) {
        if self.written.swap(false, Ordering::AcqRel) {
            self.signal.raise();
        }
    }
}

/// Wakes the delivery threads when events were committed, so that an event
/// goes out at once rather than at their next poll: a generation each waiter
/// compares with the one it saw last (every waiter wakes, not just one).
#[derive(Default)]
pub struct Signal {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    /// Events were committed.
    pub fn raise(&self) {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// The current generation, to wait from.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until raised since `seen` or `timeout` passed; `seen` becomes the
    /// generation now.
    pub fn wait(&self, seen: &mut u64, timeout: Duration) {
        let guard = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let (now, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |g| *g == *seen)
            .unwrap_or_else(|e| e.into_inner());
        *seen = *now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_left_flags() {
        let e = member_left("r_1", "bo", "Bo", Departure::Left);
        assert_eq!(e.data["kicked"], false);
        assert_eq!(e.data["banned"], false);
        assert!(e.data["by"].is_null());
        let e = member_left(
            "r_1",
            "bo",
            "Bo",
            Departure::Removed {
                by: "al",
                banned: false,
            },
        );
        assert_eq!(
            (e.data["kicked"].as_bool(), e.data["banned"].as_bool()),
            (Some(true), Some(false))
        );
        let e = member_left(
            "r_1",
            "bo",
            "Bo",
            Departure::Removed {
                by: "al",
                banned: true,
            },
        );
        assert_eq!(
            (e.data["kicked"].as_bool(), e.data["banned"].as_bool()),
            (Some(false), Some(true))
        );
        assert_eq!(e.data["by"], "al");
    }

    #[test]
    fn order_keys() {
        assert_eq!(user_registered("al", "Al").order_key, "user:al");
        let q = QueuedDm {
            room: "r_1",
            id: 5,
            ts: SystemTime::UNIX_EPOCH,
            from: "al",
            from_nickname: "Al",
            recipient: "bo",
            text: "hi",
        };
        assert_eq!(dm_queued(&q).order_key, "dm:bo");
        assert_eq!(member_joined("r_1", "al", "Al").order_key, "r_1");
    }
}
