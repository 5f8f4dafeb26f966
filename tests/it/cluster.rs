//! Several klav processes on one PostgreSQL, one chat: rooms, DMs, follows,
//! edits, presence, typing, read markers, idempotent sends and tickets across
//! nodes, with one order for every receiver.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::support::nodes::Nodes;

#[test]
fn cluster_rooms_dms_follows_edits_and_presence_cross_nodes() {
    let c = Nodes::start(2);
    let (alice, bob, carol, dave) = (
        c.user("alice"),
        c.user("bob"),
        c.user("carol"),
        c.user("dave"),
    );
    let mut a = c.ws(0, &alice);
    let mut b = c.ws(1, &bob);
    let mut outsider = c.ws(1, &dave);

    // A room made on n0, joined on n1: the joined event crosses.
    let room = a.create_room("crossing");
    a.join(&room);
    b.join(&room);
    let joined = a.next_of("system");
    assert_eq!(
        (joined["event"].as_str(), joined["user"].as_str()),
        (Some("joined"), Some("bob"))
    );

    // Messages both ways, same ids everywhere; the outsider on n1 sees none.
    a.send(json!({"type": "msg", "room_id": room, "text": "from n0"}));
    let at_a = a.next_of("message");
    let at_b = b.next_of("message");
    assert_eq!(at_a["id"], at_b["id"]);
    assert_eq!(at_b["text"], "from n0");
    assert_eq!(at_b["from_nickname"], "alice-nick");
    b.send(json!({"type": "msg", "room_id": room, "text": "from n1"}));
    let back = a.next_of("message");
    assert_eq!(back["text"], "from n1");
    assert!(back["id"].as_i64() > at_a["id"].as_i64());
    outsider.none_of("message");

    // An edit on n0 reaches n1.
    let edited = a.request(json!({"type": "edit", "id": at_a["id"], "text": "fixed"}));
    assert_eq!(edited["type"], "message_edited", "{edited}");
    let ev = b.next_of("message_edited");
    assert_eq!(
        (ev["id"].clone(), ev["text"].as_str()),
        (at_a["id"].clone(), Some("fixed"))
    );
    // n1's history (its cache follows other nodes' writes) has both, edited.
    let page = b.request(json!({"type": "history", "room_id": room, "limit": 2}));
    let items: Vec<(i64, &str)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_i64().unwrap(), i["text"].as_str().unwrap()))
        .collect();
    let want = vec![
        (at_a["id"].as_i64().unwrap(), "fixed"),
        (back["id"].as_i64().unwrap(), "from n1"),
    ];
    assert_eq!(items, want, "{page}");

    // A DM to a recipient connected only on the other node: DELIVERED there.
    let ack = a.request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    let dm = b.next_of("dm");
    assert_eq!(dm["text"], "psst");
    outsider.none_of("dm");

    // Follows cross nodes; presence follows connections in the whole cluster.
    let mut cw = c.ws(0, &carol);
    let ack = cw.request(json!({"type": "friend_follow", "to": "bob"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    let nf = b.next_of("notify_followed");
    assert_eq!(nf["from"], "carol");
    let snap = cw.request(json!({"type": "presence_friends_subscribe"}));
    let users = snap["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{snap}");
    assert_eq!(
        (
            users[0]["username"].as_str(),
            users[0]["connections"].as_i64()
        ),
        (Some("bob"), Some(1))
    );
    // A second connection of bob on n0: still one user online, two connections.
    let b2 = c.ws(0, &bob);
    eventually(WAIT, Duration::from_millis(50), || {
        let snap = cw.request(json!({"type": "get_online_friends"}));
        if snap["users"][0]["connections"] == 2 {
            Ok(())
        } else {
            Err(format!("connections never counted 2: {snap}"))
        }
    });
    b2.close();
    b.close();
    cw.presence_of("bob", "offline", WAIT);
    let snap = cw.request(json!({"type": "get_online_friends"}));
    assert_eq!(snap["users"], json!([]), "{snap}");

    // Offline everywhere: QUEUED, and flushed on the next connection (n0).
    let ack = a.request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "later"}));
    assert_eq!(ack["status"], "QUEUED", "{ack}");
    let mut b = c.ws(0, &bob);
    let off = b.next_of("offline_dm");
    assert_eq!(off["text"], "later");
    cw.presence_of("bob", "online", WAIT);
    // A leave on n0 reaches the member on n0 and no more messages go to bob.
    drop(outsider);
    let ack = b.request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["status"], "LEFT", "{ack}");
    a.send(json!({"type": "msg", "room_id": room, "text": "after leave"}));
    a.next_of("message");
    b.none_of("message");
}

