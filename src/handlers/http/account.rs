//! The account changes a signed-in user asks for: `POST /password`,
//! `POST /logout_all` and `POST /account/delete`.
//!
//! Each presents `Authorization: Bearer <token>` (checked here, then against
//! the user's token generation by the database) and counts against the login
//! throttle (a throttled name or address is refused before anything is
//! read). All but `logout_all` ask for the current password: it is read
//! ([`Job::Credentials`]) and checked on a hashing thread, a wrong one counting
//! as a failed login. The change itself is one job of the ordered writer,
//! which refuses it if the token was revoked meanwhile; its outcome closes the
//! user's WebSockets here (`handlers::revocation`), and its bus note every
//! other node's.

use std::time::{Duration, Instant};

use serde_json::json;

use super::exchange::{
    field, finish, json_body, request_addr, respond, restore, retry_later, set_pending, start_job,
    take_pending, token_response, unauthorized,
};
use crate::auth::password::{check_stored_hash, constant_time_eq, is_hashed, HashJob};
use crate::conn::{AccountChange, AccountRequest, ConnId, PendingHttp};
use crate::db::{Job, Ticket};
use crate::handlers::session::bearer_token;
use crate::http::{self, Request};
use crate::hub::Hub;
use crate::turn::Turn;

/// `POST /password` `{"password","new_password"}`: `200` with a fresh token
/// (the body of `/login`), of the generation the change starts; every older
/// token of the user is revoked.
pub fn password(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let fields = json_body(&req, &["password", "new_password"]);
    let parsed = fields.as_ref().and_then(|b| {
        let current = field(b, "password")?;
        let new = field(b, "new_password")?;
        Some((current.to_string(), new.to_string()))
    });
    let Some((current, new)) = parsed else {
        let detail = "body must be a JSON object with string fields \"password\" and \
                      \"new_password\"";
        return respond(hub, id, http::error(422, detail, ka), ka);
    };
    if let Err(detail) = check_new_password(hub, &new) {
        return respond(hub, id, http::error(422, &detail, ka), ka);
    }
    let change = AccountChange::Password { new };
    begin(hub, id, &req, current, change);
}

/// `POST /logout_all` `{}`: `200` `{"status":"REVOKED"}`; every token of the
/// user, the presented one included, is revoked.
pub fn logout_all(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    if json_body(&req, &[]).is_none() {
        let detail = "body must be a JSON object";
        return respond(hub, id, http::error(422, detail, ka), ka);
    }
    begin(hub, id, &req, String::new(), AccountChange::LogoutAll);
}

/// `POST /account/delete` `{"password","erase"}`: `200`
/// `{"status":"DELETED"}` (see `db::writer::deletion` for what goes).
pub fn delete(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let fields = json_body(&req, &["password"]);
    let parsed = fields.as_ref().and_then(|b| {
        let password = field(b, "password")?;
        let erase = b.get("erase")?.as_bool()?;
        Some((password.to_string(), erase))
    });
    let Some((password, erase)) = parsed else {
        let detail = "body must be a JSON object with a string field \"password\" and a \
                      boolean field \"erase\"";
        return respond(hub, id, http::error(422, detail, ka), ka);
    };
    begin(hub, id, &req, password, AccountChange::Delete { erase });
}

/// The rules of `/register` for a new password: something, without NUL, at
/// least `KLAV_MIN_PASSWORD_LEN` characters.
fn check_new_password(hub: &Hub, new: &str) -> Result<(), String> {
    let min = hub.svc.config.min_password_len;
    if new.is_empty() {
        return Err("new password required".into());
    }
    if new.contains('\0') {
        return Err("NUL characters are not allowed".into());
    }
    if new.chars().count() < min {
        return Err(format!("password too short: use at least {min} characters"));
    }
    Ok(())
}

/// What every account change does first: the token, the login throttle,
/// then the stored password (or, for `logout_all`, the revocation at once).
pub(super) fn begin(
    hub: &mut Hub,
    id: ConnId,
    req: &Request,
    password: String,
    change: AccountChange,
) {
    let ka = req.keep_alive;
    let token = bearer_token(req).unwrap_or_default();
    let grant = match hub.svc.tokens.verify_claims(&token) {
        Ok(g) => g,
        Err(e) => return respond(hub, id, unauthorized(&e.to_string(), ka), ka),
    };
    let known = hub
        .state
        .users
        .get(&grant.username)
        .map_or(0, |u| u.generation);
    if grant.generation < known {
        return respond(hub, id, unauthorized(TOKEN_REVOKED, ka), ka);
    }
    let Some(addr) = request_addr(hub, id, req) else {
        return;
    };
    let throttle = &hub.svc.budgets.logins;
    if let Some(wait) = throttle.retry_after(&grant.username, addr, Instant::now()) {
        let resp = retry_later(429, "too many failed logins; try again later", wait, ka);
        return respond(hub, id, resp, ka);
    }
    let asks_password = !matches!(change, AccountChange::LogoutAll);
    let request = Box::new(AccountRequest {
        username: grant.username,
        token_gen: grant.generation,
        password,
        change,
        addr,
        keep_alive: ka,
    });
    if asks_password {
        let job = Job::Credentials {
            username: request.username.clone(),
        };
        start_job(hub, id, job, PendingHttp::Account(request), ka);
    } else {
        write(hub, id, *request, None);
    }
}

