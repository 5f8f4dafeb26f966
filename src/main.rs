//! `klav`: configuration → embedded PostgreSQL (when `DATABASE_URL` is unset) →
//! schema → workers → listen → serve until SIGINT/SIGTERM → stop cleanly.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use klav::config::{redact_url, Config};
use klav::db::embedded::{Cluster, ClusterOptions};
use klav::log;

const USAGE: &str = "\
usage: klav                  run the server
       klav import-json <DIR> [--dry-run]
                             import the JSON server's files (see klav import-json --help)
       klav api-key create|list|revoke [NAME]
                             keys of the server API (see klav api-key --help)
       klav webhooks failed | retry [ID|--all]
                             dead-lettered webhook events (see klav webhooks --help)
       klav -h | --help      this text
       klav -V | --version   the version

Configuration comes from the environment, or from a .env file in the working
directory (the environment wins): DATABASE_URL (unset: an embedded PostgreSQL
under KLAV_DATA_DIR, ./klav-data), HOST and PORT (0.0.0.0:5000), JWT_SECRET
and the KLAV_* settings. Every variable is in the configuration table of
README.md; deploying is in docs/operations.md.";

const IMPORT_USAGE: &str = "\
usage: klav import-json <DIR> [--dry-run]

Imports the JSON server's state from DIR, which must hold users.json,
friends_state.json and chat_state.json: users (passwords stored as argon2id
hashes), follows, rooms with their members, and every chat log entry.
Importing the same files again adds only what is new; on any error nothing
is imported.

  --dry-run    validate and compare, print what would be imported, write nothing
  -h, --help   this text

It writes to the database the server uses, configured the same way (the
environment or .env): DATABASE_URL, or else the embedded PostgreSQL under
KLAV_DATA_DIR (./klav-data; stop the server first, it holds the data directory).
Progress goes to stderr, the summary to stdout. Exit codes: 0 imported (or dry
run done), 1 import failed (nothing imported), 2 usage or configuration error.";

const API_KEY_USAGE: &str = "\
usage: klav api-key create NAME    make a key; it is printed once, only its hash is kept
       klav api-key list           every key: name, created, last used, revoked
       klav api-key revoke NAME    refuse the key from now on (on every node within a second)

Keys authenticate an application's backend to the server API under /api/v1/
(Authorization: Bearer <key>; see docs/api.md). The commands work on the
database the server uses, configured the same way (the environment or .env):
DATABASE_URL, or else the embedded PostgreSQL under KLAV_DATA_DIR (./klav-data;
stop the server first, it holds the data directory). Exit codes: 0 done, 1 the
command failed (a name taken or unknown, the database unreachable), 2 usage or
configuration error.";

fn main() -> ExitCode {
    let code = run();
    // Log lines are written by a thread of their own: let it finish.
    log::flush(Duration::from_secs(2));
    code
}

fn run() -> ExitCode {
    // Lossy rather than `args()`, which panics on an argument that is not UTF-8.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match args.first().map(String::as_str) {
        None => serve(),
        Some("import-json") => import_json(&args[1..]),
        Some("api-key") => api_key(&args[1..]),
        Some("webhooks") => webhooks(&args[1..]),
        Some("-h" | "--help") if args.len() == 1 => {
            println!(
                "klav {}: a real-time chat server\n\n{USAGE}",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") if args.len() == 1 => {
            println!("klav {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(first) => {
            // `--help` and `--version` take nothing after them.
            let other = match first {
                "-h" | "--help" | "-V" | "--version" => &args[1],
                _ => first,
            };
            eprintln!("klav: unknown argument {other:?} (see klav --help)");
            ExitCode::from(2)
        }
    }
}

/// The server, until SIGINT or SIGTERM.
fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::from(2);
        }
    };
    klav::log::set_level(config.log_level);
    install_panic_policy();
    tune_allocator();
    raise_fd_limit();

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("klav: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (url, cluster) = match database(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::from(2);
        }
    };
    let secret = match jwt_secret(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "klav: cannot keep a JWT secret in {}: {e}",
                config.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    log!(
        Info,
        "starting: listen {}:{}, database {}, {} database workers, {} hashing threads, \
         retention {} per room",
        config.host,
        config.port,
        if config.database_url.is_some() {
            redact_url(&url)
        } else {
            "embedded".into()
        },
        config.db_workers,
        config.hash_workers,
        config.max_logs_per_room
    );
    if config.web {
        // Before the first page load reaches the loop, not during it.
        klav::web::prebuild();
    }
    let running = match klav::server::start(config.clone(), &url, &secret) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::FAILURE;
        }
    };
    log!(Info, "listening on {}", running.addr);
    if config.web {
        log!(Info, "web client: {}", web_address(running.addr));
    }
    while !stop.load(Ordering::Relaxed) && !running.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    log!(Info, "stopping");
    running.stop();
    if let Some(mut c) = cluster {
        if let Err(e) = c.stop() {
            log!(Error, "{e}");
        }
    }
    log!(Info, "stopped");
    ExitCode::SUCCESS
}

