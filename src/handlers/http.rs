//! The HTTP side: parsing requests off a connection's buffer, routing, and the
//! account endpoints (`/register`, `/login`, `/ws-ticket`, `/health`, `/metrics`).
//!
//! Requests on one connection are answered in order: while one waits for a worker,
//! the next (pipelined) request stays in the buffer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::password::{check_stored_hash, constant_time_eq, is_hashed, HashJob, HashOutcome};
use crate::client_addr::client_addr;
use crate::conn::{
    Admit, ConnId, PendingHttp, Phase, RateLimit, IDLE_BUFFER_BYTES, OUTPUT_PAUSE_BYTES,
};
use crate::db::jobs::Registration;
use crate::db::{DbError, Job, Ticket};
use crate::http::{self, Request};
use crate::hub::Hub;
use crate::throttle::RegisterRefusal;

/// Parses and routes the complete requests in the connection's buffer, one at
/// a time, until one waits for a worker or the responses not yet taken by the
/// client pass [`OUTPUT_PAUSE_BYTES`] (the rest waits until they drain: a client
/// that pipelines and never reads holds at most that much).
pub fn process(hub: &mut Hub, id: ConnId) {
    let (rate, burst) = (hub.config.rate_per_sec, hub.config.rate_burst);
    for _ in 0..REQUESTS_PER_TURN {
        if hub.http_turn_spent() {
            // Everyone's HTTP share of this turn is spent, not this
            // connection's: it is read first in line next turn.
            hub.again.push(id);
            return;
        }
        let Some(conn) = hub.conn_mut(id) else { return };
        if conn.closing.is_some() {
            return;
        }
        if conn.out.len() > OUTPUT_PAUSE_BYTES {
            // Resumed by the flush that drains it.
            conn.read_paused = true;
            return;
        }
        let Phase::Http(st) = &mut conn.phase else {
            return;
        };
        if st.pending.is_some() || st.buf.is_empty() {
            if st.buf.is_empty() && st.buf.capacity() > IDLE_BUFFER_BYTES {
                // Give back what a large request needed.
                st.buf.release();
            }
            return;
        }
        match http::parse_resumable(st.buf.unread(), &mut st.progress) {
            Ok(None) => {
                // The head is in and acceptable (its body fits): a client
                // that asked may send the body now, rather than after a pause.
                if st.progress.take_continue() {
                    hub.respond(id, http::CONTINUE, true);
                }
                return;
            }
            Ok(Some((req, used))) => {
                st.buf.consume(used);
                let now = Instant::now();
                conn.since = now;
                // Pipelined requests are cheap to send and cost the loop to
                // answer: past the bucket, the connection is refused and closed.
                let bucket = st.rate.get_or_insert_with(|| RateLimit::new(burst, now));
                if bucket.admit(now, 1.0, rate, burst, u32::MAX) != Admit::Yes {
                    st.buf.clear();
                    conn.abusive = true;
                    hub.metrics.rate_limited += 1;
                    let resp = http::response(
                        429,
                        "application/json",
                        br#"{"detail":"too many requests on this connection"}"#,
                        false,
                        &[("Retry-After", "1".into())],
                    );
                    return respond(hub, id, resp, false);
                }
                hub.http_turn_left -= 1;
                route(hub, id, req);
            }
            Err(e) => {
                // The stream cannot be resynchronised: answer and close.
                st.buf.clear();
                crate::log!(Debug, "bad HTTP request from {}: {e}", conn.peer);
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
    // This connection's share spent: the rest waits until others had theirs,
    // so one connection's pipeline cannot hold up everyone else's.
    hub.busy.push(id);
}

/// Requests answered per connection per loop turn.
const REQUESTS_PER_TURN: usize = 32;

/// HTTP requests answered per loop turn, all connections together.
pub const HTTP_REQUESTS_PER_TURN: usize = 2048;

/// HTTP response bytes queued per loop turn, all connections together (a turn
/// may pass it by one response). Copying responses into queues and then into
/// sockets is most of what an HTTP request costs the loop: 2,048 `/metrics`
/// answers of ~5 KB made turns of 40 ms, during which everyone else waited.
pub const HTTP_RESPONSE_BYTES_PER_TURN: usize = 256 * 1024;

/// Queues a response; closes the connection after it unless kept alive.
pub fn respond(hub: &mut Hub, id: ConnId, bytes: impl AsRef<[u8]>, keep_alive: bool) {
    hub.respond(id, bytes.as_ref(), keep_alive);
}

fn route(hub: &mut Hub, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    // With `KLAV_METRICS_ADDR`, `/metrics` lives on its own listener only, and
    // that listener serves nothing else.
    let metrics_only = hub.conn(id).is_some_and(|c| c.metrics_only);
    let metrics_elsewhere = hub.config.metrics_addr.is_some() && !metrics_only;
    if (metrics_only && req.path != "/metrics") || (metrics_elsewhere && req.path == "/metrics") {
        respond(hub, id, http::error(404, "not found", ka), ka);
        return;
    }
    let allowed = match req.path.as_str() {
        "/register" | "/login" | "/ws-ticket" => "POST",
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
        "/ws-ticket" => ws_ticket(hub, id, req),
        "/health" => {
            if hub.submit(Ticket::new(id, None), Job::Health) {
                set_pending(hub, id, PendingHttp::Health { keep_alive: ka });
            } else {
                respond(hub, id, unhealthy("database queue is full", ka), ka);
            }
        }
        "/metrics" => {
            if !hub.conn(id).is_some_and(|c| c.metrics_only) {
                let Some(addr) = request_addr(hub, id, &req) else {
                    return;
                };
                if let Err(wait) = hub.public_metrics_budget.take(addr, Instant::now()) {
                    // Refused and closed: a pipeline of them would otherwise
                    // cost a 429 each.
                    if let Some(conn) = hub.conn_mut(id) {
                        conn.abusive = true;
                    }
                    hub.metrics.rate_limited += 1;
                    let detail = "too many /metrics requests from this address \
                                  (serve it on KLAV_METRICS_ADDR to scrape without this limit)";
                    return respond(hub, id, retry_later(429, detail, wait, false), false);
                }
            }
            if hub.metrics_text.is_none() {
                hub.metrics_text = Some(metrics_text(hub));
            }
            let text = hub.metrics_text.as_deref().expect("just rendered");
            let resp = http::response(200, "text/plain; version=0.0.4", text.as_bytes(), ka, &[]);
            respond(hub, id, resp, ka);
        }
        _ => super::session::upgrade(hub, id, req),
    }
}

/// The `/metrics` text. Gauges are kept as counters: rendering is O(1) however
/// many connect; and it is rendered once per loop turn, so a burst of requests
/// (a pipelining client, many scrapers) costs one rendering.
fn metrics_text(hub: &Hub) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut text = hub.metrics.render(hub.conns.len(), hub.db.queue_depth());
    text.push_str(&format!(
        "# HELP klav_history_cache_hits_total history requests answered from memory.\n\
         # TYPE klav_history_cache_hits_total counter\nklav_history_cache_hits_total {}\n\
         # HELP klav_history_cache_misses_total history requests sent to PostgreSQL.\n\
         # TYPE klav_history_cache_misses_total counter\nklav_history_cache_misses_total {}\n\
         # HELP klav_history_cache_entries Log entries held in memory.\n\
         # TYPE klav_history_cache_entries gauge\nklav_history_cache_entries {}\n\
         # HELP klav_history_cache_bytes Bytes those entries hold (KLAV_HISTORY_CACHE_BYTES bounds it).\n\
         # TYPE klav_history_cache_bytes gauge\nklav_history_cache_bytes {}\n",
        hub.history.hits,
        hub.history.misses,
        hub.history.total(),
        hub.history.bytes()
    ));
    text.push_str(&format!(
        "# HELP klav_login_throttle_keys (username, address) pairs and addresses with failed logins remembered.\n\
         # TYPE klav_login_throttle_keys gauge\nklav_login_throttle_keys {}\n\
         # HELP klav_register_budget_keys Client addresses with a partly used registration budget.\n\
         # TYPE klav_register_budget_keys gauge\nklav_register_budget_keys {}\n\
         # HELP klav_register_hashes_total Passwords hashed for /register (taken names are never hashed).\n\
         # TYPE klav_register_hashes_total counter\nklav_register_hashes_total {}\n",
        hub.login_throttle.keys(),
        hub.register_budget.keys(),
        hub.register_budget.hashes_started
    ));
    text.push_str(&format!(
        "# HELP klav_node_info This node's name, and whether it shares its database with other nodes.\n\
         # TYPE klav_node_info gauge\nklav_node_info{{node=\"{}\",cluster=\"{}\"}} 1\n\
         # HELP klav_bus_events_total Events received from other nodes (and this node's presence decisions).\n\
         # TYPE klav_bus_events_total counter\nklav_bus_events_total {}\n\
         # HELP klav_messages_remote_total Room messages stored by other nodes and delivered here.\n\
         # TYPE klav_messages_remote_total counter\nklav_messages_remote_total {}\n\
         # HELP klav_cluster_rooms_tracked Rooms whose entries this node follows (members connected here).\n\
         # TYPE klav_cluster_rooms_tracked gauge\nklav_cluster_rooms_tracked {}\n\
         # HELP klav_writer_batches_total Transactions the writer committed (each notifies other nodes once per 7,800 bytes of events).\n\
         # TYPE klav_writer_batches_total counter\nklav_writer_batches_total {}\n\
         # HELP klav_writer_jobs_total Writes in those transactions.\n\
         # TYPE klav_writer_jobs_total counter\nklav_writer_jobs_total {}\n\
         # HELP klav_writer_largest_batch The most writes one transaction held.\n\
         # TYPE klav_writer_largest_batch gauge\nklav_writer_largest_batch {}\n\
         # HELP klav_bus_notifications_total Notification payloads this node's writer sent to the others.\n\
         # TYPE klav_bus_notifications_total counter\nklav_bus_notifications_total {}\n",
        hub.cluster.node.replace(['\\', '"', '\n'], "_"),
        hub.cluster.enabled,
        hub.metrics.bus_events,
        hub.metrics.messages_remote,
        hub.cluster.tracked_rooms(),
        hub.db.stats.batches.load(Relaxed),
        hub.db.stats.jobs.load(Relaxed),
        hub.db.stats.largest.load(Relaxed),
        hub.db.stats.notifications.load(Relaxed),
    ));
    text.push_str(
        "# HELP klav_bus_dropped_total Notifications from the bus dropped, by reason.\n\
         # TYPE klav_bus_dropped_total counter\n",
    );
    for why in crate::db::bus::Refused::ALL {
        text.push_str(&format!(
            "klav_bus_dropped_total{{reason=\"{}\"}} {}\n",
            why.label(),
            hub.cluster.bus_dropped.get(why)
        ));
    }
    text
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

/// Finishes a pending request: responds, then parses whatever came in meanwhile
/// and reads on (reading stopped while the request waited).
fn finish(hub: &mut Hub, id: ConnId, bytes: Vec<u8>, keep_alive: bool) {
    respond(hub, id, bytes, keep_alive);
    if let Some(conn) = hub.conn_mut(id) {
        conn.since = Instant::now();
    }
    process(hub, id);
    hub.again.push(id);
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
    if let Err(e) = crate::names::check_new_username(username) {
        return respond(hub, id, http::error(400, &e.to_string(), ka), ka);
    }
    if password.is_empty() {
        return respond(hub, id, http::error(400, "password required", ka), ka);
    }
    if password.contains('\0') {
        return respond(
            hub,
            id,
            http::error(400, "NUL characters are not allowed", ka),
            ka,
        );
    }
    let nickname = match crate::names::nickname(field(&body, "nickname").unwrap_or("")) {
        Ok(Some(n)) => n,
        Ok(None) => username.to_string(),
        Err(e) => {
            let detail = format!("invalid nickname: it {e}");
            return respond(hub, id, http::error(400, &detail, ka), ka);
        }
    };
    let Some(addr) = request_addr(hub, id, &req) else {
        return;
    };
    if let Err(refusal) = hub.register_budget.admit(addr, Instant::now()) {
        return respond(hub, id, register_refused(refusal, ka), ka);
    }
    // A cheap read first: a taken name is answered without hashing anything.
    let job = Job::UsernameTaken {
        username: username.to_string(),
    };
    if !hub.submit(Ticket::new(id, None), job) {
        return respond(hub, id, unhealthy("database queue is full", ka), ka);
    }
    set_pending(
        hub,
        id,
        PendingHttp::Register {
            username: username.to_string(),
            nickname,
            password: password.to_string(),
            addr,
            keep_alive: ka,
        },
    );
}

/// The address the request counts under (`None`: the connection is gone).
fn request_addr(hub: &Hub, id: ConnId, req: &Request) -> Option<IpAddr> {
    let peer = hub.conn(id)?.peer;
    Some(client_addr(peer, req, &hub.config.trusted_proxies))
}

/// 429 or 503, with `Retry-After`.
fn retry_later(status: u16, detail: &str, wait: Duration, ka: bool) -> Vec<u8> {
    let body = json!({ "detail": detail }).to_string();
    http::response(
        status,
        "application/json",
        body.as_bytes(),
        ka,
        // Whole seconds, rounded up: retrying at the announced time must work.
        &[(
            "Retry-After",
            wait.as_millis().div_ceil(1000).max(1).to_string(),
        )],
    )
}

fn register_refused(refusal: RegisterRefusal, ka: bool) -> Vec<u8> {
    match refusal {
        RegisterRefusal::AddressBudget(wait) => retry_later(
            429,
            "too many registrations from this address; try again later",
            wait,
            ka,
        ),
        RegisterRefusal::HashingBusy => {
            retry_later(503, "server busy, try again", Duration::from_secs(1), ka)
        }
    }
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
    // Only a name that could have been registered becomes a throttle key (or a
    // query): anything else cannot match a password. Names registered before
    // new ones had to be ASCII (Korean ones, say) keep logging in.
    if !crate::names::could_be_username(username) {
        return respond(hub, id, http::error(401, "invalid credentials", ka), ka);
    }
    let Some(addr) = request_addr(hub, id, &req) else {
        return;
    };
    if let Some(wait) = hub
        .login_throttle
        .retry_after(username, addr, Instant::now())
    {
        let resp = retry_later(429, "too many failed logins; try again later", wait, ka);
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
            addr,
            keep_alive: ka,
        },
    );
}

fn unhealthy(why: &str, ka: bool) -> Vec<u8> {
    http::error(503, &format!("Service unhealthy: {why}"), ka)
}

fn token_response(hub: &Hub, username: &str, ka: bool) -> Vec<u8> {
    let issued = hub.tokens.login(username);
    http::json(
        200,
        &json!({
            "access_token": issued.token,
            "token_type": "bearer",
            "expires_in_minutes": issued.expires_in_minutes,
        }),
        ka,
    )
}

/// 401 with `WWW-Authenticate`, for a request whose token does not do.
fn unauthorized(detail: &str, ka: bool) -> Vec<u8> {
    let body = json!({ "detail": detail }).to_string();
    http::response(
        401,
        "application/json",
        body.as_bytes(),
        ka,
        &[("WWW-Authenticate", "Bearer".into())],
    )
}

/// `POST /ws-ticket` with `Authorization: Bearer <token>`: a one-time ticket
/// for `/ws?ticket=`, so that the token itself never goes into a URL. Valid
/// for `ws_ticket_ttl` on any node; the connection it opens is the token's
/// (same user, same expiry, same login).
fn ws_ticket(hub: &mut Hub, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let token = super::session::bearer_token(&req).unwrap_or_default();
    let grant = match hub.tokens.verify_claims(&token) {
        Ok(g) => g,
        Err(e) => return respond(hub, id, unauthorized(&e.to_string(), ka), ka),
    };
    let (ticket, hash) = crate::auth::ws_ticket::new_ticket();
    let job = Job::MintWsTicket {
        hash,
        grant,
        ttl: hub.config.ws_ticket_ttl,
    };
    if !hub.submit(Ticket::new(id, None), job) {
        return respond(hub, id, unhealthy("database queue is full", ka), ka);
    }
    set_pending(
        hub,
        id,
        PendingHttp::MintTicket {
            ticket,
            keep_alive: ka,
        },
    );
}

pub fn ws_ticket_done(hub: &mut Hub, id: ConnId, minted: bool) {
    match take_pending(hub, id) {
        Some(PendingHttp::MintTicket { ticket, keep_alive }) => {
            let resp = if minted {
                http::json(
                    200,
                    &json!({
                        "ticket": ticket,
                        "expires_in_seconds": hub.config.ws_ticket_ttl.as_secs(),
                    }),
                    keep_alive,
                )
            } else {
                unauthorized("user not registered", keep_alive)
            };
            finish(hub, id, resp, keep_alive);
        }
        other => restore(hub, id, other),
    }
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
                addr,
                keep_alive,
                ..
            }) => {
                hub.register_budget.hash_done();
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
                            password: String::new(),
                            addr,
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
            other => {
                // The connection is gone (or moved on): the slot is free all the same.
                hub.register_budget.hash_done();
                restore(hub, id, other)
            }
        },
        HashOutcome::Verified(ok) => match take_pending(hub, id) {
            Some(PendingHttp::Login {
                username,
                addr,
                keep_alive,
                ..
            }) => {
                let resp = if ok {
                    hub.login_throttle.succeeded(&username, addr);
                    token_response(hub, &username, keep_alive)
                } else {
                    hub.login_throttle.failed(&username, addr, Instant::now());
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

pub fn register_done(hub: &mut Hub, id: ConnId, result: Registration) {
    match take_pending(hub, id) {
        Some(PendingHttp::Register {
            username,
            keep_alive,
            ..
        }) => {
            let resp = registration_response(&username, result, keep_alive);
            finish(hub, id, resp, keep_alive);
        }
        other => restore(hub, id, other),
    }
}

/// `ALREADY` for the exact name (what clients of the old server expect), 409
/// for a name that is another account's but for case.
fn registration_response(username: &str, result: Registration, ka: bool) -> Vec<u8> {
    match result {
        Registration::Created => http::json(200, &json!({ "status": "CREATED" }), ka),
        Registration::Already => http::json(200, &json!({ "status": "ALREADY" }), ka),
        Registration::CaseTaken(existing) => http::json(
            409,
            &json!({
                "detail": format!(
                    "username {username:?} is taken: the account {existing:?} differs \
                     only in case, and usernames are compared without regard to case"
                ),
            }),
            ka,
        ),
    }
}

/// Whether the name is taken, in any case: a taken name is answered now;
/// otherwise the password is hashed, then the account inserted (which checks
/// again, under a lock).
pub fn username_checked(hub: &mut Hub, id: ConnId, existing: Option<String>) {
    match take_pending(hub, id) {
        Some(PendingHttp::Register {
            username,
            nickname,
            password,
            addr,
            keep_alive,
        }) => {
            let ka = keep_alive;
            if let Some(existing) = existing {
                let result = if existing == username {
                    Registration::Already
                } else {
                    Registration::CaseTaken(existing)
                };
                return finish(hub, id, registration_response(&username, result, ka), ka);
            }
            // Checked only for a name that is free: a client that registers an
            // account it already has (with the password it had before the
            // rule) still gets `ALREADY`.
            let min = hub.config.min_password_len;
            if password.chars().count() < min {
                let detail = format!("password too short: use at least {min} characters");
                return finish(hub, id, http::error(400, &detail, ka), ka);
            }
            if let Err(refusal) = hub.register_budget.start_hash() {
                return finish(hub, id, register_refused(refusal, ka), ka);
            }
            if !hub.submit_hash(Ticket::new(id, None), HashJob::Hash { password }) {
                hub.register_budget.hash_done();
                let resp = register_refused(RegisterRefusal::HashingBusy, ka);
                return finish(hub, id, resp, ka);
            }
            set_pending(
                hub,
                id,
                PendingHttp::Register {
                    username,
                    nickname,
                    password: String::new(),
                    addr,
                    keep_alive: ka,
                },
            );
        }
        other => restore(hub, id, other),
    }
}

/// The stored password of `username` arrived: check the login against it.
pub fn credentials_done(hub: &mut Hub, id: ConnId, username: String, stored: Option<String>) {
    match take_pending(hub, id) {
        Some(PendingHttp::Login {
            password,
            addr,
            keep_alive,
            ..
        }) => check_login(hub, id, username, password, addr, stored, keep_alive),
        other => restore(hub, id, other),
    }
}

fn check_login(
    hub: &mut Hub,
    id: ConnId,
    username: String,
    password: String,
    addr: IpAddr,
    stored: Option<String>,
    ka: bool,
) {
    let now = Instant::now();
    let Some(stored) = stored else {
        hub.login_throttle.failed(&username, addr, now);
        return finish(hub, id, http::error(401, "not registered", ka), ka);
    };
    if is_hashed(&stored) {
        // A stored string whose parameters would make verifying it too costly (or
        // abort the process) is never verified: nobody can log in with it.
        if let Err(e) = check_stored_hash(&stored) {
            if hub.login_throttle.first_report(&username) {
                crate::log!(
                    Warn,
                    "user {username:?} cannot log in: their stored password hash is \
                     refused ({e})"
                );
            }
            hub.login_throttle.failed(&username, addr, now);
            return finish(hub, id, http::error(401, "invalid credentials", ka), ka);
        }
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
                    addr,
                    keep_alive: ka,
                },
            );
        } else {
            let resp = retry_later(503, "server busy, try again", Duration::from_secs(1), ka);
            finish(hub, id, resp, ka);
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
        hub.login_throttle.succeeded(&username, addr);
        let resp = token_response(hub, &username, ka);
        finish(hub, id, resp, ka);
    } else {
        hub.login_throttle.failed(&username, addr, now);
        finish(hub, id, http::error(401, "invalid credentials", ka), ka);
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
        | Some(PendingHttp::Login { keep_alive, .. })
        | Some(PendingHttp::MintTicket { keep_alive, .. }) => {
            finish(hub, id, unhealthy(&e.to_string(), keep_alive), keep_alive);
        }
        Some(PendingHttp::TicketUpgrade { .. }) => super::session::ticket_failed(hub, id, e),
        None => {}
    }
}
