//! `msg`: a room message, persisted (by the single writer, group-committed) and
//! then fanned out to every connection of every online member, framed once.

use super::ctx::Ctx;
use super::strangers;
use std::time::SystemTime;

use crate::db::jobs::{ChatEntry, Duplicate, NewMessage, Poster, ANNOUNCEMENT};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// Longest text accepted, in characters.
pub const MAX_TEXT: usize = 4000;

/// Checks a message text: present, and at most [`MAX_TEXT`] characters.
pub fn check_text(req: &Request) -> Result<String, RequestError> {
    let text = req.str("text")?.ok_or(ErrorCode::TextRequired)?;
    // Byte length bounds the character count from above: skip counting when short.
    if text.len() > MAX_TEXT && text.chars().count() > MAX_TEXT {
        return Err(RequestError::with(
            ErrorCode::TextTooLong,
            format!("text is limited to {MAX_TEXT} characters"),
        ));
    }
    Ok(text.to_string())
}

/// `msg {"room_id","text","client_id"?}`.
pub struct Msg {
    room: String,
    client_id: Option<String>,
}

impl Msg {
    pub fn parse(req: &Request) -> Result<Msg, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Msg {
            room: room.to_string(),
            client_id: req.client_id()?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        // Membership from memory: the message path does no database read.
        let Some(user) = hub.state.member(&cx.user, &self.room) else {
            return strangers::not_a_member(hub, cx, &self.room);
        };
        let from_nickname = user.nickname.clone();
        let text = check_text(cx.req)?;
        let job = Job::Msg(NewMessage {
            poster: Poster::Member,
            room: self.room,
            from: cx.user.clone(),
            from_nickname,
            text,
            client_id: self.client_id,
            token_gen: cx.token_gen(hub),
        });
        cx.submit(hub, job);
        Ok(())
    }
}

/// Committed: now every member's connections get it, in commit (= id) order;
/// the sending connection's copy carries its request's `req_id`.
pub fn stored(hub: &mut Hub, t: &Ticket, msg: NewMessage, id: i64, ts: SystemTime) {
    hub.svc.metrics.messages += 1;
    let announcement = msg.poster == Poster::Announcement;
    let mut ev = Event::new(if announcement { "system" } else { "message" })
        .with("id", id)
        .with("room", msg.room.as_str());
    ev = match announcement {
        true => ev.with("event", "announcement"),
        false => ev
            .with("from", msg.from.as_str())
            .with("from_nickname", msg.from_nickname.as_str()),
    };
    ev = ev.with("text", msg.text.as_str());
    if let Some(c) = &msg.client_id {
        ev = ev.with("client_id", c.as_str());
    }
    let echo = t.req_id.as_ref().map(|r| (t.conn, r));
    hub.entry_to_room(&msg.room, id, &ev, echo);
    if !hub.state.touched_rooms.contains(&msg.room) {
        hub.state.touched_rooms.insert(msg.room.clone());
    }
    hub.history.append(ChatEntry {
        id,
        ts,
        kind: if announcement { "system" } else { "msg" }.into(),
        room: msg.room,
        from: msg.from,
        from_nickname: msg.from_nickname,
        to: None,
        text: msg.text,
        client_id: msg.client_id,
        edited_at: None,
        deleted: false,
        deleted_by: None,
    });
}

/// A retried `msg`: its `client_id` was used already. Nothing was stored; the
/// sending connection alone gets the original entry again — unless the key
/// belongs to a DM, which this is no retry of (and which must not be shown).
pub fn duplicate(hub: &mut Hub, t: &Ticket, d: Box<Duplicate>) {
    if d.entry.kind != "msg" {
        return hub.conns.reply_error(t.conn, &t.req_id, client_id_taken());
    }
    hub.conns.reply(t.conn, &t.req_id, entry_event(&d.entry));
}

/// A `msg` or `room_dm` whose `client_id` its sender already used for an entry
/// of the other kind: not a retry, so it cannot be answered as one, and the
/// key (unique per sender across kinds) cannot store it either.
pub fn client_id_taken() -> RequestError {
    RequestError::with(
        ErrorCode::BadRequest,
        "client_id already used for another message",
    )
}

/// A stored entry as the live event that delivers it (`message`, `dm` or
/// `system`), with what has happened to it since (edited, deleted).
pub fn entry_event(e: &ChatEntry) -> Event {
    let kind = match e.kind.as_str() {
        "dm" => "dm",
        "system" => "system",
        _ => "message",
    };
    let mut ev = Event::new(kind)
        .with("id", e.id)
        .with("room", e.room.as_str());
    if kind != "system" {
        ev = ev
            .with("from", e.from.as_str())
            .with("from_nickname", e.from_nickname.as_str());
    } else if is_announcement(e) {
        ev = ev.with("event", "announcement");
    }
    if let Some(to) = &e.to {
        ev = ev.with("to", to.as_str());
    }
    ev = ev.with("text", e.text.as_str());
    if let Some(c) = &e.client_id {
        ev = ev.with("client_id", c.as_str());
    }
    if let Some(at) = e.edited_at.filter(|_| !e.deleted) {
        ev = ev.with("edited_at", crate::time::format_iso(at));
    }
    if e.deleted {
        ev = ev.with("deleted", true);
    }
    ev
}

/// A system entry the server API posted (see [`ANNOUNCEMENT`]): delivered to
/// the room's members like a message, unlike the system entries the server
/// writes itself, whose events say what happened.
pub fn is_announcement(e: &ChatEntry) -> bool {
    e.kind == "system" && e.from_nickname == ANNOUNCEMENT
}
