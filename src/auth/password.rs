//! Password hashing on dedicated threads.
//!
//! argon2id takes tens of milliseconds of CPU by design. It never runs on the event
//! loop, and not on the database workers either: a login storm must not delay
//! message persistence. The pool is small (`KLAV_HASH_WORKERS`) and its queue
//! bounded; a full queue is answered with 503 rather than growing without limit.

use std::thread::JoinHandle;

use std::fmt;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::ticket::{QueueFull, Ticket};

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

/// The hashing threads, with two queues: logins (`Verify`) and everything else
/// (hashing for `/register`, re-hashing legacy passwords). A free thread always
/// takes a waiting login first, so however much registration work is queued, a
/// login waits at most for the hashes already running.
pub struct HashPool {
    logins: Sender<(Ticket, HashJob)>,
    others: Sender<(Ticket, HashJob)>,
    threads: Vec<JoinHandle<()>>,
}

impl HashPool {
    /// `deliver` hands each result back to whoever waits (the event loop's
    /// completion channel); the pool knows nothing of it.
    pub fn start(
        threads: usize,
        deliver: impl Fn(Ticket, HashOutcome) + Send + Clone + 'static,
    ) -> HashPool {
        let (logins, login_rx) = crossbeam_channel::bounded::<(Ticket, HashJob)>(QUEUE_CAPACITY);
        let (others, other_rx) = crossbeam_channel::bounded::<(Ticket, HashJob)>(QUEUE_CAPACITY);
        let threads = (0..threads)
            .map(|i| {
                let (login_rx, other_rx, deliver) =
                    (login_rx.clone(), other_rx.clone(), deliver.clone());
                std::thread::Builder::new()
                    .name(format!("klav-hash-{i}"))
                    .spawn(move || {
                        lower_priority();
                        while let Some((ticket, job)) = next_job(&login_rx, &other_rx) {
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
                            deliver(ticket, outcome);
                        }
                    })
                    .expect("spawn hashing thread")
            })
            .collect();
        HashPool {
            logins,
            others,
            threads,
        }
    }

    /// Queues without waiting; `Err` when the job's queue is full.
    pub fn submit(&self, ticket: Ticket, job: HashJob) -> Result<(), QueueFull> {
        let queue = match job {
            HashJob::Verify { .. } => &self.logins,
            HashJob::Hash { .. } | HashJob::Rehash { .. } => &self.others,
        };
        queue.try_send((ticket, job)).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }

    pub fn shutdown(self) {
        drop(self.logins);
        drop(self.others);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The next job, a waiting login first; `None` once both queues are closed and
/// empty.
fn next_job(
    logins: &Receiver<(Ticket, HashJob)>,
    others: &Receiver<(Ticket, HashJob)>,
) -> Option<(Ticket, HashJob)> {
    if let Ok(job) = logins.try_recv() {
        return Some(job);
    }
    // Both queues close together (at shutdown); then whichever reports it first
    // hands over to a blocking drain of the other.
    crossbeam_channel::select! {
        recv(logins) -> job => job.ok().or_else(|| others.recv().ok()),
        recv(others) -> job => job.ok().or_else(|| logins.recv().ok()),
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

/// Whether `password` matches a PHC string (any argon2 variant it names). A
/// string whose parameters are out of bounds ([`check_stored_hash`]) never
/// matches: verifying it is not attempted at all.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if check_parsed(&parsed).is_err() {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Largest memory a stored hash may ask for, in KiB: 64 MiB, the RFC 9106
/// low-memory profile and the default of argon2-cffi and passlib, so hashes made
/// by those libraries stay usable. Ours use 19 MiB.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// Most passes a stored hash may ask for (ours: 2; OWASP's profiles go up to 5).
pub const MAX_PASSES: u32 = 10;
/// Most lanes a stored hash may ask for (ours: 1; argon2-cffi: 4). Lanes are
/// computed one after another here, so they add no cost beyond memory × passes.
pub const MAX_LANES: u32 = 8;
/// Most total work, memory × passes in KiB: 64 MiB × 3 passes, about five times
/// the cost of one of our own hashes. Each parameter within its bound is not
/// enough: 64 MiB × 10 passes would hold a hashing thread for most of a second.
pub const MAX_COST_KIB_PASSES: u64 = 64 * 1024 * 3;

/// Why a stored PHC string is not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredHashError {
    /// It does not parse as an argon2 PHC string.
    Malformed,
    /// Its parameters are beyond the bounds above: verifying it would take too much
    /// memory or time (a crafted row could abort the process or stall logins).
    OutOfBounds {
        memory_kib: u32,
        passes: u32,
        lanes: u32,
    },
}

impl fmt::Display for StoredHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredHashError::Malformed => f.write_str("not a valid argon2 PHC string"),
            StoredHashError::OutOfBounds {
                memory_kib,
                passes,
                lanes,
            } => write!(
                f,
                "argon2 parameters m={memory_kib},t={passes},p={lanes} are out of bounds \
                 (m <= {MAX_MEMORY_KIB} KiB, t <= {MAX_PASSES}, p <= {MAX_LANES}, \
                 m*t <= {MAX_COST_KIB_PASSES})"
            ),
        }
    }
}

