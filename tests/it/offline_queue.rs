//! The offline DM queue: DMs to a member who is not connected are kept (across
//! a restart) and delivered once, in order and in pieces when large; a DM never
//! stays queued while its recipient is online; each sender keeps their newest
//! 20, a flood cannot push out anybody else's, and the recipient learns how
//! many were dropped, once.

use std::collections::HashMap;
use std::net::Shutdown;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message;

use crate::harness::*;

#[test]
fn offline_dms_are_queued_persisted_and_flushed_once() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let bob = c.pop().unwrap();
    bob.close();
    // The close handshake finished, so the server knows bob is offline.
    for i in 0..3 {
        let ack = c[0].request(
            json!({"type": "room_dm", "room_id": room, "to": "bob", "text": format!("m{i}")}),
        );
        assert_eq!(ack["status"], "QUEUED");
    }
    let url = s.stop();
    // Survives a restart of klav.
    let s = TestServer::on_db(&url, |_| {});
    let t = s.token("bob");
    let mut b = s.ws(&t);
    let mut texts = Vec::new();
    while let Some(ev) = b.try_recv(Duration::from_millis(500)) {
        assert_eq!(ev["type"], "offline_dm");
        assert_eq!(ev["room"], room.as_str());
        assert_eq!(ev["from"], "alice");
        assert_eq!(ev["from_nickname"], "alice");
        assert!(ev["at"].as_str().unwrap().ends_with("+00:00"));
        texts.push(ev["text"].as_str().unwrap().to_string());
    }
    assert_eq!(texts, ["m0", "m1", "m2"], "all of them, oldest first");
    // Deleted once written: a second connection gets nothing.
    until_nothing_queued(&s, Duration::from_millis(2500), "left in the queue");
    b.close();
    let mut b = s.ws(&t);
    b.silent();
}

