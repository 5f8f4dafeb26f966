//! Request handlers, one module per family, and the two entry points the loop
//! calls: [`on_ws_message`] for a WebSocket frame and [`on_completion`] for a
//! finished job.
//!
//! Each WebSocket request type is a struct that parses itself from the request
//! (`parse`) and applies itself to the hub (`apply`); replies to jobs arrive in
//! the same module's `*_done` functions.

pub mod dm;
pub mod edits;
pub mod friends;
pub mod history;
pub mod http;
pub mod members;
pub mod messages;
pub mod presence;
pub mod reads;
pub mod remote;
pub mod resume;
pub mod rooms;
pub mod session;
pub mod tokens;
pub mod typing;

use std::time::Instant;

use tungstenite::Message;

use crate::close::CloseReason;
use crate::conn::{request_cost, Admit, ConnId, Phase, BYTES_PER_TOKEN};
use crate::db::jobs::Outcome;
use crate::db::{Completion, DbError, Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Request, RequestError};
use crate::ticket::Hold;

/// A request as handlers see it: who sent it, on which connection, with what,
/// and how its job holds back the connection's later requests.
pub struct Ctx<'a> {
    pub id: ConnId,
    pub user: String,
    pub req: &'a Request,
    pub hold: Hold,
}

impl Ctx<'_> {
    /// Queues the request's database job; if the queue is full the client gets
    /// `UNAVAILABLE` at once (and this returns false). Until the job is done, the
    /// connection's later requests wait as the request's [`Hold`] says.
    pub fn submit(&self, hub: &mut Hub, job: Job) -> bool {
        let mut ticket = Ticket::new(self.id, self.req.req_id.clone());
        ticket.hold = self.hold;
        if hub.submit(ticket, job) {
            if let Some(ws) = hub.conns.ws_mut(self.id) {
                ws.seq.started(self.hold);
            }
            true
        } else {
            hub.conns.reply_error(
                self.id,
                &self.req.req_id,
                RequestError::with(ErrorCode::Unavailable, "database queue is full"),
            );
            false
        }
    }
}

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
fn job_finished(hub: &mut Hub, id: ConnId, hold: Hold) {
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
    RoomMembers(members::RoomMembers),
    Typing(typing::Typing),
    Read(reads::Read),
    Edit(edits::Edit),
    Resume(resume::Resume),
    RefreshToken,
    Auth(tokens::Auth),
}

impl Command {
    /// How this request's job holds back later requests of its connection.
    /// `msg` and `room_dm` (with or without `client_id`) may pipeline; `edit`,
    /// `delete`, `read` and `resume` must see every earlier write of the
    /// connection. `typing` starts like a message: after earlier membership
    /// changes (they are exclusive), but without waiting for messages still being
    /// written — it submits no job, so it holds nothing back, and a sender who
    /// types between messages would otherwise stall its own pipeline once a
    /// second. `refresh_token` and `auth`, answered from memory, are rare.
    pub fn hold(&self) -> Hold {
        match self {
            Command::Msg(_) | Command::RoomDm(_) | Command::Typing(_) => Hold::Stream,
            _ => Hold::Exclusive,
        }
    }

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
            "room_members" => Command::RoomMembers(members::RoomMembers::parse(req)?),
            "typing" => Command::Typing(typing::Typing::parse(req)?),
            "read" => Command::Read(reads::Read::parse(req)?),
            "edit" => Command::Edit(edits::Edit::parse_edit(req)?),
            "delete" => Command::Edit(edits::Edit::parse_delete(req)?),
            "resume" => Command::Resume(resume::Resume::parse(req)?),
            "refresh_token" => Command::RefreshToken,
            "auth" => Command::Auth(tokens::Auth::parse(req)?),
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
            Command::RoomMembers(c) => c.apply(hub, cx),
            Command::Typing(c) => c.apply(hub, cx),
            Command::Read(c) => c.apply(hub, cx),
            Command::Edit(c) => c.apply(hub, cx),
            Command::Resume(c) => c.apply(hub, cx),
            Command::RefreshToken => tokens::refresh(hub, cx),
            Command::Auth(c) => c.apply(hub, cx),
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
        Completion::Hash(ticket, outcome) => http::accounts::on_hash(hub, ticket, outcome),
        Completion::Chained(ticket, outcome, link) => {
            crate::handlers::remote::on_chained(hub, ticket, outcome, link)
        }
        Completion::Bus(events) => crate::handlers::remote::on_bus(hub, events),
        Completion::BusConnected => crate::handlers::remote::on_connected(hub),
        Completion::Db(ticket, result) => finish_job(hub, ticket, result),
    }
}

/// A finished database job: its outcome applied, and whatever waited for it
/// (the connection's next request, a session load) released.
pub fn finish_job(hub: &mut Hub, mut ticket: crate::db::Ticket, result: Result<Outcome, DbError>) {
    hub.svc
        .metrics
        .job_done(ticket.at.elapsed().as_secs_f64() * 1000.0);
    let (conn, hold) = (ticket.conn, ticket.hold);
    let writer = ticket.writes_for.take();
    match result {
        Err(e) => on_db_error(hub, ticket, e, writer.as_deref()),
        Ok(outcome) => on_outcome(hub, ticket, outcome),
    }
    // Memory is up to date with the job now; what waited for it may go.
    if hold != Hold::Nothing {
        job_finished(hub, conn, hold);
    }
    if let Some(user) = writer {
        for waiting in hub.state.write_done(&user) {
            session::load(hub, waiting, &user);
        }
    }
}

