//! What one request may cost: a `resume`, a `my_rooms`, a cached `history`, a
//! ping, a lookup of a name, a reconnect. Each is paid for before klav does the
//! work, so no client makes klav read, build or hold more than its share.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::harness::*;

/// Adds `n` messages of `text` by `from` to `room` straight into the table (as
/// another program, or years of chat, would have), and moves the room's
/// newest entry along as the writer does.
fn fill(db: &mut postgres::Client, room: &str, from: &str, n: i64, text: &str) {
    db.execute(
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, text) \
         SELECT $1, now(), 'msg', $2, $2, $4 FROM generate_series(1, $3::int8)",
        &[&room, &from, &n, &text],
    )
    .unwrap();
    db.execute(
        "UPDATE rooms SET klav_last_entry_id = \
         (SELECT max(id) FROM chat_logs WHERE room_id = $1) WHERE id = $1",
        &[&room],
    )
    .unwrap();
}

fn ack_of<'a>(ack: &'a Value, room: &str) -> &'a Value {
    &ack["rooms"][room]
}

/// Resumes `rooms` from cursor 0; returns the `resume_ack` and how many
/// entries were replayed before it.
fn resume_all(ws: &mut Ws, rooms: &[String]) -> (Value, usize) {
    let cursors: serde_json::Map<String, Value> =
        rooms.iter().map(|r| (r.clone(), json!(0))).collect();
    ws.send(json!({"type": "resume", "rooms": cursors, "req_id": "res"}));
    let mut replayed = 0;
    loop {
        let ev = ws.recv();
        if ev["type"] == "resume_ack" {
            return (ev, replayed);
        }
        replayed += 1;
    }
}

/// One `resume` naming rooms with thousands of entries used to read every
/// entry of every room (1,001 a room, text and all), build a frame for each,
/// and only then find that most did not fit: 1.5 GiB for a single request. Now
/// the rows it may examine are fixed before it starts, text is loaded only for
/// what will be sent, and the rooms past the budget answer `recovered:false`.
#[test]
fn resume_reads_only_what_its_budget_allows() {
    let url = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-resume-cost-{}", std::process::id()));
    let mut klav = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let token = user_at(klav.addr, "mina");
    let mut ws = Ws::connect(klav.addr, &token).unwrap();
    let big = "가".repeat(4000);
    let mut rooms = Vec::new();
    // 1,000 entries each: as many as a room replays at most, so the old
    // replay read and framed every one of them.
    for i in 0..8 {
        let room = ws.create_room(&format!("busy {i}"));
        ws.join(&room);
        fill(&mut db, &room, "other", 997, &big);
        rooms.push(room);
    }
    let quiet = ws.create_room("quiet");
    ws.join(&quiet);
    fill(&mut db, &quiet, "other", 5, "hello");
    rooms.push(quiet.clone());
    // A new connection, as after a reconnect (the old one saw the rooms live).
    ws.close();
    let mut ws = Ws::connect(klav.addr, &token).unwrap();
    let before = rss_kb(klav.pid());

    let (ack, replayed) = resume_all(&mut ws, &rooms);
    let grown = rss_kb(klav.pid()).saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "one resume grew the server by {grown} KiB (8,000 entries of 12 KB exist)"
    );
    // The rooms are taken in the order of the request's object (by id). The
    // first busy one is counted whole (999 rows) and is too large for the
    // reply; the second runs the request out of rows; every room after it is
    // reloaded with `history`, the small one too (it is never read then). The
    // small one is replayed only when its turn came before that.
    let mut order = rooms.clone();
    order.sort();
    let second_busy = order
        .iter()
        .enumerate()
        .filter(|(_, r)| **r != quiet)
        .nth(1)
        .map(|(i, _)| i)
        .unwrap();
    let quiet_first = order.iter().position(|r| *r == quiet).unwrap() < second_busy;
    for room in &order {
        let (recovered, count) = match room == &quiet && quiet_first {
            true => (true, 7),
            false => (false, 0),
        };
        assert_eq!(ack_of(&ack, room)["recovered"], recovered, "{room}: {ack}");
        assert_eq!(ack_of(&ack, room)["count"], count, "{room}: {ack}");
    }
    assert_eq!(replayed, if quiet_first { 7 } else { 0 }, "{ack}");

    // A user resuming in a loop, on two connections, is held to the budget of
    // rows per second (4,000 at once, then 2,000 a second).
    let mut second = Ws::connect(klav.addr, &token).unwrap();
    let rows_before = metric(klav.addr, "klav_budgeted_rows_total");
    let started = Instant::now();
    for _ in 0..4 {
        for ws in [&mut ws, &mut second] {
            let (ack, replayed) = resume_all(ws, &rooms);
            // Only the small room can ever fit (when its turn comes early).
            assert!(replayed == 0 || (quiet_first && replayed == 7), "{ack}");
        }
    }
    let rows = metric(klav.addr, "klav_budgeted_rows_total") - rows_before;
    let allowed = 4_000.0 + 2_000.0 * started.elapsed().as_secs_f64() + 100.0;
    assert!(
        (rows as f64) <= allowed,
        "8 resumes examined {rows} rows; the budget allowed {allowed}"
    );
    second.close();
    // It refills: a little later the small room replays in full.
    std::thread::sleep(Duration::from_millis(2_500));
    let (ack, replayed) = resume_all(&mut ws, std::slice::from_ref(&quiet));
    assert_eq!(ack_of(&ack, &quiet)["recovered"], true, "{ack}");
    assert_eq!(
        ack_of(&ack, &quiet)["count"],
        7,
        "creation, join, 5 messages"
    );
    assert_eq!(replayed, 7);
    // Alone, within the budget, a busy room is still too large to replay.
    std::thread::sleep(Duration::from_millis(2_500));
    let (ack, replayed) = resume_all(&mut ws, &rooms[..1]);
    assert_eq!(ack_of(&ack, &rooms[0])["recovered"], false, "{ack}");
    assert_eq!(replayed, 0);
    klav.terminate();
}

