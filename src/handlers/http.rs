//! The HTTP side: parsing requests off a connection's buffer, routing, and the
//! account endpoints (`/register`, `/login`, `/health`, `/metrics`).
//!
//! Requests on one connection are answered in order: while one waits for a worker,
//! the next (pipelined) request stays in the buffer.

use std::time::Instant;

use serde_json::{json, Value};

use crate::auth::password::{constant_time_eq, is_hashed, HashJob, HashOutcome};
use crate::conn::{ConnId, PendingHttp, Phase};
use crate::db::{DbError, Job, Ticket};
use crate::http::{self, Request};
use crate::server::hub::{CloseReason, Hub};

/// Parses and routes every complete request in the connection's buffer.
pub fn process(hub: &mut Hub, id: ConnId) {
    loop {
        let Some(conn) = hub.conn_mut(id) else { return };
        if conn.closing.is_some() {
            return;
        }
        let Phase::Http(st) = &mut conn.phase else {
            return;
        };
        if st.pending.is_some() || st.buf.is_empty() {
            return;
        }
        match http::parse(&st.buf) {
            Ok(None) => return,
            Ok(Some((req, used))) => {
                st.buf.drain(..used);
                conn.since = Instant::now();
                route(hub, id, req);
            }
            Err(e) => {
                // The stream cannot be resynchronised: answer and close.
                st.buf.clear();
                respond(
                    hub,
                    id,
                    http::error(e.status(), &e.to_string(), false),
                    false,
                );
                return;
            }
        }
    }
}

/// Queues a response; closes the connection after it unless kept alive.
pub fn respond(hub: &mut Hub, id: ConnId, bytes: impl AsRef<[u8]>, keep_alive: bool) {
    hub.send_bytes(id, bytes.as_ref());
    if !keep_alive {
        if let Some(conn) = hub.conn_mut(id) {
            conn.closing = Some(CloseReason::HttpDone);
        }
        hub.close(id, CloseReason::HttpDone);
    }
}

fn route(hub: &mut Hub, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let allowed = match req.path.as_str() {
        "/register" | "/login" => "POST",
        "/health" | "/metrics" | "/ws" => "GET",
        path if hub.config.web && crate::web::is_asset(path) => {
            return web_asset(hub, id, &req);
        }
        _ => {
            respond(hub, id, http::error(404, "not found", ka), ka);
            return;
        }
    };
    if req.method != allowed {
        let body = json!({ "detail": "method not allowed" }).to_string();
        let resp = http::response(
            405,
            "application/json",
            body.as_bytes(),
            ka,
            &[("Allow", allowed.to_string())],
        );
        respond(hub, id, resp, ka);
        return;
    }
    match req.path.as_str() {
        "/register" => register(hub, id, req),
        "/login" => login(hub, id, req),
        "/health" => {
            if hub.submit(Ticket::new(id, None), Job::Health) {
                set_pending(hub, id, PendingHttp::Health { keep_alive: ka });
            } else {
                respond(hub, id, unhealthy("database queue is full", ka), ka);
            }
        }
        "/metrics" => {
            let ws = hub
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.phase, Phase::Ws(_)))
                .count();
            let online = hub
                .state
                .users
                .values()
                .filter(|u| !u.conns.is_empty())
                .count();
            let mut text = hub
                .metrics
                .render(hub.conns.len(), ws, online, hub.db.queue_depth());
            text.push_str(&format!(
                "# HELP klav_history_cache_hits_total history requests answered from memory.\n\
                 # TYPE klav_history_cache_hits_total counter\nklav_history_cache_hits_total {}\n\
                 # HELP klav_history_cache_misses_total history requests sent to PostgreSQL.\n\
                 # TYPE klav_history_cache_misses_total counter\nklav_history_cache_misses_total {}\n\
                 # HELP klav_history_cache_entries Log entries held in memory.\n\
                 # TYPE klav_history_cache_entries gauge\nklav_history_cache_entries {}\n",
                hub.history.hits,
                hub.history.misses,
                hub.history.total()
            ));
            let resp = http::response(200, "text/plain; version=0.0.4", text.as_bytes(), ka, &[]);
            respond(hub, id, resp, ka);
        }
        _ => super::session::upgrade(hub, id, req),
    }
}

/// The browser client's files (`KLAV_WEB=on`): `GET` and `HEAD` only.
fn web_asset(hub: &mut Hub, id: ConnId, req: &Request) {
    let ka = req.keep_alive;
    let resp = match req.method.as_str() {
        "GET" | "HEAD" => crate::web::serve(req),
        _ => None,
    };
    let resp = resp.unwrap_or_else(|| {
        let body = json!({ "detail": "method not allowed" }).to_string();
        std::borrow::Cow::Owned(http::response(
            405,
            "application/json",
            body.as_bytes(),
            ka,
            &[("Allow", crate::web::ALLOWED.to_string())],
        ))
    });
    respond(hub, id, resp, ka);
}

