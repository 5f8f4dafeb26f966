//! `typing`: forwarded to the room's other members only, at most once per two
//! seconds, and never stored.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[test]
fn typing_reaches_other_members_only_and_is_throttled() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut alice2 = s.ws(&s.token("alice"));
    let mut outsider = s.client("carl");
    c[0].send(json!({"type": "typing", "room_id": room, "req_id": "t1"}));
    let ev = c[1].expect("typing");
    assert_eq!(ev["room"], room.as_str());
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["user_nickname"], "alice");
    assert!(ev.get("req_id").is_none());
    // Never to the typer (no connection of theirs), never to outsiders, no reply.
    c[0].silent();
    alice2.silent();
    outsider.silent();
    // Within 2 s: dropped silently, not RATE_LIMITED.
    let t0 = Instant::now();
    c[0].send(json!({"type": "typing", "room_id": room}));
    alice2.send(json!({"type": "typing", "room_id": room}));
    c[1].silent();
    c[0].silent();
    // Once 2 s have passed since the last forwarded one: forwarded again.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed()));
    alice2.send(json!({"type": "typing", "room_id": room}));
    assert_eq!(c[1].expect("typing")["user"], "alice");
    c[0].silent();
    // Errors.
    let e = outsider.request(json!({"type": "typing", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let e = outsider.request(json!({"type": "typing"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    // Nothing stored.
    let n = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind <> 'system'",
        &[&room],
    );
    assert_eq!(n, 0);
}
