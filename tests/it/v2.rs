//! Protocol v2: sender's echo, idempotent send, room members, read markers and
//! unread counts, typing, edit/delete, resume, token refresh and expiry. Each
//! test checks who must receive an event and, as carefully, who must not.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::*;

/// A room with the given members connected and joined (join events consumed).
fn room_with(s: &TestServer, users: &[&str]) -> (String, Vec<Ws>) {
    let mut clients: Vec<Ws> = users.iter().map(|u| s.client(u)).collect();
    let room = clients[0].create_room("room");
    for i in 0..clients.len() {
        clients[i].join(&room);
        for earlier in clients.iter_mut().take(i) {
            assert_eq!(earlier.expect("system")["event"], "joined");
        }
    }
    (room, clients)
}

fn id_of(ev: &Value) -> i64 {
    ev["id"].as_i64().unwrap_or_else(|| panic!("no id in {ev}"))
}

fn count_logs(s: &TestServer, sql: &str, room: &str) -> i64 {
    s.db().query_one(sql, &[&room]).unwrap().get(0)
}

/// Posts a message and returns its id (the sender's echo).
fn post(ws: &mut Ws, room: &str, text: &str) -> i64 {
    let ev = ws.request(json!({"type": "msg", "room_id": room, "text": text}));
    assert_eq!(ev["type"], "message", "{ev}");
    id_of(&ev)
}

