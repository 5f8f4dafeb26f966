//! Password hashing on dedicated threads.
//!
//! argon2id takes tens of milliseconds of CPU by design. It never runs on the event
//! loop, and not on the database workers either: a login storm must not delay
//! message persistence. The pool is small (`KLAV_HASH_WORKERS`) and its queue
//! bounded; a full queue is answered with 503 rather than growing without limit.

use std::thread::JoinHandle;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use crossbeam_channel::{Sender, TrySendError};

use crate::db::{Completion, CompletionSink, QueueFull, Ticket};

/// Work for a hashing thread.
pub enum HashJob {
    /// Hash a new password (register, or re-hashing a legacy plain-text one).
    Hash { password: String },
    /// Check a password against a stored PHC string.
    Verify { password: String, phc: String },
    /// Hash a legacy plain-text password that just matched, to store in its place.
    Rehash { username: String, legacy: String },
}

/// What came back from a [`HashJob`].
#[derive(Debug)]
pub enum HashOutcome {
    Hashed(String),
    Verified(bool),
    Rehashed {
        username: String,
        legacy: String,
        hash: String,
    },
}

const QUEUE_CAPACITY: usize = 1024;

pub struct HashPool {
    tx: Sender<(Ticket, HashJob)>,
    threads: Vec<JoinHandle<()>>,
}

impl HashPool {
    pub fn start(threads: usize, sink: CompletionSink) -> HashPool {
        let (tx, rx) = crossbeam_channel::bounded::<(Ticket, HashJob)>(QUEUE_CAPACITY);
        let threads = (0..threads)
            .map(|i| {
                let (rx, sink) = (rx.clone(), sink.clone());
                std::thread::Builder::new()
                    .name(format!("klav-hash-{i}"))
                    .spawn(move || {
                        lower_priority();
                        for (ticket, job) in rx.iter() {
                            let outcome = match job {
                                HashJob::Hash { password } => {
                                    HashOutcome::Hashed(hash_password(&password))
                                }
                                HashJob::Verify { password, phc } => {
                                    HashOutcome::Verified(verify_password(&password, &phc))
                                }
                                HashJob::Rehash { username, legacy } => HashOutcome::Rehashed {
                                    hash: hash_password(&legacy),
                                    username,
                                    legacy,
                                },
                            };
                            sink.send(Completion::Hash(ticket, outcome));
                        }
                    })
                    .expect("spawn hashing thread")
            })
            .collect();
        HashPool { tx, threads }
    }

    /// Queues without waiting; `Err` when the queue is full.
    pub fn submit(&self, ticket: Ticket, job: HashJob) -> Result<(), QueueFull> {
        self.tx.try_send((ticket, job)).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }

    pub fn shutdown(self) {
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Hashing is the one CPU-heavy job, and a login burst should slow logins, not
/// chat: the hashing threads run at nice 10, so under contention the scheduler
/// favours the event loop and the database threads.
fn lower_priority() {
    // SAFETY: setpriority on this thread's own id (Linux applies nice per thread).
    #[cfg(target_os = "linux")]
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// An argon2id PHC string with a fresh random salt (default parameters:
/// 19 MiB, 2 passes, 1 lane, the OWASP recommendation).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// Whether `password` matches a PHC string (any argon2 variant it names).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Whether a stored password field is a hash (else it is a legacy plain text).
pub fn is_hashed(stored: &str) -> bool {
    stored.starts_with("$argon2")
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("pw");
        assert!(h.starts_with("$argon2id$"));
        assert!(is_hashed(&h));
        assert!(verify_password("pw", &h));
        assert!(!verify_password("pW", &h));
        assert!(!verify_password("pw", "not a hash"));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
