//! Per-user budgets for requests whose cost the per-connection rate limit does
//! not bound (rooms created, rows replayed, unknown names looked up, sessions
//! opened): a token bucket per user, kept in memory while it is not full.
//!
//! More connections, or a reconnect, would reset a per-connection bucket. So
//! these are keyed by user and outlive the user's connections, until they have
//! refilled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Rows the database may examine per user per second for requests whose cost
/// grows with what the user has (`resume` replays, `my_rooms` unread counts),
/// all their connections together, and the burst (`Budgets::rows` in `services`). A user
/// reconnecting now and then never notices; one asking in a loop is answered
/// `recovered:false` or `RATE_LIMITED` until the budget refills.
pub const DB_ROWS_PER_SEC: u32 = 2_000;
pub const DB_ROWS_BURST: u32 = 4_000;

/// Unknown usernames one user may look up per minute, and the burst: enough
/// for a person mistyping a name now and then, far too few to test a list of
/// names for accounts.
pub const UNKNOWN_LOOKUPS_PER_MIN: u32 = 10;
pub const UNKNOWN_LOOKUPS_BURST: u32 = 10;

/// The per-user budget of unknown names looked up.
pub fn unknown_lookups() -> UserBudget {
    UserBudget::new(UNKNOWN_LOOKUPS_BURST, Duration::from_secs(60))
        .with_rate(f64::from(UNKNOWN_LOOKUPS_PER_MIN) / 60.0)
}

/// The per-user budget of WebSocket upgrades (`KLAV_WS_OPENS_PER_USER_PER_MIN`,
/// after a burst of [`crate::config::WS_OPENS_BURST`]).
pub fn ws_opens(config: &crate::config::Config) -> UserBudget {
    UserBudget::new(crate::config::WS_OPENS_BURST, Duration::from_secs(60))
        .with_rate(f64::from(config.ws_opens_per_user_per_min) / 60.0)
}

