//! The authenticated WebSocket upgrade (by token or by one-time ticket) and the
//! basic frame rules.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::harness::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn header_and_query_tokens() {
    let s = TestServer::start();
    let t = s.user("alice");
    let mut ws =
        Ws::connect_with(s.addr, "/ws", &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    ws.send(json!({"type": "nope"}));
    assert_eq!(ws.expect("error")["code"], "UNKNOWN_TYPE");
    // Scheme case-insensitive.
    Ws::connect_with(s.addr, "/ws", &[("Authorization", &format!("bEaReR {t}"))]).unwrap();
    Ws::connect(s.addr, &t).unwrap();
    // The header wins over the query.
    let r = Ws::connect_with(
        s.addr,
        &format!("/ws?token={t}"),
        &[("Authorization", "Bearer junk")],
    );
    assert_eq!(r.err().map(|e| e.0), Some(403));
}

#[test]
fn refused_tokens_get_403_with_detail() {
    let s = TestServer::start();
    s.user("alice");
    let exp = now() + 600;
    let cases = vec![
        ("none", "/ws".to_string()),
        ("garbage", "/ws?token=abc.def.ghi".to_string()),
        (
            "expired",
            format!(
                "/ws?token={}",
                token(
                    json!({"sub": "alice", "iat": now() - 7200, "exp": now() - 3600}),
                    SECRET,
                    Algorithm::HS256
                )
            ),
        ),
        (
            "other secret",
            format!(
                "/ws?token={}",
                token(
                    json!({"sub": "alice", "exp": exp}),
                    "other",
                    Algorithm::HS256
                )
            ),
        ),
        (
            "other algorithm",
            format!(
                "/ws?token={}",
                token(
                    json!({"sub": "alice", "exp": exp}),
                    SECRET,
                    Algorithm::HS512
                )
            ),
        ),
        (
            "no sub",
            format!(
                "/ws?token={}",
                token(json!({"exp": exp}), SECRET, Algorithm::HS256)
            ),
        ),
        (
            "no exp",
            format!(
                "/ws?token={}",
                token(json!({"sub": "alice"}), SECRET, Algorithm::HS256)
            ),
        ),
        (
            "unregistered user",
            format!(
                "/ws?token={}",
                token(
                    json!({"sub": "ghost", "exp": exp}),
                    SECRET,
                    Algorithm::HS256
                )
            ),
        ),
    ];
    // alg: none, hand-made.
    let b64 = |v: serde_json::Value| {
        use base64_like::encode_url;
        encode_url(v.to_string().as_bytes())
    };
    let none_token = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "alice", "exp": exp}))
    );
    let mut cases = cases;
    cases.push(("alg none", format!("/ws?token={none_token}")));
    for (what, path) in cases {
        let (status, body) = Ws::connect_with(s.addr, &path, &[])
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status, 403, "{what}");
        let detail: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: body {body:?}"));
        assert!(
            detail["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {body}"
        );
    }
}

#[test]
fn token_of_deleted_user_is_refused() {
    let s = TestServer::start();
    let t = s.user("temp");
    s.ws(&t);
    s.db()
        .execute("DELETE FROM users WHERE username = 'temp'", &[])
        .unwrap();
    let (status, body) = Ws::connect(s.addr, &t).err().unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("not registered"), "{body}");
}

#[test]
fn bad_frames_get_errors_and_keep_the_connection() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    ws.send_raw(Message::text("not json"));
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
    ws.send_raw(Message::text("[1,2]"));
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
    ws.send(json!({"no": "type", "req_id": 5}));
    let e = ws.expect("error");
    assert_eq!(
        (e["code"].as_str(), e["req_id"].as_i64()),
        (Some("BAD_REQUEST"), Some(5))
    );
    ws.send_raw(Message::binary(vec![1u8, 2, 3]));
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
    let e = ws.request(json!({"type": "frobnicate"}));
    assert_eq!(e["code"], "UNKNOWN_TYPE");
    // Still open and serving.
    let r = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(r["type"], "my_rooms");
}

