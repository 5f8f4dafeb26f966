//! The server API's rooms: `POST /api/v1/rooms` (a `create_room`),
//! members added (a `join` by the application, [`JoinBy::Added`]) and
//! removed (a `kick` or `ban` by [`BY_APP`]), posts (a `msg` on a member's
//! behalf, [`Poster::App`], or an announcement, [`Poster::Announcement`]),
//! history and members. Each write is the WebSocket request's own job of the
//! ordered writer, checked there in its transaction; its outcome goes on to
//! the request's family, which tells the room's connections on this node
//! (the other nodes hear it from the writer's notes).

use serde_json::{json, Value};

use super::{
    as_request, body_object, done, failed, next, not_mine, opt_str, reply_error, room_not_found,
    unavailable, user_not_found, username, ApiError,
};
use crate::api_call::ApiOp;
use crate::conn::ConnId;
use crate::db::jobs::{
    AdminJob, AdminOutcome, ApiOutcome, ApiQuery, ChatEntry, JoinBy, JoinResult, NewMessage,
    Poster, Refusal, ANNOUNCEMENT, BY_APP,
};
use crate::db::{Job, Outcome, Ticket};
use crate::handlers::{messages, moderation, room_admin, rooms};
use crate::http::Request;
use crate::hub::Hub;
use crate::protocol::history_item;

/// `history`'s default and largest `limit`.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = crate::handlers::history::MAX_LIMIT;

/// `POST /api/v1/rooms` `{"name","private"?,"owner"?,"topic"?}`.
pub(super) fn create_room(_: &Hub, _: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let body = body_object(req)?;
    let name = opt_str(&body, "name")?.unwrap_or_default();
    let Ok(Some(name)) = crate::names::room_name(&name) else {
        return Err(ApiError::new(
            400,
            "BAD_REQUEST",
            "\"name\" must be a valid room name",
        ));
    };
    let owner = match opt_str(&body, "owner")? {
        Some(o) => Some(username(&o)?),
        None => None,
    };
    let r = as_request(body);
    let private = room_admin::private_of(&r).map_err(|e| ApiError::request(400, e))?;
    let topic = room_admin::topic_of(&r).map_err(|e| ApiError::request(400, e))?;
    Ok(ApiOp::CreateRoom {
        name,
        private: private.unwrap_or(false),
        topic,
        owner,
    })
}

/// `PUT /api/v1/rooms/{room_id}/members/{username}`.
pub(super) fn add_member(_: &Hub, p: &[String], _: &Request) -> Result<ApiOp, ApiError> {
    Ok(ApiOp::AddMember {
        room: p[0].clone(),
        user: username(&p[1])?,
    })
}

/// `DELETE /api/v1/rooms/{room_id}/members/{username}` (`?ban=true` bans).
pub(super) fn remove_member(_: &Hub, p: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let ban = match req.query_param("ban").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::new(
                400,
                "BAD_REQUEST",
                "\"ban\" must be true or false",
            ))
        }
    };
    Ok(ApiOp::RemoveMember {
        room: p[0].clone(),
        user: username(&p[1])?,
        ban,
    })
}

/// `GET /api/v1/rooms/{room_id}/members`.
pub(super) fn members(_: &Hub, p: &[String], _: &Request) -> Result<ApiOp, ApiError> {
    Ok(ApiOp::Members { room: p[0].clone() })
}

/// `POST /api/v1/rooms/{room_id}/messages` `{"from"?,"text","client_id"?}`:
/// the text and key checked as for `msg`.
pub(super) fn post(_: &Hub, p: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let body = body_object(req)?;
    let from = match opt_str(&body, "from")? {
        Some(f) => Some(username(&f)?),
        None => None,
    };
    let r = as_request(body);
    let text = messages::check_text(&r).map_err(|e| ApiError::request(400, e))?;
    let client_id = r.client_id().map_err(|e| ApiError::request(400, e))?;
    Ok(ApiOp::Post {
        room: p[0].clone(),
        from,
        text,
        client_id,
    })
}

