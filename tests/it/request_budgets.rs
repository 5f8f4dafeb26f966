//! What requests may cost: a connection's request rate (refused, then closed
//! for flooding), pings charged like requests, large replies charged by size,
//! the rows `my_rooms` may read, and lookups of unknown names. Each is paid for
//! before klav does the work.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::harness::*;

/// Requests past the per-connection bucket get `RATE_LIMITED` with their `req_id`;
/// a burst is only refused, never disconnected; a client that keeps flooding for
/// `KLAV_FLOOD_SECS` seconds in a row is closed with 1008, and it reads that close
/// frame although it is still sending; other connections are unaffected.
#[test]
fn request_flood_is_rate_limited_then_closed() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 5.0;
        c.rate_burst = 5.0;
        c.flood_secs = 2;
    });
    let t = s.user("flooder");
    let mut ws = s.ws(&t);
    let mut other = s.ws(&t);

    for i in 0..8 {
        let req = json!({"type": "get_online_friends", "req_id": i});
        ws.sock.write(Message::text(req.to_string())).unwrap();
    }
    ws.sock.flush().unwrap();
    for i in 0..8 {
        let r = ws.recv();
        assert_eq!(r["req_id"], i, "replies in order: {r}");
        if i < 5 {
            assert_eq!(r["type"], "online_friends", "within the burst: {r}");
        } else {
            assert_eq!(
                (r["type"].as_str(), r["code"].as_str()),
                (Some("error"), Some("RATE_LIMITED")),
                "{r}"
            );
        }
    }
    ws.silent();

    // One big burst (300 requests at once) is refused, not disconnected.
    for i in 0..300 {
        let req = json!({"type": "get_online_friends", "req_id": format!("b{i}")});
        ws.sock.write(Message::text(req.to_string())).unwrap();
    }
    ws.sock.flush().unwrap();
    let mut answered = 0;
    while answered < 300 {
        let r = ws.recv();
        assert!(
            r["type"] == "online_friends" || r["code"] == "RATE_LIMITED",
            "{r}"
        );
        answered += 1;
    }
    ws.silent();

    // A pause refills the bucket; the connection was kept.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        ws.request(json!({"type": "get_online_friends"}))["type"],
        "online_friends"
    );

    // Keep flooding (about 200 requests a second, never pausing to read more
    // than what has arrived): refused, then closed with 1008, and the close
    // frame reaches the client although it never stopped sending.
    ws.sock
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events: Vec<Value> = Vec::new();
    let mut sent = 0;
    let close = 'flood: loop {
        assert!(Instant::now() < deadline, "a flooder was never closed");
        for _ in 0..2 {
            let req = json!({"type": "get_online_friends", "req_id": format!("f{sent}")});
            sent += 1;
            // Once the server has shut its side, writes may fail: read on.
            let _ = ws.sock.write(Message::text(req.to_string()));
        }
        let _ = ws.sock.flush();
        loop {
            match ws.sock.read() {
                Ok(Message::Text(t)) => events.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(c)) => break 'flood c,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("no close frame, but: {e} after {} events", events.len()),
            }
        }
    };
    assert_eq!(close_code(&close), Some(CloseCode::Policy), "{close:?}");
    assert_eq!(
        close.as_ref().map(|c| c.reason.to_string()).as_deref(),
        Some("request rate limit exceeded")
    );
    let limited = events
        .iter()
        .filter(|e| e["code"] == "RATE_LIMITED")
        .count();
    assert!(limited >= 10, "refused {limited} of {sent} first");

    // The limit is per connection: the same user's other connection is fine.
    assert_eq!(
        other.request(json!({"type": "get_online_friends"}))["type"],
        "online_friends"
    );
    wait_metric(s.addr, &disconnects("flood"), |v| v == 1);
    assert!(metric(s.addr, "klav_rate_limited_total") >= 9);
}

