//! One-line logs on stderr, filtered by `KLAV_LOG`, written by a thread of their
//! own.
//!
//! The event loop must never block, and a write to stderr blocks when stderr is
//! a pipe nobody drains fast enough. So a log line is formatted where it happens
//! and handed to a writer thread through a bounded queue; when the queue is full
//! the line is dropped and counted (`klav_log_lines_dropped_total` in `/metrics`)
//! rather than waited for. A chat server logs rarely (start, outages, kicks); a
//! logging framework would be most of its dependency tree, so this is a level, a
//! queue and a macro.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Lines waiting for the writer before new ones are dropped.
const QUEUE_LINES: usize = 1024;

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static WRITER: OnceLock<Sender<String>> = OnceLock::new();

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn writer() -> &'static Sender<String> {
    WRITER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
        std::thread::Builder::new()
            .name("klav-log".into())
            .spawn(move || write_lines(rx))
            .expect("cannot start the log writer thread");
        tx
    })
}

fn write_lines(rx: Receiver<String>) {
    let mut batch = String::new();
    while let Ok(line) = rx.recv() {
        batch.push_str(&line);
        let mut n = 1;
        while let Ok(more) = rx.try_recv() {
            batch.push_str(&more);
            n += 1;
            if batch.len() > 64 * 1024 {
                break;
            }
        }
        let _ = std::io::stderr().lock().write_all(batch.as_bytes());
        batch.clear();
        WRITTEN.fetch_add(n, Ordering::Release);
    }
}

/// Queues one line; never blocks.
pub fn line(level: Level, args: std::fmt::Arguments<'_>) {
    let text = format!("{} {:5} {}\n", crate::time::now_iso(), level.name(), args);
    match writer().try_send(text) {
        Ok(()) => {
            QUEUED.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits (up to `wait`) until every queued line is written: for the end of the
/// process, never for the event loop.
pub fn flush(wait: Duration) {
    let deadline = Instant::now() + wait;
    while WRITTEN.load(Ordering::Acquire) < QUEUED.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `log!(Info, "accepted {}", n)`: timestamped, levelled, one line.
#[macro_export]
macro_rules! log {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::$lvl) {
            $crate::log::line($crate::log::Level::$lvl, format_args!($($arg)*));
        }
    };
}
