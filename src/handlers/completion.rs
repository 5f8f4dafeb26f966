//! A finished job, back on the loop: routed to the family that asked for it
//! ([`on_outcome`], one line per outcome), and whatever waited for it released.
//! Cluster work the cluster hands back is run here too ([`run`]): finishing a
//! job may release another, and a remote entry's turn may come after a local
//! job's.

use std::collections::VecDeque;
use std::time::Instant;

use crate::cluster::bus::BusEvent;
use crate::cluster::entries::reconcile_room;
use crate::cluster::Work;
use crate::conn::{ConnId, Phase};
use crate::db::jobs::{AdminOutcome, CaughtUp, ChatEntry, Deletion, Outcome};
use crate::db::{Completion, DbError};
use crate::hub::Hub;
use crate::protocol::{ErrorCode, RequestError};
use crate::ticket::Hold;

use super::blocks;
use super::dm;
use super::edits;
use super::friends;
use super::history;
use super::http;
use super::invites;
use super::members;
use super::messages;
use super::moderation;
use super::presence;
use super::reads;
use super::remote;
use super::request::job_finished;
use super::resume;
use super::revocation;
use super::room_admin;
use super::rooms;
use super::session;
use super::strangers;

/// A finished database or hashing job.
pub fn on_completion(hub: &mut Hub, c: Completion) {
    match c {
        Completion::Hash(ticket, outcome) => http::accounts::on_hash(hub, ticket, outcome),
        Completion::Chained(ticket, outcome, link) => {
            let work = hub.cluster.committed(Box::new((ticket, outcome, link)));
            run(hub, work);
        }
        Completion::Bus(events) => on_bus(hub, events),
        Completion::BusConnected => {
            let work = hub.cluster.connected(&hub.state);
            remote::submit(hub, work);
        }
        Completion::Db(ticket, result) => finish_job(hub, ticket, result),
    }
}

/// A finished database job: its outcome applied, and whatever waited for it
/// (the connection's next request, a session load) released.
pub fn finish_job(hub: &mut Hub, mut ticket: crate::db::Ticket, result: Result<Outcome, DbError>) {
    hub.svc
        .metrics
        .job_done(ticket.at.elapsed().as_secs_f64() * 1000.0);
    let (conn, hold) = (ticket.conn, ticket.hold);
    let writer = ticket.writes_for.take();
    match result {
        Err(e) => on_db_error(hub, ticket, e, writer.as_deref()),
        Ok(outcome) => on_outcome(hub, ticket, outcome),
    }
    // Memory is up to date with the job now; what waited for it may go.
    if hold != Hold::Nothing {
        job_finished(hub, conn, hold);
    }
    if let Some(user) = writer {
        for waiting in hub.state.write_done(&user) {
            session::load(hub, waiting, &user);
        }
    }
}