/// `my_rooms` counted every unread entry of every room with a scan per room:
/// 500 rooms of 1,000 entries cost half a million rows per request. The count
/// now stops after the first 100 entries past the marker (`unread_more`), and
/// the rows it reads are paid from the user's budget.
#[test]
fn my_rooms_unread_counts_are_bounded_and_paid_for() {
    let s = TestServer::start();
    let mut ws = s.client("mina");
    let mut db = s.db();
    let mut rooms = Vec::new();
    for i in 0..3 {
        let room = ws.create_room(&format!("room {i}"));
        ws.join(&room);
        rooms.push(room);
    }
    fill_room(&mut db, &rooms[0], "other", 150, "hi");
    fill_room(&mut db, &rooms[1], "other", 7, "hi");
    let info = ws.request(json!({"type": "my_rooms"}));
    let by_id = |id: &str| -> Value {
        info["rooms_info"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap()
    };
    // The window is the first 100 entries after the marker: the room's
    // creation and the join, then 98 of the 150 messages.
    assert_eq!(by_id(&rooms[0])["unread"], 98, "{info}");
    assert_eq!(by_id(&rooms[0])["unread_more"], true, "{info}");
    assert_eq!(by_id(&rooms[1])["unread"], 7, "{info}");
    assert!(by_id(&rooms[1]).get("unread_more").is_none(), "{info}");
    assert_eq!(by_id(&rooms[2])["unread"], 0, "{info}");

    // Each request reads about 100 rows: a user asking in a loop runs out.
    let mut refused = None;
    for i in 0..200 {
        let r = ws.request(json!({"type": "my_rooms"}));
        if r["type"] == "error" {
            assert_eq!(r["code"], "RATE_LIMITED", "{r}");
            refused = Some(i);
            break;
        }
    }
    let refused = refused.expect("my_rooms in a loop is refused at some point");
    assert!(
        refused >= 10,
        "a few in a row are fine (refused after {refused})"
    );
    // Another user is not affected.
    let mut other = s.client("other");
    assert_eq!(
        other.request(json!({"type": "my_rooms"}))["type"],
        "my_rooms"
    );
}

/// A cached `history` of 200 large entries is megabytes for one small request;
/// such replies are charged to the connection's request bucket by size, so a
/// client repeating it is refused instead of making the loop copy megabytes
/// at the request rate.
#[test]
fn large_replies_are_charged_to_the_request_bucket() {
    let s = TestServer::start();
    let mut ws = s.client("mina");
    let mut db = s.db();
    let room = ws.create_room("big");
    ws.join(&room);
    fill_room(&mut db, &room, "other", 200, &"\u{1}".repeat(4000));
    let mut refused = None;
    for i in 0..60 {
        let h = ws.request(json!({"type": "history", "room_id": room, "limit": 200}));
        if h["type"] == "error" {
            assert_eq!(h["code"], "RATE_LIMITED", "{h}");
            refused = Some(i);
            break;
        }
        assert_eq!(h["items"].as_array().unwrap().len(), 200);
    }
    // Each reply is about 4.8 MB: 293 tokens of a 100-token burst.
    let refused = refused.expect("megabyte replies at the request rate are refused");
    assert!(refused <= 2, "refused only after {refused} replies");
    // Small requests are not charged beyond their own cost.
    let mut other = s.client("other");
    for _ in 0..50 {
        assert_eq!(
            other.request(json!({"type": "my_rooms"}))["type"],
            "my_rooms"
        );
    }
}

/// Pings were answered without limit: 8 connections got 6.6 GB of pongs in 20 s
/// and were never closed. They are charged like requests now, and a connection
/// that keeps flooding pings is closed like one that floods requests.
#[test]
fn ping_floods_are_charged_and_closed() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 20.0;
        c.rate_burst = 20.0;
        c.flood_secs = 2;
    });
    let mut ws = s.client("mina");
    ws.sock.get_mut().set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0u64;
    let close = loop {
        assert!(Instant::now() < deadline, "not closed after {sent} pings");
        for _ in 0..50 {
            match ws.sock.send(Message::Ping(vec![0u8; 100].into())) {
                Ok(()) => sent += 1,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break
                }
                Err(_) => break,
            }
        }
        let _ = ws.sock.flush();
        match ws.sock.read() {
            Ok(Message::Close(c)) => break c,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("expected a close frame, got {e} after {sent} pings"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("rate"), "{close:?}");
    // Someone pinging now and then is not bothered.
    let mut calm = s.client("calm");
    for _ in 0..5 {
        calm.send_raw(Message::Ping(b"hi".to_vec().into()));
        assert_eq!(
            calm.request(json!({"type": "my_rooms"}))["type"],
            "my_rooms"
        );
    }
}

/// `friend_follow` told `NOT_REGISTERED` from `FOLLOWED` at the request rate:
/// 2,000 names tested in 6 s. Unknown names are a per-user budget now.
#[test]
fn unknown_names_cannot_be_enumerated() {
    let s = TestServer::start();
    s.user("real");
    let mut ws = s.client("mina");
    for i in 0..10 {
        let ack = ws.request(json!({"type": "friend_follow", "to": format!("ghost{i}")}));
        assert_eq!(ack["status"], "NOT_REGISTERED", "{ack}");
    }
    let r = ws.request(json!({"type": "friend_follow", "to": "ghost10"}));
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "RATE_LIMITED", "{r}");
    // Another connection of the same user shares the budget.
    let mut again = s.ws(&s.token("mina"));
    let r = again.request(json!({"type": "friend_follow", "to": "real"}));
    assert_eq!(r["code"], "RATE_LIMITED", "{r}");
    // Another user has their own.
    let mut other = s.client("other");
    let ack = other.request(json!({"type": "friend_follow", "to": "real"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    // Names that exist cost nothing: a user following real people never runs out.
    let mut third = s.client("third");
    for i in 0..20 {
        s.user(&format!("friend{i}"));
        let ack = third.request(json!({"type": "friend_follow", "to": format!("friend{i}")}));
        assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    }
}