fn set_pending(hub: &mut Hub, id: ConnId, p: PendingHttp) {
    if let Some(conn) = hub.conn_mut(id) {
        if let Phase::Http(st) = &mut conn.phase {
            st.pending = Some(p);
        }
    }
}

fn take_pending(hub: &mut Hub, id: ConnId) -> Option<PendingHttp> {
    match &mut hub.conn_mut(id)?.phase {
        Phase::Http(st) => st.pending.take(),
        _ => None,
    }
}

/// Finishes a pending request: responds, then parses whatever came in meanwhile.
fn finish(hub: &mut Hub, id: ConnId, bytes: Vec<u8>, keep_alive: bool) {
    respond(hub, id, bytes, keep_alive);
    if let Some(conn) = hub.conn_mut(id) {
        conn.since = Instant::now();
    }
    process(hub, id);
}

/// The body as a JSON object whose listed fields are strings (or absent/null).
fn json_body(req: &Request, string_fields: &[&str]) -> Option<serde_json::Map<String, Value>> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&req.body) else {
        return None;
    };
    for f in string_fields {
        match map.get(*f) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return None,
        }
    }
    Some(map)
}

fn field<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Value::as_str)
}

/// Letters, digits, `_`, `.`, `-`; 1 to 100 characters.
pub fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.chars().count() <= 100
        && u.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
}

fn register(hub: &mut Hub, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let unprocessable = |hub: &mut Hub| {
        respond(
            hub,
            id,
            http::error(
                422,
                "body must be a JSON object with string fields \"username\" and \"password\" \
                 (and optionally \"nickname\")",
                ka,
            ),
            ka,
        )
    };
    let Some(body) = json_body(&req, &["username", "password", "nickname"]) else {
        return unprocessable(hub);
    };
    let (Some(username), Some(password)) = (field(&body, "username"), field(&body, "password"))
    else {
        return unprocessable(hub);
    };
    if !valid_username(username) {
        return respond(hub, id, http::error(400, "invalid username", ka), ka);
    }
    if password.is_empty() {
        return respond(hub, id, http::error(400, "password required", ka), ka);
    }
    let nickname = match field(&body, "nickname").map(str::trim) {
        Some(n) if !n.is_empty() => n.chars().take(100).collect(),
        _ => username.to_string(),
    };
    if nickname.contains('\0') || password.contains('\0') {
        return respond(
            hub,
            id,
            http::error(400, "NUL characters are not allowed", ka),
            ka,
        );
    }
    let job = HashJob::Hash {
        password: password.to_string(),
    };
    if !hub.submit_hash(Ticket::new(id, None), job) {
        return respond(hub, id, http::error(503, "server busy, try again", ka), ka);
    }
    set_pending(
        hub,
        id,
        PendingHttp::Register {
            username: username.to_string(),
            nickname,
            keep_alive: ka,
        },
    );
}

fn login(hub: &mut Hub, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let Some(body) = json_body(&req, &["username", "password"]) else {
        return respond(
            hub,
            id,
            http::error(
                422,
                "body must be a JSON object with string fields \"username\" and \"password\"",
                ka,
            ),
            ka,
        );
    };
    let username = field(&body, "username").unwrap_or("");
    let password = field(&body, "password").unwrap_or("");
    if username.is_empty() || password.is_empty() {
        return respond(
            hub,
            id,
            http::error(400, "username/password required", ka),
            ka,
        );
    }
    if username.contains('\0') {
        return respond(hub, id, http::error(401, "not registered", ka), ka);
    }
    let Some(peer) = hub.conn(id).map(|c| c.peer.ip()) else {
        return;
    };
    if let Some(wait) = hub
        .login_throttle
        .retry_after(username, peer, Instant::now())
    {
        let secs = wait.as_secs().max(1);
        let body = json!({ "detail": "too many failed logins; try again later" }).to_string();
        let resp = http::response(
            429,
            "application/json",
            body.as_bytes(),
            ka,
            &[("Retry-After", secs.to_string())],
        );
        return respond(hub, id, resp, ka);
    }
    let job = Job::Credentials {
        username: username.to_string(),
    };
    if !hub.submit(Ticket::new(id, None), job) {
        return respond(hub, id, unhealthy("database queue is full", ka), ka);
    }
    set_pending(
        hub,
        id,
        PendingHttp::Login {
            username: username.to_string(),
            password: password.to_string(),
            keep_alive: ka,
        },
    );
}

fn unhealthy(why: &str, ka: bool) -> Vec<u8> {
    http::error(503, &format!("Service unhealthy: {why}"), ka)
}

fn token_response(hub: &Hub, username: &str, ka: bool) -> Vec<u8> {
    http::json(
        200,
        &json!({
            "access_token": hub.tokens.issue(username),
            "token_type": "bearer",
            "expires_in_minutes": hub.tokens.expire_minutes,
        }),
        ka,
    )
}

