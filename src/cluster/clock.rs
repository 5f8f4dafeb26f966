//! What a node does by the clock and after an outage: heartbeats, the typing
//! it notifies once per tick, gaps read back, and the catch-up after its
//! listener was cut (every tracked room's entries, its users' memberships and
//! follows, watched users' presence).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::bus::Payloads;
use super::node::{Cluster, Failed, Submit, Work};
use crate::config::Config;
use crate::db::jobs::Job;
use crate::state::State;

impl Cluster {
    /// The cluster's fast tick: gaps that waited long enough, typing to
    /// notify, a catch-up to retry, heartbeats.
    pub fn tick(&mut self, state: &State, config: &Config, now: Instant) -> Vec<Submit> {
        let mut work = self.overdue_reads(now);
        if !self.enabled {
            return work;
        }
        if let Some(outbox) = self.outbox.take() {
            work.push(Submit::job(Job::Notify {
                payloads: outbox.finish(),
            }));
        }
        if self.catch_up_due && !self.catching_up {
            work.push(self.catch_up(state));
        }
        if now >= self.next_beat && !self.beat_busy {
            let every = (config.node_timeout / 4).max(Duration::from_secs(1));
            self.next_beat = now + every;
            self.beat_busy = true;
            work.push(Submit {
                job: Job::Heartbeat {
                    node: self.node.clone(),
                    incarnation: self.incarnation,
                    timeout_secs: config.node_timeout.as_secs() as i64,
                },
                failed: Some(Failed::Heartbeat),
            });
        }
        work
    }

    /// Once a second (it walks every tracked room and presence entry, so not on
    /// the fast tick): rooms nobody here belongs to stop being tracked, and
    /// reads and presence writes that did not answer are asked again. The
    /// users whose presence must be written again are returned apart: the
    /// handlers count their connections.
    pub fn sweep(&mut self, state: &State, now: Instant) -> (Vec<Work>, Vec<String>) {
        self.passed_over.sweep(now);
        let mut work = self.untrack_unused(|room| state.room_members.contains_key(room));
        if !self.enabled {
            return (work, Vec::new());
        }
        let retries = self
            .retry_follow_reads(state, now)
            .into_iter()
            .chain(self.retry_presence_reads(state, now));
        work.extend(retries.map(Work::from));
        (work, self.presence_to_retry())
    }

    /// `typing` in a room: the other nodes hear it within a cluster tick
    /// (typing events of one tick travel in one notification).
    pub fn note_typing(&mut self, room: &str, user: &str, nickname: &str) {
        if !self.enabled {
            return;
        }
        self.outbox
            .get_or_insert_with(Payloads::new)
            .push(super::bus::encode_typing(room, user, nickname), || {
                unreachable!("a typing event is small")
            });
    }

    /// The listener (re)connected: what may have been missed is read back
    /// (not on the first connect: nothing was missed yet), and this node's
    /// presence rows are written again by the next sweep: the database may
    /// be another server now (a failover), whose copy lacks the last writes
    /// of the old primary when its standby was asynchronous.
    pub fn connected(&mut self, state: &State) -> Vec<Submit> {
        if !std::mem::replace(&mut self.connected_once, true) {
            return Vec::new();
        }
        for p in self.presence.values_mut().filter(|p| !p.busy) {
            p.written = None;
        }
        vec![self.catch_up(state)]
    }

    fn catch_up(&mut self, state: &State) -> Submit {
        self.catch_up_due = false;
        self.catching_up = true;
        let rooms: Vec<(String, i64)> = self
            .chains
            .tracked()
            .map(|(r, l)| (r.clone(), *l))
            .collect();
        let users: Vec<String> = state.loaded_users();
        let watched: Vec<String> = state.watched_users();
        crate::log!(
            Info,
            "catching up {} rooms, {} users, {} watched users from the database",
            rooms.len(),
            users.len(),
            watched.len()
        );
        Submit {
            job: Job::CatchUp {
                rooms,
                users,
                watched,
            },
            failed: Some(Failed::CatchUp),
        }
    }

    /// A job of the cluster's could not be queued: undone, to be tried again.
    pub fn submit_failed(&mut self, failed: Failed) {
        match failed {
            Failed::Presence(user) => {
                if let Some(p) = self.presence.get_mut(&user) {
                    p.busy = false;
                    p.written = None;
                }
            }
            Failed::Heartbeat => self.beat_busy = false,
            Failed::CatchUp => {
                self.catching_up = false;
                self.catch_up_due = true;
            }
        }
    }

    /// A background job failed (the database is down, most likely): whatever
    /// it was is tried again by the clock.
    pub fn background_failed(&mut self) {
        self.beat_busy = false;
        self.chains.retry_reads(Instant::now());
        if std::mem::take(&mut self.catching_up) {
            self.catch_up_due = true;
        }
    }

    /// A heartbeat was written. When this node had been declared dead (its
    /// presence removed and announced), every user's presence is written
    /// again: the users to write are returned.
    pub fn heartbeat_done(&mut self, state: &State, rejoined: bool) -> Vec<String> {
        self.beat_busy = false;
        if !rejoined {
            return Vec::new();
        }
        crate::log!(
            Warn,
            "this node had been declared dead; writing its presence again"
        );
        for p in self.presence.values_mut() {
            p.written = None;
        }
        let users: Vec<String> = state.users.keys().cloned().collect();
        for u in &users {
            self.presence.entry(u.clone()).or_default().written = None;
        }
        users
    }

    /// After a catch-up: each room it read starts being tracked from the
    /// newest entry of the memberships it found.
    pub fn track_memberships(&mut self, memberships: &[(String, String, i64)]) {
        for (_, room, last) in memberships {
            self.chains.track(room, *last);
        }
    }

    /// After a catch-up: the watched users whose presence the database has
    /// changed meanwhile, as (user, their nickname when online, online).
    /// Users whose presence was not known yet are settled by their own read.
    pub fn presence_caught_up(
        &self,
        state: &State,
        online: &[(String, String)],
    ) -> Vec<(String, Option<String>, bool)> {
        let online: HashMap<&str, &str> = online
            .iter()
            .map(|(u, n)| (u.as_str(), n.as_str()))
            .collect();
        let mut changes = Vec::new();
        for user in &state.watched_users() {
            if self.presence_unknown.contains_key(user) {
                continue;
            }
            let now = online.get(user.as_str());
            let was = self.online.contains(user);
            match (now, was) {
                (Some(nick), false) => changes.push((user.clone(), Some(nick.to_string()), true)),
                (None, true) => changes.push((user.clone(), None, false)),
                _ => {}
            }
        }
        changes
    }
}

/// After a catch-up: this node's users' memberships and follows become what
/// the database holds.
pub fn reconcile_users(
    state: &mut State,
    memberships: &[(String, String, i64)],
    follows: &[(String, String)],
) {
    let mut rooms: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (user, room, _) in memberships {
        rooms.entry(user).or_default().insert(room);
    }
    let mut following: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (from, to) in follows {
        following.entry(from).or_default().insert(to);
    }
    let empty = HashSet::new();
    for user in state.loaded_users() {
        let u = &state.users[&user];
        let (in_rooms, follows): (Vec<String>, Vec<String>) = (
            u.rooms.iter().cloned().collect(),
            u.following.iter().cloned().collect(),
        );
        let want = rooms.get(user.as_str()).unwrap_or(&empty);
        reconcile(state, &user, in_rooms, want, State::left, State::joined);
        let want = following.get(user.as_str()).unwrap_or(&empty);
        reconcile(
            state,
            &user,
            follows,
            want,
            State::unfollowed,
            State::followed,
        );
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