#[test]
fn pings_are_answered_and_close_is_honoured() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    ws.send_raw(Message::Ping(vec![7u8, 7].into()));
    ws.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    match ws.sock.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], &[7, 7]),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.sock.close(None).unwrap();
    loop {
        match ws.sock.read() {
            Ok(Message::Close(_)) => continue,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
}

#[test]
fn oversized_frame_closes_1009() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    ws.send_raw(Message::text("x".repeat(70 * 1024)));
    let frame = ws.expect_close().expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);
    // Others are unaffected.
    let mut other = s.client("bob");
    assert_eq!(
        other.request(json!({"type": "my_rooms"}))["type"],
        "my_rooms"
    );
}

#[test]
fn not_an_upgrade_is_400() {
    let s = TestServer::start();
    let r = s.http("GET", "/ws", None);
    assert_eq!(r.status, 400);
}

/// A ticket opens one connection, as its user; a second use, an unknown or a
/// malformed ticket is 403 with a JSON detail. Only the ticket's SHA-256 is
/// stored, and it is gone once used.
#[test]
fn ws_ticket_opens_one_connection() {
    let s = TestServer::start();
    let t = s.user("alice");
    s.user("bob");
    let r = ws_ticket_at(s.addr, Some(&t));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["expires_in_seconds"], 30);
    let ticket = body["ticket"].as_str().unwrap().to_string();
    assert!(ticket.len() >= 32, "{ticket}");
    let mut db = s.db();
    let stored = |db: &mut postgres::Client| -> (i64, i64) {
        let r = db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE hash = sha256(convert_to($1, 'UTF8'))) \
                 FROM klav_ws_tickets",
                &[&ticket],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(stored(&mut db), (1, 1), "stored as its SHA-256");
    let leaked: i64 = db
        .query_one(
            "SELECT count(*) FROM klav_ws_tickets t WHERE position($1 in t::text) > 0",
            &[&ticket],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "the ticket itself is not stored");

    let mut ws = Ws::connect_ticket(s.addr, &ticket).expect("the ticket opens a connection");
    let room = ws.create_room("r");
    ws.join(&room);
    let mut bob = s.ws(&s.token("bob"));
    bob.send(json!({"type": "join", "room_id": room}));
    assert_eq!(ws.expect("system")["user"], "bob");
    ws.send(json!({"type": "msg", "room_id": room, "text": "hi"}));
    assert_eq!(bob.expect("system")["user"], "bob");
    assert_eq!(bob.expect("message")["from"], "alice");
    assert_eq!(stored(&mut db), (0, 0), "used: gone");

    let unknown = "0".repeat(ticket.len());
    for (what, t) in [
        ("used", ticket.as_str()),
        ("unknown", unknown.as_str()),
        ("malformed", "not-a-ticket"),
        ("empty", ""),
    ] {
        let (status, body) = Ws::connect_ticket(s.addr, t)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status, 403, "{what}");
        let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            detail["detail"].as_str().unwrap().contains("ticket"),
            "{what}: {body}"
        );
    }
    // The token in the query still works, and the header wins over a ticket.
    Ws::connect(s.addr, &t).unwrap();
    let fresh = s.ws_ticket(&t);
    let r = Ws::connect_with(
        s.addr,
        &format!("/ws?ticket={fresh}"),
        &[("Authorization", "Bearer junk")],
    );
    assert_eq!(r.err().map(|e| e.0), Some(403));
}

