//! The log: secrets never reach it, and a stderr nobody reads never blocks the
//! event loop (lines are dropped and counted instead).

use std::io::Write;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::*;

/// At debug level, neither a good nor a bad token, nor a password, reaches the log.
#[test]
fn tokens_never_appear_in_logs() {
    let url = pg().fresh_db();
    let dir = scratch_dir("logs");
    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url), ("KLAV_LOG", "debug")]);
    let password = "correct-horse-battery-staple";
    let creds = json!({"username": "logged", "password": password}).to_string();
    assert_eq!(
        http_to(k.addr, "POST", "/register", Some(&creds)).status,
        200
    );
    let r = http_to(k.addr, "POST", "/login", Some(&creds));
    assert_eq!(r.status, 200);
    let good = r.json()["access_token"].as_str().unwrap().to_string();
    let wrong = json!({"username": "logged", "password": "wrong-password-guess"}).to_string();
    assert_eq!(http_to(k.addr, "POST", "/login", Some(&wrong)).status, 401);
    let exp = unix_now() + 600;
    let bad = sign(
        &json!({"sub": "logged", "exp": exp}),
        "not-the-secret",
        Algorithm::HS256,
    );

    let mut ws = Ws::connect(k.addr, &good).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    let auth = format!("Bearer {bad}");
    let refused = Ws::connect_with(k.addr, "/ws", &[("Authorization", auth.as_str())]);
    assert_eq!(refused.err().map(|e| e.0), Some(403));
    assert_eq!(Ws::connect(k.addr, &bad).err().map(|e| e.0), Some(403));
    // Something worth a debug line: a protocol violation (invalid UTF-8).
    ws.sock
        .get_mut()
        .write_all(&masked_frame(0x81, b"\xff"))
        .unwrap();
    assert_eq!(close_code(&ws.expect_close()), Some(CloseCode::Invalid));

    assert!(k.terminate().success());
    let log = k.full_stderr();
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    for (what, secret) in [
        ("good token", good.as_str()),
        ("good token's signature", good.rsplit('.').next().unwrap()),
        ("bad token", bad.as_str()),
        ("bad token's signature", bad.rsplit('.').next().unwrap()),
        ("password", password),
        ("wrong password", "wrong-password-guess"),
        ("JWT secret", SECRET),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With stderr a pipe nobody reads, a flood of log lines (debug level, one per
/// malformed request) must not stop the loop: lines are dropped and counted.
#[test]
fn a_blocked_stderr_never_blocks_the_loop() {
    let url = pg().fresh_db();
    let dir = scratch_dir("stderr");
    let k = spawn_klav(&dir, &[("DATABASE_URL", &url), ("KLAV_LOG", "debug")]);
    let token = user_at(k.addr, "logger");
    k.stall_stderr(true);
    // Far more than a pipe holds (64 KiB): 3,000 lines of ~90 bytes.
    for i in 0..3000 {
        let mut c = connect(k.addr);
        c.write_all(b"BROKEN\r\n\r\n").unwrap();
        let r = read_response(&mut c).unwrap_or_else(|| panic!("bad request {i} unanswered"));
        assert_eq!(r.status, 400);
    }
    // Still serving everything else, database round trips included.
    let mut ws = Ws::connect(k.addr, &token).unwrap();
    let room = ws.create_room("still here");
    ws.join(&room);
    ws.send(json!({"type": "msg", "room_id": room, "text": "alive"}));
    let m = ws.recv();
    assert_eq!(m["type"], "message", "{m}");
    let dropped = metric(k.addr, "klav_log_lines_dropped_total");
    assert!(dropped > 0, "lines were dropped, not waited for");
    k.stall_stderr(false);
    drop(ws);
    drop(k);
    let _ = std::fs::remove_dir_all(&dir);
}
