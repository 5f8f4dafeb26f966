//! The embedded PostgreSQL cluster: with no `DATABASE_URL`, Klav runs a private
//! cluster from the PostgreSQL binaries installed on the machine.
//!
//! Layout under the data directory:
//! `pg/` (the cluster), `run/` (its Unix socket; no TCP), `pg.log`, `klav.lock`.
//! PostgreSQL refuses to run as root, so when we are root every PostgreSQL command
//! runs as the `postgres` system user (uid/gid switched in the child).
//!
//! The integration tests start their throwaway cluster with this same code.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the embedded cluster could not be provided.
#[derive(Debug)]
pub enum EmbeddedError {
    /// No `initdb`/`pg_ctl` on PATH or under `/usr/lib/postgresql/*/bin`.
    BinariesNotFound,
    /// Another process holds this data directory.
    Locked(PathBuf),
    /// We are root and there is no `postgres` user to run the cluster as.
    NoPostgresUser,
    /// A directory the cluster needs cannot be made or reached.
    Dir(PathBuf, std::io::Error),
    /// `initdb` / `pg_ctl` failed; the text is their output (or the log's tail).
    Command { what: &'static str, output: String },
}

impl fmt::Display for EmbeddedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmbeddedError::BinariesNotFound => write!(
                f,
                "no PostgreSQL server binaries found: DATABASE_URL is unset, so klav \
                 wants to run its own embedded PostgreSQL, which needs `initdb`, \
                 `pg_ctl` and `postgres` on PATH or under /usr/lib/postgresql/<version>/bin. \
                 Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora: \
                 `dnf install postgresql-server`; macOS: `brew install postgresql`), \
                 or set DATABASE_URL=postgresql://user:password@host:5432/dbname to use \
                 an existing PostgreSQL server."
            ),
            EmbeddedError::Locked(p) => write!(
                f,
                "the data directory {} is in use by another klav process; stop it first \
                 or set KLAV_DATA_DIR to another directory",
                p.display()
            ),
            EmbeddedError::NoPostgresUser => write!(
                f,
                "klav runs as root, and PostgreSQL refuses to; there is no `postgres` \
                 system user to run the embedded cluster as (create one, run klav as \
                 another user, or set DATABASE_URL)"
            ),
            EmbeddedError::Dir(p, e) => write!(f, "cannot prepare {}: {e}", p.display()),
            EmbeddedError::Command { what, output } => {
                write!(f, "embedded PostgreSQL: {what} failed:\n{output}")
            }
        }
    }
}

impl std::error::Error for EmbeddedError {}

/// Knobs that differ between the product and the tests.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            settings: vec![
                ("max_connections".into(), "200".into()),
                ("shared_buffers".into(), "128MB".into()),
            ],
        }
    }
}

/// A running cluster this process started (and will stop).
pub struct Cluster {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    run_as: Option<(u32, u32)>,
    settings: Vec<(String, String)>,
    /// Held for the cluster's lifetime: a second klav on the same directory fails.
    _lock: fs::File,
    stopped: bool,
}

impl Cluster {
    /// Creates the cluster on first use, then starts it.
    pub fn start(data_dir: &Path, opts: &ClusterOptions) -> Result<Cluster, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user().ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        make_dir(data_dir, run_as)?;
        let data_dir =
            fs::canonicalize(data_dir).map_err(|e| EmbeddedError::Dir(data_dir.into(), e))?;
        let lock = lock_dir(&data_dir)?;

        let pgdata = data_dir.join("pg");
        let socket_dir = socket_dir_for(&data_dir);
        make_dir(&socket_dir, run_as)?;
        let log_file = data_dir.join("pg.log");
        let cluster = Cluster {
            bin_dir,
            pgdata,
            socket_dir,
            log_file,
            run_as,
            settings: opts.settings.clone(),
            _lock: lock,
            stopped: false,
        };
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        // A cluster left running by a klav that was killed: we hold the lock now,
        // so it is ours to restart with our settings.
        if cluster
            .pg_ctl(&["status"])
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            let _ = cluster.pg_ctl(&["stop", "-m", "fast", "-w"]);
        }
        cluster.pg_start()?;
        Ok(cluster)
    }

    /// A `postgres` URL for `dbname` over this cluster's Unix socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://postgres@localhost/{dbname}?host={}&port=5432",
            self.socket_dir.display()
        )
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Stops PostgreSQL (fast mode: open sessions are ended, data is flushed).
    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let out = self
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"])
            .map_err(|e| EmbeddedError::Command {
                what: "pg_ctl stop",
                output: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                what: "pg_ctl stop",
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Starts PostgreSQL again after [`Cluster::stop`] (fault-injection tests use this).
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.pg_start()?;
        self.stopped = false;
        Ok(())
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        make_dir(&self.pgdata, self.run_as)?;
        fs::set_permissions(&self.pgdata, fs::Permissions::from_mode(0o700))
            .map_err(|e| EmbeddedError::Dir(self.pgdata.clone(), e))?;
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .map_err(|e| EmbeddedError::Command {
                what: "initdb",
                output: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                what: "initdb",
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    fn pg_start(&self) -> Result<(), EmbeddedError> {
        let mut opts = format!(
            "-c listen_addresses='' -c port=5432 -k {}",
            self.socket_dir.display()
        );
        for (k, v) in &self.settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| EmbeddedError::Command {
                what: "pg_ctl start",
                output: e.to_string(),
            })?;
        if !out.status.success() {
            let log = fs::read_to_string(&self.log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            return Err(EmbeddedError::Command {
                what: "pg_ctl start",
                output: format!(
                    "{}\n(last lines of {}):\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_file.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
            });
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.stdin(Stdio::null());
        // PostgreSQL tools read these; a caller's values must not leak in.
        for var in ["PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            cmd.env("HOME", &self.pgdata);
            // The child must not start in a directory the postgres user cannot read.
            cmd.current_dir("/");
        }
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The directory holding `initdb` and `pg_ctl`: `KLAV_PG_BIN` when set (and then
/// only it), else PATH, then the newest `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KLAV_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return (dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn postgres_user() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the
    // two fields out before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

fn make_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
    fs::create_dir_all(dir).map_err(|e| EmbeddedError::Dir(dir.into(), e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| EmbeddedError::Dir(dir.into(), e))?;
        // The postgres user must be able to reach the directory through its parents.
        let mut p = dir.parent();
        while let Some(parent) = p {
            if let Ok(meta) = fs::metadata(parent) {
                if meta.permissions().mode() & 0o001 == 0 {
                    return Err(EmbeddedError::Dir(
                        dir.into(),
                        std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!(
                                "{} is not searchable by the postgres user; choose a \
                                 KLAV_DATA_DIR outside it",
                                parent.display()
                            ),
                        ),
                    ));
                }
            }
            p = parent.parent();
        }
    }
    Ok(())
}

fn lock_dir(data_dir: &Path) -> Result<fs::File, EmbeddedError> {
    let path = data_dir.join("klav.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EmbeddedError::Dir(path.clone(), e))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(EmbeddedError::Locked(data_dir.into()));
    }
    Ok(file)
}

/// `run/` inside the data directory, unless that path is too long for a Unix socket
/// name (108 bytes on Linux); then a per-directory folder under /tmp.
fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let preferred = data_dir.join("run");
    if preferred.as_os_str().len() + "/.s.PGSQL.5432.lock".len() < 100 {
        return preferred;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    PathBuf::from(format!("/tmp/klav-{h:016x}"))
}