/// `POST /ws-ticket` needs a good token in the `Authorization` header: 401 with
/// a detail (and `WWW-Authenticate`) otherwise, and nothing is stored.
#[test]
fn ws_ticket_needs_a_good_bearer_token() {
    let s = TestServer::start();
    let t = s.user("alice");
    let expired = token(
        json!({"sub": "alice", "iat": now() - 7200, "exp": now() - 3600}),
        SECRET,
        Algorithm::HS256,
    );
    let ghost = token(
        json!({"sub": "ghost", "iat": now(), "exp": now() + 600}),
        SECRET,
        Algorithm::HS256,
    );
    for (what, tok, want) in [
        ("no header", None, "missing token"),
        ("garbage", Some("abc.def.ghi"), "invalid token"),
        ("expired", Some(expired.as_str()), "token expired"),
        ("unregistered", Some(ghost.as_str()), "not registered"),
    ] {
        let r = ws_ticket_at(s.addr, tok);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(r.detail().contains(want), "{what}: {}", r.body);
        assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"), "{what}");
    }
    // A token in the query string is not a credential here.
    let r = s.http("POST", &format!("/ws-ticket?token={t}"), None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(s.http("GET", "/ws-ticket", None).status, 405);
    let n: i64 = s
        .db()
        .query_one("SELECT count(*) FROM klav_ws_tickets", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// A ticket is good for its lifetime only; expired ones are deleted by the
/// background tick even if nobody presents them.
#[test]
fn ws_tickets_expire_and_are_cleaned_up() {
    let s = TestServer::with(|c| c.ws_ticket_ttl = Duration::from_millis(500));
    let alice = s.user("alice");
    let late = s.ws_ticket(&alice);
    std::thread::sleep(Duration::from_millis(900));
    let (status, body) = Ws::connect_ticket(s.addr, &late).err().expect("refused");
    assert_eq!(status, 403);
    assert!(body.contains("ticket expired"), "{body}");

    let s = TestServer::with(|c| {
        c.ws_ticket_ttl = Duration::from_millis(300);
        c.retention_interval = Duration::from_millis(200);
    });
    let bob = s.user("bob");
    s.ws_ticket(&bob);
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 = s
            .db()
            .query_one("SELECT count(*) FROM klav_ws_tickets", &[])
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "an expired ticket was kept");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A user holds at most 20 outstanding tickets: minting more drops the oldest.
#[test]
fn ws_tickets_per_user_are_bounded() {
    let s = TestServer::start();
    let t = s.user("alice");
    let tickets: Vec<String> = (0..25).map(|_| s.ws_ticket(&t)).collect();
    let n: i64 = s
        .db()
        .query_one(
            "SELECT count(*) FROM klav_ws_tickets WHERE username = 'alice'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    for old in &tickets[..5] {
        assert_eq!(
            Ws::connect_ticket(s.addr, old).err().map(|e| e.0),
            Some(403)
        );
    }
    Ws::connect_ticket(s.addr, &tickets[5]).expect("the oldest kept ticket works");
    Ws::connect_ticket(s.addr, &tickets[24]).expect("the newest works");
}

/// The connection a ticket opens is the token's: it closes when the token
/// expires (`KLAV_WS_TOKEN_EXPIRY=close`), and `refresh_token` keeps the
/// token's login (`auth_time`).
#[test]
fn ticket_connection_keeps_the_token_expiry_and_login() {
    let s = TestServer::with(|c| c.ws_token_expiry_close = true);
    s.user("alice");
    let short = token(
        json!({"sub": "alice", "iat": now(), "exp": now() + 2}),
        SECRET,
        Algorithm::HS256,
    );
    let mut ws = Ws::connect_ticket(s.addr, &s.ws_ticket(&short)).unwrap();
    let warn = ws.expect("token_expiring");
    assert!(warn["in_seconds"].as_u64().unwrap() <= 2, "{warn}");
    let close = ws.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);

    let login = now() - 5 * 24 * 3600;
    let old = token(
        json!({"sub": "alice", "iat": now(), "exp": now() + 600, "auth_time": login}),
        SECRET,
        Algorithm::HS256,
    );
    let mut ws = Ws::connect_ticket(s.addr, &s.ws_ticket(&old)).unwrap();
    let t = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        t["access_token"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .unwrap()
    .claims;
    assert_eq!(claims["auth_time"], login);
}

/// URL-safe base64 without padding, for hand-made tokens.
mod base64_like {
    pub fn encode_url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
