//! The loop's side of a cluster: what reaches this node from the others (and
//! from its own writer, through each room's chain) is handed to the cluster to
//! decide (`crate::cluster`), and the [`Work`] it hands back is run here —
//! this node's jobs finished, other nodes' entries delivered to this node's
//! connections, presence announced, jobs submitted.

use std::collections::VecDeque;
use std::time::Instant;

use crate::cluster::bus::{BusEvent, MemberOp};
use crate::cluster::entries::reconcile_room;
use crate::cluster::{RemoteEntry, Work};
use crate::db::jobs::{CaughtUp, ChainLink, ChatEntry, Outcome};
use crate::db::Ticket;
use crate::handlers;
use crate::hub::Hub;
use crate::protocol::Event;
use crate::state::{ParkedDm, Reach};

/// Runs the cluster's work in order; what running one item gives (the chain
/// asked again) comes before the rest.
pub fn run(hub: &mut Hub, work: Vec<Work>) {
    let mut queue: VecDeque<Work> = work.into();
    while let Some(w) = queue.pop_front() {
        let more = match w {
            Work::Finish(local) => {
                let (ticket, outcome, _) = *local;
                handlers::finish_job(hub, ticket, Ok(outcome));
                Vec::new()
            }
            Work::Deliver(remote) => {
                deliver_remote(hub, *remote);
                Vec::new()
            }
            Work::Advance { room, last } => {
                let has_members = hub.state.room_members.contains_key(&room);
                hub.cluster.advance(&room, last, has_members)
            }
            Work::Release { room, read_upto } => hub.cluster.release(&room, read_upto),
            Work::Change(entry) => {
                handlers::edits::changed(hub, entry);
                Vec::new()
            }
            Work::Announce { user, name, online } => {
                let status = if online { "online" } else { "offline" };
                handlers::presence::announce(hub, &user, name, status);
                Vec::new()
            }
            Work::Submit { job, failed } => {
                if !hub.submit(Ticket::internal(), job) {
                    if let Some(f) = failed {
                        hub.cluster.submit_failed(f);
                    }
                }
                Vec::new()
            }
            Work::Forget(room) => {
                hub.history.forget(&room);
                Vec::new()
            }
        };
        for m in more.into_iter().rev() {
            queue.push_front(m);
        }
    }
}

/// A job of this node committed entries: it runs in the room's order.
pub fn on_chained(hub: &mut Hub, ticket: Ticket, outcome: Outcome, link: ChainLink) {
    let work = hub.cluster.committed(Box::new((ticket, outcome, link)));
    run(hub, work);
}

