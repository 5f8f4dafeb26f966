//! The bench end to end against an in-process stand-in server: every scenario runs,
//! counts what it should, and catches injected faults.

mod fake_server;

use std::time::Duration;

use fake_server::{FakeServer, Faults};
use klav_bench::{
    run, AbuseOptions, Attack, ChatOptions, ConnectOptions, DmOptions, HistoryOptions,
    LoginOptions, MessageReport, Options, PresenceOptions, Report, Scenario,
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

/// Starts a stand-in of `nodes` nodes with `faults` and runs `scenario` on it, with
/// the options `tweak` changes.
fn run_on(
    nodes: usize,
    faults: Faults,
    scenario: Scenario,
    tweak: impl FnOnce(&mut Options),
) -> (FakeServer, Report) {
    let server = FakeServer::start_nodes(nodes, faults);
    let mut o = opts(&server, scenario);
    tweak(&mut o);
    let r = run(&o).expect("run");
    (server, r)
}

/// A clean run of `chat`, `fanout` or `dm`: every delivery of an acknowledged
/// message arrived, and the JSON report says so.
fn clean_messages(r: &Report) -> &MessageReport {
    assert!(r.is_clean(), "{r}");
    let m = r.messages.as_ref().unwrap();
    assert_eq!(m.deliveries_received, m.deliveries_expected, "{r}");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["scenario"], r.scenario.as_str());
    assert_eq!(json["messages"]["missing"], 0);
    m
}

/// Injected drops and duplicates show in the report, and what is missing is what
/// the expected deliveries lack.
fn faulty_messages(r: &Report) -> &MessageReport {
    assert!(!r.is_clean(), "{r}");
    let m = r.messages.as_ref().unwrap();
    assert!(m.missing > 0, "{r}");
    assert!(m.duplicates > 0, "{r}");
    assert_eq!(m.deliveries_expected - m.deliveries_received, m.missing);
    m
}

/// Over `nodes` nodes: each has `conns` connections, all opened, sends, misses
/// nothing and receives from the other nodes as well as its own; the per-node
/// numbers add up to the run's.
fn nodes_cross(r: &Report, nodes: usize, conns: u64) {
    assert_eq!(r.nodes.len(), nodes, "{r}");
    for n in &r.nodes {
        assert_eq!((n.connections, n.opened), (conns, conns), "{r}");
        assert_eq!(n.missing, 0, "{r}");
        assert!(n.messages_sent > 0, "{r}");
        assert!(n.deliveries_from_other_nodes > 0, "{r}");
        assert!(n.deliveries_from_other_nodes < n.deliveries_received, "{r}");
    }
    let m = r.messages.as_ref().unwrap();
    let per_node: u64 = r.nodes.iter().map(|n| n.deliveries_received).sum();
    assert_eq!(per_node, m.deliveries_received, "{r}");
    let sent: u64 = r.nodes.iter().map(|n| n.messages_sent).sum();
    assert_eq!(sent, m.sent, "{r}");
}