#[test]
fn cluster_two_nodes_writing_one_room_give_every_receiver_one_order() {
    let c = Nodes::start(2);
    let writers: Vec<String> = (0..2).map(|i| c.user(&format!("w{i}"))).collect();
    let readers: Vec<String> = (0..4).map(|i| c.user(&format!("r{i}"))).collect();
    let mut w0 = c.ws(0, &writers[0]);
    let room = w0.create_room("hammered");
    w0.join(&room);
    let mut w1 = c.ws(1, &writers[1]);
    w1.join(&room);
    let mut rs: Vec<Ws> = readers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut ws = c.ws(i % 2, t);
            ws.join(&room);
            ws
        })
        .collect();
    const EACH: usize = 300;
    let r2 = room.clone();
    let t0 = std::thread::spawn(move || {
        for i in 0..EACH {
            w0.send(json!({"type": "msg", "room_id": r2, "text": format!("a{i}")}));
        }
        w0
    });
    let r3 = room.clone();
    let t1 = std::thread::spawn(move || {
        for i in 0..EACH {
            w1.send(json!({"type": "msg", "room_id": r3, "text": format!("b{i}")}));
        }
        w1
    });
    let _w0 = t0.join().unwrap();
    let _w1 = t1.join().unwrap();
    let mut seqs: Vec<Vec<i64>> = Vec::new();
    for r in &mut rs {
        let mut ids = Vec::new();
        while ids.len() < 2 * EACH {
            let ev = r.recv();
            if ev["type"] == "message" {
                ids.push(ev["id"].as_i64().unwrap());
            }
        }
        r.none_of("message");
        seqs.push(ids);
    }
    let want: Vec<i64> = c.msg_ids(&room, 0);
    assert_eq!(want.len(), 2 * EACH);
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(s, &want, "receiver {i} (on n{}) saw another order", i % 2);
    }
}

#[test]
fn cluster_offline_queue_is_flushed_once_when_two_nodes_open_at_once() {
    let c = Nodes::start(2);
    let (alice, bob) = (c.user("alice"), c.user("bob"));
    let mut a = c.ws(0, &alice);
    let room = a.create_room("queue");
    a.join(&room);
    let mut b = c.ws(1, &bob);
    b.join(&room);
    b.close();
    // Offline for the whole cluster before the DMs are sent (n1 writes its
    // presence after the close).
    c.until_offline("bob");
    for round in 0..3 {
        for i in 0..20 {
            let ack = a.request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": format!("{round}-{i}")}));
            assert_eq!(ack["status"], "QUEUED", "{ack}");
        }
        // Both nodes open a connection of bob at the same moment.
        let t = bob.clone();
        let addr1 = c.addr(1);
        let other = std::thread::spawn(move || Ws::connect(addr1, &t).ok().unwrap());
        let mut on0 = c.ws(0, &bob);
        let mut on1 = other.join().unwrap();
        let mut got = Vec::new();
        for ws in [&mut on0, &mut on1] {
            while let Some(ev) = ws.try_recv(Duration::from_millis(700)) {
                if ev["type"] == "offline_dm" {
                    got.push(ev["text"].as_str().unwrap().to_string());
                }
            }
        }
        got.sort();
        let mut want: Vec<String> = (0..20).map(|i| format!("{round}-{i}")).collect();
        want.sort();
        assert_eq!(got, want, "round {round}: each queued DM exactly once");
        on0.close();
        on1.close();
        // Wait until bob is offline everywhere before queueing again.
        c.until_offline("bob");
    }
    let left: i64 = c.count("SELECT count(*) FROM klav_offline_dms", &[]);
    assert_eq!(left, 0, "delivered DMs leave the queue");
}

