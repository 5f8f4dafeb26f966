//! The friends protocol as the follows and presence tests expect it: requests
//! sent and answered, and the events they must produce, without the fields that
//! vary (`ts`, `req_id`).

use serde_json::{json, Value};

use crate::harness::*;

/// An event without the fields that vary (`ts`, `req_id`), after checking that
/// `ts` is there.
pub fn body(mut ev: Value) -> Value {
    assert!(ev["ts"].is_string(), "every event has ts: {ev}");
    let m = ev.as_object_mut().expect("events are objects");
    m.remove("ts");
    m.remove("req_id");
    ev
}

/// The next event on `ws`, of type `kind`, without `ts`/`req_id`.
pub fn next(ws: &mut Ws, kind: &str) -> Value {
    body(ws.expect(kind))
}

/// `friend_follow`: the acknowledgement, without the fields that vary.
pub fn follow(ws: &mut Ws, to: &str) -> Value {
    body(ws.request(json!({"type": "friend_follow", "to": to})))
}

/// `friend_unfollow`: the acknowledgement, without the fields that vary.
pub fn unfollow(ws: &mut Ws, to: &str) -> Value {
    body(ws.request(json!({"type": "friend_unfollow", "to": to})))
}

/// The `friend_follow_ack` expected for `to`.
pub fn follow_ack(to: &str, status: &str) -> Value {
    json!({"type": "friend_follow_ack", "to": to, "status": status})
}

/// The `friend_unfollow_ack` expected for `to`.
pub fn unfollow_ack(to: &str, status: &str) -> Value {
    json!({"type": "friend_unfollow_ack", "to": to, "status": status})
}

/// The `notify_followed` a followed user gets when `from` follows them.
pub fn notify(from: &str) -> Value {
    json!({"type": "notify_followed", "from": from})
}

/// The `presence_change` a subscribed follower gets (`name`: the nickname).
pub fn presence(user: &str, name: &str, status: &str) -> Value {
    json!({"type": "presence_change", "scope": "friends", "user": user, "name": name, "status": status})
}

/// One entry of `online_friends.users`.
pub fn online(username: &str, nickname: &str, connections: u64) -> Value {
    json!({
        "id": username,
        "username": username,
        "name": nickname,
        "nickname": nickname,
        "connections": connections,
    })
}

/// The `online_friends` reply (or subscription snapshot) expected.
pub fn online_friends(users: Vec<Value>) -> Value {
    json!({"type": "online_friends", "users": users})
}

/// `get_online_friends`: the reply, without the fields that vary.
pub fn get_online(ws: &mut Ws) -> Value {
    body(ws.request(json!({"type": "get_online_friends"})))
}

/// `presence_friends_subscribe`: the snapshot, without the fields that vary.
pub fn subscribe(ws: &mut Ws) -> Value {
    body(ws.request(json!({"type": "presence_friends_subscribe"})))
}

/// `presence_friends_unsubscribe`: the acknowledgement, without the fields that vary.
pub fn unsubscribe(ws: &mut Ws) -> Value {
    body(ws.request(json!({"type": "presence_friends_unsubscribe"})))
}

/// Rows in `follows` for `from` following `to` (0 or 1).
pub fn follows_rows(s: &TestServer, from: &str, to: &str) -> i64 {
    s.count(
        "SELECT count(*) FROM follows WHERE follower_username = $1 AND followee_username = $2",
        &[&from, &to],
    )
}
