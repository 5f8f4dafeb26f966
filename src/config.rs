//! Configuration: the environment (and an optional `.env` file in the working
//! directory), parsed once at start into a typed [`Config`].
//!
//! Every knob of the SPEC's configuration table is here with its default. A bad
//! value is a [`ConfigError`] naming the variable; `main` prints it and exits 2.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::client_addr::TrustedProxies;

/// Everything the server reads from its environment.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`, normalised to `postgresql://…`; `None` → embedded cluster.
    pub database_url: Option<String>,
    /// `HOST` (default `0.0.0.0`).
    pub host: String,
    /// `PORT` (default 5000; 0 picks a free port, which tests use).
    pub port: u16,
    /// `JWT_SECRET`; `None` → a random secret kept in the data directory.
    pub jwt_secret: Option<String>,
    /// `JWT_ALGORITHM`: HS256 (default), HS384 or HS512.
    pub jwt_algorithm: Algorithm,
    /// `JWT_EXPIRE_MINUTES` (default 60).
    pub jwt_expire_minutes: u64,
    /// `KLAV_SESSION_MAX_DAYS` (default 30): a login lasts at most this long.
    /// `refresh_token` never gives a token that expires later than this after
    /// the password was typed (the token's `auth_time`); past it, `BAD_TOKEN`.
    pub session_max: Duration,
    /// `KLAV_MIN_PASSWORD_LEN` (default 8): the fewest characters `/register`
    /// accepts in a password. Existing accounts are not affected.
    pub min_password_len: usize,
    /// How long a ticket from `POST /ws-ticket` may be used to open a
    /// WebSocket. Not an environment setting: 30 s; tests shorten it.
    pub ws_ticket_ttl: Duration,
    /// `KLAV_DB_WORKERS`: blocking PostgreSQL worker threads (default 4).
    pub db_workers: usize,
    /// `KLAV_HASH_WORKERS`: argon2 threads, kept apart from the database workers so a
    /// login storm cannot delay message persistence (default: half the cores, ≥ 1).
    pub hash_workers: usize,
    /// `KLAV_MAX_LOGS_PER_ROOM`: retention per room (default 1000, 0 = unlimited).
    pub max_logs_per_room: u64,
    /// `KLAV_RETENTION_INTERVAL_SECS`: how often the background prune runs (default 60).
    pub retention_interval: Duration,
    /// `KLAV_DATA_DIR`: embedded cluster and generated secret (default `./klav-data`).
    pub data_dir: PathBuf,
    /// `KLAV_STATEMENT_TIMEOUT_MS` (default 30000; 0 = none): the longest one
    /// statement of a general database worker may run (PostgreSQL's
    /// `statement_timeout` on its connections), so that a stuck query cannot hold
    /// a worker forever; the request gets `UNAVAILABLE`. Not the writer's: its
    /// batches are short, and one cut off would fail every write queued behind it.
    pub statement_timeout: Duration,
    /// `KLAV_DB_BATCH`: most messages the writer commits in one transaction
    /// (default 512; 1 turns group commit off, for comparison).
    pub db_batch: usize,
    /// `KLAV_MAX_OUTPUT_BYTES`: pending output a connection may accumulate before it
    /// is disconnected as a slow consumer (default 1 MiB).
    pub max_output_bytes: usize,
    /// `KLAV_MAX_CONNECTIONS`: open sockets beyond which new HTTP requests get 503
    /// (default 100,000).
    pub max_connections: usize,
    /// `KLAV_MAX_CONNS_PER_USER`: open WebSockets (and upgrades in progress) per
    /// user; beyond it the upgrade gets 429 (default 50).
    pub max_conns_per_user: usize,
    /// `KLAV_WS_OPENS_PER_USER_PER_MIN` (default 60): WebSocket upgrades one user
    /// may start per minute on a node, after a burst of
    /// [`WS_OPENS_BURST`]; beyond it the upgrade gets 429 with `Retry-After`.
    /// Each open and close is a presence transaction and an event to every
    /// subscribed follower, so reconnecting in a loop must not be free.
    pub ws_opens_per_user_per_min: u32,
    /// `KLAV_API_RATE` (default 50) and `KLAV_API_BURST` (default 200): server
    /// API requests per second each API key may make on a node, after a
    /// burst; beyond it the request gets 429 with `Retry-After`.
    pub api_rate: u32,
    pub api_burst: u32,
    /// `KLAV_MAX_CONNS_PER_ADDR`: open WebSockets per client address (the
    /// trusted-proxy rule applies); beyond it the upgrade gets 429 (default 1000).
    pub max_conns_per_addr: usize,
    /// `KLAV_MAX_CLIENT_BUFFER_BYTES`: input and output buffered for all clients
    /// together; beyond it the largest holders are closed first (default 256 MiB).
    pub max_client_buffer_bytes: usize,
    /// `KLAV_MAX_ROOMS_PER_USER`: rooms one user may belong to (default 500).
    pub max_rooms_per_user: usize,
    /// `KLAV_MAX_BLOCKS_PER_USER`: users one user may block (default 1000; the
    /// blocked list and each blocked user's memory of who blocks them stay
    /// bounded).
    pub max_blocks_per_user: usize,
    /// `KLAV_ROOMS_CREATED_PER_HOUR`: rooms one user may create per hour, a token
    /// bucket with the same burst (default 60).
    pub rooms_created_per_hour: u32,
    /// `KLAV_HTTP_TIMEOUT_SECS`: a partial HTTP request is closed after this (default 10).
    pub http_timeout: Duration,
    /// `KLAV_WS_PING_SECS`: idle WebSocket connections are pinged after this long and
    /// dropped if nothing arrives within as long again (default 30).
    pub ws_ping_interval: Duration,
    /// `KLAV_WS_TOKEN_EXPIRY`: `ignore` (default, as the old server did) keeps a
    /// WebSocket open past its token's `exp`; `close` warns (`token_expiring`) a
    /// minute before and closes 1008 at expiry unless the client sends `auth`
    /// with a newer token.
    pub ws_token_expiry_close: bool,
    /// `KLAV_RATE_PER_SEC` / `KLAV_RATE_BURST`: per-connection request token bucket
    /// (default 50/s, burst 100).
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    /// `KLAV_FLOOD_SECS`: a connection refused more than `KLAV_RATE_PER_SEC` times
    /// a second for this many seconds in a row is closed 1008 (default 5).
    pub flood_secs: u32,
    /// `KLAV_SHUTDOWN_SECS`: the longest a graceful shutdown may take (default 10).
    pub shutdown_timeout: Duration,
    /// `KLAV_ALLOWED_ORIGINS`: comma-separated origins allowed to upgrade; empty = any.
    pub allowed_origins: Vec<String>,
    /// `KLAV_METRICS_ADDR`: serve `/metrics` on this address only (e.g.
    /// `127.0.0.1:9100`), not on the public port (default unset: on the public
    /// port, as before).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `KLAV_METRICS_PER_ADDR_PER_SEC` (default 1): `/metrics` answers per client
    /// address per second on the public port, with a burst of ten times that;
    /// beyond it 429 and the connection closes. Each answer is kilobytes for a
    /// few bytes asked; a scraper asks every few seconds. `KLAV_METRICS_ADDR`
    /// has no such limit.
    pub metrics_per_addr_per_sec: u32,
    /// `KLAV_LOG`: error, warn, info (default) or debug.
    pub log_level: crate::log::Level,
    /// `KLAV_LOGIN_MAX_FAILURES` (default 5): failed logins for one username from
    /// one client address before each further failure doubles a wait (1 s, 2 s, …,
    /// at most `KLAV_LOGIN_WINDOW_SECS`); `KLAV_LOGIN_MAX_FAILURES_PER_ADDR`
    /// (default 20): failed logins from one client address, any usernames, within
    /// `KLAV_LOGIN_WINDOW_SECS` (default 300). Over either, `/login` answers 429.
    pub login_max_failures: u32,
    pub login_max_failures_per_addr: u32,
    pub login_window: Duration,
    /// `KLAV_REGISTER_PER_ADDR` (default 20) registrations per client address per
    /// `KLAV_REGISTER_WINDOW_SECS` (default 600), as a token bucket; beyond it
    /// `/register` answers 429.
    pub register_per_addr: u32,
    pub register_window: Duration,
    /// `KLAV_TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges of reverse
    /// proxies whose `X-Forwarded-For` names the client (default: none).
    pub trusted_proxies: TrustedProxies,
    /// `KLAV_HISTORY_CACHE_ENTRIES`: entries of active rooms kept in memory for
    /// `history` (default 200,000; 0 turns the cache off). Each room keeps at most
    /// its newest 200 (or the retention limit, if lower).
    pub history_cache_entries: usize,
    /// `KLAV_HISTORY_CACHE_BYTES`: memory those entries may hold, counted as
    /// stored (serialized, escapes included) (default 32 MiB; 0 turns the
    /// cache off). Least recently used rooms are dropped first.
    pub history_cache_bytes: usize,
    /// `KLAV_WEB`: serve the browser client at `/` (default `on`); `off` leaves
    /// only the API, for deployments whose users bring their own client.
    pub web: bool,
    /// `KLAV_NODE_NAME`: this node's name in a cluster (logs, `/metrics`, the
    /// `klav_nodes` table). Default: the host name and the port.
    pub node_name: Option<String>,
    /// `KLAV_CLUSTER` (default `on`): with `DATABASE_URL`, every node on the same
    /// database forms one cluster (see "Running a cluster" in docs/operations.md); `off`
    /// runs this node alone, without the bus (only safe when no other node uses
    /// the database). The embedded database is always single-node.
    pub cluster: bool,
    /// How long a loop turn reads before putting further reads off to the
    /// next turn (see `server::reading`). Not an environment setting: 4 ms;
    /// tests set zero so that every read goes through the put-off queues.
    pub turn_work: Duration,
    /// `KLAV_NODE_TIMEOUT_SECS` (default 10): a node whose heartbeat is older than
    /// this is dead for the others; its users go offline.
    pub node_timeout: Duration,
    /// `KLAV_WEBHOOK_URL`, `KLAV_WEBHOOK_SECRET`, `KLAV_WEBHOOK_THREADS`:
    /// webhooks (see `webhooks::config`); `None` (off) unless a URL is set.
    pub webhook: Option<crate::webhooks::WebhookConfig>,
    /// `KLAV_FAULT_INJECTION=1` enables the `__panic` request (for testing the
    /// panic policy only; never set it in production).
    pub fault_injection: bool,
}

