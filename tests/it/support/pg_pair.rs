//! A PostgreSQL primary with a streaming standby, both started by the test
//! (`initdb`, `pg_basebackup -R`), on loopback TCP ports of their own, for
//! failover tests: stop the primary (`pg_ctl stop -m immediate`), promote the
//! standby (`pg_ctl promote`), bring the old primary back as a read-only
//! standby. Run as the `postgres` user (`runuser`) when the tests run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use klav::db::embedded::find_bin_dir;

/// Whether commits wait for the standby (`synchronous_standby_names`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Standby {
    Synchronous,
    Asynchronous,
}

/// One PostgreSQL server of the pair.
pub struct Server {
    pub data: PathBuf,
    pub port: u16,
    log: PathBuf,
}

pub struct PgPair {
    dir: PathBuf,
    bin: PathBuf,
    /// The primary at the start (after a failover: the old primary).
    pub first: Server,
    /// The standby at the start (after a failover: the primary).
    pub second: Server,
}

/// The database the pair serves to klav.
pub const DB: &str = "klav";

impl PgPair {
    /// A primary and a streaming standby of it, `mode` deciding whether
    /// commits wait for it; returns once the standby streams (and, when
    /// synchronous, is the synchronous one). `None` when PostgreSQL's
    /// programs are not installed.
    pub fn start(name: &str, mode: Standby) -> Option<PgPair> {
        // The directory initdb really lives in (PATH may hold links to
        // only some of PostgreSQL's programs).
        let bin = std::fs::canonicalize(find_bin_dir()?.join("initdb"))
            .ok()?
            .parent()?
            .to_path_buf();
        if !bin.join("pg_basebackup").exists() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("klav-pair-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chown_to_postgres(&dir);
        let pair = PgPair {
            first: Server {
                data: dir.join("a"),
                port: free_port(),
                log: dir.join("a.log"),
            },
            second: Server {
                data: dir.join("b"),
                port: free_port(),
                log: dir.join("b.log"),
            },
            dir,
            bin,
        };
        pair.run(
            "initdb",
            &[
                "-D",
                path(&pair.first.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
        );
        // Synchronous: each COMMIT waits until the standby has applied it,
        // which it does no sooner than 100 ms after (recovery_min_apply_delay,
        // set below): a primary killed under load dies with commits in
        // flight, whose clients cannot know whether they took effect.
        let (sync_names, commit) = match mode {
            Standby::Synchronous => ("standby", "remote_apply"),
            Standby::Asynchronous => ("", "on"),
        };
        append(
            &pair.first.data.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n\
                 synchronous_commit = {commit}\nsynchronous_standby_names = '{sync_names}'\n\
                 max_connections = 200\nshared_buffers = 32MB\nfsync = off\n\
                 full_page_writes = off\nwal_keep_size = 256MB\n",
                pair.first.port,
                pair.dir.display()
            ),
        );
        pair.pg_ctl(&pair.first, "start");
        pair.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pair.first.port.to_string(),
                "-U",
                "postgres",
                "-D",
                path(&pair.second.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        // The standby: its own port, named for synchronous_standby_names,
        // applying commits late (see above; promotion ends the wait), and
        // waiting for no standby of its own once promoted.
        let delay = match mode {
            Standby::Synchronous => "100ms",
            Standby::Asynchronous => "0",
        };
        append(
            &pair.second.data.join("postgresql.auto.conf"),
            &format!(
                "port = {}\nsynchronous_standby_names = ''\nrecovery_min_apply_delay = '{delay}'\n\
                 primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'\n",
                pair.second.port, pair.first.port
            ),
        );
        pair.pg_ctl(&pair.second, "start");
        let want = match mode {
            Standby::Synchronous => "sync",
            Standby::Asynchronous => "async",
        };
        let mut admin = pair.admin(&pair.first);
        crate::support::wait::eventually(
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(50),
            || {
                let states: Vec<String> = admin
                    .query("SELECT sync_state FROM pg_stat_replication", &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                match states.iter().any(|s| s == want) {
                    true => Ok(()),
                    false => Err(format!("the standby never streamed ({want}): {states:?}")),
                }
            },
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {DB}"))
            .unwrap();
        Some(pair)
    }

    /// klav's `DATABASE_URL`: both hosts, the writable one wanted.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/{DB}?target_session_attrs=read-write",
            self.first.port, self.second.port
        )
    }

    /// A connection to one server's klav database.
    pub fn client(&self, s: &Server) -> postgres::Client {
        postgres::Client::connect(
            &format!("postgresql://postgres@127.0.0.1:{}/{DB}", s.port),
            postgres::NoTls,
        )
        .unwrap()
    }

    fn admin(&self, s: &Server) -> postgres::Client {
        postgres::Client::connect(
            &format!("postgresql://postgres@127.0.0.1:{}/postgres", s.port),
            postgres::NoTls,
        )
        .unwrap()
    }

    /// The primary dies: `pg_ctl stop -m immediate` (no shutdown checkpoint,
    /// sessions cut as by a crash).
    pub fn kill_first(&self) {
        self.pg_ctl(&self.first, "stop -m immediate");
    }

    /// The standby becomes the primary.
    pub fn promote_second(&self) {
        self.pg_ctl(&self.second, "promote");
    }

    /// The old primary comes back as a standby of the new one (read-only).
    pub fn first_back_as_standby(&self) {
        std::fs::write(self.first.data.join("standby.signal"), "").unwrap();
        append(
            &self.first.data.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=old'\n\
                 synchronous_standby_names = ''\n",
                self.second.port
            ),
        );
        chown_to_postgres(&self.first.data);
        self.pg_ctl(&self.first, "start");
    }

    fn pg_ctl(&self, s: &Server, what: &str) {
        let mut args = vec!["-D", path(&s.data), "-l", path(&s.log), "-w", "-t", "60"];
        args.extend(what.split(' '));
        self.run("pg_ctl", &args);
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let bin = self.bin.join(program);
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out
    }

    /// Both servers' logs (shown when a command fails).
    pub fn logs(&self) -> String {
        [&self.first, &self.second]
            .iter()
            .map(|s| {
                format!(
                    "---- {} ----\n{}",
                    s.log.display(),
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for s in [&self.first, &self.second] {
            let _ = Command::new(if unsafe { libc::geteuid() } == 0 {
                "runuser"
            } else {
                "true"
            })
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", path(&s.data), "stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .status();
            if unsafe { libc::geteuid() } != 0 {
                let _ = Command::new(self.bin.join("pg_ctl"))
                    .args(["-D", path(&s.data), "stop", "-m", "immediate"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Hands a directory (recursively) to the `postgres` user when running as root.
fn chown_to_postgres(dir: &Path) {
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown {}", dir.display());
    }
}