/// One sender keeps their newest 20 in a recipient's queue (the queue's
/// fairness between senders is below).
#[test]
fn offline_queue_keeps_a_senders_newest_20() {
    let s = TestServer::with(|c| {
        c.rate_burst = 1000.0;
        c.rate_per_sec = 1000.0;
    });
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    c.pop().unwrap().close();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..105 {
        let ack = c[0].request(
            json!({"type": "room_dm", "room_id": room, "to": "bob", "text": format!("{i:03}")}),
        );
        assert_eq!(ack["status"], "QUEUED");
    }
    let t = s.token("bob");
    let mut b = s.ws(&t);
    let mut texts = Vec::new();
    for _ in 0..20 {
        let ev = b.expect("offline_dm");
        texts.push(ev["text"].as_str().unwrap().to_string());
    }
    let expected: Vec<String> = (85..105).map(|i| format!("{i:03}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(b.expect("offline_dm_dropped")["count"], 85);
    b.silent();
}

/// A room whose members are all connected and joined, except `offline`, who
/// joined and left: DMs to them are queued.
fn room_with_offline(s: &TestServer, senders: &[&str], offline: &str) -> (String, Vec<Ws>) {
    let (room, mut clients) = room_named(s, "queue", senders);
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

/// DMs queued, for anyone.
fn queued(s: &TestServer) -> i64 {
    s.count("SELECT count(*) FROM klav_offline_dms", &[])
}

/// Waits (within `within`) until no DM is queued for anyone; `why` says what
/// it means if some stay.
fn until_nothing_queued(s: &TestServer, within: Duration, why: &str) {
    eventually(within, Duration::from_millis(50), || match queued(s) {
        0 => Ok(()),
        n => Err(format!("{n} {why}")),
    });
}

/// Recipients with a count of dropped DMs waiting to be told.
fn dropped_rows(s: &TestServer) -> i64 {
    s.count("SELECT count(*) FROM klav_offline_dropped", &[])
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
    let got = b.drain(Duration::from_millis(700));
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
    eventually(WAIT, Duration::from_millis(50), || {
        if queued(&s) > 0 || dropped_rows(&s) > 0 {
            Err("the queue or the count stayed".into())
        } else {
            Ok(())
        }
    });
    b.close();
    let mut again = s.ws(&bt);
    again.silent();
    again.close();

    // A later flood is counted afresh.
    queue_dms(&mut c[2], &room, "bob", "mal-again-", 22);
    let mut b = s.ws(&bt);
    let got = b.drain(Duration::from_millis(700));
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
    let got = b.drain(Duration::from_millis(700));
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|e| e["type"] == "offline_dm"), "{got:?}");
    assert_eq!(dropped_rows(&s), 0);
}

/// 100 offline DMs of 4,000 control characters (24 KB each once escaped, 2.4 MB
/// together: over the 1 MiB output cap) reach their recipient in pieces; the
/// recipient is not kicked, and the queue is emptied.
#[test]
fn a_large_offline_queue_is_delivered_in_pieces() {
    // Long frames cost more of the request budget: raised so the sender is quick.
    let s = TestServer::with(|c| {
        c.rate_per_sec = 10_000.0;
        c.rate_burst = 10_000.0;
    });
    // A full queue: five senders, each with their whole share (20) of it.
    let names: Vec<String> = (0..5).map(|k| format!("dm-big-sender{k}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (room, mut senders) = room_named(&s, "big", &names);
    let bt = s.user("dm-big-recipient");
    {
        let mut b = s.ws(&bt);
        b.join(&room);
        for a in senders.iter_mut() {
            a.expect("system");
        }
        b.close();
    }
    std::thread::sleep(Duration::from_millis(200));
    let text: String = "\u{1}".repeat(3990);
    for i in 0..100 {
        let a = &mut senders[i / 20];
        a.send(
            json!({"type": "room_dm", "room_id": room, "to": "dm-big-recipient",
                      "text": format!("{i}{text}")}),
        );
        let ack = a.expect("dm_ack");
        assert_eq!(ack["status"], "QUEUED", "{ack}");
    }
    for attempt in 0..2 {
        let mut b = s.ws(&bt);
        let mut got = 0;
        while got < 100 {
            let ev = b.recv();
            assert_eq!(ev["type"], "offline_dm", "attempt {attempt}: {ev}");
            assert!(
                ev["text"].as_str().unwrap().starts_with(&got.to_string()),
                "in order"
            );
            got += 1;
        }
        if attempt == 0 {
            // Everything was read; once written, nothing stays queued.
            until_nothing_queued(&s, WAIT, "left in the queue");
            b.silent();
            b.close();
            // The second connection gets nothing again.
            let mut again = s.ws(&bt);
            again.silent();
            break;
        }
    }
    // A history of such entries is a large reply too: answered, not kicked.
    let mut b = s.ws(&bt);
    let r = b.request(json!({"type": "history", "room_id": room, "limit": 50}));
    assert_eq!(r["type"], "history", "{r}");
    assert_eq!(r["items"].as_array().map(Vec::len), Some(50));
}

/// Reads a DM recipient's connection to its end after shutting down its own
/// side (no close handshake that could race with deliveries): every DM
/// written to it is read.
fn drain_dms(mut ws: Ws, got: &mut HashMap<String, usize>) {
    let _ = ws.sock.get_mut().shutdown(Shutdown::Write);
    ws.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    while let Ok(m) = ws.sock.read() {
        if let Message::Text(t) = m {
            let ev: Value = serde_json::from_str(t.as_str()).unwrap();
            if ev["type"] == "dm" || ev["type"] == "offline_dm" {
                *got.entry(ev["text"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
}

#[test]
fn each_dm_reaches_a_reconnecting_recipient_exactly_once() {
    let s = unthrottled_server();
    let mut sender = s.client("dm-sender");
    let rt = s.user("dm-recipient");
    let room = sender.create_room("dms");
    sender.join(&room);
    {
        let mut r = s.ws(&rt);
        r.join(&room);
        let _ = sender.expect("system");
        drain_dms(r, &mut HashMap::new());
    }
    const N: usize = 300;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let rt2 = rt.clone();
    let addr = s.addr;
    let recipient = std::thread::spawn(move || {
        let mut got = HashMap::new();
        // Connect and disconnect over and over while the DMs are sent.
        while done_rx.try_recv().is_err() {
            let ws = Ws::connect(addr, &rt2).unwrap();
            std::thread::sleep(Duration::from_millis(3));
            drain_dms(ws, &mut got);
        }
        got
    });
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for batch in 0..N / 10 {
        let reqs: Vec<Value> = (0..10)
            .map(|k| {
                let i = batch * 10 + k;
                json!({"type": "room_dm", "room_id": room, "to": "dm-recipient",
                       "text": format!("d{i}"), "req_id": format!("d{i}")})
            })
            .collect();
        sender.pipeline(reqs);
        for _ in 0..10 {
            let ack = sender.expect("dm_ack");
            *statuses
                .entry(ack["status"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done_tx.send(()).unwrap();
    let mut got = recipient.join().unwrap();
    // The last connection: whatever is still queued is flushed to it.
    let last = s.ws(&rt);
    std::thread::sleep(Duration::from_millis(300));
    // Nothing stays queued while the recipient is connected.
    until_nothing_queued(&s, WAIT, "DMs stay queued while the recipient is online");
    drain_dms(last, &mut got);
    let total: usize = statuses.values().sum();
    assert_eq!(total, N, "{statuses:?}");
    assert_eq!(
        statuses.get("DELIVERED").copied().unwrap_or(0)
            + statuses.get("QUEUED").copied().unwrap_or(0),
        N,
        "{statuses:?}"
    );
    let mut missing = Vec::new();
    for i in 0..N {
        match got.get(&format!("d{i}")) {
            Some(1) => {}
            Some(n) => panic!("d{i} arrived {n} times"),
            None => missing.push(i),
        }
    }
    assert!(
        missing.is_empty(),
        "never arrived: {missing:?} ({statuses:?})"
    );
}
