//! The loop's side of a cluster: other nodes' events handed to the cluster to
//! decide (`crate::cluster`), what needs no deciding delivered, other nodes'
//! entries delivered to this node's connections in their turn, and the jobs
//! the cluster asks for submitted. (`completion` runs the rest of the
//! cluster's [`Work`]: it finishes jobs.)

use std::time::Instant;

use super::messages;
use super::moderation;
use super::room_admin;

use crate::cluster::bus::{BusEvent, MemberOp};
use crate::cluster::{RemoteEntry, Submit, Work};
use crate::db::jobs::ChatEntry;
use crate::db::Ticket;
use crate::hub::Hub;
use crate::protocol::Event;
use crate::state::{ParkedDm, Reach};

/// Another node's entry, in its turn: to this node's connections.
pub fn deliver(hub: &mut Hub, r: RemoteEntry) {
    let RemoteEntry { entry, op, queued } = r;
    let room = entry.room.clone();
    let id = entry.id;
    if let Some(op) = op.as_ref().filter(|o| !o.joined) {
        // A kick or ban (its removal was heard just before it).
        if let Some(r) = hub.state.removals.remove(&id) {
            let reason = r.reason.as_deref();
            let ev =
                moderation::removal_event(&room, &op.user, &op.nickname, r.banned, &r.by, reason);
            moderation::removed(hub, &room, &op.user, id, ev);
            hub.history.append(entry);
            return;
        }
    }
    match (&op, entry.kind.as_str()) {
        (Some(op), _) => {
            // A leave applies at once. A join is granted by the database only:
            // one that matters here was read back with the room's members (see
            // `on_bus`), who are made members right after it is delivered.
            if op.joined {
                // Whoever watches the room's members here follows the joiner.
                hub.state.member_joined(&room, &op.user);
            } else {
                hub.state.left(&op.user, &room);
            }
            let ev = Event::new("system")
                .with("room", room.as_str())
                .with("event", if op.joined { "joined" } else { "left" })
                .with("user", op.user.as_str())
                .with("user_nickname", op.nickname.as_str())
                .with("id", id);
            hub.entry_to_room(&room, id, &ev, None);
            if op.joined && !hub.state.is_member(&op.user, &room) {
                // The joiner's own connections here hear it, as the members do.
                hub.entry_to_user(&op.user, &room, id, &ev);
            }
        }
        (None, "dm") => {
            if !queued {
                deliver_remote_dm(hub, &entry);
            }
        }
        (None, "system") if messages::is_announcement(&entry) => {
            hub.svc.metrics.messages_remote += 1;
            let ev = messages::entry_event(&entry);
            hub.entry_to_room(&room, id, &ev, None);
        }
        (None, "system") => {
            // A room created: nobody is in it yet.
        }
        (None, _) => {
            hub.svc.metrics.messages_remote += 1;
            let ev = messages::entry_event(&entry);
            hub.entry_to_room(&room, id, &ev, None);
        }
    }
    hub.history.append(entry);
}

fn deliver_remote_dm(hub: &mut Hub, e: &ChatEntry) {
    let Some(to) = e.to.clone() else { return };
    match hub.state.reach(&to) {
        Reach::Online => {
            let ev = messages::entry_event(e);
            hub.entry_to_user(&to, &e.room, e.id, &ev);
        }
        Reach::Loading => {
            // Handed to the connection when it opens; nobody here waits for an
            // answer (the sender's node already said DELIVERED).
            let parked = ParkedDm {
                ticket: Ticket::internal(),
                msg: crate::db::jobs::NewMessage {
                    poster: crate::db::jobs::Poster::Member,
                    room: e.room.clone(),
                    from: e.from.clone(),
                    from_nickname: e.from_nickname.clone(),
                    text: e.text.clone(),
                    client_id: e.client_id.clone(),
                    // Stored already: never checked again.
                    token_gen: 0,
                },
                to: to.clone(),
                id: e.id,
                ts: e.ts,
            };
            if let Some(user) = hub.state.users.get_mut(&to) {
                user.parked_dms.push(parked);
            }
        }
        // The sender's node saw a connection of theirs elsewhere.
        Reach::Offline => {}
    }
}

