//! Waiting for something the server does in its own time (a row deleted, a
//! counter moved, a process gone): one loop, so that every test asks first,
//! then checks the clock, then sleeps.

use std::time::{Duration, Instant};

use crate::harness::WAIT;

/// Asks `check` every `every` until it gives `Some`, for at most `within`: what
/// it gave, or `None` once the time is up (it is always asked at least once).
pub fn poll<T>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Asks `check` every `every` until it gives `Ok`, and returns what it gave;
/// once `within` has passed, panics with its last `Err`, which says what never
/// happened.
pub fn eventually<T>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let mut last = String::new();
    poll(within, every, || match check() {
        Ok(v) => Some(v),
        Err(why) => {
            last = why;
            None
        }
    })
    .unwrap_or_else(|| panic!("{last} (waited {within:?})"))
}

/// Waits (every 20 ms, at most [`WAIT`]) until `done`; whether it came.
pub fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    poll(WAIT, Duration::from_millis(20), || done().then_some(())).is_some()
}
