//! A WebSocket session's life: the authenticated upgrade (by token or by a
//! one-time ticket), opening (offline DMs, presence online), and closing
//! (presence offline).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::dm;
use super::presence;
use super::remote;
use super::resume;
use super::tokens;
use crate::auth::jwt::{TokenError, Verified};
use crate::client_addr::{budget_key, client_addr};
use crate::close::CloseReason;
use crate::conn::{
    ConnId, OfflinePiece, OpeningHold, PendingHttp, Phase, RateLimit, WsState, OUTPUT_PAUSE_BYTES,
};
use crate::db::jobs::{OfflineDm, SessionData, TicketUse};
use crate::db::{DbError, Job, Ticket};
use crate::http::{self, Request};
use crate::hub::Hub;
use crate::protocol::Event;
use crate::state::Held;
use crate::ws;

/// `GET /ws`: validates the upgrade and the token on the loop (an HMAC is cheap),
/// then asks the database whether the user exists and loads their session. The
/// 101 goes out only once that answer is in.
///
/// The credential, first match wins: `Authorization: Bearer`, `?ticket=` (from
/// `POST /ws-ticket`: taken from the database first, which says whose it is),
/// `?token=` (what clients before tickets send).
pub fn upgrade(hub: &mut Hub, id: ConnId, req: Request) {
    let refuse = |hub: &mut Hub, status: u16, detail: &str| {
        respond(hub, id, http::error(status, detail, false), false);
    };
    let is_upgrade = req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && req.header_has_token("connection", "upgrade");
    let Some(key) = req.header("sec-websocket-key").filter(|_| is_upgrade) else {
        return refuse(hub, 400, "expected a WebSocket upgrade request");
    };
    if req.header("sec-websocket-version") != Some("13") {
        let resp = http::response(
            426,
            "application/json",
            br#"{"detail":"unsupported WebSocket version"}"#,
            false,
            &[("Sec-WebSocket-Version", "13".into())],
        );
        return respond(hub, id, resp, false);
    }
    if !hub.svc.config.allowed_origins.is_empty() {
        if let Some(origin) = req.header("origin") {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            if !hub.svc.config.allowed_origins.contains(&origin) {
                return refuse(hub, 403, "origin not allowed");
            }
        }
    }
    let peer = match hub.conns.get(id) {
        Some(c) => c.peer,
        None => return,
    };
    let addr = budget_key(client_addr(peer, &req, &hub.svc.config.trusted_proxies));
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ticket = bearer_token(&req)
        .is_none()
        .then(|| req.query_param("ticket"))
        .flatten();
    if let Some(ticket) = ticket {
        let Some(hash) = crate::auth::ws_ticket::ticket_hash(&ticket) else {
            return refuse(hub, 403, "invalid ticket");
        };
        if !hub.submit(Ticket::new(id, None), Job::TakeWsTicket { hash }) {
            return refuse(hub, 503, "Service unhealthy: database queue is full");
        }
        if let Some(conn) = hub.conns.get_mut(id) {
            if let Phase::Http(st) = &mut conn.phase {
                st.pending = Some(PendingHttp::TicketUpgrade { accept_key, addr });
            }
        }
        return;
    }
    let token = bearer_token(&req).or_else(|| req.query_param("token"));
    match hub.svc.tokens.verify_claims(token.as_deref().unwrap_or("")) {
        Ok(grant) => open_as(hub, id, grant, accept_key, addr),
        Err(e) => refuse(hub, 403, &e.to_string()),
    }
}

/// The ticket of an upgrade was taken from the database: the upgrade goes on
/// as if the token that minted it had been presented, or is refused (403).
pub fn ticket_taken(hub: &mut Hub, id: ConnId, ticket: TicketUse) {
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    let Phase::Http(st) = &mut conn.phase else {
        return;
    };
    let Some(PendingHttp::TicketUpgrade { accept_key, addr }) = st.pending.take() else {
        return;
    };
    if conn.life.is_closing() {
        // The client went away meanwhile; the ticket is spent all the same.
        return hub.conns.close(id, CloseReason::Peer);
    }
    let refuse = |hub: &mut Hub, detail: &str| {
        respond(hub, id, http::error(403, detail, false), false);
    };
    match ticket {
        TicketUse::Unknown => refuse(hub, "unknown or already used ticket"),
        TicketUse::Expired => refuse(hub, "ticket expired"),
        // As the token itself would be now.
        TicketUse::Valid(grant) if grant.expires <= SystemTime::now() => {
            refuse(hub, &TokenError::Expired.to_string())
        }
        TicketUse::Valid(grant) => open_as(hub, id, grant, accept_key, addr),
    }
}