/// `GET /api/v1/rooms/{room_id}/history?limit=&before_id=&after_id=`.
pub(super) fn history(_: &Hub, p: &[String], req: &Request) -> Result<ApiOp, ApiError> {
    let int = |name: &str| -> Result<Option<i64>, ApiError> {
        match req.query_param(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::new(
                    400,
                    "BAD_REQUEST",
                    format!("\"{name}\" must be a whole number"),
                )
            }),
        }
    };
    let limit = int("limit")?.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    Ok(ApiOp::History {
        room: p[0].clone(),
        limit,
        before_id: int("before_id")?,
        after_id: int("after_id")?,
    })
}

/// The first job of a room operation.
pub(super) fn begin(hub: &mut Hub, id: ConnId, ka: bool, op: ApiOp) {
    let job = match &op {
        ApiOp::CreateRoom { owner: Some(o), .. } => user(o),
        ApiOp::CreateRoom { owner: None, .. } => create_job(&op, None),
        ApiOp::AddMember { user: u, .. } => user(u),
        ApiOp::RemoveMember { room, user, ban } => Job::Admin(AdminJob::Remove {
            by: BY_APP.to_string(),
            by_nickname: BY_APP.to_string(),
            room: room.clone(),
            user: user.clone(),
            reason: None,
            ban: *ban,
        }),
        ApiOp::Post { room, .. } => Job::Api(ApiQuery::Room { room: room.clone() }),
        ApiOp::History {
            room,
            limit,
            before_id,
            after_id,
        } => Job::Api(ApiQuery::History {
            room: room.clone(),
            limit: *limit,
            before_id: *before_id,
            after_id: *after_id,
        }),
        ApiOp::Members { room } => Job::Api(ApiQuery::Members {
            room: room.clone(),
            cluster: hub.cluster.enabled,
        }),
        _ => return reply_error(hub, id, unavailable("not a room operation"), ka),
    };
    next(hub, id, ka, job, op);
}

fn user(name: &str) -> Job {
    Job::Api(ApiQuery::User {
        username: name.to_string(),
    })
}

/// The room `op` creates, owned by `owner` (username, nickname) or by nobody.
fn create_job(op: &ApiOp, owner: Option<(String, String)>) -> Job {
    let ApiOp::CreateRoom {
        name,
        private,
        topic,
        ..
    } = op
    else {
        unreachable!("only a room creation creates a room")
    };
    let (creator, creator_nickname) = owner.unwrap_or((String::new(), BY_APP.to_string()));
    Job::CreateRoom {
        creator,
        creator_nickname,
        name: name.clone(),
        private: *private,
        topic: topic.clone(),
    }
}

