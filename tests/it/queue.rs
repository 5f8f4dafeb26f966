//! The offline DM queue under pressure: a member of a shared room flooding an
//! offline recipient cannot push out anybody else's DMs, and the recipient
//! learns how many were dropped, once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// A room whose members are all connected and joined, except `offline`, who
/// joined and left: DMs to them are queued.
fn room_with_offline(s: &TestServer, senders: &[&str], offline: &str) -> (String, Vec<Ws>) {
    let mut clients: Vec<Ws> = senders.iter().map(|u| s.client(u)).collect();
    let room = clients[0].create_room("queue");
    for i in 0..clients.len() {
        clients[i].join(&room);
        for earlier in clients.iter_mut().take(i) {
            assert_eq!(earlier.expect("system")["event"], "joined");
        }
    }
    let mut away = s.client(offline);
    away.join(&room);
    for c in clients.iter_mut() {
        assert_eq!(c.expect("system")["event"], "joined");
    }
    away.close();
    (room, clients)
}

/// Sends `n` DMs to `to` (texts `{prefix}{i}`), pipelined in runs, each
/// answered `QUEUED`.
fn queue_dms(ws: &mut Ws, room: &str, to: &str, prefix: &str, n: usize) {
    for run in (0..n).collect::<Vec<_>>().chunks(25) {
        for i in run {
            ws.send(json!({"type": "room_dm", "room_id": room, "to": to,
                           "text": format!("{prefix}{i}")}));
        }
        for _ in run {
            let ack = ws.expect("dm_ack");
            assert_eq!(ack["status"], "QUEUED", "{ack}");
        }
    }
}

/// Everything a fresh connection is sent until it goes quiet.
fn drain(ws: &mut Ws) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(ev) = ws.try_recv(Duration::from_millis(700)) {
        got.push(ev);
    }
    got
}

fn queued(s: &TestServer) -> i64 {
    s.db()
        .query_one("SELECT count(*) FROM klav_offline_dms", &[])
        .unwrap()
        .get(0)
}

fn dropped_rows(s: &TestServer) -> i64 {
    s.db()
        .query_one("SELECT count(*) FROM klav_offline_dropped", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_flood_of_dms_cannot_push_a_friends_dm_out_of_the_offline_queue() {
    let s = TestServer::with(|c| {
        c.rate_burst = 10_000.0;
        c.rate_per_sec = 10_000.0;
    });
    let sybils = ["m1", "m2", "m3", "m4", "m5"];
    let mut senders = vec!["fran", "sam", "mal"];
    senders.extend(sybils);
    let (room, mut c) = room_with_offline(&s, &senders, "bob");

    // A friend's DM first, then a modest sender within their share.
    queue_dms(&mut c[0], &room, "bob", "fran-", 1);
    queue_dms(&mut c[1], &room, "bob", "sam-", 5);
    // One attacker far over the share: only their own oldest go.
    queue_dms(&mut c[2], &room, "bob", "mal-", 120);
    assert_eq!(queued(&s), 1 + 5 + 20);
    // Five more accounts fill the queue past its 100: those holding the most
    // (the attackers, 20 each) lose their oldest.
    for (i, ws) in c.iter_mut().enumerate().skip(3) {
        queue_dms(ws, &room, "bob", &format!("{}-", senders[i]), 20);
    }
    assert_eq!(queued(&s), 100);
    let dropped = (1 + 5 + 120 + 5 * 20) - 100;

    let bt = s.token("bob");
    let mut b = s.ws(&bt);
    let got = drain(&mut b);
    let (last, dms) = got.split_last().expect("events on connect");
    assert!(
        dms.iter().all(|e| e["type"] == "offline_dm"),
        "the queued DMs come first: {:?}",
        dms.iter().map(|e| &e["type"]).collect::<Vec<_>>()
    );
    assert_eq!(dms.len(), 100);
    assert_eq!(last["type"], "offline_dm_dropped", "{last}");
    assert_eq!(last["count"], dropped, "{last}");
    assert!(last["ts"].is_string(), "{last}");
    let texts: Vec<&str> = dms.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts[0], "fran-0", "the friend's DM survived, oldest first");
    let sams: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| t.starts_with("sam-"))
        .collect();
    assert_eq!(
        sams,
        ["sam-0", "sam-1", "sam-2", "sam-3", "sam-4"],
        "within the share: all kept"
    );
    let mut per_sender: HashMap<&str, usize> = HashMap::new();
    for e in dms {
        *per_sender.entry(e["from"].as_str().unwrap()).or_default() += 1;
    }
    assert!(per_sender.values().all(|n| *n <= 20), "{per_sender:?}");
    // mal's survivors are his newest.
    let mals: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| t.starts_with("mal-"))
        .collect();
    let newest: Vec<String> = (120 - mals.len()..120)
        .map(|i| format!("mal-{i}"))
        .collect();
    assert_eq!(mals, newest);

    // Told once: the queue and the count are gone once written, and the next
    // connection gets neither.
    let deadline = Instant::now() + WAIT;
    while queued(&s) > 0 || dropped_rows(&s) > 0 {
        assert!(Instant::now() < deadline, "the queue or the count stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.close();
    let mut again = s.ws(&bt);
    again.silent();
    again.close();

    // A later flood is counted afresh.
    queue_dms(&mut c[2], &room, "bob", "mal-again-", 22);
    let mut b = s.ws(&bt);
    let got = drain(&mut b);
    assert_eq!(got.len(), 21, "{got:?}");
    assert_eq!(got[20]["type"], "offline_dm_dropped");
    assert_eq!(got[20]["count"], 2);
}

#[test]
fn a_queue_within_its_bounds_drops_nothing_and_says_nothing() {
    let s = TestServer::with(|c| {
        c.rate_burst = 10_000.0;
        c.rate_per_sec = 10_000.0;
    });
    let (room, mut c) = room_with_offline(&s, &["fran", "sam"], "bob");
    queue_dms(&mut c[0], &room, "bob", "fran-", 20);
    queue_dms(&mut c[1], &room, "bob", "sam-", 20);
    let mut b = s.ws(&s.token("bob"));
    let got = drain(&mut b);
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|e| e["type"] == "offline_dm"), "{got:?}");
    assert_eq!(dropped_rows(&s), 0);
}
