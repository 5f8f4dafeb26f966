//! Request handlers, one module per family, and the two entry points the loop
//! calls: [`on_ws_message`] for a WebSocket frame and [`on_completion`] for a
//! finished job.
//!
//! Each WebSocket request type is a struct that parses itself from the request
//! (`parse`) and applies itself to the hub (`apply`); replies to jobs arrive in
//! the same module's `*_done` functions.

pub mod dm;
pub mod friends;
pub mod history;
pub mod http;
pub mod messages;
pub mod presence;
pub mod rooms;
pub mod session;

use std::time::Instant;

use tungstenite::Message;

use crate::conn::{ConnId, Phase};
use crate::db::jobs::Outcome;
use crate::db::{Completion, DbError};
use crate::protocol::{ErrorCode, Request, RequestError};
use crate::server::hub::{CloseReason, Hub};

/// A request as handlers see it: who sent it, on which connection, with what.
pub struct Ctx<'a> {
    pub id: ConnId,
    pub user: String,
    pub req: &'a Request,
}

/// A complete frame from a WebSocket client.
pub fn on_ws_message(hub: &mut Hub, id: ConnId, msg: Message) {
    let text = match msg {
        Message::Text(t) => Some(t),
        Message::Binary(_) => None,
        // Pings are answered by tungstenite; a close is answered by it too and
        // ends the connection on the next read. Any complete frame shows life.
        _ => {
            touch(hub, id);
            return;
        }
    };
    let Some((user, admitted, flood)) = admit(hub, id) else {
        return;
    };
    let Some(text) = text else {
        hub.reply_error(
            id,
            &None,
            RequestError::with(ErrorCode::BadRequest, "binary frames are not supported"),
        );
        return;
    };
    hub.metrics.requests += 1;
    let decoded = Request::decode(text.as_str());
    if !admitted {
        hub.metrics.rate_limited += 1;
        let req_id = decoded.ok().and_then(|r| r.req_id);
        hub.reply_error(id, &req_id, RequestError::new(ErrorCode::RateLimited));
        if flood {
            hub.close(id, CloseReason::Flood);
        }
        return;
    }
    let req = match decoded {
        Ok(r) => r,
        Err((e, req_id)) => {
            hub.reply_error(id, &req_id, e);
            return;
        }
    };
    let cx = Ctx {
        id,
        user,
        req: &req,
    };
    if let Err(e) = dispatch(hub, &cx) {
        hub.reply_error(id, &req.req_id, e);
    }
}

fn touch(hub: &mut Hub, id: ConnId) {
    if let Some(conn) = hub.conn_mut(id) {
        if let Phase::Ws(ws) = &mut conn.phase {
            ws.last_frame = Instant::now();
            ws.ping_sent = None;
        }
    }
}

/// Marks the connection alive and takes a token from its request bucket.
/// Returns the user, whether the request is admitted, and whether the client has
/// been over the limit long enough to be disconnected.
fn admit(hub: &mut Hub, id: ConnId) -> Option<(String, bool, bool)> {
    let now = Instant::now();
    let (rate, burst) = (hub.config.rate_per_sec, hub.config.rate_burst);
    let conn = hub.conn_mut(id)?;
    let Phase::Ws(ws) = &mut conn.phase else {
        return None;
    };
    ws.last_frame = now;
    ws.ping_sent = None;
    ws.tokens = (ws.tokens + now.duration_since(ws.tokens_at).as_secs_f64() * rate).min(burst);
    ws.tokens_at = now;
    if ws.tokens < 1.0 {
        ws.rate_strikes += 1;
        return Some((ws.username.clone(), false, ws.rate_strikes as f64 > burst));
    }
    ws.tokens -= 1.0;
    ws.rate_strikes = 0;
    Some((ws.username.clone(), true, false))
}

fn dispatch(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    if cx.req.kind == "__panic" && hub.config.fault_injection {
        panic!("fault injection: __panic request");
    }
    Command::parse(cx.req)?.apply(hub, cx)
}

/// A decoded WebSocket request: every type the protocol knows, each parsed from
/// the request's fields by its own module and applied to the hub there.
pub enum Command {
    CreateRoom(rooms::CreateRoom),
    Join(rooms::Join),
    Leave(rooms::Leave),
    MyRooms,
    Msg(messages::Msg),
    RoomDm(dm::RoomDm),
    History(history::History),
    Follow(friends::Follow),
    Unfollow(friends::Unfollow),
    FollowingList,
    FollowersList,
    GetOnlineFriends,
    PresenceSubscribe,
    PresenceUnsubscribe,
}