#[test]
fn v2_sender_echo_carries_req_id_only_on_the_sending_connection() {
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
fn v2_client_id_makes_msg_and_room_dm_idempotent() {
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
    let n = count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND client_id = 'c-1'",
        &room,
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
    let n = count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind = 'dm'",
        &room,
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
fn v2_client_id_of_the_wrong_form_is_bad_request_and_stores_nothing() {
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
    let n = count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind <> 'system'",
        &room,
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
fn v2_client_id_reused_across_kinds_is_refused_and_delivers_nothing() {
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
    let n = count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind IN ('msg', 'dm')",
        &room,
    );
    assert_eq!(n, 2);
    let queued: i64 = s
        .db()
        .query_one("SELECT count(*) FROM klav_offline_dms", &[])
        .unwrap()
        .get(0);
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
fn v2_same_client_id_concurrently_on_two_connections_stores_one_entry() {
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
    let n = count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind = 'msg'",
        &room,
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

#[test]
fn v2_room_members_lists_everyone_with_online() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["bob", "alice", "carl"]);
    s.user("dora");
    let carl = c.pop().unwrap();
    carl.close();
    std::thread::sleep(Duration::from_millis(100));
    let r = c[0].request(json!({"type": "room_members", "room_id": room}));
    assert_eq!(r["type"], "room_members");
    assert_eq!(r["room"], room.as_str());
    assert_eq!(
        r["members"],
        json!([
            {"username": "alice", "nickname": "alice", "online": true},
            {"username": "bob", "nickname": "bob", "online": true},
            {"username": "carl", "nickname": "carl", "online": false},
        ])
    );
    let mut dora = s.ws(&s.token("dora"));
    let e = dora.request(json!({"type": "room_members", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let e = dora.request(json!({"type": "room_members"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    c[1].silent();
}

#[test]
fn v2_typing_reaches_other_members_only_and_is_throttled() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut alice2 = s.ws(&s.token("alice"));
    let mut outsider = s.client("carl");
    c[0].send(json!({"type": "typing", "room_id": room, "req_id": "t1"}));
    let ev = c[1].expect("typing");
    assert_eq!(ev["room"], room.as_str());
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["user_nickname"], "alice");
    assert!(ev.get("req_id").is_none());
    // Never to the typer (no connection of theirs), never to outsiders, no reply.
    c[0].silent();
    alice2.silent();
    outsider.silent();
    // Within 2 s: dropped silently, not RATE_LIMITED.
    let t0 = Instant::now();
    c[0].send(json!({"type": "typing", "room_id": room}));
    alice2.send(json!({"type": "typing", "room_id": room}));
    c[1].silent();
    c[0].silent();
    // Once 2 s have passed since the last forwarded one: forwarded again.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed()));
    alice2.send(json!({"type": "typing", "room_id": room}));
    assert_eq!(c[1].expect("typing")["user"], "alice");
    c[0].silent();
    // Errors.
    let e = outsider.request(json!({"type": "typing", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let e = outsider.request(json!({"type": "typing"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    // Nothing stored.
    let n = count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind <> 'system'",
        &room,
    );
    assert_eq!(n, 0);
}

fn room_info(ws: &mut Ws, room: &str) -> Value {
    let r = ws.request(json!({"type": "my_rooms"}));
    r["rooms_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == room)
        .cloned()
        .unwrap_or_else(|| panic!("{room} not in {r}"))
}

#[test]
fn v2_read_markers_move_forward_and_sync_only_the_same_user() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut alice2 = s.ws(&s.token("alice"));
    let ids: Vec<i64> = (0..3)
        .map(|i| post(&mut c[1], &room, &format!("m{i}")))
        .collect();
    for _ in 0..3 {
        c[0].expect("message");
        alice2.expect("message");
    }
    // Alice's own messages never count as unread.
    let own = post(&mut c[0], &room, "mine");
    c[1].expect("message");
    alice2.expect("message");
    let info = room_info(&mut c[0], &room);
    assert_eq!(info["read_id"], 0);
    assert_eq!(info["unread"], 3);

    let ack = c[0].request(json!({"type": "read", "room_id": room, "id": ids[1]}));
    assert_eq!(ack["type"], "read_ack");
    assert_eq!(ack["room"], room.as_str());
    assert_eq!(ack["id"], ids[1]);
    let sync = alice2.expect("read_marker");
    assert_eq!(sync["room"], room.as_str());
    assert_eq!(sync["id"], ids[1]);
    c[0].silent();
    c[1].silent();
    let info = room_info(&mut c[0], &room);
    assert_eq!(info["read_id"], ids[1]);
    assert_eq!(info["unread"], 1);
    // Backwards: the marker stays, nobody is told.
    let ack = alice2.request(json!({"type": "read", "room_id": room, "id": ids[0]}));
    assert_eq!(ack["id"], ids[1]);
    c[0].silent();
    // Beyond the newest id, an unknown id, garbage.
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": own + 1000}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": 0}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": "abc"}));
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = c[0].request(json!({"type": "read", "room_id": room}));
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = c[0].request(json!({"type": "read", "id": ids[0]}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    let mut outsider = s.client("carl");
    let e = outsider.request(json!({"type": "read", "room_id": room, "id": ids[0]}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    alice2.silent();
    // A deleted message no longer counts.
    let del = c[1].request(json!({"type": "delete", "id": ids[2]}));
    assert_eq!(del["type"], "message_deleted");
    let info = room_info(&mut c[0], &room);
    assert_eq!(info["unread"], 0);
    // Bob's marker is his own.
    let info = room_info(&mut c[1], &room);
    assert_eq!(info["read_id"], 0);
    assert_eq!(info["unread"], 1);
    // A DM between two other members is as unknown as an id the room lacks;
    // a DM of one's own (sent or received) is an entry like any other.
    alice2.expect("message_deleted");
    outsider.join(&room);
    c[0].expect("system");
    c[1].expect("system");
    alice2.expect("system");
    let ack =
        c[1].request(json!({"type": "room_dm", "room_id": room, "to": "carl", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED");
    let theirs = id_of(&outsider.expect("dm"));
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": theirs}));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    assert_eq!(
        room_info(&mut c[0], &room)["read_id"],
        ids[1],
        "the marker stayed"
    );
    alice2.silent();
    let ack = outsider.request(json!({"type": "read", "room_id": room, "id": theirs}));
    assert_eq!(ack["type"], "read_ack", "the recipient may: {ack}");
    assert_eq!(ack["id"], theirs);
    let ack = c[1].request(json!({"type": "read", "room_id": room, "id": theirs}));
    assert_eq!(ack["type"], "read_ack", "the sender may: {ack}");
    assert_eq!(ack["id"], theirs);
}

#[test]
fn v2_edit_and_delete_room_message() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut outsider = s.client("carl");
    let id = post(&mut c[0], &room, "tpyo");
    c[1].expect("message");
    let ed = c[0].request(json!({"type": "edit", "id": id, "text": "typo"}));
    assert_eq!(ed["type"], "message_edited");
    assert_eq!(ed["id"], id);
    assert_eq!(ed["room"], room.as_str());
    assert_eq!(ed["text"], "typo");
    assert!(ed["edited_at"].as_str().unwrap().ends_with("+00:00"));
    let seen = c[1].expect("message_edited");
    assert_eq!(seen["text"], "typo");
    assert!(seen.get("req_id").is_none());
    c[0].silent();
    outsider.silent();
    // History (cached and not) shows the edit.
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    let item = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(item["text"], "typo");
    assert!(item["edited_at"].is_string());
    let h = c[1].request(json!({"type": "history", "room_id": room, "before_id": id + 1}));
    assert_eq!(
        h["items"].as_array().unwrap().last().unwrap()["text"],
        "typo"
    );
    let info = room_info(&mut c[1], &room);
    assert_eq!(info["last"]["text"], "typo");

    // Errors: someone else's, a system entry, unseen, unknown, text rules.
    let e = c[1].request(json!({"type": "edit", "id": id, "text": "mine now"}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let e = c[1].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let sys: i64 = s
        .db()
        .query_one(
            "SELECT min(id) FROM chat_logs WHERE room_id = $1 AND kind = 'system'",
            &[&room],
        )
        .unwrap()
        .get(0);
    let e = c[0].request(json!({"type": "edit", "id": sys, "text": "x"}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let e = outsider.request(json!({"type": "edit", "id": id, "text": "x"}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "edit", "id": id + 10_000, "text": "x"}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "edit", "id": id, "text": ""}));
    assert_eq!(e["code"], "TEXT_REQUIRED");
    let e = c[0].request(json!({"type": "edit", "id": id, "text": "가".repeat(4001)}));
    assert_eq!(e["code"], "TEXT_TOO_LONG");
    let e = c[0].request(json!({"type": "edit", "text": "x"}));
    assert_eq!(e["code"], "BAD_REQUEST");
    c[1].silent();

    // Delete: tombstone everywhere.
    let d = c[0].request(json!({"type": "delete", "id": id}));
    assert_eq!(d["type"], "message_deleted");
    assert_eq!(d["id"], id);
    assert_eq!(d["room"], room.as_str());
    assert_eq!(c[1].expect("message_deleted")["id"], id);
    outsider.silent();
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    let item = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(item["id"], id);
    assert_eq!(item["deleted"], true);
    assert_eq!(item["text"], "");
    assert_eq!(item["from"], "alice");
    let info = room_info(&mut c[1], &room);
    assert_eq!(info["last"]["deleted"], true);
    assert_eq!(info["last"]["text"], "");
    let e = c[0].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "edit", "id": id, "text": "back"}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    c[1].silent();
}

#[test]
fn v2_dm_edit_and_delete_reach_only_sender_and_recipient() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    let mut bob2 = s.ws(&s.token("bob"));
    let ack =
        c[0].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED");
    let id = id_of(&c[1].expect("dm"));
    bob2.expect("dm");
    let ed = c[0].request(json!({"type": "edit", "id": id, "text": "PSST"}));
    assert_eq!(ed["type"], "message_edited");
    assert_eq!(c[1].expect("message_edited")["text"], "PSST");
    assert_eq!(bob2.expect("message_edited")["text"], "PSST");
    c[2].silent();
    c[0].silent();
    // Carl cannot see it; bob can but is not its author.
    let e = c[2].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[1].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let d = c[0].request(json!({"type": "delete", "id": id}));
    assert_eq!(d["type"], "message_deleted");
    assert_eq!(c[1].expect("message_deleted")["id"], id);
    assert_eq!(bob2.expect("message_deleted")["id"], id);
    c[2].silent();
    // The DM's tombstone in the parties' history.
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    let item = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (item["id"].as_i64(), &item["deleted"]),
        (Some(id), &json!(true))
    );
}

fn mint(user: &str, lifetime_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "iat": now, "exp": now + lifetime_secs}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn v2_refresh_token_and_auth() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    s.user("bob");
    let t = a.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token");
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["expires_in_minutes"], 60);
    let fresh = t["access_token"].as_str().unwrap().to_string();
    // The fresh token opens a connection.
    let mut a2 = s.ws(&fresh);
    let ack = a.request(json!({"type": "auth", "token": fresh}));
    assert_eq!(ack["type"], "auth_ack");
    assert!(ack["expires_at"].as_str().unwrap().ends_with("+00:00"));
    for bad in [
        json!(mint("bob", 3600)),
        json!("garbage"),
        json!(""),
        json!(5),
    ] {
        let e = a.request(json!({"type": "auth", "token": bad}));
        assert_eq!(e["code"], "BAD_TOKEN", "{bad}");
    }
    a2.silent();
}

/// `KLAV_WS_TOKEN_EXPIRY=close` with a 2-second token: `token_expiring` at once
/// (under a minute left), close 1008 at expiry; `auth` with a newer token keeps
/// the connection; the default (`ignore`) never closes.
#[test]
fn v2_token_expiry_enforced_with_a_two_second_token() {
    let s = TestServer::with(|c| c.ws_token_expiry_close = true);
    s.user("alice");
    s.user("bob");
    let started = Instant::now();
    let mut short = s.ws(&mint("alice", 2));
    let warn = short.expect("token_expiring");
    let secs = warn["in_seconds"].as_u64().unwrap();
    assert!((1..=2).contains(&secs), "{warn}");
    let close = short.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "token expired");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // Renewed in time: stays open past the old expiry.
    let mut renewed = s.ws(&mint("alice", 2));
    renewed.expect("token_expiring");
    let e = renewed.request(json!({"type": "auth", "token": mint("bob", 3600)}));
    assert_eq!(e["code"], "BAD_TOKEN");
    let ack = renewed.request(json!({"type": "auth", "token": mint("alice", 3600)}));
    assert_eq!(ack["type"], "auth_ack");
    std::thread::sleep(Duration::from_secs(3));
    let r = renewed.request(json!({"type": "my_rooms"}));
    assert_eq!(r["type"], "my_rooms");
    renewed.silent();

    // The default keeps the old server's behaviour.
    let s = TestServer::start();
    s.user("alice");
    let mut lax = s.ws(&mint("alice", 2));
    std::thread::sleep(Duration::from_secs(3));
    lax.silent();
    assert_eq!(lax.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint_claims(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The claims of a token the server signed.
fn claims_of(token: &str) -> Value {
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .unwrap()
    .claims
}

/// With the default `KLAV_WS_TOKEN_EXPIRY=ignore` a socket outlives its token;
/// the right to fresh tokens does not: `refresh_token` after the expiry is
/// `BAD_TOKEN`, until `auth` brings a valid token.
#[test]
fn v2_refresh_refused_once_the_connection_token_expired() {
    let s = TestServer::start();
    s.user("alice");
    let mut ws = s.ws(&mint("alice", 2));
    let t = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
    std::thread::sleep(Duration::from_millis(2500));
    let e = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(e["code"], "BAD_TOKEN", "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("log in again"),
        "{e}"
    );
    // The socket itself stays open, as it always did.
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    let ack = ws.request(json!({"type": "auth", "token": s.token("alice")}));
    assert_eq!(ack["type"], "auth_ack", "{ack}");
    let t = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
}

/// Tokens carry the login's `auth_time`; refreshing keeps it, and no refreshed
/// token lives past it plus `KLAV_SESSION_MAX_DAYS` (30): once that has passed,
/// `BAD_TOKEN`. A token without the claim (an older version's) counts from its
/// `iat`; `auth` with a token from a new login starts the count again.
#[test]
fn v2_refresh_never_extends_a_login_past_the_session_maximum() {
    let s = TestServer::start();
    s.user("alice");
    let now = unix_now();
    let max = 30 * 24 * 3600;
    let fresh = claims_of(&s.token("alice"));
    assert!(fresh["auth_time"].as_u64().unwrap() >= now, "{fresh}");

    let login = now - max + 3;
    let mut late = s.ws(&mint_claims(
        json!({"sub": "alice", "iat": now, "exp": now + 3600, "auth_time": login}),
    ));
    let mut older = s.ws(&mint_claims(
        json!({"sub": "alice", "iat": login, "exp": now + 3600}),
    ));
    for ws in [&mut late, &mut older] {
        let t = ws.request(json!({"type": "refresh_token"}));
        assert_eq!(t["type"], "token", "{t}");
        assert_eq!(t["expires_in_minutes"], 0, "{t}");
        let claims = claims_of(t["access_token"].as_str().unwrap());
        assert_eq!(claims["auth_time"], login, "{claims}");
        assert!(claims["exp"].as_u64().unwrap() <= login + max, "{claims}");
    }
    std::thread::sleep(Duration::from_millis(3500));
    for ws in [&mut late, &mut older] {
        let e = ws.request(json!({"type": "refresh_token"}));
        assert_eq!(e["code"], "BAD_TOKEN", "{e}");
        assert!(
            e["detail"].as_str().unwrap().contains("log in again"),
            "{e}"
        );
    }
    // A new login restarts the count.
    let ack = late.request(json!({"type": "auth", "token": s.token("alice")}));
    assert_eq!(ack["type"], "auth_ack");
    let t = late.request(json!({"type": "refresh_token"}));
    assert_eq!(t["expires_in_minutes"], 60, "{t}");
    // A token whose login has ended opens nothing.
    let ended = mint_claims(
        json!({"sub": "alice", "iat": now, "exp": now + 3600, "auth_time": now - max - 1}),
    );
    let (status, body) = Ws::connect(s.addr, &ended).err().expect("refused");
    assert_eq!(status, 403);
    assert!(body.contains("log in again"), "{body}");
    assert_eq!(ws_ticket_at(s.addr, Some(&ended)).status, 401);
}

#[test]
fn v2_resume_replays_in_order_with_the_documented_errors() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    let (other, _) = {
        let r = c[2].create_room("carl only");
        c[2].join(&r);
        (r, ())
    };
    let cursor = post(&mut c[0], &room, "seen");
    c[1].expect("message");
    c[2].expect("message");
    let bob = c.remove(1);
    bob.close();
    let m1 = post(&mut c[0], &room, "missed 1");
    let ack = c[0]
        .request(json!({"type": "room_dm", "room_id": room, "to": "carl", "text": "not for bob"}));
    assert_eq!(ack["status"], "DELIVERED");
    let dm_to_bob =
        c[1].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "for bob"}));
    assert_eq!(dm_to_bob["status"], "QUEUED");
    let m2 = post(&mut c[0], &room, "missed 2");

    let mut bob = s.ws(&s.token("bob"));
    assert_eq!(bob.expect("offline_dm")["text"], "for bob");
    bob.send(json!({"type": "resume", "req_id": "R", "rooms": {
        room.clone(): cursor, other.clone(): 0, "r_00000000": 0}}));
    let e1 = bob.expect("message");
    assert_eq!((id_of(&e1), &e1["text"]), (m1, &json!("missed 1")));
    let dm = bob.expect("dm");
    assert_eq!(dm["text"], "for bob");
    let e2 = bob.expect("message");
    assert_eq!(id_of(&e2), m2);
    assert!(id_of(&dm) > m1 && id_of(&dm) < m2);
    let ack = bob.expect("resume_ack");
    assert_eq!(ack["req_id"], "R");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 3}));
    let refused = json!({"recovered": false, "count": 0, "error": "NOT_A_MEMBER"});
    assert_eq!(ack["rooms"][&other], refused);
    assert_eq!(ack["rooms"]["r_00000000"], refused);
    bob.silent();

    // Nothing after the newest id: an empty replay.
    let ack = bob.request(json!({"type": "resume", "rooms": {room.clone(): m2}}));
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 0}));
    // Garbage.
    for bad in [
        json!({"type": "resume"}),
        json!({"type": "resume", "rooms": [room]}),
        json!({"type": "resume", "rooms": {room.clone(): "abc"}}),
        json!({"type": "resume", "rooms": {room.clone(): -1}}),
        json!({"type": "resume", "rooms": {room.clone(): 1.5}}),
        json!({"type": "resume", "rooms": {room.clone(): null}}),
    ] {
        let e = bob.request(bad.clone());
        assert_eq!(e["code"], "BAD_REQUEST", "{bad}");
    }
    // Over 100 rooms, up to as many as fit in a frame.
    for n in [101, 6_000] {
        let many: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("{i:x}"), json!(0))).collect();
        let e = bob.request(json!({"type": "resume", "rooms": many}));
        assert_eq!(e["code"], "BAD_REQUEST", "{n} rooms");
    }
    bob.silent();
    // 10,000 rooms do not fit in a 64 KiB frame: the frame limit closes 1009
    // (another connection; bob's stays).
    let mut big = s.ws(&s.token("bob"));
    let many: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| (format!("r_{i:08x}"), json!(0)))
        .collect();
    big.send(json!({"type": "resume", "rooms": many}));
    let close = big.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    // Still works afterwards.
    let ev = bob.request(json!({"type": "msg", "room_id": room, "text": "back"}));
    assert_eq!(ev["type"], "message");
}

/// A server for [`room_with_live_traffic`]: no rate limit or retention in the
/// way, and room for the poster, which does not read its own echoes.
fn live_traffic_server() -> TestServer {
    TestServer::with(|c| {
        c.rate_burst = 10_000.0;
        c.rate_per_sec = 10_000.0;
        c.max_logs_per_room = 0;
        c.max_output_bytes = 256 << 20;
    })
}

/// A room with `cursor` and 300 entries after it, and a thread posting to it
/// every 2 ms until the returned flag is set (then it hands back the poster).
fn room_with_live_traffic(s: &TestServer) -> (String, i64, Arc<AtomicBool>, Poster) {
    let (room, mut c) = room_with(s, &["alice", "bob"]);
    let cursor = post(&mut c[1], &room, "before");
    for i in 0..300 {
        c[1].send(json!({"type": "msg", "room_id": room, "text": format!("old {i}")}));
    }
    drop(c.remove(1));
    let mut poster = c.remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let room2 = room.clone();
    let posting = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            poster.send(json!({"type": "msg", "room_id": room2, "text": format!("live {n}")}));
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        poster
    });
    std::thread::sleep(Duration::from_millis(100));
    (room, cursor, stop, posting)
}

