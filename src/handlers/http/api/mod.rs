//! The server API (`/api/v1/`): an application's backend, authenticated by an
//! API key (`Authorization: Bearer klav_…`, see `db::api_keys`), creates
//! users and rooms, mints tokens, adds and removes members, posts, reads
//! history, members and presence, disconnects and revokes users.
//!
//! A request is matched against [`ROUTES`] first (an unknown path is `404`,
//! a known one asked with another method `405`), then its key is checked: by
//! a worker ([`ApiQuery::Key`]) unless this node found it live within
//! [`crate::budget::API_KEY_TRUST`], so a revoked key is refused on every
//! node within a second. Then the key's request bucket (`KLAV_API_RATE`),
//! then the operation, whose writes are the WebSocket requests' own jobs of
//! the ordered writer (`users` and `rooms` say which). Every error is JSON
//! `{"detail","code"}`.
//!
//! Finished jobs come back through [`completed`], before the outcome's own
//! family sees it: the family still does what the outcome means for the
//! connections (a message fanned out, a member announced), and the API
//! answers the request.

mod rooms;
mod users;

use std::time::Instant;

use serde_json::{json, Value};

use super::exchange::{finish, request_addr, respond, set_pending, take_pending};
use crate::api_call::{ApiCall, ApiOp, ApiStep};
use crate::conn::{ConnId, PendingHttp, Phase};
use crate::db::api_keys::key_hash;
use crate::db::jobs::{ApiOutcome, ApiQuery};
use crate::db::{Job, Outcome, Ticket};
use crate::handlers::session::bearer_token;
use crate::http::{self, Request};
use crate::hub::Hub;
use crate::protocol::RequestError;
use crate::turn::Turn;

/// The OpenAPI 3.1 document of every route below (`docs/openapi.json`),
/// served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// Where every route of the API starts.
pub const PREFIX: &str = "/api/v1/";

/// What parses a request to one route into its operation: the path's
/// `{…}` segments in order, and the request.
type Parse = fn(&Hub, &[String], &Request) -> Result<ApiOp, ApiError>;

/// Every route of the API: method, path (`{name}`: one segment), and its
/// parser (`None`: answered without a key, the OpenAPI document). The
/// OpenAPI document lists exactly these (a test holds them together).
pub const ROUTES: &[(&str, &str, Option<Parse>)] = &[
    ("POST", "/api/v1/users", Some(users::create_user)),
    ("POST", "/api/v1/tokens", Some(users::token)),
    ("GET", "/api/v1/presence", Some(users::presence)),
    (
        "POST",
        "/api/v1/users/{username}/disconnect",
        Some(users::disconnect),
    ),
    (
        "POST",
        "/api/v1/users/{username}/revoke",
        Some(users::revoke),
    ),
    ("POST", "/api/v1/rooms", Some(rooms::create_room)),
    (
        "PUT",
        "/api/v1/rooms/{room_id}/members/{username}",
        Some(rooms::add_member),
    ),
    (
        "DELETE",
        "/api/v1/rooms/{room_id}/members/{username}",
        Some(rooms::remove_member),
    ),
    (
        "GET",
        "/api/v1/rooms/{room_id}/members",
        Some(rooms::members),
    ),
    (
        "POST",
        "/api/v1/rooms/{room_id}/messages",
        Some(rooms::post),
    ),
    (
        "GET",
        "/api/v1/rooms/{room_id}/history",
        Some(rooms::history),
    ),
    ("GET", "/api/v1/openapi.json", None),
];

/// An API error: its status, machine-readable `code` and `detail`.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// `422 INVALID_BODY`: the body is not the JSON object the route reads.
    pub fn body(detail: impl Into<String>) -> ApiError {
        ApiError::new(422, "INVALID_BODY", detail)
    }

    /// A WebSocket request's error, as the API reports it: the same code.
    pub fn request(status: u16, e: RequestError) -> ApiError {
        let detail = e
            .detail
            .clone()
            .unwrap_or_else(|| e.code.as_str().to_string());
        ApiError::new(status, e.code.as_str(), detail)
    }

    fn response(&self, ka: bool) -> Vec<u8> {
        let body = json!({ "detail": self.detail, "code": self.code });
        let extra: Vec<(&str, String)> = match self.status {
            401 => vec![("WWW-Authenticate", "Bearer".into())],
            _ => Vec::new(),
        };
        http::response(
            self.status,
            "application/json",
            body.to_string().as_bytes(),
            ka,
            &extra,
        )
    }
}

