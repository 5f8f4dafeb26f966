//! One module per scenario. Each builds its users and rooms, runs its drivers on the
//! client threads and turns what they counted into a [`Report`].

pub(crate) mod abuse;
pub(crate) mod chat;
pub(crate) mod connect;
pub(crate) mod dm;
pub(crate) mod history;
pub(crate) mod login;
pub(crate) mod presence;
pub(crate) mod rooms;

use std::time::Instant;

use crate::error::BenchError;
use crate::options::{Options, Scenario};
use crate::report::{Counts, Report, SetupReport};
use crate::run::{raise_nofile_limit, Server};
use crate::users::Provisioned;

/// Runs one scenario against a live server and reports what happened.
pub fn run(opts: &Options) -> Result<Report, BenchError> {
    raise_nofile_limit();
    let server = Server::new(opts)?;
    let mut report = match &opts.scenario {
        Scenario::Chat(c) => chat::run(&server, c, false)?,
        Scenario::Fanout(c) => chat::run(&server, c, true)?,
        Scenario::Dm(d) => dm::run(&server, d)?,
        Scenario::Connect(c) => connect::run(&server, c)?,
        Scenario::History(h) => history::run(&server, h)?,
        Scenario::Login(l) => login::run(&server, l)?,
        Scenario::Presence(p) => presence::run(&server, p)?,
        Scenario::Abuse(a) => abuse::run(&server, a)?,
    };
    report.scenario = opts.scenario.name().to_string();
    report.elapsed_secs = server.base.elapsed().as_secs_f64();
    report.setup.user_prefix = server.prefix.clone();
    Ok(report)
}

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

/// The setup section of a report: `users` users as `prov` provisioned them, and the
/// time from the run's base to `start` (0 when it never started).
pub(crate) fn setup_report(
    server: &Server,
    users: usize,
    prov: &Provisioned,
    start: Option<Instant>,
) -> SetupReport {
    SetupReport {
        users: users as u64,
        registered: prov.created,
        already_registered: prov.already,
        logins: prov.logins,
        tokens_minted: prov.minted,
        setup_secs: start
            .map(|s| s.saturating_duration_since(server.base).as_secs_f64())
            .unwrap_or(0.0),
        ..Default::default()
    }
}
