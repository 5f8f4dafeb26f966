//! PostgreSQL: the schema, typed jobs and their outcomes, the blocking worker
//! threads that run them, and the embedded cluster.
//!
//! The event loop never touches a database connection. It submits a [`Job`] with
//! [`Db::submit`] (a `try_send`: a full queue is an immediate `Unavailable`, never a
//! wait) and later receives a [`Completion`] on the shared completion channel,
//! after a [`Wakeup`] has woken its `poll`.
//!
//! Two kinds of threads serve jobs:
//! - `KLAV_DB_WORKERS` general workers for reads and independent writes;
//! - one *writer* for everything that appends to `chat_logs` or changes room
//!   membership. A single writer makes commit order = id order = delivery order,
//!   and lets it group-commit: it takes every pending job from its queue and writes
//!   them in one transaction (consecutive messages in one multi-row INSERT).
//!
//! This file holds only the handle that starts and feeds them ([`Db`]). The rest:
//! - `jobs`, `entry`: what the loop asks and what comes back; `error`: [`DbError`];
//! - `pool`: connection settings and names, the shared pool, and the
//!   circuit breaker that answers at once while PostgreSQL is down;
//! - `setup`: `schema.sql`, applied by one node at a time;
//! - `wakeup`: how finished jobs reach the loop ([`CompletionSink`], [`Wakeup`]);
//! - `worker` and `queries`: the general workers and each job's SQL, by family;
//! - `writer`: the ordered writer, by concern;
//! - `rows`: the statement cache and rows turned into entries and names;
//! - `tickets`: WebSocket tickets; `offline_queue`: who loses a DM when a queue is full;
//! - `outbox`: the webhook events a transaction reports, stored with it;
//! - `nodes`, `notify`: the cluster's tables, and the notes transactions send it;
//! - `embedded`: the embedded PostgreSQL cluster;
//! - `api_keys`: the server API's keys (`klav api-key`, and the check of one).

/// The columns [`queries::entry_from_row`] reads, in its order (a macro so that
/// statements stay `&'static str` for the prepared-statement cache).
macro_rules! entry_columns {
    () => {
        "id, ts, kind, room_id, from_user, from_nickname, to_user, text, \
         client_id, edited_at, deleted, klav_deleted_by"
    };
}

pub mod api_keys;
pub mod embedded;
pub mod entry;
mod error;
pub mod jobs;
pub mod nodes;
pub mod notify;
pub mod offline_queue;
pub mod outbox;
mod pool;
pub mod queries;
pub mod rows;
mod setup;
pub mod tickets;
mod wakeup;
mod worker;
mod writer;

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use pool::{build_pool, Health, Source};

pub use crate::ticket::QueueFull;
pub use error::DbError;
pub use jobs::{Completion, Job, Outcome, Ticket};
pub use pool::{application_name, pg_config, Pool};
pub use setup::{apply_schema, SCHEMA_SQL};
pub use wakeup::{CompletionSink, Wakeup};
pub use writer::{new_room_id, WriterStats};

/// Jobs waiting for a general worker before submissions are refused.
const QUEUE_CAPACITY: usize = 16_384;

/// The loop's handle on the database threads.
pub struct Db {
    general: Sender<(Ticket, Job)>,
    writer: Sender<(Ticket, Job)>,
    threads: Vec<JoinHandle<()>>,
    health: Arc<Health>,
    pub stats: Arc<WriterStats>,
    /// With webhooks on, the outbox (its delivery figures for `/metrics`).
    pub outbox: Option<Arc<outbox::Outbox>>,
}

/// Settings for [`Db::start`].
pub struct DbSettings {
    pub url: String,
    /// This node's name, in its connections' `application_name`.
    pub node: String,
    pub workers: usize,
    /// The general workers' `statement_timeout` (zero: none).
    pub statement_timeout: std::time::Duration,
    pub batch: usize,
    /// What seals this node's notifications when it shares the database with
    /// other nodes: its writes then notify them (see `notify`).
    pub bus: Option<Arc<dyn notify::Notifier>>,
    /// With webhooks on, where transactions put the events they report.
    pub outbox: Option<Arc<outbox::Outbox>>,
}

impl Db {
    /// Applies the schema (failing start-up clearly if PostgreSQL is unreachable),
    /// then starts the workers and the writer.
    pub fn start(settings: &DbSettings, sink: CompletionSink) -> Result<Db, DbError> {
        let pg = pg_config(&settings.url, &application_name(&settings.node, "schema"))?;
        apply_schema(&pg)?;

        // Renamed by each thread that takes one (see `Health::get`): the
        // threads share the pool, and a connection may change hands.
        let pg = pg_config(&settings.url, &application_name(&settings.node, "pool"))?;
        let pool = build_pool(pg, settings.workers as u32 + 2);
        let health = Arc::new(Health::new());

        let (general_tx, general_rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let (writer_tx, writer_rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let mut threads = Vec::new();
        for i in 0..settings.workers {
            let (pool, rx, sink, health, bus, outbox) = (
                pool.clone(),
                general_rx.clone(),
                sink.clone(),
                health.clone(),
                settings.bus.clone(),
                settings.outbox.clone(),
            );
            let source = Source::new(
                pool,
                application_name(&settings.node, &format!("worker {i}")),
                settings.statement_timeout,
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("klav-db-{i}"))
                    .spawn(move || worker::run(source, rx, sink, health, bus, outbox))
                    .expect("spawn database worker"),
            );
        }
        let batch = settings.batch;
        let node = settings.node.clone();
        let reports = writer::Reporters {
            bus: settings.bus.clone(),
            outbox: settings.outbox.clone(),
        };
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        let health_for_db = health.clone();
        let writer_rx: Receiver<(Ticket, Job)> = writer_rx;
        // No statement timeout: a batch cut off would fail every write in it.
        let source = Source::new(
            pool,
            application_name(&settings.node, "writer"),
            std::time::Duration::ZERO,
        );
        threads.push(
            std::thread::Builder::new()
                .name("klav-db-writer".into())
                .spawn(move || {
                    let settings = writer::Settings {
                        max_batch: batch,
                        node,
                    };
                    writer::run(
                        source,
                        writer_rx,
                        sink,
                        health,
                        settings,
                        reports,
                        writer_stats,
                    )
                })
                .expect("spawn database writer"),
        );
        Ok(Db {
            general: general_tx,
            writer: writer_tx,
            threads,
            health: health_for_db,
            stats,
            outbox: settings.outbox.clone(),
        })
    }

    /// Queues a job without waiting; when the queue is full (or the workers are
    /// gone) the caller answers `Unavailable`.
    pub fn submit(&self, ticket: Ticket, job: Job) -> Result<(), QueueFull> {
        let tx = if job.is_ordered_write() {
            &self.writer
        } else {
            &self.general
        };
        tx.try_send((ticket, job)).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }

    /// Jobs waiting for a thread (for metrics).
    pub fn queue_depth(&self) -> usize {
        self.general.len() + self.writer.len()
    }

    /// Stops the threads: a batch being written is finished, jobs still queued are
    /// dropped (the loop has already waited, within the shutdown deadline, for
    /// everything it accepted), so shutdown time stays bounded under overload.
    pub fn shutdown(self) {
        self.health.stop();
        drop(self.general);
        drop(self.writer);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