fn on_outcome(hub: &mut Hub, t: crate::db::Ticket, outcome: Outcome) {
    match outcome {
        Outcome::Healthy => http::accounts::health_done(hub, t.conn, Ok(())),
        Outcome::Registered(result) => http::accounts::register_done(hub, t.conn, result),
        Outcome::UsernameTaken { existing } => {
            http::accounts::username_checked(hub, t.conn, existing)
        }
        Outcome::WsTicketMinted { minted } => http::accounts::ws_ticket_done(hub, t.conn, minted),
        Outcome::WsTicket(ticket) => session::ticket_taken(hub, t.conn, ticket),
        Outcome::Credentials { username, password } => {
            http::accounts::credentials_done(hub, t.conn, username, password)
        }
        Outcome::Done | Outcome::Pruned(_) => {}
        Outcome::Session { username, session } => {
            if let Some(s) = &session {
                crate::handlers::remote::session_rooms(hub, &s.rooms, &s.last_entries);
            }
            session::opened(hub, t.conn, &username, session);
            let orphaned = hub.state.load_done(&username);
            dm::queue_parked(hub, orphaned);
        }
        Outcome::History { room, items } => history::done(hub, &t, room, items),
        Outcome::HistoryFill { room, limit, items } => hub.history.filled(&room, limit, items),
        Outcome::MyRooms { username, rooms } => rooms::my_rooms_done(hub, &t, &username, rooms),
        Outcome::Following(users) => friends::list_done(hub, &t, "following", users),
        Outcome::Followers(users) => friends::list_done(hub, &t, "followers", users),
        Outcome::Follow { from, to, status } => friends::follow_done(hub, &t, from, to, status),
        Outcome::Unfollow { from, to, removed } => {
            friends::unfollow_done(hub, &t, from, to, removed)
        }
        Outcome::RoomMembers {
            room,
            members,
            online,
        } => members::done(hub, &t, room, members, online),
        Outcome::Presence { user } => crate::handlers::remote::presence_written(hub, &user, true),
        Outcome::Heartbeat { rejoined } => crate::handlers::remote::heartbeat_done(hub, rejoined),
        Outcome::Entries {
            room,
            entries,
            queued,
            members,
            upto,
        } => crate::handlers::remote::entries_read(hub, room, entries, queued, members, upto),
        Outcome::FollowsOf {
            user,
            read,
            following,
        } => crate::handlers::remote::follows_read(hub, &user, read, &following),
        Outcome::CaughtUp(c) => crate::handlers::remote::caught_up(hub, *c),
        Outcome::Entry(e) => {
            if let Some(e) = e {
                edits::changed(hub, e);
            }
        }
        Outcome::OnlineFriends(users) => presence::online_friends_done(hub, &t, users),
        Outcome::PresenceOf { users, online } => {
            crate::handlers::remote::presence_read(hub, users, &online)
        }
        Outcome::Resume(replay) => resume::done(hub, &t, replay),
        Outcome::Edit { delete, result } => edits::done(hub, &t, delete, result),
        Outcome::Read {
            username,
            room,
            result,
        } => reads::done(hub, &t, &username, room, result),
        Outcome::MsgDuplicate(d) => messages::duplicate(hub, &t, d),
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
            let entry = logged.last().map(|e| e.id);
            logged.into_iter().for_each(|e| hub.history.append(e));
            rooms::join_done(hub, &t, username, nickname, result, entry)
        }
        Outcome::Leave {
            username,
            nickname,
            room,
            was_member,
            logged,
        } => {
            let entry = logged.last().map(|e| e.id);
            logged.into_iter().for_each(|e| hub.history.append(e));
            rooms::leave_done(hub, &t, username, nickname, room, was_member, entry)
        }
        Outcome::Msg { msg, id, ts } => messages::stored(hub, &t, msg, id, ts),
        Outcome::Dm { msg, to, result } => dm::stored(hub, &t, msg, to, result),
        Outcome::DmQueued { room, to } => dm::ack(hub, &t, &room, &to, "QUEUED"),
    }
}

/// A job failed: whoever waits for it learns that nothing was stored.
fn on_db_error(hub: &mut Hub, t: crate::db::Ticket, e: DbError, writer: Option<&str>) {
    hub.svc.metrics.db_errors += 1;
    if let DbError::Query(why) = &e {
        crate::log!(Error, "database error: {why}");
    }
    let Some(conn) = hub.conns.get(t.conn) else {
        if t.conn == ConnId::NONE {
            crate::log!(Warn, "background job failed: {e}");
            // A presence write or a heartbeat: tried again by the next tick.
            if let Some(user) = writer {
                crate::handlers::remote::presence_written(hub, user, false);
            }
            crate::handlers::remote::background_failed(hub);
        }
        return;
    };
    match &conn.phase {
        Phase::Http(_) => http::db_failed(hub, t.conn, &e),
        Phase::Upgrading { .. } => session::open_failed(hub, t.conn, &e),
        Phase::Ws(_) => {
            hub.conns.reply_error(
                t.conn,
                &t.req_id,
                RequestError::with(
                    ErrorCode::Unavailable,
                    "database unavailable; nothing was stored",
                ),
            );
            // A resume whose replay failed: what it held back goes out now.
            resume::abandon(hub, t.conn);
        }
        Phase::Closed => {}
    }
}
