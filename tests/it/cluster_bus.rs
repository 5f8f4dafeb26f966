//! The bus between nodes, attacked from the database: a role that may do
//! nothing but connect can still `pg_notify` and `LISTEN`. What it makes up
//! is not believed, what it records is not taken twice, and even a join
//! signed with the right key grants nothing the database does not hold.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::fallible_iterator::FallibleIterator;
use serde_json::{json, Value};

use klav::cluster::bus::{self, BusKey, EntryRef, MemberOp, Sealer};

use crate::harness::*;
use crate::support::nodes::Nodes;

/// A login with CONNECT on the test database and nothing else: every table
/// refuses it, `pg_notify` and `LISTEN` do not.
fn snoop(c: &Nodes) -> postgres::Client {
    let mut admin = c.db();
    let db: String = admin
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    let role = format!("snoop_{db}");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'snoop'; \
             GRANT CONNECT ON DATABASE {db} TO {role}"
        ))
        .unwrap();
    let mut cfg: postgres::Config = c.db.parse().unwrap();
    cfg.user(&role).password("snoop");
    let mut client = cfg.connect(postgres::NoTls).unwrap();
    let denied = client.query("SELECT count(*) FROM users", &[]).unwrap_err();
    let why = denied.as_db_error().map(|e| e.message().to_string());
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("permission denied")),
        "{denied:?}"
    );
    client
}