/// How a path matched the table.
enum Matched {
    /// Route index and its `{…}` segments.
    Route(usize, Vec<String>),
    /// The path is a route's, the method another's: the methods it has.
    Method(Vec<&'static str>),
    None,
}

fn match_route(method: &str, path: &str) -> Matched {
    let segments: Vec<&str> = path.split('/').collect();
    let mut methods = Vec::new();
    for (i, (m, pattern, _)) in ROUTES.iter().enumerate() {
        let Some(params) = match_path(pattern, &segments) else {
            continue;
        };
        if *m == method {
            return Matched::Route(i, params);
        }
        methods.push(*m);
    }
    match methods.is_empty() {
        true => Matched::None,
        false => Matched::Method(methods),
    }
}

/// The path's `{…}` segments, percent-decoded, if it has the pattern's shape.
fn match_path(pattern: &str, segments: &[&str]) -> Option<Vec<String>> {
    let wanted: Vec<&str> = pattern.split('/').collect();
    if wanted.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (w, s) in wanted.iter().zip(segments) {
        if w.starts_with('{') {
            let decoded = http::percent_decode_path(s)?;
            if decoded.is_empty() {
                return None;
            }
            params.push(decoded);
        } else if w != s {
            return None;
        }
    }
    Some(params)
}

/// Whether `path` belongs to the API.
pub fn is_api(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// A request under `/api/v1/`: matched, then its key checked.
pub fn handle(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let parse = match match_route(&req.method, &req.path) {
        Matched::None => {
            return reply_error(
                hub,
                id,
                ApiError::new(404, "NOT_FOUND", "no such route"),
                ka,
            )
        }
        Matched::Method(allowed) => {
            let body = json!({ "detail": "method not allowed", "code": "METHOD_NOT_ALLOWED" });
            let resp = http::response(
                405,
                "application/json",
                body.to_string().as_bytes(),
                ka,
                &[("Allow", allowed.join(", "))],
            );
            return respond(hub, id, resp, ka);
        }
        Matched::Route(i, _) => ROUTES[i].2,
    };
    if parse.is_none() {
        let resp = http::response(200, "application/json", OPENAPI.as_bytes(), ka, &[]);
        return respond(hub, id, resp, ka);
    }
    let Some(key) = bearer_token(&req) else {
        hub.svc.metrics.api_unauthorized += 1;
        let e = ApiError::new(
            401,
            "UNAUTHORIZED",
            "an API key is required: Authorization: Bearer <key>",
        );
        return reply_error(hub, id, e, ka);
    };
    let now = Instant::now();
    let hash = key_hash(&key);
    if let Some(name) = hash.and_then(|h| hub.svc.budgets.api.trusted(&h, now)) {
        let name = name.to_string();
        return admitted(hub, id, &name, req);
    }
    // Keys cannot be guessed, but each one tried costs a read: an address
    // that presents bad keys is slowed down as one that fails logins is.
    let Some(addr) = request_addr(hub, id, &req) else {
        return;
    };
    if let Some(wait) = hub.svc.budgets.logins.retry_after(KEY_GUESSER, addr, now) {
        return too_many(hub, id, "too many bad API keys from this address", wait, ka);
    }
    let Some(hash) = hash else {
        hub.svc.metrics.api_unauthorized += 1;
        hub.svc.budgets.logins.failed(KEY_GUESSER, addr, now);
        return reply_error(hub, id, bad_key(), ka);
    };
    let call = ApiCall {
        keep_alive: ka,
        step: ApiStep::Key { req, hash, addr },
    };
    start(hub, id, Job::Api(ApiQuery::Key { hash }), call);
}

/// What bad API keys count under in the login throttle, with the client's
/// address: no username has a space, so no login shares its backoff.
const KEY_GUESSER: &str = "(api key)";

/// `429 RATE_LIMITED` with `Retry-After`.
fn too_many(hub: &mut Hub, id: ConnId, detail: &str, wait: std::time::Duration, ka: bool) {
    let body = json!({ "detail": detail, "code": "RATE_LIMITED" });
    let secs = wait.as_millis().div_ceil(1000).max(1).to_string();
    let resp = http::response(
        429,
        "application/json",
        body.to_string().as_bytes(),
        ka,
        &[("Retry-After", secs)],
    );
    respond(hub, id, resp, ka);
}

/// `401 UNAUTHORIZED` for a key that is not one, unknown, or revoked (the
/// three are not told apart).
fn bad_key() -> ApiError {
    ApiError::new(401, "UNAUTHORIZED", "invalid or revoked API key")
}

/// The key is live: its request bucket, then the operation.
fn admitted(hub: &mut Hub, id: ConnId, key: &str, req: Request) {
    let ka = req.keep_alive;
    let now = Instant::now();
    hub.svc.metrics.api_requests += 1;
    let budget = &mut hub.svc.budgets.api.requests;
    if !budget.admit(key, now) {
        let wait = budget.wait(key, now);
        hub.svc.metrics.rate_limited += 1;
        return too_many(hub, id, "too many requests with this API key", wait, ka);
    }
    let Matched::Route(i, params) = match_route(&req.method, &req.path) else {
        return reply_error(
            hub,
            id,
            ApiError::new(404, "NOT_FOUND", "no such route"),
            ka,
        );
    };
    let parse = ROUTES[i].2.expect("only routes with a parser need a key");
    match parse(hub, &params, &req) {
        Ok(op) => begin(hub, id, ka, op),
        Err(e) => reply_error(hub, id, e, ka),
    }
}

/// Starts an operation: its first job, or (what memory answers) its reply.
fn begin(hub: &mut Hub, id: ConnId, ka: bool, op: ApiOp) {
    match op {
        ApiOp::CreateUser { .. }
        | ApiOp::Token { .. }
        | ApiOp::Presence { .. }
        | ApiOp::Disconnect { .. }
        | ApiOp::Revoke { .. } => users::begin(hub, id, ka, op),
        _ => rooms::begin(hub, id, ka, op),
    }
}

/// Hands a job to the workers, the request parked until it is done; a full
/// queue is `503 UNAVAILABLE` at once.
pub(super) fn start(hub: &mut Hub, id: ConnId, job: Job, call: ApiCall) {
    let ka = call.keep_alive;
    if hub.submit(Ticket::new(id, None), job) {
        set_pending(hub, id, PendingHttp::Api(Box::new(call)));
    } else {
        reply_error(hub, id, unavailable("database queue is full"), ka);
    }
}

/// The next job of an operation under way.
pub(super) fn next(hub: &mut Hub, id: ConnId, ka: bool, job: Job, op: ApiOp) {
    let call = ApiCall {
        keep_alive: ka,
        step: ApiStep::Op(op),
    };
    start(hub, id, job, call);
}

pub(super) fn unavailable(why: &str) -> ApiError {
    ApiError::new(503, "UNAVAILABLE", format!("service unavailable: {why}"))
}

/// Answers a request now (it was not parked).
pub(super) fn reply_error(hub: &mut Hub, id: ConnId, e: ApiError, ka: bool) {
    respond(hub, id, e.response(ka), ka);
}

/// Answers a parked request.
pub(super) fn done(hub: &mut Hub, id: ConnId, status: u16, body: &Value, ka: bool) {
    finish(hub, id, http::json(status, body, ka), ka);
}

/// Answers a parked request with an error.
pub(super) fn failed(hub: &mut Hub, id: ConnId, e: ApiError, ka: bool) {
    finish(hub, id, e.response(ka), ka);
}

/// Whether the connection's pending request is an API one.
fn waiting(hub: &Hub, id: ConnId) -> bool {
    hub.conns.get(id).is_some_and(|c| match &c.phase {
        Phase::Http(st) => matches!(st.pending, Some(PendingHttp::Api(_))),
        _ => false,
    })
}

/// A finished job, before its family sees it: an API request's is taken
/// here (`None`); every other goes on.
pub fn completed(hub: &mut Hub, t: &Ticket, outcome: Outcome) -> Option<Outcome> {
    if !waiting(hub, t.conn) {
        return Some(outcome);
    }
    let Some(PendingHttp::Api(call)) = take_pending(hub, t.conn) else {
        return Some(outcome);
    };
    let ka = call.keep_alive;
    let rest = taken(hub, t, ka, call.step, outcome);
    if rest.is_none() {
        // Answered (or parked for its next job): whatever the client
        // pipelined meanwhile is read when the request is done.
        hub.conns.again.push(t.conn);
    }
    rest
}

/// A finished job of the API request `step`: `None` when it was the
/// request's.
fn taken(hub: &mut Hub, t: &Ticket, ka: bool, step: ApiStep, outcome: Outcome) -> Option<Outcome> {
    match (step, outcome) {
        (ApiStep::Key { req, hash, addr }, Outcome::Api(ApiOutcome::Key(name))) => {
            let now = Instant::now();
            hub.svc.budgets.api.checked(hash, name.as_deref(), now);
            match name {
                Some(name) => admitted(hub, t.conn, &name, req),
                None => {
                    hub.svc.metrics.api_unauthorized += 1;
                    hub.svc.budgets.logins.failed(KEY_GUESSER, addr, now);
                    failed(hub, t.conn, bad_key(), ka)
                }
            }
            None
        }
        (ApiStep::Op(op), outcome) => match op {
            ApiOp::CreateUser { .. }
            | ApiOp::Token { .. }
            | ApiOp::Presence { .. }
            | ApiOp::Disconnect { .. }
            | ApiOp::Revoke { .. } => users::advance(hub, t, ka, op, outcome),
            _ => rooms::advance(hub, t, ka, op, outcome),
        },
        (step, outcome) => {
            // Not this request's: put back.
            let call = ApiCall {
                keep_alive: ka,
                step,
            };
            set_pending(hub, t.conn, PendingHttp::Api(Box::new(call)));
            Some(outcome)
        }
    }
}

/// An operation got an outcome it does not wait for: the request stays
/// parked and the outcome goes on.
pub(super) fn not_mine(
    hub: &mut Hub,
    id: ConnId,
    ka: bool,
    op: ApiOp,
    o: Outcome,
) -> Option<Outcome> {
    let call = ApiCall {
        keep_alive: ka,
        step: ApiStep::Op(op),
    };
    set_pending(hub, id, PendingHttp::Api(Box::new(call)));
    Some(o)
}

/// A job of an API request failed.
pub fn db_failed(hub: &mut Hub, id: ConnId, call: &ApiCall, why: &str) {
    failed(hub, id, unavailable(why), call.keep_alive);
}

/// The hashing thread hashed an API request's password (`users`).
pub fn hashed(hub: &mut Hub, id: ConnId, call: ApiCall, hash: String) {
    users::hashed(hub, id, call, hash);
}

/// The request body as a JSON object (an empty body is an empty object).
pub(super) fn body_object(req: &Request) -> Result<serde_json::Map<String, Value>, ApiError> {
    if req.body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::body("the body must be a JSON object")),
    }
}

