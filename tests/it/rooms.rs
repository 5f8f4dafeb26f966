//! Rooms: `create_room`, `join` (by id and by name), `leave`, `my_rooms`,
//! `room_members`, and how many rooms a user may create and join.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

#[test]
fn create_room_and_system_entry() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let ack = a.request(json!({"type": "create_room", "name": "  Lobby  "}));
    assert_eq!(ack["type"], "create_room_ack");
    assert_eq!(ack["status"], "CREATED");
    assert_eq!(ack["name"], "Lobby");
    let id = ack["room_id"].as_str().unwrap();
    assert!(id.len() == 10 && id.starts_with("r_"), "{id}");
    assert!(
        id[2..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{id}"
    );
    // Empty names are INVALID; nothing is created.
    for name in [json!(""), json!("   "), json!(null)] {
        let ack = a.request(json!({"type": "create_room", "name": name}));
        assert_eq!(ack["status"], "INVALID", "{name}");
        assert!(ack.get("room_id").is_none());
    }
    let ack = a.request(json!({"type": "create_room"}));
    assert_eq!(ack["status"], "INVALID");
    let mut db = s.db();
    let n: i64 = db
        .query_one("SELECT count(*) FROM rooms", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let row = db
        .query_one(
            "SELECT kind, from_user, from_nickname, text FROM chat_logs WHERE room_id = $1",
            &[&id],
        )
        .unwrap();
    let (kind, from, nick, text): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (kind.as_str(), from.as_str(), nick.as_str()),
        ("system", "system", "system")
    );
    assert_eq!(text, "대화방 \"Lobby\"을 alice 님이 만들었습니다");
    // The creator is not a member.
    let my = a.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!([]));
    a.silent();
}

#[test]
fn join_by_id_broadcasts_to_members_only() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let ta = s.token("alice");
    let mut a2 = s.ws(&ta);
    let mut b = s.client("bob");
    let mut outsider = s.client("carl");
    let room = a.create_room("r");
    a.join(&room);
    a2.expect("system"); // alice's second connection gets her own join too
    b.send(json!({"type": "join", "room_id": room, "req_id": "j1"}));
    for ws in [&mut a, &mut a2, &mut b] {
        let ev = ws.expect("system");
        assert_eq!(ev["event"], "joined");
        assert_eq!(ev["room"], room.as_str());
        assert_eq!(ev["user"], "bob");
        assert_eq!(ev["user_nickname"], "bob");
    }
    outsider.silent();
    // Joining again: join_ack ALREADY, no broadcast.
    let ack = b.request(json!({"type": "join", "room_id": room}));
    assert_eq!(
        (ack["type"].as_str(), ack["status"].as_str()),
        (Some("join_ack"), Some("ALREADY"))
    );
    assert_eq!(ack["room"], room.as_str());
    a.silent();
    // System log entry written once.
    let n: i64 = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND text = 'bob 님이 입장하셨습니다'",
        &[&room],
    );
    assert_eq!(n, 1);
}

#[test]
fn join_errors() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let e = a.request(json!({"type": "join", "room_id": "r_deadbeef"}));
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("ROOM_NOT_FOUND"))
    );
    // Unknown ids are not created (the old squatting hole).
    let n: i64 = s.count("SELECT count(*) FROM rooms", &[]);
    assert_eq!(n, 0);
    let e = a.request(json!({"type": "join"}));
    assert_eq!(e["code"], "ROOM_ID_OR_NAME_REQUIRED");
    let e = a.request(json!({"type": "join", "room_id": "", "room": ""}));
    assert_eq!(e["code"], "ROOM_ID_OR_NAME_REQUIRED");
}

#[test]
fn join_by_name_creates_then_reuses_oldest() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let mut b = s.client("bob");
    a.send(json!({"type": "join", "room": "general"}));
    let ev = a.expect("system");
    assert_eq!(ev["event"], "joined");
    let room = ev["room"].as_str().unwrap().to_string();
    assert!(room.starts_with("r_"));
    // A newer room with the same name does not capture joins by name.
    let newer = b.create_room("general");
    assert_ne!(newer, room);
    b.send(json!({"type": "join", "room": "general"}));
    let ev = b.expect("system");
    assert_eq!(ev["room"], room.as_str());
    assert_eq!(a.expect("system")["user"], "bob");
    // Already a member by name: ALREADY.
    let ack = a.request(json!({"type": "join", "room": "general"}));
    assert_eq!(ack["status"], "ALREADY");
    assert_eq!(ack["room"], room.as_str());
    // `room` older clients send is a name in join, so `room_id` wins when both are given.
    let ack = a.request(json!({"type": "join", "room_id": room, "room": "other"}));
    assert_eq!(ack["status"], "ALREADY");
    let n: i64 = s.count("SELECT count(*) FROM rooms WHERE name = 'other'", &[]);
    assert_eq!(n, 0);
}

