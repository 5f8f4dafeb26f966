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

const USAGE: &str = "usage: klav            run the server (configuration from the environment)
       klav --help     this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("klav: unknown argument {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::from(2);
        }
    };
    klav::log::set_level(config.log_level);
    raise_fd_limit();

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("klav: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }

    let mut cluster = None;
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => match Cluster::start(&config.data_dir, &ClusterOptions::default()) {
            Ok(c) => {
                log!(Info, "embedded PostgreSQL running in {}", config.data_dir.display());
                let url = c.url("postgres");
                cluster = Some(c);
                url
            }
            Err(e) => {
                eprintln!("klav: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let secret = match jwt_secret(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("klav: cannot keep a JWT secret in {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    log!(
        Info,
        "starting: listen {}:{}, database {}, {} database workers, {} hashing threads, \
         retention {} per room",
        config.host,
        config.port,
        if config.database_url.is_some() { redact_url(&url) } else { "embedded".into() },
        config.db_workers,
        config.hash_workers,
        config.max_logs_per_room
    );
    let running = match klav::server::start(config.clone(), &url, &secret) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("klav: {e}");
            return ExitCode::FAILURE;
        }
    };
    log!(Info, "listening on {}", running.addr);
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
