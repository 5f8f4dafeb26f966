//! A revocation of a user's tokens, on the loop: their token generation in
//! memory moves on and every open WebSocket of theirs whose token is older is
//! closed (1008 `session revoked`; all of them, 1008 `account deleted`, when
//! the account was deleted). The same whether the revocation was this node's
//! (its job's outcome) or another's (a bus note), so every node closes its
//! own connections within the bus's delay; upgrades under way are checked
//! against the new generation when their session loads (see `session`).

use super::presence;
use crate::close::CloseReason;
use crate::cluster::bus::{BusEvent, MemberOp};
use crate::conn::Phase;
use crate::db::jobs::{Deletion, Role};
use crate::db::Ticket;
use crate::hub::Hub;
use crate::protocol::{ErrorCode, RequestError};

/// `user`'s tokens older than `generation` were revoked (or, `deleted`, the
/// account is gone): their connections here with such tokens close.
pub fn revoked(hub: &mut Hub, user: &str, generation: i64, deleted: bool) {
    let Some(u) = hub.state.users.get_mut(user) else {
        // Nothing of theirs here: the next upgrade's session load reads it.
        return;
    };
    let known = if deleted { i64::MAX } else { generation };
    u.generation = u.generation.max(known);
    let (floor, reason) = match deleted {
        true => (i64::MAX, CloseReason::AccountDeleted),
        false => (u.generation, CloseReason::Revoked),
    };
    let conns = u.conns.clone();
    for id in conns {
        let stale = match hub.conns.get(id).map(|c| &c.phase) {
            Some(Phase::Ws(ws)) => ws.token_gen < floor,
            _ => false,
        };
        if stale {
            hub.conns.close(id, reason);
        }
    }
}

/// The server API disconnected `user` (here or on another node): every
/// WebSocket of theirs here closes, 1008 `disconnected by server`. Their
/// tokens stay good: a client may connect again.
pub fn disconnect(hub: &mut Hub, user: &str) -> usize {
    let conns = hub.state.user_conns(user).to_vec();
    for &id in &conns {
        hub.conns.close(id, CloseReason::Disconnected);
    }
    conns.len()
}

/// `user`'s account was deleted: every connection of theirs here closes, no
/// token of theirs is accepted while they are in memory, and the history
/// cache forgets what it held of them (their nickname and maybe their text
/// changed in the database).
pub fn account_deleted(hub: &mut Hub, user: &str) {
    revoked(hub, user, i64::MAX, true);
    hub.history.forget_author(user);
    // Their blocks went with the account (the users they blocked are told
    // nothing, as for an unblock).
    hub.state.forget_blocker(user);
}

/// This node deleted `user`'s account: what the other nodes hear from its
/// notes, as the same events and in the same order (the caller runs them as
/// another node's): each `left` entry, in its room's order, followed by the
/// owner's heir's `role_changed`; the heirs of rooms they owned from outside;
/// in a cluster, their going offline. Then [`deletion_settled`].
pub fn deletion_events(user: &str, d: &Deletion, cluster: bool) -> Vec<BusEvent> {
    let mut events = Vec::with_capacity(d.leaves.len() * 2 + d.passed_on.len() + 1);
    let owner = |room: &str, heir: &str| BusEvent::Role {
        room: room.to_string(),
        user: heir.to_string(),
        role: Role::Owner.as_str().to_string(),
        by: None,
        told: true,
    };
    for (entry, prev, heir) in &d.leaves {
        let op = MemberOp {
            joined: false,
            user: user.to_string(),
            nickname: d.nickname.clone(),
        };
        let room = entry.room.clone();
        events.push(BusEvent::Entry {
            entry: entry.clone(),
            prev: *prev,
            op: Some(op),
            queued: false,
        });
        if let Some(heir) = heir {
            events.push(owner(&room, heir));
        }
    }
    for (room, heir) in &d.passed_on {
        events.push(owner(room, heir));
    }
    if cluster && d.was_online {
        events.push(BusEvent::Presence {
            user: user.to_string(),
            nickname: d.nickname.clone(),
            online: false,
        });
    }
    events
}

/// After [`deletion_events`] ran: on a single node, followers subscribed to
/// their presence see them go offline before the follows go; then their
/// connections close.
pub fn deletion_settled(hub: &mut Hub, user: &str, d: Deletion) {
    if !hub.cluster.enabled && hub.state.is_online(user) {
        presence::announce(hub, user, d.nickname.clone(), "offline");
    }
    for (from, to) in &d.unfollowed {
        hub.state.unfollowed(from, to);
    }
    account_deleted(hub, user);
}

/// A request's write (a `msg`, `room_dm`, `join`, `edit`, … ) reached the
/// writer after its sender's tokens were revoked: nothing was stored, and the
/// connection is about to close.
pub fn sender_revoked(hub: &mut Hub, t: &Ticket) {
    hub.conns.reply_error(
        t.conn,
        &t.req_id,
        RequestError::with(ErrorCode::BadToken, "session revoked: nothing was stored"),
    );
}
