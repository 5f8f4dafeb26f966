//! What the loop does as a node of a cluster (see `cluster` for the design):
//! run its own writer's entries and other nodes' events through the rooms'
//! chains, write presence, beat, read back what was missed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cluster::bus::{BusEvent, MemberOp};
use crate::cluster::chain::Gate;
use crate::cluster::{Held, RemoteEntry};
use crate::db::jobs::{CaughtUp, ChainLink, ChatEntry, Outcome};
use crate::db::{Job, Ticket};
use crate::handlers;
use crate::hub::Hub;
use crate::protocol::Event;
use crate::state::{ParkedDm, Reach, State};

// ---------------------------------------------------------------- entries

/// A job of this node committed entries: run it in the room's order.
pub fn on_chained(hub: &mut Hub, ticket: Ticket, outcome: Outcome, link: ChainLink) {
    match hub.cluster.chains.gate(&link.room, link.prev, link.last) {
        Gate::Wait => {
            let room = link.room.clone();
            let prev = link.prev;
            hub.cluster.chains.hold(
                &room,
                prev,
                Held::Local(Box::new((ticket, outcome, link))),
                Instant::now(),
            );
        }
        gate => {
            if gate == Gate::Seen {
                crate::log!(
                    Warn,
                    "entries {} of {} delivered before their own commit",
                    link.last,
                    link.room
                );
            }
            run_local(hub, ticket, outcome, &link);
            release(hub, &link.room);
        }
    }
}

fn run_local(hub: &mut Hub, ticket: Ticket, outcome: Outcome, link: &ChainLink) {
    handlers::finish_job(hub, ticket, Ok(outcome));
    advance(hub, &link.room, link.last);
}

/// Entries up to `last` of `room` were delivered: the room's chain moves on,
/// or starts, when the room has members here now.
fn advance(hub: &mut Hub, room: &str, last: i64) {
    if hub.cluster.chains.is_tracked(room) {
        hub.cluster.chains.advance(room, last);
    } else if hub.state.room_members.contains_key(room) {
        hub.cluster.chains.track(room, last);
    }
    flush_changes(hub, room);
}

/// Delivers what waited for the room's latest entries.
fn release(hub: &mut Hub, room: &str) {
    release_read(hub, room, None);
}