/// The database to use: `DATABASE_URL`, or else the embedded PostgreSQL,
/// started here (and stopped by the caller).
fn database(
    config: &Config,
) -> Result<(String, Option<Cluster>), klav::db::embedded::EmbeddedError> {
    if let Some(url) = &config.database_url {
        return Ok((url.clone(), None));
    }
    let c = Cluster::start(&config.data_dir, &ClusterOptions::default())?;
    log!(
        Info,
        "embedded PostgreSQL running in {}",
        config.data_dir.display()
    );
    Ok((c.url("postgres"), Some(c)))
}

/// A subcommand's database work: the configuration read (exit 2 when it is
/// wrong), the database opened — `DATABASE_URL`, or the embedded PostgreSQL,
/// started for `work` and stopped after it — and `work`'s exit code.
fn with_database(work: impl FnOnce(&str) -> ExitCode) -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::from(2);
        }
    };
    klav::log::set_level(config.log_level);
    let (url, cluster) = match database(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::from(2);
        }
    };
    let code = work(&url);
    if let Some(mut c) = cluster {
        if let Err(e) = c.stop() {
            log!(Error, "{e}");
        }
    }
    code
}

/// Where a browser on this machine finds the web client.
fn web_address(addr: std::net::SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/", addr.port())
}

/// `JWT_SECRET`, or a random one generated once and kept in the data directory
/// (so tokens survive restarts).
fn jwt_secret(config: &Config) -> std::io::Result<Vec<u8>> {
    if let Some(s) = &config.jwt_secret {
        return Ok(s.as_bytes().to_vec());
    }
    let path = config.data_dir.join("jwt_secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().as_bytes().to_vec());
        }
    }
    log!(
        Warn,
        "JWT_SECRET is unset: using a generated secret kept in {}",
        path.display()
    );
    write_new_secret(&path)
}

fn write_new_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(hex.as_bytes())?;
    Ok(hex.into_bytes())
}

/// A panic is a bug, and a server with a dead thread is worse than no server: it
/// would keep its port and its clients but serve nobody. So any panic, on any
/// thread, is logged with its location and the process aborts (exit by SIGABRT),
/// for the supervisor (systemd `Restart=on-failure`) to start a fresh one. No
/// acknowledged message is lost: messages are acknowledged only once committed.
fn install_panic_policy() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        // Written directly (after what is queued): the process ends right here.
        log::flush(Duration::from_millis(200));
        eprintln!(
            "{} ERROR internal error (panic) in thread {name}: {info}; aborting so a supervisor can restart klav",
            klav::time::now_iso()
        );
        std::process::abort();
    }));
}

