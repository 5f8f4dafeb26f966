//! `refresh_token` and `auth`: a long-lived connection gets a fresh token, and
//! (with `KLAV_WS_TOKEN_EXPIRY=close`) presents it before the old one expires.

use std::time::{Duration, Instant, SystemTime};

use super::ctx::Ctx;
use crate::conn::ConnId;
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `refresh_token {}`: a fresh token for the same user and the same login. It
/// does not extend the connection by itself (send `auth` with it).
///
/// Only while the connection's token is still valid (in either
/// `KLAV_WS_TOKEN_EXPIRY` mode: `ignore` keeps the socket open, not the
/// right to new tokens), and never past the login's `KLAV_SESSION_MAX_DAYS`:
/// a stolen token stops working at the latest then. Nor once the token was
/// revoked: the new token is of the same token generation.
pub fn refresh(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let Some((token_expires, session_start, token_gen)) = hub
        .conns
        .ws_mut(cx.id)
        .map(|ws| (ws.token_expires, ws.session_start, ws.token_gen))
    else {
        return Ok(());
    };
    if Instant::now() >= token_expires {
        return Err(RequestError::with(
            ErrorCode::BadToken,
            "the connection's token has expired: log in again",
        ));
    }
    if token_gen < known_generation(hub, &cx.user) {
        return Err(revoked());
    }
    let issued = hub
        .svc
        .tokens
        .reissue(&cx.user, session_start, token_gen)
        .map_err(|e| RequestError::with(ErrorCode::BadToken, e.to_string()))?;
    let ev = Event::new("token")
        .with("access_token", issued.token)
        .with("expires_in_minutes", issued.expires_in_minutes)
        .with("expires_at", crate::time::format_iso(issued.expires))
        .with("token_type", "bearer");
    hub.conns.reply(cx.id, &cx.req.req_id, ev);
    Ok(())
}

/// `auth {"token"}`.
pub struct Auth {
    token: String,
}

impl Auth {
    pub fn parse(req: &Request) -> Result<Auth, RequestError> {
        match req.str("token") {
            Ok(Some(t)) => Ok(Auth {
                token: t.to_string(),
            }),
            _ => Err(RequestError::with(
                ErrorCode::BadToken,
                "\"token\" is required",
            )),
        }
    }

    /// The connection takes the token's expiry and its login: a newer token
    /// from a new login lets `refresh_token` go on from that login.
    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let grant = match hub.svc.tokens.verify_claims(&self.token) {
            Ok(g) if g.username == cx.user => g,
            Ok(_) => {
                return Err(RequestError::with(
                    ErrorCode::BadToken,
                    "the token is for another user",
                ))
            }
            Err(e) => return Err(RequestError::with(ErrorCode::BadToken, e.to_string())),
        };
        if grant.generation < known_generation(hub, &cx.user) {
            return Err(revoked());
        }
        if let Some(ws) = hub.conns.ws_mut(cx.id) {
            ws.token_expires = on_loop_clock(grant.expires);
            ws.token_warned = false;
            ws.session_start = grant.auth_time;
            ws.token_gen = grant.generation;
        }
        // The deadline may have moved earlier: the loop files it again.
        hub.conns.again.push(cx.id);
        let ev = Event::new("auth_ack").with("expires_at", crate::time::format_iso(grant.expires));
        hub.conns.reply(cx.id, &cx.req.req_id, ev);
        Ok(())
    }
}

/// The user's token generation as this node knows it (exact while they have
/// a connection here: revocations are announced to every node).
fn known_generation(hub: &Hub, user: &str) -> i64 {
    hub.state.users.get(user).map_or(0, |u| u.generation)
}

fn revoked() -> RequestError {
    RequestError::with(ErrorCode::BadToken, "token revoked: log in again")
}

/// A token's `exp` as an [`Instant`], read once, so that the deadline the
/// timers compute from it stays put.
pub fn on_loop_clock(exp: SystemTime) -> Instant {
    Instant::now()
        + exp
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
}

/// The connection's token expires in `left`: tell it (once per token).
pub fn expiring(hub: &mut Hub, id: ConnId, left: Duration) {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    hub.conns
        .send_event(id, &Event::new("token_expiring").with("in_seconds", secs));
}
