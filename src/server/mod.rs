//! The event loop: one thread, one `mio::Poll`, every socket.
//!
//! A turn of the loop: wait for readiness (or a worker's wake-up, or the next
//! timer) → accept → read what is readable, within a budget per connection →
//! apply finished jobs → read again what was left for later → close what asked
//! to close → write each connection's pending output once → fire due timers.
//!
//! Nothing here blocks: database and hashing work is handed to threads through
//! bounded queues, log lines to a writer thread, and socket writes that would
//! block stay queued until the socket is writable.
//!
//! - [`reading`]: readiness → bytes → HTTP requests or WebSocket frames.
//! - [`writing`]: output queues → sockets, interest, and every close.
//! - [`timers`]: per-connection deadlines (HTTP timeout, ping, linger).

mod reading;
mod timers;
mod writing;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::auth::jwt::Tokens;
use crate::auth::password::HashPool;
use crate::close::CloseReason;
use crate::config::Config;
use crate::conn::{Conn, ConnId};
use crate::conns::Conns;
use crate::db::{Completion, CompletionSink, Db, DbError, DbSettings, Job, Ticket, Wakeup};
use crate::handlers;
use crate::history_cache::HistoryCache;
use crate::http;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::services::{Budgets, Services};
use crate::state::State;
use crate::turn::Turn;
use reading::PutOff;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const METRICS_LISTENER: Token = Token(usize::MAX - 3);

