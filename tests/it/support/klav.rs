//! The real binary as a child process, for what only a process shows: exit codes,
//! signals, descriptor limits, its log on stderr, several nodes on one database.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::{SECRET, WAIT};
use crate::support::wait::{eventually, poll};

/// `klav` running as a child process, with its stderr collected (and shown in
/// the test's output if the test fails while it runs).
pub struct Klav {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    /// While set, nobody reads its stderr: the pipe fills and writes to it block.
    stall: Arc<AtomicBool>,
}

/// `klav` as a child process on a data directory (embedded PostgreSQL unless `env`
/// sets `DATABASE_URL`), listening on an ephemeral loopback port, with extra
/// environment variables.
pub fn spawn_klav(data_dir: &Path, env: &[(&str, &str)]) -> Klav {
    spawn_klav_with(data_dir, env, None)
}

/// As [`spawn_klav`], optionally under a file descriptor limit (soft and hard).
pub fn spawn_klav_with(data_dir: &Path, env: &[(&str, &str)], max_fds: Option<u64>) -> Klav {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_klav"));
    cmd.env_remove("DATABASE_URL")
        .env("KLAV_DATA_DIR", data_dir)
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", SECRET)
        .env("KLAV_REGISTER_PER_ADDR", "1000000")
        .env("KLAV_METRICS_PER_ADDR_PER_SEC", "1000000");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(n) = max_fds {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stall = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let log = log.clone();
        let stall = stall.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                while stall.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "klav did not report its address; stderr:\n{}",
                log.lock().unwrap()
            );
        }
    };
    Klav {
        child,
        addr,
        stderr: log,
        reader: Some(reader),
        stall,
    }
}

impl Klav {
    /// Stops (or resumes) reading its stderr.
    pub fn stall_stderr(&self, stalled: bool) {
        self.stall.store(stalled, Ordering::Relaxed);
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (within [`WAIT`]) until its stderr holds `needle`; otherwise
    /// panics saying `what` never happened, with what it did write.
    pub fn wait_for_stderr(&self, needle: &str, what: &str) {
        eventually(WAIT, Duration::from_millis(20), || {
            let log = self.stderr();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(format!("{what}:\n{log}"))
            }
        });
    }

    /// Everything it wrote to stderr (call after it exited).
    pub fn full_stderr(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.stderr()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Its exit status, if it exits within `wait`.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        poll(wait, Duration::from_millis(20), || {
            self.child.try_wait().unwrap()
        })
    }

    /// SIGTERM, then its exit status (it must exit within 30 s).
    pub fn terminate(&mut self) -> ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for Klav {
    fn drop(&mut self) {
        self.stall_stderr(false);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what the process said. (The reader is not joined:
        // a child of klav may still hold the pipe open.)
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of klav on {} (pid {}) ----\n{}",
                self.addr,
                self.pid(),
                self.stderr()
            );
        }
    }
}

/// SIGTERM to a child, then its exit status (it must exit within 30 s).
pub fn terminate(child: &mut Child) -> ExitStatus {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    poll(Duration::from_secs(30), Duration::from_millis(50), || {
        child.try_wait().unwrap()
    })
    .expect("klav did not exit after SIGTERM")
}
