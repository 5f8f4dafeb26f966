//! Why a payload is dropped, and how many were dropped for each reason.
//!
//! Apart because the reasons outlive the check: the inbox decides, the
//! listener thread counts, and the loop reads the counts for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bus payloads the listener thread dropped, by reason: counted there, read
/// by the loop for `/metrics`.
#[derive(Default)]
pub struct BusDropped([AtomicU64; Refused::ALL.len()]);

impl BusDropped {
    pub fn count(&self, why: Refused) {
        self.0[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, why: Refused) -> u64 {
        self.0[why.index()].load(Ordering::Relaxed)
    }
}

/// Why a payload was dropped (the label is the `/metrics` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its MAC is not the bus key's: forged, or from a node with another
    /// `JWT_SECRET`.
    BadMac,
    /// Its sender's sequence number was taken already, or is older than the
    /// replay window.
    Replayed,
    /// Signed more than [`MAX_SKEW`](crate::cluster::bus::MAX_SKEW) away from this
    /// node's clock.
    Stale,
    /// Signed, but naming ids, names or texts no node would send.
    Implausible,
    /// Not a payload of this format (another program, an older node).
    Malformed,
}

impl Refused {
    pub const ALL: [Refused; 5] = [
        Refused::BadMac,
        Refused::Replayed,
        Refused::Stale,
        Refused::Implausible,
        Refused::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::BadMac => "bad_mac",
            Refused::Replayed => "replayed",
            Refused::Stale => "stale",
            Refused::Implausible => "implausible",
            Refused::Malformed => "malformed",
        }
    }

    /// Its place in [`Refused::ALL`] (counters are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }
}
