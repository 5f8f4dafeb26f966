//! The bus listener: one thread with its own PostgreSQL connection that LISTENs
//! on the `klav` channel and hands other nodes' events to the loop.
//!
//! A listener that loses its connection (PostgreSQL restarted, the backend
//! terminated, a half-open TCP connection that a bounded ping exposes)
//! reconnects, listens again and then tells the loop `BusConnected`: whatever
//! was committed while it was away is read back from the tables (see
//! `cluster::caught_up`), and what arrives twice is recognised by the rooms'
//! entry chains.
//!
//! Every notification is opened with the bus key first (see `bus`): what does
//! not verify, is stale, replayed or implausible is dropped here, counted in
//! `/metrics` and reported in the log at most once a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use postgres::fallible_iterator::FallibleIterator;
use postgres::NoTls;

use super::bus::BusDropped;
use super::bus::{self, BusEvent, BusKey, Inbox, Refused};
use crate::db::jobs::Completion;
use crate::db::{CompletionSink, DbError};

/// How often an idle listener proves its connection alive, and how long the
/// proof may take: a dead connection is noticed within both together.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How often at most the log tells of dropped notifications.
const REPORT_EVERY: Duration = Duration::from_secs(1);

pub fn start(
    pg: postgres::Config,
    node: String,
    key: BusKey,
    dropped: Arc<BusDropped>,
    sink: CompletionSink,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("klav-bus".into())
        .spawn(move || {
            // Created before the first LISTEN: it knows what was signed before.
            let mut inbox = Inbox::new(key, SystemTime::now());
            let mut refusals = Refusals::new(dropped);
            run(pg, &node, &mut inbox, &mut refusals, &sink, &stop)
        })
        .expect("spawn the bus listener")
}

fn run(
    pg: postgres::Config,
    node: &str,
    inbox: &mut Inbox,
    refusals: &mut Refusals,
    sink: &CompletionSink,
    stop: &AtomicBool,
) {
    let mut pause = Duration::from_millis(100);
    let mut lost_at: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let mut client = match connect(&pg) {
            Ok(c) => c,
            Err(e) => {
                if lost_at.is_none() {
                    crate::log!(Warn, "bus listener cannot connect: {e}");
                    lost_at = Some(Instant::now());
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        if let Some(at) = lost_at.take() {
            crate::log!(
                Info,
                "bus listener connected again after {:.1} s; catching up",
                at.elapsed().as_secs_f64()
            );
        }
        sink.send(Completion::BusConnected);
        let why = listen(&mut client, node, inbox, refusals, sink, stop);
        if !stop.load(Ordering::Acquire) {
            crate::log!(Warn, "bus listener lost its connection: {why}");
            lost_at = Some(Instant::now());
        }
    }
}

fn connect(pg: &postgres::Config) -> Result<postgres::Client, DbError> {
    let mut client = pg.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {}", bus::CHANNEL))?;
    Ok(client)
}

/// Receives until the connection fails (returns why) or the node stops.
fn listen(
    client: &mut postgres::Client,
    node: &str,
    inbox: &mut Inbox,
    refusals: &mut Refusals,
    sink: &CompletionSink,
    stop: &AtomicBool,
) -> String {
    let mut last_ping = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return "stopping".into();
        }
        let mut events: Vec<BusEvent> = Vec::new();
        {
            let mut notes = client.notifications();
            let first = notes.timeout_iter(Duration::from_millis(500)).next();
            match first {
                Ok(Some(n)) => take(n.payload(), node, inbox, refusals, &mut events),
                Ok(None) => {}
                Err(e) => return e.to_string(),
            }
            // Whatever else has arrived goes in the same hand-over.
            let mut more = notes.iter();
            loop {
                match more.next() {
                    Ok(Some(n)) => take(n.payload(), node, inbox, refusals, &mut events),
                    Ok(None) => break,
                    Err(e) => return e.to_string(),
                }
            }
        }
        if !events.is_empty() {
            sink.send(Completion::Bus(events));
        }
        refusals.report();
        if last_ping.elapsed() >= PING_EVERY {
            if let Err(e) = client.is_valid(PING_TIMEOUT) {
                return e.to_string();
            }
            last_ping = Instant::now();
        }
    }
}

/// Keeps another node's events; of this node's own, only presence (decided in
/// the database for the whole cluster; its entries were delivered from its own
/// writer).
fn take(
    payload: &str,
    node: &str,
    inbox: &mut Inbox,
    refusals: &mut Refusals,
    out: &mut Vec<BusEvent>,
) {
    match inbox.open(payload, SystemTime::now()) {
        Ok(opened) if opened.node == node => out.extend(
            opened
                .events
                .into_iter()
                .filter(|e| matches!(e, BusEvent::Presence { .. })),
        ),
        Ok(opened) => out.extend(opened.events),
        Err(why) => refusals.note(why),
    }
}

/// Dropped notifications: counted at once, told in the log at most once per
/// [`REPORT_EVERY`] (a flood of forgeries must not become a flood of lines).
struct Refusals {
    counters: Arc<BusDropped>,
    untold: [u64; Refused::ALL.len()],
    told_at: Option<Instant>,
}

impl Refusals {
    fn new(counters: Arc<BusDropped>) -> Refusals {
        Refusals {
            counters,
            untold: [0; Refused::ALL.len()],
            told_at: None,
        }
    }

    fn note(&mut self, why: Refused) {
        self.counters.count(why);
        self.untold[why.index()] += 1;
        self.report();
    }

    /// Logs what was dropped since the last report, if one is due.
    fn report(&mut self) {
        if self.untold.iter().all(|n| *n == 0)
            || self.told_at.is_some_and(|t| t.elapsed() < REPORT_EVERY)
        {
            return;
        }
        let counts: Vec<String> = Refused::ALL
            .iter()
            .filter(|why| self.untold[why.index()] > 0)
            .map(|why| format!("{} {}", why.label(), self.untold[why.index()]))
            .collect();
        crate::log!(
            Warn,
            "dropped bus notifications ({}): forged or replayed by a database user, or \
             sent by a node with another JWT_SECRET (bad_mac), an older release \
             (malformed) or a clock more than {} s off (stale)",
            counts.join(", "),
            bus::MAX_SKEW.as_secs()
        );
        self.untold = [0; Refused::ALL.len()];
        self.told_at = Some(Instant::now());
    }
}

/// Checks at start that a notification sent through `DATABASE_URL` reaches a
/// listener on it: it does not through a pooler in transaction mode, where a
/// cluster would silently not see its other nodes.
pub fn probe(pg: &postgres::Config) -> Result<(), DbError> {
    let mut token = [0u8; 8];
    getrandom::fill(&mut token).expect("the OS random source failed");
    let channel = format!(
        "klav_probe_{}",
        token.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut listener = pg.connect(NoTls)?;
    listener.batch_execute(&format!("LISTEN {channel}"))?;
    let mut sender = pg.connect(NoTls)?;
    sender.execute("SELECT pg_notify($1, 'probe')", &[&channel])?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let mut notes = listener.notifications();
        let got = notes.timeout_iter(Duration::from_millis(200)).next();
        if let Some(n) = got.map_err(DbError::from)? {
            if n.channel() == channel {
                return Ok(());
            }
        }
    }
    Err(DbError::Query(
        "a notification sent through DATABASE_URL did not reach a listener on it: \
         LISTEN/NOTIFY does not work through this connection (is it a pooler such as \
         pgbouncer in transaction mode? point DATABASE_URL at PostgreSQL or a session-mode \
         pool), so nodes could not see each other"
            .into(),
    ))
}
