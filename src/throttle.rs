//! Failed-login throttling: after too many failures in a window, for one username
//! or from one client address, further logins are answered 429 with `Retry-After`
//! until the window ends. This keeps password guessing slow and keeps a guessing
//! client from filling the hashing queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub struct LoginThrottle {
    /// Key (`u:<name>` or `a:<ip>`) → failures in the window and its start.
    failures: HashMap<String, (u32, Instant)>,
    max_per_user: u32,
    max_per_addr: u32,
    window: Duration,
}

impl LoginThrottle {
    pub fn new(max_per_user: u32, max_per_addr: u32, window: Duration) -> LoginThrottle {
        LoginThrottle {
            failures: HashMap::new(),
            max_per_user,
            max_per_addr,
            window,
        }
    }

    /// How long the caller must wait, if it is throttled now.
    pub fn retry_after(&self, user: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let over = |key: String, max: u32| {
            self.failures.get(&key).and_then(|(n, start)| {
                let end = *start + self.window;
                (*n >= max && now < end).then(|| end - now)
            })
        };
        let u = over(format!("u:{user}"), self.max_per_user);
        let a = over(format!("a:{addr}"), self.max_per_addr);
        u.max(a)
    }

    pub fn failed(&mut self, user: &str, addr: IpAddr, now: Instant) {
        for key in [format!("u:{user}"), format!("a:{addr}")] {
            let e = self.failures.entry(key).or_insert((0, now));
            if now >= e.1 + self.window {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    /// A successful login clears its username's failures.
    pub fn succeeded(&mut self, user: &str) {
        self.failures.remove(&format!("u:{user}"));
    }

    /// Forgets windows that have ended (called once a second).
    pub fn sweep(&mut self, now: Instant) {
        let window = self.window;
        self.failures.retain(|_, (_, start)| now < *start + window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_by_user_and_address() {
        let mut t = LoginThrottle::new(2, 3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        t.failed("x", a, now);
        assert!(t.retry_after("x", a, now).is_none());
        t.failed("x", a, now);
        assert!(
            t.retry_after("x", b, now).is_some(),
            "by username, from anywhere"
        );
        assert!(t.retry_after("y", b, now).is_none());
        t.failed("y", a, now);
        assert!(
            t.retry_after("z", a, now).is_some(),
            "by address, for any username"
        );
        let later = now + Duration::from_secs(61);
        assert!(t.retry_after("x", a, later).is_none(), "the window ends");
        t.sweep(later);
        assert!(t.failures.is_empty());
        t.failed("x", b, later);
        t.succeeded("x");
        t.failed("x", b, later);
        assert!(t.retry_after("x", a, later).is_none());
    }
}