/// WebSocket upgrades one user may start at once before
/// `KLAV_WS_OPENS_PER_USER_PER_MIN` applies (a page reload on a few devices).
pub const WS_OPENS_BURST: u32 = 20;

/// A configuration value that cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    DotEnv {
        line: usize,
        reason: &'static str,
    },
    /// A secret too short to resist guessing (its value is never printed).
    SecretTooShort {
        var: &'static str,
        len: usize,
    },
}

/// Shortest `JWT_SECRET` accepted: 256 bits, the size of the HS256 key. A short
/// secret can be recovered offline from any token it signed.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl From<crate::webhooks::config::Invalid> for ConfigError {
    fn from(e: crate::webhooks::config::Invalid) -> Self {
        ConfigError::Invalid {
            var: e.var,
            value: e.value,
            expected: e.expected,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                var,
                value,
                expected,
            } => write!(f, "{var}={value:?} is not valid: expected {expected}"),
            ConfigError::DotEnv { line, reason } => write!(f, ".env line {line}: {reason}"),
            ConfigError::SecretTooShort { var, len } => write!(
                f,
                "{var} is {len} bytes long: expected at least {MIN_JWT_SECRET_BYTES} bytes \
                 (e.g. `openssl rand -hex 32`), or leave it unset to use a generated secret"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Whether this node shares its database with other nodes: only with
    /// `DATABASE_URL` (nobody else can reach the embedded database).
    pub fn clustered(&self) -> bool {
        self.cluster && self.database_url.is_some()
    }

    /// Reads the process environment, with `.env` (if present in the working
    /// directory) filling in variables the environment does not set.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars: HashMap<String, String> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(".env") {
            vars = parse_dotenv(&text)?;
        }
        for (k, v) in std::env::vars() {
            vars.insert(k, v);
        }
        Config::from_map(&vars)
    }

    /// Builds a configuration from explicit variables (the environment, or a test's).
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| vars.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(Config {
            database_url: match get("DATABASE_URL") {
                None => None,
                Some(url) => Some(normalise_database_url(url)?),
            },
            host: get("HOST").unwrap_or("0.0.0.0").to_string(),
            port: parse(get("PORT"), "PORT", 5000, "a port number 0-65535")?,
            jwt_secret: match get("JWT_SECRET") {
                Some(s) if s.len() < MIN_JWT_SECRET_BYTES => {
                    return Err(ConfigError::SecretTooShort {
                        var: "JWT_SECRET",
                        len: s.len(),
                    })
                }
                s => s.map(str::to_string),
            },
            jwt_algorithm: match get("JWT_ALGORITHM").unwrap_or("HS256") {
                "HS256" => Algorithm::HS256,
                "HS384" => Algorithm::HS384,
                "HS512" => Algorithm::HS512,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "JWT_ALGORITHM",
                        value: other.to_string(),
                        expected: "HS256, HS384 or HS512",
                    })
                }
            },
            jwt_expire_minutes: positive(get("JWT_EXPIRE_MINUTES"), "JWT_EXPIRE_MINUTES", 60)?,
            session_max: Duration::from_secs(
                positive(get("KLAV_SESSION_MAX_DAYS"), "KLAV_SESSION_MAX_DAYS", 30)?
                    .checked_mul(24 * 3600)
                    .filter(|s| *s <= 100 * 365 * 24 * 3600)
                    .ok_or_else(|| ConfigError::Invalid {
                        var: "KLAV_SESSION_MAX_DAYS",
                        value: get("KLAV_SESSION_MAX_DAYS").unwrap_or_default().to_string(),
                        expected: "a whole number of days, at most 36500",
                    })?,
            ),
            min_password_len: positive(get("KLAV_MIN_PASSWORD_LEN"), "KLAV_MIN_PASSWORD_LEN", 8)?
                as usize,
            ws_ticket_ttl: Duration::from_secs(30),
            db_workers: positive(get("KLAV_DB_WORKERS"), "KLAV_DB_WORKERS", 4)? as usize,
            hash_workers: positive(
                get("KLAV_HASH_WORKERS"),
                "KLAV_HASH_WORKERS",
                (cores / 2).max(1) as u64,
            )? as usize,
            max_logs_per_room: parse(
                get("KLAV_MAX_LOGS_PER_ROOM"),
                "KLAV_MAX_LOGS_PER_ROOM",
                1000,
                "a whole number (0 = unlimited)",
            )?,
            retention_interval: Duration::from_secs(positive(
                get("KLAV_RETENTION_INTERVAL_SECS"),
                "KLAV_RETENTION_INTERVAL_SECS",
                60,
            )?),
            data_dir: PathBuf::from(get("KLAV_DATA_DIR").unwrap_or("./klav-data")),
            db_batch: positive(get("KLAV_DB_BATCH"), "KLAV_DB_BATCH", 512)? as usize,
            statement_timeout: Duration::from_millis(parse(
                get("KLAV_STATEMENT_TIMEOUT_MS"),
                "KLAV_STATEMENT_TIMEOUT_MS",
                30_000,
                "a whole number of milliseconds (0 = no limit)",
            )?),
            max_output_bytes: positive(
                get("KLAV_MAX_OUTPUT_BYTES"),
                "KLAV_MAX_OUTPUT_BYTES",
                1 << 20,
            )? as usize,
            max_connections: positive(get("KLAV_MAX_CONNECTIONS"), "KLAV_MAX_CONNECTIONS", 100_000)?
                as usize,
            max_conns_per_user: positive(
                get("KLAV_MAX_CONNS_PER_USER"),
                "KLAV_MAX_CONNS_PER_USER",
                50,
            )? as usize,
            ws_opens_per_user_per_min: positive(
                get("KLAV_WS_OPENS_PER_USER_PER_MIN"),
                "KLAV_WS_OPENS_PER_USER_PER_MIN",
                60,
            )? as u32,
            api_rate: positive(get("KLAV_API_RATE"), "KLAV_API_RATE", 50)? as u32,
            api_burst: positive(get("KLAV_API_BURST"), "KLAV_API_BURST", 200)? as u32,
            max_conns_per_addr: positive(
                get("KLAV_MAX_CONNS_PER_ADDR"),
                "KLAV_MAX_CONNS_PER_ADDR",
                1000,
            )? as usize,
            max_client_buffer_bytes: positive(
                get("KLAV_MAX_CLIENT_BUFFER_BYTES"),
                "KLAV_MAX_CLIENT_BUFFER_BYTES",
                256 << 20,
            )? as usize,
            max_rooms_per_user: positive(
                get("KLAV_MAX_ROOMS_PER_USER"),
                "KLAV_MAX_ROOMS_PER_USER",
                500,
            )? as usize,
            max_blocks_per_user: positive(
                get("KLAV_MAX_BLOCKS_PER_USER"),
                "KLAV_MAX_BLOCKS_PER_USER",
                1000,
            )? as usize,
            rooms_created_per_hour: positive(
                get("KLAV_ROOMS_CREATED_PER_HOUR"),
                "KLAV_ROOMS_CREATED_PER_HOUR",
                60,
            )? as u32,
            http_timeout: Duration::from_secs(positive(
                get("KLAV_HTTP_TIMEOUT_SECS"),
                "KLAV_HTTP_TIMEOUT_SECS",
                10,
            )?),
            ws_ping_interval: Duration::from_secs(positive(
                get("KLAV_WS_PING_SECS"),
                "KLAV_WS_PING_SECS",
                30,
            )?),
            ws_token_expiry_close: match get("KLAV_WS_TOKEN_EXPIRY").unwrap_or("ignore") {
                "ignore" => false,
                "close" => true,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "KLAV_WS_TOKEN_EXPIRY",
                        value: other.to_string(),
                        expected: "ignore or close",
                    })
                }
            },
            rate_per_sec: positive(get("KLAV_RATE_PER_SEC"), "KLAV_RATE_PER_SEC", 50)? as f64,
            rate_burst: positive(get("KLAV_RATE_BURST"), "KLAV_RATE_BURST", 100)? as f64,
            flood_secs: positive(get("KLAV_FLOOD_SECS"), "KLAV_FLOOD_SECS", 5)? as u32,
            shutdown_timeout: Duration::from_secs(positive(
                get("KLAV_SHUTDOWN_SECS"),
                "KLAV_SHUTDOWN_SECS",
                10,
            )?),
            allowed_origins: get("KLAV_ALLOWED_ORIGINS")
                .map(|s| {
                    s.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            login_max_failures: positive(
                get("KLAV_LOGIN_MAX_FAILURES"),
                "KLAV_LOGIN_MAX_FAILURES",
                5,
            )? as u32,
            login_max_failures_per_addr: positive(
                get("KLAV_LOGIN_MAX_FAILURES_PER_ADDR"),
                "KLAV_LOGIN_MAX_FAILURES_PER_ADDR",
                20,
            )? as u32,
            login_window: Duration::from_secs(positive(
                get("KLAV_LOGIN_WINDOW_SECS"),
                "KLAV_LOGIN_WINDOW_SECS",
                300,
            )?),
            register_per_addr: positive(
                get("KLAV_REGISTER_PER_ADDR"),
                "KLAV_REGISTER_PER_ADDR",
                20,
            )? as u32,
            register_window: Duration::from_secs(positive(
                get("KLAV_REGISTER_WINDOW_SECS"),
                "KLAV_REGISTER_WINDOW_SECS",
                600,
            )?),
            metrics_per_addr_per_sec: positive(
                get("KLAV_METRICS_PER_ADDR_PER_SEC"),
                "KLAV_METRICS_PER_ADDR_PER_SEC",
                1,
            )? as u32,
            metrics_addr: match get("KLAV_METRICS_ADDR") {
                None | Some("") => None,
                Some(a) => Some(a.parse().map_err(|_| ConfigError::Invalid {
                    var: "KLAV_METRICS_ADDR",
                    value: a.to_string(),
                    expected: "an address with a port, e.g. 127.0.0.1:9100",
                })?),
            },
            trusted_proxies: match get("KLAV_TRUSTED_PROXIES") {
                None => TrustedProxies::default(),
                Some(list) => TrustedProxies::parse(list).map_err(|_| ConfigError::Invalid {
                    var: "KLAV_TRUSTED_PROXIES",
                    value: list.to_string(),
                    expected: "comma-separated IP addresses or CIDR ranges",
                })?,
            },
            web: match get("KLAV_WEB").unwrap_or("on") {
                "on" => true,
                "off" => false,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "KLAV_WEB",
                        value: other.to_string(),
                        expected: "on or off",
                    })
                }
            },
            fault_injection: get("KLAV_FAULT_INJECTION") == Some("1"),
            webhook: crate::webhooks::config::from_vars(get)?,
            node_name: match get("KLAV_NODE_NAME") {
                Some(n) if n.len() > 64 || n.contains(|c: char| c.is_control()) => {
                    return Err(ConfigError::Invalid {
                        var: "KLAV_NODE_NAME",
                        value: n.to_string(),
                        expected: "at most 64 printable characters",
                    })
                }
                n => n.map(str::to_string),
            },
            cluster: match get("KLAV_CLUSTER").unwrap_or("on") {
                "on" => true,
                "off" => false,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "KLAV_CLUSTER",
                        value: other.to_string(),
                        expected: "on or off",
                    })
                }
            },
            node_timeout: Duration::from_secs(positive(
                get("KLAV_NODE_TIMEOUT_SECS"),
                "KLAV_NODE_TIMEOUT_SECS",
                10,
            )?),
            history_cache_entries: parse(
                get("KLAV_HISTORY_CACHE_ENTRIES"),
                "KLAV_HISTORY_CACHE_ENTRIES",
                200_000,
                "a whole number (0 = no cache)",
            )?,
            history_cache_bytes: parse(
                get("KLAV_HISTORY_CACHE_BYTES"),
                "KLAV_HISTORY_CACHE_BYTES",
                32 << 20,
                "a number of bytes (0 = no cache)",
            )?,
            turn_work: Duration::from_millis(4),
            log_level: match get("KLAV_LOG").unwrap_or("info") {
                "error" => crate::log::Level::Error,
                "warn" => crate::log::Level::Warn,
                "info" => crate::log::Level::Info,
                "debug" => crate::log::Level::Debug,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "KLAV_LOG",
                        value: other.to_string(),
                        expected: "error, warn, info or debug",
                    })
                }
            },
        })
    }

    /// Defaults only: what a test starts from before setting its own knobs.
    pub fn defaults() -> Config {
        Config::from_map(&HashMap::new()).expect("defaults are valid")
    }
}

