//! The account endpoints: `POST /register`, `POST /login`, `POST /ws-ticket`
//! and `GET /health`, and what finishes them when a worker or a hashing thread
//! answers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use super::exchange::{
    field, finish, json_body, request_addr, respond, restore, retry_later, set_pending, start_job,
    take_pending, token_response, unauthorized, unhealthy,
};
use crate::auth::password::{check_stored_hash, constant_time_eq, is_hashed, HashJob, HashOutcome};
use crate::conn::{ConnId, PendingHttp};
use crate::db::jobs::Registration;
use crate::db::{DbError, Job, Ticket};
use crate::handlers::session::bearer_token;
use crate::http::{self, Request};
use crate::hub::Hub;
use crate::throttle::RegisterRefusal;
use crate::turn::Turn;

pub fn register(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
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
    if let Err(refusal) = hub.svc.budgets.registrations.admit(addr, Instant::now()) {
        return respond(hub, id, register_refused(refusal, ka), ka);
    }
    // A cheap read first: a taken name is answered without hashing anything.
    let job = Job::UsernameTaken {
        username: username.to_string(),
    };
    start_job(
        hub,
        id,
        job,
        PendingHttp::Register {
            username: username.to_string(),
            nickname,
            password: password.to_string(),
            addr,
            keep_alive: ka,
        },
        ka,
    );
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

pub fn login(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
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
        .svc
        .budgets
        .logins
        .retry_after(username, addr, Instant::now())
    {
        let resp = retry_later(429, "too many failed logins; try again later", wait, ka);
        return respond(hub, id, resp, ka);
    }
    let job = Job::Credentials {
        username: username.to_string(),
    };
    start_job(
        hub,
        id,
        job,
        PendingHttp::Login {
            username: username.to_string(),
            password: password.to_string(),
            addr,
            keep_alive: ka,
            generation: 0,
        },
        ka,
    );
}

/// `POST /ws-ticket` with `Authorization: Bearer <token>`: a one-time ticket
/// for `/ws?ticket=`, so that the token itself never goes into a URL. Valid
/// for `ws_ticket_ttl` on any node; the connection it opens is the token's
/// (same user, same expiry, same login).
pub fn ws_ticket(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    let token = bearer_token(&req).unwrap_or_default();
    let grant = match hub.svc.tokens.verify_claims(&token) {
        Ok(g) => g,
        Err(e) => return respond(hub, id, unauthorized(&e.to_string(), ka), ka),
    };
    let (ticket, hash) = crate::auth::ws_ticket::new_ticket();
    let job = Job::MintWsTicket {
        hash,
        grant,
        ttl: hub.svc.config.ws_ticket_ttl,
    };
    start_job(
        hub,
        id,
        job,
        PendingHttp::MintTicket {
            ticket,
            keep_alive: ka,
        },
        ka,
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
                        "expires_in_seconds": hub.svc.config.ws_ticket_ttl.as_secs(),
                    }),
                    keep_alive,
                )
            } else {
                unauthorized("user not registered, or token revoked", keep_alive)
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
                hub.svc.budgets.registrations.hash_done();
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
            Some(PendingHttp::Account(req)) => {
                super::account::new_password_hashed(hub, id, *req, hash)
            }
            Some(PendingHttp::Api(call)) => super::api::hashed(hub, id, *call, hash),
            other => {
                // The connection is gone (or moved on): the slot is free all the same.
                hub.svc.budgets.registrations.hash_done();
                restore(hub, id, other)
            }
        },
        HashOutcome::Verified(ok) => match take_pending(hub, id) {
            Some(PendingHttp::Login {
                username,
                addr,
                keep_alive,
                generation,
                ..
            }) => {
                let resp = if ok {
                    hub.svc.budgets.logins.succeeded(&username, addr);
                    token_response(hub, &username, generation, keep_alive)
                } else {
                    hub.svc
                        .budgets
                        .logins
                        .failed(&username, addr, Instant::now());
                    http::error(401, "invalid credentials", keep_alive)
                };
                finish(hub, id, resp, keep_alive);
            }
            Some(PendingHttp::Account(req)) => super::account::password_checked(hub, id, *req, ok),
            other => restore(hub, id, other),
        },
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
        Registration::Reserved(existing) => http::json(
            409,
            &json!({
                "detail": format!(
                    "username {username:?} is taken: the account {existing:?} was deleted \
                     and its name stays reserved"
                ),
            }),
            ka,
        ),
    }
}

