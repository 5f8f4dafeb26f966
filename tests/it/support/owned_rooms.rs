//! Set-ups and reads the tests of rooms with owners share (roles, private
//! rooms, invitations, moderation).

use serde_json::{json, Value};

use crate::harness::*;

/// `owner` creates a public room by joining it by `name` (owner and member),
/// then each of `members` joins it by id, in order; every connection has
/// taken the `joined` events of those who came after it.
pub fn owned_room(s: &TestServer, name: &str, owner: &str, members: &[&str]) -> (String, Vec<Ws>) {
    let mut o = s.client(owner);
    o.send(json!({"type": "join", "room": name}));
    let ev = o.expect("system");
    assert_eq!(ev["event"], "joined", "{ev}");
    let room = ev["room"].as_str().unwrap().to_string();
    let mut conns = vec![o];
    for m in members {
        let mut ws = s.client(m);
        ws.join(&room);
        for earlier in conns.iter_mut() {
            let ev = earlier.expect("system");
            assert_eq!(
                (ev["event"].as_str(), ev["user"].as_str()),
                (Some("joined"), Some(*m))
            );
        }
        conns.push(ws);
    }
    (room, conns)
}

/// A private room created by `owner` over `ws`: its id (the ack and the
/// owner's own `joined` event consumed).
pub fn private_room(ws: &mut Ws, name: &str) -> String {
    let ack = ws.request(json!({"type": "create_room", "name": name, "private": true}));
    assert_eq!(
        (ack["status"].as_str(), ack["private"].as_bool()),
        (Some("CREATED"), Some(true)),
        "{ack}"
    );
    let room = ack["room_id"].as_str().unwrap().to_string();
    let ev = ws.expect("system");
    assert_eq!(
        (ev["event"].as_str(), ev["room"].as_str()),
        (Some("joined"), Some(room.as_str()))
    );
    room
}

/// The room's owner as stored.
pub fn owner_of(s: &TestServer, room: &str) -> Option<String> {
    s.db()
        .query_one("SELECT klav_owner FROM rooms WHERE id = $1", &[&room])
        .unwrap()
        .get(0)
}

/// `{"room","user","role","by"}` of a `role_changed` event.
pub fn role_event(room: &str, user: &str, role: &str, by: Option<&str>) -> Value {
    json!({"type": "role_changed", "room": room, "user": user, "role": role, "by": by})
}

/// An event without its `ts` (and `req_id`), to compare whole.
pub fn bare(mut ev: Value) -> Value {
    if let Some(o) = ev.as_object_mut() {
        o.remove("ts");
        o.remove("req_id");
    }
    ev
}

/// The error code of a request's reply (which must be an `error`).
#[track_caller]
pub fn error_code(ws: &mut Ws, req: Value) -> String {
    let e = ws.request(req.clone());
    assert_eq!(e["type"], "error", "{req} -> {e}");
    e["code"].as_str().unwrap().to_string()
}

/// Each member's role as `room_members` lists them (`-`: none listed, as in
/// a room without an owner).
pub fn roles(ws: &mut Ws, room: &str) -> Vec<(String, String)> {
    let list = ws.request(json!({"type": "room_members", "room_id": room}));
    assert_eq!(list["type"], "room_members", "{list}");
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// None of `conns` receives anything for a short while (one wait for all).
#[track_caller]
pub fn none_hear<'a>(conns: impl IntoIterator<Item = &'a mut Ws>) {
    let mut v: Vec<&mut Ws> = conns.into_iter().collect();
    all_silent(&mut v);
}
