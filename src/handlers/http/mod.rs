//! HTTP: requests parsed off a connection's buffer within the turn's budget,
//! one route table, and what is not an account: `/metrics` and the web
//! client's files (served by `crate::web`). The account endpoints live in
//! [`accounts`], a signed-in user's account changes (password, log out
//! everywhere, deletion) in [`account`], the server API (`/api/v1/`) in
//! [`api`]; `/ws` in `handlers::session`.
//!
//! Requests on one connection are answered in order: while one waits for a
//! worker, the next (pipelined) request stays in the buffer.

pub mod account;
pub mod accounts;
pub mod api;
pub mod exchange;

pub use exchange::respond;
use exchange::{finish, request_addr, retry_later, set_pending, take_pending, unhealthy};

use std::time::Instant;

use serde_json::json;

use crate::conn::{
    Admit, ConnId, PendingHttp, Phase, RateLimit, IDLE_BUFFER_BYTES, OUTPUT_PAUSE_BYTES,
};
use crate::db::DbError;
use crate::handlers::session;
use crate::http::{self, Request};
use crate::hub::Hub;
use crate::turn::Turn;

/// Parses and routes the complete requests in the connection's buffer, one at
/// a time, until one waits for a worker or the responses not yet taken by the
/// client pass [`OUTPUT_PAUSE_BYTES`] (the rest waits until they drain: a client
/// that pipelines and never reads holds at most that much).
pub fn process(hub: &mut Hub, turn: &mut Turn, id: ConnId) {
    let (rate, burst) = (hub.svc.config.rate_per_sec, hub.svc.config.rate_burst);
    for _ in 0..REQUESTS_PER_TURN {
        if turn.http_spent() {
            // Everyone's HTTP share of this turn is spent, not this
            // connection's: it is read first in line next turn.
            hub.conns.again.push(id);
            return;
        }
        let Some(conn) = hub.conns.get_mut(id) else {
            return;
        };
        if conn.life.is_closing() {
            return;
        }
        if conn.out.len() > OUTPUT_PAUSE_BYTES {
            // Resumed by the flush that drains it.
            conn.life.pause();
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
                    hub.conns.respond(id, http::CONTINUE, true);
                    turn.http_bytes_left =
                        turn.http_bytes_left.saturating_sub(http::CONTINUE.len());
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
                    hub.svc.metrics.rate_limited += 1;
                    let resp = http::response(
                        429,
                        "application/json",
                        br#"{"detail":"too many requests on this connection"}"#,
                        false,
                        &[("Retry-After", "1".into())],
                    );
                    return hub.conns.refuse(id, &resp);
                }
                turn.http_requests_left -= 1;
                // What a turn costs is mostly copying responses: their bytes
                // count against the turn's share.
                let queued = out_len(hub, id);
                route(hub, turn, id, req);
                let added = out_len(hub, id).saturating_sub(queued);
                turn.http_bytes_left = turn.http_bytes_left.saturating_sub(added);
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
    hub.conns.busy.push(id);
}

/// Requests answered per connection per loop turn.
const REQUESTS_PER_TURN: usize = 32;

/// Bytes waiting in a connection's output.
fn out_len(hub: &Hub, id: ConnId) -> usize {
    hub.conns.get(id).map_or(0, |c| c.out.len())
}

/// What answers a request to one path.
type Handler = fn(&mut Hub, &mut Turn, ConnId, Request);

/// Every HTTP endpoint but the web client's files: path, method, handler. Both
/// routing and the `405`'s `Allow` read it.
const ROUTES: &[(&str, &str, Handler)] = &[
    ("/register", "POST", accounts::register),
    ("/login", "POST", accounts::login),
    ("/ws-ticket", "POST", accounts::ws_ticket),
    ("/password", "POST", account::password),
    ("/logout_all", "POST", account::logout_all),
    ("/account/delete", "POST", account::delete),
    ("/health", "GET", accounts::health),
    ("/metrics", "GET", metrics),
    ("/ws", "GET", upgrade),
];

fn route(hub: &mut Hub, turn: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    // With `KLAV_METRICS_ADDR`, `/metrics` lives on its own listener only, and
    // that listener serves nothing else.
    let metrics_only = hub.conns.get(id).is_some_and(|c| c.metrics_only);
    let metrics_elsewhere = hub.svc.config.metrics_addr.is_some() && !metrics_only;
    if (metrics_only && req.path != "/metrics") || (metrics_elsewhere && req.path == "/metrics") {
        return respond(hub, id, http::error(404, "not found", ka), ka);
    }
    if api::is_api(&req.path) {
        return api::handle(hub, turn, id, req);
    }
    let Some(&(_, method, handler)) = ROUTES.iter().find(|(path, _, _)| *path == req.path) else {
        if hub.svc.config.web && crate::web::is_asset(&req.path) {
            return respond(hub, id, crate::web::response(&req), ka);
        }
        return respond(hub, id, http::error(404, "not found", ka), ka);
    };
    if req.method != method {
        let body = json!({ "detail": "method not allowed" }).to_string();
        let resp = http::response(
            405,
            "application/json",
            body.as_bytes(),
            ka,
            &[("Allow", method.to_string())],
        );
        return respond(hub, id, resp, ka);
    }
    handler(hub, turn, id, req);
}

/// `GET /ws`: see `handlers::session`.
fn upgrade(hub: &mut Hub, _: &mut Turn, id: ConnId, req: Request) {
    session::upgrade(hub, id, req);
}

/// `GET /metrics`: on the public port, a per-address budget first; rendered
/// once per loop turn, however many ask in it.
fn metrics(hub: &mut Hub, turn: &mut Turn, id: ConnId, req: Request) {
    let ka = req.keep_alive;
    if !hub.conns.get(id).is_some_and(|c| c.metrics_only) {
        let Some(addr) = request_addr(hub, id, &req) else {
            return;
        };
        if let Err(wait) = hub.svc.budgets.public_metrics.take(addr, Instant::now()) {
            // Refused and closed: a pipeline of them would otherwise
            // cost a 429 each.
            hub.svc.metrics.rate_limited += 1;
            let detail = "too many /metrics requests from this address \
                          (serve it on KLAV_METRICS_ADDR to scrape without this limit)";
            return hub.conns.refuse(id, &retry_later(429, detail, wait, false));
        }
    }
    let text = turn
        .metrics_text
        .get_or_insert_with(|| crate::metrics::render(&snapshot(hub)));
    let resp = http::response(200, "text/plain; version=0.0.4", text.as_bytes(), ka, &[]);
    respond(hub, id, resp, ka);
}

/// What `/metrics` shows besides the loop's own counters, read off the hub.
fn snapshot(hub: &Hub) -> crate::metrics::Snapshot<'_> {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &hub.svc.db.stats;
    crate::metrics::Snapshot {
        counters: &hub.svc.metrics,
        open_conns: hub.conns.len(),
        queue_depth: hub.svc.db.queue_depth(),
        history: (
            hub.history.hits,
            hub.history.misses,
            hub.history.total(),
            hub.history.bytes(),
        ),
        login_throttle_keys: hub.svc.budgets.logins.keys(),
        register_budget_keys: hub.svc.budgets.registrations.keys(),
        register_hashes: hub.svc.budgets.registrations.hashes_started,
        node: &hub.cluster.node,
        clustered: hub.cluster.enabled,
        rooms_tracked: hub.cluster.tracked_rooms(),
        writer: [
            stats.batches.load(Relaxed),
            stats.jobs.load(Relaxed),
            stats.largest.load(Relaxed),
            stats.notifications.load(Relaxed),
        ],
        bus_dropped: crate::cluster::bus::Refused::ALL
            .iter()
            .map(|why| (why.label(), hub.cluster.bus_dropped.get(*why)))
            .collect(),
        webhooks: hub.svc.db.outbox.as_deref().map(|o| &o.stats),
    }
}

/// A job behind a pending HTTP request failed.
pub fn db_failed(hub: &mut Hub, id: ConnId, e: &DbError) {
    match take_pending(hub, id) {
        Some(PendingHttp::Health { keep_alive }) => {
            set_pending(hub, id, PendingHttp::Health { keep_alive });
            accounts::health_done(hub, id, Err(e));
        }
        Some(PendingHttp::Register { keep_alive, .. })
        | Some(PendingHttp::Login { keep_alive, .. })
        | Some(PendingHttp::MintTicket { keep_alive, .. }) => {
            finish(hub, id, unhealthy(&e.to_string(), keep_alive), keep_alive);
        }
        Some(PendingHttp::Account(req)) => {
            let ka = req.keep_alive;
            finish(hub, id, unhealthy(&e.to_string(), ka), ka);
        }
        Some(PendingHttp::TicketUpgrade { .. }) => session::ticket_failed(hub, id, e),
        Some(PendingHttp::Api(call)) => api::db_failed(hub, id, &call, &e.to_string()),
        None => {}
    }
}
