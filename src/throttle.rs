//! Budgets of the account endpoints, kept on the event loop.
//!
//! Failed logins ([`LoginThrottle`]) are counted per (username, client address):
//! past a few free failures each further one doubles a wait, so guessing one
//! account's password from one address slows to one try per window, while the
//! account's owner, from their own address, is never locked out by failures from
//! elsewhere. A second count per client address, across usernames, stops one
//! address from spraying many accounts. Only valid usernames become keys, and the
//! number of keys is bounded.
//!
//! Registrations ([`RegisterBudget`]) cost a database read and, for a new name, an
//! argon2 hash: each client address has a token bucket of them, and only a few
//! registration hashes may be queued or running at once, so registration can never
//! take the hashing threads away from logins.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::client_addr::budget_key;
use crate::config::Config;

/// Most keys each budget map holds; past it the oldest tenth is forgotten.
pub const MAX_KEYS: usize = 100_000;
/// Registration hashes that may be queued or running per hashing thread; past
/// it `/register` answers 503 with `Retry-After`.
pub const REGISTER_HASHES_PER_THREAD: usize = 32;
/// The first wait once a (username, address) pair has used its free failures.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Failures of one (username, address) pair.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    last: Instant,
}

/// Failures from one address, any usernames, in a window.
#[derive(Clone, Copy, Debug)]
struct Window {
    failures: u32,
    start: Instant,
}

pub struct LoginThrottle {
    pairs: HashMap<(String, IpAddr), Backoff>,
    addrs: HashMap<IpAddr, Window>,
    /// Failures a pair has before the backoff starts.
    free_failures: u32,
    max_per_addr: u32,
    /// The per-address window, the longest backoff, and how long a quiet pair is
    /// remembered.
    window: Duration,
    /// Users whose stored hash was refused as unusable, so that it is logged once
    /// rather than at every attempt (bounded like the other maps).
    reported: HashSet<String>,
}

impl LoginThrottle {
    pub fn new(free_failures: u32, max_per_addr: u32, window: Duration) -> LoginThrottle {
        LoginThrottle {
            pairs: HashMap::new(),
            addrs: HashMap::new(),
            free_failures,
            max_per_addr,
            window,
            reported: HashSet::new(),
        }
    }

    fn wait_of(&self, b: &Backoff) -> Duration {
        if b.failures <= self.free_failures {
            return Duration::ZERO;
        }
        let doublings = (b.failures - self.free_failures - 1).min(20);
        (FIRST_BACKOFF * (1u32 << doublings)).min(self.window)
    }

    /// How long the caller must wait, if it is throttled now. `user` must be a
    /// valid username (the caller checks it before anything else).
    pub fn retry_after(&self, user: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let addr = budget_key(addr);
        let pair = self
            .pairs
            .get(&(user.to_string(), addr))
            .and_then(|b| (b.last + self.wait_of(b)).checked_duration_since(now))
            .filter(|d| !d.is_zero());
        let by_addr = self.addrs.get(&addr).and_then(|w| {
            let end = w.start + self.window;
            (w.failures >= self.max_per_addr && now < end).then(|| end - now)
        });
        pair.max(by_addr)
    }

