//! Idempotent send: a `client_id` on `msg` and `room_dm` makes a retry return
//! the original entry (or acknowledgement) and deliver nothing again — on one
//! connection, on two at once, after a restart — and pipelined messages with
//! and without one keep their order.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;

use crate::harness::*;

#[test]
fn client_id_makes_msg_and_room_dm_idempotent() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let first =
        c[0].request(json!({"type": "msg", "room_id": room, "text": "once", "client_id": "c-1"}));
    assert_eq!(first["client_id"], "c-1");
    assert_eq!(c[1].expect("message")["client_id"], "c-1");
    // The retry: same id, the original text, this request's req_id; nobody else hears.
    let again =
        c[0].request(json!({"type": "msg", "room_id": room, "text": "twice", "client_id": "c-1"}));
    assert_eq!(again["type"], "message");
    assert_eq!(id_of(&again), id_of(&first));
    assert_eq!(again["text"], "once");
    assert_ne!(again["req_id"], first["req_id"]);
    c[1].silent();
    c[0].silent();
    let n = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND client_id = 'c-1'",
        &[&room],
    );
    assert_eq!(n, 1);
    // Another user may use the same key.
    let bobs =
        c[1].request(json!({"type": "msg", "room_id": room, "text": "bob's", "client_id": "c-1"}));
    assert_ne!(id_of(&bobs), id_of(&first));
    assert_eq!(c[0].expect("message")["text"], "bob's");
    // History shows the key.
    let h = c[0].request(json!({"type": "history", "room_id": room}));
    let items = h["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|i| i["client_id"] == "c-1" && i["from"] == "alice"));

    // room_dm: the retry gets the original dm_ack; the recipient gets one dm.
    let ack = c[0].request(
        json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst", "client_id": "d-1"}),
    );
    assert_eq!(ack["status"], "DELIVERED");
    let dm = c[1].expect("dm");
    assert_eq!(dm["client_id"], "d-1");
    let ack = c[0].request(
        json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst!", "client_id": "d-1"}),
    );
    assert_eq!(ack["type"], "dm_ack");
    assert_eq!(ack["status"], "DELIVERED");
    c[1].silent();
    let n = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind = 'dm'",
        &[&room],
    );
    assert_eq!(n, 1);
    // A queued DM's retry answers QUEUED.
    let carl_token = s.user("carl");
    let mut carl = s.ws(&carl_token);
    carl.join(&room);
    c[0].expect("system");
    c[1].expect("system");
    carl.close();
    let dm = json!({"type": "room_dm", "room_id": room, "to": "carl", "text": "later", "client_id": "q"});
    assert_eq!(c[0].request(dm.clone())["status"], "QUEUED");
    assert_eq!(c[0].request(dm)["status"], "QUEUED");
    let mut carl = s.ws(&carl_token);
    assert_eq!(carl.expect("offline_dm")["text"], "later");
    carl.silent();
}

#[test]
fn client_id_of_the_wrong_form_is_bad_request_and_stores_nothing() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let long = "x".repeat(65);
    for bad in [
        json!(""),
        json!(long),
        json!(5),
        json!(null),
        json!(["a"]),
        json!({"a": 1}),
    ] {
        let e =
            c[0].request(json!({"type": "msg", "room_id": room, "text": "t", "client_id": bad}));
        assert_eq!(e["code"], "BAD_REQUEST", "{bad}");
        let e = c[0].request(
            json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "t", "client_id": bad}),
        );
        assert_eq!(e["code"], "BAD_REQUEST", "{bad}");
    }
    c[1].silent();
    let n = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind <> 'system'",
        &[&room],
    );
    assert_eq!(n, 0);
    // 64 characters (multi-byte) are fine.
    let ok = "가".repeat(64);
    let ev = c[0].request(json!({"type": "msg", "room_id": room, "text": "t", "client_id": ok}));
    assert_eq!(ev["client_id"], ok.as_str());
}