type Poster = std::thread::JoinHandle<Ws>;

/// The ids of a room's entries in `(after, upto]`, ascending.
fn ids_between(s: &TestServer, room: &str, after: i64, upto: i64) -> Vec<i64> {
    s.db()
        .query(
            "SELECT id FROM chat_logs WHERE room_id = $1 AND id > $2 AND id <= $3 ORDER BY id",
            &[&room, &after, &upto],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Reads until `resume_ack` (which must say `recovered`) and `after_ack`
/// messages past it; returns every message id in arrival order.
fn messages_through_resume(ws: &mut Ws, room: &str, after_ack: usize) -> Vec<i64> {
    let mut got = Vec::new();
    let mut acked = false;
    let mut past = 0;
    while past < after_ack {
        let ev = ws.recv();
        match ev["type"].as_str().unwrap() {
            "message" => {
                got.push(id_of(&ev));
                if acked {
                    past += 1;
                }
            }
            "resume_ack" => {
                assert_eq!(ev["rooms"][room]["recovered"], true, "{ev}");
                acked = true;
            }
            _ => {}
        }
    }
    got
}

/// Messages are posted continuously while a client reconnects and resumes from
/// an old cursor as its first request: everything the connection receives —
/// replay and live events alike — is every id above the cursor exactly once, in
/// id order, with nothing before it.
#[test]
fn v2_resume_during_live_traffic_loses_and_doubles_nothing() {
    let s = live_traffic_server();
    let (room, cursor, stop, posting) = room_with_live_traffic(&s);
    let bob_token = s.token("bob");
    // At once, and after a pause that live traffic would fill were it not held
    // back until the first request.
    for pause in [0, 100] {
        let mut bob = s.ws(&bob_token);
        std::thread::sleep(Duration::from_millis(pause));
        bob.send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): cursor}}));
        let got = messages_through_resume(&mut bob, &room, 100);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "out of order or doubled: {got:?}"
        );
        let want = ids_between(&s, &room, cursor, *got.last().unwrap());
        assert_eq!(got, want, "every id exactly once, in order");
    }
    stop.store(true, Ordering::Relaxed);
    posting.join().unwrap();
}

