//! Where a batch's entries sit in their rooms, and what the batch stores once,
//! at its end. The rooms it adds to are locked first, in id order, and their
//! newest entry ids read ([`lock_rooms`]); every entry is then linked to the
//! one before it in its room ([`Chain`]), with its note for the other nodes;
//! each room's last message ([`Last`]) and newest entry id are stored, and the
//! notes sent, just before COMMIT ([`update_lasts`], [`finish_chain`]).
//! Separate from the SQL of each job kind, which only adds to these.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use postgres::Transaction;

use super::commit::{record, Mark};
use super::stats::WriterStats;
use crate::db::entry::ChatEntry;
use crate::db::error::DbError;
use crate::db::jobs::{ChainLink, Job, JoinBy};
use crate::db::notify::{self, EntryRef, MemberOp, Notes, Notifier};
use crate::db::outbox::{Event, Events};
use crate::db::rows::{room_newest_entry, Stmts};

/// A room's newest entry in this batch, written to `rooms.last_message_*` at the
/// end. Borrowed from the batch's jobs where it can be: a message costs no copy.
pub(super) struct Last<'a> {
    pub(super) id: i64,
    pub(super) text: Cow<'a, str>,
    pub(super) from: &'a str,
    pub(super) kind: &'static str,
}

pub(super) type Lasts<'a> = HashMap<Cow<'a, str>, Last<'a>>;

/// What a batch's writes add to as they go: each room's newest entry (stored in
/// `rooms` once, at the end) and the rooms' entry chains.
pub(super) struct Batch<'a, 'n> {
    pub(super) lasts: Lasts<'a>,
    pub(super) chain: Chain<'n>,
}

impl<'n> Batch<'_, 'n> {
    /// A batch with nothing written yet; `bus`, in a cluster, takes its notes;
    /// with `webhooks`, it gathers the events it reports.
    pub(super) fn new(bus: Option<&'n dyn Notifier>, webhooks: bool) -> Self {
        Batch {
            lasts: HashMap::new(),
            chain: Chain {
                last: HashMap::new(),
                prevs: HashMap::new(),
                moved: HashSet::new(),
                notes: bus.map(|b| b.notes()),
                node: bus.map(|b| b.node().to_string()),
                events: webhooks.then(Vec::new),
            },
        }
    }
}

/// Per batch: each room's newest entry id as entries are added (the room's row
/// is locked first, see [`lock_rooms`]), what changed, and the notifications
/// for the other nodes (`None` when this node runs alone).
pub(super) struct Chain<'n> {
    pub(super) last: HashMap<String, i64>,
    /// Entry id → the entry before it in its room, for this batch's entries.
    prevs: HashMap<i64, i64>,
    moved: HashSet<String>,
    notes: Option<Box<dyn Notes + 'n>>,
    /// This node's name, in a cluster.
    pub(super) node: Option<String>,
    /// The webhook events of the batch, in the order of what they report
    /// (`None`: webhooks are off).
    pub(super) events: Option<Events>,
}

impl Chain<'_> {
    /// Records an entry added to `room`: returns the entry before it, and
    /// queues the entry's notification.
    pub(super) fn append(&mut self, e: &EntryRef<'_>, op: Option<&MemberOp>, queued: bool) -> i64 {
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
    pub(super) fn link(&self, logged: &[ChatEntry]) -> Option<ChainLink> {
        let (first, last) = (logged.first()?, logged.last()?);
        Some(ChainLink {
            room: first.room.clone(),
            prev: *self.prevs.get(&first.id)?,
            last: last.id,
        })
    }

    /// Adds a webhook event, when webhooks are on (built only then).
    pub(super) fn report(&mut self, event: impl FnOnce() -> Event) {
        if let Some(events) = &mut self.events {
            events.push(event());
        }
    }

    /// Adds a note for the other nodes, in a cluster.
    pub(super) fn note(&mut self, add: impl FnOnce(&mut dyn Notes)) {
        if let Some(notes) = &mut self.notes {
            add(notes.as_mut());
        }
    }
}

/// The existing rooms the batch's jobs add entries to (a room found by name or
/// created during the batch is locked when it is found).
pub(super) fn entry_rooms(jobs: &[&Job]) -> Vec<String> {
    let mut rooms: Vec<String> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Msg(m) => Some(m.room.clone()),
            Job::Dm { msg, .. } => Some(msg.room.clone()),
            Job::Leave { room, .. } => Some(room.clone()),
            Job::Admin(a) => Some(a.room().to_string()),
            Job::Join {
                by: JoinBy::Id(id) | JoinBy::Added(id),
                ..
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
pub(super) fn lock_rooms(
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
pub(super) fn finish_chain(
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
            notify::send(tx, st, &payloads)?;
        }
    }
    Ok(())
}

/// Stores each room's last message and the batch's mark (see `commit`), in
/// one statement when the batch has a last message (a batch of messages gains
/// no round trip), else the mark alone.
pub(super) fn update_lasts(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    lasts: Lasts<'_>,
    mark: &Mark<'_>,
) -> Result<(), DbError> {
    if lasts.is_empty() {
        return record(tx, st, mark);
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
        "WITH mark AS ( \
             INSERT INTO klav_writer_batches (writer, node, batch) VALUES ($6, $7, $8) \
             ON CONFLICT (writer) DO UPDATE SET batch = EXCLUDED.batch, updated_at = now()) \
         UPDATE rooms SET last_message_text = u.t, last_message_from = u.f, \
                last_message_kind = u.k, last_message_ts = now(), last_message_id = u.e \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
              AS u(id, t, f, k, e) \
         WHERE rooms.id = u.id",
    )?;
    tx.execute(
        &s,
        &[
            &ids,
            &texts,
            &froms,
            &kinds,
            &entry_ids,
            &mark.writer,
            &mark.node,
            &mark.batch,
        ],
    )?;
    Ok(())
}
