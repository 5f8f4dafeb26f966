//! Rooms with owners (v3): who owns a room, `room_info`, `room_update`,
//! `set_role`, `transfer_owner`, `role_changed`, ownership passing when the
//! owner leaves — and who must not hear of any of it.

use serde_json::json;

use crate::harness::*;
use crate::support::owned_rooms::*;

#[test]
fn owners_are_recorded_and_roles_listed() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    // A public room by create_room: owned by its creator, who is not a member.
    let lobby = alice.create_room("Lobby");
    assert_eq!(owner_of(&s, &lobby).as_deref(), Some("alice"));
    let my = alice.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!([]));
    assert_eq!(
        error_code(&mut alice, json!({"type": "room_info", "room_id": lobby})),
        "NOT_A_MEMBER"
    );
    // Once she joins, she acts as its owner.
    alice.join(&lobby);
    let info = bare(alice.request(json!({"type": "room_info", "room_id": lobby})));
    assert_eq!(
        info,
        json!({"type": "room_info", "room": lobby, "name": "Lobby", "topic": null,
               "private": false, "owner": "alice", "role": "owner", "members": 1})
    );
    // A room created by a join by name: the joiner is member and owner.
    let (hall, mut c) = owned_room(&s, "Hall", "bob", &["carl"]);
    assert_eq!(owner_of(&s, &hall).as_deref(), Some("bob"));
    assert_eq!(
        roles(&mut c[1], &hall),
        pairs(&[("bob", "owner"), ("carl", "member")])
    );
    let my = c[0].request(json!({"type": "my_rooms"}));
    let info = &my["rooms_info"][0];
    assert_eq!(
        (
            info["id"].as_str(),
            info["private"].as_bool(),
            info["role"].as_str()
        ),
        (Some(hall.as_str()), Some(false), Some("owner"))
    );
    let my = c[1].request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms_info"][0]["role"], "member");
    // A room of the old server has no owner: everyone is a member, nobody
    // moderates, and lists show it as before (no roles).
    s.db()
        .execute(
            "INSERT INTO rooms (id, name) VALUES ('r_0000old1', 'Old')",
            &[],
        )
        .unwrap();
    alice.join("r_0000old1");
    let info = alice.request(json!({"type": "room_info", "room_id": "r_0000old1"}));
    assert_eq!(
        (info["owner"].clone(), info["role"].as_str()),
        (json!(null), Some("member"))
    );
    assert_eq!(roles(&mut alice, "r_0000old1"), pairs(&[("alice", "-")]));
    let e = error_code(
        &mut alice,
        json!({"type": "room_update", "room_id": "r_0000old1", "topic": "x"}),
    );
    assert_eq!(e, "NOT_ALLOWED");
    // room_info errors.
    assert_eq!(
        error_code(
            &mut alice,
            json!({"type": "room_info", "room_id": "r_deadbeef"})
        ),
        "ROOM_NOT_FOUND"
    );
    assert_eq!(
        error_code(&mut alice, json!({"type": "room_info", "room_id": hall})),
        "NOT_A_MEMBER"
    );
    assert_eq!(
        error_code(&mut alice, json!({"type": "room_info"})),
        "ROOM_ID_REQUIRED"
    );
}