/// Senders on two nodes flood one offline recipient at once: the queue's
/// bounds hold (each node's writer judges the queue under the recipient's
/// lock), a friend's DM survives, and what was dropped is counted exactly.
#[test]
fn cluster_offline_queue_stays_fair_with_senders_on_two_nodes() {
    let c = Nodes::start(2);
    let (fran, bob) = (c.user("fran"), c.user("bob"));
    let floods: Vec<String> = (0..4).map(|i| c.user(&format!("m{i}"))).collect();
    let mut f = c.ws(1, &fran);
    let room = f.create_room("flood");
    f.join(&room);
    let mut b = c.ws(0, &bob);
    b.join(&room);
    b.close();
    c.until_offline("bob");
    let mut senders: Vec<Ws> = Vec::new();
    for (i, t) in floods.iter().enumerate() {
        let mut ws = c.ws(i % 2, t);
        ws.join(&room);
        senders.push(ws);
    }
    let ack = f.request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "friend"}));
    assert_eq!(ack["status"], "QUEUED", "{ack}");
    const EACH: usize = 40;
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(k, mut ws)| {
            let room = room.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    ws.send(json!({"type": "room_dm", "room_id": room, "to": "bob",
                                   "text": format!("m{k}-{i}"), "req_id": i}));
                }
                let mut acks = 0;
                while acks < EACH {
                    let ev = ws.recv();
                    if ev["type"] == "dm_ack" {
                        assert_eq!(ev["status"], "QUEUED", "{ev}");
                        acks += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut db = c.db();
    let held: Vec<(String, i64)> = db
        .query(
            "SELECT from_user, count(*) FROM klav_offline_dms WHERE recipient = 'bob' \
             GROUP BY from_user",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let total: i64 = held.iter().map(|(_, n)| n).sum();
    assert!(held.iter().all(|(_, n)| *n <= 20), "{held:?}");
    assert_eq!(total, 1 + 4 * 20, "{held:?}");
    assert!(held.contains(&("fran".to_string(), 1)), "{held:?}");
    let dropped: i64 = db
        .query_one(
            "SELECT dropped FROM klav_offline_dropped WHERE recipient = 'bob'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dropped, (4 * EACH as i64) - 4 * 20);
    // Told on the next connection, on either node, after the DMs.
    let mut b = c.ws(1, &bob);
    let mut dms = 0;
    let told = loop {
        let ev = b.recv();
        match ev["type"].as_str() {
            Some("offline_dm") => dms += 1,
            Some("offline_dm_dropped") => break ev,
            _ => {}
        }
    };
    assert_eq!(dms, total);
    assert_eq!(told["count"], dropped);
}

#[test]
fn cluster_large_entries_travel_by_reference() {
    let c = Nodes::start(2);
    let (alice, bob) = (c.user("alice"), c.user("bob"));
    let mut a = c.ws(0, &alice);
    let room = a.create_room("big");
    a.join(&room);
    let mut b = c.ws(1, &bob);
    b.join(&room);
    // 4,000 control characters escape to 24 KB: over a notification's limit.
    let big = "\u{1}".repeat(4000);
    for i in 0..5 {
        a.send(json!({"type": "msg", "room_id": room, "text": if i % 2 == 0 { big.clone() } else { format!("small {i}") }}));
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let Some(ev) = (0..50).find_map(|_| {
            b.try_recv(Duration::from_millis(200))
                .filter(|e| e["type"] == "message")
        }) else {
            panic!(
                "message {i} missing; n0: {}\nn1: {}",
                c.node(0).stderr(),
                c.node(1).stderr()
            );
        };
        let want = if i % 2 == 0 {
            big.clone()
        } else {
            format!("small {i}")
        };
        assert_eq!(ev["text"].as_str().unwrap(), want, "message {i}");
        ids.push(ev["id"].as_i64().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    b.none_of("message");
}

#[test]
fn cluster_v2_typing_read_markers_and_a_client_id_retried_on_another_node() {
    let c = Nodes::start(2);
    let (alice, bob) = (c.user("alice"), c.user("bob"));
    let mut a0 = c.ws(0, &alice);
    let room = a0.create_room("v2");
    a0.join(&room);
    let mut b1 = c.ws(1, &bob);
    b1.join(&room);
    a0.next_of("system");

    // Typing crosses nodes and never echoes to the typer.
    a0.send(json!({"type": "typing", "room_id": room}));
    let t = b1.next_of("typing");
    assert_eq!(
        (t["user"].as_str(), t["room"].as_str()),
        (Some("alice"), Some(room.as_str()))
    );
    a0.none_of("typing");

    // A send retried with the same client_id on the other node: the original
    // stands, only the retrying connection hears it again.
    let first =
        a0.request(json!({"type": "msg", "room_id": room, "text": "once", "client_id": "c-1"}));
    assert_eq!(first["type"], "message", "{first}");
    let seen = b1.next_of("message");
    assert_eq!(seen["id"], first["id"]);
    let mut a1 = c.ws(1, &alice);
    let again =
        a1.request(json!({"type": "msg", "room_id": room, "text": "twice?", "client_id": "c-1"}));
    assert_eq!(
        (again["id"].clone(), again["text"].as_str()),
        (first["id"].clone(), Some("once"))
    );
    b1.none_of("message");
    a0.none_of("message");
    let n: i64 = c.count(
        "SELECT count(*) FROM chat_logs WHERE client_id = 'c-1'",
        &[],
    );
    assert_eq!(n, 1);

    // A read marker moved on n0 reaches alice's connection on n1.
    let ack = a0.request(json!({"type": "read", "room_id": room, "id": first["id"]}));
    assert_eq!(ack["type"], "read_ack", "{ack}");
    let m = a1.next_of("read_marker");
    assert_eq!(
        (m["room"].as_str(), m["id"].clone()),
        (Some(room.as_str()), first["id"].clone())
    );
    b1.none_of("read_marker");
}

/// A WebSocket ticket lives in the database: minted on one node it opens a
/// connection on the other — once. Presented to both nodes at the same time,
/// exactly one of the upgrades gets it.
#[test]
fn cluster_ws_ticket_opens_on_any_node_once() {
    let nodes = Nodes::start(2);
    let t = nodes.user("alice");
    let mint = |node: usize| -> String {
        let r = ws_ticket_at(nodes.addr(node), Some(&t));
        assert_eq!(r.status, 200, "n{node}: {}", r.body);
        r.json()["ticket"].as_str().unwrap().to_string()
    };
    let ticket = mint(0);
    let mut ws = Ws::connect_ticket(nodes.addr(1), &ticket)
        .unwrap_or_else(|(s, b)| panic!("n1 refused n0's ticket: {s} {b}"));
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    for node in [0, 1] {
        let refused = Ws::connect_ticket(nodes.addr(node), &ticket).err();
        assert_eq!(refused.map(|e| e.0), Some(403), "n{node}: a second use");
    }
    for round in 0..5 {
        let ticket = mint(round % 2);
        let opened: Vec<bool> = std::thread::scope(|scope| {
            let tries: Vec<_> = [0, 1]
                .map(|node| {
                    let (addr, ticket) = (nodes.addr(node), ticket.as_str());
                    scope.spawn(move || Ws::connect_ticket(addr, ticket).is_ok())
                })
                .into_iter()
                .collect();
            tries.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            opened.iter().filter(|o| **o).count(),
            1,
            "round {round}: {opened:?}"
        );
    }
}

/// The next `n` presence changes on `ws` (other events skipped), as
/// (user, status); none may repeat.
fn presences(ws: &mut Ws, n: usize) -> HashSet<(String, String)> {
    let deadline = Instant::now() + WAIT;
    let mut got = HashSet::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = ws
            .try_recv(left)
            .unwrap_or_else(|| panic!("only {got:?} of {n} presence changes"));
        if ev["type"] == "presence_change" {
            let change = (
                ev["user"].as_str().unwrap().to_string(),
                ev["status"].as_str().unwrap().to_string(),
            );
            assert!(got.insert(change), "told twice: {ev}");
        }
    }
    got
}

fn changes(users: &[&str], status: &str) -> HashSet<(String, String)> {
    users
        .iter()
        .map(|u| (u.to_string(), status.to_string()))
        .collect()
}

/// Follows and unfollows made after a connection subscribed change what it
/// hears, on every node: whether the follow was made on the subscriber's node
/// or another, and whether the followed user is connected to the same node or
/// another. (A node knows whom it last announced online only for users it
/// watches; one that starts being watched must be looked up, or their going
/// offline is taken for a repeat.)
#[test]
fn cluster_follows_after_subscribing_change_presence_on_every_node() {
    let c = Nodes::start(2);
    let (fred, xa, xb, gina) = (c.user("fred"), c.user("xa"), c.user("xb"), c.user("gina"));
    // Online before anyone here watches them: xa on n0, xb on n1.
    let mut a = c.ws(0, &xa);
    let mut b = c.ws(1, &xb);
    let mut f0 = c.ws(0, &fred);
    let mut f1 = c.ws(1, &fred);
    for f in [&mut f0, &mut f1] {
        let snap = f.request(json!({"type": "presence_friends_subscribe"}));
        assert_eq!(snap["users"], json!([]), "{snap}");
    }
    // xa followed from n0, xb from n1: each node learns one of them from its
    // own writer and the other from the bus.
    let ack = f0.request(json!({"type": "friend_follow", "to": "xa"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    let ack = f1.request(json!({"type": "friend_follow", "to": "xb"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    a.next_of("notify_followed");
    b.next_of("notify_followed");
    // A follow heard on the bus is granted once the database confirms it.
    std::thread::sleep(Duration::from_millis(500));

    a.close();
    b.close();
    for f in [&mut f0, &mut f1] {
        assert_eq!(presences(f, 2), changes(&["xa", "xb"], "offline"));
    }
    let a = c.ws(0, &xa);
    let b = c.ws(1, &xb);
    for f in [&mut f0, &mut f1] {
        assert_eq!(presences(f, 2), changes(&["xa", "xb"], "online"));
        f.none_of("presence_change");
    }

    // gina, subscribed on both nodes to both, shows that changes still happen.
    let mut g0 = c.ws(0, &gina);
    let mut g1 = c.ws(1, &gina);
    for to in ["xa", "xb"] {
        let ack = g0.request(json!({"type": "friend_follow", "to": to}));
        assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    }
    std::thread::sleep(Duration::from_millis(500));
    for g in [&mut g0, &mut g1] {
        let snap = g.request(json!({"type": "presence_friends_subscribe"}));
        assert_eq!(snap["users"].as_array().unwrap().len(), 2, "{snap}");
    }
    // Unfollowed across: xa from n1, xb from n0.
    let ack = f1.request(json!({"type": "friend_unfollow", "to": "xa"}));
    assert_eq!(ack["status"], "UNFOLLOWED", "{ack}");
    let ack = f0.request(json!({"type": "friend_unfollow", "to": "xb"}));
    assert_eq!(ack["status"], "UNFOLLOWED", "{ack}");
    std::thread::sleep(Duration::from_millis(500));

    a.close();
    b.close();
    for g in [&mut g0, &mut g1] {
        assert_eq!(presences(g, 2), changes(&["xa", "xb"], "offline"));
    }
    let _a = c.ws(0, &xa);
    let _b = c.ws(1, &xb);
    for g in [&mut g0, &mut g1] {
        assert_eq!(presences(g, 2), changes(&["xa", "xb"], "online"));
    }
    for f in [&mut f0, &mut f1] {
        f.none_of("presence_change");
    }
}

/// The database sessions of this test's database: application_name → pids.
fn sessions(db: &mut postgres::Client) -> HashMap<String, Vec<i32>> {
    let mut out: HashMap<String, Vec<i32>> = Default::default();
    for r in db
        .query(
            "SELECT application_name, pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
    {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    out
}

/// Each node's database connections are named after the node and what they
/// are for, so that an operator can tell them apart in `pg_stat_activity` and
/// terminate one; the listener keeps its name through its pings, and a
/// connection a thread takes again after losing its own is named again.
#[test]
fn cluster_database_connections_are_named_by_node_and_role() {
    let c = Nodes::start(2);
    let alice = c.user("alice");
    let roles = ["listener", "writer", "worker 0", "worker 1"];
    let wanted: Vec<String> = (0..2)
        .flat_map(|n| roles.iter().map(move |r| format!("klav n{n} {r}")))
        .collect();
    let mut clients: Vec<Ws> = (0..8).map(|i| c.ws(i % 2, &alice)).collect();
    clients[0].create_room("on n0");
    clients[1].create_room("on n1");
    let mut db = c.db();
    // Reads from several connections at once, until both workers of each node
    // have taken a connection.
    let deadline = Instant::now() + WAIT;
    let mut now = sessions(&mut db);
    while !wanted.iter().all(|w| now.contains_key(w)) {
        assert!(Instant::now() < deadline, "missing names: {now:?}");
        for ws in &mut clients {
            ws.send(json!({"type": "following_list"}));
        }
        for ws in &mut clients {
            ws.next_of("following_list");
        }
        now = sessions(&mut db);
    }
    for w in &wanted {
        assert_eq!(now[w].len(), 1, "one connection named {w}: {now:?}");
    }
    let klav: Vec<&String> = now.keys().filter(|n| n.starts_with("klav")).collect();
    assert_eq!(klav.len(), wanted.len(), "unexpected names: {now:?}");

    // Past the listener's pings: the same sessions, the same names.
    std::thread::sleep(Duration::from_millis(4500));
    let later = sessions(&mut db);
    for w in &wanted {
        assert_eq!(later.get(w), now.get(w), "{w}: {later:?}");
    }

    // Terminated by name, the writer's and workers' connections are replaced
    // by ones of the same names (whichever connection of the pool they get).
    let n: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name IN \
               ('klav n0 writer', 'klav n0 worker 0', 'klav n0 worker 1')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "{now:?}");
    let deadline = Instant::now() + WAIT;
    let mut again = sessions(&mut db);
    while !wanted[1..4]
        .iter()
        .all(|w| again.get(w).is_some_and(|pids| pids.len() == 1) && again[w] != now[w])
    {
        assert!(Instant::now() < deadline, "not named again: {again:?}");
        clients[0].request(json!({"type": "create_room", "name": "again"}));
        // A job that had taken a terminated connection fails (UNAVAILABLE);
        // nothing else may come back.
        for ws in clients.iter_mut().step_by(2) {
            ws.send(json!({"type": "following_list", "req_id": "f"}));
        }
        for ws in clients.iter_mut().step_by(2) {
            let reply = loop {
                let ev = ws.recv();
                if ev["req_id"] == "f" {
                    break ev;
                }
            };
            assert!(
                reply["type"] == "following_list" || reply["code"] == "UNAVAILABLE",
                "{reply}"
            );
        }
        again = sessions(&mut db);
    }
    assert_eq!(again["klav n0 listener"], now["klav n0 listener"]);
    let klav = again.keys().filter(|n| n.starts_with("klav")).count();
    assert_eq!(klav, wanted.len(), "unexpected names: {again:?}");
}
