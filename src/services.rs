//! What the handlers use but do not own: the database and hashing threads, the
//! token keys, the configuration, the counters, and the budgets that outlive
//! connections — one struct, handed down from the server to every handler.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::jwt::Tokens;
use crate::auth::password::{HashJob, HashPool};
use crate::budget::{ApiBudget, UserBudget};
use crate::config::Config;
use crate::db::{Db, Ticket};
use crate::metrics::Metrics;
use crate::throttle::{AddrBuckets, LoginThrottle, RegisterBudget};

pub struct Services {
    pub db: Db,
    pub hasher: HashPool,
    pub tokens: Tokens,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub budgets: Budgets,
    /// Jobs submitted (to the database or the hashing threads) and not yet
    /// completed: a graceful shutdown waits for them.
    pub outstanding: usize,
}

/// Budgets kept per user or per client address, which no single connection's
/// request bucket can bound (more connections, or a reconnect, would reset it).
pub struct Budgets {
    pub logins: LoginThrottle,
    pub registrations: RegisterBudget,
    /// `/metrics` on the public listener, per client address
    /// (`KLAV_METRICS_PER_ADDR_PER_SEC`): each answer is kilobytes for a few
    /// bytes asked, so anonymous clients get only a scraper's share.
    pub public_metrics: AddrBuckets,
    /// Rooms each user may create (`create_room`, `join` by name).
    pub rooms: UserBudget,
    /// WebSocket upgrades each user may start (`KLAV_WS_OPENS_PER_USER_PER_MIN`).
    pub ws_opens: UserBudget,
    /// Unknown usernames each user may look up (`friend_follow`): answering
    /// `NOT_REGISTERED` tells whether an account exists, so it must not come
    /// at the request rate.
    pub lookups: UserBudget,
    /// Rows each user's requests may have the database examine (`resume`,
    /// `my_rooms`): see [`crate::budget::DB_ROWS_PER_SEC`].
    pub rows: UserBudget,
    /// The server API: each key's requests, and the keys found live lately.
    pub api: ApiBudget,
}

impl Budgets {
    pub fn from_config(config: &Config) -> Budgets {
        let metrics_rate = f64::from(config.metrics_per_addr_per_sec);
        Budgets {
            logins: LoginThrottle::new(
                config.login_max_failures,
                config.login_max_failures_per_addr,
                config.login_window,
            ),
            registrations: RegisterBudget::from_config(config),
            public_metrics: AddrBuckets::new(metrics_rate * 10.0, metrics_rate),
            rooms: UserBudget::new(config.rooms_created_per_hour, Duration::from_secs(3600)),
            ws_opens: crate::budget::ws_opens(config),
            lookups: crate::budget::unknown_lookups(),
            rows: crate::budget::db_rows(),
            api: ApiBudget::from_config(config),
        }
    }

    /// Forgets what has refilled (once a second).
    pub fn sweep(&mut self, now: std::time::Instant) {
        self.logins.sweep(now);
        self.registrations.sweep(now);
        self.public_metrics.sweep(now);
        self.rooms.sweep(now);
        self.rows.sweep(now);
        self.ws_opens.sweep(now);
        self.lookups.sweep(now);
        self.api.sweep(now);
    }
}

impl Services {
    /// Queues a hashing job; false when its queue is full.
    pub fn submit_hash(&mut self, ticket: Ticket, job: HashJob) -> bool {
        match self.hasher.submit(ticket, job) {
            Ok(()) => {
                self.outstanding += 1;
                true
            }
            Err(_) => false,
        }
    }
}
