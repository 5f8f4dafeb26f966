//! The server API's posts and what it reads and ends, as a backend and the
//! WebSocket clients see them: posts and announcements delivered exactly
//! like a `msg` (and to nobody else), history, presence, disconnect and
//! revocation — on one node and across two. (Users, rooms and members are
//! in `server_api`.)

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::api::*;
use crate::support::nodes::Nodes;

/// A server with an API key.
fn server() -> (TestServer, String) {
    let s = TestServer::start();
    let key = api_key(&s.db_url, "backend");
    (s, key)
}

#[test]
fn posts_reach_members_once_like_a_msg_and_nobody_else() {
    let (s, key) = server();
    let a = s.addr;
    let (room, mut clients) = room_with(&s, &["ann", "ben"]);
    let mut outsider = s.client("dan");
    let url = format!("/api/v1/rooms/{room}/messages");

    let stored = api_ok(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"from": "ben", "text": "from the app", "client_id": "c-1"})),
        201,
    );
    assert_eq!(
        (
            stored["kind"].as_str(),
            stored["from"].as_str(),
            stored["text"].as_str()
        ),
        (Some("msg"), Some("ben"), Some("from the app")),
        "{stored}"
    );
    for ws in clients.iter_mut() {
        let ev = ws.expect("message");
        assert_eq!(
            (
                ev["id"].clone(),
                ev["from"].as_str(),
                ev["client_id"].as_str()
            ),
            (stored["id"].clone(), Some("ben"), Some("c-1")),
            "{ev}"
        );
    }
    // A retry stores nothing and delivers nothing.
    let again = api_ok(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"from": "ben", "text": "from the app", "client_id": "c-1"})),
        200,
    );
    assert_eq!(again["id"], stored["id"]);
    for ws in clients.iter_mut() {
        ws.silent();
    }
    outsider.silent();

    // An announcement: a system entry every member gets.
    let ann = api_ok(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"text": "maintenance at 5"})),
        201,
    );
    assert_eq!(
        (ann["kind"].as_str(), ann["from"].as_str()),
        (Some("system"), Some("system"))
    );
    for ws in clients.iter_mut() {
        let ev = ws.expect("system");
        assert_eq!(
            (ev["event"].as_str(), ev["text"].as_str(), ev["id"].clone()),
            (
                Some("announcement"),
                Some("maintenance at 5"),
                ann["id"].clone()
            ),
            "{ev}"
        );
        ws.silent();
    }
    outsider.silent();
    // Members read it back as a system entry of the room.
    let page = clients[0].request(json!({"type": "history", "room_id": room, "limit": 1}));
    let item = &page["items"][0];
    assert_eq!(
        (
            item["id"].clone(),
            item["kind"].as_str(),
            item["from_nickname"].as_str()
        ),
        (ann["id"].clone(), Some("system"), Some("announcement")),
        "{page}"
    );

    // Refusals.
    api_err(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"from": "dan", "text": "x"})),
        403,
        "NOT_A_MEMBER",
    );
    api_err(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"from": "nobody", "text": "x"})),
        404,
        "USER_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"from": "ben"})),
        400,
        "TEXT_REQUIRED",
    );
    api_err(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"text": "x".repeat(4001)})),
        400,
        "TEXT_TOO_LONG",
    );
    api_err(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"text": "x", "client_id": ""})),
        400,
        "BAD_REQUEST",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/rooms/r_00000000/messages",
        Some(json!({"text": "x"})),
        404,
        "ROOM_NOT_FOUND",
    );
    // A key ben used for a DM is no retry of a post.
    let dm = clients[1].request(json!({"type": "room_dm", "room_id": room, "to": "ann",
        "text": "psst", "client_id": "d-1"}));
    assert_eq!(dm["status"], "DELIVERED", "{dm}");
    clients[0].expect("dm");
    api_err(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"from": "ben", "text": "x", "client_id": "d-1"})),
        409,
        "CLIENT_ID_TAKEN",
    );
    for ws in clients.iter_mut() {
        ws.none_of("message");
    }
    outsider.silent();
}

