//! Per-user budgets for requests that make klav hold something for good (rooms):
//! a token bucket per user, kept in memory while it is not full.
//!
//! The per-connection rate limit does not bound these: more connections, or a
//! reconnect, would reset it. So the buckets are keyed by user and outlive the
//! user's connections, until they have refilled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
