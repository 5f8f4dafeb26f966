//! What each route of the server API (`/api/v1/`) does, as a backend and
//! the WebSocket clients see it: users and their tokens, rooms, members
//! added and removed, posts and announcements delivered exactly like a
//! `msg` (and to nobody else), history, members, presence, disconnect and
//! revocation — on one node and across two.

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
fn users_are_created_with_or_without_a_password_and_get_tokens() {
    let (s, key) = server();
    let a = s.addr;
    let made = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "ann", "nickname": "Ann", "password": PASSWORD})),
        201,
    );
    assert_eq!(made, json!({"username": "ann", "nickname": "Ann"}));
    assert_eq!(
        s.login("ann", PASSWORD).status,
        200,
        "a password given works for /login"
    );

    // Without a password: /login never succeeds, the API's tokens do.
    let made = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "ben"})),
        201,
    );
    assert_eq!(made, json!({"username": "ben", "nickname": "ben"}));
    for guess in ["", "ben", "!disabled", PASSWORD] {
        assert_ne!(s.login("ben", guess).status, 200, "{guess:?}");
    }
    let t = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/tokens",
        Some(json!({"username": "ben"})),
        200,
    );
    assert_eq!(t["token_type"], "bearer");
    let token = t["access_token"].as_str().unwrap();
    let mut ws = s.ws(token);
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    let t = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/tokens",
        Some(json!({"username": "ben", "expires_in_minutes": 5})),
        200,
    );
    assert_eq!(t["expires_in_minutes"], 5);
    let exp = claims_of(t["access_token"].as_str().unwrap())["exp"]
        .as_u64()
        .unwrap();
    assert!(
        (unix_now() + 240..=unix_now() + 300).contains(&exp),
        "{exp}"
    );

    // Refusals, each with its code.
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "ben"})),
        409,
        "USERNAME_TAKEN",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "BEN"})),
        409,
        "USERNAME_TAKEN",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "no spaces"})),
        400,
        "BAD_REQUEST",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "cid", "password": "x"})),
        400,
        "BAD_REQUEST",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": 7})),
        422,
        "INVALID_BODY",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!([1])),
        422,
        "INVALID_BODY",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/tokens",
        Some(json!({"username": "nobody"})),
        404,
        "USER_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/tokens",
        Some(json!({"username": "ben", "expires_in_minutes": 0})),
        400,
        "BAD_REQUEST",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/tokens",
        Some(json!({})),
        422,
        "INVALID_BODY",
    );
}

#[test]
fn rooms_are_created_with_an_owner_or_none() {
    let (s, key) = server();
    let a = s.addr;
    let ann = s.user("ann");
    let r = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "team", "private": true, "owner": "ann", "topic": "work"})),
        201,
    );
    assert_eq!(
        (
            r["name"].as_str(),
            r["private"].as_bool(),
            r["owner"].as_str(),
            r["topic"].as_str()
        ),
        (Some("team"), Some(true), Some("ann"), Some("work"))
    );
    let room = r["room_id"].as_str().unwrap();
    // The owner of a private room is its member, as with create_room.
    let mut ws = s.ws(&ann);
    let info = ws.request(json!({"type": "room_info", "room_id": room}));
    assert_eq!(
        (
            info["role"].as_str(),
            info["owner"].as_str(),
            info["members"].as_i64()
        ),
        (Some("owner"), Some("ann"), Some(1)),
        "{info}"
    );

    let r = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "open"})),
        201,
    );
    assert_eq!(
        (r["owner"].clone(), r["private"].clone()),
        (Value::Null, json!(false))
    );
    let owner: Option<String> = s
        .db()
        .query_one(
            "SELECT klav_owner FROM rooms WHERE id = $1",
            &[&r["room_id"].as_str()],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, None);

    api_err(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "x", "owner": "nobody"})),
        404,
        "USER_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": ""})),
        400,
        "BAD_REQUEST",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "t", "topic": "t".repeat(501)})),
        400,
        "TEXT_TOO_LONG",
    );
    api_err(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "t", "private": "yes"})),
        400,
        "BAD_REQUEST",
    );
}

