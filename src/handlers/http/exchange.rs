//! What every HTTP endpoint does with its exchange: answer it, park it while a
//! worker has it, pick its JSON body apart, and the shared error responses.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client_addr::client_addr;
use crate::conn::{ConnId, PendingHttp, Phase};
use crate::db::{Job, Ticket};
use crate::http::{self, Request};
use crate::hub::Hub;

/// Queues a response; closes the connection after it unless kept alive.
pub fn respond(hub: &mut Hub, id: ConnId, bytes: impl AsRef<[u8]>, keep_alive: bool) {
    hub.conns.respond(id, bytes.as_ref(), keep_alive);
}

pub fn set_pending(hub: &mut Hub, id: ConnId, p: PendingHttp) {
    if let Some(conn) = hub.conns.get_mut(id) {
        if let Phase::Http(st) = &mut conn.phase {
            st.pending = Some(p);
        }
    }
}

/// Hands the request's job to a worker and parks the request until it is
/// done; a full queue is answered 503 at once.
pub fn start_job(hub: &mut Hub, id: ConnId, job: Job, pending: PendingHttp, ka: bool) {
    if hub.submit(Ticket::new(id, None), job) {
        set_pending(hub, id, pending);
    } else {
        respond(hub, id, unhealthy("database queue is full", ka), ka);
    }
}

pub fn take_pending(hub: &mut Hub, id: ConnId) -> Option<PendingHttp> {
    match &mut hub.conns.get_mut(id)?.phase {
        Phase::Http(st) => st.pending.take(),
        _ => None,
    }
}

/// Puts back a pending request that a completion did not belong to.
pub fn restore(hub: &mut Hub, id: ConnId, p: Option<PendingHttp>) {
    if let Some(p) = p {
        set_pending(hub, id, p);
    }
}

/// Finishes a pending request: responds, then parses whatever came in meanwhile
/// and reads on (reading stopped while the request waited).
pub fn finish(hub: &mut Hub, id: ConnId, bytes: Vec<u8>, keep_alive: bool) {
    respond(hub, id, bytes, keep_alive);
    if let Some(conn) = hub.conns.get_mut(id) {
        conn.since = Instant::now();
    }
    // Whatever the client pipelined meanwhile is parsed when the loop reads
    // the connection again, within that turn's budget.
    hub.conns.again.push(id);
}

/// The body as a JSON object whose listed fields are strings (or absent/null).
pub fn json_body(req: &Request, string_fields: &[&str]) -> Option<serde_json::Map<String, Value>> {
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

pub fn field<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Value::as_str)
}

/// The address the request counts under (`None`: the connection is gone).
pub fn request_addr(hub: &Hub, id: ConnId, req: &Request) -> Option<IpAddr> {
    let peer = hub.conns.get(id)?.peer;
    Some(client_addr(peer, req, &hub.svc.config.trusted_proxies))
}

/// 429 or 503, with `Retry-After`.
pub fn retry_later(status: u16, detail: &str, wait: Duration, ka: bool) -> Vec<u8> {
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

pub fn unhealthy(why: &str, ka: bool) -> Vec<u8> {
    http::error(503, &format!("Service unhealthy: {why}"), ka)
}

/// 401 with `WWW-Authenticate`, for a request whose token does not do.
pub fn unauthorized(detail: &str, ka: bool) -> Vec<u8> {
    let body = json!({ "detail": detail }).to_string();
    http::response(
        401,
        "application/json",
        body.as_bytes(),
        ka,
        &[("WWW-Authenticate", "Bearer".into())],
    )
}

/// The body of `/login` (and of `/password`): a token of the user's token
/// `generation`.
pub fn token_response(hub: &Hub, username: &str, generation: i64, ka: bool) -> Vec<u8> {
    let issued = hub.svc.tokens.login(username, generation);
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
