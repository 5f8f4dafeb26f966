//! Room messages and in-room DMs: who receives them (and, as carefully, who
//! does not), the sender's echo, `history` from the database and from the
//! cache, retention, and one order per room under concurrent senders.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

#[test]
fn msg_reaches_every_member_connection_and_nobody_else() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let tb = s.token("bob");
    c.push(s.ws(&tb));
    let mut outsider = s.client("carl");
    c[0].send(json!({"type": "msg", "room_id": room, "text": "안녕하세요 👋", "req_id": 1}));
    let mut ids = Vec::new();
    for ws in c.iter_mut() {
        let ev = ws.expect("message");
        assert_eq!(ev["room"], room.as_str());
        assert_eq!(ev["from"], "alice");
        assert_eq!(ev["from_nickname"], "alice");
        assert_eq!(ev["text"], "안녕하세요 👋");
        ids.push(ev["id"].as_i64().expect("a numeric id"));
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    outsider.silent();
    // Persisted with that id, Korean intact.
    let text: String = s
        .db()
        .query_one(
            "SELECT text FROM chat_logs WHERE id = $1 AND kind = 'msg'",
            &[&ids[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(text, "안녕하세요 👋");
    // `room` is accepted for `room_id`.
    c[1].send(json!({"type": "msg", "room": room, "text": "old client"}));
    assert_eq!(c[0].expect("message")["text"], "old client");
}

#[test]
fn sender_echo_carries_req_id_only_on_the_sending_connection() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut alice2 = s.ws(&s.token("alice"));
    c[0].send(json!({"type": "msg", "room_id": room, "text": "hi", "req_id": "x1"}));
    let own = c[0].expect("message");
    assert_eq!(own["req_id"], "x1");
    for other in [&mut alice2, &mut c[1]] {
        let ev = other.expect("message");
        assert!(ev.get("req_id").is_none(), "{ev}");
        assert_eq!(id_of(&ev), id_of(&own));
    }
    // Without a req_id the sender gets the shared event.
    c[0].send(json!({"type": "msg", "room_id": room, "text": "plain"}));
    assert!(c[0].expect("message").get("req_id").is_none());
    // Numeric req_ids are echoed as numbers.
    c[0].send(json!({"type": "msg", "room_id": room, "text": "n", "req_id": 7}));
    assert_eq!(c[0].expect("message")["req_id"], 7);
}

#[test]
fn msg_errors() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice"]);
    let mut outsider = s.client("bob");
    let e = outsider.request(json!({"type": "msg", "room_id": room, "text": "hi"}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    c[0].silent();
    let e = c[0].request(json!({"type": "msg", "text": "hi"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    let e = c[0].request(json!({"type": "msg", "room_id": room, "text": ""}));
    assert_eq!(e["code"], "TEXT_REQUIRED");
    let e = c[0].request(json!({"type": "msg", "room_id": room}));
    assert_eq!(e["code"], "TEXT_REQUIRED");
    // 4000 characters (multi-byte) are fine, 4001 are not.
    let ok = "가".repeat(4000);
    c[0].send(json!({"type": "msg", "room_id": room, "text": ok}));
    assert_eq!(
        c[0].expect("message")["text"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        4000
    );
    let e = c[0].request(json!({"type": "msg", "room_id": room, "text": "a".repeat(4001)}));
    assert_eq!(e["code"], "TEXT_TOO_LONG");
    let e = c[0].request(json!({"type": "msg", "room_id": room, "text": "nul\u{0}"}));
    assert_eq!(e["code"], "BAD_REQUEST");
    let n: i64 = s.count("SELECT count(*) FROM chat_logs WHERE kind = 'msg'", &[]);
    assert_eq!(n, 1);
}

#[test]
fn dm_statuses_and_visibility() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    let mut outsider = s.client("dora");
    let tb = s.token("bob");
    let mut b2 = s.ws(&tb);
    // Delivered to every connection of the recipient, nobody else.
    let ack =
        c[0].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "secret"}));
    assert_eq!(ack["type"], "dm_ack");
    assert_eq!(
        (
            ack["room"].as_str(),
            ack["to"].as_str(),
            ack["status"].as_str()
        ),
        (Some(room.as_str()), Some("bob"), Some("DELIVERED"))
    );
    for ws in [&mut c[1], &mut b2].into_iter() {
        let dm = ws.expect("dm");
        assert_eq!(
            (dm["from"].as_str(), dm["to"].as_str(), dm["text"].as_str()),
            (Some("alice"), Some("bob"), Some("secret"))
        );
        assert_eq!(dm["room"], room.as_str());
        assert_eq!(dm["from_nickname"], "alice");
        assert!(dm["id"].is_i64());
    }
    c[0].silent();
    c[2].silent();
    // Statuses.
    let ack =
        outsider.request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "x"}));
    assert_eq!(ack["status"], "SENDER_NOT_IN_ROOM");
    let ack = c[0].request(json!({"type": "room_dm", "room_id": room, "to": "dora", "text": "x"}));
    assert_eq!(ack["status"], "RECIPIENT_NOT_IN_ROOM");
    let ack =
        c[0].request(json!({"type": "room_dm", "room_id": room, "to": "nobody", "text": "x"}));
    assert_eq!(ack["status"], "RECIPIENT_NOT_IN_ROOM");
    let e = c[0].request(json!({"type": "room_dm", "room_id": room, "text": "x"}));
    assert_eq!(e["code"], "ROOM_ID_AND_TO_REQUIRED");
    let e = c[0].request(json!({"type": "room_dm", "to": "bob", "text": "x"}));
    assert_eq!(e["code"], "ROOM_ID_AND_TO_REQUIRED");
    c[1].silent();
    outsider.silent();
    // DMs do not reach history of others.
    let h = c[2].request(json!({"type": "history", "room_id": room}));
    assert!(
        h["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] != "dm"),
        "{h}"
    );
    for who in [0, 1] {
        let h = c[who].request(json!({"type": "history", "room_id": room}));
        let dms: Vec<&Value> = h["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "dm")
            .collect();
        assert_eq!(dms.len(), 1, "{h}");
        assert_eq!(dms[0]["to"], "bob");
        assert_eq!(dms[0]["text"], "secret");
    }
}

/// The database path of `history` (the cache is off: this test rewrites
/// timestamps behind the server's back).
#[test]
fn history_order_limits_filters_and_membership() {
    let s = TestServer::with(|c| {
        c.rate_burst = 1000.0;
        c.rate_per_sec = 1000.0;
        c.history_cache_entries = 0;
    });
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut ids = Vec::new();
    for i in 0..30 {
        c[0].send(json!({"type": "msg", "room_id": room, "text": format!("t{i}")}));
        ids.push(c[0].expect("message")["id"].as_i64().unwrap());
        c[1].expect("message");
    }
    // Default limit 20, newest 20, oldest first.
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    assert_eq!(h["type"], "history");
    assert_eq!(h["room"], room.as_str());
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    assert_eq!(items[0]["text"], "t10");
    assert_eq!(items[19]["text"], "t29");
    let first = &items[0];
    for key in ["id", "ts", "kind", "room", "from", "from_nickname", "text"] {
        assert!(!first[key].is_null(), "{key} in {first}");
    }
    assert!(first.get("to").is_none());
    // Clamping.
    let n = |v: Value| v["items"].as_array().unwrap().len();
    assert_eq!(
        n(c[1].request(json!({"type": "history", "room_id": room, "limit": 0}))),
        1
    );
    assert_eq!(
        n(c[1].request(json!({"type": "history", "room_id": room, "limit": -5}))),
        1
    );
    assert_eq!(
        n(c[1].request(json!({"type": "history", "room_id": room, "limit": 1000}))),
        33
    );
    assert_eq!(
        n(c[1].request(json!({"type": "history", "room_id": room, "limit": "3"}))),
        3
    );
    // Cursors by id.
    let h =
        c[1].request(json!({"type": "history", "room_id": room, "before_id": ids[5], "limit": 3}));
    let texts: Vec<&str> = item_strs(&h, "text");
    assert_eq!(texts, ["t2", "t3", "t4"]);
    let h =
        c[1].request(json!({"type": "history", "room_id": room, "after_id": ids[25], "limit": 50}));
    let texts: Vec<&str> = item_strs(&h, "text");
    assert_eq!(texts, ["t26", "t27", "t28", "t29"]);
    // Timestamps: set known times, then filter (with and without Z).
    let mut db = s.db();
    for (i, id) in ids.iter().enumerate() {
        db.execute(
            "UPDATE chat_logs SET ts = '2025-01-01T00:00:00Z'::timestamptz + make_interval(mins => $2) WHERE id = $1",
            &[id, &(i as i32)],
        )
        .unwrap();
    }
    let h = c[1].request(json!({"type": "history", "room_id": room, "after": "2025-01-01T00:27:00Z", "before": "2025-02-01"}));
    let texts: Vec<&str> = item_strs(&h, "text");
    assert_eq!(texts, ["t28", "t29"]);
    let h = c[1].request(json!({"type": "history", "room_id": room, "before": "2025-01-01T00:02:00+00:00", "after": "2024-12-31T00:00:00"}));
    let texts: Vec<&str> = item_strs(&h, "text");
    assert_eq!(texts, ["t0", "t1"]);
    assert_eq!(h["items"][0]["ts"], "2025-01-01T00:00:00.000000+00:00");
    let e = c[1].request(json!({"type": "history", "room_id": room, "before": "yesterday"}));
    assert_eq!(e["code"], "BAD_REQUEST");
    // Membership and room required.
    let mut outsider = s.client("carl");
    let e = outsider.request(json!({"type": "history", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let e = outsider.request(json!({"type": "history"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
}

#[test]
fn a_failed_write_is_unavailable_and_delivers_nothing() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    // Make every insert into chat_logs fail, as a broken database would.
    let mut db = s.db();
    db.batch_execute(
        "CREATE FUNCTION klav_it_fail() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$;
         CREATE TRIGGER klav_it_fail BEFORE INSERT ON chat_logs
           FOR EACH ROW EXECUTE FUNCTION klav_it_fail();",
    )
    .unwrap();
    let e = c[0].request(json!({"type": "msg", "room_id": room, "text": "lost?"}));
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("UNAVAILABLE"))
    );
    c[1].silent();
    c[0].silent();
    let n: i64 = db
        .query_one("SELECT count(*) FROM chat_logs WHERE text = 'lost?'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    db.batch_execute("DROP TRIGGER klav_it_fail ON chat_logs")
        .unwrap();
    c[0].send(json!({"type": "msg", "room_id": room, "text": "back"}));
    assert_eq!(c[1].expect("message")["text"], "back");
}

#[test]
fn retention_keeps_the_newest_n() {
    let s = TestServer::with(|c| {
        c.max_logs_per_room = 5;
        c.retention_interval = Duration::from_secs(1);
        c.rate_burst = 1000.0;
        c.rate_per_sec = 1000.0;
    });
    let (room, mut c) = room_with(&s, &["alice"]);
    let mut ids = Vec::new();
    for i in 0..12 {
        c[0].send(json!({"type": "msg", "room_id": room, "text": format!("p{i}")}));
        ids.push(c[0].expect("message")["id"].as_i64().unwrap());
    }
    let kept = eventually(Duration::from_secs(6), Duration::from_millis(100), || {
        let kept: Vec<i64> = s
            .db()
            .query(
                "SELECT id FROM chat_logs WHERE room_id = $1 ORDER BY id",
                &[&room],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if kept.len() == 5 {
            Ok(kept)
        } else {
            Err(format!("retention kept {kept:?}"))
        }
    });
    assert_eq!(kept, ids[7..].to_vec());
}

/// Several senders in several rooms at once: every member gets every message
/// exactly once, and all members of a room see one common order (= id order).
#[test]
fn concurrent_senders_one_order_per_room() {
    let s = TestServer::with(|c| {
        c.rate_burst = 10_000.0;
        c.rate_per_sec = 10_000.0;
    });
    const ROOMS: usize = 3;
    const MEMBERS: usize = 4;
    const PER_SENDER: usize = 30;
    let mut rooms = Vec::new();
    let mut clients: Vec<Vec<Ws>> = Vec::new();
    for r in 0..ROOMS {
        let names: Vec<String> = (0..MEMBERS).map(|m| format!("u{r}_{m}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (room, c) = room_with(&s, &refs);
        rooms.push(room);
        clients.push(c);
    }
    // Every member sends PER_SENDER messages without waiting, all rooms at once.
    let mut handles = Vec::new();
    for (r, members) in clients.into_iter().enumerate() {
        for (m, mut ws) in members.into_iter().enumerate() {
            let room = rooms[r].clone();
            handles.push(std::thread::spawn(move || {
                for i in 0..PER_SENDER {
                    ws.send(json!({"type": "msg", "room_id": room, "text": format!("{m}:{i}")}));
                }
                let mut got = Vec::new();
                while got.len() < MEMBERS * PER_SENDER {
                    let ev = ws.recv();
                    assert_eq!(ev["type"], "message", "{ev}");
                    got.push((
                        ev["id"].as_i64().unwrap(),
                        ev["text"].as_str().unwrap().to_string(),
                    ));
                }
                ws.silent();
                (r, got)
            }));
        }
    }
    let mut per_room: HashMap<usize, Vec<Vec<(i64, String)>>> = HashMap::new();
    for h in handles {
        let (r, got) = h.join().unwrap();
        per_room.entry(r).or_default().push(got);
    }
    for (r, views) in per_room {
        let first = &views[0];
        // Ids strictly increase: delivery order is id order.
        assert!(first.windows(2).all(|w| w[0].0 < w[1].0), "room {r}");
        // Exactly once each.
        let mut texts: Vec<&str> = first.iter().map(|(_, t)| t.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), MEMBERS * PER_SENDER);
        // Per-sender order.
        for m in 0..MEMBERS {
            let seq: Vec<usize> = first
                .iter()
                .filter_map(|(_, t)| t.strip_prefix(&format!("{m}:")).map(|i| i.parse().unwrap()))
                .collect();
            assert_eq!(seq, (0..PER_SENDER).collect::<Vec<_>>());
        }
        // Everyone saw the same sequence.
        for v in &views[1..] {
            assert_eq!(v, first, "room {r}");
        }
        // And history agrees.
        let db_ids: Vec<i64> = s
            .db()
            .query(
                "SELECT id FROM chat_logs WHERE room_id = $1 AND kind = 'msg' ORDER BY id",
                &[&rooms[r]],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(db_ids, first.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    }
}

#[test]
fn req_id_is_echoed_on_direct_replies() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    a.send(json!({"type": "my_rooms", "req_id": "abc"}));
    assert_eq!(a.expect("my_rooms")["req_id"], "abc");
    a.send(json!({"type": "create_room", "name": "x", "req_id": 42}));
    assert_eq!(a.expect("create_room_ack")["req_id"], 42);
    a.send(json!({"type": "msg", "room_id": "r_x", "text": "t", "req_id": [1]}));
    let e = a.expect("error");
    assert!(
        e.get("req_id").is_none(),
        "only strings and numbers are echoed: {e}"
    );
}

/// `history` answered from the server's memory must equal the database's answer
/// for every filter, for every member (DM visibility), after joins, leaves,
/// messages and DMs, and past the cache's per-room capacity.
#[test]
fn history_cache_agrees_with_the_database() {
    let s = TestServer::with(|c| {
        c.rate_burst = 10_000.0;
        c.rate_per_sec = 10_000.0;
        c.max_logs_per_room = 0;
    });
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    // Fill the cache early, then keep writing: appends must keep it exact.
    c[0].request(json!({"type": "history", "room_id": room}));
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..230 {
        match i % 7 {
            3 => {
                let to = ["alice", "bob", "carl"][(i + 1) % 3];
                let ack = c[i % 3].request(
                    json!({"type": "room_dm", "room_id": room, "to": to, "text": format!("dm{i}")}),
                );
                assert_eq!(ack["status"], "DELIVERED");
            }
            _ => {
                c[i % 3].send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
            }
        }
    }
    // A leave and a re-join write system entries.
    c[2].request(json!({"type": "leave", "room_id": room}));
    c[2].send(json!({"type": "join", "room_id": room}));
    // Let every delivery arrive.
    for ws in c.iter_mut() {
        ws.drain(Duration::from_millis(400));
    }
    let uncached = TestServer::on_db(&s.db_url, |c| c.history_cache_entries = 0);
    let users = ["alice", "bob", "carl"];
    let mut direct: Vec<Ws> = users
        .iter()
        .map(|u| uncached.ws(&uncached.token(u)))
        .collect();
    let all = direct[0].request(json!({"type": "history", "room_id": room, "limit": 200}));
    let items = all["items"].as_array().unwrap();
    let mid_id = items[100]["id"].as_i64().unwrap();
    let mid_ts = items[120]["ts"].as_str().unwrap().to_string();
    let late_ts = items[190]["ts"].as_str().unwrap().to_string();
    let queries = [
        json!({}),
        json!({"limit": 200}),
        json!({"limit": 1}),
        json!({"limit": 50, "before_id": mid_id}),
        json!({"limit": 50, "after_id": mid_id}),
        json!({"limit": 200, "before_id": mid_id}),
        json!({"limit": 30, "before": mid_ts}),
        json!({"limit": 30, "after": mid_ts, "before": late_ts}),
        json!({"limit": 10, "after_id": mid_id, "before_id": mid_id + 20}),
    ];
    for (u, user) in users.iter().enumerate() {
        for q in &queries {
            let mut req = q.clone();
            req["type"] = json!("history");
            req["room_id"] = json!(room);
            let a = c[u].request(req.clone());
            let b = direct[u].request(req.clone());
            assert_eq!(a["items"], b["items"], "{user}: {req}");
            assert!(!a["items"].as_array().unwrap().is_empty(), "{user}: {req}");
        }
    }
    // The cache served at least some of these.
    let hits = metric(s.addr, "klav_history_cache_hits_total");
    assert!(hits > 0, "no history request was answered from the cache");
}
