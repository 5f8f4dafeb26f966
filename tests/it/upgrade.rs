//! The authenticated WebSocket upgrade: by token (header or query) or by
//! one-time ticket, the tokens it refuses, the origins it refuses, and how many
//! WebSockets a user or an address may hold and open.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::harness::*;

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
    let exp = unix_now() + 600;
    let cases = vec![
        ("none", "/ws".to_string()),
        ("garbage", "/ws?token=abc.def.ghi".to_string()),
        (
            "expired",
            format!(
                "/ws?token={}",
                sign(
                    &json!({"sub": "alice", "iat": unix_now() - 7200, "exp": unix_now() - 3600}),
                    SECRET,
                    Algorithm::HS256
                )
            ),
        ),
        (
            "other secret",
            format!(
                "/ws?token={}",
                sign(
                    &json!({"sub": "alice", "exp": exp}),
                    "other",
                    Algorithm::HS256
                )
            ),
        ),
        (
            "other algorithm",
            format!(
                "/ws?token={}",
                sign(
                    &json!({"sub": "alice", "exp": exp}),
                    SECRET,
                    Algorithm::HS512
                )
            ),
        ),
        (
            "no sub",
            format!(
                "/ws?token={}",
                sign(&json!({"exp": exp}), SECRET, Algorithm::HS256)
            ),
        ),
        (
            "no exp",
            format!(
                "/ws?token={}",
                sign(&json!({"sub": "alice"}), SECRET, Algorithm::HS256)
            ),
        ),
        (
            "unregistered user",
            format!(
                "/ws?token={}",
                sign(
                    &json!({"sub": "ghost", "exp": exp}),
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

/// A token that is not valid yet (`nbf` in the future) is refused.
#[test]
fn token_not_yet_valid_is_refused() {
    let s = TestServer::start();
    s.user("alice");
    let now = unix_now();
    let mint =
        |nbf: u64| mint_claims(json!({"sub": "alice", "iat": now, "exp": now + 3600, "nbf": nbf}));
    match Ws::connect(s.addr, &mint(now + 600)) {
        Err((status, body)) => {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("not yet valid"), "{body}");
        }
        Ok(_) => panic!("a token valid only in ten minutes was accepted"),
    }
    assert!(Ws::connect(s.addr, &mint(now.saturating_sub(5))).is_ok());
}

#[test]
fn not_an_upgrade_is_400() {
    let s = TestServer::start();
    let r = s.http("GET", "/ws", None);
    assert_eq!(r.status, 400);
}

/// With allowed origins configured, a browser page from another origin cannot
/// open a WebSocket with the user's token; the allowed origin and non-browser
/// clients (no Origin) can.
#[test]
fn cross_site_websocket_hijacking_is_refused() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://chat.example".into()]);
    let t = s.user("victim");
    let path = format!("/ws?token={t}");
    for origin in [
        "https://evil.example",
        "https://chat.example.evil.example",
        "http://chat.example",
        "null",
    ] {
        let (status, body) = Ws::connect_with(s.addr, &path, &[("Origin", origin)])
            .err()
            .unwrap_or_else(|| panic!("{origin}: upgraded"));
        assert_eq!(status, 403, "{origin}");
        assert!(body.contains("origin"), "{origin}: {body}");
    }
    for origin in ["https://chat.example", "https://Chat.Example/"] {
        let mut ws = Ws::connect_with(s.addr, &path, &[("Origin", origin)])
            .unwrap_or_else(|e| panic!("{origin}: {e:?}"));
        assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    }
    let mut ws = Ws::connect(s.addr, &t).expect("no Origin: not a browser");
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
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
    let expired = sign(
        &json!({"sub": "alice", "iat": unix_now() - 7200, "exp": unix_now() - 3600}),
        SECRET,
        Algorithm::HS256,
    );
    let ghost = sign(
        &json!({"sub": "ghost", "iat": unix_now(), "exp": unix_now() + 600}),
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
    let n: i64 = s.count("SELECT count(*) FROM klav_ws_tickets", &[]);
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
    eventually(WAIT, Duration::from_millis(100), || {
        match s.count("SELECT count(*) FROM klav_ws_tickets", &[]) {
            0 => Ok(()),
            _ => Err("an expired ticket was kept".into()),
        }
    });
}

/// A user holds at most 20 outstanding tickets: minting more drops the oldest.
#[test]
fn ws_tickets_per_user_are_bounded() {
    let s = TestServer::start();
    let t = s.user("alice");
    let tickets: Vec<String> = (0..25).map(|_| s.ws_ticket(&t)).collect();
    let n: i64 = s.count(
        "SELECT count(*) FROM klav_ws_tickets WHERE username = 'alice'",
        &[],
    );
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
    let short = sign(
        &json!({"sub": "alice", "iat": unix_now(), "exp": unix_now() + 2}),
        SECRET,
        Algorithm::HS256,
    );
    let mut ws = Ws::connect_ticket(s.addr, &s.ws_ticket(&short)).unwrap();
    let warn = ws.expect("token_expiring");
    assert!(warn["in_seconds"].as_u64().unwrap() <= 2, "{warn}");
    let close = ws.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);

    let login = unix_now() - 5 * 24 * 3600;
    let old = sign(
        &json!({"sub": "alice", "iat": unix_now(), "exp": unix_now() + 600, "auth_time": login}),
        SECRET,
        Algorithm::HS256,
    );
    let mut ws = Ws::connect_ticket(s.addr, &s.ws_ticket(&old)).unwrap();
    let t = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
    let claims = claims_of(t["access_token"].as_str().unwrap());
    assert_eq!(claims["auth_time"], login);
}

#[test]
fn websockets_per_user_and_per_address_are_capped() {
    let s = TestServer::with(|c| {
        c.max_conns_per_user = 3;
        c.max_conns_per_addr = 5;
        c.trusted_proxies = klav::client_addr::TrustedProxies::parse("127.0.0.1").unwrap();
    });
    let t = s.user("many");
    let mut keep = Vec::new();
    for _ in 0..3 {
        keep.push(s.ws(&t));
    }
    let (_, status) = upgrade_status(s.addr, &t, "");
    assert_eq!(status, 429, "a fourth connection of one user");
    // Closing one frees its place.
    keep.pop().unwrap().close();
    std::thread::sleep(Duration::from_millis(100));
    keep.push(s.ws(&t));

    // Per address: 3 + 2 more from other users fill 127.0.0.1's five.
    for u in ["other1", "other2"] {
        keep.push(s.client(u));
    }
    let t3 = s.user("other3");
    let (_, status) = upgrade_status(s.addr, &t3, "");
    assert_eq!(status, 429, "a sixth connection from one address");
    // Behind the trusted proxy, the forwarded address is what counts.
    let (_sock, status) = upgrade_status(s.addr, &t3, "X-Forwarded-For: 198.51.100.7\r\n");
    assert_eq!(status, 101, "another client behind the proxy");
    assert!(metric(s.addr, "klav_upgrades_refused_total") >= 2);
}

/// One user connecting and disconnecting in a loop made 8,008 presence
/// transactions and 15,504 presence events to a follower in 20 s. Upgrades are
/// a per-user budget now: past the burst, 429 with `Retry-After`.
#[test]
fn reconnect_loops_are_refused_with_retry_after() {
    let s = TestServer::start();
    let token = s.user("mina");
    let mut follower = s.client("fan");
    follower.request(json!({"type": "friend_follow", "to": "mina"}));
    follower.request(json!({"type": "presence_friends_subscribe"}));
    let mut opened = 0;
    let mut refused = None;
    for _ in 0..40 {
        match Ws::connect(s.addr, &token) {
            Ok(ws) => {
                opened += 1;
                ws.close();
            }
            Err((status, body)) => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a reconnect loop is refused at some point");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("opened"), "{body}");
    assert!((15..=25).contains(&opened), "{opened} opened first");
    // The refusal says when to come back.
    let (_, r) = upgrade_response(s.addr, &token, "");
    assert_eq!(r.status, 429);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    // Other users connect as usual.
    assert!(Ws::connect(s.addr, &s.user("other")).is_ok());
    // The follower saw at most one online and one offline per connection let in.
    let mut changes = 0;
    while let Some(ev) = follower.try_recv(Duration::from_millis(500)) {
        if ev["type"] == "presence_change" {
            changes += 1;
        }
    }
    assert!(changes <= 2 * opened, "{changes} presence changes");
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
