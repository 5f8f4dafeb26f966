//! Revoking a user's tokens: `POST /password` and `POST /logout_all`, every
//! status and error; what an old token can no longer do (upgrade, ticket,
//! `auth`, `refresh_token`) and what the fresh one can; tokens without the
//! generation claim; a restart; and two nodes, whose sockets of the user close
//! while they are sending, none of what they send afterwards stored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message;

use crate::harness::*;
use crate::support::nodes::Nodes;

/// A POST with `Authorization: Bearer <token>` (none: without the header).
pub fn bearer_post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    if let Some(auth) = &auth {
        headers.insert(0, ("Authorization", auth.as_str()));
    }
    exchange(
        &mut connect(addr),
        &http_request("POST", path, &headers, body),
    )
}

fn change_password(addr: SocketAddr, token: &str, old: &str, new: &str) -> Response {
    let body = json!({"password": old, "new_password": new}).to_string();
    bearer_post(addr, "/password", Some(token), &body)
}

fn logout_all(addr: SocketAddr, token: &str) -> Response {
    bearer_post(addr, "/logout_all", Some(token), "{}")
}

/// The close frame a socket gets: 1008 and `reason`.
#[track_caller]
pub fn closed_with(ws: &mut Ws, reason: &str) {
    let frame = ws.expect_close().expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert_eq!(frame.reason.as_str(), reason, "{frame:?}");
}

/// An upgrade with `token` is refused 403 with `detail`.
#[track_caller]
pub fn upgrade_refused(addr: SocketAddr, token: &str, detail: &str) {
    match Ws::connect(addr, token) {
        Ok(_) => panic!("the upgrade was accepted"),
        Err((status, body)) => {
            assert_eq!(status, 403, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["detail"], detail, "{body}");
        }
    }
}

const NEW_PASSWORD: &str = "a-new-password";

