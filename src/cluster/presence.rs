//! Presence in a cluster, as one node keeps it: its own writes of how many
//! connections each user has here (one write at a time per user, so they
//! cannot overtake each other), the presence of the users watched here (the
//! database announces changes only, so a user who starts being watched is
//! looked up), and the follows another node announced, granted once read back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::node::{Cluster, Failed, Submit, Work};
use crate::db::jobs::Job;
use crate::state::State;

/// How long a read of a user's follows may take before it is asked again (it
/// failed, or was never queued).
pub const FOLLOW_READ_RETRY: Duration = Duration::from_secs(5);

/// Likewise for a read of the presence of users who started being watched.
pub const PRESENCE_READ_RETRY: Duration = Duration::from_secs(5);

impl Cluster {
    /// This node's number of connections (and upgrades under way) of `user`
    /// is now `conns`: it is written, unless a write of theirs is under way
    /// (its completion asks again).
    pub fn presence_changed(&mut self, user: &str, conns: u32, nickname: String) -> Vec<Submit> {
        if !self.enabled {
            return Vec::new();
        }
        let p = self.presence.entry(user.to_string()).or_default();
        if p.busy || p.written == Some(conns) {
            if !p.busy && conns == 0 {
                self.presence.remove(user);
            }
            return Vec::new();
        }
        if p.written.is_none() && conns == 0 {
            // Never written (or its write failed with nothing to undo now).
            self.presence.remove(user);
            return Vec::new();
        }
        p.busy = true;
        p.written = Some(conns);
        let job = Job::Presence {
            node: self.node.clone(),
            user: user.to_string(),
            nickname,
            conns,
        };
        vec![Submit {
            job,
            failed: Some(Failed::Presence(user.to_string())),
        }]
    }

    /// A presence write ended; true when the user's count should be looked
    /// at again (it may have changed meanwhile).
    pub fn presence_written(&mut self, user: &str, ok: bool) -> bool {
        if let Some(p) = self.presence.get_mut(user) {
            p.busy = false;
            if !ok {
                // Written again by the next sweep.
                p.written = None;
                return false;
            }
        }
        true
    }

