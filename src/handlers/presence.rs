//! Live presence of followed users: `get_online_friends`, the per-connection
//! subscription, and `presence_change` on a user's first open / last close.
//!
//! Everything here is answered from memory: who is online, with how many
//! connections, and which subscribed connections watch whom.

use serde_json::{json, Value};

use super::ctx::Ctx;
use crate::db::{Job, Ticket};
use crate::hub::Hub;
use crate::protocol::{Event, RequestError};

/// The users `user` follows who are online, sorted by name case-insensitively.
fn online_friends(hub: &Hub, user: &str) -> Event {
    let mut friends: Vec<(String, &str, &str, usize)> = hub
        .state
        .users
        .get(user)
        .map(|u| {
            u.following
                .iter()
                .filter(|f| !hub.state.hides(user, f))
                .filter_map(|f| {
                    let s = hub.state.users.get(f)?;
                    (!s.conns.is_empty()).then(|| {
                        (
                            s.nickname.to_lowercase(),
                            f.as_str(),
                            s.nickname.as_str(),
                            s.conns.len(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    friends.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    let users: Vec<Value> = friends
        .into_iter()
        .map(|(_, username, nickname, n)| friend_json(username, nickname, n))
        .collect();
    Event::new("online_friends").with("users", users)
}

pub fn get_online_friends(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    if hub.cluster.enabled {
        return ask_cluster(hub, cx);
    }
    let ev = online_friends(hub, &cx.user);
    hub.conns.reply(cx.id, &cx.req.req_id, ev);
    Ok(())
}

pub fn subscribe(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    hub.state.subscribe(&cx.user, cx.id);
    if hub.cluster.enabled {
        return ask_cluster(hub, cx);
    }
    let ev = online_friends(hub, &cx.user);
    hub.conns.reply(cx.id, &cx.req.req_id, ev);
    Ok(())
}

/// In a cluster, who is online (and with how many connections) is known to the
/// database, which counts every node's connections.
fn ask_cluster(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    let job = Job::OnlineFriends {
        username: cx.user.clone(),
    };
    cx.submit(hub, job);
    Ok(())
}

/// The answer only: what this node knows of the presence of the users it
/// watches comes from reads of their own (see `cluster::look_up_new_watches`),
/// which a snapshot older than a change already heard must not overwrite.
pub fn online_friends_done(hub: &mut Hub, t: &Ticket, users: Vec<(String, String, i64)>) {
    let viewer = hub.conns.ws_user(t.conn).unwrap_or_default();
    let mut users: Vec<_> = users
        .into_iter()
        .filter(|(u, _, _)| !hub.state.hides(viewer, u))
        .collect();
    users.sort_by(|a, b| {
        a.1.to_lowercase()
            .cmp(&b.1.to_lowercase())
            .then(a.0.cmp(&b.0))
    });
    let users: Vec<Value> = users
        .into_iter()
        .map(|(username, nickname, n)| friend_json(&username, &nickname, n as usize))
        .collect();
    hub.conns.reply(
        t.conn,
        &t.req_id,
        Event::new("online_friends").with("users", users),
    );
}

fn friend_json(username: &str, nickname: &str, connections: usize) -> Value {
    json!({
        "id": username,
        "username": username,
        "name": nickname,
        "nickname": nickname,
        "connections": connections,
    })
}

pub fn unsubscribe(hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
    hub.state.unsubscribe(&cx.user, cx.id);
    let ev = Event::new("presence_ack").with("status", "UNSUBSCRIBED");
    hub.conns.reply(cx.id, &cx.req.req_id, ev);
    Ok(())
}

/// `user` came online or went offline: one frame, every watching connection
/// (but those of users `user` blocks: a block ends the follow, this keeps a
/// stale watch from showing it meanwhile).
pub fn announce(hub: &mut Hub, user: &str, name: String, status: &str) {
    super::members::announce(hub, user, status == "online");
    let Some(watchers) = hub.state.watchers.get(user) else {
        return;
    };
    let targets: Vec<_> = watchers
        .iter()
        .copied()
        .filter(|c| {
            hub.conns
                .ws_user(*c)
                .is_none_or(|viewer| !hub.state.hides(viewer, user))
        })
        .collect();
    let ev = Event::new("presence_change")
        .with("scope", "friends")
        .with("user", user)
        .with("name", name)
        .with("status", status);
    let frame = ev.shared();
    hub.fan_out(&targets, &frame);
}
