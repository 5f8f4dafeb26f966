//! Once a second, what is not tied to one connection: the buffer budget over
//! all clients, giving freed memory back, sweeping the rate budgets, and the
//! retention of rooms' logs.

use std::time::{Duration, Instant};

use super::event_loop::Server;
use crate::close::CloseReason;
use crate::conn::{Conn, ConnId};
use crate::db::{Job, Ticket};
use crate::handlers;

impl Server {
    /// Once a second: what is not tied to one connection.
    pub(super) fn tick(&mut self, now: Instant) {
        let started = Instant::now();
        self.enforce_buffer_budget();
        self.trim_if_freed();
        self.hub.svc.budgets.sweep(now);
        let took = started.elapsed();
        if took > Duration::from_millis(20) {
            crate::log!(Debug, "housekeeping took {took:?}");
        }
        let members = &self.hub.state.room_members;
        self.hub
            .history
            .retain_rooms(|room| members.contains_key(room));
        handlers::completion::sweep(&mut self.hub);
    }

    /// Input and output buffered for all clients together stay within
    /// `KLAV_MAX_CLIENT_BUFFER_BYTES` (Redis's `maxmemory-clients`): per-connection
    /// limits bound each client, this bounds many of them at once. Over the budget,
    /// the largest holders are closed first until 90% of it is left. Runs once a
    /// second, and at once when a read takes the input held past the budget.
    /// Counted from what each connection really holds (buffer capacities
    /// included), which also sets the running total of input held right again.
    pub(super) fn enforce_buffer_budget(&mut self) {
        let budget = self.hub.svc.config.max_client_buffer_bytes;
        let held = |c: &Conn| -> usize { c.out.len() + c.input_held() };
        let mut input = 0;
        for c in self.hub.conns.iter_mut() {
            c.input_counted = c.input_held();
            input += c.input_counted;
        }
        self.input_held = input;
        let total: usize = self.hub.conns.iter().map(&held).sum();
        self.hub.svc.metrics.client_buffer_bytes = total;
        if total <= budget {
            return;
        }
        let mut holders: Vec<(usize, ConnId)> = self
            .hub
            .conns
            .iter()
            .filter(|c| !c.life.is_lingering())
            .map(|c| (held(c), c.id))
            .filter(|(n, _)| *n > 0)
            .collect();
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut left = total;
        for (n, id) in holders {
            if left <= budget / 10 * 9 {
                break;
            }
            left -= n;
            self.hub.svc.metrics.budget_closes += 1;
            self.close_conn(id, CloseReason::Budget);
        }
    }

    /// After many connections or much buffered data went away, what they held
    /// goes back to the system rather than staying in the heap's free lists.
    pub(super) fn trim_if_freed(&mut self) {
        let now = (
            self.hub.conns.len(),
            self.hub.svc.metrics.client_buffer_bytes,
        );
        let (conns, bytes) = self.trim_mark;
        // Large replies come and go every second under a steady load, and
        // what they free is soon used again: they ask for a trim at most
        // every ten seconds (a trim walks the heap: milliseconds of loop time).
        let replies = self.hub.conns.large_reply_bytes >= 16 << 20
            && self.trimmed_at.elapsed() >= Duration::from_secs(10);
        if conns.saturating_sub(now.0) >= 1000 || bytes.saturating_sub(now.1) >= 16 << 20 || replies
        {
            let started = Instant::now();
            crate::alloc::trim();
            crate::log!(
                Debug,
                "returned freed memory to the system in {:?}",
                started.elapsed()
            );
            self.trim_mark = now;
            self.trimmed_at = Instant::now();
            self.hub.conns.large_reply_bytes = 0;
        } else {
            self.trim_mark = (conns.max(now.0), bytes.max(now.1));
        }
    }

    pub(super) fn retention(&mut self) {
        // Expired WebSocket tickets of users who did not mint another (those
        // who did had theirs dropped then). Best effort: the next tick retries.
        self.hub.submit(Ticket::internal(), Job::PruneWsTickets);
        // Invitations past their 7 days: invisible already, removed here.
        let prune = Job::AdminQuery(crate::db::jobs::AdminQuery::PruneInvites);
        self.hub.submit(Ticket::internal(), prune);
        let keep = self.hub.svc.config.max_logs_per_room;
        if keep == 0 {
            // Unlimited retention: nothing to prune, nothing to remember.
            self.hub.state.touched_rooms.clear();
            return;
        }
        if self.hub.state.touched_rooms.is_empty() {
            return;
        }
        let rooms: Vec<String> = self.hub.state.touched_rooms.drain().collect();
        if !self.hub.submit(
            Ticket::internal(),
            Job::Prune {
                rooms: rooms.clone(),
                keep,
            },
        ) {
            // Try again next time.
            self.hub.state.touched_rooms.extend(rooms);
        }
    }
}