/// A connection that first asks something else receives live entries for a
/// while, then resumes from an old cursor: the replay fills in only what it did
/// not get live, so every id above the cursor arrives exactly once.
#[test]
fn v2_resume_after_live_entries_replays_only_what_was_not_sent() {
    let s = live_traffic_server();
    let (room, cursor, stop, posting) = room_with_live_traffic(&s);
    let bob_token = s.token("bob");
    for first in ["my_rooms", "history"] {
        let mut bob = s.ws(&bob_token);
        let mut got: Vec<i64> = Vec::new();
        bob.send(json!({"type": first, "room_id": room, "req_id": "F"}));
        // The reply, then some live traffic.
        let mut replied = false;
        let mut live = 0;
        while !replied || live < 50 {
            let ev = bob.recv();
            if ev["req_id"] == "F" {
                replied = true;
            } else if ev["type"] == "message" {
                got.push(id_of(&ev));
                live += 1;
            }
        }
        bob.send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): cursor}}));
        got.extend(messages_through_resume(&mut bob, &room, 100));
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "an id arrived twice: {got:?}");
        let want = ids_between(&s, &room, cursor, *sorted.last().unwrap());
        assert_eq!(sorted, want, "every id above the cursor exactly once");
    }
    stop.store(true, Ordering::Relaxed);
    posting.join().unwrap();
}