#[test]
fn members_are_added_and_removed_with_the_usual_events() {
    let (s, key) = server();
    let a = s.addr;
    let (ann, ben) = (s.user("ann"), s.user("ben"));
    s.user("cid");
    let outsider = s.user("dan");
    let room = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "team", "private": true, "owner": "ann"})),
        201,
    )["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut wa, mut wb, mut wd) = (s.ws(&ann), s.ws(&ben), s.ws(&outsider));
    let members = |b: &str| format!("/api/v1/rooms/{room}/members/{b}");

    // Added without an invitation: the room hears `joined`, and so does ben.
    let r = api_ok(a, &key, "PUT", &members("ben"), None, 200);
    assert_eq!(
        (r["status"].as_str(), r["role"].as_str()),
        (Some("JOINED"), Some("member"))
    );
    for ws in [&mut wa, &mut wb] {
        let ev = ws.expect("system");
        assert_eq!(
            (ev["event"].as_str(), ev["user"].as_str()),
            (Some("joined"), Some("ben")),
            "{ev}"
        );
    }
    wd.silent();
    let r = api_ok(a, &key, "PUT", &members("ben"), None, 200);
    assert_eq!(r["status"], "ALREADY");
    api_ok(a, &key, "PUT", &members("cid"), None, 200);
    wa.expect("system");
    wb.expect("system");

    // Listed with roles and who is online.
    let list = api_ok(
        a,
        &key,
        "GET",
        &format!("/api/v1/rooms/{room}/members"),
        None,
        200,
    );
    let got: Vec<(String, String, bool)> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
                m["online"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ann".into(), "owner".into(), true),
            ("ben".into(), "member".into(), true),
            ("cid".into(), "member".into(), false),
        ]
    );

    // Kicked by the application: `by` is `system`; ben hears it too, then nothing.
    let r = api_ok(a, &key, "DELETE", &members("ben"), None, 200);
    assert_eq!(r["status"], "KICKED");
    for ws in [&mut wa, &mut wb] {
        let ev = ws.expect("system");
        assert_eq!(
            (ev["event"].as_str(), ev["user"].as_str(), ev["by"].as_str()),
            (Some("kicked"), Some("ben"), Some("system")),
            "{ev}"
        );
    }
    let r = api_ok(a, &key, "DELETE", &members("ben"), None, 200);
    assert_eq!(r["status"], "NOT_A_MEMBER");
    api_ok(
        a,
        &key,
        "POST",
        &format!("/api/v1/rooms/{room}/messages"),
        Some(json!({"text": "after"})),
        201,
    );
    wa.expect("system");
    wb.silent();

    // Banned: a ban holds against the API's own add too.
    let r = api_ok(
        a,
        &key,
        "DELETE",
        &format!("{}?ban=true", members("cid")),
        None,
        200,
    );
    assert_eq!(r["status"], "BANNED");
    assert_eq!(wa.expect("system")["event"], "banned");
    api_err(a, &key, "PUT", &members("cid"), None, 403, "BANNED");
    let r = api_ok(
        a,
        &key,
        "DELETE",
        &format!("{}?ban=true", members("cid")),
        None,
        200,
    );
    assert_eq!(r["status"], "ALREADY");

    // The owner stays; names that are nobody, rooms that are none.
    api_err(a, &key, "DELETE", &members("ann"), None, 403, "NOT_ALLOWED");
    api_err(
        a,
        &key,
        "PUT",
        &members("nobody"),
        None,
        404,
        "USER_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "DELETE",
        &members("nobody"),
        None,
        404,
        "USER_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "PUT",
        "/api/v1/rooms/r_00000000/members/ben",
        None,
        404,
        "ROOM_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "DELETE",
        "/api/v1/rooms/r_00000000/members/ben",
        None,
        404,
        "ROOM_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "GET",
        "/api/v1/rooms/r_00000000/members",
        None,
        404,
        "ROOM_NOT_FOUND",
    );
    api_err(
        a,
        &key,
        "DELETE",
        &format!("{}?ban=maybe", members("ben")),
        None,
        400,
        "BAD_REQUEST",
    );
    wd.silent();
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
fn on_two_nodes_posts_disconnects_presence_and_members_hold_cluster_wide() {
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
}
