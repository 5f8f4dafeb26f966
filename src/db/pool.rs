//! How the database threads reach PostgreSQL: the connection settings every
//! klav connection uses and the `application_name` it shows, the shared r2d2
//! [`Pool`] (which never hands out again a session found on a read-only
//! server), the [`Source`] each thread checks out from, and [`Health`], the
//! circuit breaker that answers at once while PostgreSQL is down. Separate from [`Db`](super::Db), which only starts and
//! feeds the threads.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::error::DbError;

pub type Pool = r2d2::Pool<Manager>;

/// A connection checked out of the [`Pool`].
pub(crate) type Conn = r2d2::PooledConnection<Manager>;

/// A pooled PostgreSQL session, and whether it must not be used again.
pub struct Session {
    client: postgres::Client,
    /// Set when the session failed as an outage does while its socket stayed
    /// open: the server became a read-only standby (a demoted primary after a
    /// failover), or is shutting down. The pool then drops it instead of
    /// handing it out again, and the next checkout connects afresh — with a
    /// multi-host `DATABASE_URL` and `target_session_attrs=read-write`, to
    /// whichever host is the writable primary now.
    discard: bool,
}

impl Deref for Session {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// r2d2_postgres's manager, which connects the pool's sessions with the
/// settings of [`pg_config`] and checks them, plus the one thing it cannot
/// know: a session marked by [`discard`] is broken even though its socket is open.
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Session;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Session, postgres::Error> {
        Ok(Session {
            client: self.inner.connect()?,
            discard: false,
        })
    }

    fn is_valid(&self, s: &mut Session) -> Result<(), postgres::Error> {
        self.inner.is_valid(&mut s.client)
    }

    fn has_broken(&self, s: &mut Session) -> bool {
        s.discard || self.inner.has_broken(&mut s.client)
    }
}

/// Lets go of a thread's connection after it failed as in an outage
/// ([`DbError::Unavailable`]): never back into the pool (see
/// [`Session::discard`]).
pub(crate) fn discard(conn: Option<Conn>) {
    if let Some(mut c) = conn {
        c.discard = true;
    }
}

/// Where a database thread takes its connection from, and the
/// `application_name` and `statement_timeout` it gives the connection while it
/// holds it.
pub(crate) struct Source {
    pool: Pool,
    name: String,
    /// `statement_timeout` in PostgreSQL's syntax (`"0"`: none).
    statement_timeout: String,
}

impl Source {
    pub(super) fn new(pool: Pool, name: String, statement_timeout: Duration) -> Source {
        Source {
            pool,
            name,
            statement_timeout: format!("{}ms", statement_timeout.as_millis()),
        }
    }
}

/// How long a worker waits for a connection before answering `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// While PostgreSQL is down, at most one job per this interval tries to reconnect;
/// the others fail at once instead of each waiting [`CONNECT_TIMEOUT`].
const PROBE_INTERVAL: Duration = Duration::from_millis(300);

/// The pool the database threads share: `size` connections at most, none kept
/// idle, a checkout bounded by [`CONNECT_TIMEOUT`]; nothing is connected yet.
pub(super) fn build_pool(pg: postgres::Config, size: u32) -> Pool {
    let manager = Manager {
        inner: PostgresConnectionManager::new(pg, NoTls),
    };
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(CONNECT_TIMEOUT)
        .test_on_check_out(false)
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(manager)
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
    pub(super) fn new() -> Health {
        Health {
            stopping: AtomicBool::new(false),
            down: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Checks out a connection for a thread, named after it and with its
    /// statement timeout from now on (one round trip for both), or fails fast
    /// while PostgreSQL is known down.
    pub(crate) fn get(&self, source: &Source) -> Result<Conn, DbError> {
        let mut conn = self.checkout(&source.pool)?;
        conn.execute(
            "SELECT set_config('application_name', $1, false), \
                    set_config('statement_timeout', $2, false)",
            &[&source.name, &source.statement_timeout],
        )?;
        Ok(conn)
    }

    fn checkout(&self, pool: &Pool) -> Result<Conn, DbError> {
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

    /// From now on jobs still queued are dropped, not run (see `stopping`).
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
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