fn notify(client: &mut postgres::Client, payload: &str) {
    client
        .execute("SELECT pg_notify('klav', $1)", &[&payload])
        .unwrap();
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The newest entry of a room, which the next one names as its `prev`.
fn last_entry(c: &Nodes, room: &str) -> i64 {
    c.db()
        .query_one(
            "SELECT klav_last_entry_id FROM rooms WHERE id = $1",
            &[&room],
        )
        .unwrap()
        .get::<_, Option<i64>>(0)
        .unwrap()
}

/// How many notifications a node dropped for `reason`.
fn dropped(c: &Nodes, node: usize, reason: &str) -> u64 {
    metric(
        c.addr(node),
        &format!("klav_bus_dropped_total{{reason=\"{reason}\"}}"),
    )
}

/// Every reason's count on a node, in `/metrics` order.
fn drops(c: &Nodes, node: usize) -> Vec<(&'static str, u64)> {
    ["bad_mac", "replayed", "stale", "implausible", "malformed"]
        .into_iter()
        .map(|r| (r, dropped(c, node, r)))
        .collect()
}

/// What a member of nothing gets for a room.
fn refused(m: &mut Ws, room: &str) {
    let e = m.request(json!({"type": "history", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER", "history: {e}");
    let e = m.request(json!({"type": "msg", "room_id": room, "text": "let me in"}));
    assert_eq!(e["code"], "NOT_A_MEMBER", "msg: {e}");
}

fn nothing_of_mallory_stored(c: &Nodes) {
    let mut db = c.db();
    let n: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM chat_logs WHERE from_user = 'mallory') \
                  + (SELECT count(*) FROM room_members WHERE username = 'mallory')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "mallory wrote or joined something");
}

/// The findings of the review, each sent by a CONNECT-only role twice: as a
/// payload was before the bus was sealed, and in the sealed format with a
/// made-up MAC. A presence change under a fake nickname, a message nobody
/// sent, a non-member's join, and an entry id of 9e18 (which made a node drop
/// every later message of the room): none reaches anyone, the non-member
/// stays one, and a genuine message still reaches both nodes.
#[test]
fn bus_forged_by_a_connect_only_role_is_not_believed() {
    let c = Nodes::start(2);
    let (alice, bob, carol, mallory) = (
        c.user("alice"),
        c.user("bob"),
        c.user("carol"),
        c.user("mallory"),
    );
    // carol (n0) watches bob, who comes online on n1.
    let mut cw = c.ws(0, &carol);
    let ack = cw.request(json!({"type": "friend_follow", "to": "bob"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    cw.request(json!({"type": "presence_friends_subscribe"}));
    let mut b = c.ws(1, &bob);
    cw.presence_of("bob", "online", WAIT);
    let mut a = c.ws(0, &alice);
    let room = a.create_room("guarded");
    a.join(&room);
    b.join(&room);
    a.next_of("system");
    let mut m = c.ws(1, &mallory);

    let last = last_entry(&c, &room);
    let now = now_us();
    let forged: [Value; 4] = [
        json!([["p", "bob", "FAKE", false]]),
        json!([[
            "e",
            room,
            last,
            last + 1000,
            now,
            "msg",
            "alice",
            "alice-nick",
            null,
            "forged",
            null,
            null,
            false
        ]]),
        json!([[
            "e",
            room,
            last + 1000,
            last + 1001,
            now,
            "system",
            "system",
            "system",
            null,
            "mallory-nick 님이 입장하셨습니다",
            null,
            ["j", "mallory", "mallory-nick"],
            false
        ]]),
        json!([[
            "e",
            room,
            last + 1001,
            9_000_000_000_000_000_000i64,
            now,
            "msg",
            "alice",
            "alice-nick",
            null,
            "poison",
            null,
            null,
            false
        ]]),
    ];
    let mut snoop = snoop(&c);
    for (seq, body) in forged.iter().enumerate() {
        notify(&mut snoop, &format!("n9\n{body}"));
        notify(
            &mut snoop,
            &format!("klav1 {}\nn9\n1 {} {now}\n{body}", "0".repeat(64), seq + 1),
        );
    }
    // Both nodes have heard all eight.
    for node in 0..2 {
        wait_until(|| dropped(&c, node, "bad_mac") + dropped(&c, node, "malformed") == 8);
    }

    cw.silent();
    a.silent();
    b.silent();
    m.silent();
    refused(&mut m, &room);
    a.send(json!({"type": "msg", "room_id": room, "text": "genuine"}));
    assert_eq!(a.next_of("message")["text"], "genuine");
    assert_eq!(b.next_of("message")["text"], "genuine", "n1 too");
    m.silent();
    nothing_of_mallory_stored(&c);
    let snap = cw.request(json!({"type": "get_online_friends"}));
    assert_eq!(snap["users"][0]["username"], "bob", "{snap}");
    for node in 0..2 {
        assert_eq!(
            drops(&c, node),
            [
                ("bad_mac", 4),
                ("replayed", 0),
                ("stale", 0),
                ("implausible", 0),
                ("malformed", 4)
            ],
            "n{node}"
        );
    }
    // Reported, not logged once per payload.
    let lines = c
        .node(1)
        .stderr()
        .lines()
        .filter(|l| l.contains("dropped bus notifications"))
        .count();
    assert!((1..=3).contains(&lines), "{lines} report lines");
}

/// A CONNECT-only role listens, records genuine payloads (presence going
/// online, a message, typing, joins) and sends them all again: every node
/// drops each as replayed, and nobody is told anything twice — in particular
/// a user who went offline is not shown online again.
#[test]
fn bus_payloads_recorded_by_a_connect_only_role_are_not_taken_twice() {
    let c = Nodes::start(2);
    let (alice, bob, carol, dave) = (
        c.user("alice"),
        c.user("bob"),
        c.user("carol"),
        c.user("dave"),
    );
    let mut snoop = snoop(&c);
    snoop.batch_execute("LISTEN klav").unwrap();
    let mut cw = c.ws(0, &carol);
    let ack = cw.request(json!({"type": "friend_follow", "to": "dave"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    cw.request(json!({"type": "presence_friends_subscribe"}));
    let mut a = c.ws(0, &alice);
    let room = a.create_room("recorded");
    a.join(&room);
    let mut b = c.ws(1, &bob);
    b.join(&room);
    a.next_of("system");
    // dave comes and goes on n1.
    let d = c.ws(1, &dave);
    cw.presence_of("dave", "online", WAIT);
    d.close();
    cw.presence_of("dave", "offline", WAIT);
    // A message and typing from n0 to n1.
    a.send(json!({"type": "msg", "room_id": room, "text": "once"}));
    assert_eq!(a.next_of("message")["text"], "once");
    assert_eq!(b.next_of("message")["text"], "once");
    a.send(json!({"type": "typing", "room_id": room}));
    assert_eq!(b.next_of("typing")["user"], "alice");

    let mut recorded: Vec<String> = Vec::new();
    {
        let mut notes = snoop.notifications();
        let mut it = notes.timeout_iter(Duration::from_millis(500));
        while let Some(n) = it.next().unwrap() {
            recorded.push(n.payload().to_string());
        }
    }
    let has = |what: &str| recorded.iter().any(|p| p.contains(what));
    assert!(
        has(r#"["p","dave","#) && has(r#""once""#) && has(r#"["t","#),
        "recorded: {recorded:#?}"
    );
    for p in &recorded {
        notify(&mut snoop, p);
    }
    for node in 0..2 {
        wait_until(|| dropped(&c, node, "replayed") == recorded.len() as u64);
    }

    cw.silent();
    a.silent();
    b.silent();
    let snap = cw.request(json!({"type": "get_online_friends"}));
    assert_eq!(snap["users"], json!([]), "{snap}");
    for node in 0..2 {
        assert_eq!(
            drops(&c, node),
            [
                ("bad_mac", 0),
                ("replayed", recorded.len() as u64),
                ("stale", 0),
                ("implausible", 0),
                ("malformed", 0)
            ],
            "n{node}"
        );
    }
}

/// Payloads sealed with the right key (the key is derived from `JWT_SECRET`,
/// which the test knows). A join of a non-member is believed as news but
/// grants nothing: the node reads the entry back with the room's members,
/// finds neither, and keeps refusing her; the room's order is not disturbed.
/// Sealed but stale, or naming an id of 9e18, is dropped and counted.
#[test]
fn bus_join_signed_with_the_right_key_grants_nothing_the_database_lacks() {
    let c = Nodes::start(2);
    let (alice, bob, mallory) = (c.user("alice"), c.user("bob"), c.user("mallory"));
    let mut a = c.ws(0, &alice);
    let room = a.create_room("signed");
    a.join(&room);
    let mut b = c.ws(1, &bob);
    b.join(&room);
    a.next_of("system");
    let mut m = c.ws(1, &mallory);

    let sealer = Sealer::new(BusKey::derive(SECRET.as_bytes()), "n7", 7);
    let last = last_entry(&c, &room);
    let entry = |id: i64, kind: &'static str, text: &'static str| EntryRef {
        id,
        ts: SystemTime::now(),
        kind,
        room: &room,
        from: "system",
        from_nickname: "system",
        to: None,
        text,
        client_id: None,
    };
    let mallory_joined = MemberOp {
        joined: true,
        user: "mallory".into(),
        nickname: "mallory-nick".into(),
    };
    let join = bus::encode_entry(
        &entry(last + 1000, "system", "mallory-nick 님이 입장하셨습니다"),
        last,
        Some(&mallory_joined),
        false,
    );
    let poison = bus::encode_entry(
        &entry(9_000_000_000_000_000_000, "msg", "x"),
        last,
        None,
        false,
    );
    let offline = bus::encode_presence("bob", "FAKE", false);
    let mut payloads = sealer.seal(&[format!("[{join}]"), format!("[{poison}]")]);
    payloads.extend(sealer.seal_at(
        &[format!("[{offline}]")],
        SystemTime::now() - Duration::from_secs(600),
    ));
    let mut snoop = snoop(&c);
    for p in &payloads {
        notify(&mut snoop, p);
    }
    // n1 took the join, read it back and found nothing.
    let read_back = wait_until(|| {
        c.node(1)
            .stderr()
            .contains("was announced on the bus but is not in the database")
    });
    m.silent();
    b.silent();
    refused(&mut m, &room);
    std::thread::sleep(QUIET);
    refused(&mut m, &room);
    assert!(read_back, "n1 never read the join back");
    // The room's order holds on n1: a genuine message arrives.
    a.send(json!({"type": "msg", "room_id": room, "text": "genuine"}));
    assert_eq!(b.next_of("message")["text"], "genuine");
    m.silent();
    nothing_of_mallory_stored(&c);
    for node in 0..2 {
        assert_eq!(dropped(&c, node, "stale"), 1, "n{node}");
        assert_eq!(dropped(&c, node, "implausible"), 1, "n{node}");
        assert_eq!(dropped(&c, node, "bad_mac"), 0, "n{node}");
    }
}

/// The genuine path the grants now take: bob joins a room and follows dave on
/// n0 while a connection of his is open on n1. There the join is read back
/// with the room's members before it is delivered, so the connection on n1
/// gets the `joined` event, then every message sent right after it, in order
/// (none slips by before the grant), and may post at once; the follow is
/// granted once read back, and brings dave's presence to it.
#[test]
fn bus_join_and_follow_made_on_another_node_are_granted_once_read_back() {
    let c = Nodes::start(2);
    let (alice, bob, dave) = (c.user("alice"), c.user("bob"), c.user("dave"));
    let mut a = c.ws(0, &alice);
    let room = a.create_room("granted");
    a.join(&room);
    let mut b0 = c.ws(0, &bob);
    let mut b1 = c.ws(1, &bob);
    b1.request(json!({"type": "presence_friends_subscribe"}));
    b0.join(&room);
    for i in 0..20 {
        a.send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
    }
    let joined = b1.next_of("system");
    assert_eq!(
        (joined["event"].as_str(), joined["user"].as_str()),
        (Some("joined"), Some("bob")),
        "{joined}"
    );
    for i in 0..20 {
        let ev = b1.recv();
        assert_eq!(ev["type"], "message", "{ev}");
        assert_eq!(ev["text"], format!("m{i}"), "{ev}");
    }
    let sent = b1.request(json!({"type": "msg", "room_id": room, "text": "from n1"}));
    assert_eq!(sent["type"], "message", "{sent}");

    let ack = b0.request(json!({"type": "friend_follow", "to": "dave"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    // The grant on n1 is a read away.
    std::thread::sleep(QUIET);
    let _d = c.ws(0, &dave);
    b1.presence_of("dave", "online", WAIT);
}