#[test]
fn history_shows_the_room_without_dms() {
    let (s, key) = server();
    let a = s.addr;
    let (room, mut clients) = room_with(&s, &["ann", "ben"]);
    let first = post(&mut clients[0], &room, "one");
    clients[1].expect("message");
    let dm = clients[0]
        .request(json!({"type": "room_dm", "room_id": room, "to": "ben", "text": "psst"}));
    assert_eq!(dm["status"], "DELIVERED", "{dm}");
    let second = post(&mut clients[1], &room, "two");
    let url = format!("/api/v1/rooms/{room}/history");
    let h = api_ok(a, &key, "GET", &url, None, 200);
    let texts: Vec<&str> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[texts.len() - 2..], ["one", "two"], "{h}");
    assert!(!texts.contains(&"psst"), "{h}");
    let h = api_ok(a, &key, "GET", &format!("{url}?limit=1"), None, 200);
    assert_eq!(h["items"][0]["id"], second);
    let h = api_ok(
        a,
        &key,
        "GET",
        &format!("{url}?before_id={second}&limit=1"),
        None,
        200,
    );
    assert_eq!(h["items"][0]["id"], first);
    let h = api_ok(
        a,
        &key,
        "GET",
        &format!("{url}?after_id={first}"),
        None,
        200,
    );
    assert_eq!(h["items"].as_array().unwrap().len(), 1, "{h}");
    api_err(
        a,
        &key,
        "GET",
        &format!("{url}?limit=many"),
        None,
        400,
        "BAD_REQUEST",
    );
    api_err(
        a,
        &key,
        "GET",
        "/api/v1/rooms/r_00000000/history",
        None,
        404,
        "ROOM_NOT_FOUND",
    );
}

#[test]
fn presence_counts_connections() {
    let (s, key) = server();
    let ann = s.user("ann");
    let (_w1, _w2) = (s.ws(&ann), s.ws(&ann));
    s.user("ben");
    let p = api_ok(
        s.addr,
        &key,
        "GET",
        "/api/v1/presence?users=ann,ben,nobody",
        None,
        200,
    );
    assert_eq!(
        p,
        json!({"users": [
            {"username": "ann", "online": true, "connections": 2},
            {"username": "ben", "online": false, "connections": 0},
            {"username": "nobody", "online": false, "connections": 0},
        ]})
    );
    api_err(
        s.addr,
        &key,
        "GET",
        "/api/v1/presence",
        None,
        400,
        "BAD_REQUEST",
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let url = format!("/api/v1/presence?users={}", many.join(","));
    api_err(s.addr, &key, "GET", &url, None, 400, "BAD_REQUEST");
}

#[test]
fn disconnect_closes_every_socket_and_revoke_ends_every_token() {
    let (s, key) = server();
    let ann = s.user("ann");
    let bob = s.user("bob");
    let (mut w1, mut w2, mut other) = (s.ws(&ann), s.ws(&ann), s.ws(&bob));
    let r = api_ok(
        s.addr,
        &key,
        "POST",
        "/api/v1/users/ann/disconnect",
        None,
        200,
    );
    assert_eq!(r["status"], "DISCONNECTED");
    for ws in [&mut w1, &mut w2] {
        let frame = ws.expect_close().expect("a close frame");
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (1008, "disconnected by server")
        );
    }
    other.silent();
    // The tokens stay good.
    let mut again = s.ws(&ann);

    let r = api_ok(s.addr, &key, "POST", "/api/v1/users/ann/revoke", None, 200);
    assert_eq!(r["status"], "REVOKED");
    let frame = again.expect_close().expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1008, "session revoked")
    );
    assert!(
        Ws::connect(s.addr, &ann).is_err(),
        "a revoked token opens nothing"
    );
    other.silent();
    // A token minted after the revocation is of the new generation.
    let t = api_ok(
        s.addr,
        &key,
        "POST",
        "/api/v1/tokens",
        Some(json!({"username": "ann"})),
        200,
    );
    let mut back = s.ws(t["access_token"].as_str().unwrap());
    assert_eq!(
        back.request(json!({"type": "my_rooms"}))["type"],
        "my_rooms"
    );
    api_err(
        s.addr,
        &key,
        "POST",
        "/api/v1/users/nobody/revoke",
        None,
        404,
        "USER_NOT_FOUND",
    );
    api_err(
        s.addr,
        &key,
        "POST",
        "/api/v1/users/no%20body/disconnect",
        None,
        404,
        "USER_NOT_FOUND",
    );
}

