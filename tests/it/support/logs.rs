//! The in-process servers' log, shown only with a failing test.
//!
//! In-process servers log through `klav::log`, whose writer thread writes to the
//! process's stderr, which no test's output capture owns: a run would print the
//! lines of the deliberate faults (`ERROR database error: disk on fire`) among
//! the test names. So the harness points descriptor 2 at a pipe of its own; a
//! reader thread keeps klav's log lines (timestamp, level, text) in memory and
//! passes every other line on to the real stderr. When a test fails while a
//! server it started is still there, the lines logged since its first server
//! started go into the test's own output, which the test runner prints with the
//! failure. Log lines do not say which server wrote them: tests running at the
//! same time log into the same stream, so the excerpt may hold other tests'
//! lines too (`--test-threads=1` gives one test's alone).
//!
//! With `KLAV_TEST_LOG=live`, or `--nocapture`, stderr is left alone and every
//! line appears as it is written.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// The most log lines kept; older ones are forgotten first.
const KEEP_LINES: usize = 100_000;

/// Written to descriptor 2 to learn when everything written before it was read.
const MARK: &str = "\u{1}klav-it-mark ";

struct Kept {
    lines: VecDeque<String>,
    /// The sequence number of `lines[0]`.
    first: u64,
    /// Marks the reader has passed.
    marks: HashSet<u64>,
}

impl Kept {
    fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }
}

struct Capture {
    kept: Mutex<Kept>,
    read: Condvar,
}

static CAPTURE: OnceLock<Option<Capture>> = OnceLock::new();
static NEXT_MARK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Where this test's excerpt starts: the log's end when its first server started.
    static SINCE: Cell<Option<u64>> = const { Cell::new(None) };
    /// Whether this test's excerpt was printed already (several servers may drop
    /// while one failure unwinds).
    static SHOWN: Cell<bool> = const { Cell::new(false) };
}

/// Whether lines are shown as they are written rather than kept.
fn live() -> bool {
    std::env::var("KLAV_TEST_LOG").is_ok_and(|v| v == "live")
        || std::env::var("RUST_TEST_NOCAPTURE").is_ok_and(|v| v != "0")
        || std::env::args().any(|a| a == "--nocapture" || a == "--no-capture")
}

fn capture() -> Option<&'static Capture> {
    CAPTURE
        .get_or_init(|| if live() { None } else { install() })
        .as_ref()
}

/// Points descriptor 2 at a pipe read by [`read_stderr`]; `None` (stderr left
/// as it was) if any step fails.
fn install() -> Option<Capture> {
    let mut fds = [0; 2];
    // SAFETY: plain descriptor calls; every descriptor made here is owned below.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return None;
        }
        let real = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
        if real < 0 || libc::dup2(fds[1], 2) < 0 {
            libc::close(fds[0]);
            libc::close(fds[1]);
            return None;
        }
        libc::close(fds[1]);
        let pipe = File::from_raw_fd(fds[0]);
        let real = File::from_raw_fd(real);
        std::thread::Builder::new()
            .name("klav-it-stderr".into())
            .spawn(move || read_stderr(pipe, real))
            .ok()?;
    }
    Some(Capture {
        kept: Mutex::new(Kept {
            lines: VecDeque::new(),
            first: 0,
            marks: HashSet::new(),
        }),
        read: Condvar::new(),
    })
}

/// `2026-01-02T03:04:05.123456+00:00 ERROR ...`: what `klav::log` writes.
fn is_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 39
        && b[10] == b'T'
        && line.get(26..33) == Some("+00:00 ")
        && matches!(
            line.get(33..39),
            Some("ERROR " | "WARN  " | "INFO  " | "DEBUG ")
        )
}

/// Splits the pipe into lines: klav's log lines are kept, marks noted, and
/// anything else goes on to the real stderr at once.
fn read_stderr(mut pipe: File, mut real: File) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=at).collect();
            // A mark written while a long batch was half in the pipe can land
            // inside a line: the part before it goes back to wait for the rest.
            if let Some(p) = raw.windows(MARK.len()).position(|w| w == MARK.as_bytes()) {
                let id = String::from_utf8_lossy(&raw[p + MARK.len()..])
                    .trim()
                    .parse()
                    .unwrap_or(u64::MAX);
                let mut rest = raw[..p].to_vec();
                rest.append(&mut pending);
                pending = rest;
                if let Some(Some(c)) = CAPTURE.get() {
                    c.kept.lock().unwrap().marks.insert(id);
                    c.read.notify_all();
                }
                continue;
            }
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
            match CAPTURE.get() {
                Some(Some(c)) if is_log_line(&line) => {
                    let mut kept = c.kept.lock().unwrap();
                    kept.lines.push_back(line);
                    if kept.lines.len() > KEEP_LINES {
                        kept.lines.pop_front();
                        kept.first += 1;
                    }
                }
                _ => {
                    let _ = real.write_all(&raw);
                }
            }
        }
    }
}

/// Waits until every line written so far (klav's queue included) was read.
fn settle(c: &Capture) {
    klav::log::flush(Duration::from_secs(1));
    let id = NEXT_MARK.fetch_add(1, Ordering::Relaxed);
    let mark = format!("{MARK}{id}\n");
    // SAFETY: write(2) of a buffer we own to descriptor 2 (the pipe).
    unsafe {
        libc::write(2, mark.as_ptr().cast(), mark.len());
    }
    let kept = c.kept.lock().unwrap();
    let _ = c
        .read
        .wait_timeout_while(kept, Duration::from_secs(1), |k| !k.marks.contains(&id));
}

/// Keeps the server log from here on for this test (the first call in a test
/// counts): called when a server starts.
pub fn server_started() {
    let Some(c) = capture() else {
        return;
    };
    if SINCE.get().is_none() {
        SINCE.set(Some(c.kept.lock().unwrap().end()));
    }
}

/// If this test is failing, prints the server log kept since its first server
/// started into the test's output (once per test).
pub fn show_if_failing() {
    if !std::thread::panicking() || SHOWN.get() {
        return;
    }
    let (Some(c), Some(since)) = (capture(), SINCE.get()) else {
        return;
    };
    SHOWN.set(true);
    settle(c);
    let kept = c.kept.lock().unwrap();
    let from = since.max(kept.first);
    let lines: Vec<&String> = kept
        .lines
        .iter()
        .skip((from - kept.first) as usize)
        .collect();
    eprintln!(
        "---- server log since this test's first server started ({} lines; \
         servers of tests running meanwhile log here too) ----",
        lines.len()
    );
    for l in lines {
        eprintln!("{l}");
    }
}