/// One event from another node (or this node's presence decision): what the
/// cluster makes of it, for `completion` to run; what needs no deciding is
/// delivered at once.
pub fn heard(hub: &mut Hub, ev: BusEvent, now: Instant) -> Vec<Work> {
    match ev {
        BusEvent::Entry {
            entry,
            prev,
            op,
            queued,
        } => {
            let user_here = user_here(hub, op.as_ref());
            let grants = op
                .as_ref()
                .is_some_and(|o| grants_here(hub, o, &entry.room));
            let remote = RemoteEntry { entry, op, queued };
            hub.cluster
                .heard_entry(remote, prev, user_here, grants, now)
        }
        BusEvent::EntryRef { room, prev, id, op } => {
            let user_here = user_here(hub, op.as_ref());
            hub.cluster
                .heard_reference(room, prev, id, op, user_here, now)
        }
        BusEvent::Change { entry } => hub.cluster.heard_change(entry),
        BusEvent::ChangeRef { room, id } => hub.cluster.heard_change_reference(&room, id),
        BusEvent::Presence {
            user,
            nickname,
            online,
        } => hub
            .cluster
            .presence_heard(&mut hub.state, &user, nickname, online),
        BusEvent::ReadMarker { user, room, id } => {
            let conns = hub.state.user_conns(&user).to_vec();
            if !conns.is_empty() {
                let ev = Event::new("read_marker").with("room", room).with("id", id);
                hub.fan_out(&conns, &ev.shared());
            }
            Vec::new()
        }
        BusEvent::Typing {
            room,
            user,
            nickname,
        } => {
            let targets = hub.state.room_conns(&room);
            if !targets.is_empty() {
                let own = hub.state.user_conns(&user).to_vec();
                let ev = Event::new("typing")
                    .with("room", room.as_str())
                    .with("user", user.as_str())
                    .with("user_nickname", nickname);
                hub.to_others(&targets, &own, &ev);
            }
            Vec::new()
        }
        BusEvent::Block {
            blocker,
            blocked,
            on,
        } => {
            hub.state.block_changed(&blocker, &blocked, on);
            Vec::new()
        }
        BusEvent::Role {
            room,
            user,
            role,
            by,
            told,
        } => {
            room_admin::heard_role(hub, &room, &user, &role, by.as_deref(), told);
            Vec::new()
        }
        BusEvent::Removal(r) => {
            hub.state.note_removal(r);
            Vec::new()
        }
        BusEvent::Invited { user, invite } => {
            super::invites::invited(hub, &user, &invite);
            Vec::new()
        }
        BusEvent::RoomUpdated(u) => {
            room_admin::heard_update(hub, &u);
            Vec::new()
        }
        BusEvent::Revoked { user, generation } => {
            super::revocation::revoked(hub, &user, generation, false);
            Vec::new()
        }
        BusEvent::Disconnected { user } => {
            super::revocation::disconnect(hub, &user);
            Vec::new()
        }
        BusEvent::AccountDeleted { user, .. } => {
            super::revocation::account_deleted(hub, &user);
            Vec::new()
        }
        BusEvent::Follow { from, to, on } => {
            if !on {
                hub.state.unfollowed(&from, &to);
                return Vec::new();
            }
            let asks = hub.cluster.await_follow(&mut hub.state, &from, &to);
            let ev = Event::new("notify_followed").with("from", from.as_str());
            hub.to_user(&to, &ev);
            asks.into_iter().map(Work::from).collect()
        }
    }
}

/// Whether a membership change is of a user loaded here.
fn user_here(hub: &Hub, op: Option<&MemberOp>) -> bool {
    op.is_some_and(|o| hub.state.users.get(&o.user).is_some_and(|u| u.loaded))
}

/// Whether a join announced on the bus would grant something here: the user's
/// memberships are in memory and this is not one of them yet.
fn grants_here(hub: &Hub, op: &MemberOp, room: &str) -> bool {
    op.joined
        && hub
            .state
            .users
            .get(&op.user)
            .is_some_and(|u| u.loaded && !u.rooms.contains(room))
}

/// See [`crate::cluster::Cluster::look_up_new_watches`]: run every turn.
pub fn look_up_new_watches(hub: &mut Hub) {
    let asks = hub.cluster.look_up_new_watches(&mut hub.state);
    submit(hub, asks);
}

/// Which of `users` are online, as asked when they started being watched.
pub fn presence_read(hub: &mut Hub, users: Vec<String>, online: &[String]) {
    hub.cluster.presence_read(&hub.state, users, online);
}

/// Whom `user` follows, as read to grant follows another node announced.
pub fn follows_read(hub: &mut Hub, user: &str, read: u64, following: &[String]) {
    hub.cluster
        .follows_read(&mut hub.state, user, read, following);
}

/// This node's number of connections (and upgrades under way) of `user`
/// changed: it is written to the database (in a cluster).
pub fn presence_changed(hub: &mut Hub, user: &str) {
    let (conns, nickname) = match hub.state.users.get(user) {
        Some(u) => (u.conns.len() as u32 + u.opening, u.nickname.clone()),
        None => (0, String::new()),
    };
    let writes = hub.cluster.presence_changed(user, conns, nickname);
    submit(hub, writes);
}

pub fn presence_written(hub: &mut Hub, user: &str, ok: bool) {
    if hub.cluster.presence_written(user, ok) {
        presence_changed(hub, user);
    }
}

pub fn heartbeat_done(hub: &mut Hub, rejoined: bool) {
    for user in hub.cluster.heartbeat_done(&hub.state, rejoined) {
        presence_changed(hub, &user);
    }
}

/// A session loaded: its rooms are tracked from the entries it saw.
pub fn session_rooms(hub: &mut Hub, rooms: &[String], lasts: &[i64]) {
    let reads = hub.cluster.session_rooms(rooms, lasts, Instant::now());
    submit(hub, reads);
}

/// The cluster's fast tick (see `server`).
pub fn tick(hub: &mut Hub, now: Instant) {
    let jobs = hub.cluster.tick(&hub.state, &hub.svc.config, now);
    submit(hub, jobs);
}

/// Submits the cluster's jobs; one that cannot be queued is undone in the
/// cluster, to be tried again.
pub fn submit(hub: &mut Hub, jobs: Vec<Submit>) {
    for Submit { job, failed } in jobs {
        if !hub.submit(Ticket::internal(), job) {
            if let Some(f) = failed {
                hub.cluster.submit_failed(f);
            }
        }
    }
}