/// argon2 allocates 19 MiB per hash. glibc's adaptive mmap threshold would
/// move such blocks into the heap after the first free and keep them resident for
/// good (hundreds of MiB after a burst of logins); a fixed threshold keeps large
/// blocks in their own mappings, returned to the system when freed.
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; called before threads start.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Each connection is a file descriptor: use all the process may have.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `klav webhooks failed|retry`: 0 done, 1 failed, 2 usage or configuration.
fn webhooks(args: &[String]) -> ExitCode {
    use klav::webhooks::cli;
    let command = match cli::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("klav webhooks: {e} (see klav webhooks --help)");
            return ExitCode::from(2);
        }
    };
    if command == cli::Command::Help {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    with_database(|url| ExitCode::from(cli::run(url, &command, &mut std::io::stdout())))
}

/// `klav import-json <DIR> [--dry-run]`: exit 0 on success, 1 when the import
/// failed (nothing imported), 2 on usage or configuration errors.
fn import_json(args: &[String]) -> ExitCode {
    let mut dir = None;
    let mut dry_run = false;
    for a in args {
        match a.as_str() {
            "--dry-run" => dry_run = true,
            "-h" | "--help" => {
                println!("{IMPORT_USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') || dir.is_some() => {
                eprintln!(
                    "klav import-json: unexpected argument {s:?} (see klav import-json --help)"
                );
                return ExitCode::from(2);
            }
            s => dir = Some(std::path::PathBuf::from(s)),
        }
    }
    let Some(dir) = dir else {
        eprintln!(
            "klav import-json: the directory holding the JSON files is required \
             (see klav import-json --help)"
        );
        return ExitCode::from(2);
    };
    if !dir.is_dir() {
        eprintln!("klav import-json: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    with_database(|url| {
        match klav::import::import_dir(url, &dir, dry_run, &mut std::io::stderr()) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("klav import-json: {e}\nnothing was imported");
                ExitCode::from(1)
            }
        }
    })
}

/// `klav api-key create NAME | list | revoke NAME`: exit 0 when done, 1 when
/// the command failed, 2 on usage or configuration errors.
fn api_key(args: &[String]) -> ExitCode {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        ["-h" | "--help"] | [_, "-h" | "--help"] => {
            println!("{API_KEY_USAGE}");
            return ExitCode::SUCCESS;
        }
        ["create", name] => KeyCommand::Create(name),
        ["list"] => KeyCommand::List,
        ["revoke", name] => KeyCommand::Revoke(name),
        _ => {
            eprintln!(
                "klav api-key: expected create NAME, list or revoke NAME (see klav api-key --help)"
            );
            return ExitCode::from(2);
        }
    };
    with_database(|url| run_key_command(url, command))
}

/// What `klav api-key` was asked to do.
enum KeyCommand<'a> {
    Create(&'a str),
    List,
    Revoke(&'a str),
}

fn run_key_command(url: &str, command: KeyCommand<'_>) -> ExitCode {
    use klav::db::api_keys;
    let result = match command {
        KeyCommand::Create(name) => api_keys::create(url, name).map(|key| {
            println!("{key}");
            eprintln!("created API key {name:?}: it is shown this once, keep it secret");
        }),
        KeyCommand::List => api_keys::list(url).map(|keys| print!("{}", key_table(&keys))),
        KeyCommand::Revoke(name) => {
            api_keys::revoke(url, name).map(|()| println!("revoked API key {name:?}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("klav api-key: {e}");
            ExitCode::from(1)
        }
    }
}

/// `klav api-key list`: one line per key, tab-separated (name, created, last
/// used or `-`, `revoked <when>` or `active`), under a header.
fn key_table(keys: &[klav::db::api_keys::KeyInfo]) -> String {
    let at = |t: Option<std::time::SystemTime>| t.map_or("-".to_string(), klav::time::format_iso);
    let mut out = String::from("NAME\tCREATED\tLAST USED\tSTATUS\n");
    for k in keys {
        let status = match k.revoked_at {
            Some(t) => format!("revoked {}", klav::time::format_iso(t)),
            None => "active".to_string(),
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{status}\n",
            k.name,
            klav::time::format_iso(k.created_at),
            at(k.last_used_at)
        ));
    }
    out
}
