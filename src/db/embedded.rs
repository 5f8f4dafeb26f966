//! The embedded PostgreSQL cluster: with no `DATABASE_URL`, Klav runs a private
//! cluster from the PostgreSQL binaries installed on the machine.
//!
//! Layout under the data directory:
//! `pg/` (the cluster), `run/` (its Unix socket; no TCP), `pg.log`, `klav.lock`,
//! `pg-password`.
//! PostgreSQL refuses to run as root, so when we are root every PostgreSQL command
//! runs as the `postgres` system user (uid/gid switched in the child).
//!
//! Only klav may reach the cluster: the data and socket directories are mode 0700
//! and owned by the cluster's user, the socket is 0700
//! (`unix_socket_permissions`), and every connection must authenticate with the
//! SCRAM password generated at `initdb` and kept in `pg-password` (mode 0600).
//! A cluster created by an earlier version with `trust` authentication is
//! converted at start: its role gets a password, then `pg_hba.conf` is replaced.
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
    /// The socket directory exists but could be someone else's: not a directory,
    /// not owned by the cluster's user, or open to others.
    UnsafeSocketDir(PathBuf, String),
    /// The cluster requires a password and `pg-password` is gone.
    PasswordLost(PathBuf),
    /// Converting a `trust` cluster to password authentication failed.
    Secure(String),
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
            EmbeddedError::UnsafeSocketDir(p, why) => write!(
                f,
                "refusing to use {} as the embedded PostgreSQL's socket directory: {why}; \
                 remove it, or choose a shorter KLAV_DATA_DIR",
                p.display()
            ),
            EmbeddedError::PasswordLost(p) => write!(
                f,
                "{} is missing, and the embedded cluster requires that password; restore \
                 the file, or replace the cluster's pg_hba.conf with the single line \
                 `local all all trust` and klav will set a new password at its next start",
                p.display()
            ),
            EmbeddedError::Secure(why) => write!(
                f,
                "cannot switch the embedded PostgreSQL to password authentication: {why}"
            ),
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
    /// The `postgres` role's password (from `pg-password`).
    password: String,
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
        make_private_dir(data_dir, run_as)?;
        let data_dir =
            fs::canonicalize(data_dir).map_err(|e| EmbeddedError::Dir(data_dir.into(), e))?;
        let lock = lock_dir(&data_dir)?;

        let pgdata = data_dir.join("pg");
        let socket_dir = socket_dir_for(&data_dir);
        if socket_dir.starts_with(&data_dir) {
            make_private_dir(&socket_dir, run_as)?;
        } else {
            shared_socket_dir(&socket_dir, run_as)?;
        }
        let log_file = data_dir.join("pg.log");
        let password_file = data_dir.join(PASSWORD_FILE);
        let fresh = !pgdata.join("PG_VERSION").exists();
        let hba_current = !fresh && hba_is_current(&pgdata.join("pg_hba.conf"));
        let password = match fs::read_to_string(&password_file) {
            Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
            Ok(_) | Err(_) if hba_current => {
                return Err(EmbeddedError::PasswordLost(password_file));
            }
            _ => write_password(&password_file, run_as)?,
        };
        let cluster = Cluster {
            bin_dir,
            pgdata,
            socket_dir,
            log_file,
            run_as,
            settings: opts.settings.clone(),
            password,
            _lock: lock,
            stopped: false,
        };
        if fresh {
            cluster.initdb(&password_file)?;
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
        if !hba_current {
            cluster.require_password()?;
        }
        Ok(cluster)
    }

    /// Gives the `postgres` role its password over the still-`trust` socket, then
    /// makes the password required (a cluster from an earlier version, or one just
    /// created: `initdb` writes host lines we do not want either).
    fn require_password(&self) -> Result<(), EmbeddedError> {
        let secure = |e: &dyn fmt::Display| EmbeddedError::Secure(e.to_string());
        let mut client = postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(5432)
            .user("postgres")
            .password(&self.password)
            .dbname("postgres")
            .connect(postgres::NoTls)
            .map_err(|e| secure(&e))?;
        // The password is hex, so it can be quoted literally.
        client
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256'; \
                 ALTER ROLE postgres PASSWORD '{}'",
                self.password
            ))
            .map_err(|e| secure(&e))?;
        let hba = self.pgdata.join("pg_hba.conf");
        fs::write(&hba, HBA_CONF).map_err(|e| EmbeddedError::Dir(hba.clone(), e))?;
        client
            .batch_execute("SELECT pg_reload_conf()")
            .map_err(|e| secure(&e))?;
        Ok(())
    }

    /// A `postgres` URL for `dbname` over this cluster's Unix socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://postgres:{}@localhost/{dbname}?host={}&port=5432",
            self.password,
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

    fn initdb(&self, password_file: &Path) -> Result<(), EmbeddedError> {
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
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
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
            "-c listen_addresses='' -c port=5432 -c unix_socket_permissions=0700 -k {}",
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
                if !searchable_by(&meta, uid, gid) {
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

/// Whether a directory can be entered by `uid` (in group `gid`).
fn searchable_by(meta: &fs::Metadata, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if meta.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// [`make_dir`], then mode 0700: the directory holds the cluster, its socket or
/// its password, and nobody but its owner (and root) may enter it.
fn make_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
    make_dir(dir, owner)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| EmbeddedError::Dir(dir.into(), e))
}

/// The socket directory under /tmp (used when the data directory's path is too
/// long for a socket name): its name is predictable, so anyone could create it
/// first. It is created owner-only; an existing one is used only if it is a real
/// directory owned by the cluster's user (then tightened to 0700 if needed).
fn shared_socket_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = owner
        .map(|(u, _)| u)
        .unwrap_or_else(|| unsafe { libc::geteuid() });
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some((u, g)) = owner {
                std::os::unix::fs::chown(dir, Some(u), Some(g))
                    .map_err(|e| EmbeddedError::Dir(dir.into(), e))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(EmbeddedError::Dir(dir.into(), e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| EmbeddedError::Dir(dir.into(), e))?;
    if !meta.file_type().is_dir() {
        return Err(EmbeddedError::UnsafeSocketDir(
            dir.into(),
            "it is not a directory".into(),
        ));
    }
    if meta.uid() != uid {
        return Err(EmbeddedError::UnsafeSocketDir(
            dir.into(),
            format!("it is owned by uid {}, not {uid}", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| EmbeddedError::Dir(dir.into(), e))?;
    }
    Ok(())
}

/// The password of the cluster's `postgres` role, in the data directory.
pub const PASSWORD_FILE: &str = "pg-password";

/// The whole `pg_hba.conf`: password connections over the Unix socket only.
const HBA_CONF: &str = "# Written by klav: SCRAM password connections over the Unix socket only\n\
# (the password is in the data directory's pg-password; the socket is 0700).\n\
local all all scram-sha-256\n";

/// Whether `pg_hba.conf` says what [`HBA_CONF`] says (comments aside).
fn hba_is_current(path: &Path) -> bool {
    let rules = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|words| !words.is_empty())
            .collect()
    };
    fs::read_to_string(path).is_ok_and(|text| rules(&text) == rules(HBA_CONF))
}

/// A new random password (hex), written owner-only for the cluster's user, who
/// reads it at `initdb`.
fn write_password(path: &Path, owner: Option<(u32, u32)>) -> Result<String, EmbeddedError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| EmbeddedError::Dir(path.into(), std::io::Error::other(e.to_string())))?;
    let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dir_err = |e| EmbeddedError::Dir(path.into(), e);
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(dir_err)?;
    f.write_all(format!("{password}\n").as_bytes())
        .map_err(dir_err)?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(path, Some(u), Some(g)).map_err(dir_err)?;
    }
    Ok(password)
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