#[test]
fn leave_notifies_remaining_members() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let mut b = s.client("bob");
    let mut c = s.client("carl");
    let room = a.create_room("r");
    a.join(&room);
    b.join(&room);
    a.expect("system");
    let ack = b.request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["type"], "leave_ack");
    assert_eq!(
        (ack["room"].as_str(), ack["status"].as_str()),
        (Some(room.as_str()), Some("LEFT"))
    );
    let ev = a.expect("system");
    assert_eq!(
        (
            ev["event"].as_str(),
            ev["user"].as_str(),
            ev["user_nickname"].as_str()
        ),
        (Some("left"), Some("bob"), Some("bob"))
    );
    b.silent();
    c.silent();
    // The leaver no longer receives room messages.
    a.send(json!({"type": "msg", "room_id": room, "text": "after"}));
    assert_eq!(a.expect("message")["text"], "after");
    b.silent();
    // Leaving again / a room never joined: NOT_A_MEMBER, nothing written.
    let ack = b.request(json!({"type": "leave", "room": room}));
    assert_eq!(ack["status"], "NOT_A_MEMBER");
    let ack = c.request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["status"], "NOT_A_MEMBER");
    a.silent();
    let n: i64 = s.count(
        "SELECT count(*) FROM chat_logs WHERE text LIKE '%나가셨습니다'",
        &[],
    );
    assert_eq!(n, 1);
    let e = c.request(json!({"type": "leave"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
}

#[test]
fn my_rooms_order_and_last() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let mut b = s.client("bob");
    let r1 = a.create_room("one");
    let r2 = a.create_room("two");
    let r3 = a.create_room("three");
    a.join(&r1);
    a.join(&r2);
    a.join(&r3);
    b.join(&r1);
    a.expect("system");
    a.send(json!({"type": "msg", "room_id": r2, "text": "hello two"}));
    a.expect("message");
    a.send(json!({"type": "msg", "room_id": r1, "text": "hello one"}));
    a.expect("message");
    b.expect("message");
    // A DM does not change the last message.
    a.send(json!({"type": "room_dm", "room_id": r1, "to": "bob", "text": "psst"}));
    assert_eq!(a.expect("dm_ack")["status"], "DELIVERED");
    b.expect("dm");
    let my = a.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!([r1, r2, r3]));
    let info = my["rooms_info"].as_array().unwrap();
    assert_eq!(info[0]["id"], r1.as_str());
    assert_eq!(info[0]["name"], "one");
    let last = &info[0]["last"];
    assert_eq!(
        (
            last["text"].as_str(),
            last["from"].as_str(),
            last["kind"].as_str()
        ),
        (Some("hello one"), Some("alice"), Some("msg"))
    );
    assert!(last["ts"].as_str().unwrap().ends_with("+00:00"));
    // A system entry counts as the last message.
    let last3 = &info[2]["last"];
    assert_eq!(
        (last3["kind"].as_str(), last3["from"].as_str()),
        (Some("system"), Some("system"))
    );
    assert_eq!(last3["text"], "alice 님이 입장하셨습니다");
    // Bob sees only his room.
    let my = b.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!([r1]));
}

#[test]
fn my_rooms_puts_rooms_without_messages_last() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let r1 = a.create_room("one");
    let r2 = a.create_room("two");
    a.join(&r1);
    a.join(&r2);
    // A room without any entry (as the old server could leave them).
    s.db()
        .batch_execute(
            "INSERT INTO rooms (id, name) VALUES ('r_00000000', 'bare');
             INSERT INTO room_members (room_id, username) VALUES ('r_00000000', 'alice');",
        )
        .unwrap();
    let my = a.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!([r2, r1, "r_00000000"]));
    assert_eq!(my["rooms_info"][2]["last"], json!(null));
}

#[test]
fn room_members_lists_everyone_with_online() {
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
            {"username": "alice", "nickname": "alice", "online": true, "role": "member"},
            {"username": "bob", "nickname": "bob", "online": true, "role": "owner"},
            {"username": "carl", "nickname": "carl", "online": false, "role": "member"},
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
fn rooms_created_and_joined_are_budgeted() {
    let s = TestServer::with(|c| {
        c.rooms_created_per_hour = 3;
        c.max_rooms_per_user = 2;
    });
    let mut a = s.client("roomer");
    let r1 = a.create_room("one");
    let _r2 = a.create_room("two");
    a.join(&r1);
    // A join by name may create a room: it counts.
    a.send(json!({"type": "join", "room": "three", "req_id": "j3"}));
    let ev = a.expect("system");
    assert_eq!(ev["event"], "joined");
    let refused = a.request(json!({"type": "create_room", "name": "four"}));
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("RATE_LIMITED")),
        "{refused}"
    );
    // Another connection of the same user shares the budget.
    let t = s.token("roomer");
    let mut b = s.ws(&t);
    let refused = b.request(json!({"type": "create_room", "name": "five"}));
    assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
    // Member of two rooms: a third join is refused, leaving one makes room.
    let mut owner = s.client("owner");
    let r3 = owner.create_room("three-by-id");
    let r = a.request(json!({"type": "join", "room_id": r3}));
    assert_eq!(r["code"], "TOO_MANY_ROOMS", "{r}");
    let left = a.request(json!({"type": "leave", "room_id": r1}));
    assert_eq!(left["status"], "LEFT");
    a.send(json!({"type": "join", "room_id": r3}));
    let ev: Value = a.expect("system");
    assert_eq!(
        (ev["event"].as_str(), ev["room"].as_str()),
        (Some("joined"), Some(r3.as_str()))
    );
    let mut db = s.db();
    let rooms: i64 = db
        .query_one("SELECT count(*) FROM rooms", &[])
        .unwrap()
        .get(0);
    assert_eq!(rooms, 4, "three of roomer's, one of owner's");
}