#[test]
fn chat_closed_loop_is_clean_and_counts_every_delivery() {
    let chat = ChatOptions {
        rooms: 3,
        members: 4,
        senders: 2,
        window: 2,
        ..Default::default()
    };
    let (_server, r) = run_on(1, Faults::default(), Scenario::Chat(chat), |_| {});
    let m = clean_messages(&r);
    assert_eq!(r.scenario, "chat");
    assert!(m.acked > 10, "{r}");
    assert_eq!(m.acked, m.sent, "{r}");
    assert_eq!(m.deliveries_expected, m.acked * 4, "{r}");
    assert_eq!(r.setup.users, 12);
    assert_eq!(r.setup.registered, 12);
    assert_eq!(r.setup.logins, 12);
    assert_eq!(r.connections.as_ref().unwrap().opened, 12);
    assert!(r.latency["delivery"].count > 0);
    assert!(r.latency["ack"].count > 0);
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
    let faults = Faults {
        drop_every: Some(7),
        duplicate_every: Some(5),
        ..Default::default()
    };
    let fanout = ChatOptions {
        rooms: 1,
        members: 6,
        senders: 1,
        ..Default::default()
    };
    let (_server, r) = run_on(1, faults, Scenario::Fanout(fanout), |o| {
        o.drain = Duration::from_millis(500)
    });
    eprintln!("{r}");
    let m = faulty_messages(&r);
    assert_eq!(m.order_violations, 0, "{r}");
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
fn dm_closed_loop_is_clean_and_counts_every_dm() {
    let dm = DmOptions {
        rooms: 3,
        members: 4,
        window: 2,
        ..Default::default()
    };
    let (_server, r) = run_on(1, Faults::default(), Scenario::Dm(dm), |_| {});
    let m = clean_messages(&r);
    assert!(r.problems().is_empty(), "{r}");
    assert_eq!(r.scenario, "dm");
    assert!(m.acked > 30, "{r}");
    assert_eq!(m.acked, m.sent, "{r}");
    assert_eq!(m.queued, 0, "{r}");
    // One recipient per DM.
    assert_eq!(m.deliveries_expected, m.acked, "{r}");
    assert_eq!(
        (m.foreign, m.misdirected, m.unacked_deliveries),
        (0, 0, 0),
        "{r}"
    );
    assert_eq!(r.setup.users, 12);
    assert_eq!(r.connections.as_ref().unwrap().opened, 12);
    assert_eq!(r.nodes[0].messages_sent, m.sent, "{r}");
    assert!(r.latency["delivery"].count > 0);
    assert!(r.latency["ack"].count > 0);
    assert!(!r.latency.contains_key("ack_queued"));
    assert!(m.acked_per_sec > 0.0 && m.deliveries_per_sec > 0.0, "{r}");
}

/// Open loop with one member of every room offline: a third of each sender's DMs
/// go to it and must be answered `QUEUED`; the rest `DELIVERED` and received.
#[test]
fn dm_open_loop_queues_for_offline_members() {
    let dm = DmOptions {
        rooms: 2,
        members: 4,
        offline: 1,
        rate: Some(300.0),
        msg_size: 64,
        client_ids: true,
        ..Default::default()
    };
    let (_server, r) = run_on(1, Faults::default(), Scenario::Dm(dm), |o| {
        o.jwt_secret = Some("secret".into());
        o.duration = Duration::from_secs(1);
    });
    let m = clean_messages(&r);
    assert_eq!(r.setup.users, 8);
    assert_eq!(r.connections.as_ref().unwrap().attempted, 6, "{r}");
    assert_eq!(m.offline_per_room, 1);
    assert_eq!(m.senders, 3);
    // 300/s for 1 s, paced.
    assert!((220..=310).contains(&m.sent), "{r}");
    assert_eq!(m.acked + m.queued, m.sent, "{r}");
    // Each of the 6 senders sends every third DM to it, give or take one.
    assert!(
        m.queued * 3 + 12 >= m.sent && m.queued * 3 <= m.sent + 12,
        "{r}"
    );
    assert_eq!(m.deliveries_received, m.acked, "{r}");
    assert!(r.latency["ack_queued"].count > 0, "{r}");
    assert!(r.to_string().contains("1 offline/room"), "{r}");
}

#[test]
fn lost_duplicated_and_reordered_dms_are_caught() {
    let faults = Faults {
        drop_every: Some(11),
        duplicate_every: Some(7),
        hold_back_every: Some(5),
        ..Default::default()
    };
    let dm = DmOptions {
        rooms: 2,
        members: 3,
        window: 2,
        ..Default::default()
    };
    let (_server, r) = run_on(1, faults, Scenario::Dm(dm), |o| {
        o.drain = Duration::from_millis(500)
    });
    let m = faulty_messages(&r);
    assert!(m.order_violations > 0, "{r}");
    assert!(m.id_order_violations > 0, "{r}");
    let problems = r.problems().join("; ");
    assert!(problems.contains("deliveries missing"), "{problems}");
    assert!(problems.contains("deliveries duplicated"), "{problems}");
    assert!(problems.contains("deliveries out of order"), "{problems}");
}

/// Two nodes: member `m` on node `m mod 2`, so a DM crosses nodes whenever sender
/// and recipient differ in parity.
#[test]
fn dm_over_two_nodes_accounts_for_every_dm() {
    let dm = DmOptions {
        rooms: 2,
        members: 4,
        window: 2,
        ..Default::default()
    };
    let (_server, r) = run_on(2, Faults::default(), Scenario::Dm(dm), |_| {});
    clean_messages(&r);
    nodes_cross(&r, 2, 4);
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
            filled_rooms: 2,
            filled_entries: 2,
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
        if attack == Attack::Churn {
            // Each of its connections comes back as soon as it is dropped.
            assert!(t.opened > 3, "{}: {r}", attack.name());
        } else {
            assert_eq!(t.opened, 3, "{}: {r}", attack.name());
        }
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

/// Two nodes sharing one state (a cluster): members of every room are on both, and
/// every delivery is still accounted for, per receiver and per node.
#[test]
fn chat_over_two_nodes_accounts_for_every_delivery() {
    let chat = ChatOptions {
        rooms: 3,
        members: 4,
        senders: 2,
        window: 2,
        ..Default::default()
    };
    let (server, r) = run_on(2, Faults::default(), Scenario::Chat(chat), |o| {
        assert!(o.addr.contains(','), "{}", o.addr)
    });
    let m = clean_messages(&r);
    assert!(m.acked > 10, "{r}");
    assert_eq!(m.id_order_violations, 0, "{r}");
    // Members 0 and 2 of each room on node 0, 1 and 3 on node 1. Senders are
    // members 0 and 1: half of what each node receives comes from the other node.
    nodes_cross(&r, 2, 6);
    // The server saw the same split (node 0 also had the room-creating socket).
    assert_eq!(server.websockets(0), 7);
    assert_eq!(server.websockets(1), 6);
    assert!(r.to_string().contains("nodes: 2"), "{r}");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["nodes"][1]["addr"], server.addrs[1].to_string());
}

#[test]
fn fanout_over_three_nodes_spreads_receivers_and_senders() {
    let server = FakeServer::start_nodes(3, Faults::default());
    let mut o = opts(
        &server,
        Scenario::Fanout(ChatOptions {
            rooms: 1,
            members: 7,
            senders: 3,
            ..Default::default()
        }),
    );
    o.jwt_secret = Some("secret".into());
    let r = run(&o).expect("run");
    let m = r.messages.as_ref().unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(m.deliveries_received, m.deliveries_expected, "{r}");
    let conns: Vec<u64> = r.nodes.iter().map(|n| n.connections).collect();
    assert_eq!(conns, vec![3, 2, 2], "{r}");
    for n in &r.nodes {
        // One sender per node: two thirds of every node's deliveries cross nodes.
        assert!(n.messages_sent > 0, "{r}");
        assert!(n.deliveries_from_other_nodes > 0, "{r}");
    }
}

#[test]
fn presence_over_two_nodes_crosses_nodes() {
    let server = FakeServer::start_nodes(2, Faults::default());
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
    let p = r.presence.as_ref().unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(p.received, p.expected, "{r}");
    // Targets on node 0, followers on node 1: every event crossed.
    assert_eq!(r.nodes[0].presence_targets, 2, "{r}");
    assert_eq!(r.nodes[0].connections, 0, "{r}");
    assert_eq!(r.nodes[1].connections, 3, "{r}");
    assert_eq!(r.nodes[1].presence_events, p.received, "{r}");
    assert_eq!(
        r.nodes[1].presence_events_from_other_nodes, p.received,
        "{r}"
    );
}

#[test]
fn connect_history_and_login_spread_round_robin() {
    let server = FakeServer::start_nodes(2, Faults::default());
    let mut o = opts(
        &server,
        Scenario::Connect(ConnectOptions {
            connections: 11,
            users: Some(2),
            hold: Duration::from_millis(100),
        }),
    );
    o.jwt_secret = Some("secret".into());
    let r = run(&o).expect("run");
    assert!(r.is_clean(), "{r}");
    let opened: Vec<(u64, u64)> = r.nodes.iter().map(|n| (n.connections, n.opened)).collect();
    assert_eq!(opened, vec![(6, 6), (5, 5)], "{r}");

    o.scenario = Scenario::History(HistoryOptions {
        clients: 4,
        limit: 5,
        preload: 10,
        window: 1,
    });
    let r = run(&o).expect("run");
    assert!(r.is_clean(), "{r}");
    for n in &r.nodes {
        assert_eq!((n.connections, n.opened), (2, 2), "{r}");
        assert!(n.requests_ok > 0, "{r}");
    }

    o.scenario = Scenario::Login(LoginOptions {
        clients: 2,
        users: Some(2),
    });
    o.jwt_secret = None;
    let r = run(&o).expect("run");
    assert!(r.is_clean(), "{r}");
    for n in &r.nodes {
        assert_eq!((n.connections, n.opened), (1, 1), "{r}");
        assert!(n.requests_ok > 0, "{r}");
    }
}

#[test]
fn abuse_wants_a_single_node() {
    let server = FakeServer::start_nodes(2, Faults::default());
    let o = opts(&server, Scenario::Abuse(AbuseOptions::default()));
    assert!(matches!(run(&o), Err(klav_bench::BenchError::Usage(_))));
}

/// Server ids must increase at every receiver: an id going backwards is caught even
/// when every sender's own sequence is in order.
#[test]
fn server_ids_going_backwards_are_order_violations() {
    let server = FakeServer::start(Faults {
        id_backwards_every: Some(5),
        ..Default::default()
    });
    let r = run(&opts(
        &server,
        Scenario::Chat(ChatOptions {
            rooms: 1,
            members: 3,
            senders: 2,
            ..Default::default()
        }),
    ))
    .expect("run");
    let m = r.messages.as_ref().unwrap();
    assert_eq!(m.order_violations, 0, "{r}");
    assert_eq!(m.missing, 0, "{r}");
    assert!(m.id_order_violations > 0, "{r}");
    assert!(!r.is_clean(), "{r}");
    let per_node: u64 = r.nodes.iter().map(|n| n.id_order_violations).sum();
    assert_eq!(per_node, m.id_order_violations, "{r}");
}