/// A replay is built only as far as the reply budget reaches: rooms whose
/// entries would pass it answer `recovered:false`, and those that fit are
/// replayed whole, in order.
#[test]
fn resume_replays_whole_rooms_within_the_reply_budget() {
    let s = TestServer::with(|c| c.max_output_bytes = 256 * 1024);
    let mut ws = s.client("mina");
    let mut db = s.db();
    let small = ws.create_room("small");
    ws.join(&small);
    let large = ws.create_room("large");
    ws.join(&large);
    // The small room's 10 entries fit; the large room's 100 × 4 KB do not fit
    // in half of 256 KiB.
    fill(&mut db, &small, "other", 10, "hi");
    fill(&mut db, &large, "other", 100, &"x".repeat(4000));
    ws.close();
    let mut ws = s.ws(&s.token("mina"));
    let (ack, replayed) = resume_all(&mut ws, &[small.clone(), large.clone()]);
    assert_eq!(ack_of(&ack, &small)["recovered"], true, "{ack}");
    // Its creation and the join, then the 10 messages.
    assert_eq!(ack_of(&ack, &small)["count"], 12, "{ack}");
    assert_eq!(ack_of(&ack, &large)["recovered"], false, "{ack}");
    assert_eq!(ack_of(&ack, &large)["count"], 0, "{ack}");
    assert_eq!(replayed, 12);
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
    fill(&mut db, &rooms[0], "other", 150, "hi");
    fill(&mut db, &rooms[1], "other", 7, "hi");
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

/// The history cache was bounded by entries only: 200 entries of a room of 16 KB
/// texts (or of control characters, six bytes each once escaped) made one room
/// megabytes. It is bounded in bytes now, counted as stored, and says so in
/// `/metrics`.
#[test]
fn history_cache_is_bounded_in_bytes() {
    let s = TestServer::with(|c| c.history_cache_bytes = 2 << 20);
    let mut ws = s.client("mina");
    let mut db = s.db();
    // 1,000 control characters: 6 KB each once escaped, 1.2 MB a room.
    let text = "\u{1}".repeat(1000);
    for i in 0..8 {
        let room = ws.create_room(&format!("room {i}"));
        ws.join(&room);
        fill(&mut db, &room, "other", 200, &text);
        // The first `history` fills the cache (asynchronously); the next
        // ones may be served from it.
        for _ in 0..3 {
            let h = ws.request(json!({"type": "history", "room_id": room, "limit": 1}));
            assert_eq!(h["type"], "history", "{h}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let bytes = metric(s.addr, "klav_history_cache_bytes");
        assert!(bytes <= 2 << 20, "{bytes} bytes held after room {i}");
    }
    assert!(
        metric(s.addr, "klav_history_cache_bytes") > 1 << 20,
        "the cache is used up to its budget"
    );
    assert!(metric(s.addr, "klav_history_cache_hits_total") > 0);
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
    fill(&mut db, &room, "other", 200, &"\u{1}".repeat(4000));
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
