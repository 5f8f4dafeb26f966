//! The delivery threads: each claims runs of due events, one run per order
//! key (see [`store::claim`]), POSTs the runs side by side (one sender thread
//! per run, each run's events one after the other, signed per attempt), and
//! records the outcomes. They hold their own PostgreSQL connections (not
//! the workers' pool) and their own HTTP client, so a slow or dead receiver
//! costs chat nothing.
//!
//! Retries: a failed event waits 1 s, 2 s, 4 s, … (at most an hour) before
//! its next attempt, and the events after it in its order key wait behind it.
//! So that a receiver back after an outage gets its backlog at once rather
//! than at each event's next attempt, each node probes every
//! [`PROBE_INTERVAL`]: it tries the event whose backoff ends first, and when
//! that succeeds (or any attempt succeeds after a failure here) every event
//! waiting out a backoff becomes due.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use postgres::{Client, NoTls};

use super::config::WebhookConfig;
use super::sign;
use super::store::{self, Claimed, LEASE};
use crate::db::outbox::Outbox;
use crate::db::DbError;

/// Order keys one claim takes, delivered side by side. A claim reads every
/// key with pending events (see [`store::claim`]), so it takes several; the
/// other threads find the keys after them.
const KEYS_PER_CLAIM: i64 = 16;
/// Events of one key one claim takes (delivered in turn, under one lease).
const RUN: i64 = 20;
/// How often an idle thread looks for events other nodes wrote (this node's
/// own wake it at once).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The least time between two claims of a thread that found nothing due: the
/// writer's commits wake it far more often than that while every pending
/// key waits out a backoff (a receiver down, chat going on).
const MIN_CLAIM_GAP: Duration = Duration::from_millis(250);
/// How long a thread rests after a claim whose every attempt failed, rather
/// than claiming the next keys at once (whose attempts would fail as fast).
const FAILED_PAUSE: Duration = Duration::from_secs(1);
/// How long a thread gathers its senders' outcomes before recording them:
/// a delivery recorded late only risks one more delivery after a crash,
/// which at-least-once allows, and one UPDATE per window instead of one per
/// event spares the database.
const RECORD_WINDOW: Duration = Duration::from_millis(50);
/// How often a node tries one event waiting out a backoff, to learn that the
/// receiver is back.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// A delivery attempt's limit, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How often the first thread reads the gauges (and prunes).
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// Response bodies are read (for connection reuse) up to this much, then dropped.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// The delivery threads of this node.
pub struct Delivery {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Delivery {
    /// Stops the threads: each finishes the attempt it is making (at most
    /// [`TIMEOUT`]); the rest of its run is released to the lease.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.outbox.signal.raise();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What the threads of a node share.
struct Shared {
    config: WebhookConfig,
    database_url: String,
    node: String,
    outbox: Arc<Outbox>,
    agent: ureq::Agent,
    stop: AtomicBool,
    /// An attempt failed here since the last success.
    failing: AtomicBool,
    last_probe: Mutex<Instant>,
}

/// Starts `config.threads` delivery threads for `node`, after releasing the
/// claims of this node's previous life (a crash mid-delivery).
pub fn start(
    config: &WebhookConfig,
    database_url: &str,
    node: &str,
    outbox: Arc<Outbox>,
) -> Delivery {
    // Most attempts in flight at once on this node: one per claimed key.
    let in_flight = KEYS_PER_CLAIM as usize * config.threads;
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            // Every sender of every thread may hold a connection to the receiver.
            .max_idle_connections(in_flight)
            .max_idle_connections_per_host(in_flight)
            .user_agent(format!("klav/{}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        database_url: database_url.to_string(),
        node: node.to_string(),
        outbox,
        agent,
        stop: AtomicBool::new(false),
        failing: AtomicBool::new(false),
        last_probe: Mutex::new(Instant::now()),
    });
    match connect(&shared, "webhooks").and_then(|mut c| store::release_node(&mut c, node)) {
        Ok(0) => {}
        Ok(n) => crate::log!(
            Info,
            "webhooks: {n} events claimed by this node before a restart are due again"
        ),
        Err(e) => crate::log!(Warn, "webhooks: cannot release earlier claims: {e}"),
    }
    let threads = (0..config.threads)
        .map(|i| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("klav-webhooks-{i}"))
                .spawn(move || run(&shared, i))
                .expect("spawn webhook delivery thread")
        })
        .collect();
    crate::log!(
        Info,
        "webhooks: delivering to {} with {} threads",
        config.url,
        config.threads
    );
    Delivery { shared, threads }
}

