//! Live member presence: `room_members` with `"watch":true`, the
//! `member_presence` events it brings (first connection opened, last one
//! closed) — and, as carefully, who does not get them: other connections,
//! other rooms, a watch ended by `room_members_unwatch`, a leave, the
//! eleventh watch, or a block.

use serde_json::{json, Value};

use crate::harness::*;

fn watch(ws: &mut Ws, room: &str) -> Value {
    let r = ws.request(json!({"type": "room_members", "room_id": room, "watch": true}));
    assert_eq!(r["type"], "room_members", "{r}");
    r
}

fn member_presence(room: &str, user: &str, online: bool) -> Value {
    json!({"type": "member_presence", "room": room, "user": user, "online": online})
}

/// The next `member_presence`, without `ts`.
fn next_presence(ws: &mut Ws) -> Value {
    let mut ev = ws.next_of("member_presence");
    assert!(ev["ts"].is_string(), "{ev}");
    ev.as_object_mut().unwrap().remove("ts");
    ev
}

/// A registered member of `room` who is not connected; returns their token.
fn offline_member(s: &TestServer, user: &str, room: &str) -> String {
    let token = s.user(user);
    let mut ws = s.ws(&token);
    ws.join(room);
    ws.close();
    token
}

#[test]
fn a_watch_hears_first_open_and_last_close_of_members() {
    let s = TestServer::start();
    let alice_token = s.user("alice");
    let mut alice = s.ws(&alice_token);
    let mut other_conn = s.ws(&alice_token);
    let mut carol = s.client("carol");
    let room = alice.create_room("watched");
    alice.join(&room);
    carol.join(&room);
    let bob_token = offline_member(&s, "bob", &room);
    alice.drain(QUIET);
    other_conn.drain(QUIET);
    carol.drain(QUIET);

    let r = watch(&mut alice, &room);
    let bob = r["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["username"] == "bob");
    assert_eq!(bob.unwrap()["online"], false, "{r}");

    let b1 = s.ws(&bob_token);
    assert_eq!(
        next_presence(&mut alice),
        member_presence(&room, "bob", true)
    );
    let b2 = s.ws(&bob_token);
    b1.close();
    alice.none_of("member_presence");
    b2.close();
    assert_eq!(
        next_presence(&mut alice),
        member_presence(&room, "bob", false)
    );
    // Per connection: alice's other connection and carol did not watch.
    other_conn.none_of("member_presence");
    carol.none_of("member_presence");

    // Errors: a room one is not a member of, a watch that is not a boolean.
    let mut dave = s.client("dave");
    let e = dave.request(json!({"type": "room_members", "room_id": room, "watch": true}));
    assert_eq!(e["code"], "NOT_A_MEMBER", "{e}");
    let e = alice.request(json!({"type": "room_members", "room_id": room, "watch": "yes"}));
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");
    let e = alice.request(json!({"type": "room_members_unwatch"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED", "{e}");
    // dave's refused watch watches nothing.
    let _b = s.ws(&bob_token);
    assert_eq!(
        next_presence(&mut alice),
        member_presence(&room, "bob", true)
    );
    dave.none_of("member_presence");
}

#[test]
fn unwatch_leave_and_close_end_the_watch() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let room = alice.create_room("ending");
    alice.join(&room);
    let bob_token = offline_member(&s, "bob", &room);
    alice.drain(QUIET);

    watch(&mut alice, &room);
    let ack = alice.request(json!({"type": "room_members_unwatch", "room_id": room}));
    assert_eq!(ack["type"], "unwatch_ack", "{ack}");
    assert_eq!(ack["room"], room.as_str(), "{ack}");
    assert!(ack["ts"].is_string());
    s.ws(&bob_token).close();
    alice.none_of("member_presence");
    // Unwatching again (or a room never watched) is still acknowledged.
    let ack = alice.request(json!({"type": "room_members_unwatch", "room_id": room}));
    assert_eq!(ack["type"], "unwatch_ack", "{ack}");

    // Watching again, then leaving the room, ends it.
    watch(&mut alice, &room);
    let ack = alice.request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["status"], "LEFT", "{ack}");
    s.ws(&bob_token).close();
    alice.none_of("member_presence");
}

#[test]
fn the_eleventh_watch_drops_the_oldest() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let bob_token = s.user("bob");
    let mut bob = s.ws(&bob_token);
    let rooms: Vec<String> = (0..11)
        .map(|n| {
            let room = alice.create_room(&format!("room {n}"));
            alice.join(&room);
            bob.join(&room);
            room
        })
        .collect();
    bob.close();
    alice.drain(QUIET);
    for room in &rooms {
        watch(&mut alice, room);
    }
    let _bob = s.ws(&bob_token);
    let mut heard: Vec<String> = (0..10)
        .map(|_| {
            next_presence(&mut alice)["room"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    alice.none_of("member_presence");
    heard.sort();
    let mut want = rooms[1..].to_vec();
    want.sort();
    assert_eq!(heard, want, "every watch but the oldest");
}

#[test]
fn a_blocker_never_appears_in_member_presence_of_the_blocked() {
    let s = TestServer::start();
    let alice_token = s.user("alice");
    let mut alice = s.ws(&alice_token);
    let mut bob = s.client("bob");
    let mut carol = s.client("carol");
    let room = alice.create_room("shared");
    alice.join(&room);
    bob.join(&room);
    carol.join(&room);
    let ack = alice.request(json!({"type": "block", "user": "bob"}));
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    for (w, shown) in [(&mut bob, false), (&mut carol, true)] {
        let r = watch(w, &room);
        let a = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["username"] == "alice");
        assert_eq!(a.unwrap()["online"], shown, "{r}");
    }
    alice.close();
    assert_eq!(
        next_presence(&mut carol),
        member_presence(&room, "alice", false)
    );
    let mut alice = s.ws(&alice_token);
    assert_eq!(
        next_presence(&mut carol),
        member_presence(&room, "alice", true)
    );
    bob.none_of("member_presence");

    // Unblocked: bob hears her again.
    let ack = alice.request(json!({"type": "unblock", "user": "bob"}));
    assert_eq!(ack["status"], "UNBLOCKED", "{ack}");
    alice.close();
    assert_eq!(
        next_presence(&mut bob),
        member_presence(&room, "alice", false)
    );
}
