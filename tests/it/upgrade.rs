//! The authenticated WebSocket upgrade and the basic frame rules.

use std::time::{SystemTime, UNIX_EPOCH};

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