#[test]
fn room_update_reaches_every_member_and_is_logged() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl"]);
    let mut dora = s.client("dora");
    // A plain member may not; a stranger is not a member.
    assert_eq!(
        error_code(
            &mut c[1],
            json!({"type": "room_update", "room_id": room, "name": "Mine"})
        ),
        "NOT_ALLOWED"
    );
    assert_eq!(
        error_code(
            &mut dora,
            json!({"type": "room_update", "room_id": room, "name": "Mine"})
        ),
        "NOT_A_MEMBER"
    );
    assert_eq!(
        error_code(
            &mut dora,
            json!({"type": "room_update", "room_id": "r_deadbeef", "name": "x"})
        ),
        "ROOM_NOT_FOUND"
    );
    // Bad input.
    for (req, code) in [
        (
            json!({"type": "room_update", "room_id": room, "name": ""}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "room_update", "room_id": room, "name": "   "}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "room_update", "room_id": room, "topic": "t".repeat(501)}),
            "TEXT_TOO_LONG",
        ),
        (
            json!({"type": "room_update", "room_id": room, "private": "yes"}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "room_update", "name": "x"}),
            "ROOM_ID_REQUIRED",
        ),
    ] {
        assert_eq!(error_code(&mut c[0], req.clone()), code, "{req}");
    }
    none_hear(c[1..].iter_mut().chain([&mut dora]));
    // The owner: every member's connections hear it; the requester's copy is the reply.
    let topic = "t".repeat(500);
    let reply = c[0].request(
        json!({"type": "room_update", "room_id": room, "name": "Great Hall", "topic": topic}),
    );
    // It carries the id of the system entry that records it.
    let id: i64 = s
        .db()
        .query_one(
            "SELECT max(id) FROM chat_logs WHERE room_id = $1 AND kind = 'system'",
            &[&room],
        )
        .unwrap()
        .get(0);
    let expected = json!({"type": "room_updated", "room": room, "name": "Great Hall",
                          "topic": topic, "private": false, "by": "alice", "id": id});
    assert_eq!(bare(reply), expected);
    for ws in &mut c[1..] {
        let ev = ws.expect("room_updated");
        assert!(ev.get("req_id").is_none(), "{ev}");
        assert_eq!(bare(ev), expected);
    }
    dora.silent();
    let logged = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind = 'system' \
         AND text = 'alice 님이 대화방 정보를 바꾸었습니다'",
        &[&room],
    );
    assert_eq!(logged, 1);
    // An admin may too; only what is given changes.
    let ack =
        c[0].request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    assert_eq!(ack["type"], "set_role_ack");
    for ws in c.iter_mut() {
        ws.expect("role_changed");
    }
    let reply = c[1].request(json!({"type": "room_update", "room_id": room, "topic": ""}));
    assert_eq!(
        (
            reply["name"].as_str(),
            reply["topic"].as_str(),
            reply["by"].as_str()
        ),
        (Some("Great Hall"), Some(""), Some("bob"))
    );
    for i in [0, 2] {
        assert_eq!(c[i].expect("room_updated")["by"], "bob");
    }
    let info = c[2].request(json!({"type": "room_info", "room_id": room}));
    assert_eq!(
        (info["name"].as_str(), info["members"].as_i64()),
        (Some("Great Hall"), Some(3))
    );
    // The history shows the update among the entries.
    let h = c[2].request(json!({"type": "history", "room_id": room}));
    let last = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["text"].as_str()),
        (Some("system"), Some("bob 님이 대화방 정보를 바꾸었습니다"))
    );
    dora.silent();
}

#[test]
fn set_role_and_transfer_owner() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl"]);
    let mut dora = s.client("dora");
    let set = |user: &str, role: &str| json!({"type": "set_role", "room_id": room, "user": user, "role": role});
    // Errors.
    assert_eq!(
        error_code(&mut c[0], set("ghost", "admin")),
        "USER_NOT_FOUND"
    );
    assert_eq!(error_code(&mut c[0], set("dora", "admin")), "NOT_A_MEMBER");
    assert_eq!(error_code(&mut c[0], set("bob", "owner")), "BAD_REQUEST");
    assert_eq!(error_code(&mut c[0], set("bob", "")), "BAD_REQUEST");
    assert_eq!(
        error_code(
            &mut c[0],
            json!({"type": "set_role", "room_id": room, "role": "admin"})
        ),
        "BAD_REQUEST"
    );
    assert_eq!(error_code(&mut c[0], set("alice", "member")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[1], set("carl", "admin")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut dora, set("carl", "admin")), "NOT_A_MEMBER");
    none_hear(c[1..].iter_mut().chain([&mut dora]));
    // The owner makes bob an admin: one role_changed to every member.
    let ack = c[0].request(set("bob", "admin"));
    assert_eq!(
        bare(ack),
        json!({"type": "set_role_ack", "room": room, "user": "bob", "role": "admin"})
    );
    for ws in c.iter_mut() {
        assert_eq!(
            bare(ws.expect("role_changed")),
            role_event(&room, "bob", "admin", Some("alice"))
        );
    }
    dora.silent();
    // Asking for the role someone has: acknowledged, nothing changes, nobody told.
    let ack = c[0].request(set("bob", "admin"));
    assert_eq!(ack["role"], "admin");
    none_hear(c.iter_mut());
    // An admin may not set roles or transfer ownership.
    assert_eq!(error_code(&mut c[1], set("carl", "admin")), "NOT_ALLOWED");
    let transfer = |user: &str| json!({"type": "transfer_owner", "room_id": room, "user": user});
    assert_eq!(error_code(&mut c[1], transfer("bob")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[0], transfer("ghost")), "USER_NOT_FOUND");
    assert_eq!(error_code(&mut c[0], transfer("dora")), "NOT_A_MEMBER");
    assert_eq!(
        error_code(
            &mut c[0],
            json!({"type": "transfer_owner", "room_id": room})
        ),
        "BAD_REQUEST"
    );
    // The owner passes it to carl and becomes an admin: two events, to everyone.
    let ack = c[0].request(transfer("carl"));
    assert_eq!(
        bare(ack),
        json!({"type": "transfer_owner_ack", "room": room, "user": "carl", "role": "owner"})
    );
    for ws in c.iter_mut() {
        assert_eq!(
            bare(ws.expect("role_changed")),
            role_event(&room, "carl", "owner", Some("alice"))
        );
        assert_eq!(
            bare(ws.expect("role_changed")),
            role_event(&room, "alice", "admin", Some("alice"))
        );
    }
    dora.silent();
    assert_eq!(owner_of(&s, &room).as_deref(), Some("carl"));
    assert_eq!(
        roles(&mut c[2], &room),
        pairs(&[("alice", "admin"), ("bob", "admin"), ("carl", "owner")])
    );
    // The former owner is an admin now: no longer allowed to set roles.
    assert_eq!(error_code(&mut c[0], set("bob", "member")), "NOT_ALLOWED");
    // The new owner demotes bob.
    c[2].request(set("bob", "member"));
    for ws in c.iter_mut() {
        assert_eq!(
            bare(ws.expect("role_changed")),
            role_event(&room, "bob", "member", Some("carl"))
        );
    }
    assert_eq!(
        error_code(
            &mut c[1],
            json!({"type": "room_update", "room_id": room, "topic": "x"})
        ),
        "NOT_ALLOWED"
    );
}

