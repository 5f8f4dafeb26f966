//! `resume` after a reconnect: the entries missed since a cursor replayed in
//! order, exactly once beside live traffic, with the documented refusals; what a
//! fresh connection gets without one; and what one `resume` may cost (rows read,
//! reply size).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

#[test]
fn resume_replays_in_order_with_the_documented_errors() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    let (other, _) = {
        let r = c[2].create_room("carl only");
        c[2].join(&r);
        (r, ())
    };
    let cursor = post(&mut c[0], &room, "seen");
    c[1].expect("message");
    c[2].expect("message");
    let bob = c.remove(1);
    bob.close();
    let m1 = post(&mut c[0], &room, "missed 1");
    let ack = c[0]
        .request(json!({"type": "room_dm", "room_id": room, "to": "carl", "text": "not for bob"}));
    assert_eq!(ack["status"], "DELIVERED");
    let dm_to_bob =
        c[1].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "for bob"}));
    assert_eq!(dm_to_bob["status"], "QUEUED");
    let m2 = post(&mut c[0], &room, "missed 2");

    let mut bob = s.ws(&s.token("bob"));
    assert_eq!(bob.expect("offline_dm")["text"], "for bob");
    bob.send(json!({"type": "resume", "req_id": "R", "rooms": {
        room.clone(): cursor, other.clone(): 0, "r_00000000": 0}}));
    let e1 = bob.expect("message");
    assert_eq!((id_of(&e1), &e1["text"]), (m1, &json!("missed 1")));
    let dm = bob.expect("dm");
    assert_eq!(dm["text"], "for bob");
    let e2 = bob.expect("message");
    assert_eq!(id_of(&e2), m2);
    assert!(id_of(&dm) > m1 && id_of(&dm) < m2);
    let ack = bob.expect("resume_ack");
    assert_eq!(ack["req_id"], "R");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 3}));
    let refused = json!({"recovered": false, "count": 0, "error": "NOT_A_MEMBER"});
    assert_eq!(ack["rooms"][&other], refused);
    assert_eq!(ack["rooms"]["r_00000000"], refused);
    bob.silent();

    // Nothing after the newest id: an empty replay.
    let ack = bob.request(json!({"type": "resume", "rooms": {room.clone(): m2}}));
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 0}));
    // Garbage.
    for bad in [
        json!({"type": "resume"}),
        json!({"type": "resume", "rooms": [room]}),
        json!({"type": "resume", "rooms": {room.clone(): "abc"}}),
        json!({"type": "resume", "rooms": {room.clone(): -1}}),
        json!({"type": "resume", "rooms": {room.clone(): 1.5}}),
        json!({"type": "resume", "rooms": {room.clone(): null}}),
    ] {
        let e = bob.request(bad.clone());
        assert_eq!(e["code"], "BAD_REQUEST", "{bad}");
    }
    // Over 100 rooms, up to as many as fit in a frame.
    for n in [101, 6_000] {
        let many: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("{i:x}"), json!(0))).collect();
        let e = bob.request(json!({"type": "resume", "rooms": many}));
        assert_eq!(e["code"], "BAD_REQUEST", "{n} rooms");
    }
    bob.silent();
    // 10,000 rooms do not fit in a 64 KiB frame: the frame limit closes 1009
    // (another connection; bob's stays).
    let mut big = s.ws(&s.token("bob"));
    let many: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| (format!("r_{i:08x}"), json!(0)))
        .collect();
    big.send(json!({"type": "resume", "rooms": many}));
    let close = big.expect_close().expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    // Still works afterwards.
    let ev = bob.request(json!({"type": "msg", "room_id": room, "text": "back"}));
    assert_eq!(ev["type"], "message");
}

