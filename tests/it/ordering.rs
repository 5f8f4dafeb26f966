//! One connection, one order: pipelined requests take effect as if each waited
//! for the reply to the one before; a session never loads stale state; a DM is
//! never left queued while its recipient is online; every close klav starts
//! reaches a client that is still sending; reads never stall; logging never
//! blocks the loop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::harness::*;

/// A server whose rate limit does not get in the way of long pipelines.
fn server() -> TestServer {
    TestServer::with(|c| {
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
        // Reconnecting in a loop is what these runs do; its budget has its
        // own test (costs.rs).
        c.ws_opens_per_user_per_min = 1_000_000;
    })
}

/// Writes every request, then flushes once: they arrive back to back.
fn pipeline(ws: &mut Ws, reqs: &[Value]) {
    for r in reqs {
        ws.sock.write(Message::text(r.to_string())).unwrap();
    }
    ws.sock.flush().unwrap();
}

/// Events until one of type `kind` with `req_id`, returning it and what came first.
fn until_reply(ws: &mut Ws, req_id: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let ev = ws.recv();
        if ev["req_id"] == req_id {
            return (ev, before);
        }
        before.push(ev);
    }
}

#[test]
fn join_then_msg_pipelined_delivers_the_msg() {
    let s = server();
    let mut owner = s.client("owner");
    let mut a = s.client("joiner");
    for i in 0..40 {
        let room = owner.create_room(&format!("r{i}"));
        pipeline(
            &mut a,
            &[
                json!({"type": "join", "room_id": room, "req_id": "j"}),
                json!({"type": "msg", "room_id": room, "text": format!("m{i}"), "req_id": "m"}),
            ],
        );
        let joined = a.expect("system");
        assert_eq!(
            (joined["event"].as_str(), joined["room"].as_str()),
            (Some("joined"), Some(room.as_str()))
        );
        let msg = a.recv();
        assert_eq!(msg["type"], "message", "iteration {i}: {msg}");
        assert_eq!(msg["text"], format!("m{i}"));
        assert_eq!(msg["room"], room.as_str());
    }
    a.silent();
}

#[test]
fn leave_then_msg_pipelined_is_refused_and_reaches_nobody() {
    let s = server();
    let mut a = s.client("leaver");
    let mut b = s.client("stayer");
    let room = a.create_room("lounge");
    a.join(&room);
    b.join(&room);
    let _ = a.expect("system"); // b joined
    for i in 0..30 {
        pipeline(
            &mut a,
            &[
                json!({"type": "leave", "room_id": room, "req_id": "l"}),
                json!({"type": "msg", "room_id": room, "text": format!("after-leave {i}"), "req_id": "m"}),
            ],
        );
        let ack = a.expect("leave_ack");
        assert_eq!(ack["status"], "LEFT", "{ack}");
        let err = a.recv();
        assert_eq!(
            (
                err["type"].as_str(),
                err["code"].as_str(),
                err["req_id"].as_str()
            ),
            (Some("error"), Some("NOT_A_MEMBER"), Some("m")),
            "iteration {i}: {err}"
        );
        let left = b.expect("system");
        assert_eq!(left["event"], "left", "{left}");
        // Rejoin for the next round; b must not have received the message.
        a.join(&room);
        let joined = b.expect("system");
        assert_eq!(joined["event"], "joined", "b got {joined}");
    }
    b.silent();
    let mut db = s.db();
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM chat_logs WHERE text LIKE 'after-leave%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was stored");
}