/// A job of a room operation finished: the next job, or the answer (after
/// the outcome's family has told the room).
pub(super) fn advance(
    hub: &mut Hub,
    t: &Ticket,
    ka: bool,
    op: ApiOp,
    outcome: Outcome,
) -> Option<Outcome> {
    let id = t.conn;
    match (op, outcome) {
        (
            op @ (ApiOp::CreateRoom { .. } | ApiOp::AddMember { .. } | ApiOp::Post { .. }),
            Outcome::Api(ApiOutcome::User(found)),
        ) => match found {
            Some(u) => user_found(hub, id, ka, op, u.username, u.nickname),
            None => {
                let name = match &op {
                    ApiOp::CreateRoom { owner, .. } => owner.clone().unwrap_or_default(),
                    ApiOp::AddMember { user, .. } => user.clone(),
                    ApiOp::Post { from, .. } => from.clone().unwrap_or_default(),
                    _ => String::new(),
                };
                failed(hub, id, user_not_found(&name), ka);
            }
        },
        (op @ ApiOp::CreateRoom { .. }, o @ Outcome::RoomCreated { .. }) => {
            room_created(hub, t, ka, op, o)
        }
        (
            ApiOp::AddMember { room, user },
            Outcome::Join {
                username,
                nickname,
                result,
                logged,
            },
        ) => {
            let answer = joined(&room, &user, &result);
            rooms::join_done(hub, t, username, nickname, result, logged);
            match answer {
                Ok(body) => done(hub, id, 200, &body, ka),
                Err(e) => failed(hub, id, e, ka),
            }
        }
        (ApiOp::RemoveMember { .. }, Outcome::Admin(a @ AdminOutcome::Removed { .. })) => {
            let answer = removed(&a);
            moderation::done(hub, t, a);
            match answer {
                Ok(body) => done(hub, id, 200, &body, ka),
                Err(e) => failed(hub, id, e, ka),
            }
        }
        (op @ ApiOp::Post { .. }, Outcome::Api(ApiOutcome::Room(found))) => {
            room_found(hub, id, ka, op, found)
        }
        (ApiOp::Post { .. }, Outcome::Msg { msg, id: entry, ts }) => {
            let item = history_item(&stored_entry(&msg, entry, ts));
            messages::stored(hub, t, msg, entry, ts);
            done(hub, id, 201, &item, ka);
        }
        (ApiOp::Post { from, .. }, Outcome::MsgDuplicate(d)) => {
            // A retry of the same post gets the entry it stored; a key used
            // for another kind of entry is no retry of this one.
            let kind = if from.is_some() { "msg" } else { "system" };
            match d.entry.kind == kind {
                true => done(hub, id, 200, &history_item(&d.entry), ka),
                false => failed(hub, id, client_id_taken(), ka),
            }
        }
        (ApiOp::Post { room, from, .. }, Outcome::PosterNotMember) => {
            let who = from.unwrap_or_default();
            let d = format!("{who:?} is not a member of room {room:?}");
            failed(hub, id, ApiError::new(403, "NOT_A_MEMBER", d), ka);
        }
        (ApiOp::History { room, .. }, Outcome::Api(ApiOutcome::History(found))) => match found {
            Some(items) => {
                let items: Vec<Value> = items.iter().map(history_item).collect();
                done(hub, id, 200, &json!({ "room": room, "items": items }), ka);
            }
            None => failed(hub, id, room_not_found(&room), ka),
        },
        (ApiOp::Members { room }, Outcome::Api(ApiOutcome::Members(found))) => match found {
            Some(m) => {
                let body = members_body(hub, &room, m);
                done(hub, id, 200, &body, ka);
            }
            None => failed(hub, id, room_not_found(&room), ka),
        },
        (op, o) => return not_mine(hub, id, ka, op, o),
    }
    None
}

/// The user an operation names was found: its write.
fn user_found(hub: &mut Hub, id: ConnId, ka: bool, op: ApiOp, user: String, nickname: String) {
    let job = match &op {
        ApiOp::CreateRoom { .. } => create_job(&op, Some((user, nickname))),
        ApiOp::AddMember { room, .. } => Job::Join {
            username: user,
            nickname,
            by: JoinBy::Added(room.clone()),
            max_rooms: hub.svc.config.max_rooms_per_user as i64,
        },
        ApiOp::Post {
            room,
            text,
            client_id,
            ..
        } => Job::Msg(NewMessage {
            room: room.clone(),
            from: user,
            from_nickname: nickname,
            text: text.clone(),
            client_id: client_id.clone(),
            poster: Poster::App,
            // Checked by the writer's membership test instead.
            token_gen: i64::MAX,
        }),
        _ => return failed(hub, id, unavailable("no user to find"), ka),
    };
    next(hub, id, ka, job, op);
}