/// The user's own DMs never reach their connections live (`dm_ack` answers
/// them), so a resume replays them even above the first entry the connection
/// got live.
#[test]
fn v2_resume_replays_own_dms_above_the_first_live_entry() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let cursor = post(&mut c[0], &room, "seen");
    c[1].expect("message");
    let live = post(&mut c[0], &room, "live");
    assert_eq!(id_of(&c[1].expect("message")), live);
    // From bob's other device, and from this one.
    let mut other = s.ws(&s.token("bob"));
    let ack =
        other.request(json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "a"}));
    assert_eq!(ack["status"], "DELIVERED");
    let ack = c[1].request(json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "b"}));
    assert_eq!(ack["status"], "DELIVERED");
    c[1].send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): cursor}}));
    let a = c[1].expect("dm");
    let b = c[1].expect("dm");
    assert_eq!((&a["text"], &b["text"]), (&json!("a"), &json!("b")));
    assert!(live < id_of(&a) && id_of(&a) < id_of(&b));
    let ack = c[1].expect("resume_ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 2}));
    c[1].silent();
}

/// A fresh connection's live entries wait for its first request, but never
/// for long: one that sends nothing still gets them (in order, none missing),
/// and one whose first request is not `resume` gets them at once, before that
/// request's reply.
#[test]
fn v2_fresh_connection_gets_live_entries_without_a_resume() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let token = s.token("bob");

    let mut quiet = s.ws(&token);
    let mut sent: Vec<i64> = (0..5)
        .map(|i| post(&mut c[0], &room, &format!("q{i}")))
        .collect();
    // Past the hold: live as usual.
    std::thread::sleep(Duration::from_millis(1200));
    sent.extend((5..10).map(|i| post(&mut c[0], &room, &format!("q{i}"))));
    let got: Vec<i64> = (0..10).map(|_| id_of(&quiet.expect("message"))).collect();
    assert_eq!(got, sent);
    quiet.silent();

    let mut asking = s.ws(&token);
    let sent: Vec<i64> = (0..5)
        .map(|i| post(&mut c[0], &room, &format!("a{i}")))
        .collect();
    let edited = c[0].request(json!({"type": "edit", "id": sent[1], "text": "changed"}));
    assert_eq!(edited["type"], "message_edited");
    asking.send(json!({"type": "my_rooms", "req_id": "F"}));
    let got: Vec<i64> = (0..5).map(|_| id_of(&asking.expect("message"))).collect();
    assert_eq!(got, sent);
    let ev = asking.expect("message_edited");
    assert_eq!(id_of(&ev), sent[1]);
    assert_eq!(asking.expect("my_rooms")["req_id"], "F");
    // And live afterwards.
    let id = post(&mut c[0], &room, "after");
    assert_eq!(id_of(&asking.expect("message")), id);
    // The earlier connections got everything once too.
    let mut all = Vec::new();
    while let Some(ev) = c[1].try_recv(QUIET) {
        if ev["type"] == "message" {
            all.push(id_of(&ev));
        }
    }
    assert_eq!(all.len(), 16);
}

