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

/// The columns [`queries::entry_from_row`] reads, in its order (a macro so that
/// statements stay `&'static str` for the prepared-statement cache).
macro_rules! entry_columns {
    () => {
        "id, ts, kind, room_id, from_user, from_nickname, to_user, text, \
         client_id, edited_at, deleted"
    };
}

pub mod embedded;
pub mod entry;
pub mod jobs;
pub mod nodes;
pub mod notify;
pub mod offline_queue;
pub mod queries;
pub mod rows;
pub mod tickets;
mod worker;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

pub use jobs::{Completion, Job, Outcome, Ticket};
pub use writer::new_room_id;

/// The schema, applied at every start; see `schema.sql`.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Where a database thread takes its connection from, and the
/// `application_name` it gives the connection while it holds it.
pub(crate) struct Source {
    pool: Pool,
    name: String,
}

/// How long a worker waits for a connection before answering `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// While PostgreSQL is down, at most one job per this interval tries to reconnect;
/// the others fail at once instead of each waiting [`CONNECT_TIMEOUT`].
const PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// Jobs waiting for a general worker before submissions are refused.
const QUEUE_CAPACITY: usize = 16_384;

/// A database failure, as the loop needs to tell it apart.
#[derive(Debug)]
pub enum DbError {
    /// PostgreSQL cannot be reached (down, restarting, pool exhausted, queue full).
    /// Nothing was stored.
    Unavailable(String),
    /// PostgreSQL answered with an error (a bug or a constraint): nothing stored.
    Query(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Unavailable(why) => write!(f, "database unavailable: {why}"),
            DbError::Query(why) => write!(f, "database error: {why}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            // A server-side error on a live connection, except the ones a shutdown
            // or restart produces, which mean "not reachable right now".
            Some(db) if !db.code().code().starts_with("57P") => {
                DbError::Query(db.message().to_string())
            }
            _ => DbError::Unavailable(e.to_string()),
        }
    }
}

pub use crate::ticket::QueueFull;

/// Wakes the event loop when completions are waiting, at most once per drain:
/// workers set the flag and only the one that flips it pays for the syscall.
pub struct Wakeup {
    waker: mio::Waker,
    pending: AtomicBool,
}

