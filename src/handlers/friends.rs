//! One-way follows: `friend_follow`, `friend_unfollow`, `following_list`,
//! `followers_list`, and the `notify_followed` event.

use std::time::Instant;

use serde_json::{json, Value};

use super::ctx::Ctx;
use crate::db::jobs::{FollowStatus, UserRef};
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Event, Request, RequestError};

/// `friend_follow {"to"}`.
pub struct Follow {
    to: String,
}

impl Follow {
    pub fn parse(req: &Request) -> Result<Follow, RequestError> {
        let to = req.str("to")?.ok_or(ErrorCode::FollowToRequired)?;
        Ok(Follow { to: to.to_string() })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        if self.to == cx.user {
            let ev = Event::new("friend_follow_ack")
                .with("to", self.to)
                .with("status", "SELF");
            hub.conns.reply(cx.id, &cx.req.req_id, ev);
            return Ok(());
        }
        // A lookup that may find no account is paid for before it is made
        // (so concurrent ones cannot overdraw the budget); the token comes
        // back when the name exists.
        let now = Instant::now();
        if !hub.svc.budgets.lookups.has(&cx.user, now) {
            return Err(unknown_names_limited(hub, &cx.user, now));
        }
        hub.svc.budgets.lookups.charge(&cx.user, 1.0, now);
        let job = Job::Follow {
            from: cx.user.clone(),
            to: self.to,
        };
        if !cx.submit(hub, job) {
            hub.svc.budgets.lookups.charge(&cx.user, -1.0, now);
        }
        Ok(())
    }
}

/// `RATE_LIMITED` for a user out of unknown-name lookups.
pub fn unknown_names_limited(hub: &mut Hub, user: &str, now: Instant) -> RequestError {
    let wait = hub.svc.budgets.lookups.wait(user, now);
    RequestError::with(
        ErrorCode::RateLimited,
        format!(
            "too many lookups of unknown usernames; retry in {} s",
            wait.as_millis().div_ceil(1000).max(1)
        ),
    )
}

pub fn follow_done(hub: &mut Hub, t: &Ticket, from: String, to: String, status: FollowStatus) {
    if status != FollowStatus::NotRegistered {
        hub.svc.budgets.lookups.charge(&from, -1.0, Instant::now());
    }
    let status = match status {
        FollowStatus::NotRegistered => "NOT_REGISTERED",
        FollowStatus::Blocked => "BLOCKED",
        FollowStatus::Already => {
            hub.state.followed(&from, &to);
            "ALREADY"
        }
        FollowStatus::Followed => {
            hub.state.followed(&from, &to);
            let ev = Event::new("notify_followed").with("from", from.as_str());
            hub.to_user(&to, &ev);
            "FOLLOWED"
        }
    };
    let ev = Event::new("friend_follow_ack")
        .with("to", to)
        .with("status", status);
    hub.conns.reply(t.conn, &t.req_id, ev);
}

/// `friend_unfollow {"to"}`.
pub struct Unfollow {
    to: String,
}

impl Unfollow {
    pub fn parse(req: &Request) -> Result<Unfollow, RequestError> {
        let to = req.str("to")?.ok_or(ErrorCode::UnfollowToRequired)?;
        Ok(Unfollow { to: to.to_string() })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        let job = Job::Unfollow {
            from: cx.user.clone(),
            to: self.to,
        };
        cx.submit(hub, job);
        Ok(())
    }
}

pub fn unfollow_done(hub: &mut Hub, t: &Ticket, from: String, to: String, removed: bool) {
    if removed {
        hub.state.unfollowed(&from, &to);
    }
    let status = if removed {
        "UNFOLLOWED"
    } else {
        "NOT_FOLLOWING"
    };
    let ev = Event::new("friend_unfollow_ack")
        .with("to", to)
        .with("status", status);
    hub.conns.reply(t.conn, &t.req_id, ev);
}

pub fn following_list(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let job = Job::Following {
        username: cx.user.clone(),
    };
    cx.submit(hub, job);
    Ok(())
}

pub fn followers_list(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let job = Job::Followers {
        username: cx.user.clone(),
    };
    cx.submit(hub, job);
    Ok(())
}

/// `which` is `following` or `followers`: the event type and its list field.
pub fn list_done(hub: &mut Hub, t: &Ticket, which: &str, users: Vec<UserRef>) {
    let list: Vec<Value> = users
        .into_iter()
        .map(|u| json!({ "username": u.username, "nickname": u.nickname }))
        .collect();
    let kind = format!("{which}_list");
    let ev = Event::new(&kind).with(which, list);
    hub.conns.reply(t.conn, &t.req_id, ev);
}
