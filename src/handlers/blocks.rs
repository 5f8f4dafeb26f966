//! Blocks: `block`, `unblock`, `blocked_list`. While A blocks B, B's DMs
//! and follows to A are refused by the writer (in their own transactions),
//! B's follow of A ended with the block, and A's presence is never shown to
//! B: B's memory of who blocks them ([`crate::state::UserState::blocked_by`])
//! filters every presence event and list on the loop, with no read.

use std::time::Instant;

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::friends::unknown_names_limited;
use crate::db::jobs::{BlockStatus, UserRef};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// The `user` field both requests name.
fn user_field(req: &Request) -> Result<String, RequestError> {
    match req.str("user")? {
        Some(u) if !u.is_empty() => Ok(u.to_string()),
        _ => Err(RequestError::with(
            ErrorCode::BadRequest,
            "user is required",
        )),
    }
}

/// `block {"user"}`.
pub struct Block {
    user: String,
}

impl Block {
    pub fn parse(req: &Request) -> Result<Block, RequestError> {
        Ok(Block {
            user: user_field(req)?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if self.user == cx.user {
            hub.conns
                .reply(cx.id, &cx.req.req_id, block_ack(&self.user, "SELF"));
            return Ok(());
        }
        // Paid for before the lookup, as `friend_follow` does: refunded when
        // the name exists.
        let now = Instant::now();
        if !hub.svc.budgets.lookups.has(&cx.user, now) {
            return Err(unknown_names_limited(hub, &cx.user, now));
        }
        hub.svc.budgets.lookups.charge(&cx.user, 1.0, now);
        let job = Job::Block {
            from: cx.user.clone(),
            to: self.user,
            cap: hub.svc.config.max_blocks_per_user as i64,
        };
        if !cx.submit(hub, job) {
            hub.svc.budgets.lookups.charge(&cx.user, -1.0, now);
        }
        Ok(())
    }
}

fn block_ack(user: &str, status: &str) -> Event {
    Event::new("block_ack")
        .with("user", user)
        .with("status", status)
}

pub fn block_done(hub: &mut Hub, t: &Ticket, from: String, to: String, status: BlockStatus) {
    if status != BlockStatus::NotRegistered {
        hub.svc.budgets.lookups.charge(&from, -1.0, Instant::now());
    }
    let status = match status {
        BlockStatus::NotRegistered => "NOT_REGISTERED",
        BlockStatus::Full => {
            let cap = hub.svc.config.max_blocks_per_user;
            let err = RequestError::with(
                ErrorCode::NotAllowed,
                format!("you block {cap} users already; unblock someone first"),
            );
            return hub.conns.reply_error(t.conn, &t.req_id, err);
        }
        BlockStatus::Already => {
            hub.state.block_changed(&from, &to, true);
            "ALREADY"
        }
        BlockStatus::Blocked => {
            hub.state.block_changed(&from, &to, true);
            "BLOCKED"
        }
    };
    hub.conns.reply(t.conn, &t.req_id, block_ack(&to, status));
}

/// `unblock {"user"}`.
pub struct Unblock {
    user: String,
}

impl Unblock {
    pub fn parse(req: &Request) -> Result<Unblock, RequestError> {
        Ok(Unblock {
            user: user_field(req)?,
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let job = Job::Unblock {
            from: cx.user.clone(),
            to: self.user,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

pub fn unblock_done(hub: &mut Hub, t: &Ticket, from: String, to: String, removed: bool) {
    if removed {
        hub.state.block_changed(&from, &to, false);
    }
    let status = if removed { "UNBLOCKED" } else { "NOT_BLOCKED" };
    let ev = Event::new("unblock_ack")
        .with("user", to)
        .with("status", status);
    hub.conns.reply(t.conn, &t.req_id, ev);
}

/// `blocked_list`.
pub fn blocked_list(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let job = Job::BlockedList {
        username: cx.user.clone(),
    };
    cx.submit(hub, job);
    Ok(())
}

pub fn blocked_list_done(hub: &mut Hub, t: &Ticket, users: Vec<UserRef>) {
    let list: Vec<Value> = users
        .into_iter()
        .map(|u| json!({ "username": u.username, "nickname": u.nickname }))
        .collect();
    let ev = Event::new("blocked_list").with("blocked", list);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