/// A connection of the delivery's own. Its commits do not wait for the WAL
/// flush: a claim or a "delivered" lost in a crash only means one more
/// delivery, which at-least-once allows, and chat's commits (which do wait)
/// do not queue behind a flush per delivered event.
fn connect(shared: &Shared, role: &str) -> Result<Client, DbError> {
    let name = crate::db::application_name(&shared.node, role);
    let pg = crate::db::pg_config(&shared.database_url, &name)?;
    let mut c = pg.connect(NoTls)?;
    // No parallel workers either: the gauges' count must not take cores
    // from chat's queries. And no sequential scans: every query here has
    // its index, but a table that grew fast since it was last analyzed (a
    // backlog building up under chat) would be planned as small, and a claim
    // that scans the outbox once per order key takes seconds.
    c.batch_execute(
        "SET synchronous_commit = off; SET max_parallel_workers_per_gather = 0; \
         SET enable_seqscan = off",
    )?;
    Ok(c)
}

/// One thread: claim, deliver, repeat; wait for a signal (or [`IDLE_POLL`])
/// when nothing is due.
fn run(shared: &Shared, index: usize) {
    lower_priority();
    let mut client: Option<Client> = None;
    let mut seen = shared.outbox.signal.generation();
    let mut gauges_at = Instant::now() - GAUGES_EVERY;
    let mut down_logged = false;
    while !shared.stop.load(Ordering::Acquire) {
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(shared, &format!("webhooks {index}")) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !down_logged {
                        crate::log!(Warn, "webhooks: database unavailable: {e}");
                        down_logged = true;
                    }
                    shared.outbox.signal.wait(&mut seen, IDLE_POLL);
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected just now");
        if down_logged && c.simple_query("SELECT 1").is_ok() {
            crate::log!(Info, "webhooks: the database answers again");
            down_logged = false;
        }
        if index == 0 && gauges_at.elapsed() >= GAUGES_EVERY {
            gauges_at = Instant::now();
            if let Err(e) = maintain(c, &shared.outbox) {
                crate::log!(Warn, "webhooks: reading the outbox failed: {e}");
            }
        }
        match turn(shared, c) {
            Ok(Turn::Delivered) => {}
            Ok(Turn::Failed) => shared.pause(FAILED_PAUSE),
            Ok(Turn::Nothing) => {
                shared.pause(MIN_CLAIM_GAP);
                shared.outbox.signal.wait(&mut seen, IDLE_POLL);
            }
            Err(e) => {
                // Once per outage, not once a second per thread.
                if !down_logged {
                    crate::log!(Warn, "webhooks: {e}");
                    down_logged = true;
                }
                client = None;
                shared.outbox.signal.wait(&mut seen, IDLE_POLL);
            }
        }
    }
}

/// How much nicer than the rest of klav the delivery threads are.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const DELIVERY_NICE: libc::c_int = 10;

/// Lowers this thread's CPU priority (and that of the sender threads it
/// starts, which inherit it): on a busy machine the event loop and the
/// database threads go first and delivery takes what is left. Its backlog is
/// durable; chat's latency is not. (Linux sets nice per thread; elsewhere
/// this does nothing.)
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, DELIVERY_NICE);
    }
}

/// What one claim came to.
enum Turn {
    /// At least one event was delivered.
    Delivered,
    /// Events were due, and every attempt failed.
    Failed,
    /// Nothing was due (a probe may have been made).
    Nothing,
}