impl Wakeup {
    pub fn new(waker: mio::Waker) -> Wakeup {
        Wakeup {
            waker,
            pending: AtomicBool::new(false),
        }
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Called by the loop before it drains the completion channel.
    pub fn reset(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

/// Where workers send finished jobs.
#[derive(Clone)]
pub struct CompletionSink {
    tx: Sender<Completion>,
    wakeup: Arc<Wakeup>,
}

impl CompletionSink {
    pub fn new(tx: Sender<Completion>, wakeup: Arc<Wakeup>) -> CompletionSink {
        CompletionSink { tx, wakeup }
    }

    pub fn send(&self, c: Completion) {
        // The loop outlives the workers; a send can only fail during shutdown.
        if self.tx.send(c).is_ok() {
            self.wakeup.wake();
        }
    }
}

/// Whether PostgreSQL answered lately, shared by all workers (a circuit breaker).
pub(crate) struct Health {
    /// Set at shutdown: jobs still queued are dropped, not run (their requests were
    /// never answered, and their connections are closing).
    stopping: AtomicBool,
    down: AtomicBool,
    last_probe_ms: AtomicU64,
    epoch: Instant,
}

impl Health {
    fn new() -> Health {
        Health {
            stopping: AtomicBool::new(false),
            down: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Checks out a connection for a thread, named after it from now on, or
    /// fails fast while PostgreSQL is known down.
    pub(crate) fn get(
        &self,
        source: &Source,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, DbError> {
        let mut conn = self.checkout(&source.pool)?;
        conn.execute(
            "SELECT set_config('application_name', $1, false)",
            &[&source.name],
        )?;
        Ok(conn)
    }

    fn checkout(
        &self,
        pool: &Pool,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, DbError> {
        if self.down.load(Ordering::Acquire) {
            let now = self.epoch.elapsed().as_millis() as u64;
            let last = self.last_probe_ms.load(Ordering::Acquire);
            if now.saturating_sub(last) < PROBE_INTERVAL.as_millis() as u64
                || self
                    .last_probe_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return Err(DbError::Unavailable("PostgreSQL is not answering".into()));
            }
        }
        match pool.get() {
            Ok(mut conn) => {
                if conn.is_closed() {
                    // Broken by a restart: let r2d2 drop it and try a fresh one.
                    drop(conn);
                    conn = pool.get().map_err(|e| self.failed(e.to_string()))?;
                }
                self.up();
                Ok(conn)
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    pub(crate) fn failed(&self, why: String) -> DbError {
        if !self.down.swap(true, Ordering::AcqRel) {
            crate::log!(Warn, "PostgreSQL unavailable: {why}");
        }
        self.last_probe_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        DbError::Unavailable(why)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Records the outcome of a job: a connection-level failure opens the breaker
    /// if it was closed. (Answers refused by the open breaker itself must not
    /// count as probes, or steady traffic would postpone the next probe forever.)
    pub(crate) fn observe<T>(&self, r: Result<T, DbError>) -> Result<T, DbError> {
        match r {
            Err(DbError::Unavailable(why)) if !self.down.load(Ordering::Acquire) => {
                Err(self.failed(why))
            }
            other => other,
        }
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            crate::log!(Info, "PostgreSQL is answering again");
        }
    }
}

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

/// The loop's handle on the database threads.
pub struct Db {
    general: Sender<(Ticket, Job)>,
    writer: Sender<(Ticket, Job)>,
    threads: Vec<JoinHandle<()>>,
    health: Arc<Health>,
    pub stats: Arc<WriterStats>,
}

/// Settings for [`Db::start`].
pub struct DbSettings {
    pub url: String,
    /// This node's name, in its connections' `application_name`.
    pub node: String,
    pub workers: usize,
    pub batch: usize,
    /// What seals this node's notifications when it shares the database with
    /// other nodes: its writes then notify them (see `notify`).
    pub bus: Option<Arc<dyn notify::Notifier>>,
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
        let manager = PostgresConnectionManager::new(pg, NoTls);
        let pool: Pool = r2d2::Pool::builder()
            .max_size(settings.workers as u32 + 2)
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        let health = Arc::new(Health::new());

        let (general_tx, general_rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let (writer_tx, writer_rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let mut threads = Vec::new();
        for i in 0..settings.workers {
            let (pool, rx, sink, health, bus) = (
                pool.clone(),
                general_rx.clone(),
                sink.clone(),
                health.clone(),
                settings.bus.clone(),
            );
            let source = Source {
                pool,
                name: application_name(&settings.node, &format!("worker {i}")),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("klav-db-{i}"))
                    .spawn(move || worker::run(source, rx, sink, health, bus))
                    .expect("spawn database worker"),
            );
        }
        let batch = settings.batch;
        let bus = settings.bus.clone();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        let health_for_db = health.clone();
        let writer_rx: Receiver<(Ticket, Job)> = writer_rx;
        let source = Source {
            pool,
            name: application_name(&settings.node, "writer"),
        };
        threads.push(
            std::thread::Builder::new()
                .name("klav-db-writer".into())
                .spawn(move || {
                    writer::run(source, writer_rx, sink, health, batch, bus, writer_stats)
                })
                .expect("spawn database writer"),
        );
        Ok(Db {
            general: general_tx,
            writer: writer_tx,
            threads,
            health: health_for_db,
            stats,
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
        self.health.stopping.store(true, Ordering::Release);
        drop(self.general);
        drop(self.writer);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The connection settings every klav connection uses: a bounded connect, TCP
/// keepalives so that a connection to a vanished server is noticed, and
/// `name` as its `application_name` (see [`application_name`]).
pub fn pg_config(url: &str, name: &str) -> Result<postgres::Config, DbError> {
    let mut pg: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| DbError::Query(e.to_string()))?;
    pg.connect_timeout(CONNECT_TIMEOUT * 2);
    pg.application_name(name);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(5));
    Ok(pg)
}

/// Longest `application_name` PostgreSQL keeps (`NAMEDATALEN - 1`).
const APPLICATION_NAME_MAX: usize = 63;

/// `klav <node> <role>`: what a connection shows in `pg_stat_activity`, so
/// that an operator can tell the nodes' connections apart and terminate one
/// (`pg_terminate_backend`). The role stays whole; a long node name is cut at
/// a character boundary to fit PostgreSQL's 63 bytes.
pub fn application_name(node: &str, role: &str) -> String {
    let around = "klav ".len() + 1 + role.len();
    let node = match APPLICATION_NAME_MAX.checked_sub(around) {
        Some(room) if room > 0 => cut(node, room),
        // A role that long (none is) is what gets cut.
        _ => node,
    };
    cut(&format!("klav {node} {role}"), APPLICATION_NAME_MAX).to_string()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Runs `schema.sql` in one transaction.
pub fn apply_schema(pg: &postgres::Config) -> Result<(), DbError> {
    let mut client = pg
        .connect(NoTls)
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    let mut tx = client.transaction()?;
    tx.batch_execute(SCHEMA_SQL)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_keep_the_role_and_fit_postgres() {
        assert_eq!(application_name("n0", "worker 2"), "klav n0 worker 2");
        let long = "n".repeat(100);
        let name = application_name(&long, "listener");
        assert_eq!(name.len(), APPLICATION_NAME_MAX);
        assert!(name.starts_with("klav nnn") && name.ends_with("n listener"));
        // A node name of two-byte characters is cut between them.
        let name = application_name(&"é".repeat(40), "worker 11");
        assert!(name.len() <= APPLICATION_NAME_MAX, "{name}");
        assert!(name.ends_with("é worker 11"), "{name}");
        // Even a role too long for the limit gives a valid name.
        let name = application_name("n0", &"ü".repeat(40));
        assert!(name.len() <= APPLICATION_NAME_MAX && name.starts_with("klav n0 ü"));
    }
}
