//! Starting a server: listeners bound, the database prepared (and, in a
//! cluster, this node registered and listening), the worker pools started,
//! and the loop's thread running; [`Running`] is the handle that stops it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Interest, Poll};

use super::deadlines::Timers;
use super::event_loop::{Server, LISTENER, METRICS_LISTENER, WAKER};
use super::put_off::PutOff;
use crate::auth::jwt::Tokens;
use crate::auth::password::HashPool;
use crate::cluster::bus::{BusDropped, BusKey, Sealer};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::conns::Conns;
use crate::db::{Completion, CompletionSink, Db, DbError, DbSettings, Wakeup};
use crate::history_cache::HistoryCache;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::services::{Budgets, Services};
use crate::state::State;
use crate::turn::Turn;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, io::Error),
    Address(String),
    Io(io::Error),
    Db(DbError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Address(a) => write!(f, "invalid listen address {a}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Db(e) => write!(f, "cannot prepare the database: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A server running on its own thread.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `KLAV_METRICS_ADDR` is set.
    pub metrics_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Asks for a graceful shutdown (returns at once).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wakeup.wake();
    }

    /// Waits until the server has shut down.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Graceful shutdown, then wait for it.
    pub fn stop(self) {
        self.request_stop();
        self.join();
    }

    /// Whether the loop thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            self.wakeup.wake();
            let _ = t.join();
        }
    }
}

/// Binds, connects to the database (applying the schema) and starts the loop.
pub fn start(config: Config, database_url: &str, jwt_secret: &[u8]) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let poll = Poll::new().map_err(StartError::Io)?;
    let (listener, local) = bind(&poll, &config)?;
    let (metrics_listener, metrics_local) = bind_metrics(&poll, &config)?;
    let waker = mio::Waker::new(poll.registry(), WAKER).map_err(StartError::Io)?;
    let wakeup = Arc::new(Wakeup::new(waker));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let sink = CompletionSink::new(done_tx, wakeup.clone());

    let node = config
        .node_name
        .clone()
        .unwrap_or_else(|| crate::cluster::default_node_name(local.port()));
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).expect("the OS random source failed");
    let incarnation = i64::from_le_bytes(seed) & i64::MAX;
    let clustered = config.clustered();
    let bus_key = BusKey::derive(jwt_secret);
    let sealer = clustered.then(|| Arc::new(Sealer::new(bus_key.clone(), &node, incarnation)));
    let bus_dropped = Arc::new(BusDropped::default());
    let outbox = config
        .webhook
        .is_some()
        .then(|| Arc::new(crate::db::outbox::Outbox::default()));
    let db = Db::start(
        &DbSettings {
            url: database_url.to_string(),
            node: node.clone(),
            workers: config.db_workers,
            statement_timeout: config.statement_timeout,
            batch: config.db_batch,
            bus: sealer
                .clone()
                .map(|s| s as Arc<dyn crate::db::notify::Notifier>),
            outbox: outbox.clone(),
        },
        sink.clone(),
    )
    .map_err(StartError::Db)?;
    let webhooks = match (&config.webhook, outbox) {
        (Some(hooks), Some(outbox)) => {
            Some(crate::webhooks::start(hooks, database_url, &node, outbox))
        }
        _ => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bus = match &sealer {
        Some(sealer) => {
            let me = Member {
                database_url,
                node: &node,
                incarnation,
                sealer,
            };
            Some(join_cluster(
                &me,
                &config,
                bus_key,
                bus_dropped.clone(),
                sink.clone(),
                stop.clone(),
            )?)
        }
        None => None,
    };
    let hasher = HashPool::start(config.hash_workers, move |ticket, outcome| {
        sink.send(Completion::Hash(ticket, outcome))
    });
    let mut cluster = Cluster::new(clustered, node, incarnation);
    cluster.bus_dropped = bus_dropped;
    let hub = hub(config, db, hasher, jwt_secret, cluster);
    let server = Server {
        poll,
        listener: Some(listener),
        metrics_listener,
        hub,
        bus,
        sealer,
        database_url: database_url.to_string(),
        webhooks,
        completions: done_rx,
        wakeup: wakeup.clone(),
        stop: stop.clone(),
        next_gen: 1,
        accept_paused_until: None,
        timers: Timers::default(),
        draining: false,
        trim_mark: (0, 0),
        trimmed_at: Instant::now(),
        accept_more: false,
        put_off: PutOff::default(),
        input_held: 0,
        turn: Turn::new(Instant::now()),
        others_ready: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("klav-loop".into())
        .spawn(move || server.run())
        .map_err(StartError::Io)?;
    Ok(Running {
        addr: local,
        metrics_addr: metrics_local,
        stop,
        wakeup,
        thread: Some(thread),
    })
}

/// The public listener, registered with the loop's poll.
fn bind(poll: &Poll, config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let addr: SocketAddr = format!("{}:{}", bracket_v6(&config.host), config.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (config.host.as_str(), config.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| StartError::Address(config.host.clone()))
        })?;
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| StartError::Bind(addr, e))?;
    std_listener.set_nonblocking(true).map_err(StartError::Io)?;
    // std listens with a backlog of 128; a burst of connects wants more.
    // SAFETY: listen(2) on a socket we own; calling it again only resizes the backlog.
    unsafe {
        libc::listen(std_listener.as_raw_fd(), 4096);
    }
    limit_socket_buffers(&std_listener);
    let local = std_listener.local_addr().map_err(StartError::Io)?;
    let mut listener = TcpListener::from_std(std_listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(StartError::Io)?;
    Ok((listener, local))
}

