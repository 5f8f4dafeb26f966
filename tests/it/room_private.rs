//! Private rooms (v3): created with their creator as member and owner, never
//! found by name, and indistinguishable from a room that does not exist to
//! anyone who does not belong to them, whatever they ask.

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::owned_rooms::*;

#[test]
fn a_private_room_starts_with_its_creator_as_member_and_owner() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let ack = alice.request(
        json!({"type": "create_room", "name": "Secret", "private": true,
                                   "topic": "plans"}),
    );
    assert_eq!(
        (
            ack["status"].as_str(),
            ack["private"].as_bool(),
            ack["name"].as_str()
        ),
        (Some("CREATED"), Some(true), Some("Secret"))
    );
    let room = ack["room_id"].as_str().unwrap().to_string();
    let joined = alice.expect("system");
    assert_eq!(
        (
            joined["event"].as_str(),
            joined["user"].as_str(),
            joined["room"].as_str()
        ),
        (Some("joined"), Some("alice"), Some(room.as_str()))
    );
    assert!(joined["id"].is_i64(), "{joined}");
    // Both entries are logged: created, then joined.
    let texts: Vec<String> = s
        .db()
        .query(
            "SELECT text FROM chat_logs WHERE room_id = $1 ORDER BY id",
            &[&room],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        texts,
        [
            "대화방 \"Secret\"을 alice 님이 만들었습니다",
            "alice 님이 입장하셨습니다"
        ]
    );
    // She is a member at once: she may post, and her lists show it.
    alice.send(json!({"type": "msg", "room_id": room, "text": "hi"}));
    assert_eq!(alice.expect("message")["text"], "hi");
    let my = alice.request(json!({"type": "my_rooms"}));
    let info = &my["rooms_info"][0];
    assert_eq!(
        (
            info["id"].as_str(),
            info["private"].as_bool(),
            info["role"].as_str()
        ),
        (Some(room.as_str()), Some(true), Some("owner"))
    );
    let info = bare(alice.request(json!({"type": "room_info", "room_id": room})));
    assert_eq!(
        info,
        json!({"type": "room_info", "room": room, "name": "Secret", "topic": "plans",
               "private": true, "owner": "alice", "role": "owner", "members": 1})
    );
    // A public create_room answers as before (no `private`), with its topic stored.
    let ack = alice.request(json!({"type": "create_room", "name": "Open", "topic": "all welcome"}));
    assert!(ack.get("private").is_none(), "{ack}");
    let topic: Option<String> = s
        .db()
        .query_one(
            "SELECT klav_topic FROM rooms WHERE id = $1",
            &[&ack["room_id"].as_str()],
        )
        .unwrap()
        .get(0);
    assert_eq!(topic.as_deref(), Some("all welcome"));
    // Bad input.
    for (req, code) in [
        (
            json!({"type": "create_room", "name": "x", "private": "yes"}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "create_room", "name": "x", "topic": "t".repeat(501)}),
            "TEXT_TOO_LONG",
        ),
        (
            json!({"type": "create_room", "name": "x", "topic": 5}),
            "BAD_REQUEST",
        ),
    ] {
        assert_eq!(error_code(&mut alice, req.clone()), code, "{req}");
    }
}

#[test]
fn a_private_room_is_not_found_by_name() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let secret = private_room(&mut alice, "Secret");
    // A join by the name creates a public room of that name instead.
    bob.send(json!({"type": "join", "room": "Secret"}));
    let ev = bob.expect("system");
    let public = ev["room"].as_str().unwrap().to_string();
    assert_ne!(public, secret);
    alice.silent();
    // The creator too: by name she reaches the public one.
    alice.send(json!({"type": "join", "room": "Secret"}));
    assert_eq!(alice.expect("system")["room"], public.as_str());
    assert_eq!(
        s.count(
            "SELECT count(*) FROM room_members WHERE room_id = $1",
            &[&secret]
        ),
        1
    );
}

