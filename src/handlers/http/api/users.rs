//! The server API's users: `POST /api/v1/users` (as `/register`: the name
//! checked, the password hashed on a hashing thread, the account inserted),
//! `POST /api/v1/tokens` (the body of `/login`, without a password),
//! `GET /api/v1/presence`, `POST /api/v1/users/{username}/disconnect` and
//! `…/revoke` (the job of `/logout_all`).

use serde_json::{json, Value};

use super::super::exchange::{respond, set_pending};
use super::{
    body_object, done, failed, next, not_mine, opt_str, reply_error, start, unavailable,
    user_not_found, username, ApiError,
};
use crate::api_call::{ApiCall, ApiOp, ApiStep};
use crate::auth::password::HashJob;
use crate::cluster::bus::{encode_disconnected, Payloads};
use crate::conn::ConnId;
use crate::db::jobs::{ApiOutcome, ApiQuery, Registration};
use crate::db::{Job, Outcome, Ticket};
use crate::handlers::revocation;
use crate::http::Request;
use crate::hub::Hub;

/// Most users one presence request may name.
pub const MAX_PRESENCE_USERS: usize = 100;

/// `POST /api/v1/users` `{"username","nickname"?,"password"?}`: the rules of
/// `/register`. Without a password the account gets one nobody knows: it
/// signs in only with tokens the API mints.
pub(super) fn create_user(hub: &Hub, _: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let body = body_object(req)?;
    let username =
        opt_str(&body, "username")?.ok_or_else(|| ApiError::body("\"username\" is required"))?;
    crate::names::check_new_username(&username)
        .map_err(|e| ApiError::new(400, "BAD_REQUEST", e.to_string()))?;
    let nickname = match crate::names::nickname(&opt_str(&body, "nickname")?.unwrap_or_default()) {
        Ok(Some(n)) => n,
        Ok(None) => username.clone(),
        Err(e) => {
            return Err(ApiError::new(
                400,
                "BAD_REQUEST",
                format!("invalid nickname: it {e}"),
            ))
        }
    };
    let password = match opt_str(&body, "password")? {
        Some(p) => {
            check_password(hub, &p)?;
            p
        }
        // A secret as strong as a key, hashed and forgotten.
        None => crate::db::api_keys::new_key(),
    };
    Ok(ApiOp::CreateUser {
        username,
        nickname,
        password,
        hashing: false,
    })
}

/// The rules of `/register` for a password.
fn check_password(hub: &Hub, p: &str) -> Result<(), ApiError> {
    let min = hub.svc.config.min_password_len;
    let bad = |d: String| Err(ApiError::new(400, "BAD_REQUEST", d));
    if p.is_empty() {
        return bad("password required".into());
    }
    if p.contains('\0') {
        return bad("NUL characters are not allowed".into());
    }
    if p.chars().count() < min {
        return bad(format!("password too short: use at least {min} characters"));
    }
    Ok(())
}

/// `POST /api/v1/tokens` `{"username","expires_in_minutes"?}`.
pub(super) fn token(hub: &Hub, _: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let body = body_object(req)?;
    let name =
        opt_str(&body, "username")?.ok_or_else(|| ApiError::body("\"username\" is required"))?;
    let max = hub.svc.tokens.session_max.as_secs() / 60;
    let minutes = match body.get("expires_in_minutes") {
        None | Some(Value::Null) => hub.svc.tokens.expire_minutes,
        Some(v) => match v.as_u64() {
            Some(m) if (1..=max).contains(&m) => m,
            _ => {
                let d = format!("\"expires_in_minutes\" must be a whole number from 1 to {max}");
                return Err(ApiError::new(400, "BAD_REQUEST", d));
            }
        },
    };
    Ok(ApiOp::Token {
        username: username(&name)?,
        minutes,
    })
}

/// `GET /api/v1/presence?users=a,b`.
pub(super) fn presence(_: &Hub, _: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let list = req.query_param("users").unwrap_or_default();
    let mut users: Vec<String> = Vec::new();
    for u in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if !users.iter().any(|x| x == u) {
            users.push(u.to_string());
        }
    }
    if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
        let d = format!("\"users\" must name 1 to {MAX_PRESENCE_USERS} users, comma-separated");
        return Err(ApiError::new(400, "BAD_REQUEST", d));
    }
    Ok(ApiOp::Presence { users })
}

/// `POST /api/v1/users/{username}/disconnect`.
pub(super) fn disconnect(_: &Hub, p: &[String], _: &Request) -> Result<ApiOp, ApiError> {
    Ok(ApiOp::Disconnect {
        user: username(&p[0])?,
        here: 0,
    })
}

/// `POST /api/v1/users/{username}/revoke`.
pub(super) fn revoke(_: &Hub, p: &[String], _: &Request) -> Result<ApiOp, ApiError> {
    Ok(ApiOp::Revoke {
        user: username(&p[0])?,
    })
}

