//! HTTP: register, login, health, routing, limits, keep-alive, pipelining.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[test]
fn register_then_login() {
    let s = TestServer::start();
    let r = s.post(
        "/register",
        json!({"username": "alice", "password": PASSWORD, "nickname": "Al"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"status": "CREATED"})));
    // Existing username: ALREADY, password not checked, nothing changed.
    let r = s.post(
        "/register",
        json!({"username": "alice", "password": "other"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"status": "ALREADY"})));
    assert_eq!(s.login("alice", "other").status, 401);

    let r = s.login("alice", PASSWORD);
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in_minutes"], 60);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);

    // Stored as argon2id, with the nickname given.
    let row = s
        .db()
        .query_one(
            "SELECT password, nickname FROM users WHERE username = 'alice'",
            &[],
        )
        .unwrap();
    let (pw, nick): (String, String) = (row.get(0), row.get(1));
    assert!(pw.starts_with("$argon2id$"), "{pw}");
    assert_eq!(nick, "Al");
}

#[test]
fn nickname_defaults_to_username() {
    let s = TestServer::start();
    s.post(
        "/register",
        json!({"username": "bob", "password": PASSWORD}),
    );
    s.post(
        "/register",
        json!({"username": "carol", "password": PASSWORD, "nickname": "  "}),
    );
    let mut db = s.db();
    for u in ["bob", "carol"] {
        let nick: String = db
            .query_one("SELECT nickname FROM users WHERE username = $1", &[&u])
            .unwrap()
            .get(0);
        assert_eq!(nick, u);
    }
}

#[test]
fn register_validation() {
    let s = TestServer::start();
    for bad in ["", "has space", "semi;colon", &"x".repeat(101), "slash/"] {
        let r = s.post("/register", json!({"username": bad, "password": PASSWORD}));
        assert_eq!(
            (r.status, r.detail().as_str()),
            (400, "invalid username"),
            "{bad:?}"
        );
    }
    let ok = "a".repeat(100);
    assert_eq!(
        s.post("/register", json!({"username": ok, "password": PASSWORD}))
            .json()["status"],
        "CREATED"
    );
    assert_eq!(
        s.post(
            "/register",
            json!({"username": "u.n-d_1", "password": PASSWORD})
        )
        .json()["status"],
        "CREATED"
    );
    let r = s.post("/register", json!({"username": "emptypw", "password": ""}));
    assert_eq!(r.status, 400);
    for body in [
        "[]",
        "not json",
        "{\"username\": 5, \"password\": \"x\"}",
        "{\"username\": \"x\"}",
    ] {
        let r = s.http("POST", "/register", Some(body));
        assert_eq!(r.status, 422, "{body}");
        assert!(!r.detail().is_empty());
    }
    // Nothing was stored by the failures.
    let n: i64 = s
        .db()
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// New accounts need `KLAV_MIN_PASSWORD_LEN` (8) characters — characters, not
/// bytes; accounts made before the rule keep their passwords, and registering
/// their name again is still `ALREADY`.
#[test]
fn new_passwords_have_a_minimum_length() {
    let s = TestServer::start();
    for short in ["x", "1234567", "가나다라마바사"] {
        let r = s.post(
            "/register",
            json!({"username": "newbie", "password": short}),
        );
        assert_eq!(r.status, 400, "{short:?}: {}", r.body);
        assert!(r.detail().contains("at least 8 characters"), "{}", r.body);
    }
    let n: i64 = s
        .db()
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    for (user, ok) in [("eight", "12345678"), ("hangul", "가나다라마바사아")] {
        let r = s.post("/register", json!({"username": user, "password": ok}));
        assert_eq!(r.json()["status"], "CREATED", "{ok:?}: {}", r.body);
        assert_eq!(s.login(user, ok).status, 200);
    }
    s.db()
        .execute(
            "INSERT INTO users (username, password, nickname) VALUES ('old', 'pw', 'Old')",
            &[],
        )
        .unwrap();
    assert_eq!(s.login("old", "pw").status, 200);
    let r = s.post("/register", json!({"username": "old", "password": "pw"}));
    assert_eq!((r.status, r.json()), (200, json!({"status": "ALREADY"})));
}

#[test]
fn login_failures() {
    let s = TestServer::start();
    s.register("dave", PASSWORD);
    let r = s.login("nobody", "x");
    assert_eq!((r.status, r.detail().as_str()), (401, "not registered"));
    let r = s.login("dave", "wrong");
    assert_eq!(
        (r.status, r.detail().as_str()),
        (401, "invalid credentials")
    );
    for body in [
        json!({"username": "dave"}),
        json!({"username": "", "password": "x"}),
        json!({}),
    ] {
        let r = s.post("/login", body.clone());
        assert_eq!(
            (r.status, r.detail().as_str()),
            (400, "username/password required"),
            "{body}"
        );
    }
    assert_eq!(s.http("POST", "/login", Some("[1]")).status, 422);
    assert_eq!(
        s.http(
            "POST",
            "/login",
            Some("{\"username\": 1, \"password\": \"x\"}")
        )
        .status,
        422
    );
}

#[test]
fn health_routes_and_methods() {
    let s = TestServer::start();
    let r = s.http("GET", "/health", None);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"status": "healthy", "database": "connected"}))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = s.http("GET", "/nope", None);
    assert_eq!(r.status, 404);
    assert!(!r.detail().is_empty());
    let r = s.http("GET", "/login", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(s.http("POST", "/health", Some("{}")).status, 405);
    let r = s.http("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("klav_open_connections"), "{}", r.body);
}

#[test]
fn keep_alive_and_pipelining() {
    let s = TestServer::start();
    s.register("erin", PASSWORD);
    let mut c = connect(s.addr);
    // Two requests in one write, then a third after the answers.
    let login = json!({"username": "erin", "password": PASSWORD}).to_string();
    let req = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\nPOST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{login}",
        login.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let r1 = read_response(&mut c).unwrap();
    assert_eq!(r1.json()["status"], "healthy");
    let r2 = read_response(&mut c).unwrap();
    assert_eq!(r2.status, 200);
    assert!(r2.json()["access_token"].is_string());
    c.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 404);
    // Connection: close is honoured.
    c.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
}