    /// Records a failed login (`user` valid, as for [`LoginThrottle::retry_after`]).
    pub fn failed(&mut self, user: &str, addr: IpAddr, now: Instant) {
        let addr = budget_key(addr);
        let window = self.window;
        let key = (user.to_string(), addr);
        if !self.pairs.contains_key(&key) && self.pairs.len() >= MAX_KEYS {
            self.make_room(now);
        }
        let b = self.pairs.entry(key).or_insert(Backoff {
            failures: 0,
            last: now,
        });
        if now >= b.last + window {
            b.failures = 0;
        }
        b.failures = b.failures.saturating_add(1);
        b.last = now;

        if !self.addrs.contains_key(&addr) && self.addrs.len() >= MAX_KEYS {
            self.make_room(now);
        }
        let w = self.addrs.entry(addr).or_insert(Window {
            failures: 0,
            start: now,
        });
        if now >= w.start + window {
            *w = Window {
                failures: 0,
                start: now,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }

    /// A successful login clears its pair's failures (not its address's: those
    /// may be guesses at other accounts).
    pub fn succeeded(&mut self, user: &str, addr: IpAddr) {
        self.pairs.remove(&(user.to_string(), budget_key(addr)));
    }

    /// Whether an unusable stored hash of `user` should be logged now: the first
    /// time only.
    pub fn first_report(&mut self, user: &str) -> bool {
        if self.reported.contains(user) {
            return false;
        }
        if self.reported.len() >= MAX_KEYS {
            self.reported.clear();
        }
        self.reported.insert(user.to_string())
    }

    /// Keys held (for `/metrics`).
    pub fn keys(&self) -> usize {
        self.pairs.len() + self.addrs.len()
    }

    /// Forgets what no longer matters (called once a second).
    pub fn sweep(&mut self, now: Instant) {
        let window = self.window;
        self.pairs.retain(|_, b| now < b.last + window);
        self.addrs.retain(|_, w| now < w.start + window);
    }

    /// At the key cap: sweep, and if that is not enough, forget the oldest tenth
    /// of each full map (amortised: this runs once per tenth of the cap).
    fn make_room(&mut self, now: Instant) {
        self.sweep(now);
        if self.pairs.len() >= MAX_KEYS {
            let cut = nth_oldest(self.pairs.values().map(|b| b.last));
            self.pairs.retain(|_, b| b.last > cut);
        }
        if self.addrs.len() >= MAX_KEYS {
            let cut = nth_oldest(self.addrs.values().map(|w| w.start));
            self.addrs.retain(|_, w| w.start > cut);
        }
    }
}

/// The time below which the oldest tenth of `times` lies.
fn nth_oldest(times: impl Iterator<Item = Instant>) -> Instant {
    let mut all: Vec<Instant> = times.collect();
    let n = all.len() / 10;
    *all.select_nth_unstable(n).1
}

/// A per-address token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a registration is refused before any work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterRefusal {
    /// The client address used its budget: 429, retry after this long.
    AddressBudget(Duration),
    /// Enough registration hashes are queued or running: 503, retry shortly.
    HashingBusy,
}

/// Token buckets keyed by client address (IPv6 per /64), at most [`MAX_KEYS`]
/// of them: full buckets are forgotten by `sweep`, and past the bound the oldest
/// tenth goes.
pub struct AddrBuckets {
    buckets: HashMap<IpAddr, Bucket>,
    burst: f64,
    per_sec: f64,
}

impl AddrBuckets {
    /// `burst` tokens per address, refilled at `per_sec`.
    pub fn new(burst: f64, per_sec: f64) -> AddrBuckets {
        AddrBuckets {
            buckets: HashMap::new(),
            burst,
            per_sec,
        }
    }

    /// Takes one token from the address's bucket, or says how long until one is
    /// there (whole seconds, at least one).
    pub fn take(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let addr = budget_key(addr);
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= MAX_KEYS {
            self.sweep(now);
            if self.buckets.len() >= MAX_KEYS {
                let cut = nth_oldest(self.buckets.values().map(|b| b.at));
                self.buckets.retain(|_, b| b.at > cut);
            }
        }
        let (burst, per_sec) = (self.burst, self.per_sec);
        let b = self.buckets.entry(addr).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens =
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / per_sec;
            Err(Duration::from_secs_f64(wait.ceil().max(1.0)))
        }
    }

    /// Addresses held (for `/metrics`).
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets full buckets (called once a second).
    pub fn sweep(&mut self, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst
        });
    }
}

pub struct RegisterBudget {
    addrs: AddrBuckets,
    /// Registration hashes queued or running.
    hashing: usize,
    max_hashing: usize,
    /// Registration hashes ever started (for `/metrics`).
    pub hashes_started: u64,
}

impl RegisterBudget {
    /// `per_window` registrations per address per `window` (also the burst);
    /// at most `max_hashing` registration hashes queued or running.
    pub fn new(per_window: u32, window: Duration, max_hashing: usize) -> RegisterBudget {
        RegisterBudget {
            addrs: AddrBuckets::new(per_window as f64, per_window as f64 / window.as_secs_f64()),
            hashing: 0,
            max_hashing: max_hashing.max(1),
            hashes_started: 0,
        }
    }