/// Claims and delivers what is due.
fn turn(shared: &Shared, c: &mut Client) -> Result<Turn, DbError> {
    let runs = store::claim(c, &shared.node, KEYS_PER_CLAIM, RUN, false)?;
    if !runs.is_empty() {
        let delivered = deliver_runs(shared, c, &runs, false)?;
        return Ok(if delivered > 0 {
            Turn::Delivered
        } else {
            Turn::Failed
        });
    }
    if !shared.probe_due() {
        return Ok(Turn::Nothing);
    }
    let probe = store::claim(c, &shared.node, 1, 1, true)?;
    deliver_runs(shared, c, &probe, true)?;
    Ok(Turn::Nothing)
}

impl Shared {
    /// Sleeps `d`, or less if the node is stopping.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::Acquire) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// Whether this node should probe now (and, if so, it is counted as done).
    fn probe_due(&self) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < PROBE_INTERVAL {
            return false;
        }
        *last = Instant::now();
        true
    }
}

/// One attempt, as a sender reports it: which run, which event of it.
struct Attempted {
    run: usize,
    index: usize,
    result: Result<u16, Failure>,
}

/// Delivers a claim's runs, each on a sender thread of its own so that the
/// claim's rooms wait on the receiver together, not one after the other;
/// within a run, one event at a time in order, stopping at the first failure
/// (the rest wait behind it). This thread records the outcomes as they come,
/// renews the lease on what is still held and, at the end, releases what was
/// not attempted (the node stopping, or the database failing under it).
/// Returns how many were delivered.
fn deliver_runs(
    shared: &Shared,
    c: &mut Client,
    runs: &[Vec<Claimed>],
    probe: bool,
) -> Result<usize, DbError> {
    let abort = AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::unbounded::<Attempted>();
    std::thread::scope(|s| {
        for (r, run) in runs.iter().enumerate() {
            let (tx, abort) = (tx.clone(), &abort);
            s.spawn(move || send_run(shared, r, run, abort, &tx));
        }
        drop(tx);
        let recorded = record(shared, c, runs, &rx, probe);
        // On a database error, the senders stop after their current attempt:
        // what they would deliver could not be recorded.
        abort.store(true, Ordering::Release);
        recorded
    })
}

/// A sender thread: POSTs `run` in order until it ends, an attempt fails, or
/// the node stops.
fn send_run(
    shared: &Shared,
    run: usize,
    events: &[Claimed],
    abort: &AtomicBool,
    tx: &crossbeam_channel::Sender<Attempted>,
) {
    for (index, event) in events.iter().enumerate() {
        if shared.stop.load(Ordering::Acquire) || abort.load(Ordering::Acquire) {
            return;
        }
        let result = attempt(shared, event);
        let failed = result.is_err();
        if tx.send(Attempted { run, index, result }).is_err() || failed {
            return;
        }
    }
}

