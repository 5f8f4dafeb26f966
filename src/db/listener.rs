//! The bus listener: one thread with its own PostgreSQL connection that LISTENs
//! on the `klav` channel and hands other nodes' events to the loop.
//!
//! A listener that loses its connection (PostgreSQL restarted, the backend
//! terminated, a half-open TCP connection that a bounded ping exposes)
//! reconnects, listens again and then tells the loop `BusConnected`: whatever
//! was committed while it was away is read back from the tables (see
//! `cluster::caught_up`), and what arrives twice is recognised by the rooms'
//! entry chains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::NoTls;

use super::bus::{self, BusEvent};
use super::jobs::Completion;
use super::{CompletionSink, DbError};

/// How often an idle listener proves its connection alive, and how long the
/// proof may take: a dead connection is noticed within both together.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub fn start(
    pg: postgres::Config,
    node: String,
    sink: CompletionSink,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("klav-bus".into())
        .spawn(move || run(pg, &node, &sink, &stop))
        .expect("spawn the bus listener")
}

fn run(pg: postgres::Config, node: &str, sink: &CompletionSink, stop: &AtomicBool) {
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
        let why = listen(&mut client, node, sink, stop);
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
                Ok(Some(n)) => take(n.payload(), node, &mut events),
                Ok(None) => {}
                Err(e) => return e.to_string(),
            }
            // Whatever else has arrived goes in the same hand-over.
            let mut more = notes.iter();
            loop {
                match more.next() {
                    Ok(Some(n)) => take(n.payload(), node, &mut events),
                    Ok(None) => break,
                    Err(e) => return e.to_string(),
                }
            }
        }
        if !events.is_empty() {
            sink.send(Completion::Bus(events));
        }
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
fn take(payload: &str, node: &str, out: &mut Vec<BusEvent>) {
    match bus::decode(payload) {
        Ok((from, events)) if from == node => out.extend(
            events
                .into_iter()
                .filter(|e| matches!(e, BusEvent::Presence { .. })),
        ),
        Ok((_, events)) => out.extend(events),
        Err(_) => crate::log!(Debug, "ignored a notification that is not klav's"),
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