/// A server for [`room_with_live_traffic`]: no rate limit or retention in the
/// way, and room for the poster, which does not read its own echoes.
fn live_traffic_server() -> TestServer {
    TestServer::with(|c| {
        c.rate_burst = 10_000.0;
        c.rate_per_sec = 10_000.0;
        c.max_logs_per_room = 0;
        c.max_output_bytes = 256 << 20;
    })
}

/// A room with `cursor` and 300 entries after it, and a thread posting to it
/// every 2 ms until the returned flag is set (then it hands back the poster).
fn room_with_live_traffic(s: &TestServer) -> (String, i64, Arc<AtomicBool>, Poster) {
    let (room, mut c) = room_with(s, &["alice", "bob"]);
    let cursor = post(&mut c[1], &room, "before");
    for i in 0..300 {
        c[1].send(json!({"type": "msg", "room_id": room, "text": format!("old {i}")}));
    }
    drop(c.remove(1));
    let mut poster = c.remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let room2 = room.clone();
    let posting = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            poster.send(json!({"type": "msg", "room_id": room2, "text": format!("live {n}")}));
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        poster
    });
    std::thread::sleep(Duration::from_millis(100));
    (room, cursor, stop, posting)
}

type Poster = std::thread::JoinHandle<Ws>;

/// The ids of a room's entries in `(after, upto]`, ascending.
fn ids_between(s: &TestServer, room: &str, after: i64, upto: i64) -> Vec<i64> {
    s.db()
        .query(
            "SELECT id FROM chat_logs WHERE room_id = $1 AND id > $2 AND id <= $3 ORDER BY id",
            &[&room, &after, &upto],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Reads until `resume_ack` (which must say `recovered`) and `after_ack`
/// messages past it; returns every message id in arrival order.
fn messages_through_resume(ws: &mut Ws, room: &str, after_ack: usize) -> Vec<i64> {
    let mut got = Vec::new();
    let mut acked = false;
    let mut past = 0;
    while past < after_ack {
        let ev = ws.recv();
        match ev["type"].as_str().unwrap() {
            "message" => {
                got.push(id_of(&ev));
                if acked {
                    past += 1;
                }
            }
            "resume_ack" => {
                assert_eq!(ev["rooms"][room]["recovered"], true, "{ev}");
                acked = true;
            }
            _ => {}
        }
    }
    got
}

/// Messages are posted continuously while a client reconnects and resumes from
/// an old cursor as its first request: everything the connection receives —
/// replay and live events alike — is every id above the cursor exactly once, in
/// id order, with nothing before it.
#[test]
fn resume_during_live_traffic_loses_and_doubles_nothing() {
    let s = live_traffic_server();
    let (room, cursor, stop, posting) = room_with_live_traffic(&s);
    let bob_token = s.token("bob");
    // At once, and after a pause that live traffic would fill were it not held
    // back until the first request.
    for pause in [0, 100] {
        let mut bob = s.ws(&bob_token);
        std::thread::sleep(Duration::from_millis(pause));
        bob.send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): cursor}}));
        let got = messages_through_resume(&mut bob, &room, 100);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "out of order or doubled: {got:?}"
        );
        let want = ids_between(&s, &room, cursor, *got.last().unwrap());
        assert_eq!(got, want, "every id exactly once, in order");
    }
    stop.store(true, Ordering::Relaxed);
    posting.join().unwrap();
}

/// A connection that first asks something else receives live entries for a
/// while, then resumes from an old cursor: the replay fills in only what it did
/// not get live, so every id above the cursor arrives exactly once.
#[test]
fn resume_after_live_entries_replays_only_what_was_not_sent() {
    let s = live_traffic_server();
    let (room, cursor, stop, posting) = room_with_live_traffic(&s);
    let bob_token = s.token("bob");
    for first in ["my_rooms", "history"] {
        let mut bob = s.ws(&bob_token);
        let mut got: Vec<i64> = Vec::new();
        bob.send(json!({"type": first, "room_id": room, "req_id": "F"}));
        // The reply, then some live traffic.
        let mut replied = false;
        let mut live = 0;
        while !replied || live < 50 {
            let ev = bob.recv();
            if ev["req_id"] == "F" {
                replied = true;
            } else if ev["type"] == "message" {
                got.push(id_of(&ev));
                live += 1;
            }
        }
        bob.send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): cursor}}));
        got.extend(messages_through_resume(&mut bob, &room, 100));
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "an id arrived twice: {got:?}");
        let want = ids_between(&s, &room, cursor, *sorted.last().unwrap());
        assert_eq!(sorted, want, "every id above the cursor exactly once");
    }
    stop.store(true, Ordering::Relaxed);
    posting.join().unwrap();
}