    /// [`REGISTER_HASHES_PER_THREAD`] registration hashes per hashing thread may
    /// wait or run. Logins are served first whatever waits, so this bounds how
    /// long a registration can wait (about a second), not how long a login does.
    pub fn from_config(config: &Config) -> RegisterBudget {
        RegisterBudget::new(
            config.register_per_addr,
            config.register_window,
            REGISTER_HASHES_PER_THREAD * config.hash_workers,
        )
    }

    /// Takes one registration from the address's bucket.
    pub fn admit(&mut self, addr: IpAddr, now: Instant) -> Result<(), RegisterRefusal> {
        self.addrs
            .take(addr, now)
            .map_err(RegisterRefusal::AddressBudget)
    }

    /// Reserves a hashing slot for a registration; the caller submits the hash
    /// and calls [`RegisterBudget::hash_done`] when its outcome arrives.
    pub fn start_hash(&mut self) -> Result<(), RegisterRefusal> {
        if self.hashing >= self.max_hashing {
            return Err(RegisterRefusal::HashingBusy);
        }
        self.hashing += 1;
        self.hashes_started += 1;
        Ok(())
    }

    pub fn hash_done(&mut self) {
        self.hashing = self.hashing.saturating_sub(1);
    }

    /// Addresses held (for `/metrics`).
    pub fn keys(&self) -> usize {
        self.addrs.keys()
    }

    /// Forgets full buckets (called once a second).
    pub fn sweep(&mut self, now: Instant) {
        self.addrs.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_per_user_and_address() {
        let mut t = LoginThrottle::new(2, 100, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        t.failed("x", a, now);
        t.failed("x", a, now);
        assert!(t.retry_after("x", a, now).is_none(), "two free failures");
        t.failed("x", a, now);
        assert_eq!(t.retry_after("x", a, now), Some(Duration::from_secs(1)));
        assert!(t.retry_after("x", b, now).is_none(), "another address");
        assert!(t.retry_after("y", a, now).is_none(), "another user");
        t.failed("x", a, now);
        assert_eq!(t.retry_after("x", a, now), Some(Duration::from_secs(2)));
        for _ in 0..30 {
            t.failed("x", a, now);
        }
        assert_eq!(
            t.retry_after("x", a, now),
            Some(Duration::from_secs(60)),
            "capped at the window"
        );
        t.succeeded("x", a);
        assert!(t.retry_after("x", a, now).is_none());
        t.failed("x", b, now);
        let later = now + Duration::from_secs(61);
        t.sweep(later);
        assert_eq!(t.keys(), 0);
    }

    #[test]
    fn per_address_across_users() {
        let mut t = LoginThrottle::new(5, 3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for u in ["u1", "u2", "u3"] {
            t.failed(u, a, now);
        }
        assert!(t.retry_after("u4", a, now).is_some());
        assert!(t
            .retry_after("u4", "10.0.0.9".parse().unwrap(), now)
            .is_none());
        assert!(t
            .retry_after("u4", a, now + Duration::from_secs(60))
            .is_none());
    }

    #[test]
    fn keys_are_bounded() {
        let mut t = LoginThrottle::new(5, u32::MAX, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            t.failed(&format!("u{i}"), a, now + Duration::from_millis(i as u64));
        }
        assert!(t.pairs.len() <= MAX_KEYS);
        assert!(t.first_report("z") && !t.first_report("z"));
    }

    #[test]
    fn register_bucket_and_hash_slots() {
        let mut r = RegisterBudget::new(2, Duration::from_secs(60), 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert!(r.admit(a, now).is_ok());
        assert!(r.admit(a, now).is_ok());
        assert_eq!(
            r.admit(a, now),
            Err(RegisterRefusal::AddressBudget(Duration::from_secs(30)))
        );
        assert!(r.admit("10.0.0.2".parse().unwrap(), now).is_ok());
        assert!(
            r.admit(a, now + Duration::from_secs(30)).is_ok(),
            "refilled"
        );
        assert!(r.start_hash().is_ok());
        assert_eq!(r.start_hash(), Err(RegisterRefusal::HashingBusy));
        r.hash_done();
        assert!(r.start_hash().is_ok());
        r.sweep(now + Duration::from_secs(3600));
        assert_eq!(r.keys(), 0);
    }
}
