//! Each room's entries — this node's own and the other nodes' — in the room's
//! one order (see [`super::chain`]). Every decision returns the [`Work`] that is
//! ready; the handlers run it and ask again where it says so.

use std::collections::HashSet;
use std::time::Instant;

use super::bus::MemberOp;
use super::chain::Gate;
use super::node::{Cluster, Held, RemoteEntry, Submit, Work};
use crate::db::jobs::{ChainLink, ChatEntry, DmResult, Duplicate, Job, NewMessage, Outcome};
use crate::db::Ticket;
use crate::state::State;

impl Cluster {
    /// A job of this node committed entries: it is finished now, in the room's
    /// order, or held until the entries before it have been delivered.
    pub fn committed(&mut self, local: Box<(Ticket, Outcome, ChainLink)>) -> Vec<Work> {
        let (room, prev, last) = (local.2.room.clone(), local.2.prev, local.2.last);
        match self.chains.gate(&room, prev, last) {
            Gate::Wait => {
                self.chains
                    .hold(&room, prev, Held::Local(local), Instant::now());
                Vec::new()
            }
            gate => {
                let local = match gate {
                    Gate::Seen => already_delivered(local, &room),
                    _ => local,
                };
                let mut work = finished(local, room.clone(), last);
                work.push(Work::Release {
                    room,
                    read_upto: None,
                });
                work
            }
        }
    }

    /// Entries up to `last` of `room` were delivered: the room's chain moves
    /// on, or starts when the room has members here now; changes waiting for
    /// those entries go out.
    pub fn advance(&mut self, room: &str, last: i64, has_members: bool) -> Vec<Work> {
        if self.chains.is_tracked(room) {
            self.chains.advance(room, last);
        } else if has_members {
            self.chains.track(room, last);
        }
        self.flush_changes(room)
    }

    /// The next batch of `room` whose turn has come, if any (the handlers ask
    /// again once it is done). `read_upto`: right after a read of the room's
    /// entries up to it — an entry announced by reference that the read did
    /// not find does not exist (the database has every entry up to it by then),
    /// and is dropped rather than read again.
    pub fn release(&mut self, room: &str, read_upto: Option<i64>) -> Vec<Work> {
        while let Some((held, seen)) = self.chains.next_ready(room) {
            match held {
                Held::Local(local) => {
                    let last = local.2.last;
                    let local = match seen {
                        true => already_delivered(local, room),
                        false => local,
                    };
                    let mut work = finished(local, room.to_string(), last);
                    work.push(Work::Release {
                        room: room.to_string(),
                        read_upto,
                    });
                    return work;
                }
                Held::Remote(r) if !seen => {
                    let id = r.entry.id;
                    return vec![
                        Work::Deliver(r),
                        Work::Advance {
                            room: room.to_string(),
                            last: id,
                        },
                        Work::Release {
                            room: room.to_string(),
                            read_upto,
                        },
                    ];
                }
                Held::Reference(id) if !seen && read_upto.is_some_and(|upto| id <= upto) => {
                    self.ref_ops.remove(&id);
                    crate::log!(
                        Warn,
                        "entry {id} of {room} was announced on the bus but is not in the \
                         database; ignored"
                    );
                }
                Held::Reference(id) if !seen => {
                    // Its turn, not read yet (a read for an earlier one was
                    // under way when it came): read it now, the rest waits.
                    let after = self.chains.last(room).unwrap_or(0);
                    let now = Instant::now();
                    self.chains.hold(room, after, Held::Reference(id), now);
                    if self.chains.read_now(room, now) {
                        return vec![read(room.to_string(), after, Some(id)).into()];
                    }
                    return Vec::new();
                }
                Held::Remote(_) | Held::Reference(_) => {}
            }
        }
        Vec::new()
    }

    /// Another node's entry. `user_here`: its membership change (if any) is of
    /// a user loaded here; `grants`: it is a join that would grant that user a
    /// membership here — which the bus cannot do: the entry is read back in
    /// its turn, with the room's members as the database has them.
    pub fn heard_entry(
        &mut self,
        remote: RemoteEntry,
        prev: i64,
        user_here: bool,
        grants: bool,
        now: Instant,
    ) -> Vec<Work> {
        let room = remote.entry.room.clone();
        let id = remote.entry.id;
        if !self.concerns(&room, user_here) {
            self.passed_over.note(&room, id, now);
            return Vec::new();
        }
        if remote.op.is_some() && !self.chains.is_tracked(&room) {
            // A member of this node joined elsewhere: from here on.
            self.chains.track(&room, prev);
        }
        if grants {
            return self.read_back(room, prev, id, remote.op, now);
        }
        match self.chains.gate(&room, prev, id) {
            Gate::Go => vec![
                Work::Deliver(Box::new(remote)),
                Work::Advance {
                    room: room.clone(),
                    last: id,
                },
                Work::Release {
                    room,
                    read_upto: None,
                },
            ],
            Gate::Seen => Vec::new(),
            Gate::Wait => {
                self.chains
                    .hold(&room, prev, Held::Remote(Box::new(remote)), now);
                Vec::new()
            }
        }
    }