/// Records the senders' outcomes until every sender is done (see
/// [`deliver_runs`]).
fn record(
    shared: &Shared,
    c: &mut Client,
    runs: &[Vec<Claimed>],
    rx: &crossbeam_channel::Receiver<Attempted>,
    probe: bool,
) -> Result<usize, DbError> {
    // Per run: the first event not yet recorded, and whether it ended in a failure.
    let mut next = vec![0usize; runs.len()];
    let mut ended = vec![false; runs.len()];
    let mut delivered = 0;
    let mut leased = Instant::now();
    loop {
        let first = match rx.recv_timeout(LEASE / 6) {
            Ok(a) => Some(a),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        // Everything reported meanwhile and within a short window after,
        // recorded together: one UPDATE for many outcomes.
        let mut reported: Vec<Attempted> = first.into_iter().collect();
        let window = Instant::now() + RECORD_WINDOW;
        while !reported.is_empty() {
            match rx.recv_deadline(window) {
                Ok(a) => reported.push(a),
                Err(_) => break,
            }
        }
        let mut done: Vec<(i64, u16)> = Vec::new();
        for a in reported {
            let event = &runs[a.run][a.index];
            next[a.run] = a.index + 1;
            match a.result {
                Ok(status) => {
                    shared.outbox.stats.attempt(true, &status.to_string());
                    done.push((event.id, status));
                }
                Err(failure) => {
                    ended[a.run] = true;
                    shared.outbox.stats.attempt(false, &failure.label());
                    shared.failing.store(true, Ordering::Release);
                    let dead = store::failed(c, event.id, failure.status(), &failure.to_string())?;
                    if dead {
                        crate::log!(
                            Warn,
                            "webhooks: event evt_{} dead-lettered after 24 hours of failures ({failure})",
                            event.id
                        );
                    }
                    let rest: Vec<i64> = runs[a.run][a.index + 1..].iter().map(|e| e.id).collect();
                    store::release(c, &shared.node, &rest)?;
                }
            }
        }
        if !done.is_empty() {
            delivered += done.len();
            store::delivered_all(c, &done)?;
            if shared.failing.swap(false, Ordering::AcqRel) || probe {
                let due = store::receiver_back(c)?;
                if due > 0 {
                    crate::log!(
                        Info,
                        "webhooks: the receiver answers again; {due} waiting events are due"
                    );
                }
            }
        }
        if leased.elapsed() > LEASE / 3 {
            store::renew(c, &shared.node, &held(runs, &next, &ended))?;
            leased = Instant::now();
        }
    }
    // Senders that stopped early left the rest of their runs.
    store::release(c, &shared.node, &held(runs, &next, &ended))?;
    Ok(delivered)
}

/// The claimed events not yet recorded, of the runs that did not fail.
fn held(runs: &[Vec<Claimed>], next: &[usize], ended: &[bool]) -> Vec<i64> {
    runs.iter()
        .zip(next.iter().zip(ended))
        .filter(|(_, (_, &ended))| !ended)
        .flat_map(|(run, (&next, _))| run[next..].iter().map(|e| e.id))
        .collect()
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// The receiver answered, not 2xx.
    Status(u16),
    /// No answer within [`TIMEOUT`].
    Timeout,
    /// The connection could not be made (refused, unreachable, no such host).
    Connect(String),
    /// Anything else (a broken response, TLS).
    Other(String),
}

impl Failure {
    fn label(&self) -> String {
        match self {
            Failure::Status(s) => s.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Connect(_) => "connect".into(),
            Failure::Other(_) => "error".into(),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Failure::Status(s) => Some(*s),
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "the receiver answered {s}"),
            Failure::Timeout => write!(f, "no answer within {} s", TIMEOUT.as_secs()),
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

/// One POST of `event`, signed now.
fn attempt(shared: &Shared, event: &Claimed) -> Result<u16, Failure> {
    let body = event.body();
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signature = sign::signature(&shared.config.secret, t, &body);
    let sent = shared
        .agent
        .post(&shared.config.url)
        .header("Content-Type", "application/json")
        .header("Klav-Signature", &signature)
        .header("Klav-Event-Id", &format!("evt_{}", event.id))
        .send(&body);
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Read (and dropped) so that the connection can be used again.
            let _ = response
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec();
            if (200..300).contains(&status) {
                Ok(status)
            } else {
                Err(Failure::Status(status))
            }
        }
        Err(ureq::Error::Timeout(_)) => Err(Failure::Timeout),
        Err(
            e @ (ureq::Error::Io(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed),
        ) => Err(Failure::Connect(e.to_string())),
        Err(e) => Err(Failure::Other(e.to_string())),
    }
}

/// The gauges for `/metrics`, and the pruning of old delivered events.
fn maintain(c: &mut Client, outbox: &Outbox) -> Result<(), DbError> {
    let (pending, oldest, dead) = store::gauges(c)?;
    outbox.stats.set_gauges(pending, oldest, dead);
    store::prune(c)?;
    Ok(())
}
