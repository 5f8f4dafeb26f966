//! One module per scenario. Each builds its users and rooms, runs its drivers on the
//! client threads and turns what they counted into a [`Report`](crate::Report).

pub(crate) mod abuse;
pub(crate) mod chat;
pub(crate) mod connect;
pub(crate) mod history;
pub(crate) mod login;
pub(crate) mod presence;

use crate::report::Counts;

pub(crate) fn bump(map: &mut Counts, key: impl Into<String>) {
    *map.entry(key.into()).or_insert(0) += 1;
}

pub(crate) fn merge_counts(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

/// Per-second rate over `secs` (0 when nothing was measured).
pub(crate) fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}
