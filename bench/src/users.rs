//! Bench users: registered over HTTP (or assumed to exist), then given tokens either
//! by `POST /login` or by minting them with the server's secret.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::json_str;
use crate::http::{HttpClient, HttpError};
use crate::jwt;
use crate::run::Server;

/// Attempts per registration or login before it counts as failed: the server answers
/// 503 when its hash queue is full, which is back-pressure, not an error.
const ATTEMPTS: u32 = 6;

/// Users of one run, indexed from 0.
#[derive(Debug, Default)]
pub(crate) struct Users {
    pub names: Vec<String>,
    pub tokens: Vec<Arc<str>>,
}

/// What provisioning did, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Provisioned {
    pub created: u64,
    pub already: u64,
    pub logins: u64,
    pub minted: u64,
}

/// The name of user `i` of a run.
pub(crate) fn user_name(prefix: &str, i: usize) -> String {
    format!("{prefix}_{i}")
}

/// Registers (unless told not to) `count` users and, if `need_tokens`, obtains a
/// token for each.
pub(crate) fn provision(
    server: &Server,
    count: usize,
    need_tokens: bool,
) -> Result<(Users, Provisioned), BenchError> {
    let opts = &server.opts;
    let log = opts.progress;
    let names: Vec<String> = (0..count).map(|i| user_name(&server.prefix, i)).collect();
    let mut done = Provisioned::default();
    let password = json_str(&opts.password);

    if !opts.skip_register {
        let results = parallel(server, &names, "register", log, |client, name| {
            let body = format!(
                r#"{{"username":{},"password":{}}}"#,
                json_str(name),
                password
            );
            let resp = client.post_json("/register", &body).map_err(transport)?;
            match resp.status {
                200 | 201 => {
                    let status = resp
                        .json()
                        .and_then(|v| v["status"].as_str().map(str::to_string));
                    Ok(status.as_deref() == Some("ALREADY"))
                }
                429 | 500..=599 => Err(Retry::Again(format!(
                    "HTTP {}: {}",
                    resp.status,
                    resp.body_text()
                ))),
                s => Err(Retry::Fail(format!("HTTP {s}: {}", resp.body_text()))),
            }
        });
        let mut failed = 0;
        let mut first = None;
        for r in results {
            match r {
                Ok(true) => done.already += 1,
                Ok(false) => done.created += 1,
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
        if failed > 0 {
            return Err(BenchError::Register {
                failed,
                total: count as u64,
                first: first.unwrap_or_default(),
            });
        }
    }

    let tokens: Vec<Arc<str>> = if !need_tokens {
        Vec::new()
    } else if let Some(secret) = &opts.jwt_secret {
        let iat = jwt::now_unix();
        let ttl = opts.jwt_ttl.as_secs().max(60);
        done.minted = count as u64;
        names
            .iter()
            .map(|n| Arc::from(jwt::mint(secret.as_bytes(), opts.jwt_alg, n, iat, ttl)))
            .collect()
    } else {
        let results = parallel(server, &names, "login", log, |client, name| {
            let body = format!(
                r#"{{"username":{},"password":{}}}"#,
                json_str(name),
                password
            );
            let resp = client.post_json("/login", &body).map_err(transport)?;
            match resp.status {
                200 => resp
                    .json()
                    .and_then(|v| v["access_token"].as_str().map(Arc::<str>::from))
                    .ok_or_else(|| Retry::Fail(format!("no access_token in {}", resp.body_text()))),
                429 | 500..=599 => Err(Retry::Again(format!(
                    "HTTP {}: {}",
                    resp.status,
                    resp.body_text()
                ))),
                s => Err(Retry::Fail(format!("HTTP {s}: {}", resp.body_text()))),
            }
        });
        let mut failed = 0;
        let mut first = None;
        let mut tokens = Vec::with_capacity(count);
        for r in results {
            match r {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
        if failed > 0 {
            return Err(BenchError::Login {
                failed,
                total: count as u64,
                first: first.unwrap_or_default(),
            });
        }
        done.logins = count as u64;
        tokens
    };
    Ok((Users { names, tokens }, done))
}

enum Retry {
    Again(String),
    Fail(String),
}

/// A refused connection will not be accepted a moment later; anything else might.
fn transport(e: HttpError) -> Retry {
    match &e {
        HttpError::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Retry::Fail(e.to_string())
        }
        _ => Retry::Again(e.to_string()),
    }
}

/// Runs `op` once per name over `register_concurrency` keep-alive connections,
/// retrying transient failures with a growing pause. Results keep the names' order.
/// After the first permanent failure the rest are not attempted: the run needs every
/// user, so it is over anyway.
fn parallel<T: Send>(
    server: &Server,
    names: &[String],
    what: &str,
    log: bool,
    op: impl Fn(&mut HttpClient, &str) -> Result<T, Retry> + Sync,
) -> Vec<Result<T, String>> {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<T, String>>>> =
        Mutex::new((0..names.len()).map(|_| None).collect());
    let workers = server
        .opts
        .register_concurrency
        .clamp(1, names.len().max(1));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut client =
                    HttpClient::new(server.http_addr, &server.host, server.opts.timeout);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= names.len() {
                        break;
                    }
                    if failed.load(Ordering::Relaxed) {
                        finished.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut attempt = 0;
                    let outcome = loop {
                        attempt += 1;
                        match op(&mut client, &names[i]) {
                            Ok(v) => break Ok(v),
                            Err(Retry::Fail(e)) => break Err(format!("{}: {e}", names[i])),
                            Err(Retry::Again(e)) if attempt >= ATTEMPTS => {
                                break Err(format!("{}: {e} (after {attempt} attempts)", names[i]))
                            }
                            Err(Retry::Again(_)) => {
                                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                            }
                        }
                    };
                    if outcome.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().expect("results lock")[i] = Some(outcome);
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if log {
            let mut last = Instant::now();
            while finished.load(Ordering::Relaxed) < names.len() {
                std::thread::sleep(Duration::from_millis(50));
                if last.elapsed() >= Duration::from_secs(1) {
                    last = Instant::now();
                    let n = finished.load(Ordering::Relaxed);
                    eprintln!(
                        "[setup {:>5.1}s] {what}: {n}/{} ({:.0}/s)",
                        started.elapsed().as_secs_f64(),
                        names.len(),
                        n as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    });
    results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not attempted".to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_usernames() {
        let p = crate::run::fresh_prefix();
        assert_ne!(p, crate::run::fresh_prefix());
        let name = user_name(&p, 12345);
        assert!(name.len() <= 100);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(crate::run::base36(0), "0");
        assert_eq!(crate::run::base36(35), "z");
        assert_eq!(crate::run::base36(36), "10");
    }
}