#[test]
fn oversized_and_malformed_requests() {
    let s = TestServer::start();
    // Headers over 8 KiB: 431 and close.
    let mut c = connect(s.addr);
    let req = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    c.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 431);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
    // Body over 64 KiB: 413 and close (refused from the header alone).
    let mut c = connect(s.addr);
    c.write_all(b"POST /register HTTP/1.1\r\nContent-Length: 70000\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 413);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
    // Garbage: 400 and close.
    let mut c = connect(s.addr);
    c.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 400);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
    // The server still serves others.
    assert_eq!(s.http("GET", "/health", None).status, 200);
}

#[test]
fn stalled_partial_request_is_closed() {
    let s = TestServer::with(|c| c.http_timeout = Duration::from_secs(1));
    let mut c = connect(s.addr);
    c.write_all(b"POST /login HTTP/1.1\r\nContent-Le").unwrap();
    assert!(
        !closed_within(&mut c, Duration::from_millis(300)),
        "closed too early"
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(4)),
        "a stalled request must be closed"
    );
    // A normal client meanwhile is unaffected.
    assert_eq!(s.http("GET", "/health", None).status, 200);
}

#[test]
fn legacy_plain_text_password_is_upgraded_on_login() {
    let s = TestServer::start();
    s.db()
        .execute(
            "INSERT INTO users (username, password, nickname) VALUES ('old', 'plainpw', 'Old')",
            &[],
        )
        .unwrap();
    assert_eq!(s.login("old", "wrong").status, 401);
    assert_eq!(s.login("old", "plainpw").status, 200);
    // Re-hashed in place, in the background.
    let mut hashed = String::new();
    for _ in 0..100 {
        hashed = s
            .db()
            .query_one("SELECT password FROM users WHERE username = 'old'", &[])
            .unwrap()
            .get(0);
        if hashed.starts_with("$argon2id$") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hashed.starts_with("$argon2id$"), "{hashed}");
    assert_eq!(s.login("old", "plainpw").status, 200);
    assert_eq!(s.login("old", "wrong").status, 401);
}