#[test]
fn v2_resume_past_retention_or_too_many_is_not_recovered() {
    let s = TestServer::with(|c| {
        c.max_logs_per_room = 5;
        c.retention_interval = Duration::from_secs(1);
        c.rate_burst = 5000.0;
        c.rate_per_sec = 5000.0;
    });
    let (room, mut c) = room_with(&s, &["alice"]);
    let cursor = post(&mut c[0], &room, "first");
    for i in 0..12 {
        post(&mut c[0], &room, &format!("m{i}"));
    }
    let deadline = Instant::now() + WAIT;
    while count_logs(
        &s,
        "SELECT count(*) FROM chat_logs WHERE room_id = $1",
        &room,
    ) > 5
    {
        assert!(Instant::now() < deadline, "retention did not run");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A reconnect (this connection already got them all live).
    let mut again = s.ws(&s.token("alice"));
    let ack = again.request(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    assert_eq!(ack["type"], "resume_ack");
    assert_eq!(ack["rooms"][&room]["recovered"], false);
    assert_eq!(ack["rooms"][&room]["count"], 5);

    // More than 1000 after the cursor: nothing replayed, reload with history.
    let s = TestServer::with(|c| {
        c.max_logs_per_room = 0;
        c.rate_burst = 5000.0;
        c.rate_per_sec = 5000.0;
    });
    let (room, mut c) = room_with(&s, &["alice"]);
    for i in 0..1001 {
        c[0].send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
    }
    for _ in 0..1001 {
        c[0].expect("message");
    }
    let mut again = s.ws(&s.token("alice"));
    again.send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): 0}}));
    let ack = again.recv();
    assert_eq!(ack["type"], "resume_ack", "nothing replayed before the ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": false, "count": 0}));
}