#[test]
fn follow_then_online_friends_pipelined_sees_the_follow() {
    let s = server();
    let mut a = s.client("follower");
    let _x = s.client("followee");
    for i in 0..30 {
        pipeline(
            &mut a,
            &[
                json!({"type": "friend_follow", "to": "followee", "req_id": "f"}),
                json!({"type": "get_online_friends", "req_id": "g"}),
            ],
        );
        let (ack, _) = until_reply(&mut a, "f");
        assert_eq!(ack["status"], "FOLLOWED", "iteration {i}: {ack}");
        let (list, _) = until_reply(&mut a, "g");
        assert_eq!(
            list["users"].as_array().map(Vec::len),
            Some(1),
            "iteration {i}: {list}"
        );
        pipeline(
            &mut a,
            &[
                json!({"type": "friend_unfollow", "to": "followee", "req_id": "u"}),
                json!({"type": "presence_friends_subscribe", "req_id": "p"}),
                json!({"type": "presence_friends_unsubscribe", "req_id": "q"}),
            ],
        );
        let (ack, _) = until_reply(&mut a, "u");
        assert_eq!(ack["status"], "UNFOLLOWED", "{ack}");
        let (snap, _) = until_reply(&mut a, "p");
        assert_eq!(snap["users"], json!([]), "iteration {i}: {snap}");
        let _ = until_reply(&mut a, "q");
    }
}

#[test]
fn join_close_reconnect_msg_works_on_the_new_connection() {
    let s = server();
    let mut owner = s.client("host");
    let t = s.user("hopper");
    for i in 0..30 {
        let room = owner.create_room(&format!("hop{i}"));
        let mut first = s.ws(&t);
        first.send(json!({"type": "join", "room_id": room}));
        // Gone at once: the join may still be on its way to the database.
        drop(first);
        let mut second = s.ws(&t);
        second.send(json!({"type": "msg", "room_id": room, "text": "hi", "req_id": "m"}));
        let r = second.recv();
        assert_eq!(r["type"], "message", "iteration {i}: {r}");
        second.close();
    }
}

