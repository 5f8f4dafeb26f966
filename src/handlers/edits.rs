//! `edit` and `delete`: the author changes or removes their own `msg`/`dm`
//! entry; everyone who could see it is told once, and history keeps a tombstone.

use super::ctx::Ctx;
use super::messages::check_text;
use crate::conn::ConnId;
use crate::db::jobs::{ChatEntry, EditResult};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `edit {"id","text"}` or `delete {"id"}` (`text: None`).
pub struct Edit {
    id: i64,
    text: Option<String>,
}

impl Edit {
    pub fn parse_edit(req: &Request) -> Result<Edit, RequestError> {
        Ok(Edit {
            id: req.entry_id()?,
            text: Some(check_text(req)?),
        })
    }

    pub fn parse_delete(req: &Request) -> Result<Edit, RequestError> {
        Ok(Edit {
            id: req.entry_id()?,
            text: None,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if self.id <= 0 {
            return Err(ErrorCode::MessageNotFound.into());
        }
        // The writer checks visibility and authorship under a row lock, in order
        // with the messages (and other edits) of the same entry.
        let job = Job::Edit {
            username: cx.user.clone(),
            id: self.id,
            text: self.text,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

pub fn done(hub: &mut Hub, t: &Ticket, delete: bool, result: EditResult) {
    let e = match result {
        EditResult::NotFound => {
            return hub
                .conns
                .reply_error(t.conn, &t.req_id, ErrorCode::MessageNotFound.into())
        }
        EditResult::NotAuthor => {
            return hub
                .conns
                .reply_error(t.conn, &t.req_id, ErrorCode::NotAuthor.into())
        }
        EditResult::Done(e) => *e,
    };
    let ev = change_event(&e, delete);
    let audience = audience(hub, &e);
    let others: Vec<ConnId> = audience.into_iter().filter(|c| *c != t.conn).collect();
    hub.change_to(&others, &e.room, &ev);
    // The author's connection gets it as the reply (even if it has since left
    // the room, it asked).
    hub.conns.reply(t.conn, &t.req_id, ev);
    hub.history.replace(e);
}

fn change_event(e: &ChatEntry, delete: bool) -> Event {
    if delete {
        let ev = Event::new("message_deleted")
            .with("id", e.id)
            .with("room", e.room.as_str());
        // Deleted by a moderator: who did.
        match &e.deleted_by {
            Some(by) => ev.with("by", by.as_str()),
            None => ev,
        }
    } else {
        Event::new("message_edited")
            .with("id", e.id)
            .with("room", e.room.as_str())
            .with("text", e.text.as_str())
            .with(
                "edited_at",
                e.edited_at.map(crate::time::format_iso).unwrap_or_default(),
            )
    }
}

/// An edit too large to notify, read back: it goes out as if it had come on the
/// bus (`None`: the entry is gone).
pub fn read_back(hub: &mut Hub, e: Option<ChatEntry>) {
    if let Some(e) = e {
        changed(hub, e);
    }
}

/// Another node edited or deleted an entry: its audience here gets the change.
pub fn changed(hub: &mut Hub, e: ChatEntry) {
    let ev = change_event(&e, e.deleted);
    let audience = audience(hub, &e);
    hub.change_to(&audience, &e.room, &ev);
    hub.history.replace(e);
}

/// Every connection that could see the entry: a room message's members, a DM's
/// two parties; each once.
fn audience(hub: &Hub, e: &ChatEntry) -> Vec<ConnId> {
    if e.kind != "dm" {
        return hub.state.room_conns(&e.room);
    }
    let mut out = hub.state.user_conns(&e.from).to_vec();
    if let Some(to) = e.to.as_deref().filter(|to| *to != e.from) {
        out.extend_from_slice(hub.state.user_conns(to));
    }
    out
}