    /// Users whose presence writes failed, to write again (once a second).
    pub fn presence_to_retry(&self) -> Vec<String> {
        self.presence
            .iter()
            .filter(|(_, p)| !p.busy && p.written.is_none())
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// The database says `user` came online or went offline (on any node):
    /// their watchers here are told when that is news.
    pub fn presence_heard(
        &mut self,
        state: &mut State,
        user: &str,
        nickname: String,
        online: bool,
    ) -> Vec<Work> {
        let mut work: Vec<Work> = self
            .look_up_new_watches(state)
            .into_iter()
            .map(Work::from)
            .collect();
        if !state.is_watched(user) {
            self.online.remove(user);
            self.presence_unknown.remove(user);
            return work;
        }
        // The database announces changes only: for a user whose presence was
        // not known here yet, this one is news too (and settles it).
        let unknown = self.presence_unknown.remove(user).is_some();
        let changed = if online {
            self.online.insert(user.to_string())
        } else {
            self.online.remove(user)
        };
        if changed || unknown {
            let name = match nickname.is_empty() {
                true => user.to_string(),
                false => nickname,
            };
            work.push(Work::Announce {
                user: user.to_string(),
                name,
                online,
            });
        }
        work
    }

    /// Users who started being watched here (a follow or a subscription; on
    /// this node, from the bus, or from a catch-up): whether they are online
    /// is read from the database, since this node heard nothing of them while
    /// nobody watched them. Until the read answers, their next change is
    /// announced whatever `online` says. Called every turn and before presence
    /// is looked at, so that no change is heard between a watch starting and
    /// its read being asked.
    pub fn look_up_new_watches(&mut self, state: &mut State) -> Vec<Submit> {
        if state.newly_watched.is_empty() {
            return Vec::new();
        }
        let users = std::mem::take(&mut state.newly_watched);
        if !self.enabled {
            return Vec::new();
        }
        let now = Instant::now();
        let mut ask = Vec::new();
        for user in users {
            // With a read under way already, nothing was heard of them since
            // it was asked (after they were first watched): it still answers.
            if state.is_watched(&user) && !self.presence_unknown.contains_key(&user) {
                self.presence_unknown.insert(user.clone(), now);
                ask.push(user);
            }
        }
        ask_presence(ask)
    }

    /// Which of `users` (asked by [`Cluster::look_up_new_watches`]) are
    /// online: settles those still unknown (a change heard since has settled
    /// the others).
    pub fn presence_read(&mut self, state: &State, users: Vec<String>, online: &[String]) {
        let online: HashSet<&str> = online.iter().map(String::as_str).collect();
        for user in users {
            if self.presence_unknown.remove(&user).is_none() || !state.is_watched(&user) {
                continue;
            }
            if online.contains(user.as_str()) {
                self.online.insert(user);
            } else {
                self.online.remove(&user);
            }
        }
    }

    /// Presence reads that did not answer in time are asked again, and users
    /// nobody watches any more are forgotten (once a second).
    pub fn retry_presence_reads(&mut self, state: &State, now: Instant) -> Vec<Submit> {
        let mut ask = Vec::new();
        self.presence_unknown.retain(|user, asked| {
            if !state.is_watched(user) {
                return false;
            }
            if now.duration_since(*asked) >= PRESENCE_READ_RETRY {
                *asked = now;
                ask.push(user.clone());
            }
            true
        });
        ask_presence(ask)
    }

    /// Another node says `from` followed `to`: for a user whose follows are
    /// in memory here, granted once a read of their follows (asked now, so
    /// after the follow committed) finds it.
    pub fn await_follow(&mut self, state: &mut State, from: &str, to: &str) -> Vec<Submit> {
        let read = self.next_follow_read;
        let Some(u) = state.users.get_mut(from) else {
            return Vec::new();
        };
        if !u.loaded || u.following.contains(to) {
            return Vec::new();
        }
        self.next_follow_read += 1;
        u.awaiting_follows.insert(to.to_string(), read);
        vec![self.ask_follows(from, read)]
    }

    /// Whom `user` follows, read after the follows numbered up to `read` were
    /// announced: those it finds are granted, the others are not (an unfollow
    /// since then has removed them from the waiting already).
    pub fn follows_read(&mut self, state: &mut State, user: &str, read: u64, following: &[String]) {
        if self
            .follow_reads
            .get(user)
            .is_some_and(|(latest, _)| *latest <= read)
        {
            self.follow_reads.remove(user);
        }
        let Some(u) = state.users.get_mut(user) else {
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
                state.followed(user, &to);
            }
        }
    }

    /// Reads of follows that did not answer in time are asked again (once a
    /// second).
    pub fn retry_follow_reads(&mut self, state: &State, now: Instant) -> Vec<Submit> {
        let overdue: Vec<String> = self
            .follow_reads
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= FOLLOW_READ_RETRY)
            .map(|(u, _)| u.clone())
            .collect();
        let mut work = Vec::new();
        for user in overdue {
            if state
                .users
                .get(&user)
                .is_some_and(|u| !u.awaiting_follows.is_empty())
            {
                let read = self.next_follow_read;
                self.next_follow_read += 1;
                work.push(self.ask_follows(&user, read));
            } else {
                self.follow_reads.remove(&user);
            }
        }
        work
    }

    /// A read of whom `user` follows (not queued, or failed: asked again by
    /// the sweep).
    fn ask_follows(&mut self, user: &str, read: u64) -> Submit {
        self.follow_reads
            .insert(user.to_string(), (read, Instant::now()));
        Submit::job(Job::FollowsOf {
            user: user.to_string(),
            read,
        })
    }
}

/// A read of whether `users` are online (not queued, or failed: asked again by
/// the sweep).
fn ask_presence(users: Vec<String>) -> Vec<Submit> {
    match users.is_empty() {
        true => Vec::new(),
        false => vec![Submit::job(Job::PresenceOf { users })],
    }
}