/// Pipelined messages with and without `client_id`, and `typing` between them,
/// keep their order: ids increase in the order sent, for sender and receiver.
#[test]
fn v2_mixed_pipelined_messages_keep_their_order() {
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

/// A resume whose replay cannot be read answers UNAVAILABLE and stops holding
/// live events back: the connection keeps receiving its rooms' traffic.
#[test]
fn v2_failed_resume_releases_live_traffic() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let cursor = post(&mut c[0], &room, "before");
    c[1].expect("message");
    let mut db = s.db();
    db.batch_execute("ALTER TABLE rooms RENAME COLUMN klav_pruned_upto TO klav_it_hidden")
        .unwrap();
    let e = c[1].request(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    assert_eq!(e["code"], "UNAVAILABLE", "{e}");
    db.batch_execute("ALTER TABLE rooms RENAME COLUMN klav_it_hidden TO klav_pruned_upto")
        .unwrap();
    let id = post(&mut c[0], &room, "after");
    assert_eq!(id_of(&c[1].expect("message")), id);
    // And a resume works again: this connection got that entry live already...
    c[1].send(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    let ack = c[1].expect("resume_ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 0}));
    // ... a new one gets it replayed.
    let mut again = s.ws(&s.token("bob"));
    again.send(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    assert_eq!(id_of(&again.expect("message")), id);
    let ack = again.expect("resume_ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 1}));
}