fn on_outcome(hub: &mut Hub, t: crate::db::Ticket, outcome: Outcome) {
    // A server API request's job: answered there (which hands the outcome
    // to its family below for what it means to the room).
    let Some(outcome) = http::api::completed(hub, &t, outcome) else {
        return;
    };
    match outcome {
        Outcome::Healthy => http::accounts::health_done(hub, t.conn, Ok(())),
        Outcome::Registered(result) => http::accounts::register_done(hub, t.conn, result),
        Outcome::UsernameTaken { existing, reserved } => {
            http::accounts::username_checked(hub, t.conn, existing, reserved)
        }
        Outcome::WsTicketMinted { minted } => http::accounts::ws_ticket_done(hub, t.conn, minted),
        Outcome::WsTicket(ticket) => session::ticket_taken(hub, t.conn, ticket),
        Outcome::Credentials {
            username,
            password,
            generation,
        } => http::accounts::credentials_done(hub, t.conn, username, password, generation),
        Outcome::Done | Outcome::Pruned(_) => {}
        Outcome::Session { username, session } => session::loaded(hub, &t, &username, session),
        Outcome::History { room, items } => history::done(hub, &t, room, items),
        Outcome::HistoryFill { room, limit, items } => history::filled(hub, &room, limit, items),
        Outcome::MyRooms { username, rooms } => rooms::my_rooms_done(hub, &t, &username, rooms),
        Outcome::Following(users) => friends::list_done(hub, &t, "following", users),
        Outcome::Followers(users) => friends::list_done(hub, &t, "followers", users),
        Outcome::Follow { from, to, status } => friends::follow_done(hub, &t, from, to, status),
        Outcome::Unfollow { from, to, removed } => {
            friends::unfollow_done(hub, &t, from, to, removed)
        }
        Outcome::Block { from, to, status } => blocks::block_done(hub, &t, from, to, status),
        Outcome::Unblock { from, to, removed } => blocks::unblock_done(hub, &t, from, to, removed),
        Outcome::Stranger {
            room,
            reply,
            hidden,
        } => strangers::done(hub, &t, &room, reply, hidden),
        Outcome::BlockedList(users) => blocks::blocked_list_done(hub, &t, users),
        Outcome::RoomMembers {
            room,
            members,
            online,
            watch,
        } => members::done(hub, &t, room, members, online, watch),
        Outcome::Presence { user } => remote::presence_written(hub, &user, true),
        Outcome::Heartbeat { rejoined } => remote::heartbeat_done(hub, rejoined),
        Outcome::Entries {
            room,
            entries,
            queued,
            members,
            upto,
        } => entries_read(hub, room, entries, queued, members, upto),
        Outcome::FollowsOf {
            user,
            read,
            following,
        } => remote::follows_read(hub, &user, read, &following),
        Outcome::CaughtUp(c) => caught_up(hub, *c),
        Outcome::Entry(e) => edits::read_back(hub, e),
        Outcome::OnlineFriends(users) => presence::online_friends_done(hub, &t, users),
        Outcome::PresenceOf { users, online } => remote::presence_read(hub, users, &online),
        Outcome::Resume(replay) => resume::done(hub, &t, replay),
        Outcome::Edit { delete, result } => edits::done(hub, &t, delete, result),
        Outcome::Read {
            username,
            room,
            result,
        } => reads::done(hub, &t, &username, room, result),
        Outcome::MsgDuplicate(d) => messages::duplicate(hub, &t, d),
        // Only the server API asks for these (answered above).
        Outcome::PosterNotMember | Outcome::Api(_) => {}
        o @ Outcome::RoomCreated { .. } => rooms::created(hub, &t, o),
        Outcome::Join {
            username,
            nickname,
            result,
            logged,
        } => rooms::join_done(hub, &t, username, nickname, result, logged),
        o @ Outcome::Leave { .. } => rooms::leave_done(hub, &t, o),
        Outcome::Msg { msg, id, ts } => messages::stored(hub, &t, msg, id, ts),
        Outcome::Dm { msg, to, result } => dm::stored(hub, &t, msg, to, result),
        Outcome::DmQueued { room, to } => dm::ack(hub, &t, &room, &to, "QUEUED"),
        Outcome::Admin(o) => admin_done(hub, &t, o),
        Outcome::Revoked {
            username,
            generation,
        } => http::account::revoke_done(hub, t.conn, &username, generation),
        Outcome::SenderRevoked => revocation::sender_revoked(hub, &t),
        Outcome::AccountDeleted { username, deletion } => {
            let done = deletion.is_some();
            if let Some(d) = deletion {
                account_deleted_here(hub, &username, *d);
            }
            http::account::delete_done(hub, t.conn, done);
        }
    }
}

/// This node deleted an account: shown here as the other nodes see it from
/// the notes (whether or not the request is still waiting).
fn account_deleted_here(hub: &mut Hub, user: &str, d: Deletion) {
    let now = Instant::now();
    for ev in revocation::deletion_events(user, &d, hub.cluster.enabled) {
        let work = remote::heard(hub, ev, now);
        run(hub, work);
    }
    revocation::deletion_settled(hub, user, d);
}

/// A room administration outcome, to the family that asked for it: each
/// hands back what is not its own.
fn admin_done(hub: &mut Hub, t: &crate::db::Ticket, o: AdminOutcome) {
    let Some(o) = invites::done(hub, t, o) else {
        return;
    };
    let Some(o) = moderation::done(hub, t, o) else {
        return;
    };
    room_admin::done(hub, t, o);
}

