//! The bench end to end against an in-process stand-in server: every scenario runs,
//! counts what it should, and catches injected faults.

mod fake_server;

use std::time::Duration;

use fake_server::{FakeServer, Faults};
use klav_bench::{
    run, AbuseOptions, Attack, ChatOptions, ConnectOptions, HistoryOptions, LoginOptions, Options,
    PresenceOptions, Scenario,
};

fn opts(server: &FakeServer, scenario: Scenario) -> Options {
    Options {
        addr: server.addr(),
        duration: Duration::from_millis(800),
        drain: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        setup_timeout: Duration::from_secs(20),
        threads: 2,
        register_concurrency: 4,
        scenario,
        ..Options::default()
    }
}

#[test]
fn chat_closed_loop_is_clean_and_counts_every_delivery() {
    let server = FakeServer::start(Faults::default());
    let o = opts(
        &server,
        Scenario::Chat(ChatOptions {
            rooms: 3,
            members: 4,
            senders: 2,
            window: 2,
            ..Default::default()
        }),
    );
    let r = run(&o).expect("run");
    let m = r.messages.as_ref().unwrap();
    assert!(r.is_clean(), "{r}");
    assert!(m.acked > 10, "{r}");
    assert_eq!(m.acked, m.sent, "{r}");
    assert_eq!(m.deliveries_expected, m.acked * 4, "{r}");
    assert_eq!(m.deliveries_received, m.deliveries_expected, "{r}");
    assert_eq!(r.setup.users, 12);
    assert_eq!(r.setup.registered, 12);
    assert_eq!(r.setup.logins, 12);
    assert_eq!(r.connections.as_ref().unwrap().opened, 12);
    assert!(r.latency["delivery"].count > 0);
    assert!(r.latency["ack"].count > 0);
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["messages"]["missing"], 0);
    assert_eq!(json["scenario"], "chat");
}

#[test]
fn chat_open_loop_with_minted_tokens_keeps_the_rate() {
    let server = FakeServer::start(Faults::default());
    let mut o = opts(
        &server,
        Scenario::Chat(ChatOptions {
            rooms: 2,
            members: 3,
            senders: 2,
            rate: Some(200.0),
            msg_size: 64,
            ..Default::default()
        }),
    );
    o.jwt_secret = Some("secret".into());
    o.duration = Duration::from_secs(1);
    let r = run(&o).expect("run");
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.setup.tokens_minted, 6);
    assert_eq!(r.setup.logins, 0);
    assert_eq!(server.logins.load(std::sync::atomic::Ordering::Relaxed), 0);
    let m = r.messages.as_ref().unwrap();
    // 200/s for 1 s, paced: close to 200 sent, not a burst of everything at once.
    assert!((150..=210).contains(&m.sent), "{r}");
    assert!(m.sent_per_sec > 150.0 && m.sent_per_sec < 210.0, "{r}");
}

#[test]
fn missing_and_duplicate_deliveries_are_caught() {
    let server = FakeServer::start(Faults {
        drop_every: Some(7),
        duplicate_every: Some(5),
        ..Default::default()
    });
    let mut o = opts(
        &server,
        Scenario::Fanout(ChatOptions {
            rooms: 1,
            members: 6,
            senders: 1,
            ..Default::default()
        }),
    );
    o.drain = Duration::from_millis(500);
    let r = run(&o).expect("run");
    eprintln!("{r}");
    let m = r.messages.as_ref().unwrap();
    assert!(!r.is_clean());
    assert!(m.missing > 0, "{r}");
    assert!(m.duplicates > 0, "{r}");
    assert_eq!(m.order_violations, 0, "{r}");
    assert_eq!(m.deliveries_expected - m.deliveries_received, m.missing);
    // Every 7th non-echo delivery dropped: about a seventh of the non-echo deliveries.
    let non_echo = m.acked * 5;
    assert!(
        m.missing * 7 >= non_echo - 7 && m.missing * 7 <= non_echo + 7,
        "{r}"
    );
}

#[test]
fn rate_limited_messages_are_failures_not_missing() {
    let server = FakeServer::start(Faults {
        rate_limit_every: Some(4),
        ..Default::default()
    });
    let mut o = opts(
        &server,
        Scenario::Chat(ChatOptions {
            rooms: 1,
            members: 3,
            senders: 1,
            ..Default::default()
        }),
    );
    o.backoff = Duration::from_millis(1);
    let r = run(&o).expect("run");
    let m = r.messages.as_ref().unwrap();
    let limited = m.failed.get("RATE_LIMITED").copied().unwrap_or(0);
    assert!(limited > 0, "{r}");
    assert_eq!(m.missing, 0, "{r}");
    assert_eq!(m.acked + limited, m.sent, "{r}");
}

#[test]
fn connect_holds_connections_and_reports_refusals() {
    let server = FakeServer::start(Faults::default());
    let mut o = opts(
        &server,
        Scenario::Connect(ConnectOptions {
            connections: 150,
            users: Some(3),
            hold: Duration::from_millis(300),
        }),
    );
    o.jwt_secret = Some("secret".into());
    o.server_pid = Some(std::process::id());
    let r = run(&o).expect("run");
    let c = r.connections.as_ref().unwrap();
    assert_eq!(c.opened, 150, "{r}");
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.latency["connect"].count, 150);
    assert!(r.server_peak_rss_kb.unwrap() > 0);

    // Users that do not exist: the upgrade is refused with 403.
    o.skip_register = true;
    o.user_prefix = Some("nobody".into());
    let r = run(&o).expect("run");
    let c = r.connections.as_ref().unwrap();
    assert_eq!(c.opened, 0);
    assert_eq!(c.failed.get("http_403"), Some(&150), "{r}");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    o.addr = addr.to_string();
    let r = run(&o).expect("run");
    assert_eq!(
        r.connections
            .as_ref()
            .unwrap()
            .failed
            .get("connect_refused"),
        Some(&150),
        "{r}"
    );
}