#[test]
fn password_change_answers_every_status() {
    let s = TestServer::start();
    let token = s.user("alice");
    let addr = s.addr;
    let body = json!({"password": PASSWORD, "new_password": NEW_PASSWORD}).to_string();

    // No token, a bad one: 401 with WWW-Authenticate.
    let r = bearer_post(addr, "/password", None, &body);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = bearer_post(addr, "/password", Some("not.a.token"), &body);
    assert_eq!(r.status, 401, "{}", r.body);
    // A body that is not what it must be: 422.
    for bad in [
        "not json",
        "[]",
        r#"{"password": "it-password"}"#,
        r#"{"password": 1, "new_password": "a-new-password"}"#,
    ] {
        let r = bearer_post(addr, "/password", Some(&token), bad);
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    // A new password /register would refuse: 422.
    for new in ["", "short", "with\u{0}nul-character"] {
        let r = change_password(addr, &token, PASSWORD, new);
        assert_eq!(r.status, 422, "{new:?}: {}", r.body);
    }
    // The wrong current password: 401, and nothing changed.
    let r = change_password(addr, &token, "wrong-password", NEW_PASSWORD);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(s.login("alice", PASSWORD).status, 200);
    // GET is not allowed.
    assert_eq!(s.http("GET", "/password", None).status, 405);

    // The right one: 200 with a token, as /login answers.
    let r = change_password(addr, &token, PASSWORD, NEW_PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.json();
    assert_eq!(fresh["token_type"], "bearer");
    assert!(fresh["expires_in_minutes"].as_u64().unwrap() > 0, "{fresh}");
    let fresh = fresh["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims_of(&fresh)["sub"], "alice");
    assert_eq!(s.login("alice", PASSWORD).status, 401);
    assert_eq!(s.login("alice", NEW_PASSWORD).status, 200);
    // The old token is refused now: it cannot change the password again.
    let r = change_password(addr, &token, NEW_PASSWORD, "third-password");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["detail"], "token revoked");
    // The fresh one can.
    let r = change_password(addr, &fresh, NEW_PASSWORD, "third-password");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn wrong_passwords_count_against_the_login_throttle() {
    let s = TestServer::with(|c| c.login_max_failures_per_addr = 2);
    let token = s.user("alice");
    for _ in 0..2 {
        let r = change_password(s.addr, &token, "wrong-password", NEW_PASSWORD);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // Throttled: the right password waits too, and /login is throttled alike.
    let r = change_password(s.addr, &token, PASSWORD, NEW_PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(s.login("alice", PASSWORD).status, 429);
    let r = logout_all(s.addr, &token);
    assert_eq!(r.status, 429, "{}", r.body);
    let body = json!({"password": PASSWORD, "erase": false}).to_string();
    let r = bearer_post(s.addr, "/account/delete", Some(&token), &body);
    assert_eq!(r.status, 429, "{}", r.body);
}

#[test]
fn a_password_change_revokes_old_tokens_and_keeps_the_fresh_one() {
    let s = TestServer::start();
    let old = s.user("alice");
    let other = s.token("alice");
    let ticket = s.ws_ticket(&old);
    let mut a1 = s.ws(&old);
    let mut a2 = s.ws(&other);
    let mut bob = s.client("bob");
    a1.silent();

    let r = change_password(s.addr, &old, PASSWORD, NEW_PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.json()["access_token"].as_str().unwrap().to_string();
    // Every socket of alice closes; bob's does not.
    closed_with(&mut a1, "session revoked");
    closed_with(&mut a2, "session revoked");
    bob.silent();

    // The old tokens: 403 at the upgrade, 401 for a ticket, and a ticket
    // minted before is refused.
    upgrade_refused(s.addr, &old, "token revoked");
    upgrade_refused(s.addr, &other, "token revoked");
    assert_eq!(ws_ticket_at(s.addr, Some(&old)).status, 401);
    match Ws::connect_ticket(s.addr, &ticket) {
        Ok(_) => panic!("a ticket of a revoked token opened a socket"),
        Err((status, body)) => assert_eq!(status, 403, "{body}"),
    }

    // The fresh token: a socket, on which an old token's `auth` is BAD_TOKEN
    // and `refresh_token` works.
    let mut a3 = s.ws(&fresh);
    let err = a3.request(json!({"type": "auth", "token": old}));
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("BAD_TOKEN")),
        "{err}"
    );
    let t = a3.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
    let refreshed = t["access_token"].as_str().unwrap().to_string();
    let ack = a3.request(json!({"type": "auth", "token": refreshed}));
    assert_eq!(ack["type"], "auth_ack", "{ack}");
    // A ticket of the fresh token works.
    let ticket = s.ws_ticket(&fresh);
    Ws::connect_ticket(s.addr, &ticket).expect("a fresh ticket opens");
    // The socket of the fresh token survived the revocation it caused.
    let room = a3.create_room("still-here");
    a3.join(&room);
}

#[test]
fn logout_all_answers_every_status_and_revokes_every_token() {
    let s = TestServer::start();
    let first = s.user("alice");
    let second = s.token("alice");
    let mut a1 = s.ws(&first);
    let mut a2 = s.ws(&second);

    let r = bearer_post(s.addr, "/logout_all", None, "{}");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = bearer_post(s.addr, "/logout_all", Some(&first), "[1]");
    assert_eq!(r.status, 422, "{}", r.body);
    a1.silent();

    let r = logout_all(s.addr, &first);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"status": "REVOKED"}));
    closed_with(&mut a1, "session revoked");
    closed_with(&mut a2, "session revoked");
    upgrade_refused(s.addr, &first, "token revoked");
    upgrade_refused(s.addr, &second, "token revoked");
    // The token that asked is revoked too.
    let r = logout_all(s.addr, &first);
    assert_eq!(r.status, 401, "{}", r.body);
    // The password did not change: a new login connects.
    let fresh = s.token("alice");
    let mut a3 = s.ws(&fresh);
    a3.silent();
}

#[test]
fn a_token_without_the_generation_claim_is_refused_only_after_a_revocation() {
    let s = TestServer::start();
    let token = s.user("alice");
    let legacy = mint("alice", 600);
    assert!(claims_of(&legacy).get("gen").is_none());
    // Before: it opens a socket and passes `auth`.
    let mut a = s.ws(&legacy);
    let ack = a.request(json!({"type": "auth", "token": legacy}));
    assert_eq!(ack["type"], "auth_ack", "{ack}");

    let r = logout_all(s.addr, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    closed_with(&mut a, "session revoked");
    upgrade_refused(s.addr, &legacy, "token revoked");
    let mut fresh = s.ws(&s.token("alice"));
    let err = fresh.request(json!({"type": "auth", "token": legacy}));
    assert_eq!(err["code"], "BAD_TOKEN", "{err}");
}

#[test]
fn a_revocation_survives_a_restart() {
    let s = TestServer::start();
    let old = s.user("alice");
    let r = change_password(s.addr, &old, PASSWORD, NEW_PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.json()["access_token"].as_str().unwrap().to_string();
    let port = s.addr.port();
    let db = s.stop();

    let s = TestServer::restart_on(&db, port);
    upgrade_refused(s.addr, &old, "token revoked");
    let mut a = s.ws(&fresh);
    let err = a.request(json!({"type": "auth", "token": old}));
    assert_eq!(err["code"], "BAD_TOKEN", "{err}");
    assert_eq!(s.login("alice", NEW_PASSWORD).status, 200);
}

/// Sends messages on `ws` as fast as it takes them, until the server closes
/// it; those sent once `revoked` is set say so. Returns the close frame.
fn send_until_closed(
    mut ws: Ws,
    room: String,
    tag: &'static str,
    revoked: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<(u16, String)>> {
    std::thread::spawn(move || {
        ws.sock
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        for i in 0.. {
            let when = if revoked.load(Ordering::SeqCst) {
                "after"
            } else {
                "before"
            };
            let text = format!("{tag} {when} {i}");
            let msg = json!({"type": "msg", "room_id": room, "text": text});
            if ws.sock.send(Message::text(msg.to_string())).is_err() {
                break;
            }
            loop {
                match ws.sock.read() {
                    Ok(Message::Close(c)) => {
                        return c.map(|f| (u16::from(f.code), f.reason.to_string()))
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        // The socket failed before its close frame was read: read it now.
        ws.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        loop {
            match ws.sock.read() {
                Ok(Message::Close(c)) => {
                    return c.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
}

#[test]
fn a_revocation_closes_sockets_on_every_node_and_stores_nothing_sent_after() {
    let c = Nodes::start(2);
    let alice = c.user("alice");
    let bob = c.user("bob");
    let mut b0 = c.ws(0, &bob);
    let room = b0.create_room("revoked-room");
    b0.join(&room);
    let mut a0 = c.ws(0, &alice);
    let mut a1 = c.ws(1, &alice);
    a0.join(&room);
    a1.next_of("system");
    // Bob on n1 as well: his socket must stay open.
    let mut b1 = c.ws(1, &bob);

    let revoked = Arc::new(AtomicBool::new(false));
    let s0 = send_until_closed(a0, room.clone(), "n0", revoked.clone());
    let s1 = send_until_closed(a1, room.clone(), "n1", revoked.clone());
    // Both are sending by now.
    let mut db = c.db();
    eventually(WAIT, Duration::from_millis(10), || {
        let n: i64 = db
            .query_one(
                "SELECT count(DISTINCT split_part(text, ' ', 1)) FROM chat_logs \
                 WHERE from_user = 'alice' AND kind = 'msg'",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 2 {
            Ok(())
        } else {
            Err("alice's sockets are not both sending".to_string())
        }
    });
    // The legacy password the nodes' users have: `x`.
    let r = change_password(c.addr(1), &alice, "x", NEW_PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    revoked.store(true, Ordering::SeqCst);
    let fresh = r.json()["access_token"].as_str().unwrap().to_string();

    for (node, sender) in [("n0", s0), ("n1", s1)] {
        let close = sender.join().unwrap();
        assert_eq!(
            close,
            Some((1008, "session revoked".to_string())),
            "alice's socket on {node}"
        );
    }
    let after: i64 = db
        .query_one(
            "SELECT count(*) FROM chat_logs WHERE from_user = 'alice' AND text LIKE '% after %'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(after, 0, "messages sent after the revocation were stored");
    // Bob's sockets stay; the old token is refused on both nodes, the fresh
    // one accepted.
    b0.drain(QUIET);
    b1.drain(QUIET);
    let ack = b1.request(json!({"type": "my_rooms"}));
    assert_eq!(ack["type"], "my_rooms", "{ack}");
    for node in 0..2 {
        upgrade_refused(c.addr(node), &alice, "token revoked");
        let mut a = c.ws(node, &fresh);
        let err = a.request(json!({"type": "auth", "token": alice}));
        assert_eq!(err["code"], "BAD_TOKEN", "n{node}: {err}");
        let t = a.request(json!({"type": "refresh_token"}));
        assert_eq!(t["type"], "token", "n{node}: {t}");
    }
}

/// A node that has not heard of a revocation yet (its bus listener cut, and
/// kept out) still stores nothing its user's old sockets send: its writer
/// reads the sender's generation with the batch. Once the node hears again,
/// its catch-up closes the sockets.
#[test]
fn a_node_that_missed_the_revocation_stores_nothing_and_closes_on_catch_up() {
    let c = Nodes::start(2);
    let alice = c.user("alice");
    let bob = c.user("bob");
    let mut a0 = c.ws(0, &alice);
    let room = a0.create_room("deaf");
    a0.join(&room);
    let mut b0 = c.ws(0, &bob);
    b0.join(&room);
    a0.next_of("system");
    // n1's writer has its database connection before the outage.
    let mut b1 = c.ws(1, &bob);
    let warm = b1.request(json!({"type": "msg", "room_id": room, "text": "warm"}));
    assert_eq!(warm["type"], "message", "{warm}");
    a0.next_of("message");
    b0.next_of("message");
    let before = a0.request(json!({"type": "msg", "room_id": room, "text": "before"}));
    assert_eq!(before["type"], "message", "{before}");
    b0.next_of("message");
    b1.next_of("message");

    let mut admin = c.db();
    let db: String = admin
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    let mut other = connect_db(&with_dbname(&c.db, "postgres"));
    other
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .unwrap();
    let cut: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'klav n0 listener'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cut, 1, "n0's listener");

    let r = logout_all(c.addr(1), &alice);
    assert_eq!(r.status, 200, "{}", r.body);
    // n0 has not heard: the socket is open, but what it sends is refused.
    let refused = a0.request(json!({"type": "msg", "room_id": room, "text": "after"}));
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("BAD_TOKEN")),
        "{refused}"
    );
    b0.none_of("message");
    b1.none_of("message");
    let stored: i64 = admin
        .query_one(
            "SELECT count(*) FROM chat_logs WHERE from_user = 'alice' AND text = 'after'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
    // Nor any other write: a leave, a join by name (which would create a
    // room), a block.
    for req in [
        json!({"type": "leave", "room_id": room}),
        json!({"type": "join", "room": "after-revocation"}),
        json!({"type": "block", "user": "bob"}),
    ] {
        let refused = a0.request(req.clone());
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("BAD_TOKEN")),
            "{req}: {refused}"
        );
    }
    let written: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM rooms WHERE name = 'after-revocation') \
                  + (SELECT count(*) FROM klav_blocks WHERE blocker = 'alice') \
                  + (SELECT 1 - count(*) FROM room_members WHERE username = 'alice')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "nothing written, alice still a member");
    b0.none_of("system");

    other
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .unwrap();
    closed_with(&mut a0, "session revoked");
    let ack = b0.request(json!({"type": "msg", "room_id": room, "text": "bob stays"}));
    assert_eq!(ack["type"], "message", "{ack}");
}
