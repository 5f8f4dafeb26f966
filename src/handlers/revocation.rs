//! A revocation of a user's tokens, on the loop: their token generation in
//! memory moves on and every open WebSocket of theirs whose token is older is
//! closed (1008 `session revoked`; all of them, 1008 `account deleted`, when
//! the account was deleted). The same whether the revocation was this node's
//! (its job's outcome) or another's (a bus note), so every node closes its
//! own connections within the bus's delay; upgrades under way are checked
//! against the new generation when their session loads (see `session`).

use crate::close::CloseReason;
use crate::conn::Phase;
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

/// A `msg` or `room_dm` reached the writer after its sender's tokens were
/// revoked: nothing was stored, and the connection is about to close.
pub fn sender_revoked(hub: &mut Hub, t: &Ticket) {
    hub.conns.reply_error(
        t.conn,
        &t.req_id,
        RequestError::with(ErrorCode::BadToken, "session revoked: nothing was stored"),
    );
}
