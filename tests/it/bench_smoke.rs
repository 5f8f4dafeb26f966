//! Short runs of the load generator against a real server: every delivery
//! accounted for. They assert correctness (nothing missing, duplicated or out of
//! order; every connection accepted), never speed.

use std::time::Duration;

use klav_bench::{AbuseOptions, ChatOptions, ConnectOptions, DmOptions, Options, Scenario};

use crate::harness::*;

fn options(s: &TestServer, scenario: Scenario) -> Options {
    Options {
        addr: s.addr.to_string(),
        threads: 2,
        duration: Duration::from_secs(2),
        drain: Duration::from_secs(5),
        jwt_secret: Some(SECRET.into()),
        scenario,
        ..Default::default()
    }
}

#[test]
fn chat_smoke_run_loses_nothing() {
    let s = unthrottled_server();
    let report = klav_bench::run(&options(
        &s,
        Scenario::Chat(ChatOptions {
            rooms: 4,
            members: 5,
            senders: 2,
            window: 4,
            ..Default::default()
        }),
    ))
    .expect("the chat run completes");
    let m = report.messages.as_ref().expect("a message report");
    assert!(m.acked > 0, "{report}");
    assert_eq!(m.missing, 0, "{report}");
    assert_eq!(m.duplicates, 0, "{report}");
    assert_eq!(m.order_violations, 0, "{report}");
    assert!(report.is_clean(), "{report}");
    // Every acknowledged message is in the database.
    let stored: i64 = s.count("SELECT count(*) FROM chat_logs WHERE kind = 'msg'", &[]);
    assert!(
        stored as u64 >= m.acked,
        "{stored} stored, {} acked",
        m.acked
    );
}

/// The v2 chat: a `client_id` on every message and `typing` from every member;
/// nothing lost, every message stored once with its key, typing forwarded.
#[test]
fn chat_with_client_ids_and_typing_loses_nothing() {
    let s = unthrottled_server();
    let report = klav_bench::run(&options(
        &s,
        Scenario::Chat(ChatOptions {
            rooms: 2,
            members: 4,
            senders: 2,
            window: 4,
            client_ids: true,
            typing_every: Some(Duration::from_millis(500)),
            ..Default::default()
        }),
    ))
    .expect("the chat run completes");
    let m = report.messages.as_ref().expect("a message report");
    assert!(m.acked > 0, "{report}");
    assert_eq!(m.missing, 0, "{report}");
    assert_eq!(m.duplicates, 0, "{report}");
    assert!(report.is_clean(), "{report}");
    assert!(m.typing_sent > 0 && m.typing_received > 0, "{report}");
    let (stored, keys): (i64, i64) = {
        let r = s
            .db()
            .query_one(
                "SELECT count(*), count(DISTINCT client_id) FROM chat_logs WHERE kind = 'msg'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(stored, keys, "one entry per client_id");
    assert!(stored as u64 >= m.acked);
}

/// DMs between the members of small rooms, one member of each offline: every DM
/// to a connected member answered `DELIVERED` and received once, in order; every DM
/// to the offline one answered `QUEUED` and waiting in its queue.
#[test]
fn dm_smoke_run_loses_nothing() {
    let s = unthrottled_server();
    let report = klav_bench::run(&options(
        &s,
        Scenario::Dm(DmOptions {
            rooms: 3,
            members: 4,
            offline: 1,
            window: 4,
            client_ids: true,
            ..Default::default()
        }),
    ))
    .expect("the dm run completes");
    let m = report.messages.as_ref().expect("a message report");
    assert!(m.acked > 0 && m.queued > 0, "{report}");
    assert_eq!(m.acked + m.queued, m.sent, "{report}");
    assert_eq!(m.deliveries_received, m.acked, "{report}");
    assert_eq!(m.missing, 0, "{report}");
    assert_eq!(m.duplicates, 0, "{report}");
    assert_eq!(m.order_violations, 0, "{report}");
    assert!(report.is_clean(), "{report}");
    // Every DM is logged once, under its key.
    let (stored, keys): (i64, i64) = {
        let r = s
            .db()
            .query_one(
                "SELECT count(*), count(DISTINCT client_id) FROM chat_logs WHERE kind = 'dm'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(stored, keys, "one entry per client_id");
    assert_eq!(stored as u64, m.sent, "{report}");
    // The offline members' queues hold DMs (at most 100 each).
    let queued = s.count("SELECT count(*) FROM klav_offline_dms", &[]);
    assert!(queued > 0 && queued <= 300, "{queued} queued");
}

#[test]
fn connect_smoke_run_accepts_everyone() {
    let s = unthrottled_server();
    let report = klav_bench::run(&options(
        &s,
        Scenario::Connect(ConnectOptions {
            connections: 300,
            users: Some(10),
            hold: Duration::from_secs(1),
        }),
    ))
    .expect("the connect run completes");
    let c = report.connections.as_ref().expect("a connection report");
    assert_eq!(c.opened, 300, "{report}");
    assert!(c.failed.is_empty(), "{report}");
    assert!(report.is_clean(), "{report}");
}

/// A tiny run of every attack beside a normal client: it completes, every attack
/// is reported, the normal client is served throughout, and the server is alive
/// and serving afterwards. (Its numbers are measured with the release build, see
/// docs/performance.md; here only that it runs against the real server.)
#[test]
fn abuse_smoke_run_leaves_the_server_serving() {
    let s = TestServer::start();
    let report = klav_bench::run(&options(
        &s,
        Scenario::Abuse(AbuseOptions {
            abusers: 3,
            settle: Duration::from_millis(300),
            filled_rooms: 4,
            filled_entries: 3,
            ..Default::default()
        }),
    ))
    .expect("the abuse run completes");
    let a = report.abuse.as_ref().expect("an abuse report");
    assert_eq!(
        a.attacks.len(),
        klav_bench::options::Attack::ALL.len(),
        "{report}"
    );
    assert!(a.attacks.values().all(|r| r.attempted == 3), "{report}");
    let normal = report
        .requests
        .as_ref()
        .expect("the normal client's messages");
    assert!(normal.ok > 0, "{report}");
    assert!(a.health.ok > 0, "{report}");
    assert_eq!(s.http("GET", "/health", None).status, 200);
}