/// A WebSocket request with the body's fields, so that the API checks
/// texts, client ids, topics and flags as the WebSocket requests do.
pub(super) fn as_request(body: serde_json::Map<String, Value>) -> crate::protocol::Request {
    crate::protocol::Request {
        kind: String::new(),
        req_id: None,
        body,
    }
}

/// An optional string field; anything else there is `422`.
pub(super) fn opt_str(
    body: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::body(format!("\"{name}\" must be a string"))),
    }
}

/// A username the request names: one that could be registered, else
/// `404 USER_NOT_FOUND` (no such user can exist).
pub(super) fn username(name: &str) -> Result<String, ApiError> {
    match crate::names::could_be_username(name) {
        true => Ok(name.to_string()),
        false => Err(user_not_found(name)),
    }
}

pub(super) fn user_not_found(name: &str) -> ApiError {
    ApiError::new(404, "USER_NOT_FOUND", format!("no user {name:?}"))
}

pub(super) fn room_not_found(room: &str) -> ApiError {
    ApiError::new(404, "ROOM_NOT_FOUND", format!("no room {room:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_shape_and_method() {
        let m = |method: &str, path: &str| match match_route(method, path) {
            Matched::Route(i, p) => format!("{} {}", ROUTES[i].1, p.join(",")),
            Matched::Method(a) => format!("405 {}", a.join(",")),
            Matched::None => "404".into(),
        };
        assert_eq!(
            m("PUT", "/api/v1/rooms/r_1/members/b%C3%B6b"),
            "/api/v1/rooms/{room_id}/members/{username} r_1,böb"
        );
        assert_eq!(m("GET", "/api/v1/rooms/r_1/members/bob"), "405 PUT,DELETE");
        assert_eq!(m("POST", "/api/v1/users"), "/api/v1/users ");
        // A path's `+` is itself (only a query's means a space).
        assert_eq!(
            m("POST", "/api/v1/users/a+b%2Bc/revoke"),
            "/api/v1/users/{username}/revoke a+b+c"
        );
        assert_eq!(m("POST", "/api/v1/users/%FF/revoke"), "404");
        assert_eq!(m("POST", "/api/v1/users/"), "404");
        assert_eq!(m("POST", "/api/v1/users//revoke"), "404");
        assert_eq!(m("GET", "/api/v1/nothing"), "404");
    }

    #[test]
    fn the_openapi_document_is_json_of_version_3_1() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
