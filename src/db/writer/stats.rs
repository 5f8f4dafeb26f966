//! What the writer counts as it works, read by `/metrics` and the cluster's
//! cost. Its own file: the run loop counts batches and jobs, the chain counts
//! notifications, and `db::Db` hands the counters out.

use std::sync::atomic::AtomicU64;

/// What the writer has done, for `/metrics` (and the cluster's cost).
#[derive(Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Jobs in them.
    pub jobs: AtomicU64,
    /// The most jobs one batch held.
    pub largest: AtomicU64,
    /// `pg_notify` payloads sent (one per ~7,800 bytes of a batch's events).
    pub notifications: AtomicU64,
}
