//! A connection's token after the upgrade: `refresh_token` and `auth`, the
//! `token_expiring` warning and the close at expiry (`KLAV_WS_TOKEN_EXPIRY`),
//! and the session maximum no refresh extends.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[test]
fn refresh_token_and_auth() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    s.user("bob");
    let t = a.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token");
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["expires_in_minutes"], 60);
    let fresh = t["access_token"].as_str().unwrap().to_string();
    // The fresh token opens a connection.
    let mut a2 = s.ws(&fresh);
    let ack = a.request(json!({"type": "auth", "token": fresh}));
    assert_eq!(ack["type"], "auth_ack");
    assert!(ack["expires_at"].as_str().unwrap().ends_with("+00:00"));
    for bad in [
        json!(mint("bob", 3600)),
        json!("garbage"),
        json!(""),
        json!(5),
    ] {
        let e = a.request(json!({"type": "auth", "token": bad}));
        assert_eq!(e["code"], "BAD_TOKEN", "{bad}");
    }
    a2.silent();
}

/// `KLAV_WS_TOKEN_EXPIRY=close` with a 2-second token: `token_expiring` at once
/// (under a minute left), close 1008 at expiry; `auth` with a newer token keeps
/// the connection; the default (`ignore`) never closes.
#[test]
fn token_expiry_enforced_with_a_two_second_token() {
    let s = TestServer::with(|c| c.ws_token_expiry_close = true);
    s.user("alice");
    s.user("bob");
    let started = Instant::now();
    let mut short = s.ws(&mint("alice", 2));
    let warn = short.expect("token_expiring");
    let secs = warn["in_seconds"].as_u64().unwrap();
    assert!((1..=2).contains(&secs), "{warn}");
    let close = short.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "token expired");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // Renewed in time: stays open past the old expiry.
    let mut renewed = s.ws(&mint("alice", 2));
    renewed.expect("token_expiring");
    let e = renewed.request(json!({"type": "auth", "token": mint("bob", 3600)}));
    assert_eq!(e["code"], "BAD_TOKEN");
    let ack = renewed.request(json!({"type": "auth", "token": mint("alice", 3600)}));
    assert_eq!(ack["type"], "auth_ack");
    std::thread::sleep(Duration::from_secs(3));
    let r = renewed.request(json!({"type": "my_rooms"}));
    assert_eq!(r["type"], "my_rooms");
    renewed.silent();

    // The default keeps the old server's behaviour.
    let s = TestServer::start();
    s.user("alice");
    let mut lax = s.ws(&mint("alice", 2));
    std::thread::sleep(Duration::from_secs(3));
    lax.silent();
    assert_eq!(lax.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
}

/// With the default `KLAV_WS_TOKEN_EXPIRY=ignore` a socket outlives its token;
/// the right to fresh tokens does not: `refresh_token` after the expiry is
/// `BAD_TOKEN`, until `auth` brings a valid token.
#[test]
fn refresh_refused_once_the_connection_token_expired() {
    let s = TestServer::start();
    s.user("alice");
    let mut ws = s.ws(&mint("alice", 2));
    let t = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
    std::thread::sleep(Duration::from_millis(2500));
    let e = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(e["code"], "BAD_TOKEN", "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("log in again"),
        "{e}"
    );
    // The socket itself stays open, as it always did.
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    let ack = ws.request(json!({"type": "auth", "token": s.token("alice")}));
    assert_eq!(ack["type"], "auth_ack", "{ack}");
    let t = ws.request(json!({"type": "refresh_token"}));
    assert_eq!(t["type"], "token", "{t}");
}

/// Tokens carry the login's `auth_time`; refreshing keeps it, and no refreshed
/// token lives past it plus `KLAV_SESSION_MAX_DAYS` (30): once that has passed,
/// `BAD_TOKEN`. A token without the claim (an older version's) counts from its
/// `iat`; `auth` with a token from a new login starts the count again.
#[test]
fn refresh_never_extends_a_login_past_the_session_maximum() {
    let s = TestServer::start();
    s.user("alice");
    let now = unix_now();
    let max = 30 * 24 * 3600;
    let fresh = claims_of(&s.token("alice"));
    assert!(fresh["auth_time"].as_u64().unwrap() >= now, "{fresh}");

    let login = now - max + 3;
    let mut late = s.ws(&mint_claims(
        json!({"sub": "alice", "iat": now, "exp": now + 3600, "auth_time": login}),
    ));
    let mut older = s.ws(&mint_claims(
        json!({"sub": "alice", "iat": login, "exp": now + 3600}),
    ));
    for ws in [&mut late, &mut older] {
        let t = ws.request(json!({"type": "refresh_token"}));
        assert_eq!(t["type"], "token", "{t}");
        assert_eq!(t["expires_in_minutes"], 0, "{t}");
        let claims = claims_of(t["access_token"].as_str().unwrap());
        assert_eq!(claims["auth_time"], login, "{claims}");
        assert!(claims["exp"].as_u64().unwrap() <= login + max, "{claims}");
    }
    std::thread::sleep(Duration::from_millis(3500));
    for ws in [&mut late, &mut older] {
        let e = ws.request(json!({"type": "refresh_token"}));
        assert_eq!(e["code"], "BAD_TOKEN", "{e}");
        assert!(
            e["detail"].as_str().unwrap().contains("log in again"),
            "{e}"
        );
    }
    // A new login restarts the count.
    let ack = late.request(json!({"type": "auth", "token": s.token("alice")}));
    assert_eq!(ack["type"], "auth_ack");
    let t = late.request(json!({"type": "refresh_token"}));
    assert_eq!(t["expires_in_minutes"], 60, "{t}");
    // A token whose login has ended opens nothing.
    let ended = mint_claims(
        json!({"sub": "alice", "iat": now, "exp": now + 3600, "auth_time": now - max - 1}),
    );
    let (status, body) = Ws::connect(s.addr, &ended).err().expect("refused");
    assert_eq!(status, 403);
    assert!(body.contains("log in again"), "{body}");
    assert_eq!(ws_ticket_at(s.addr, Some(&ended)).status, 401);
}