impl Command {
    /// Parses a request by its `type`; unknown types are `UNKNOWN_TYPE`.
    pub fn parse(req: &Request) -> Result<Command, RequestError> {
        Ok(match req.kind.as_str() {
            "create_room" => Command::CreateRoom(rooms::CreateRoom::parse(req)?),
            "join" => Command::Join(rooms::Join::parse(req)?),
            "leave" => Command::Leave(rooms::Leave::parse(req)?),
            "my_rooms" => Command::MyRooms,
            "msg" => Command::Msg(messages::Msg::parse(req)?),
            "room_dm" => Command::RoomDm(dm::RoomDm::parse(req)?),
            "history" => Command::History(history::History::parse(req)?),
            "friend_follow" => Command::Follow(friends::Follow::parse(req)?),
            "friend_unfollow" => Command::Unfollow(friends::Unfollow::parse(req)?),
            "following_list" => Command::FollowingList,
            "followers_list" => Command::FollowersList,
            "get_online_friends" => Command::GetOnlineFriends,
            "presence_friends_subscribe" => Command::PresenceSubscribe,
            "presence_friends_unsubscribe" => Command::PresenceUnsubscribe,
            other => {
                return Err(RequestError::with(
                    ErrorCode::UnknownType,
                    format!("unknown request type {other:?}"),
                ))
            }
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        match self {
            Command::CreateRoom(c) => c.apply(hub, cx),
            Command::Join(c) => c.apply(hub, cx),
            Command::Leave(c) => c.apply(hub, cx),
            Command::MyRooms => rooms::my_rooms(hub, cx),
            Command::Msg(c) => c.apply(hub, cx),
            Command::RoomDm(c) => c.apply(hub, cx),
            Command::History(c) => c.apply(hub, cx),
            Command::Follow(c) => c.apply(hub, cx),
            Command::Unfollow(c) => c.apply(hub, cx),
            Command::FollowingList => friends::following_list(hub, cx),
            Command::FollowersList => friends::followers_list(hub, cx),
            Command::GetOnlineFriends => presence::get_online_friends(hub, cx),
            Command::PresenceSubscribe => presence::subscribe(hub, cx),
            Command::PresenceUnsubscribe => presence::unsubscribe(hub, cx),
        }
    }
}

/// Decodes a text frame as the loop does, up to (not including) applying it:
/// what the fuzz target and its regression corpus exercise.
pub fn decode_frame(text: &str) -> Result<Command, RequestError> {
    let req = Request::decode(text).map_err(|(e, _)| e)?;
    let cmd = Command::parse(&req)?;
    // The text checks `msg`/`room_dm` make in `apply`, without a hub.
    if matches!(cmd, Command::Msg(_) | Command::RoomDm(_)) {
        messages::check_text(&req)?;
    }
    Ok(cmd)
}

/// A finished database or hashing job.
pub fn on_completion(hub: &mut Hub, c: Completion) {
    match c {
        Completion::Hash(ticket, outcome) => http::on_hash(hub, ticket, outcome),
        Completion::Db(ticket, result) => {
            hub.metrics
                .job_done(ticket.at.elapsed().as_secs_f64() * 1000.0);
            match result {
                Err(e) => on_db_error(hub, ticket, e),
                Ok(outcome) => on_outcome(hub, ticket, outcome),
            }
        }
    }
}

fn on_outcome(hub: &mut Hub, t: crate::db::Ticket, outcome: Outcome) {
    match outcome {
        Outcome::Healthy => http::health_done(hub, t.conn, Ok(())),
        Outcome::Registered { created } => http::register_done(hub, t.conn, created),
        Outcome::Credentials { username, password } => {
            http::credentials_done(hub, t.conn, username, password)
        }
        Outcome::Done | Outcome::Pruned(_) => {}
        Outcome::Session { username, session } => session::opened(hub, t.conn, &username, session),
        Outcome::History { room, items } => history::done(hub, &t, room, items),
        Outcome::HistoryFill { room, limit, items } => hub.history.filled(&room, limit, items),
        Outcome::MyRooms(rooms) => rooms::my_rooms_done(hub, &t, rooms),
        Outcome::Following(users) => friends::list_done(hub, &t, "following", users),
        Outcome::Followers(users) => friends::list_done(hub, &t, "followers", users),
        Outcome::Follow { from, to, status } => friends::follow_done(hub, &t, from, to, status),
        Outcome::Unfollow { from, to, removed } => {
            friends::unfollow_done(hub, &t, from, to, removed)
        }
        Outcome::RoomCreated { room, name, logged } => {
            logged.into_iter().for_each(|e| hub.history.append(e));
            rooms::created(hub, &t, room, name)
        }
        Outcome::Join {
            username,
            nickname,
            result,
            logged,
        } => {
            logged.into_iter().for_each(|e| hub.history.append(e));
            rooms::join_done(hub, &t, username, nickname, result)
        }
        Outcome::Leave {
            username,
            nickname,
            room,
            was_member,
            logged,
        } => {
            logged.into_iter().for_each(|e| hub.history.append(e));
            rooms::leave_done(hub, &t, username, nickname, room, was_member)
        }
        Outcome::Msg { msg, id, ts } => messages::stored(hub, msg, id, ts),
        Outcome::Dm { msg, to, result } => dm::stored(hub, &t, msg, to, result),
    }
}

/// A job failed: whoever waits for it learns that nothing was stored.
fn on_db_error(hub: &mut Hub, t: crate::db::Ticket, e: DbError) {
    hub.metrics.db_errors += 1;
    if let DbError::Query(why) = &e {
        crate::log!(Error, "database error: {why}");
    }
    let Some(conn) = hub.conn(t.conn) else {
        if t.conn == ConnId::NONE {
            crate::log!(Warn, "background job failed: {e}");
        }
        return;
    };
    match &conn.phase {
        Phase::Http(_) => http::db_failed(hub, t.conn, &e),
        Phase::Upgrading { .. } => session::open_failed(hub, t.conn, &e),
        Phase::Ws(_) => hub.reply_error(
            t.conn,
            &t.req_id,
            RequestError::with(
                ErrorCode::Unavailable,
                "database unavailable; nothing was stored",
            ),
        ),
        Phase::Closed => {}
    }
}