/// The first job of a user operation, or its answer from memory.
pub(super) fn begin(hub: &mut Hub, id: ConnId, ka: bool, op: ApiOp) {
    let job = match &op {
        ApiOp::CreateUser { username, .. } => Job::UsernameTaken {
            username: username.clone(),
        },
        ApiOp::Token { username, .. } => Job::Credentials {
            username: username.clone(),
        },
        ApiOp::Presence { users } if hub.cluster.enabled => Job::Api(ApiQuery::Presence {
            users: users.clone(),
        }),
        ApiOp::Presence { users } => {
            let counts: Vec<(String, i64)> = users
                .iter()
                .map(|u| (u.clone(), hub.state.user_conns(u).len() as i64))
                .collect();
            let body = presence_body(users, &counts);
            return respond(hub, id, crate::http::json(200, &body, ka), ka);
        }
        ApiOp::Disconnect { user, .. } => {
            let here = revocation::disconnect(hub, user);
            if !hub.cluster.enabled {
                let body = disconnected(user, here);
                return respond(hub, id, crate::http::json(200, &body, ka), ka);
            }
            // Every other node closes theirs when it hears this.
            let mut p = Payloads::new();
            p.push(encode_disconnected(user), || {
                unreachable!("a disconnect note is small")
            });
            let job = Job::Notify {
                payloads: p.finish(),
            };
            let op = ApiOp::Disconnect {
                user: user.clone(),
                here,
            };
            return next(hub, id, ka, job, op);
        }
        ApiOp::Revoke { user } => Job::Revoke {
            username: user.clone(),
            // The application revokes whatever the user holds.
            token_gen: i64::MAX,
            new_hash: None,
        },
        _ => return reply_error(hub, id, unavailable("not a user operation"), ka),
    };
    next(hub, id, ka, job, op);
}

fn presence_body(users: &[String], counts: &[(String, i64)]) -> Value {
    let items: Vec<Value> = users
        .iter()
        .map(|u| {
            let n = counts.iter().find(|(c, _)| c == u).map_or(0, |(_, n)| *n);
            json!({ "username": u, "online": n > 0, "connections": n })
        })
        .collect();
    json!({ "users": items })
}

fn disconnected(user: &str, here: usize) -> Value {
    json!({ "username": user, "status": "DISCONNECTED", "closed_here": here })
}

/// A job of a user operation finished.
pub(super) fn advance(
    hub: &mut Hub,
    t: &Ticket,
    ka: bool,
    op: ApiOp,
    outcome: Outcome,
) -> Option<Outcome> {
    let id = t.conn;
    match (op, outcome) {
        (op @ ApiOp::CreateUser { .. }, Outcome::UsernameTaken { existing, .. }) => {
            name_checked(hub, id, ka, op, existing.is_some())
        }
        (
            ApiOp::CreateUser {
                username, nickname, ..
            },
            Outcome::Registered(r),
        ) => match r {
            Registration::Created => {
                let body = json!({ "username": username, "nickname": nickname });
                done(hub, id, 201, &body, ka);
            }
            _ => failed(hub, id, taken(&username), ka),
        },
        (
            ApiOp::Token { username, minutes },
            Outcome::Credentials {
                password,
                generation,
                ..
            },
        ) => {
            if password.is_none() {
                failed(hub, id, user_not_found(&username), ka);
                return None;
            }
            let issued = hub.svc.tokens.login_for(&username, generation, minutes);
            let body = json!({
                "access_token": issued.token,
                "token_type": "bearer",
                "expires_in_minutes": issued.expires_in_minutes,
            });
            done(hub, id, 200, &body, ka);
        }
        (ApiOp::Presence { users }, Outcome::Api(ApiOutcome::Presence(counts))) => {
            done(hub, id, 200, &presence_body(&users, &counts), ka);
        }
        (ApiOp::Disconnect { user, here }, Outcome::Done) => {
            done(hub, id, 200, &disconnected(&user, here), ka);
        }
        (
            ApiOp::Revoke { user },
            Outcome::Revoked {
                username,
                generation,
            },
        ) => match generation {
            Some(g) => {
                revocation::revoked(hub, &username, g, false);
                done(
                    hub,
                    id,
                    200,
                    &json!({ "username": user, "status": "REVOKED" }),
                    ka,
                );
            }
            None => failed(hub, id, user_not_found(&user), ka),
        },
        (op, o) => return not_mine(hub, id, ka, op, o),
    }
    None
}

fn taken(username: &str) -> ApiError {
    ApiError::new(
        409,
        "USERNAME_TAKEN",
        format!("username {username:?} is taken (in some case, or by a deleted account)"),
    )
}

/// Whether the name is free: then the password is hashed (a hashing slot
/// of the registration budget held), then the account inserted.
fn name_checked(hub: &mut Hub, id: ConnId, ka: bool, op: ApiOp, taken_already: bool) {
    let ApiOp::CreateUser {
        username,
        nickname,
        password,
        ..
    } = op
    else {
        return;
    };
    if taken_already {
        return failed(hub, id, taken(&username), ka);
    }
    let busy = || ApiError::new(503, "UNAVAILABLE", "server busy, try again");
    if hub.svc.budgets.registrations.start_hash().is_err() {
        return failed(hub, id, busy(), ka);
    }
    if !hub
        .svc
        .submit_hash(Ticket::new(id, None), HashJob::Hash { password })
    {
        hub.svc.budgets.registrations.hash_done();
        return failed(hub, id, busy(), ka);
    }
    let call = ApiCall {
        keep_alive: ka,
        step: ApiStep::Op(ApiOp::CreateUser {
            username,
            nickname,
            password: String::new(),
            hashing: true,
        }),
    };
    set_pending(hub, id, crate::conn::PendingHttp::Api(Box::new(call)));
}

/// The password was hashed: the account is inserted (checked again for the
/// name, under a lock, by the worker).
pub(super) fn hashed(hub: &mut Hub, id: ConnId, call: ApiCall, hash: String) {
    let ka = call.keep_alive;
    let ApiStep::Op(ApiOp::CreateUser {
        username,
        nickname,
        hashing,
        ..
    }) = call.step
    else {
        return;
    };
    if hashing {
        hub.svc.budgets.registrations.hash_done();
    }
    let job = Job::Register {
        username: username.clone(),
        password_hash: hash,
        nickname: nickname.clone(),
    };
    let op = ApiOp::CreateUser {
        username,
        nickname,
        password: String::new(),
        hashing: false,
    };
    start(
        hub,
        id,
        job,
        ApiCall {
            keep_alive: ka,
            step: ApiStep::Op(op),
        },
    );
}