fn parse<T: std::str::FromStr>(
    value: Option<&str>,
    var: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
            var,
            value: v.to_string(),
            expected,
        }),
    }
}

fn positive(value: Option<&str>, var: &'static str, default: u64) -> Result<u64, ConfigError> {
    let n: u64 = parse(value, var, default, "a positive whole number")?;
    if n == 0 {
        return Err(ConfigError::Invalid {
            var,
            value: "0".into(),
            expected: "a positive whole number",
        });
    }
    Ok(n)
}

/// Accepts `postgres://`, `postgresql://` and the old server's
/// `postgresql+asyncpg://` (any `+driver` suffix), returning `postgresql://…`.
pub fn normalise_database_url(url: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::Invalid {
        var: "DATABASE_URL",
        value: redact_url(url),
        expected: "postgresql://user:password@host:port/dbname",
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let base = scheme.split('+').next().unwrap_or("");
    if base != "postgres" && base != "postgresql" {
        return Err(bad());
    }
    let normalised = format!("postgresql://{rest}");
    normalised.parse::<postgres::Config>().map_err(|_| bad())?;
    Ok(normalised)
}

/// The URL with any password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `KEY=value` lines; `#` comments, blank lines, optional `export ` and quotes.
fn parse_dotenv(text: &str) -> Result<HashMap<String, String>, ConfigError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=').ok_or(ConfigError::DotEnv {
            line: i + 1,
            reason: "expected KEY=value",
        })?;
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_forms() {
        assert_eq!(
            normalise_database_url("postgresql+asyncpg://u:p@h:5432/d").unwrap(),
            "postgresql://u:p@h:5432/d"
        );
        assert_eq!(
            normalise_database_url("postgres://u@h/d").unwrap(),
            "postgresql://u@h/d"
        );
        // Several hosts, the writable one wanted (libpq's form).
        assert_eq!(
            normalise_database_url(
                "postgres://u:p@h1:5432,h2:5433/d?target_session_attrs=read-write"
            )
            .unwrap(),
            "postgresql://u:p@h1:5432,h2:5433/d?target_session_attrs=read-write"
        );
        assert!(normalise_database_url("mysql://u@h/d").is_err());
        assert!(normalise_database_url("nonsense").is_err());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut m = HashMap::new();
        m.insert("PORT".to_string(), "seventy".to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("PORT"), "{e}");
        m.clear();
        m.insert("JWT_ALGORITHM".to_string(), "RS256".to_string());
        assert!(Config::from_map(&m).is_err());
        m.clear();
        m.insert("KLAV_DB_WORKERS".to_string(), "0".to_string());
        assert!(Config::from_map(&m).is_err());
        m.clear();
        m.insert("JWT_SECRET".to_string(), "x".to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("JWT_SECRET") && !e.contains("\"x\""), "{e}");
        m.insert("JWT_SECRET".to_string(), "k".repeat(MIN_JWT_SECRET_BYTES));
        assert!(Config::from_map(&m).is_ok());
        m.insert("KLAV_WEB".to_string(), "maybe".to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("KLAV_WEB"), "{e}");
        m.clear();
        assert!(!Config::defaults().ws_token_expiry_close);
        m.insert("KLAV_WS_TOKEN_EXPIRY".to_string(), "close".to_string());
        assert!(Config::from_map(&m).unwrap().ws_token_expiry_close);
        m.insert("KLAV_WS_TOKEN_EXPIRY".to_string(), "kick".to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("KLAV_WS_TOKEN_EXPIRY"), "{e}");
        m.clear();
        let d = Config::defaults();
        assert_eq!(d.session_max, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(d.min_password_len, 8);
        m.insert("KLAV_SESSION_MAX_DAYS".to_string(), "7".to_string());
        m.insert("KLAV_MIN_PASSWORD_LEN".to_string(), "12".to_string());
        let c = Config::from_map(&m).unwrap();
        assert_eq!(c.session_max, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.min_password_len, 12);
        m.insert("KLAV_SESSION_MAX_DAYS".to_string(), "0".to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("KLAV_SESSION_MAX_DAYS"), "{e}");
        m.insert("KLAV_SESSION_MAX_DAYS".to_string(), u64::MAX.to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("KLAV_SESSION_MAX_DAYS"), "{e}");
    }

    #[test]
    fn the_server_apis_budget() {
        let d = Config::defaults();
        assert_eq!((d.api_rate, d.api_burst), (50, 200));
        let m = HashMap::from([("KLAV_API_RATE".to_string(), "0".to_string())]);
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("KLAV_API_RATE"), "{e}");
        let m = HashMap::from([("KLAV_API_BURST".to_string(), "7".to_string())]);
        assert_eq!(Config::from_map(&m).unwrap().api_burst, 7);
    }

    #[test]
    fn statement_timeout_defaults_to_30_s_and_0_means_none() {
        assert_eq!(
            Config::defaults().statement_timeout,
            Duration::from_secs(30)
        );
        let mut m = HashMap::new();
        m.insert("KLAV_STATEMENT_TIMEOUT_MS".to_string(), "0".to_string());
        assert_eq!(
            Config::from_map(&m).unwrap().statement_timeout,
            Duration::ZERO
        );
        m.insert("KLAV_STATEMENT_TIMEOUT_MS".to_string(), "5s".to_string());
        let e = Config::from_map(&m).err().unwrap().to_string();
        assert!(e.contains("KLAV_STATEMENT_TIMEOUT_MS"), "{e}");
    }

    #[test]
    fn dotenv_lines() {
        let m = parse_dotenv("# c\nexport A=1\nB = \"two\"\n\nC='x=y'\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two");
        assert_eq!(m["C"], "x=y");
        assert!(parse_dotenv("novalue\n").is_err());
    }

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact_url("postgresql://u:secret@h/d"),
            "postgresql://u:***@h/d"
        );
    }
}
