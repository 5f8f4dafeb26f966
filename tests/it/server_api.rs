//! What the server API (`/api/v1/`) does with users and rooms, as a backend
//! and the WebSocket clients see it: users with and without passwords and
//! their tokens, rooms with an owner or none, members added and removed
//! with the usual events, and listed. (Posts, history, presence, disconnect
//! and revocation are in `server_api_posts`.)

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::api::*;

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
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let (s, key) = server();
    let auth = format!("Bearer {key}");
    let h = [("Authorization", auth.as_str())];
    let mut pipeline = String::new();
    // The first is answered from memory once the key is checked (a job).
    for i in 0..3 {
        let body = json!({"username": format!("p{i}")}).to_string();
        pipeline.push_str(&http_request(
            "GET",
            &format!("/api/v1/presence?users=p{i}"),
            &h,
            "",
        ));
        pipeline.push_str(&http_request("POST", "/api/v1/users", &h, &body));
    }
    let mut sock = connect(s.addr);
    std::io::Write::write_all(&mut sock, pipeline.as_bytes()).unwrap();
    for i in 0..3 {
        let seen = read_response(&mut sock).expect("a response");
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.json()["users"][0]["username"], format!("p{i}"));
        let made = read_response(&mut sock).expect("a response");
        assert_eq!(
            (made.status, made.json()["username"].clone()),
            (201, json!(format!("p{i}")))
        );
    }
}