impl std::error::Error for StoredHashError {}

/// Checks that a stored argon2 PHC string can be verified at a bounded cost,
/// without verifying anything (cheap: it only parses the string).
pub fn check_stored_hash(phc: &str) -> Result<(), StoredHashError> {
    let parsed = PasswordHash::new(phc).map_err(|_| StoredHashError::Malformed)?;
    check_parsed(&parsed)
}

fn check_parsed(parsed: &PasswordHash<'_>) -> Result<(), StoredHashError> {
    Algorithm::try_from(parsed.algorithm).map_err(|_| StoredHashError::Malformed)?;
    let params = Params::try_from(parsed).map_err(|_| StoredHashError::Malformed)?;
    let (memory_kib, passes, lanes) = (params.m_cost(), params.t_cost(), params.p_cost());
    if memory_kib > MAX_MEMORY_KIB
        || passes > MAX_PASSES
        || lanes > MAX_LANES
        || memory_kib as u64 * passes as u64 > MAX_COST_KIB_PASSES
    {
        return Err(StoredHashError::OutOfBounds {
            memory_kib,
            passes,
            lanes,
        });
    }
    Ok(())
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

    /// A PHC string with the given parameters and a real hash of "pw" (made with
    /// small parameters, so the test stays fast; only the check reads them).
    fn with_params(m: u32, t: u32, p: u32) -> String {
        let h = hash_password("pw");
        let (_, rest) = h.split_once("$m=").unwrap();
        let (_, tail) = rest.split_once('$').unwrap();
        format!("$argon2id$v=19$m={m},t={t},p={p}${tail}")
    }

    #[test]
    fn stored_hash_bounds() {
        assert_eq!(check_stored_hash(&hash_password("pw")), Ok(()));
        // argon2-cffi / passlib defaults.
        assert_eq!(check_stored_hash(&with_params(65536, 3, 4)), Ok(()));
        for (m, t, p) in [
            (u32::MAX, 1, 1),
            (65536, 200, 1),
            (65537, 1, 1),
            (8192, 11, 1),
            (8192, 1, 9),
            (65536, 4, 1),
        ] {
            let phc = with_params(m, t, p);
            assert!(
                matches!(
                    check_stored_hash(&phc),
                    Err(StoredHashError::OutOfBounds { .. })
                ),
                "{phc}"
            );
            assert!(!verify_password("pw", &phc), "never verified: {phc}");
        }
        assert_eq!(
            check_stored_hash("$argon2id$v=19$m=lots,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"),
            Err(StoredHashError::Malformed)
        );
        assert_eq!(
            check_stored_hash("$argon2x$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"),
            Err(StoredHashError::Malformed)
        );
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