/// A `client_id` is one key per sender across `msg` and `room_dm`: reusing a
/// message's key for a DM (or a DM's for a message) is no retry, and it is
/// refused without storing or delivering anything, and without showing the
/// original. Retries of the same kind still get the original.
#[test]
fn client_id_reused_across_kinds_is_refused_and_delivers_nothing() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    let first = c[0]
        .request(json!({"type": "msg", "room_id": room, "text": "hello", "client_id": "k-msg"}));
    assert_eq!(first["type"], "message", "{first}");
    c[1].expect("message");
    c[2].expect("message");

    // A DM with the message's key.
    let e = c[0].request(
        json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst", "client_id": "k-msg"}),
    );
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "BAD_REQUEST");
    assert_eq!(e["detail"], "client_id already used for another message");
    // ... to an offline recipient: nothing queued either.
    let e = c[0].request(
        json!({"type": "room_dm", "room_id": room, "to": "carl", "text": "later", "client_id": "k-msg"}),
    );
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");

    // A message with a DM's key.
    let ack = c[0].request(
        json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "secret", "client_id": "k-dm"}),
    );
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    assert_eq!(c[1].expect("dm")["text"], "secret");
    let e = c[0]
        .request(json!({"type": "msg", "room_id": room, "text": "public", "client_id": "k-dm"}));
    assert_eq!(
        e["type"], "error",
        "the DM is not shown back as the original: {e}"
    );
    assert_eq!(e["code"], "BAD_REQUEST");
    assert_eq!(e["detail"], "client_id already used for another message");

    // Nobody received anything, and nothing new was stored or queued.
    c[0].silent();
    c[1].silent();
    c[2].silent();
    let n = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind IN ('msg', 'dm')",
        &[&room],
    );
    assert_eq!(n, 2);
    let queued: i64 = s.count("SELECT count(*) FROM klav_offline_dms", &[]);
    assert_eq!(queued, 0);

    // Genuine retries keep their answers.
    let again = c[0]
        .request(json!({"type": "msg", "room_id": room, "text": "hello?", "client_id": "k-msg"}));
    assert_eq!(again["type"], "message");
    assert_eq!(id_of(&again), id_of(&first));
    let ack = c[0].request(
        json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "secret?", "client_id": "k-dm"}),
    );
    assert_eq!(ack["type"], "dm_ack");
    assert_eq!(ack["status"], "DELIVERED");
    c[1].silent();
    c[2].silent();
}

/// The same client_id sent at once on two connections of one user stores one
/// entry; both connections get that entry, and it survives a restart.
#[test]
fn same_client_id_concurrently_on_two_connections_stores_one_entry() {
    let s = TestServer::with(|c| {
        c.rate_burst = 1000.0;
        c.rate_per_sec = 1000.0;
    });
    let (room, mut c) = room_with(&s, &["alice"]);
    let mut a2 = s.ws(&s.token("alice"));
    for i in 0..20 {
        let cid = format!("k{i}");
        let m1 = json!({"type": "msg", "room_id": room, "text": format!("one {i}"), "client_id": cid, "req_id": "a"});
        let m2 = json!({"type": "msg", "room_id": room, "text": format!("two {i}"), "client_id": cid, "req_id": "b"});
        c[0].send(m1);
        a2.send(m2);
    }
    let mut ids = HashSet::new();
    for ws in [&mut c[0], &mut a2] {
        // Each connection: its own 20 replies (req_id) plus the other's originals.
        let mut seen = 0;
        let deadline = Instant::now() + WAIT;
        while seen < 20 && Instant::now() < deadline {
            let ev = ws.expect("message");
            if ev.get("req_id").is_some() {
                seen += 1;
                ids.insert((ev["client_id"].as_str().unwrap().to_string(), id_of(&ev)));
            }
        }
        assert_eq!(seen, 20);
    }
    // One id per client_id, whichever connection asked.
    assert_eq!(ids.len(), 20, "{ids:?}");
    let n = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind = 'msg'",
        &[&room],
    );
    assert_eq!(n, 20);
    // Across a restart the database still refuses the key.
    let (k0, id0) = ids.iter().find(|(k, _)| k == "k0").cloned().unwrap();
    drop(c);
    drop(a2);
    let url = s.stop();
    let s = TestServer::on_db(&url, |_| {});
    let mut a = s.ws(&s.token("alice"));
    let ev = a.request(json!({"type": "msg", "room_id": room, "text": "again", "client_id": k0}));
    assert_eq!(id_of(&ev), id0);
}

/// Pipelined messages with and without `client_id`, and `typing` between them,
/// keep their order: ids increase in the order sent, for sender and receiver.
#[test]
fn mixed_pipelined_messages_keep_their_order() {
    let s = TestServer::with(|c| {
        c.rate_burst = 1000.0;
        c.rate_per_sec = 1000.0;
    });
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    for i in 0..60 {
        let mut m = json!({"type": "msg", "room_id": room, "text": format!("{i}")});
        if i % 3 != 0 {
            m["client_id"] = json!(format!("mix-{i}"));
        }
        if i % 10 == 5 {
            c[0].send(json!({"type": "typing", "room_id": room}));
        }
        c[0].send(m);
    }
    for ws in c.iter_mut() {
        let mut last = 0;
        let mut texts = Vec::new();
        while texts.len() < 60 {
            let ev = ws.recv();
            if ev["type"] != "message" {
                assert_eq!(ev["type"], "typing", "{ev}");
                continue;
            }
            assert!(id_of(&ev) > last, "{ev}");
            last = id_of(&ev);
            texts.push(ev["text"].as_str().unwrap().parse::<u32>().unwrap());
        }
        assert_eq!(texts, (0..60).collect::<Vec<_>>());
    }
}