/// What `who` is answered for each request naming `room` (and the entry
/// `entry` in it), with the room's id replaced by `ROOM`: compared between a
/// private room and a room that does not exist.
fn answers(who: &mut Ws, room: &str, entry: i64) -> Vec<Value> {
    let reqs = [
        json!({"type": "join", "room_id": room}),
        json!({"type": "history", "room_id": room}),
        json!({"type": "room_members", "room_id": room}),
        json!({"type": "room_info", "room_id": room}),
        json!({"type": "msg", "room_id": room, "text": "let me in"}),
        json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "psst"}),
        json!({"type": "typing", "room_id": room}),
        json!({"type": "read", "room_id": room, "id": entry}),
        json!({"type": "leave", "room_id": room}),
        json!({"type": "room_update", "room_id": room, "topic": "mine"}),
        json!({"type": "set_role", "room_id": room, "user": "alice", "role": "member"}),
        json!({"type": "transfer_owner", "room_id": room, "user": "bob"}),
        json!({"type": "edit", "id": entry, "text": "mine"}),
        json!({"type": "delete", "id": entry}),
        json!({"type": "resume", "rooms": {room: 0}}),
    ];
    reqs.into_iter()
        .map(|r| {
            let reply = bare(who.request(r));
            let text = reply.to_string().replace(room, "ROOM");
            serde_json::from_str::<Value>(&text).unwrap()
        })
        .collect()
}

#[test]
fn a_stranger_is_told_a_private_room_does_not_exist_by_every_request() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let room = private_room(&mut alice, "Secret");
    alice.send(json!({"type": "msg", "room_id": room, "text": "secret"}));
    let entry = alice.expect("message")["id"].as_i64().unwrap();
    let private = answers(&mut bob, &room, entry);
    for (i, reply) in private.iter().enumerate() {
        match reply["type"].as_str() {
            // An entry of the room is one bob cannot see.
            Some("error") if i == 12 || i == 13 => {
                assert_eq!(reply["code"], "MESSAGE_NOT_FOUND", "{i}: {reply}")
            }
            Some("error") => assert_eq!(reply["code"], "ROOM_NOT_FOUND", "{i}: {reply}"),
            Some("resume_ack") => assert_eq!(
                reply["rooms"]["ROOM"],
                json!({"recovered": false, "count": 0, "error": "ROOM_NOT_FOUND"})
            ),
            _ => panic!("request {i} answered {reply}"),
        }
    }
    // A public room bob does not belong to answers as it always has.
    let public = alice.request(json!({"type": "create_room", "name": "Open"}))["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = bob.request(json!({"type": "msg", "room_id": public, "text": "hi"}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let ack = bob.request(json!({"type": "leave", "room_id": public}));
    assert_eq!(ack["status"], "NOT_A_MEMBER");
    let ack =
        bob.request(json!({"type": "room_dm", "room_id": public, "to": "alice", "text": "x"}));
    assert_eq!(ack["status"], "SENDER_NOT_IN_ROOM");
    let ack = bob.request(json!({"type": "resume", "rooms": {public.as_str(): 0}}));
    assert_eq!(ack["rooms"][public.as_str()]["error"], "NOT_A_MEMBER");
    // Nothing was stored or joined, and nothing of the room reached bob.
    assert_eq!(
        s.count(
            "SELECT count(*) FROM room_members WHERE username = 'bob'",
            &[]
        ),
        0
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE room_id = $1",
            &[&room]
        ),
        3
    );
    alice.send(json!({"type": "msg", "room_id": room, "text": "still secret"}));
    alice.expect("message");
    alice.send(json!({"type": "typing", "room_id": room}));
    bob.silent();
    // Nor does it show in his lists.
    let my = bob.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!([]));
}

#[test]
fn room_update_switches_privacy_and_invitations_stay_valid() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let mut carl = s.client("carl");
    let room = private_room(&mut alice, "Secret");
    let ack = alice.request(json!({"type": "invite", "room_id": room, "user": "carl"}));
    assert_eq!(ack["status"], "INVITED");
    carl.expect("invited");
    // Made public: found by id and by name.
    let ev = alice.request(json!({"type": "room_update", "room_id": room, "private": false}));
    assert_eq!(ev["private"], false);
    bob.send(json!({"type": "join", "room": "Secret"}));
    assert_eq!(bob.expect("system")["room"], room.as_str());
    alice.expect("system");
    // Private again: bob stays a member; carl's invitation still opens it.
    let ev = alice.request(json!({"type": "room_update", "room_id": room, "private": true}));
    assert_eq!(ev["private"], true);
    assert_eq!(bob.expect("room_updated")["private"], true);
    carl.join(&room);
    let mut dora = s.client("dora");
    let e = dora.request(json!({"type": "join", "room_id": room}));
    assert_eq!(e["code"], "ROOM_NOT_FOUND");
}