/// Completions applied per turn before sockets get their turn again.
const COMPLETION_BUDGET: usize = 8192;
/// Pause after an accept error such as running out of file descriptors, so the
/// loop does not spin on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const TICK: Duration = Duration::from_secs(1);
/// The cluster's clock: gaps in a room's entries are read back after
/// `cluster::chain::GAP_WAIT`, so it looks more often than the main tick. (A
/// node alone can see a gap too: a room tracked again from a session read
/// before the room's last entries.)
const CLUSTER_TICK: Duration = Duration::from_millis(50);

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

    let poll = Poll::new().map_err(StartError::Io)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(StartError::Io)?;
    let mut metrics_listener = match config.metrics_addr {
        None => None,
        Some(a) => {
            let l = std::net::TcpListener::bind(a).map_err(|e| StartError::Bind(a, e))?;
            l.set_nonblocking(true).map_err(StartError::Io)?;
            Some(TcpListener::from_std(l))
        }
    };
    let metrics_local = match &mut metrics_listener {
        None => None,
        Some(l) => {
            poll.registry()
                .register(l, METRICS_LISTENER, Interest::READABLE)
                .map_err(StartError::Io)?;
            Some(l.local_addr().map_err(StartError::Io)?)
        }
    };
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
    let bus_key = crate::cluster::bus::BusKey::derive(jwt_secret);
    let sealer = clustered.then(|| {
        Arc::new(crate::cluster::bus::Sealer::new(
            bus_key.clone(),
            &node,
            incarnation,
        ))
    });
    let metrics = Metrics::default();
    let bus_dropped = std::sync::Arc::new(crate::cluster::bus::BusDropped::default());
    let db = Db::start(
        &DbSettings {
            url: database_url.to_string(),
            node: node.clone(),
            workers: config.db_workers,
            batch: config.db_batch,
            bus: sealer
                .clone()
                .map(|s| s as Arc<dyn crate::db::notify::Notifier>),
        },
        sink.clone(),
    )
    .map_err(StartError::Db)?;
    let stop = Arc::new(AtomicBool::new(false));
    let bus = if let Some(sealer) = &sealer {
        let named = |role: &str| {
            crate::db::pg_config(database_url, &crate::db::application_name(&node, role))
                .map_err(StartError::Db)
        };
        crate::cluster::listener::probe(&named("probe")?).map_err(StartError::Db)?;
        let mut client = named("register")?
            .connect(postgres::NoTls)
            .map_err(|e| StartError::Db(e.into()))?;
        let timeout = config.node_timeout.as_secs() as i64;
        if crate::db::nodes::register(&mut client, &**sealer, &node, incarnation, timeout)
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
        Some(crate::cluster::listener::start(
            named("listener")?,
            node.clone(),
            bus_key,
            bus_dropped.clone(),
            sink.clone(),
            stop.clone(),
        ))
    } else {
        None
    };
    let hasher = HashPool::start(config.hash_workers, move |ticket, outcome| {
        sink.send(Completion::Hash(ticket, outcome))
    });
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
    let server = Server {
        poll,
        listener: Some(listener),
        metrics_listener,
        hub: Hub {
            conns: Conns::new(&config),
            svc: Services {
                db,
                hasher,
                tokens,
                budgets: Budgets::from_config(&config),
                config,
                metrics,
                outstanding: 0,
            },
            state: State::default(),
            history,
            cluster: crate::cluster::Cluster {
                bus_dropped,
                ..crate::cluster::Cluster::new(clustered, node, incarnation)
            },
        },
        bus,
        sealer,
        database_url: database_url.to_string(),
        completions: done_rx,
        wakeup: wakeup.clone(),
        stop: stop.clone(),
        next_gen: 1,
        accept_paused_until: None,
        timers: timers::Timers::default(),
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

struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    /// `KLAV_METRICS_ADDR`: a listener whose connections may only ask `/metrics`.
    metrics_listener: Option<TcpListener>,
    hub: Hub,
    completions: Receiver<Completion>,
    wakeup: Arc<Wakeup>,
    stop: Arc<AtomicBool>,
    next_gen: u64,
    accept_paused_until: Option<Instant>,
    timers: timers::Timers,
    /// Shutting down: no new requests are read.
    draining: bool,
    /// Connections and buffered bytes at their highest since memory was last
    /// given back (see `trim_if_freed`).
    trim_mark: (usize, usize),
    /// When freed memory was last given back.
    trimmed_at: Instant,
    /// The listener had more to accept when a turn's share ran out.
    accept_more: bool,
    /// Reads put off to later turns (see `reading`), oldest first.
    put_off: PutOff,
    /// Client input held in memory, all connections together: kept up to date
    /// where it grows, so that the buffer budget acts before memory is taken
    /// rather than a second after (see `reading::count_input`).
    input_held: usize,
    /// What this turn of the loop may still spend.
    turn: Turn,
    /// This turn's readable connections that are not open sessions (kept to
    /// reuse its allocation).
    others_ready: Vec<ConnId>,
    /// The bus listener thread, in a cluster.
    bus: Option<std::thread::JoinHandle<()>>,
    /// What seals this node's notifications, in a cluster (its last ones say
    /// goodbye).
    sealer: Option<Arc<crate::cluster::bus::Sealer>>,
    database_url: String,
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_cluster_tick = Instant::now();
        let mut next_prune = Instant::now() + self.hub.svc.config.retention_interval;
        let mut drain_deadline: Option<Instant> = None;
        crate::log!(Info, "serving");
        loop {
            let now = Instant::now();
            let busy = !self.hub.conns.again.is_empty()
                || !self.hub.conns.dirty.is_empty()
                || !self.put_off.is_empty()
                || self.accept_more;
            let timeout = if busy {
                Duration::ZERO
            } else {
                let wake = self
                    .timers
                    .next()
                    .map_or(next_tick, |t| t.min(next_tick))
                    .min(next_cluster_tick);
                wake.saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::log!(Error, "poll failed: {e}");
                    break;
                }
            }
            self.turn = Turn::new(Instant::now() + self.hub.svc.config.turn_work);
            self.read_events(&events);
            self.drain_completions();
            self.read_again();
            self.read_busy();
            self.process_closes();
            crate::handlers::remote::look_up_new_watches(&mut self.hub);
            self.flush_dirty();

            let now = Instant::now();
            self.fire_timers(now);
            if now >= next_cluster_tick {
                next_cluster_tick = now + CLUSTER_TICK;
                crate::handlers::remote::tick(&mut self.hub, now);
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
                if now >= next_prune {
                    next_prune = now + self.hub.svc.config.retention_interval;
                    self.retention();
                }
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept(false);
                self.accept(true);
            }
            if drain_deadline.is_none() && self.stop.load(Ordering::Acquire) {
                drain_deadline = Some(now + self.hub.svc.config.shutdown_timeout);
                self.begin_shutdown();
            }
            if let Some(deadline) = drain_deadline {
                if self.shutdown_step(now >= deadline) {
                    break;
                }
                next_tick = next_tick.min(now + Duration::from_millis(20));
            }
        }
        crate::log!(Info, "event loop stopped");
        // Workers finish what is queued (the writer commits it), then stop.
        let Server {
            hub,
            bus,
            sealer,
            database_url,
            ..
        } = self;
        let Hub { svc, cluster, .. } = hub;
        let Services { db, hasher, .. } = svc;
        db.shutdown();
        hasher.shutdown();
        if let (Some(bus), Some(sealer)) = (bus, sealer) {
            // Leave the cluster: this node's users go offline for the others
            // now, not after the node timeout.
            let name = crate::db::application_name(&cluster.node, "leave");
            match crate::db::pg_config(&database_url, &name)
                .and_then(|pg| pg.connect(postgres::NoTls).map_err(Into::into))
                .and_then(|mut c| crate::db::nodes::unregister(&mut c, &*sealer))
            {
                Ok(()) => crate::log!(Info, "left the cluster"),
                Err(e) => crate::log!(Warn, "could not leave the cluster cleanly: {e}"),
            }
            let _ = bus.join();
        }
    }

    /// Accepts every pending connection of one listener (the public one, or the
    /// metrics one).
    fn accept(&mut self, metrics: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let listener = if metrics {
            self.metrics_listener.as_ref()
        } else {
            self.listener.as_ref()
        };
        let Some(listener) = listener else {
            return;
        };
        let mut accepted = Vec::new();
        loop {
            if accepted.len() >= reading::ACCEPTS_PER_TURN
                || (accepted.len() >= reading::ACCEPTS_MIN_PER_TURN && self.turn.over())
            {
                // Edge-triggered: no new event comes for those still waiting.
                self.accept_more = !metrics;
                break;
            }
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    self.hub.svc.metrics.accepted += 1;
                    let _ = stream.set_nodelay(true);
                    let gen = self.next_gen;
                    self.next_gen += 1;
                    let registry = self.poll.registry();
                    let inserted = self.hub.conns.insert_with(|slot| {
                        if let Err(e) =
                            registry.register(&mut stream, Token(slot), Interest::READABLE)
                        {
                            crate::log!(Warn, "cannot register a connection: {e}");
                            return None;
                        }
                        let mut conn = Conn::new(ConnId { slot, gen }, stream, peer);
                        conn.metrics_only = metrics;
                        Some(conn)
                    });
                    let Some(id) = inserted else {
                        continue;
                    };
                    let over = self.hub.conns.len() > self.hub.svc.config.max_connections;
                    accepted.push((id, over));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically EMFILE/ENFILE. Pending connections stay in the
                    // backlog; retry shortly instead of spinning on readiness.
                    crate::log!(Warn, "accept failed: {e}; pausing accepts briefly");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
        for (id, over) in accepted {
            self.schedule(id);
            // Over the connection cap: answer 503 and close.
            if over {
                handlers::http::respond(
                    &mut self.hub,
                    id,
                    http::error(503, "too many connections", false),
                    false,
                );
            }
        }
    }

    fn drain_completions(&mut self) {
        self.wakeup.reset();
        for _ in 0..COMPLETION_BUDGET {
            match self.completions.try_recv() {
                Ok(c) => {
                    self.hub.svc.outstanding = self.hub.svc.outstanding.saturating_sub(1);
                    handlers::on_completion(&mut self.hub, c);
                }
                Err(_) => return,
            }
        }
        // More are waiting: make sure the next poll returns at once.
        self.wakeup.wake();
    }

    /// Once a second: what is not tied to one connection.
    fn tick(&mut self, now: Instant) {
        let started = Instant::now();
        self.enforce_buffer_budget();
        self.trim_if_freed();
        self.hub.svc.budgets.logins.sweep(now);
        self.hub.svc.budgets.registrations.sweep(now);
        self.hub.svc.budgets.public_metrics.sweep(now);
        self.hub.svc.budgets.rooms.sweep(now);
        self.hub.svc.budgets.rows.sweep(now);
        self.hub.svc.budgets.ws_opens.sweep(now);
        self.hub.svc.budgets.lookups.sweep(now);
        let took = started.elapsed();
        if took > Duration::from_millis(20) {
            crate::log!(Debug, "housekeeping took {took:?}");
        }
        let members = &self.hub.state.room_members;
        self.hub
            .history
            .retain_rooms(|room| members.contains_key(room));
        handlers::completion::sweep(&mut self.hub);
    }

    /// Input and output buffered for all clients together stay within
    /// `KLAV_MAX_CLIENT_BUFFER_BYTES` (Redis's `maxmemory-clients`): per-connection
    /// limits bound each client, this bounds many of them at once. Over the budget,
    /// the largest holders are closed first until 90% of it is left. Runs once a
    /// second, and at once when a read takes the input held past the budget.
    /// Counted from what each connection really holds (buffer capacities
    /// included), which also sets the running total of input held right again.
    fn enforce_buffer_budget(&mut self) {
        let budget = self.hub.svc.config.max_client_buffer_bytes;
        let held = |c: &Conn| -> usize { c.out.len() + reading::input_held(c) };
        let mut input = 0;
        for c in self.hub.conns.iter_mut() {
            c.input_counted = reading::input_held(c);
            input += c.input_counted;
        }
        self.input_held = input;
        let total: usize = self.hub.conns.iter().map(&held).sum();
        self.hub.svc.metrics.client_buffer_bytes = total;
        if total <= budget {
            return;
        }
        let mut holders: Vec<(usize, ConnId)> = self
            .hub
            .conns
            .iter()
            .filter(|c| !c.life.is_lingering())
            .map(|c| (held(c), c.id))
            .filter(|(n, _)| *n > 0)
            .collect();
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut left = total;
        for (n, id) in holders {
            if left <= budget / 10 * 9 {
                break;
            }
            left -= n;
            self.hub.svc.metrics.budget_closes += 1;
            self.close_conn(id, CloseReason::Budget);
        }
    }

    /// After many connections or much buffered data went away, what they held
    /// goes back to the system rather than staying in the heap's free lists.
    fn trim_if_freed(&mut self) {
        let now = (
            self.hub.conns.len(),
            self.hub.svc.metrics.client_buffer_bytes,
        );
        let (conns, bytes) = self.trim_mark;
        // Large replies come and go every second under a steady load, and
        // what they free is soon used again: they ask for a trim at most
        // every ten seconds (a trim walks the heap: milliseconds of loop time).
        let replies = self.hub.conns.large_reply_bytes >= 16 << 20
            && self.trimmed_at.elapsed() >= Duration::from_secs(10);
        if conns.saturating_sub(now.0) >= 1000 || bytes.saturating_sub(now.1) >= 16 << 20 || replies
        {
            let started = Instant::now();
            crate::alloc::trim();
            crate::log!(
                Debug,
                "returned freed memory to the system in {:?}",
                started.elapsed()
            );
            self.trim_mark = now;
            self.trimmed_at = Instant::now();
            self.hub.conns.large_reply_bytes = 0;
        } else {
            self.trim_mark = (conns.max(now.0), bytes.max(now.1));
        }
    }

    fn retention(&mut self) {
        // Expired WebSocket tickets of users who did not mint another (those
        // who did had theirs dropped then). Best effort: the next tick retries.
        self.hub.submit(Ticket::internal(), Job::PruneWsTickets);
        let keep = self.hub.svc.config.max_logs_per_room;
        if keep == 0 {
            // Unlimited retention: nothing to prune, nothing to remember.
            self.hub.state.touched_rooms.clear();
            return;
        }
        if self.hub.state.touched_rooms.is_empty() {
            return;
        }
        let rooms: Vec<String> = self.hub.state.touched_rooms.drain().collect();
        if !self.hub.submit(
            Ticket::internal(),
            Job::Prune {
                rooms: rooms.clone(),
                keep,
            },
        ) {
            // Try again next time.
            self.hub.state.touched_rooms.extend(rooms);
        }
    }

    fn begin_shutdown(&mut self) {
        crate::log!(
            Info,
            "shutting down: no new connections; finishing queued work"
        );
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.metrics_listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        // Stop taking requests; what was accepted is finished below.
        self.draining = true;
        for conn in self.hub.conns.iter_mut() {
            conn.life.pause();
        }
    }

    /// One step of a graceful shutdown; true when it is complete.
    fn shutdown_step(&mut self, deadline_passed: bool) -> bool {
        if self.hub.svc.outstanding > 0 && !deadline_passed {
            return false;
        }
        let open: Vec<ConnId> = self
            .hub
            .conns
            .iter()
            .filter(|c| !c.life.is_lingering())
            .map(|c| c.id)
            .collect();
        for id in open {
            self.close_conn(id, CloseReason::Shutdown);
        }
        self.flush_dirty();
        self.hub.conns.is_empty() || deadline_passed
    }
}