/// Taking the ticket failed: 503 (the ticket may still be good).
pub fn ticket_failed(hub: &mut Hub, id: ConnId, e: &DbError) {
    respond(
        hub,
        id,
        http::error(503, &format!("Service unhealthy: {e}"), false),
        false,
    );
}

/// An upgrade whose credential checked out: the connection budgets, then the
/// session load.
fn open_as(hub: &mut Hub, id: ConnId, grant: Verified, accept_key: String, addr: IpAddr) {
    let Verified {
        username,
        expires: token_expires,
        auth_time: session_start,
        generation: token_gen,
    } = grant;
    // A user loaded here has their token generation in memory: a revoked
    // token costs no database read.
    if hub
        .state
        .users
        .get(&username)
        .is_some_and(|u| u.loaded && token_gen < u.generation)
    {
        return respond(hub, id, http::error(403, TOKEN_REVOKED, false), false);
    }
    // Budgets, checked before any work is done for the connection.
    let user_conns = hub
        .state
        .users
        .get(&username)
        .map_or(0, |u| u.conns.len() + u.opening as usize);
    if user_conns >= hub.svc.config.max_conns_per_user {
        return too_many(hub, id, "too many connections for this user");
    }
    if hub.state.addr_conns(addr) >= hub.svc.config.max_conns_per_addr {
        return too_many(hub, id, "too many connections from this address");
    }
    let at = Instant::now();
    if !hub.svc.budgets.ws_opens.admit(&username, at) {
        let wait = hub.svc.budgets.ws_opens.wait(&username, at);
        return too_many_for(hub, id, "too many connections opened by this user", wait);
    }
    hub.state.addr_conn_opened(addr);
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    conn.counted_addr = Some(addr);
    let leftover = match &mut conn.phase {
        Phase::Http(st) => st.buf.take(),
        _ => Vec::new(),
    };
    conn.phase = Phase::Upgrading {
        username: username.clone(),
        accept_key,
        leftover,
        token_expires,
        session_start,
        token_gen,
    };
    let now = hub.state.begin_open(&username, id);
    // In a cluster the user's presence is written before their session is
    // read (the load waits for the write), so a DM committed meanwhile either
    // sees them connected or is in the queue the load reads.
    remote::presence_changed(hub, &username);
    if now {
        match hub.state.users.get_mut(&username) {
            Some(u) if u.writes > 0 => u.deferred_loads.push(id),
            _ => load(hub, id, &username),
        }
    }
}

/// The 403's `detail` for an upgrade whose token was revoked.
const TOKEN_REVOKED: &str = "token revoked";

/// 429 for an upgrade over a connection budget; the client may retry later.
fn too_many(hub: &mut Hub, id: ConnId, detail: &str) {
    too_many_for(hub, id, detail, std::time::Duration::from_secs(10));
}

/// 429 with `Retry-After: wait` (whole seconds, rounded up).
fn too_many_for(hub: &mut Hub, id: ConnId, detail: &str, wait: std::time::Duration) {
    hub.svc.metrics.upgrades_refused += 1;
    let body = serde_json::json!({ "detail": detail }).to_string();
    let secs = wait.as_millis().div_ceil(1000).max(1);
    let resp = http::response(
        429,
        "application/json",
        body.as_bytes(),
        false,
        &[("Retry-After", secs.to_string())],
    );
    hub.conns.respond(id, &resp, false);
}

/// Submits the session load of an upgrade (now, or once the user's writes that
/// it must see are done).
pub fn load(hub: &mut Hub, id: ConnId, username: &str) {
    if hub.conns.get(id).is_none() {
        return;
    }
    let job = Job::OpenSession {
        username: username.to_string(),
        claim: hub.cluster.claim(),
    };
    if hub.submit(Ticket::new(id, None), job) {
        hub.state.load_submitted(username);
    } else {
        open_failed(
            hub,
            id,
            &DbError::Unavailable("database queue is full".into()),
        );
    }
}

fn respond(hub: &mut Hub, id: ConnId, bytes: Vec<u8>, keep_alive: bool) {
    hub.conns.respond(id, &bytes, keep_alive);
}

