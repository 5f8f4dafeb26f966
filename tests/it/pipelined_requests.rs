//! One connection, one order: requests pipelined on a connection take effect as
//! if each waited for the reply to the one before, and a session opened right
//! after another closed never loads stale state.

use serde_json::{json, Value};

use crate::harness::*;

/// Events until one of type `kind` with `req_id`, returning it and what came first.
fn until_reply(ws: &mut Ws, req_id: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let ev = ws.recv();
        if ev["req_id"] == req_id {
            return (ev, before);
        }
        before.push(ev);
    }
}

#[test]
fn join_then_msg_pipelined_delivers_the_msg() {
    let s = unthrottled_server();
    let mut owner = s.client("owner");
    let mut a = s.client("joiner");
    for i in 0..40 {
        let room = owner.create_room(&format!("r{i}"));
        a.pipeline([
            json!({"type": "join", "room_id": room, "req_id": "j"}),
            json!({"type": "msg", "room_id": room, "text": format!("m{i}"), "req_id": "m"}),
        ]);
        let joined = a.expect("system");
        assert_eq!(
            (joined["event"].as_str(), joined["room"].as_str()),
            (Some("joined"), Some(room.as_str()))
        );
        let msg = a.recv();
        assert_eq!(msg["type"], "message", "iteration {i}: {msg}");
        assert_eq!(msg["text"], format!("m{i}"));
        assert_eq!(msg["room"], room.as_str());
    }
    a.silent();
}

#[test]
fn leave_then_msg_pipelined_is_refused_and_reaches_nobody() {
    let s = unthrottled_server();
    let mut a = s.client("leaver");
    let mut b = s.client("stayer");
    let room = a.create_room("lounge");
    a.join(&room);
    b.join(&room);
    let _ = a.expect("system"); // b joined
    for i in 0..30 {
        a.pipeline([
                json!({"type": "leave", "room_id": room, "req_id": "l"}),
                json!({"type": "msg", "room_id": room, "text": format!("after-leave {i}"), "req_id": "m"}),
            ],
        );
        let ack = a.expect("leave_ack");
        assert_eq!(ack["status"], "LEFT", "{ack}");
        let err = a.recv();
        assert_eq!(
            (
                err["type"].as_str(),
                err["code"].as_str(),
                err["req_id"].as_str()
            ),
            (Some("error"), Some("NOT_A_MEMBER"), Some("m")),
            "iteration {i}: {err}"
        );
        let left = b.expect("system");
        assert_eq!(left["event"], "left", "{left}");
        if i == 0 {
            // The leaver created the room, so owned it: ownership passes on.
            assert_eq!(b.expect("role_changed")["user"], "stayer");
        }
        // Rejoin for the next round; b must not have received the message.
        a.join(&room);
        let joined = b.expect("system");
        assert_eq!(joined["event"], "joined", "b got {joined}");
    }
    b.silent();
    let mut db = s.db();
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM chat_logs WHERE text LIKE 'after-leave%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was stored");
}

#[test]
fn follow_then_online_friends_pipelined_sees_the_follow() {
    let s = unthrottled_server();
    let mut a = s.client("follower");
    let _x = s.client("followee");
    for i in 0..30 {
        a.pipeline([
            json!({"type": "friend_follow", "to": "followee", "req_id": "f"}),
            json!({"type": "get_online_friends", "req_id": "g"}),
        ]);
        let (ack, _) = until_reply(&mut a, "f");
        assert_eq!(ack["status"], "FOLLOWED", "iteration {i}: {ack}");
        let (list, _) = until_reply(&mut a, "g");
        assert_eq!(
            list["users"].as_array().map(Vec::len),
            Some(1),
            "iteration {i}: {list}"
        );
        a.pipeline([
            json!({"type": "friend_unfollow", "to": "followee", "req_id": "u"}),
            json!({"type": "presence_friends_subscribe", "req_id": "p"}),
            json!({"type": "presence_friends_unsubscribe", "req_id": "q"}),
        ]);
        let (ack, _) = until_reply(&mut a, "u");
        assert_eq!(ack["status"], "UNFOLLOWED", "{ack}");
        let (snap, _) = until_reply(&mut a, "p");
        assert_eq!(snap["users"], json!([]), "iteration {i}: {snap}");
        let _ = until_reply(&mut a, "q");
    }
}

#[test]
fn join_close_reconnect_msg_works_on_the_new_connection() {
    let s = unthrottled_server();
    let mut owner = s.client("host");
    let t = s.user("hopper");
    for i in 0..30 {
        let room = owner.create_room(&format!("hop{i}"));
        let mut first = s.ws(&t);
        first.send(json!({"type": "join", "room_id": room}));
        // Gone at once: the join may still be on its way to the database.
        drop(first);
        let mut second = s.ws(&t);
        second.send(json!({"type": "msg", "room_id": room, "text": "hi", "req_id": "m"}));
        let r = second.recv();
        assert_eq!(r["type"], "message", "iteration {i}: {r}");
        second.close();
    }
}