    /// Another node's entry `id` of `room`, too large to carry: read back.
    pub fn heard_reference(
        &mut self,
        room: String,
        prev: i64,
        id: i64,
        op: Option<MemberOp>,
        user_here: bool,
        now: Instant,
    ) -> Vec<Work> {
        if !self.concerns(&room, user_here) {
            self.passed_over.note(&room, id, now);
            return Vec::new();
        }
        if op.is_some() && !self.chains.is_tracked(&room) {
            self.chains.track(&room, prev);
        }
        self.read_back(room, prev, id, op, now)
    }

    /// An entry of another node edited or deleted: sent on once the entry
    /// itself has been delivered here.
    pub fn heard_change(&mut self, entry: ChatEntry) -> Vec<Work> {
        if !self.chains.is_tracked(&entry.room) {
            return Vec::new();
        }
        let room = entry.room.clone();
        self.waiting_changes
            .entry(room.clone())
            .or_default()
            .push(entry);
        self.flush_changes(&room)
    }

    /// An edit too large to carry: read back.
    pub fn heard_change_reference(&self, room: &str, id: i64) -> Vec<Work> {
        match self.chains.is_tracked(room) {
            true => vec![Work::submit(Job::EntryById { id })],
            false => Vec::new(),
        }
    }

    /// Entries read back (after a gap, too large to notify, or granting a
    /// membership): those not delivered yet go now, in order. The handlers then
    /// make the room's members what the database says and release what waited
    /// (see `handlers::remote`).
    pub fn entries_read(
        &mut self,
        room: &str,
        entries: Vec<ChatEntry>,
        queued: &[i64],
        now: Instant,
    ) -> Vec<Work> {
        self.chains.read_done(room, now);
        self.deliver_read(room, entries, queued)
    }

    /// The entries of a read that this node has not delivered yet, in order.
    ///
    /// An entry is delivered once, whichever way reaches this node first. A
    /// batch held for its turn (this node's own job, or another node's entry
    /// heard on the bus) goes out in place of the read's copy of the same
    /// entries when the read reaches it: this node's job is finished (its
    /// requester answered) rather than its entries delivered as if another
    /// node's and then, when it was released, again.
    pub fn deliver_read(
        &mut self,
        room: &str,
        entries: Vec<ChatEntry>,
        queued: &[i64],
    ) -> Vec<Work> {
        let Some(mut last) = self.chains.last(room) else {
            return Vec::new();
        };
        let mut work = Vec::new();
        for entry in entries {
            if entry.id <= last {
                continue;
            }
            if let Some(held) = self.chains.take_at(room, last) {
                match held {
                    Held::Local(local) => {
                        last = local.2.last;
                        work.extend(finished(local, room.to_string(), last));
                    }
                    Held::Remote(r) => {
                        last = r.entry.id;
                        work.push(Work::Deliver(r));
                        work.push(Work::Advance {
                            room: room.to_string(),
                            last,
                        });
                    }
                    // Announced by reference: this read is its copy.
                    Held::Reference(_) => {}
                }
                if entry.id <= last {
                    continue;
                }
            }
            let id = entry.id;
            let op = self.ref_ops.remove(&id);
            let queued = queued.contains(&id);
            work.push(Work::Deliver(Box::new(RemoteEntry { entry, op, queued })));
            work.push(Work::Advance {
                room: room.to_string(),
                last: id,
            });
            last = id;
        }
        work
    }

    /// Gaps that waited long enough: read from the database.
    pub fn overdue_reads(&mut self, now: Instant) -> Vec<Submit> {
        self.chains
            .overdue(now)
            .into_iter()
            .map(|(room, after, upto)| {
                crate::log!(
                    Debug,
                    "room {room}: entries {after}..{upto} missing; reading them"
                );
                read(room, after, Some(upto))
            })
            .collect()
    }