#[test]
fn ownership_passes_when_the_owner_leaves() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl", "dora"]);
    // dora is made admin: she inherits before bob and carl, who joined earlier.
    c[0].request(json!({"type": "set_role", "room_id": room, "user": "dora", "role": "admin"}));
    for ws in c.iter_mut() {
        ws.expect("role_changed");
    }
    let ack = c[0].request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["status"], "LEFT");
    for ws in &mut c[1..] {
        assert_eq!(ws.expect("system")["event"], "left");
        assert_eq!(
            bare(ws.expect("role_changed")),
            role_event(&room, "dora", "owner", None)
        );
    }
    c[0].silent();
    assert_eq!(owner_of(&s, &room).as_deref(), Some("dora"));
    // dora leaves: no admin left, the member who joined first (bob) owns it.
    c[3].request(json!({"type": "leave", "room_id": room}));
    for ws in &mut c[1..3] {
        assert_eq!(ws.expect("system")["event"], "left");
        assert_eq!(
            bare(ws.expect("role_changed")),
            role_event(&room, "bob", "owner", None)
        );
    }
    // bob, the owner now, can set roles at once (memory knows).
    let ack =
        c[1].request(json!({"type": "set_role", "room_id": room, "user": "carl", "role": "admin"}));
    assert_eq!(ack["type"], "set_role_ack", "{ack}");
    for ws in &mut c[1..3] {
        ws.expect("role_changed");
    }
    // A member who does not own it leaves: nothing passes.
    c[2].request(json!({"type": "leave", "room_id": room}));
    assert_eq!(c[1].expect("system")["event"], "left");
    c[1].silent();
    // The last one leaves: the empty room keeps no owner.
    c[1].request(json!({"type": "leave", "room_id": room}));
    assert_eq!(owner_of(&s, &room), None);
    // Whoever joins an ownerless room is a member like any other: it is
    // listed as the old server's rooms are.
    c[0].join(&room);
    assert_eq!(roles(&mut c[0], &room), pairs(&[("alice", "-")]));
}

#[test]
fn rooms_without_an_owner_are_listed_as_before() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    s.db()
        .execute(
            "INSERT INTO rooms (id, name) VALUES ('r_0000old2', 'Old')",
            &[],
        )
        .unwrap();
    alice.join("r_0000old2");
    let my = alice.request(json!({"type": "my_rooms"}));
    let info = &my["rooms_info"][0];
    assert!(
        info.get("role").is_none() && info.get("private").is_none(),
        "{info}"
    );
    let list = alice.request(json!({"type": "room_members", "room_id": "r_0000old2"}));
    assert_eq!(
        list["members"],
        json!([{"username": "alice", "nickname": "alice", "online": true}])
    );
}