/// The user's own DMs never reach their connections live (`dm_ack` answers
/// them), so a resume replays them even above the first entry the connection
/// got live.
#[test]
fn resume_replays_own_dms_above_the_first_live_entry() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let cursor = post(&mut c[0], &room, "seen");
    c[1].expect("message");
    let live = post(&mut c[0], &room, "live");
    assert_eq!(id_of(&c[1].expect("message")), live);
    // From bob's other device, and from this one.
    let mut other = s.ws(&s.token("bob"));
    let ack =
        other.request(json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "a"}));
    assert_eq!(ack["status"], "DELIVERED");
    let ack = c[1].request(json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "b"}));
    assert_eq!(ack["status"], "DELIVERED");
    c[1].send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): cursor}}));
    let a = c[1].expect("dm");
    let b = c[1].expect("dm");
    assert_eq!((&a["text"], &b["text"]), (&json!("a"), &json!("b")));
    assert!(live < id_of(&a) && id_of(&a) < id_of(&b));
    let ack = c[1].expect("resume_ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 2}));
    c[1].silent();
}

/// A fresh connection's live entries wait for its first request, but never
/// for long: one that sends nothing still gets them (in order, none missing),
/// and one whose first request is not `resume` gets them at once, before that
/// request's reply.
#[test]
fn fresh_connection_gets_live_entries_without_a_resume() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let token = s.token("bob");

    let mut quiet = s.ws(&token);
    let mut sent: Vec<i64> = (0..5)
        .map(|i| post(&mut c[0], &room, &format!("q{i}")))
        .collect();
    // Past the hold: live as usual.
    std::thread::sleep(Duration::from_millis(1200));
    sent.extend((5..10).map(|i| post(&mut c[0], &room, &format!("q{i}"))));
    let got: Vec<i64> = (0..10).map(|_| id_of(&quiet.expect("message"))).collect();
    assert_eq!(got, sent);
    quiet.silent();

    let mut asking = s.ws(&token);
    let sent: Vec<i64> = (0..5)
        .map(|i| post(&mut c[0], &room, &format!("a{i}")))
        .collect();
    let edited = c[0].request(json!({"type": "edit", "id": sent[1], "text": "changed"}));
    assert_eq!(edited["type"], "message_edited");
    asking.send(json!({"type": "my_rooms", "req_id": "F"}));
    let got: Vec<i64> = (0..5).map(|_| id_of(&asking.expect("message"))).collect();
    assert_eq!(got, sent);
    let ev = asking.expect("message_edited");
    assert_eq!(id_of(&ev), sent[1]);
    assert_eq!(asking.expect("my_rooms")["req_id"], "F");
    // And live afterwards.
    let id = post(&mut c[0], &room, "after");
    assert_eq!(id_of(&asking.expect("message")), id);
    // The earlier connections got everything once too.
    let mut all = Vec::new();
    while let Some(ev) = c[1].try_recv(QUIET) {
        if ev["type"] == "message" {
            all.push(id_of(&ev));
        }
    }
    assert_eq!(all.len(), 16);
}