#[test]
fn registration_against_nothing_is_an_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let o = Options {
        addr: addr.to_string(),
        register_concurrency: 2,
        timeout: Duration::from_millis(500),
        scenario: Scenario::Login(LoginOptions {
            clients: 1,
            users: Some(1),
        }),
        ..Options::default()
    };
    let err = run(&o).unwrap_err();
    assert!(
        matches!(err, klav_bench::BenchError::Register { .. }),
        "{err}"
    );
}

#[test]
fn history_requests_are_answered() {
    let server = FakeServer::start(Faults::default());
    let r = run(&opts(
        &server,
        Scenario::History(HistoryOptions {
            clients: 3,
            limit: 10,
            preload: 25,
            window: 1,
        }),
    ))
    .expect("run");
    let q = r.requests.as_ref().unwrap();
    assert!(r.is_clean(), "{r}");
    assert!(q.ok > 10, "{r}");
    assert_eq!(q.preloaded, Some(25));
    assert_eq!(q.mean_items, Some(10.0));
    assert!(r.latency["history"].count > 0);
}

#[test]
fn login_loop_counts_logins() {
    let server = FakeServer::start(Faults::default());
    let r = run(&opts(
        &server,
        Scenario::Login(LoginOptions {
            clients: 2,
            users: Some(2),
        }),
    ))
    .expect("run");
    let q = r.requests.as_ref().unwrap();
    assert!(r.is_clean(), "{r}");
    assert!(q.ok > 10, "{r}");
    assert_eq!(q.ok, q.sent);
}

#[test]
fn chat_with_background_logins() {
    let server = FakeServer::start(Faults::default());
    let r = run(&opts(
        &server,
        Scenario::Chat(ChatOptions {
            rooms: 1,
            members: 3,
            senders: 1,
            with_login_clients: 2,
            ..Default::default()
        }),
    ))
    .expect("run");
    assert!(r.is_clean(), "{r}");
    assert!(r.background_login.as_ref().unwrap().ok > 0, "{r}");
    assert!(r.latency.contains_key("background_login"));
}

#[test]
fn presence_changes_reach_every_follower() {
    let server = FakeServer::start(Faults::default());
    let mut o = opts(
        &server,
        Scenario::Presence(PresenceOptions {
            targets: 2,
            followers: 3,
            online: Duration::from_millis(100),
            offline: Duration::from_millis(100),
        }),
    );
    o.duration = Duration::from_secs(1);
    let r = run(&o).expect("run");
    eprintln!("{r}");
    let p = r.presence.as_ref().unwrap();
    assert!(r.is_clean(), "{r}");
    assert!(p.target_opens >= 4, "{r}");
    assert_eq!(p.target_closes, p.target_opens, "{r}");
    assert_eq!(p.expected, (p.target_opens + p.target_closes) * 3, "{r}");
    assert_eq!(p.received, p.expected, "{r}");
    assert!(r.latency.contains_key("presence_online"));
    assert!(r.latency.contains_key("presence_offline"));
}

/// A tiny `abuse` run: every attack starts, the run ends by itself, and the report
/// has every attack and the normal client's round trips (not how fast they were).
#[test]
fn abuse_runs_every_attack_and_reports() {
    let server = FakeServer::start(Faults::default());
    let mut o = opts(
        &server,
        Scenario::Abuse(AbuseOptions {
            abusers: 3,
            settle: Duration::from_millis(300),
            ..Default::default()
        }),
    );
    o.jwt_secret = Some("secret".into());
    o.duration = Duration::from_secs(2);
    o.server_pid = Some(std::process::id());
    let started = std::time::Instant::now();
    let r = run(&o).expect("run");
    assert!(started.elapsed() < Duration::from_secs(30), "{r}");
    let a = r.abuse.as_ref().expect("an abuse report");
    assert_eq!(a.attacks.len(), Attack::ALL.len(), "{r}");
    for attack in Attack::ALL {
        let t = &a.attacks[attack.name()];
        assert_eq!(t.attempted, 3, "{}: {r}", attack.name());
        assert_eq!(t.opened, 3, "{}: {r}", attack.name());
    }
    let spam = &a.attacks["room-spam"];
    assert!(
        spam.responses
            .get("create_room_ack:CREATED")
            .copied()
            .unwrap_or(0)
            > 0,
        "{r}"
    );
    let wide = &a.attacks["wide-json"];
    assert!(
        wide.responses
            .get("error:UNKNOWN_TYPE")
            .copied()
            .unwrap_or(0)
            > 0,
        "{r}"
    );
    let normal = r.requests.as_ref().expect("the normal client");
    assert!(normal.ok > 0, "{r}");
    assert!(r.latency.contains_key("normal_msg"), "{r}");
    assert!(a.health.ok > 0, "{r}");
    assert!(
        a.server_rss_peak_kb.is_some() && a.server_cpu_secs.is_some(),
        "{r}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["scenario"], "abuse");
    assert_eq!(json["abuse"]["attacks"]["many-sockets"]["opened"], 3);
}