/// Another node's entry, in its turn: to this node's connections.
fn deliver_remote(hub: &mut Hub, r: RemoteEntry) {
    let RemoteEntry { entry, op, queued } = r;
    let room = entry.room.clone();
    let id = entry.id;
    match (&op, entry.kind.as_str()) {
        (Some(op), _) => {
            // A leave applies at once. A join is granted by the database only:
            // one that matters here was read back with the room's members (see
            // `on_bus`), who are made members right after it is delivered.
            if !op.joined {
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
        (None, "system") => {
            // A room created: nobody is in it yet.
        }
        (None, _) => {
            hub.svc.metrics.messages_remote += 1;
            let ev = handlers::messages::entry_event(&entry);
            hub.entry_to_room(&room, id, &ev, None);
        }
    }
    hub.history.append(entry);
}

fn deliver_remote_dm(hub: &mut Hub, e: &ChatEntry) {
    let Some(to) = e.to.clone() else { return };
    match hub.state.reach(&to) {
        Reach::Online => {
            let ev = handlers::messages::entry_event(e);
            hub.entry_to_user(&to, &e.room, e.id, &ev);
        }
        Reach::Loading => {
            // Handed to the connection when it opens; nobody here waits for an
            // answer (the sender's node already said DELIVERED).
            let parked = ParkedDm {
                ticket: Ticket::internal(),
                msg: crate::db::jobs::NewMessage {
                    room: e.room.clone(),
                    from: e.from.clone(),
                    from_nickname: e.from_nickname.clone(),
                    text: e.text.clone(),
                    client_id: e.client_id.clone(),
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

/// Events from other nodes (and this node's presence decisions), one at a
/// time: what one brings about here (a leave, a grant) is in place before the
/// next is looked at.
pub fn on_bus(hub: &mut Hub, events: Vec<BusEvent>) {
    hub.svc.metrics.bus_events += events.len() as u64;
    let now = Instant::now();
    for ev in events {
        let work = match ev {
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
            BusEvent::Follow { from, to, on } => {
                if on {
                    let work = hub.cluster.await_follow(&mut hub.state, &from, &to);
                    let ev = Event::new("notify_followed").with("from", from.as_str());
                    hub.to_user(&to, &ev);
                    work
                } else {
                    hub.state.unfollowed(&from, &to);
                    Vec::new()
                }
            }
        };
        run(hub, work);
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

/// Entries read back (after a gap, too large to notify, or granting a
/// membership): delivered in order, members made what the database says,
/// then what waited.
pub fn entries_read(
    hub: &mut Hub,
    room: String,
    entries: Vec<ChatEntry>,
    queued: Vec<i64>,
    members: Vec<String>,
    upto: Option<i64>,
) {
    let work = hub
        .cluster
        .entries_read(&room, entries, &queued, Instant::now());
    run(hub, work);
    reconcile_room(&mut hub.state, &room, &members);
    run(
        hub,
        vec![Work::Release {
            room,
            read_upto: upto,
        }],
    );
}

/// The listener (re)connected: read back what may have been missed.
pub fn on_connected(hub: &mut Hub) {
    let work = hub.cluster.connected(&hub.state);
    run(hub, work);
}

/// What a catch-up read: each tracked room's entries, then this node's users'
/// memberships and follows, then the presence of the users watched here.
pub fn caught_up(hub: &mut Hub, c: CaughtUp) {
    hub.cluster.catching_up = false;
    for r in c.rooms {
        let work = hub.cluster.deliver_read(&r.room, r.entries, &r.queued);
        run(hub, work);
        reconcile_room(&mut hub.state, &r.room, &r.members);
        run(
            hub,
            vec![Work::Release {
                room: r.room,
                read_upto: None,
            }],
        );
    }
    hub.cluster.track_memberships(&c.memberships);
    crate::cluster::clock::reconcile_users(&mut hub.state, &c.memberships, &c.follows);
    look_up_new_watches(hub);
    for (user, nickname, online) in hub.cluster.presence_caught_up(&hub.state, &c.online) {
        let nickname = nickname.unwrap_or_else(|| handlers::presence::display_name(hub, &user));
        let work = hub
            .cluster
            .presence_heard(&mut hub.state, &user, nickname, online);
        run(hub, work);
    }
}

/// See [`crate::cluster::Cluster::look_up_new_watches`]: run every turn.
pub fn look_up_new_watches(hub: &mut Hub) {
    let work = hub.cluster.look_up_new_watches(&mut hub.state);
    run(hub, work);
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
    let work = hub.cluster.presence_changed(user, conns, nickname);
    run(hub, work);
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

/// A background job failed: whatever it was is tried again by the clock.
pub fn background_failed(hub: &mut Hub) {
    hub.cluster.background_failed();
}

/// A session loaded: its rooms are tracked from the entries it saw.
pub fn session_rooms(hub: &mut Hub, rooms: &[String], lasts: &[i64]) {
    let work = hub.cluster.session_rooms(rooms, lasts, Instant::now());
    run(hub, work);
}

/// `typing` in a room, for the other nodes.
pub fn typing(hub: &mut Hub, room: &str, user: &str, nickname: &str) {
    hub.cluster.note_typing(room, user, nickname);
}

/// The cluster's fast tick (see `server`).
pub fn tick(hub: &mut Hub, now: Instant) {
    let work = hub.cluster.tick(&hub.state, &hub.svc.config, now);
    run(hub, work);
}

/// Once a second: untracked rooms, overdue reads, failed presence writes.
pub fn sweep(hub: &mut Hub) {
    let (work, rewrite) = hub.cluster.sweep(&hub.state, Instant::now());
    run(hub, work);
    for user in rewrite {
        presence_changed(hub, &user);
    }
}
