//! A WebSocket frame from a client, from its bytes to its handler: charged to
//! the connection's request bucket, decoded, and started now or held until the
//! jobs it depends on are done (a connection's requests take effect in the
//! order it sent them).

use std::time::Instant;

use tungstenite::Message;

use super::command::Command;
use super::ctx::Ctx;
use super::resume;
use crate::close::CloseReason;
use crate::conn::{request_cost, Admit, ConnId, BYTES_PER_TOKEN};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Request, RequestError};
use crate::ticket::Hold;

/// A complete frame from a WebSocket client.
pub fn on_ws_message(hub: &mut Hub, id: ConnId, msg: Message) {
    let text = match msg {
        Message::Text(t) => Some(t),
        Message::Binary(_) => None,
        // Pings are answered by tungstenite (the pong is already queued), but
        // each one still costs a read, a parse and a reply: they pay from the
        // same bucket as requests and fall under the same flood rule, or a
        // client could keep the loop busy echoing pings forever.
        Message::Ping(p) | Message::Pong(p) => {
            control_frame(hub, id, p.len());
            return;
        }
        // A close is answered by tungstenite and ends the connection on the
        // next read. Any complete frame shows life.
        _ => {
            touch(hub, id);
            return;
        }
    };
    let len = text.as_ref().map_or(0, |t| t.len());
    let Some(admit) = admit(hub, id, request_cost(len)) else {
        return;
    };
    let Some(text) = text else {
        hub.conns.reply_error(
            id,
            &None,
            RequestError::with(ErrorCode::BadRequest, "binary frames are not supported"),
        );
        return;
    };
    hub.svc.metrics.requests += 1;
    if admit != Admit::Yes {
        hub.svc.metrics.rate_limited += 1;
        // A refusal must stay cheap: only a small frame is parsed for its req_id.
        let req_id = if len <= BYTES_PER_TOKEN {
            Request::decode(text.as_str()).ok().and_then(|r| r.req_id)
        } else {
            None
        };
        hub.conns
            .reply_error(id, &req_id, RequestError::new(ErrorCode::RateLimited));
        if admit == Admit::Flood {
            hub.conns.close(id, CloseReason::Flood);
        } else if let Some(ws) = hub.conns.ws_mut(id) {
            ws.throttled_until = ws.rate.refused(len);
        }
        return;
    }
    match Request::decode(text.as_str()) {
        Ok(req) => start_or_hold(hub, id, req),
        Err((e, req_id)) => hub.conns.reply_error(id, &req_id, e),
    }
}

/// Applies a request now if the jobs it may depend on are done; otherwise holds
/// it (and reading stops) until they are.
fn start_or_hold(hub: &mut Hub, id: ConnId, req: Request) {
    if req.kind == "__panic" && hub.svc.config.fault_injection {
        panic!("fault injection: __panic request");
    }
    let mut cmd = match Command::parse(&req) {
        Ok(c) => c,
        Err(e) => return hub.conns.reply_error(id, &req.req_id, e),
    };
    let hold = cmd.hold();
    let Some(ws) = hub.conns.ws_mut(id) else {
        return;
    };
    if !ws.seq.can_start(hold) {
        // Boxed only here: the common case, a request that starts at once,
        // allocates nothing for it.
        ws.seq.held = Some((hold, Box::new(req)));
        return;
    }
    let user = ws.username.clone();
    // The connection's first request starts: its opening hold ends. A `resume`
    // keeps holding what belongs to its rooms until its replay is sent.
    if let Some(opening) = ws.opening.take() {
        match &mut cmd {
            Command::Resume(r) => r.carry(opening.held),
            _ => {
                if !resume::release(hub, id, opening.held) {
                    return;
                }
            }
        }
    }
    let cx = Ctx {
        id,
        user,
        req: &req,
        hold,
    };
    if let Err(e) = cmd.apply(hub, &cx) {
        hub.conns.reply_error(id, &req.req_id, e);
    }
}

/// A job of this connection finished: start the held request if it may start
/// now, and read again once nothing is held.
pub fn job_finished(hub: &mut Hub, id: ConnId, hold: Hold) {
    let Some(ws) = hub.conns.ws_mut(id) else {
        return;
    };
    ws.seq.finished(hold);
    let Some((_, req)) = ws.seq.release() else {
        return;
    };
    start_or_hold(hub, id, *req);
    if hub.conns.ws_mut(id).is_some_and(|ws| ws.seq.held.is_none()) {
        hub.conns.again.push(id);
    }
}

/// A ping or an unsolicited pong of `len` payload bytes: charged like a
/// request; refused ones are not answered with an error (there is no request to
/// answer), only counted towards the throttle and the flood rule.
fn control_frame(hub: &mut Hub, id: ConnId, len: usize) {
    // The frame's header (up to 6 bytes from a client) is read too.
    let len = len + 6;
    let Some(admit) = admit(hub, id, request_cost(len)) else {
        return;
    };
    hub.svc.metrics.control_frames += 1;
    if admit == Admit::Yes {
        return;
    }
    hub.svc.metrics.rate_limited += 1;
    if admit == Admit::Flood {
        hub.conns.close(id, CloseReason::Flood);
    } else if let Some(ws) = hub.conns.ws_mut(id) {
        ws.throttled_until = ws.rate.refused(len);
    }
}

fn touch(hub: &mut Hub, id: ConnId) {
    if let Some(ws) = hub.conns.ws_mut(id) {
        ws.last_frame = Instant::now();
        ws.ping_sent = None;
    }
}

/// Marks the connection alive and takes `cost` tokens from its request bucket.
fn admit(hub: &mut Hub, id: ConnId, cost: f64) -> Option<Admit> {
    let now = Instant::now();
    let (rate, burst, flood) = (
        hub.svc.config.rate_per_sec,
        hub.svc.config.rate_burst,
        hub.svc.config.flood_secs,
    );
    let ws = hub.conns.ws_mut(id)?;
    ws.last_frame = now;
    ws.ping_sent = None;
    Some(ws.rate.admit(now, cost, rate, burst, flood))
}
