//! `msg`: a room message, persisted (by the single writer, group-committed) and
//! then fanned out to every connection of every online member, framed once.

use super::Ctx;
use std::time::SystemTime;

use crate::db::jobs::{ChatEntry, NewMessage};
use crate::db::Job;
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

/// `msg {"room_id","text"}`.
pub struct Msg {
    room: String,
}

impl Msg {
    pub fn parse(req: &Request) -> Result<Msg, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Msg {
            room: room.to_string(),
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        // Membership from memory: the message path does no database read.
        let Some(user) = hub.state.users.get(&cx.user) else {
            return Err(ErrorCode::NotAMember.into());
        };
        if !user.loaded || !user.rooms.contains(&self.room) {
            return Err(ErrorCode::NotAMember.into());
        }
        let from_nickname = user.nickname.clone();
        let text = check_text(cx.req)?;
        let job = Job::Msg(NewMessage {
            room: self.room,
            from: cx.user.clone(),
            from_nickname,
            text,
        });
        cx.submit(hub, job);
        Ok(())
    }
}

/// Committed: now every member's connections get it, in commit (= id) order.
pub fn stored(hub: &mut Hub, msg: NewMessage, id: i64, ts: SystemTime) {
    hub.metrics.messages += 1;
    let ev = Event::new("message")
        .with("id", id)
        .with("room", msg.room.as_str())
        .with("from", msg.from.as_str())
        .with("from_nickname", msg.from_nickname.as_str())
        .with("text", msg.text.as_str());
    hub.to_room(&msg.room, &ev);
    if !hub.state.touched_rooms.contains(&msg.room) {
        hub.state.touched_rooms.insert(msg.room.clone());
    }
    hub.history.append(ChatEntry {
        id,
        ts,
        kind: "msg".into(),
        room: msg.room,
        from: msg.from,
        from_nickname: msg.from_nickname,
        to: None,
        text: msg.text,
    });
}