/// Reads a DM recipient's connection to its end after shutting down its own
/// side (no close handshake that could race with deliveries): every DM
/// written to it is read.
fn drain_dms(mut ws: Ws, got: &mut HashMap<String, usize>) {
    let _ = ws.sock.get_mut().shutdown(Shutdown::Write);
    ws.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    while let Ok(m) = ws.sock.read() {
        if let Message::Text(t) = m {
            let ev: Value = serde_json::from_str(t.as_str()).unwrap();
            if ev["type"] == "dm" || ev["type"] == "offline_dm" {
                *got.entry(ev["text"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
}

#[test]
fn each_dm_reaches_a_reconnecting_recipient_exactly_once() {
    let s = server();
    let mut sender = s.client("dm-sender");
    let rt = s.user("dm-recipient");
    let room = sender.create_room("dms");
    sender.join(&room);
    {
        let mut r = s.ws(&rt);
        r.join(&room);
        let _ = sender.expect("system");
        drain_dms(r, &mut HashMap::new());
    }
    const N: usize = 300;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let rt2 = rt.clone();
    let addr = s.addr;
    let recipient = std::thread::spawn(move || {
        let mut got = HashMap::new();
        // Connect and disconnect over and over while the DMs are sent.
        while done_rx.try_recv().is_err() {
            let ws = Ws::connect(addr, &rt2).unwrap();
            std::thread::sleep(Duration::from_millis(3));
            drain_dms(ws, &mut got);
        }
        got
    });
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for batch in 0..N / 10 {
        let reqs: Vec<Value> = (0..10)
            .map(|k| {
                let i = batch * 10 + k;
                json!({"type": "room_dm", "room_id": room, "to": "dm-recipient",
                       "text": format!("d{i}"), "req_id": format!("d{i}")})
            })
            .collect();
        pipeline(&mut sender, &reqs);
        for _ in 0..10 {
            let ack = sender.expect("dm_ack");
            *statuses
                .entry(ack["status"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done_tx.send(()).unwrap();
    let mut got = recipient.join().unwrap();
    // The last connection: whatever is still queued is flushed to it.
    let last = s.ws(&rt);
    std::thread::sleep(Duration::from_millis(300));
    // Nothing stays queued while the recipient is connected.
    let mut db = s.db();
    let deadline = Instant::now() + WAIT;
    loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM klav_offline_dms", &[])
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} DMs stay queued while the recipient is online"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drain_dms(last, &mut got);
    let total: usize = statuses.values().sum();
    assert_eq!(total, N, "{statuses:?}");
    assert_eq!(
        statuses.get("DELIVERED").copied().unwrap_or(0)
            + statuses.get("QUEUED").copied().unwrap_or(0),
        N,
        "{statuses:?}"
    );
    let mut missing = Vec::new();
    for i in 0..N {
        match got.get(&format!("d{i}")) {
            Some(1) => {}
            Some(n) => panic!("d{i} arrived {n} times"),
            None => missing.push(i),
        }
    }
    assert!(
        missing.is_empty(),
        "never arrived: {missing:?} ({statuses:?})"
    );
}

/// Writes `bytes` from a thread (blocking, as a client that does not look at
/// what comes back until it has sent everything), returning the stream to read.
fn send_in_background(stream: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    })
}

fn read_all(s: &mut TcpStream) -> Result<Vec<u8>, std::io::Error> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn final_http_responses_reach_a_client_still_sending() {
    let s = server();
    // A 1 MiB request head: 431, although the client is still sending it.
    let mut head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 1 << 20));
    head.extend_from_slice(b"\r\n\r\n");
    let mut c = connect(s.addr);
    let w = send_in_background(&c, head);
    let got = read_all(&mut c).expect("the response, then EOF; not a reset");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    let _ = c.shutdown(Shutdown::Both);
    w.join().unwrap();

    // A body over the limit, still arriving: 413.
    let mut req = b"POST /login HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'b', 2 << 20));
    let mut c = connect(s.addr);
    let w = send_in_background(&c, req);
    let got = read_all(&mut c).expect("the response, then EOF; not a reset");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    let _ = c.shutdown(Shutdown::Both);
    w.join().unwrap();

    // Garbage followed by more garbage: 400.
    let mut junk = b"NOT HTTP AT ALL\r\n\r\n".to_vec();
    junk.extend(std::iter::repeat_n(b'z', 512 * 1024));
    let mut c = connect(s.addr);
    let w = send_in_background(&c, junk);
    let got = read_all(&mut c).expect("the response, then EOF; not a reset");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400 "));
    let _ = c.shutdown(Shutdown::Both);
    w.join().unwrap();
}

#[test]
fn oversize_frame_close_reaches_a_client_still_sending() {
    let s = server();
    let t = s.user("big-sender");
    for _ in 0..2 {
        let mut ws = s.ws(&t);
        // One 2 MiB binary frame (masked with a zero key), sent in pieces over
        // about a second: the server decides after 64 KiB and closes; the
        // client goes on sending the rest, and only then reads.
        let len: u64 = 2 << 20;
        let mut head = vec![0x82u8, 0xFF];
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(&[0, 0, 0, 0]);
        let sock = ws.sock.get_mut();
        sock.write_all(&head).unwrap();
        let piece = vec![0u8; 64 * 1024];
        for _ in 0..(len as usize / piece.len()) {
            sock.write_all(&piece)
                .expect("the server keeps reading while it closes");
            std::thread::sleep(Duration::from_millis(25));
        }
        let close = ws.expect_close();
        assert_eq!(
            close.as_ref().map(|c| c.code),
            Some(CloseCode::Size),
            "{close:?}"
        );
    }
}

#[test]
fn a_long_pipelined_http_burst_is_answered_in_full() {
    let s = server();
    const N: usize = 4000;
    let one = b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n";
    let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * N).collect();
    assert!(burst.len() > 88 * 1024);
    let mut c = connect(s.addr);
    let w = send_in_background(&c, burst);
    c.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..N {
        let r = read_response(&mut c).unwrap_or_else(|| panic!("response {i} of {N} never came"));
        assert_eq!(r.status, 404, "response {i}");
    }
    w.join().unwrap();
}

/// With stderr a pipe nobody reads, a flood of log lines (debug level, one per
/// malformed request) must not stop the loop: lines are dropped and counted.
#[test]
fn a_blocked_stderr_never_blocks_the_loop() {
    let url = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-stderr-{}", std::process::id()));
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
    let text = http_to(k.addr, "GET", "/metrics", None).body;
    let dropped: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("klav_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the dropped-lines counter");
    assert!(dropped > 0.0, "lines were dropped, not waited for");
    k.stall_stderr(false);
    drop(ws);
    drop(k);
    let _ = std::fs::remove_dir_all(&dir);
}