    /// A session loaded: its rooms are tracked from the entries it saw, and
    /// what this node passed over in them since is read back (see
    /// [`super::PassedOver`]).
    pub fn session_rooms(&mut self, rooms: &[String], lasts: &[i64], now: Instant) -> Vec<Submit> {
        let mut work = Vec::new();
        for (room, &last) in rooms.iter().zip(lasts) {
            if self.chains.is_tracked(room) {
                continue;
            }
            self.chains.track(room, last);
            if let Some(newest) = self.passed_over.take_after(room, last) {
                if self.chains.read_now(room, now) {
                    work.push(read(room.clone(), last, Some(newest)));
                }
            }
        }
        work
    }

    /// Rooms nobody here belongs to any more stop being tracked: their history
    /// cache would go stale with other nodes' writes. One whose entries are
    /// being read back stays: the read may bring its first member here (a
    /// join, confirmed by the room's members). This node's jobs held for them
    /// are finished.
    pub fn untrack_unused(&mut self, has_members: impl Fn(&str) -> bool) -> Vec<Work> {
        let unused: Vec<String> = self
            .chains
            .tracked()
            .filter(|(r, _)| !has_members(r) && !self.chains.waiting(r))
            .map(|(r, _)| r.clone())
            .collect();
        let mut work = Vec::new();
        for room in unused {
            for held in self.chains.untrack(&room) {
                if let Held::Local(local) = held {
                    work.push(Work::Finish(local));
                }
            }
            self.waiting_changes.remove(&room);
            work.push(Work::Forget(room));
        }
        work
    }

    /// Whether an entry of `room` matters here: the room is tracked, or it
    /// brings one of this node's users in or out.
    fn concerns(&self, room: &str, user_here: bool) -> bool {
        self.chains.is_tracked(room) || user_here
    }

    /// Another node's entry `id` of `room` (after `prev`), to be read back
    /// from `chat_logs` in its turn: too large to notify, or a join to be
    /// confirmed.
    fn read_back(
        &mut self,
        room: String,
        prev: i64,
        id: i64,
        op: Option<MemberOp>,
        now: Instant,
    ) -> Vec<Work> {
        if self.chains.gate(&room, prev, id) == Gate::Seen {
            return Vec::new();
        }
        if let Some(op) = op {
            self.ref_ops.insert(id, op);
        }
        self.chains.hold(&room, prev, Held::Reference(id), now);
        if self.chains.read_now(&room, now) {
            let after = self.chains.last(&room).unwrap_or(prev);
            return vec![read(room, after, Some(id)).into()];
        }
        Vec::new()
    }

    /// Changes (edits, deletes) of entries delivered here by now go out.
    fn flush_changes(&mut self, room: &str) -> Vec<Work> {
        if self.waiting_changes.is_empty() {
            // The common case: one check per delivered batch.
            return Vec::new();
        }
        let Some(last) = self.chains.last(room) else {
            self.waiting_changes.remove(room);
            return Vec::new();
        };
        let Some(waiting) = self.waiting_changes.get_mut(room) else {
            return Vec::new();
        };
        let (ready, rest): (Vec<ChatEntry>, Vec<ChatEntry>) = std::mem::take(waiting)
            .into_iter()
            .partition(|e| e.id <= last);
        if rest.is_empty() {
            self.waiting_changes.remove(room);
        } else {
            self.waiting_changes.insert(room.to_string(), rest);
        }
        ready.into_iter().map(Work::Change).collect()
    }
}

/// This node's job whose entries reached this room's members another way (a
/// read-back): a message or DM is answered to its requester alone, as a
/// repeated send is, not delivered again. (Other jobs are finished as usual:
/// their effects on memory must not be skipped.)
fn already_delivered(
    local: Box<(Ticket, Outcome, ChainLink)>,
    room: &str,
) -> Box<(Ticket, Outcome, ChainLink)> {
    let (ticket, outcome, link) = *local;
    crate::log!(
        Warn,
        "entries {} of {room} delivered before their own commit; answering its requester only",
        link.last
    );
    let outcome = match outcome {
        Outcome::Msg { msg, id, ts } => Outcome::MsgDuplicate(Box::new(Duplicate {
            entry: stored_entry(msg, "msg", None, id, ts),
            queued: false,
        })),
        Outcome::Dm {
            msg,
            to,
            result: DmResult::Stored { id, ts, queued, .. },
        } => {
            let entry = stored_entry(msg.clone(), "dm", Some(to.clone()), id, ts);
            Outcome::Dm {
                msg,
                to,
                result: DmResult::Duplicate(Box::new(Duplicate { entry, queued })),
            }
        }
        other => other,
    };
    Box::new((ticket, outcome, link))
}