#[test]
fn on_two_nodes_posts_members_presence_disconnects_and_revocations_hold_cluster_wide() {
    let c = Nodes::start(2);
    let key = api_key(&c.db, "backend");
    let (ann, ben, dan) = (c.user("ann"), c.user("ben"), c.user("dan"));
    let mut wa = c.ws(0, &ann);
    let mut wb = c.ws(1, &ben);
    let mut wb0 = c.ws(0, &ben);
    let mut outsider = c.ws(1, &dan);
    let room = api_ok(
        c.addr(0),
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "x"})),
        201,
    )["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    for u in ["ann", "ben"] {
        api_ok(
            c.addr(1),
            &key,
            "PUT",
            &format!("/api/v1/rooms/{room}/members/{u}"),
            None,
            200,
        );
    }
    // Each join reaches the members of the moment, wherever they are connected.
    let users: Vec<Value> = (0..2)
        .map(|_| wa.next_of("system")["user"].clone())
        .collect();
    assert_eq!(users, vec![json!("ann"), json!("ben")]);
    for ws in [&mut wb, &mut wb0] {
        assert_eq!(ws.next_of("system")["user"], "ben");
    }

    // A post through n0 and an announcement through n1: once each, everywhere.
    let url = format!("/api/v1/rooms/{room}/messages");
    let m = api_ok(
        c.addr(0),
        &key,
        "POST",
        &url,
        Some(json!({"from": "ann", "text": "hi"})),
        201,
    );
    let n = api_ok(
        c.addr(1),
        &key,
        "POST",
        &url,
        Some(json!({"text": "notice"})),
        201,
    );
    for ws in [&mut wa, &mut wb, &mut wb0] {
        let got = ws.next_of("message");
        assert_eq!(
            (got["id"].clone(), got["text"].as_str()),
            (m["id"].clone(), Some("hi"))
        );
        let got = ws.next_of("system");
        assert_eq!(
            (got["id"].clone(), got["event"].as_str()),
            (n["id"].clone(), Some("announcement"))
        );
        ws.none_of("message");
    }
    outsider.silent();

    // Presence and members see both nodes.
    // Presence and members see both nodes (each node writes its own
    // connections' presence in its own time).
    let wait = std::time::Duration::from_secs(5);
    let every = std::time::Duration::from_millis(50);
    eventually(wait, every, || {
        let p = api_ok(
            c.addr(0),
            &key,
            "GET",
            "/api/v1/presence?users=ben,dan",
            None,
            200,
        );
        let want = json!({"users": [
            {"username": "ben", "online": true, "connections": 2},
            {"username": "dan", "online": true, "connections": 1},
        ]});
        if p == want {
            Ok(())
        } else {
            Err(format!("presence {p}"))
        }
    });
    let list = api_ok(
        c.addr(1),
        &key,
        "GET",
        &format!("/api/v1/rooms/{room}/members"),
        None,
        200,
    );
    let online: Vec<bool> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["online"].as_bool().unwrap())
        .collect();
    assert_eq!(online, vec![true, true], "{list}");

    // Disconnected through n1: ben's sockets close on both nodes.
    let r = api_ok(
        c.addr(1),
        &key,
        "POST",
        "/api/v1/users/ben/disconnect",
        None,
        200,
    );
    assert_eq!(r["status"], "DISCONNECTED");
    for ws in [&mut wb, &mut wb0] {
        let frame = ws.expect_close().expect("a close frame");
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (1008, "disconnected by server")
        );
    }
    wa.none_of("message");
    outsider.silent();

    // Removed through n1 while connected to n0 only: the kick (by `system`)
    // reaches both ends; then a revocation through n1 closes ann on n0.
    let mut wb = c.ws(0, &ben);
    let path = format!("/api/v1/rooms/{room}/members/ben");
    let r = api_ok(c.addr(1), &key, "DELETE", &path, None, 200);
    assert_eq!(r["status"], "KICKED");
    for ws in [&mut wa, &mut wb] {
        let ev = ws.next_of("system");
        assert_eq!(
            (ev["event"].as_str(), ev["user"].as_str(), ev["by"].as_str()),
            (Some("kicked"), Some("ben"), Some("system")),
            "{ev}"
        );
    }
    let r = api_ok(
        c.addr(1),
        &key,
        "POST",
        "/api/v1/users/ann/revoke",
        None,
        200,
    );
    assert_eq!(r["status"], "REVOKED");
    let frame = wa.expect_close().expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1008, "session revoked")
    );
    outsider.silent();
}
