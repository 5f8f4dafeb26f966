//! `typing`: "someone is typing" to the other members of a room. Ephemeral:
//! answered from memory, never stored, never a database call.

use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::strangers;
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// At most one `typing` per user and room is forwarded per this interval,
/// counted from the last one forwarded; extras are dropped silently.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);
/// (user, room) pairs remembered at most. Entries older than the interval are
/// swept when the map grows; if it is full of fresh ones, new typers are
/// dropped silently rather than letting memory grow.
const MAX_TRACKED: usize = 200_000;
/// Below this size the map is not swept.
const SWEEP_FROM: usize = 4096;

/// `typing {"room_id"}`.
pub struct Typing {
    room: String,
}

impl Typing {
    pub fn parse(req: &Request) -> Result<Typing, RequestError> {
        let room = req.room_id()?.ok_or(ErrorCode::RoomIdRequired)?;
        Ok(Typing {
            room: room.to_string(),
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let Some(user) = hub.state.member(&cx.user, &self.room) else {
            return strangers::not_a_member(hub, cx, &self.room);
        };
        let nickname = user.nickname.clone();
        let now = Instant::now();
        let key = (cx.user.clone(), self.room);
        let typing = &mut hub.state.typing;
        if typing
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < TYPING_INTERVAL)
        {
            return Ok(());
        }
        if typing.len() >= SWEEP_FROM && !typing.contains_key(&key) {
            typing.retain(|_, at| now.duration_since(*at) < TYPING_INTERVAL);
            if typing.len() >= MAX_TRACKED {
                return Ok(());
            }
        }
        typing.insert(key.clone(), now);
        let (user, room) = key;
        // Other nodes forward it to their members of the room.
        hub.cluster.note_typing(&room, &user, &nickname);
        let ev = Event::new("typing")
            .with("room", room.as_str())
            .with("user", user.as_str())
            .with("user_nickname", nickname);
        let targets = hub.state.room_conns(&room);
        let own = hub.state.user_conns(&user).to_vec();
        hub.to_others(&targets, &own, &ev);
        Ok(())
    }
}