#[test]
fn resume_past_retention_or_too_many_is_not_recovered() {
    let s = TestServer::with(|c| {
        c.max_logs_per_room = 5;
        c.retention_interval = Duration::from_secs(1);
        c.rate_burst = 5000.0;
        c.rate_per_sec = 5000.0;
    });
    let (room, mut c) = room_with(&s, &["alice"]);
    let cursor = post(&mut c[0], &room, "first");
    for i in 0..12 {
        post(&mut c[0], &room, &format!("m{i}"));
    }
    eventually(WAIT, Duration::from_millis(100), || {
        match s.count(
            "SELECT count(*) FROM chat_logs WHERE room_id = $1",
            &[&room],
        ) {
            0..=5 => Ok(()),
            _ => Err("retention did not run".into()),
        }
    });
    // A reconnect (this connection already got them all live).
    let mut again = s.ws(&s.token("alice"));
    let ack = again.request(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    assert_eq!(ack["type"], "resume_ack");
    assert_eq!(ack["rooms"][&room]["recovered"], false);
    assert_eq!(ack["rooms"][&room]["count"], 5);

    // More than 1000 after the cursor: nothing replayed, reload with history.
    let s = TestServer::with(|c| {
        c.max_logs_per_room = 0;
        c.rate_burst = 5000.0;
        c.rate_per_sec = 5000.0;
    });
    let (room, mut c) = room_with(&s, &["alice"]);
    for i in 0..1001 {
        c[0].send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
    }
    for _ in 0..1001 {
        c[0].expect("message");
    }
    let mut again = s.ws(&s.token("alice"));
    again.send(json!({"type": "resume", "req_id": "R", "rooms": {room.clone(): 0}}));
    let ack = again.recv();
    assert_eq!(ack["type"], "resume_ack", "nothing replayed before the ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": false, "count": 0}));
}

/// A resume whose replay cannot be read answers UNAVAILABLE and stops holding
/// live events back: the connection keeps receiving its rooms' traffic.
#[test]
fn failed_resume_releases_live_traffic() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let cursor = post(&mut c[0], &room, "before");
    c[1].expect("message");
    let mut db = s.db();
    db.batch_execute("ALTER TABLE rooms RENAME COLUMN klav_pruned_upto TO klav_it_hidden")
        .unwrap();
    let e = c[1].request(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    assert_eq!(e["code"], "UNAVAILABLE", "{e}");
    db.batch_execute("ALTER TABLE rooms RENAME COLUMN klav_it_hidden TO klav_pruned_upto")
        .unwrap();
    let id = post(&mut c[0], &room, "after");
    assert_eq!(id_of(&c[1].expect("message")), id);
    // And a resume works again: this connection got that entry live already...
    c[1].send(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    let ack = c[1].expect("resume_ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 0}));
    // ... a new one gets it replayed.
    let mut again = s.ws(&s.token("bob"));
    again.send(json!({"type": "resume", "rooms": {room.clone(): cursor}}));
    assert_eq!(id_of(&again.expect("message")), id);
    let ack = again.expect("resume_ack");
    assert_eq!(ack["rooms"][&room], json!({"recovered": true, "count": 1}));
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
    let dir = scratch_dir("resume-cost");
    let mut klav = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let mut db = connect_db(&url);
    let token = user_at(klav.addr, "mina");
    let mut ws = Ws::connect(klav.addr, &token).unwrap();
    let big = "가".repeat(4000);
    let mut rooms = Vec::new();
    // 1,000 entries each: as many as a room replays at most, so the old
    // replay read and framed every one of them.
    for i in 0..8 {
        let room = ws.create_room(&format!("busy {i}"));
        ws.join(&room);
        fill_room(&mut db, &room, "other", 997, &big);
        rooms.push(room);
    }
    let quiet = ws.create_room("quiet");
    ws.join(&quiet);
    fill_room(&mut db, &quiet, "other", 5, "hello");
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
    fill_room(&mut db, &small, "other", 10, "hi");
    fill_room(&mut db, &large, "other", 100, &"x".repeat(4000));
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