/// Whether the name is taken, in any case: a taken name is answered now;
/// otherwise the password is hashed, then the account inserted (which checks
/// again, under a lock).
/// `reserved`: the existing account was deleted.
pub fn username_checked(hub: &mut Hub, id: ConnId, existing: Option<String>, reserved: bool) {
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
                let result = if reserved {
                    Registration::Reserved(existing)
                } else if existing == username {
                    Registration::Already
                } else {
                    Registration::CaseTaken(existing)
                };
                return finish(hub, id, registration_response(&username, result, ka), ka);
            }
            // Checked only for a name that is free: a client that registers an
            // account it already has (with the password it had before the
            // rule) still gets `ALREADY`.
            let min = hub.svc.config.min_password_len;
            if password.chars().count() < min {
                let detail = format!("password too short: use at least {min} characters");
                return finish(hub, id, http::error(400, &detail, ka), ka);
            }
            if let Err(refusal) = hub.svc.budgets.registrations.start_hash() {
                return finish(hub, id, register_refused(refusal, ka), ka);
            }
            if !hub
                .svc
                .submit_hash(Ticket::new(id, None), HashJob::Hash { password })
            {
                hub.svc.budgets.registrations.hash_done();
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

/// The stored password of `username` (and their token generation) arrived:
/// check the login, or the account change, against it.
pub fn credentials_done(
    hub: &mut Hub,
    id: ConnId,
    username: String,
    stored: Option<String>,
    generation: i64,
) {
    match take_pending(hub, id) {
        Some(PendingHttp::Login {
            password,
            addr,
            keep_alive,
            ..
        }) => {
            let login = Login {
                username,
                password,
                addr,
                generation,
            };
            check_login(hub, id, login, stored, keep_alive)
        }
        Some(PendingHttp::Account(req)) => {
            super::account::credentials_done(hub, id, *req, stored, generation)
        }
        other => restore(hub, id, other),
    }
}

/// A login whose stored password has been read.
struct Login {
    username: String,
    password: String,
    addr: IpAddr,
    generation: i64,
}

fn check_login(hub: &mut Hub, id: ConnId, login: Login, stored: Option<String>, ka: bool) {
    let Login {
        username,
        password,
        addr,
        generation,
    } = login;
    let now = Instant::now();
    let Some(stored) = stored else {
        hub.svc.budgets.logins.failed(&username, addr, now);
        return finish(hub, id, http::error(401, "not registered", ka), ka);
    };
    if is_hashed(&stored) {
        // A stored string whose parameters would make verifying it too costly (or
        // abort the process) is never verified: nobody can log in with it.
        if let Err(e) = check_stored_hash(&stored) {
            if hub.svc.budgets.logins.first_report(&username) {
                crate::log!(
                    Warn,
                    "user {username:?} cannot log in: their stored password hash is \
                     refused ({e})"
                );
            }
            hub.svc.budgets.logins.failed(&username, addr, now);
            return finish(hub, id, http::error(401, "invalid credentials", ka), ka);
        }
        let job = HashJob::Verify {
            password: password.clone(),
            phc: stored,
        };
        if hub.svc.submit_hash(Ticket::new(id, None), job) {
            set_pending(
                hub,
                id,
                PendingHttp::Login {
                    username,
                    password,
                    addr,
                    keep_alive: ka,
                    generation,
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
        hub.svc.submit_hash(
            Ticket::internal(),
            HashJob::Rehash {
                username: username.clone(),
                legacy: stored,
            },
        );
        hub.svc.budgets.logins.succeeded(&username, addr);
        let resp = token_response(hub, &username, generation, ka);
        finish(hub, id, resp, ka);
    } else {
        hub.svc.budgets.logins.failed(&username, addr, now);
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

/// `GET /health`: answered once the database has.
pub fn health(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    start_job(
        hub,
        id,
        Job::Health,
        PendingHttp::Health { keep_alive: ka },
        ka,
    );
}