/// The 401's `detail` for a token whose generation was revoked.
const TOKEN_REVOKED: &str = "token revoked";

/// The stored password (and token generation) of the user arrived: the
/// current password is checked against it, on a hashing thread unless it is
/// a legacy plain-text one.
pub fn credentials_done(
    hub: &mut Hub,
    id: ConnId,
    req: AccountRequest,
    stored: Option<String>,
    generation: i64,
) {
    let ka = req.keep_alive;
    let Some(stored) = stored else {
        return finish(hub, id, unauthorized("user not registered", ka), ka);
    };
    if req.token_gen < generation {
        return finish(hub, id, unauthorized(TOKEN_REVOKED, ka), ka);
    }
    if !is_hashed(&stored) {
        // A plain-text password from the old server: compared here.
        let ok = constant_time_eq(stored.as_bytes(), req.password.as_bytes());
        return password_checked(hub, id, req, ok);
    }
    if check_stored_hash(&stored).is_err() {
        // As `/login`: a stored hash too costly to verify matches nothing.
        return password_checked(hub, id, req, false);
    }
    let job = HashJob::Verify {
        password: req.password.clone(),
        phc: stored,
    };
    submit_hash(hub, id, req, job);
}

/// Hands a hashing job over, the request parked until it answers; `503` when
/// the hashing threads are full.
fn submit_hash(hub: &mut Hub, id: ConnId, req: AccountRequest, job: HashJob) {
    let ka = req.keep_alive;
    if hub.svc.submit_hash(Ticket::new(id, None), job) {
        set_pending(hub, id, PendingHttp::Account(Box::new(req)));
    } else {
        let resp = retry_later(503, "server busy, try again", Duration::from_secs(1), ka);
        finish(hub, id, resp, ka);
    }
}

/// The current password was checked: a wrong one is a failed login (`401`);
/// a right one goes on to the change (a new password is hashed first).
pub fn password_checked(hub: &mut Hub, id: ConnId, mut req: AccountRequest, ok: bool) {
    let ka = req.keep_alive;
    let logins = &mut hub.svc.budgets.logins;
    if !ok {
        logins.failed(&req.username, req.addr, Instant::now());
        return finish(hub, id, http::error(401, "invalid credentials", ka), ka);
    }
    logins.succeeded(&req.username, req.addr);
    req.password.clear();
    match &mut req.change {
        AccountChange::Password { new } => {
            let password = std::mem::take(new);
            submit_hash(hub, id, req, HashJob::Hash { password });
        }
        _ => write(hub, id, req, None),
    }
}

/// The new password of a `/password` was hashed: the revocation that sets it.
pub fn new_password_hashed(hub: &mut Hub, id: ConnId, req: AccountRequest, hash: String) {
    write(hub, id, req, Some(hash));
}

/// Submits the change to the ordered writer.
fn write(hub: &mut Hub, id: ConnId, req: AccountRequest, new_hash: Option<String>) {
    let ka = req.keep_alive;
    let username = req.username.clone();
    let token_gen = req.token_gen;
    let job = match req.change {
        AccountChange::Delete { erase } => Job::DeleteAccount {
            username,
            token_gen,
            erase,
        },
        _ => Job::Revoke {
            username,
            token_gen,
            new_hash,
        },
    };
    start_job(hub, id, job, PendingHttp::Account(Box::new(req)), ka);
}

/// A revocation was written (`generation`), or refused (`None`: the token
/// was revoked meanwhile, or the account is gone). The user's connections
/// here close whether or not the request is still waiting.
pub fn revoke_done(hub: &mut Hub, id: ConnId, username: &str, generation: Option<i64>) {
    if let Some(g) = generation {
        crate::handlers::revocation::revoked(hub, username, g, false);
    }
    let req = match take_pending(hub, id) {
        Some(PendingHttp::Account(req)) => req,
        other => return restore(hub, id, other),
    };
    let ka = req.keep_alive;
    let resp = match (generation, &req.change) {
        (None, _) => unauthorized(TOKEN_REVOKED, ka),
        (Some(g), AccountChange::Password { .. }) => token_response(hub, username, g, ka),
        (Some(_), _) => http::json(200, &json!({ "status": "REVOKED" }), ka),
    };
    finish(hub, id, resp, ka);
}

/// An account deletion was written (`done`) or refused (as for
/// [`revoke_done`]); what it did was shown already (see `completion`).
pub fn delete_done(hub: &mut Hub, id: ConnId, done: bool) {
    let req = match take_pending(hub, id) {
        Some(PendingHttp::Account(req)) => req,
        other => return restore(hub, id, other),
    };
    let ka = req.keep_alive;
    let resp = match done {
        true => http::json(200, &json!({ "status": "DELETED" }), ka),
        false => unauthorized(TOKEN_REVOKED, ka),
    };
    finish(hub, id, resp, ka);
}