pub fn on_hash(hub: &mut Hub, ticket: Ticket, outcome: HashOutcome) {
    let id = ticket.conn;
    match outcome {
        HashOutcome::Rehashed {
            username,
            legacy,
            hash,
        } => {
            let job = Job::UpgradePassword {
                username,
                legacy,
                new_hash: hash,
            };
            // Best effort: the next successful login tries again.
            hub.submit(Ticket::internal(), job);
        }
        HashOutcome::Hashed(hash) => match take_pending(hub, id) {
            Some(PendingHttp::Register {
                username,
                nickname,
                keep_alive,
            }) => {
                let job = Job::Register {
                    username: username.clone(),
                    password_hash: hash,
                    nickname: nickname.clone(),
                };
                if hub.submit(Ticket::new(id, None), job) {
                    set_pending(
                        hub,
                        id,
                        PendingHttp::Register {
                            username,
                            nickname,
                            keep_alive,
                        },
                    );
                } else {
                    finish(
                        hub,
                        id,
                        unhealthy("database queue is full", keep_alive),
                        keep_alive,
                    );
                }
            }
            other => restore(hub, id, other),
        },
        HashOutcome::Verified(ok) => match take_pending(hub, id) {
            Some(PendingHttp::Login {
                username,
                keep_alive,
                ..
            }) => {
                let resp = if ok {
                    hub.login_throttle.succeeded(&username);
                    token_response(hub, &username, keep_alive)
                } else {
                    login_failed(hub, id, &username);
                    http::error(401, "invalid credentials", keep_alive)
                };
                finish(hub, id, resp, keep_alive);
            }
            other => restore(hub, id, other),
        },
    }
}

/// Puts back a pending request that a completion did not belong to.
fn restore(hub: &mut Hub, id: ConnId, p: Option<PendingHttp>) {
    if let Some(p) = p {
        set_pending(hub, id, p);
    }
}

pub fn register_done(hub: &mut Hub, id: ConnId, created: bool) {
    match take_pending(hub, id) {
        Some(PendingHttp::Register { keep_alive, .. }) => {
            let status = if created { "CREATED" } else { "ALREADY" };
            finish(
                hub,
                id,
                http::json(200, &json!({ "status": status }), keep_alive),
                keep_alive,
            );
        }
        other => restore(hub, id, other),
    }
}

pub fn credentials_done(hub: &mut Hub, id: ConnId, username: String, stored: Option<String>) {
    let Some(PendingHttp::Login {
        password,
        keep_alive,
        ..
    }) = take_pending(hub, id)
    else {
        return;
    };
    let ka = keep_alive;
    let Some(stored) = stored else {
        login_failed(hub, id, &username);
        return finish(hub, id, http::error(401, "not registered", ka), ka);
    };
    if is_hashed(&stored) {
        let job = HashJob::Verify {
            password: password.clone(),
            phc: stored,
        };
        if hub.submit_hash(Ticket::new(id, None), job) {
            set_pending(
                hub,
                id,
                PendingHttp::Login {
                    username,
                    password,
                    keep_alive: ka,
                },
            );
        } else {
            finish(hub, id, http::error(503, "server busy, try again", ka), ka);
        }
        return;
    }
    // A plain-text password from the old server: compare, then upgrade it.
    if constant_time_eq(stored.as_bytes(), password.as_bytes()) {
        hub.submit_hash(
            Ticket::internal(),
            HashJob::Rehash {
                username: username.clone(),
                legacy: stored,
            },
        );
        hub.login_throttle.succeeded(&username);
        let resp = token_response(hub, &username, ka);
        finish(hub, id, resp, ka);
    } else {
        login_failed(hub, id, &username);
        finish(hub, id, http::error(401, "invalid credentials", ka), ka);
    }
}

fn login_failed(hub: &mut Hub, id: ConnId, username: &str) {
    if let Some(peer) = hub.conn(id).map(|c| c.peer.ip()) {
        hub.login_throttle.failed(username, peer, Instant::now());
    }
}

pub fn health_done(hub: &mut Hub, id: ConnId, result: Result<(), &DbError>) {
    if let Some(PendingHttp::Health { keep_alive }) = take_pending(hub, id) {
        let resp = match result {
            Ok(()) => http::json(
                200,
                &json!({"status": "healthy", "database": "connected"}),
                keep_alive,
            ),
            Err(e) => unhealthy(&e.to_string(), keep_alive),
        };
        finish(hub, id, resp, keep_alive);
    }
}

/// A job behind a pending HTTP request failed.
pub fn db_failed(hub: &mut Hub, id: ConnId, e: &DbError) {
    match take_pending(hub, id) {
        Some(PendingHttp::Health { keep_alive }) => {
            set_pending(hub, id, PendingHttp::Health { keep_alive });
            health_done(hub, id, Err(e));
        }
        Some(PendingHttp::Register { keep_alive, .. })
        | Some(PendingHttp::Login { keep_alive, .. }) => {
            finish(hub, id, unhealthy(&e.to_string(), keep_alive), keep_alive);
        }
        None => {}
    }
}