/// A message or DM as the entry it was stored as.
fn stored_entry(
    msg: NewMessage,
    kind: &str,
    to: Option<String>,
    id: i64,
    ts: std::time::SystemTime,
) -> ChatEntry {
    ChatEntry {
        id,
        ts,
        kind: kind.into(),
        room: msg.room,
        from: msg.from,
        from_nickname: msg.from_nickname,
        to,
        text: msg.text,
        client_id: msg.client_id,
        edited_at: None,
        deleted: false,
        deleted_by: None,
    }
}

/// A local job in its turn: finished, then its entries count as delivered.
fn finished(local: Box<(Ticket, Outcome, ChainLink)>, room: String, last: i64) -> Vec<Work> {
    vec![Work::Finish(local), Work::Advance { room, last }]
}

/// A read of `room`'s entries after `after` (up to `upto`), on the writer (so
/// it sees every earlier commit of this node).
fn read(room: String, after: i64, upto: Option<i64>) -> Submit {
    Submit::job(Job::ReadEntries { room, after, upto })
}

/// A room's members as the database has them now, for this node's users.
pub fn reconcile_room(state: &mut State, room: &str, members: &[String]) {
    let now: HashSet<&str> = members.iter().map(String::as_str).collect();
    let here: Vec<String> = state
        .room_members
        .get(room)
        .map(|m| m.iter().cloned().collect())
        .unwrap_or_default();
    for user in here {
        if !now.contains(user.as_str()) {
            state.left(&user, room);
        }
    }
    for user in members {
        if state
            .users
            .get(user)
            .is_some_and(|u| u.loaded && !u.rooms.contains(room))
        {
            state.joined(user, room);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn entry(id: i64) -> ChatEntry {
        ChatEntry {
            id,
            ts: SystemTime::now(),
            kind: "msg".into(),
            room: "r".into(),
            from: "bob".into(),
            from_nickname: "bob".into(),
            to: None,
            text: format!("m{id}"),
            client_id: None,
            edited_at: None,
            deleted: false,
            deleted_by: None,
        }
    }

    /// This node's message `id`, committed after entry `prev` of room `r`.
    fn local(prev: i64, id: i64) -> Box<(Ticket, Outcome, ChainLink)> {
        let msg = NewMessage {
            room: "r".into(),
            from: "alice".into(),
            from_nickname: "alice".into(),
            text: format!("m{id}"),
            client_id: None,
            token_gen: 0,
            poster: crate::db::jobs::Poster::Member,
        };
        let outcome = Outcome::Msg {
            msg,
            id,
            ts: SystemTime::now(),
        };
        let link = ChainLink {
            room: "r".into(),
            prev,
            last: id,
        };
        Box::new((Ticket::internal(), outcome, link))
    }

    fn describe(work: &[Work]) -> Vec<String> {
        work.iter()
            .map(|w| match w {
                Work::Deliver(r) => format!("deliver {}", r.entry.id),
                Work::Finish(l) => match &l.1 {
                    Outcome::Msg { id, .. } => format!("finish {id}"),
                    Outcome::MsgDuplicate(d) => format!("answer {}", d.entry.id),
                    _ => "finish".into(),
                },
                Work::Advance { last, .. } => format!("advance {last}"),
                Work::Release { .. } => "release".into(),
                _ => "other".into(),
            })
            .collect()
    }

    /// A read back (after a gap, or the catch-up after a failover) that
    /// reaches this node's own batch, held for its turn, finishes that batch
    /// in place of delivering the read's copy: each entry goes out once.
    #[test]
    fn a_read_reaching_a_held_local_batch_finishes_it_instead_of_its_copy() {
        let mut c = Cluster::new(true, "n0".into(), 1);
        c.chains.track("r", 1);
        // Entry 3 is this node's, committed after entry 2 of another node
        // that has not been heard: held.
        assert!(c.committed(local(2, 3)).is_empty());
        let read = vec![entry(2), entry(3), entry(4)];
        let work = c.entries_read("r", read, &[], Instant::now());
        assert_eq!(
            describe(&work),
            [
                "deliver 2",
                "advance 2",
                "finish 3",
                "advance 3",
                "deliver 4",
                "advance 4"
            ]
        );
        assert!(!c.chains.waiting("r"), "nothing held any more");
    }

    /// This node's message whose entry reached the room another way first is
    /// answered to its requester alone, not delivered again.
    #[test]
    fn a_local_message_seen_before_its_commit_is_only_answered() {
        let mut c = Cluster::new(true, "n0".into(), 1);
        c.chains.track("r", 1);
        c.chains.advance("r", 3);
        let work = c.committed(local(2, 3));
        assert_eq!(describe(&work), ["answer 3", "advance 3", "release"]);
    }
}