/// A job failed: whoever waits for it learns that nothing was stored.
fn on_db_error(hub: &mut Hub, t: crate::db::Ticket, e: DbError, writer: Option<&str>) {
    hub.svc.metrics.db_errors += 1;
    if let DbError::Query(why) = &e {
        crate::log!(Error, "database error: {why}");
    }
    let Some(conn) = hub.conns.get(t.conn) else {
        if t.conn == ConnId::NONE {
            crate::log!(Warn, "background job failed: {e}");
            // A presence write or a heartbeat: tried again by the next tick.
            if let Some(user) = writer {
                remote::presence_written(hub, user, false);
            }
            hub.cluster.background_failed();
        }
        return;
    };
    match &conn.phase {
        Phase::Http(_) => http::db_failed(hub, t.conn, &e),
        Phase::Upgrading { .. } => session::open_failed(hub, t.conn, &e),
        Phase::Ws(_) => {
            hub.conns.reply_error(
                t.conn,
                &t.req_id,
                RequestError::with(
                    ErrorCode::Unavailable,
                    "database unavailable; nothing was stored",
                ),
            );
            // A resume whose replay failed: what it held back goes out now.
            resume::abandon(hub, t.conn);
        }
        Phase::Closed => {}
    }
}

// ---------------------------------------------------------------- the cluster

/// Runs the cluster's work in order; what running one item gives (the chain
/// asked again) comes before the rest.
pub fn run(hub: &mut Hub, work: Vec<Work>) {
    let mut queue: VecDeque<Work> = work.into();
    while let Some(w) = queue.pop_front() {
        let more = match w {
            Work::Finish(local) => {
                let (ticket, outcome, _) = *local;
                finish_job(hub, ticket, Ok(outcome));
                Vec::new()
            }
            Work::Deliver(r) => {
                remote::deliver(hub, *r);
                Vec::new()
            }
            Work::Advance { room, last } => {
                let has_members = hub.state.room_members.contains_key(&room);
                hub.cluster.advance(&room, last, has_members)
            }
            Work::Release { room, read_upto } => hub.cluster.release(&room, read_upto),
            Work::Change(entry) => {
                edits::changed(hub, entry);
                Vec::new()
            }
            Work::Announce { user, name, online } => {
                let status = if online { "online" } else { "offline" };
                presence::announce(hub, &user, name, status);
                Vec::new()
            }
            Work::Submit(s) => {
                remote::submit(hub, vec![s]);
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

/// Events from other nodes (and this node's presence decisions), one at a
/// time: what one brings about here (a leave, a grant) is in place before the
/// next is looked at.
fn on_bus(hub: &mut Hub, events: Vec<BusEvent>) {
    hub.svc.metrics.bus_events += events.len() as u64;
    let now = Instant::now();
    for ev in events {
        let work = remote::heard(hub, ev, now);
        run(hub, work);
    }
}

/// Entries read back (after a gap, too large to notify, or granting a
/// membership): delivered in order, members made what the database says,
/// then what waited.
fn entries_read(
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

/// What a catch-up read: each tracked room's entries, then this node's users'
/// revocations, memberships and follows, then the presence of the users
/// watched here.
fn caught_up(hub: &mut Hub, c: CaughtUp) {
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
    for (user, generation) in &c.generations {
        match *generation {
            i64::MAX => revocation::account_deleted(hub, user),
            g => revocation::revoked(hub, user, g, false),
        }
    }
    hub.cluster.track_memberships(&c.memberships);
    crate::cluster::clock::reconcile_users(&mut hub.state, &c.memberships, &c.follows);
    hub.state.reconcile_blocks(&c.blocks);
    hub.state.reconcile_roles(&c.roles);
    remote::look_up_new_watches(hub);
    for (user, nickname, online) in hub.cluster.presence_caught_up(&hub.state, &c.online) {
        let nickname = nickname.unwrap_or_else(|| hub.state.nickname_of(&user));
        let work = hub
            .cluster
            .presence_heard(&mut hub.state, &user, nickname, online);
        run(hub, work);
    }
}

/// Once a second: rooms nobody here belongs to stop being tracked (this
/// node's jobs held for them are finished), reads and presence writes that
/// did not answer are asked again.
pub fn sweep(hub: &mut Hub) {
    let (work, rewrite) = hub.cluster.sweep(&hub.state, Instant::now());
    run(hub, work);
    for user in rewrite {
        remote::presence_changed(hub, &user);
    }
}