/// The per-user budget of rows examined (see [`DB_ROWS_PER_SEC`]).
pub fn db_rows() -> UserBudget {
    UserBudget::new(
        DB_ROWS_BURST,
        Duration::from_secs_f64(f64::from(DB_ROWS_BURST) / f64::from(DB_ROWS_PER_SEC)),
    )
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// `per_window` actions per user per `window`, with the same burst.
pub struct UserBudget {
    buckets: HashMap<String, Bucket>,
    burst: f64,
    per_sec: f64,
}

impl UserBudget {
    pub fn new(per_window: u32, window: Duration) -> UserBudget {
        UserBudget {
            buckets: HashMap::new(),
            burst: per_window as f64,
            per_sec: per_window as f64 / window.as_secs_f64(),
        }
    }

    /// The same burst, refilled at `per_sec` instead.
    pub fn with_rate(mut self, per_sec: f64) -> UserBudget {
        self.per_sec = per_sec;
        self
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        b.at = now;
    }

    /// Takes one action from the user's bucket; false when it is empty.
    pub fn admit(&mut self, user: &str, now: Instant) -> bool {
        let mut b = self.buckets.remove(user).unwrap_or(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(&mut b, now);
        let ok = b.tokens >= 1.0;
        if ok {
            b.tokens -= 1.0;
        }
        self.buckets.insert(user.to_string(), b);
        ok
    }

    /// Whether the user's bucket holds a whole token, without taking it.
    pub fn has(&mut self, user: &str, now: Instant) -> bool {
        self.available(user, now) >= 1.0
    }

    /// The tokens the user's bucket holds now.
    pub fn available(&mut self, user: &str, now: Instant) -> f64 {
        match self.buckets.get_mut(user) {
            None => self.burst,
            Some(b) => {
                let tokens = (b.tokens
                    + now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec)
                    .min(self.burst);
                b.tokens = tokens;
                b.at = now;
                tokens
            }
        }
    }

    /// Takes `n` tokens for work already done, whatever is left (the bucket
    /// may go below zero, down to minus one burst: the user then waits). A
    /// negative `n` gives back what a reservation did not use.
    pub fn charge(&mut self, user: &str, n: f64, now: Instant) {
        let burst = self.burst;
        let tokens = self.available(user, now);
        self.buckets.insert(
            user.to_string(),
            Bucket {
                tokens: (tokens - n).clamp(-burst, burst),
                at: now,
            },
        );
    }

    /// How long until the user's bucket holds a whole token again.
    pub fn wait(&mut self, user: &str, now: Instant) -> Duration {
        let missing = 1.0 - self.available(user, now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.per_sec)
        }
    }

    /// Forgets the buckets that have refilled (they would start full anyway).
    pub fn sweep(&mut self, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        self.buckets.retain(|_, b| {
            let tokens = b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
            tokens < burst
        });
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// How long a node trusts a key it found live without asking the database
/// again: a key revoked on any node is refused everywhere within it.
pub const API_KEY_TRUST: Duration = Duration::from_millis(500);

/// The server API's budget: each key's request bucket (`KLAV_API_RATE`,
/// `KLAV_API_BURST`), and the keys found live lately (for at most
/// [`API_KEY_TRUST`]), so that a busy backend costs a key check per key
/// per half second rather than per request. Only live keys are kept: as many
/// as an operator made.
pub struct ApiBudget {
    pub requests: UserBudget,
    live: HashMap<[u8; 32], (String, Instant)>,
}

impl ApiBudget {
    pub fn from_config(config: &crate::config::Config) -> ApiBudget {
        ApiBudget {
            requests: UserBudget::new(config.api_burst, Duration::from_secs(1))
                .with_rate(f64::from(config.api_rate)),
            live: HashMap::new(),
        }
    }

    /// The name of the key with this hash, if it was found live lately.
    pub fn trusted(&self, hash: &[u8; 32], now: Instant) -> Option<&str> {
        self.live
            .get(hash)
            .filter(|(_, at)| now.saturating_duration_since(*at) < API_KEY_TRUST)
            .map(|(name, _)| name.as_str())
    }

    /// The database found the key live (`Some(name)`) or not.
    pub fn checked(&mut self, hash: [u8; 32], name: Option<&str>, now: Instant) {
        match name {
            Some(n) => {
                self.live.insert(hash, (n.to_string(), now));
            }
            None => {
                self.live.remove(&hash);
            }
        }
    }

    /// Forgets keys no longer trusted and buckets refilled.
    pub fn sweep(&mut self, now: Instant) {
        self.live
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < API_KEY_TRUST);
        self.requests.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_key_is_trusted_for_less_than_a_second() {
        let mut b = ApiBudget::from_config(&crate::config::Config::defaults());
        let t = Instant::now();
        let h = [7u8; 32];
        assert_eq!(b.trusted(&h, t), None);
        b.checked(h, Some("backend"), t);
        assert_eq!(b.trusted(&h, t + API_KEY_TRUST / 2), Some("backend"));
        assert_eq!(b.trusted(&h, t + API_KEY_TRUST), None);
        b.checked(h, None, t);
        assert_eq!(b.trusted(&h, t), None);
        b.checked(h, Some("backend"), t);
        b.sweep(t + API_KEY_TRUST);
        assert!(b.live.is_empty());
    }

    #[test]
    fn burst_then_refill_then_forgotten() {
        let mut b = UserBudget::new(3, Duration::from_secs(3));
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.admit("u", t0)));
        assert!(!b.admit("u", t0));
        assert!(b.admit("other", t0), "per user");
        assert!(b.admit("u", t0 + Duration::from_millis(1100)));
        b.sweep(t0 + Duration::from_secs(10));
        assert!(b.is_empty());
    }

    #[test]
    fn charges_go_into_debt_and_are_waited_out() {
        let mut b = UserBudget::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(b.available("u", t0), 10.0);
        b.charge("u", 25.0, t0);
        assert_eq!(b.available("u", t0), -10.0, "debt bounded by one burst");
        assert!(!b.has("u", t0));
        assert_eq!(b.wait("u", t0), Duration::from_millis(1100));
        assert!(b.has("u", t0 + Duration::from_millis(1100)));
    }
}