/// A post's room exists (or not): an announcement is stored; a post on a
/// user's behalf finds the user next.
fn room_found(hub: &mut Hub, id: ConnId, ka: bool, op: ApiOp, found: bool) {
    let ApiOp::Post {
        room,
        from,
        text,
        client_id,
    } = &op
    else {
        return;
    };
    if !found {
        return failed(hub, id, room_not_found(room), ka);
    }
    let job = match from {
        Some(f) => user(f),
        None => Job::Msg(NewMessage {
            room: room.clone(),
            from: BY_APP.to_string(),
            from_nickname: ANNOUNCEMENT.to_string(),
            text: text.clone(),
            client_id: client_id.clone(),
            poster: Poster::Announcement,
            token_gen: i64::MAX,
        }),
    };
    next(hub, id, ka, job, op);
}

fn room_created(hub: &mut Hub, t: &Ticket, ka: bool, op: ApiOp, o: Outcome) {
    let (
        ApiOp::CreateRoom { topic, owner, .. },
        Outcome::RoomCreated {
            room,
            name,
            private,
            ..
        },
    ) = (op, &o)
    else {
        return;
    };
    let body = json!({
        "room_id": room,
        "name": name,
        "private": private,
        "topic": topic,
        "owner": owner,
    });
    rooms::created(hub, t, o);
    done(hub, t.conn, 201, &body, ka);
}

/// The answer to a member added.
fn joined(room: &str, user: &str, r: &JoinResult) -> Result<Value, ApiError> {
    match r {
        JoinResult::NotFound => Err(room_not_found(room)),
        JoinResult::Banned => Err(ApiError::new(
            403,
            "BANNED",
            format!("{user:?} is banned from this room"),
        )),
        JoinResult::TooManyRooms => Err(ApiError::new(
            409,
            "TOO_MANY_ROOMS",
            format!("{user:?} holds as many memberships and invitations as allowed"),
        )),
        JoinResult::Already { room } => {
            Ok(json!({ "room": room, "username": user, "status": "ALREADY" }))
        }
        JoinResult::Joined { room, role } => Ok(json!({
            "room": room, "username": user, "status": "JOINED", "role": role.as_str(),
        })),
    }
}

/// The answer to a member removed.
fn removed(a: &AdminOutcome) -> Result<Value, ApiError> {
    let AdminOutcome::Removed {
        room, user, result, ..
    } = a
    else {
        return Err(unavailable("not a removal"));
    };
    match result {
        Ok(status) => Ok(json!({ "room": room, "username": user, "status": status.as_str() })),
        Err(Refusal::UserNotFound) => Err(user_not_found(user)),
        Err(Refusal::NotAllowed) => Err(ApiError::new(
            403,
            "NOT_ALLOWED",
            "the room's owner cannot be removed",
        )),
        Err(_) => Err(room_not_found(room)),
    }
}

fn client_id_taken() -> ApiError {
    ApiError::new(
        409,
        "CLIENT_ID_TAKEN",
        "client_id already used for another entry",
    )
}

/// The entry a post stored, as history shows it.
fn stored_entry(msg: &NewMessage, id: i64, ts: std::time::SystemTime) -> ChatEntry {
    ChatEntry {
        id,
        ts,
        kind: if msg.poster == Poster::Announcement {
            "system"
        } else {
            "msg"
        }
        .into(),
        room: msg.room.clone(),
        from: msg.from.clone(),
        from_nickname: msg.from_nickname.clone(),
        to: None,
        text: msg.text.clone(),
        client_id: msg.client_id.clone(),
        edited_at: None,
        deleted: false,
        deleted_by: None,
    }
}

/// A room's members, each with their role and whether they are online
/// anywhere (a node alone knows from memory).
fn members_body(hub: &Hub, room: &str, m: crate::db::jobs::ApiMembers) -> Value {
    let items: Vec<Value> = m
        .members
        .iter()
        .map(|(u, role)| {
            let online = match &m.online {
                Some(on) => on.contains(&u.username),
                None => !hub.state.user_conns(&u.username).is_empty(),
            };
            json!({
                "username": u.username,
                "nickname": u.nickname,
                "role": role.map(|r| r.as_str()),
                "online": online,
            })
        })
        .collect();
    json!({ "room": room, "members": items })
}