/// `Authorization: Bearer <token>`, the scheme compared case-insensitively.
pub fn bearer_token(req: &Request) -> Option<String> {
    let value = req.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A session load answered: the rooms it saw are tracked from there (in a
/// cluster, what was passed over since is read back), the connection opens,
/// and DMs that waited for the load go where they belong.
pub fn loaded(hub: &mut Hub, t: &Ticket, username: &str, session: Option<SessionData>) {
    if let Some(s) = &session {
        remote::session_rooms(hub, &s.rooms, &s.last_entries);
    }
    opened(hub, t.conn, username, session);
    let orphaned = hub.state.load_done(username);
    dm::queue_parked(hub, orphaned);
}

/// The session loaded: the user exists (101, register the connection, flush the
/// offline queue, announce presence) or no longer does (403).
fn opened(hub: &mut Hub, id: ConnId, username: &str, session: Option<SessionData>) {
    let Some(conn) = hub.conns.get_mut(id) else {
        // Closed while loading; its `opening` count was released on close.
        return;
    };
    let Phase::Upgrading { token_gen, .. } = conn.phase else {
        return;
    };
    let revoked = session
        .as_ref()
        .is_some_and(|s| revoke_known(hub, username, s.generation) > token_gen);
    let admitted = match revoked {
        true => hub.state.finish_open(username, None),
        false => hub.state.finish_open(username, session.as_ref()),
    };
    if !admitted {
        let conn = hub.conns.get_mut(id).expect("checked above");
        conn.phase = Phase::Closed;
        let detail = match revoked {
            true => TOKEN_REVOKED,
            false => "user not registered",
        };
        respond(hub, id, http::error(403, detail, false), false);
        // Its upgrade counted towards the user's presence.
        return remote::presence_changed(hub, username);
    }
    let burst = hub.svc.config.rate_burst;
    let conn = hub.conns.get_mut(id).expect("checked above");
    let Phase::Upgrading {
        accept_key,
        leftover,
        token_expires,
        session_start,
        token_gen,
        ..
    } = std::mem::replace(&mut conn.phase, Phase::Closed)
    else {
        unreachable!("checked above")
    };
    conn.out.push(&ws::switching_protocols(&accept_key));
    conn.out.protect();
    let now = Instant::now();
    conn.phase = Phase::Ws(Box::new(WsState {
        ctx: ws::server_context(leftover),
        username: username.to_string(),
        rate: RateLimit::new(burst, now),
        last_frame: now,
        ping_sent: None,
        offline_ack: None,
        offline_pending: VecDeque::new(),
        offline_dropped: 0,
        seq: Default::default(),
        unfinished: 0,
        unfinished_since: None,
        token_expires: tokens::on_loop_clock(token_expires),
        token_warned: false,
        session_start,
        token_gen,
        first_live: HashMap::new(),
        throttled_until: None,
        opening: Some(OpeningHold {
            until: now + resume::OPENING_HOLD,
            held: Held::default(),
        }),
    }));
    hub.conns.dirty.push(id.slot);
    hub.svc.metrics.ws_opened += 1;
    hub.svc.metrics.ws_open += 1;
    let first = hub.state.add_conn(username, id);
    if first {
        hub.svc.metrics.users_online += 1;
    }

    // Queued DMs, oldest first, in pieces as the socket takes them (each piece
    // deleted once written), then how many were dropped from a full queue.
    // What another connection of the user already took is not sent twice.
    if let Some(session) = session {
        let user = hub.state.users.get_mut(username).expect("opened");
        let claimed = &mut user.offline_claimed;
        let offline: VecDeque<OfflineDm> = session
            .offline
            .into_iter()
            .filter(|dm| claimed.insert(dm.id))
            .collect();
        let dropped = match session.dropped > 0 && !user.offline_dropped_claimed {
            true => {
                user.offline_dropped_claimed = true;
                session.dropped
            }
            false => 0,
        };
        if let Some(ws) = hub.conns.ws_mut(id) {
            ws.offline_pending = offline;
            ws.offline_dropped = dropped;
        }
        send_offline_piece(hub, id);
    }
    dm::deliver_parked(hub, username);
    if first && !hub.cluster.enabled {
        let name = hub.state.nickname_of(username);
        presence::announce(hub, username, name, "online");
    }
    // Frames may already be waiting (sent right after the upgrade request).
    hub.conns.again.push(id);
}

/// The user's token generation as a session load read it, kept in memory if
/// newer than what was known; returns the newest known.
fn revoke_known(hub: &mut Hub, username: &str, loaded: i64) -> i64 {
    match hub.state.users.get_mut(username) {
        Some(u) => {
            u.generation = u.generation.max(loaded);
            u.generation
        }
        None => loaded,
    }
}

/// The session could not be loaded: 503, nothing was opened.
pub fn open_failed(hub: &mut Hub, id: ConnId, e: &DbError) {
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    if let Phase::Upgrading { username, .. } = std::mem::replace(&mut conn.phase, Phase::Closed) {
        let orphaned = hub.state.cancel_open(&username, id);
        dm::queue_parked(hub, orphaned);
        remote::presence_changed(hub, &username);
    }
    respond(
        hub,
        id,
        http::error(503, &format!("Service unhealthy: {e}"), false),
        false,
    );
}

/// Queues the next offline DMs, up to [`OUTPUT_PAUSE_BYTES`] of them, unless a
/// piece is still being written: a full queue of long DMs never makes the
/// connection a slow consumer. After the last of them: `offline_dm_dropped`.
fn send_offline_piece(hub: &mut Hub, id: ConnId) {
    let mut ids = Vec::new();
    let mut dropped = 0;
    loop {
        let Some(conn) = hub.conns.get_mut(id) else {
            return;
        };
        let full = conn.out.len() >= OUTPUT_PAUSE_BYTES;
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        if ws.offline_ack.is_some() || (full && !ids.is_empty()) {
            break;
        }
        let Some(dm) = ws.offline_pending.pop_front() else {
            dropped = std::mem::take(&mut ws.offline_dropped);
            if dropped > 0 {
                let ev = Event::new("offline_dm_dropped").with("count", dropped);
                hub.conns.send_event(id, &ev);
            }
            break;
        };
        ids.push(dm.id);
        let ev = Event::new("offline_dm")
            .with("room", dm.room)
            .with("from", dm.from)
            .with("from_nickname", dm.from_nickname)
            .with("text", dm.text)
            .with("at", crate::time::format_iso(dm.at));
        hub.conns.send_event(id, &ev);
    }
    if ids.is_empty() && dropped == 0 {
        return;
    }
    if let Some(conn) = hub.conns.get_mut(id) {
        let mark = conn.out.mark();
        if let Phase::Ws(ws) = &mut conn.phase {
            ws.offline_ack = Some(OfflinePiece { mark, ids, dropped });
        }
    }
}

/// After a flush: once a piece of offline DMs is written to the socket, delete
/// it and queue the next.
pub fn on_flushed(hub: &mut Hub, id: ConnId) {
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    let written = conn.out.total_written;
    let Phase::Ws(ws) = &mut conn.phase else {
        return;
    };
    if ws
        .offline_ack
        .as_ref()
        .is_some_and(|piece| written >= piece.mark)
    {
        let OfflinePiece { ids, dropped, .. } = ws.offline_ack.take().expect("checked");
        let username = ws.username.clone();
        // If this fails they are delivered again on the next connect, which is
        // better than losing them.
        let job = Job::DeleteOfflineDms {
            username,
            ids,
            dropped,
        };
        hub.submit(Ticket::internal(), job);
        send_offline_piece(hub, id);
    }
}

/// The connection is closing: release its user accounting exactly once.
pub fn on_closed(hub: &mut Hub, id: ConnId) {
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    if let Some(addr) = conn.counted_addr.take() {
        hub.state.addr_conn_closed(addr);
    }
    let Some(conn) = hub.conns.get_mut(id) else {
        return;
    };
    match std::mem::replace(&mut conn.phase, Phase::Closed) {
        Phase::Upgrading { username, .. } => {
            let orphaned = hub.state.cancel_open(&username, id);
            dm::queue_parked(hub, orphaned);
            remote::presence_changed(hub, &username);
        }
        Phase::Ws(ws) => {
            // What was held back for it (a resume's buffer here, its opening
            // hold in `ws`) goes with it.
            hub.state.end_resume(id);
            // Not all written: the next connection gets them again.
            let unsent: Vec<i64> = ws
                .offline_pending
                .iter()
                .map(|dm| dm.id)
                .chain(
                    ws.offline_ack
                        .iter()
                        .flat_map(|piece| piece.ids.iter().copied()),
                )
                .collect();
            let untold =
                ws.offline_dropped > 0 || ws.offline_ack.as_ref().is_some_and(|p| p.dropped > 0);
            if let Some(user) = hub.state.users.get_mut(&ws.username) {
                for i in &unsent {
                    user.offline_claimed.remove(i);
                }
                if untold {
                    user.offline_dropped_claimed = false;
                }
            }
            if !unsent.is_empty() || untold {
                // Another node may hand them to a connection of this user.
                let job = Job::ReleaseOfflineClaims {
                    username: ws.username.clone(),
                    ids: unsent,
                    dropped: untold,
                    claim: hub.cluster.claim(),
                };
                hub.submit(Ticket::internal(), job);
            }
            let name = hub.state.nickname_of(&ws.username);
            hub.svc.metrics.ws_open -= 1;
            if hub.state.remove_conn(&ws.username, id) {
                hub.svc.metrics.users_online -= 1;
                if !hub.cluster.enabled {
                    presence::announce(hub, &ws.username, name, "offline");
                }
            }
            remote::presence_changed(hub, &ws.username);
        }
        Phase::Http(st) => {
            // Keep an HTTP connection's phase: it may still flush a response.
            if let Some(conn) = hub.conns.get_mut(id) {
                conn.phase = Phase::Http(st);
            }
        }
        Phase::Closed => {}
    }
}