/// As [`release`], right after a read of the room's entries up to `read_upto`
/// (if any): an entry announced by reference that the read did not find does
/// not exist (the database has every entry up to it by then), and is dropped
/// rather than read again.
fn release_read(hub: &mut Hub, room: &str, read_upto: Option<i64>) {
    while let Some((held, seen)) = hub.cluster.chains.next_ready(room) {
        match held {
            Held::Local(local) => {
                let (ticket, outcome, link) = *local;
                if seen {
                    crate::log!(
                        Warn,
                        "entries {} of {} delivered before their own commit",
                        link.last,
                        room
                    );
                }
                run_local(hub, ticket, outcome, &link);
            }
            Held::Remote(r) if !seen => {
                let id = r.entry.id;
                deliver_remote(hub, *r);
                advance(hub, room, id);
            }
            Held::Reference(id) if !seen && read_upto.is_some_and(|upto| id <= upto) => {
                hub.cluster.ref_ops.remove(&id);
                crate::log!(
                    Warn,
                    "entry {id} of {room} was announced on the bus but is not in the \
                     database; ignored"
                );
            }
            Held::Reference(id) if !seen => {
                // Its turn, not read yet (a read for an earlier one was under
                // way when it came): read it now, the rest waits.
                let after = hub.cluster.chains.last(room).unwrap_or(0);
                let now = Instant::now();
                hub.cluster
                    .chains
                    .hold(room, after, Held::Reference(id), now);
                if hub.cluster.chains.read_now(room, now) {
                    read_entries(hub, room.to_string(), after, Some(id));
                }
                return;
            }
            Held::Remote(_) | Held::Reference(_) => {}
        }
    }
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

/// Changes (edits, deletes) of entries delivered here by now go out.
fn flush_changes(hub: &mut Hub, room: &str) {
    if hub.cluster.waiting_changes.is_empty() {
        // The common case: one check per delivered batch.
        return;
    }
    let Some(last) = hub.cluster.chains.last(room) else {
        hub.cluster.waiting_changes.remove(room);
        return;
    };
    let Some(waiting) = hub.cluster.waiting_changes.get_mut(room) else {
        return;
    };
    let (ready, rest): (Vec<ChatEntry>, Vec<ChatEntry>) = std::mem::take(waiting)
        .into_iter()
        .partition(|e| e.id <= last);
    if rest.is_empty() {
        hub.cluster.waiting_changes.remove(room);
    } else {
        hub.cluster.waiting_changes.insert(room.to_string(), rest);
    }
    for e in ready {
        handlers::edits::changed(hub, e);
    }
}

// ---------------------------------------------------------------- the bus

/// Events from other nodes (and this node's presence decisions).
pub fn on_bus(hub: &mut Hub, events: Vec<BusEvent>) {
    hub.svc.metrics.bus_events += events.len() as u64;
    let now = Instant::now();
    for ev in events {
        match ev {
            BusEvent::Entry {
                entry,
                prev,
                op,
                queued,
            } => {
                let room = entry.room.clone();
                if !concerns_here(hub, &room, op.as_ref()) {
                    hub.cluster.passed_over.note(&room, entry.id, now);
                    continue;
                }
                if op.is_some() && !hub.cluster.chains.is_tracked(&room) {
                    // A member of this node joined elsewhere: from here on.
                    hub.cluster.chains.track(&room, prev);
                }
                let id = entry.id;
                if op.as_ref().is_some_and(|o| grants_here(hub, o, &room)) {
                    // The bus cannot make anyone a member: the entry is read
                    // back in its turn, with the room's members as the
                    // database has them.
                    read_back(hub, room, prev, id, op, now);
                    continue;
                }
                let r = Box::new(RemoteEntry { entry, op, queued });
                match hub.cluster.chains.gate(&room, prev, id) {
                    Gate::Go => {
                        deliver_remote(hub, *r);
                        advance(hub, &room, id);
                        release(hub, &room);
                    }
                    Gate::Seen => {}
                    Gate::Wait => hub.cluster.chains.hold(&room, prev, Held::Remote(r), now),
                }
            }
            BusEvent::EntryRef { room, prev, id, op } => {
                if !concerns_here(hub, &room, op.as_ref()) {
                    hub.cluster.passed_over.note(&room, id, now);
                    continue;
                }
                if op.is_some() && !hub.cluster.chains.is_tracked(&room) {
                    hub.cluster.chains.track(&room, prev);
                }
                read_back(hub, room, prev, id, op, now);
            }
            BusEvent::Change { entry } => {
                if !hub.cluster.chains.is_tracked(&entry.room) {
                    continue;
                }
                let room = entry.room.clone();
                hub.cluster
                    .waiting_changes
                    .entry(room.clone())
                    .or_default()
                    .push(entry);
                flush_changes(hub, &room);
            }
            BusEvent::ChangeRef { room, id } => {
                if hub.cluster.chains.is_tracked(&room) {
                    hub.submit(Ticket::internal(), Job::EntryById { id });
                }
            }
            BusEvent::Presence {
                user,
                nickname,
                online,
            } => presence_event(hub, &user, nickname, online),
            BusEvent::ReadMarker { user, room, id } => {
                let conns = hub.state.user_conns(&user).to_vec();
                if !conns.is_empty() {
                    let ev = Event::new("read_marker").with("room", room).with("id", id);
                    hub.fan_out(&conns, &ev.shared());
                }
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
            }
            BusEvent::Follow { from, to, on } => {
                if on {
                    await_follow(hub, &from, &to);
                    let ev = Event::new("notify_followed").with("from", from.as_str());
                    hub.to_user(&to, &ev);
                } else {
                    hub.state.unfollowed(&from, &to);
                }
            }
        }
    }
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

/// Another node's entry `id` of `room` (after `prev`), to be read back from
/// `chat_logs` in its turn: too large to notify, or a join to be confirmed.
fn read_back(hub: &mut Hub, room: String, prev: i64, id: i64, op: Option<MemberOp>, now: Instant) {
    if hub.cluster.chains.gate(&room, prev, id) == Gate::Seen {
        return;
    }
    if let Some(op) = op {
        hub.cluster.ref_ops.insert(id, op);
    }
    hub.cluster
        .chains
        .hold(&room, prev, Held::Reference(id), now);
    if hub.cluster.chains.read_now(&room, now) {
        let after = hub.cluster.chains.last(&room).unwrap_or(prev);
        read_entries(hub, room, after, Some(id));
    }
}

/// How long a read of a user's follows may take before it is asked again (it
/// failed, or was never queued).
const FOLLOW_READ_RETRY: Duration = Duration::from_secs(5);

/// Likewise for a read of the presence of users who started being watched.
const PRESENCE_READ_RETRY: Duration = Duration::from_secs(5);

/// Another node says `from` followed `to`: for a user whose follows are in
/// memory here, granted once a read of their follows (asked now, so after the
/// follow committed) finds it.
fn await_follow(hub: &mut Hub, from: &str, to: &str) {
    let read = hub.cluster.next_follow_read;
    let Some(u) = hub.state.users.get_mut(from) else {
        return;
    };
    if !u.loaded || u.following.contains(to) {
        return;
    }
    hub.cluster.next_follow_read += 1;
    u.awaiting_follows.insert(to.to_string(), read);
    ask_follows(hub, from, read);
}

fn ask_follows(hub: &mut Hub, user: &str, read: u64) {
    hub.cluster
        .follow_reads
        .insert(user.to_string(), (read, Instant::now()));
    let job = Job::FollowsOf {
        user: user.to_string(),
        read,
    };
    // Not queued, or failed: asked again by the sweep.
    hub.submit(Ticket::internal(), job);
}

/// Whom `user` follows, read after the follows numbered up to `read` were
/// announced: those it finds are granted, the others are not (an unfollow
/// since then has removed them from the waiting already).
pub fn follows_read(hub: &mut Hub, user: &str, read: u64, following: &[String]) {
    if hub
        .cluster
        .follow_reads
        .get(user)
        .is_some_and(|(latest, _)| *latest <= read)
    {
        hub.cluster.follow_reads.remove(user);
    }
    let Some(u) = hub.state.users.get_mut(user) else {
        return;
    };
    let settled: Vec<String> = u
        .awaiting_follows
        .iter()
        .filter(|(_, r)| **r <= read)
        .map(|(to, _)| to.clone())
        .collect();
    for to in &settled {
        u.awaiting_follows.remove(to);
    }
    for to in settled {
        if following.contains(&to) {
            hub.state.followed(user, &to);
        }
    }
}

/// Whether an entry of `room` matters here: the room is tracked, or it brings
/// one of this node's loaded users in or out.
fn concerns_here(hub: &Hub, room: &str, op: Option<&MemberOp>) -> bool {
    hub.cluster.chains.is_tracked(room)
        || op.is_some_and(|o| hub.state.users.get(&o.user).is_some_and(|u| u.loaded))
}

fn read_entries(hub: &mut Hub, room: String, after: i64, upto: Option<i64>) {
    let job = Job::ReadEntries { room, after, upto };
    hub.submit(Ticket::internal(), job);
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
    hub.cluster.chains.read_done(&room, Instant::now());
    deliver_read(hub, &room, entries, &queued);
    reconcile_room(hub, &room, &members);
    release_read(hub, &room, upto);
}

fn deliver_read(hub: &mut Hub, room: &str, entries: Vec<ChatEntry>, queued: &[i64]) {
    for entry in entries {
        let Some(last) = hub.cluster.chains.last(room) else {
            return;
        };
        if entry.id <= last {
            continue;
        }
        let id = entry.id;
        let op = hub.cluster.ref_ops.remove(&id);
        let queued = queued.contains(&id);
        deliver_remote(hub, RemoteEntry { entry, op, queued });
        advance(hub, room, id);
    }
}

/// Membership of a room as the database has it now, for this node's users.
fn reconcile_room(hub: &mut Hub, room: &str, members: &[String]) {
    let now: HashSet<&str> = members.iter().map(String::as_str).collect();
    let here: Vec<String> = hub
        .state
        .room_members
        .get(room)
        .map(|m| m.iter().cloned().collect())
        .unwrap_or_default();
    for user in here {
        if !now.contains(user.as_str()) {
            hub.state.left(&user, room);
        }
    }
    for user in members {
        if hub
            .state
            .users
            .get(user)
            .is_some_and(|u| u.loaded && !u.rooms.contains(room))
        {
            hub.state.joined(user, room);
        }
    }
}

/// The listener (re)connected: read back what may have been missed.
pub fn on_connected(hub: &mut Hub) {
    if !std::mem::replace(&mut hub.cluster.connected_once, true) {
        return;
    }
    catch_up(hub);
}

fn catch_up(hub: &mut Hub) {
    hub.cluster.catch_up_due = false;
    let rooms: Vec<(String, i64)> = hub
        .cluster
        .chains
        .tracked()
        .map(|(r, l)| (r.clone(), *l))
        .collect();
    let users: Vec<String> = hub.state.loaded_users();
    let watched: Vec<String> = hub.state.watchers.keys().cloned().collect();
    crate::log!(
        Info,
        "catching up {} rooms, {} users, {} watched users from the database",
        rooms.len(),
        users.len(),
        watched.len()
    );
    let job = Job::CatchUp {
        rooms,
        users,
        watched,
    };
    hub.cluster.catching_up = hub.submit(Ticket::internal(), job);
    hub.cluster.catch_up_due = !hub.cluster.catching_up;
}

/// A background job failed (the database is down, most likely): whatever it
/// was is tried again by the clock.
pub fn background_failed(hub: &mut Hub) {
    hub.cluster.beat_busy = false;
    hub.cluster.chains.retry_reads(Instant::now());
    if std::mem::take(&mut hub.cluster.catching_up) {
        hub.cluster.catch_up_due = true;
    }
}

pub fn caught_up(hub: &mut Hub, c: CaughtUp) {
    hub.cluster.catching_up = false;
    for r in c.rooms {
        deliver_read(hub, &r.room, r.entries, &r.queued);
        reconcile_room(hub, &r.room, &r.members);
        release(hub, &r.room);
    }
    // Memberships and follows of this node's users.
    let mut rooms: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (user, room, last) in &c.memberships {
        rooms.entry(user).or_default().insert(room);
        hub.cluster.chains.track(room, *last);
    }
    let mut follows: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (from, to) in &c.follows {
        follows.entry(from).or_default().insert(to);
    }
    let loaded: Vec<String> = hub.state.loaded_users();
    let empty = HashSet::new();
    for user in loaded {
        let u = &hub.state.users[&user];
        let (in_rooms, following): (Vec<String>, Vec<String>) = (
            u.rooms.iter().cloned().collect(),
            u.following.iter().cloned().collect(),
        );
        let want = rooms.get(user.as_str()).unwrap_or(&empty);
        reconcile(
            &mut hub.state,
            &user,
            in_rooms,
            want,
            State::left,
            State::joined,
        );
        let want = follows.get(user.as_str()).unwrap_or(&empty);
        reconcile(
            &mut hub.state,
            &user,
            following,
            want,
            State::unfollowed,
            State::followed,
        );
    }
    // Presence of watched users that changed meanwhile (those whose presence
    // was not known yet are settled by their own read).
    look_up_new_watches(hub);
    let online: HashMap<&str, &str> = c
        .online
        .iter()
        .map(|(u, n)| (u.as_str(), n.as_str()))
        .collect();
    let watched: Vec<String> = hub
        .state
        .watchers
        .keys()
        .filter(|u| !hub.cluster.presence_unknown.contains_key(*u))
        .cloned()
        .collect();
    for user in watched {
        let now = online.get(user.as_str());
        let was = hub.cluster.online.contains(&user);
        match (now, was) {
            (Some(nick), false) => presence_event(hub, &user, nick.to_string(), true),
            (None, true) => {
                let nick = handlers::presence::display_name(hub, &user);
                presence_event(hub, &user, nick, false)
            }
            _ => {}
        }
    }
}

/// Brings one of a user's sets in memory (rooms, follows) to what the database
/// holds: `remove` what it no longer has, `add` what it has (both idempotent).
fn reconcile(
    state: &mut State,
    user: &str,
    have: Vec<String>,
    want: &HashSet<&str>,
    remove: fn(&mut State, &str, &str),
    add: fn(&mut State, &str, &str),
) {
    for h in &have {
        if !want.contains(h.as_str()) {
            remove(state, user, h);
        }
    }
    for w in want {
        add(state, user, w);
    }
}

/// `typing` in a room: the other nodes hear it within a cluster tick (typing
/// events of one tick travel in one notification).
pub fn typing(hub: &mut Hub, room: &str, user: &str, nickname: &str) {
    if !hub.cluster.enabled {
        return;
    }
    hub.cluster
        .outbox
        .get_or_insert_with(crate::cluster::bus::Payloads::new)
        .push(
            crate::cluster::bus::encode_typing(room, user, nickname),
            || unreachable!("a typing event is small"),
        );
}

// ---------------------------------------------------------------- presence

fn presence_event(hub: &mut Hub, user: &str, nickname: String, online: bool) {
    look_up_new_watches(hub);
    if !hub.state.watchers.contains_key(user) {
        hub.cluster.online.remove(user);
        hub.cluster.presence_unknown.remove(user);
        return;
    }
    // The database announces changes only: for a user whose presence was not
    // known here yet, this one is news too (and settles it).
    let unknown = hub.cluster.presence_unknown.remove(user).is_some();
    let changed = if online {
        hub.cluster.online.insert(user.to_string())
    } else {
        hub.cluster.online.remove(user)
    };
    if changed || unknown {
        let name = if nickname.is_empty() {
            user.to_string()
        } else {
            nickname
        };
        handlers::presence::announce(hub, user, name, if online { "online" } else { "offline" });
    }
}

/// Users who started being watched here (a follow or a subscription; on this
/// node, from the bus, or from a catch-up): whether they are online is read
/// from the database, since this node heard nothing of them while nobody
/// watched them. Until the read answers, their next change is announced
/// whatever `online` says. Called every turn and before presence is looked at,
/// so that no change is heard between a watch starting and its read being
/// asked.
pub fn look_up_new_watches(hub: &mut Hub) {
    if hub.state.newly_watched.is_empty() {
        return;
    }
    let users = std::mem::take(&mut hub.state.newly_watched);
    if !hub.cluster.enabled {
        return;
    }
    let now = Instant::now();
    let mut ask = Vec::new();
    for user in users {
        // With a read under way already, nothing was heard of them since it
        // was asked (after they were first watched): it still answers.
        if hub.state.watchers.contains_key(&user)
            && !hub.cluster.presence_unknown.contains_key(&user)
        {
            hub.cluster.presence_unknown.insert(user.clone(), now);
            ask.push(user);
        }
    }
    ask_presence(hub, ask);
}

fn ask_presence(hub: &mut Hub, users: Vec<String>) {
    if !users.is_empty() {
        // Not queued, or failed: asked again by the sweep.
        hub.submit(Ticket::internal(), Job::PresenceOf { users });
    }
}

/// Which of `users` (asked by [`look_up_new_watches`]) are online: settles
/// those still unknown (a change heard since has settled the others).
pub fn presence_read(hub: &mut Hub, users: Vec<String>, online: &[String]) {
    let online: HashSet<&str> = online.iter().map(String::as_str).collect();
    for user in users {
        if hub.cluster.presence_unknown.remove(&user).is_none()
            || !hub.state.watchers.contains_key(&user)
        {
            continue;
        }
        if online.contains(user.as_str()) {
            hub.cluster.online.insert(user);
        } else {
            hub.cluster.online.remove(&user);
        }
    }
}

/// This node's number of connections (and upgrades under way) of `user`
/// changed: write it, unless a write of theirs is under way (its completion
/// checks again).
pub fn presence_changed(hub: &mut Hub, user: &str) {
    if !hub.cluster.enabled {
        return;
    }
    let (conns, nickname) = match hub.state.users.get(user) {
        Some(u) => (u.conns.len() as u32 + u.opening, u.nickname.clone()),
        None => (0, String::new()),
    };
    let p = hub.cluster.presence.entry(user.to_string()).or_default();
    if p.busy || p.written == Some(conns) {
        if !p.busy && conns == 0 {
            hub.cluster.presence.remove(user);
        }
        return;
    }
    if p.written.is_none() && conns == 0 {
        // Never written (or its write failed with nothing to undo now).
        hub.cluster.presence.remove(user);
        return;
    }
    p.busy = true;
    p.written = Some(conns);
    let job = Job::Presence {
        node: hub.cluster.node.clone(),
        user: user.to_string(),
        nickname,
        conns,
    };
    if !hub.submit(Ticket::internal(), job) {
        if let Some(p) = hub.cluster.presence.get_mut(user) {
            p.busy = false;
            p.written = None;
        }
    }
}

pub fn presence_written(hub: &mut Hub, user: &str, ok: bool) {
    if let Some(p) = hub.cluster.presence.get_mut(user) {
        p.busy = false;
        if !ok {
            // Written again by the next tick.
            p.written = None;
            return;
        }
    }
    presence_changed(hub, user);
}

// ---------------------------------------------------------------- the clock

/// The cluster's fast tick: gaps that waited long enough, typing to notify, a
/// catch-up to retry, heartbeats.
pub fn on_tick(hub: &mut Hub, now: Instant) {
    for (room, after, upto) in hub.cluster.chains.overdue(now) {
        crate::log!(
            Debug,
            "room {room}: entries {after}..{upto} missing; reading them"
        );
        read_entries(hub, room, after, Some(upto));
    }
    if !hub.cluster.enabled {
        return;
    }
    if let Some(outbox) = hub.cluster.outbox.take() {
        let job = Job::Notify {
            payloads: outbox.finish(),
        };
        hub.submit(Ticket::internal(), job);
    }
    if hub.cluster.catch_up_due && !hub.cluster.catching_up {
        catch_up(hub);
    }
    if now >= hub.cluster.next_beat && !hub.cluster.beat_busy {
        let every = (hub.svc.config.node_timeout / 4).max(Duration::from_secs(1));
        hub.cluster.next_beat = now + every;
        hub.cluster.beat_busy = true;
        let job = Job::Heartbeat {
            node: hub.cluster.node.clone(),
            incarnation: hub.cluster.incarnation,
            timeout_secs: hub.svc.config.node_timeout.as_secs() as i64,
        };
        if !hub.submit(Ticket::internal(), job) {
            hub.cluster.beat_busy = false;
        }
    }
}

/// Once a second (walks every tracked room and presence entry, so not on the
/// cluster's fast tick): rooms nobody here belongs to any more stop being
/// tracked, and presence writes that failed are tried again.
pub fn sweep(hub: &mut Hub) {
    hub.cluster.passed_over.sweep(Instant::now());
    // A room without members here: its history cache would go stale with
    // other nodes' writes. One whose entries are being read back stays: the
    // read may bring its first member here (a join, confirmed by the room's
    // members).
    let unused: Vec<String> = hub
        .cluster
        .chains
        .tracked()
        .filter(|(r, _)| {
            !hub.state.room_members.contains_key(r.as_str()) && !hub.cluster.chains.waiting(r)
        })
        .map(|(r, _)| r.clone())
        .collect();
    for room in unused {
        for held in hub.cluster.chains.untrack(&room) {
            if let Held::Local(local) = held {
                let (ticket, outcome, _) = *local;
                handlers::finish_job(hub, ticket, Ok(outcome));
            }
        }
        hub.cluster.waiting_changes.remove(&room);
        hub.history.forget(&room);
    }
    if !hub.cluster.enabled {
        return;
    }
    let now = Instant::now();
    let overdue: Vec<String> = hub
        .cluster
        .follow_reads
        .iter()
        .filter(|(_, (_, at))| now.duration_since(*at) >= FOLLOW_READ_RETRY)
        .map(|(u, _)| u.clone())
        .collect();
    for user in overdue {
        if hub
            .state
            .users
            .get(&user)
            .is_some_and(|u| !u.awaiting_follows.is_empty())
        {
            let read = hub.cluster.next_follow_read;
            hub.cluster.next_follow_read += 1;
            ask_follows(hub, &user, read);
        } else {
            hub.cluster.follow_reads.remove(&user);
        }
    }
    let mut ask = Vec::new();
    let watchers = &hub.state.watchers;
    hub.cluster.presence_unknown.retain(|user, asked| {
        if !watchers.contains_key(user) {
            return false;
        }
        if now.duration_since(*asked) >= PRESENCE_READ_RETRY {
            *asked = now;
            ask.push(user.clone());
        }
        true
    });
    ask_presence(hub, ask);
    let retry: Vec<String> = hub
        .cluster
        .presence
        .iter()
        .filter(|(_, p)| !p.busy && p.written.is_none())
        .map(|(u, _)| u.clone())
        .collect();
    for user in retry {
        presence_changed(hub, &user);
    }
}

pub fn heartbeat_done(hub: &mut Hub, rejoined: bool) {
    hub.cluster.beat_busy = false;
    if !rejoined {
        return;
    }
    crate::log!(
        Warn,
        "this node had been declared dead; writing its presence again"
    );
    for p in hub.cluster.presence.values_mut() {
        p.written = None;
    }
    let users: Vec<String> = hub.state.users.keys().cloned().collect();
    for u in users {
        hub.cluster.presence.entry(u.clone()).or_default().written = None;
        presence_changed(hub, &u);
    }
}

/// A session loaded: its rooms are tracked from the entries it saw, and what
/// this node passed over in them since is read back (see `PassedOver`).
pub fn session_rooms(hub: &mut Hub, rooms: &[String], lasts: &[i64]) {
    let now = Instant::now();
    for (room, &last) in rooms.iter().zip(lasts) {
        if hub.cluster.chains.is_tracked(room) {
            continue;
        }
        hub.cluster.chains.track(room, last);
        if let Some(newest) = hub.cluster.passed_over.take_after(room, last) {
            if hub.cluster.chains.read_now(room, now) {
                read_entries(hub, room.clone(), last, Some(newest));
            }
        }
    }
}