/// `KLAV_METRICS_ADDR`'s listener, when it is set.
fn bind_metrics(
    poll: &Poll,
    config: &Config,
) -> Result<(Option<TcpListener>, Option<SocketAddr>), StartError> {
    let Some(a) = config.metrics_addr else {
        return Ok((None, None));
    };
    let l = std::net::TcpListener::bind(a).map_err(|e| StartError::Bind(a, e))?;
    l.set_nonblocking(true).map_err(StartError::Io)?;
    let mut l = TcpListener::from_std(l);
    poll.registry()
        .register(&mut l, METRICS_LISTENER, Interest::READABLE)
        .map_err(StartError::Io)?;
    let local = l.local_addr().map_err(StartError::Io)?;
    Ok((Some(l), Some(local)))
}

/// This node as the cluster knows it.
struct Member<'a> {
    database_url: &'a str,
    node: &'a str,
    incarnation: i64,
    sealer: &'a Sealer,
}

/// Joins the cluster: checks that notifications reach this node, registers it
/// (taking over a name whose last beat is recent, with a warning), and starts
/// the thread that listens for the other nodes.
fn join_cluster(
    me: &Member,
    config: &Config,
    bus_key: BusKey,
    bus_dropped: Arc<BusDropped>,
    sink: CompletionSink,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, StartError> {
    let node = me.node;
    let named = |role: &str| {
        crate::db::pg_config(me.database_url, &crate::db::application_name(node, role))
            .map_err(StartError::Db)
    };
    crate::cluster::listener::probe(&named("probe")?).map_err(StartError::Db)?;
    let mut client = named("register")?
        .connect(postgres::NoTls)
        .map_err(|e| StartError::Db(e.into()))?;
    let timeout = config.node_timeout.as_secs() as i64;
    if crate::db::nodes::register(&mut client, me.sealer, node, me.incarnation, timeout)
        .map_err(StartError::Db)?
    {
        crate::log!(
            Warn,
            "a node named {node} beat less than {timeout} s ago: taking its name over \
             (right after a crash that is this node's previous life; otherwise give \
             each node its own KLAV_NODE_NAME)"
        );
    }
    crate::log!(Info, "cluster node {node}: listening for the other nodes");
    Ok(crate::cluster::listener::start(
        named("listener")?,
        node.to_string(),
        bus_key,
        bus_dropped,
        sink,
        stop,
    ))
}

/// What the loop works on, fresh: no connections, no users, an empty cache.
fn hub(config: Arc<Config>, db: Db, hasher: HashPool, jwt_secret: &[u8], cluster: Cluster) -> Hub {
    let tokens = Tokens::new(jwt_secret, config.jwt_algorithm, config.jwt_expire_minutes)
        .with_session_max(config.session_max);
    let per_room = match config.max_logs_per_room {
        0 => crate::handlers::history::MAX_LIMIT as usize,
        n => (n as usize).min(crate::handlers::history::MAX_LIMIT as usize),
    };
    let history = HistoryCache::new(
        per_room,
        config.history_cache_entries,
        config.history_cache_bytes,
    );
    Hub {
        conns: Conns::new(&config),
        svc: Services {
            db,
            hasher,
            tokens,
            budgets: Budgets::from_config(&config),
            config,
            metrics: Metrics::default(),
            outstanding: 0,
        },
        state: State::default(),
        history,
        cluster,
    }
}

/// What the kernel buffers for one client's unread requests: set on the listener
/// (accepted sockets inherit it, and the window is negotiated from it). Without
/// it, receive autotuning lets a client that pipelines requests and never reads
/// park megabytes per connection in klav's kernel buffers. Requests are small;
/// the largest (a 64 KiB body) still fits.
const RECEIVE_BUFFER_BYTES: libc::c_int = 128 * 1024;

/// What the kernel buffers for one client's unread output, likewise. Send
/// autotuning would give each socket up to `tcp_wmem`'s maximum (4 MiB by
/// default): a client that never reads would have klav copy that much into the
/// kernel for it before its output backs up in klav's own (capped) queue.
/// 256 KiB still covers a fast client's bandwidth-delay product.
const SEND_BUFFER_BYTES: libc::c_int = 256 * 1024;

fn limit_socket_buffers(listener: &std::net::TcpListener) {
    for (option, bytes) in [
        (libc::SO_RCVBUF, RECEIVE_BUFFER_BYTES),
        (libc::SO_SNDBUF, SEND_BUFFER_BYTES),
    ] {
        // The kernel doubles the value for its bookkeeping.
        let size: libc::c_int = bytes / 2;
        // SAFETY: setsockopt on a socket we own, with a valid c_int of the given size.
        unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
