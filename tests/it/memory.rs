//! Budgets for what a client can make klav hold: output it does not read,
//! buffers it once needed, replies larger than the output cap, sockets, unfinished
//! messages, rooms — each attack from one machine with at most a free account.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::harness::*;

fn sample(addr: SocketAddr, name: &str) -> f64 {
    let text = http_to(addr, "GET", "/metrics", None).body;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// The client-buffer gauge once the next budget check has run.
fn buffered(addr: SocketAddr) -> f64 {
    std::thread::sleep(Duration::from_millis(1200));
    sample(addr, "klav_client_buffer_bytes")
}

/// A masked client frame with the given first byte (FIN + opcode).
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Pipelined requests from clients that never read hold at most about the
/// pause threshold each, not everything they asked for.
#[test]
fn unread_pipelined_replies_are_bounded_per_connection() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 10_000.0;
        c.rate_burst = 10_000.0;
    });
    let before = buffered(s.addr);
    // 72 KiB of pipelined GET /metrics on each of 10 connections, never read
    // (each would queue megabytes of responses).
    let req = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let burst: Vec<u8> = req.iter().copied().cycle().take(72 * 1024).collect();
    let mut socks = Vec::new();
    for _ in 0..10 {
        let mut c = connect(s.addr);
        c.write_all(&burst).unwrap();
        socks.push(c);
    }
    // The same over WebSocket: 64 `history` requests of limit 200 in a room of
    // long entries.
    let mut w = s.client("reader");
    let room = w.create_room("long");
    w.join(&room);
    let text: String = "\u{1}".repeat(4000);
    for _ in 0..200 {
        w.send(json!({"type": "msg", "room_id": room, "text": text}));
        w.expect("message");
    }
    let mut hogs = Vec::new();
    for i in 0..5 {
        let mut h = s.client(&format!("hog{i}"));
        h.join(&room);
        for _ in 0..64 {
            h.sock
                .write(Message::text(
                    json!({"type": "history", "room_id": room, "limit": 200}).to_string(),
                ))
                .unwrap();
        }
        h.sock.flush().unwrap();
        hogs.push(h);
    }
    let held = buffered(s.addr) - before;
    // Each holds at most the pause threshold, one reply (a history of 200 long
    // entries is ~4.8 MB) and its kernel-side backlog: far from 64 replies.
    assert!(
        held < 5.0 * 6.0e6 + 10.0 * 300e3,
        "clients that do not read hold {held} bytes"
    );
    // The server is still quick for everyone else.
    assert_eq!(s.http("GET", "/health", None).status, 200);
    drop(socks);
    drop(hogs);
}

/// One maximal request, then silence: the buffer it needed is given back.
#[test]
fn idle_connections_give_back_their_buffers() {
    let s = TestServer::start();
    let before = buffered(s.addr);
    let body = format!("{{\"username\":\"{}\"}}", "x".repeat(60 * 1024));
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut c = connect(s.addr);
        write!(
            c,
            "POST /register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let r = read_response(&mut c).expect("answered");
        assert!(r.status >= 400, "{}", r.status);
        socks.push(c);
    }
    let held = buffered(s.addr) - before;
    assert!(
        held < 20.0 * 8192.0,
        "20 idle keep-alive connections hold {held} bytes"
    );
}

/// 100 offline DMs of 4,000 control characters (24 KB each once escaped, 2.4 MB
/// together: over the 1 MiB output cap) reach their recipient in pieces; the
/// recipient is not kicked, and the queue is emptied.
#[test]
fn a_large_offline_queue_is_delivered_in_pieces() {
    // Long frames cost more of the request budget: raised so the sender is quick.
    let s = TestServer::with(|c| {
        c.rate_per_sec = 10_000.0;
        c.rate_burst = 10_000.0;
    });
    // A full queue: five senders, each with their whole share (20) of it.
    let mut senders: Vec<Ws> = (0..5)
        .map(|k| s.client(&format!("dm-big-sender{k}")))
        .collect();
    let bt = s.user("dm-big-recipient");
    let room = senders[0].create_room("big");
    for k in 0..senders.len() {
        senders[k].join(&room);
        for earlier in senders.iter_mut().take(k) {
            earlier.expect("system");
        }
    }
    {
        let mut b = s.ws(&bt);
        b.join(&room);
        for a in senders.iter_mut() {
            a.expect("system");
        }
        b.close();
    }
    std::thread::sleep(Duration::from_millis(200));
    let text: String = "\u{1}".repeat(3990);
    for i in 0..100 {
        let a = &mut senders[i / 20];
        a.send(
            json!({"type": "room_dm", "room_id": room, "to": "dm-big-recipient",
                      "text": format!("{i}{text}")}),
        );
        let ack = a.expect("dm_ack");
        assert_eq!(ack["status"], "QUEUED", "{ack}");
    }
    for attempt in 0..2 {
        let mut b = s.ws(&bt);
        let mut got = 0;
        while got < 100 {
            let ev = b.recv();
            assert_eq!(ev["type"], "offline_dm", "attempt {attempt}: {ev}");
            assert!(
                ev["text"].as_str().unwrap().starts_with(&got.to_string()),
                "in order"
            );
            got += 1;
        }
        if attempt == 0 {
            // Everything was read; once written, nothing stays queued.
            let mut db = s.db();
            let deadline = Instant::now() + WAIT;
            loop {
                let n: i64 = db
                    .query_one("SELECT count(*) FROM klav_offline_dms", &[])
                    .unwrap()
                    .get(0);
                if n == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{n} left in the queue");
                std::thread::sleep(Duration::from_millis(50));
            }
            b.silent();
            b.close();
            // The second connection gets nothing again.
            let mut again = s.ws(&bt);
            again.silent();
            break;
        }
    }
    // A history of such entries is a large reply too: answered, not kicked.
    let mut b = s.ws(&bt);
    let r = b.request(json!({"type": "history", "room_id": room, "limit": 50}));
    assert_eq!(r["type"], "history", "{r}");
    assert_eq!(r["items"].as_array().map(Vec::len), Some(50));
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
    assert!(sample(s.addr, "klav_upgrades_refused_total") >= 2.0);
}

/// A fragmented message started and kept open with pings is closed once the
/// HTTP timeout passes: pings do not make an unfinished message last.
#[test]
fn an_unfinished_fragmented_message_has_a_deadline() {
    let s = TestServer::with(|c| {
        c.http_timeout = Duration::from_secs(1);
        c.ws_ping_interval = Duration::from_secs(30);
    });
    let t = s.user("fragmenter");
    let (mut sock, status) = upgrade_status(s.addr, &t, "");
    assert_eq!(status, 101);
    // A text frame without FIN: the message is not complete.
    sock.write_all(&masked_frame(0x01, &[b'a'; 60 * 1024]))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let closed = loop {
        assert!(Instant::now() < deadline, "never closed");
        let _ = sock.write_all(&masked_frame(0x89, b"still here"));
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reset instead of a close: {e}"),
        }
    };
    assert!(closed);
    // The last frame is a close 1008 (pongs came before it).
    let pos = got
        .windows(2)
        .rposition(|w| w[0] == 0x88)
        .expect("a close frame");
    let code = u16::from_be_bytes([got[pos + 2], got[pos + 3]]);
    assert_eq!(code, u16::from(CloseCode::Policy));
    assert!(String::from_utf8_lossy(&got[pos + 4..]).contains("not completed"));
}

/// When all clients together hold more than the budget, the largest holders are
/// closed first; the others are left alone.
#[test]
fn the_global_buffer_budget_closes_the_largest_holders() {
    let s = TestServer::with(|c| c.max_client_buffer_bytes = 512 * 1024);
    let partial = |body: usize| {
        let mut c = connect(s.addr);
        write!(
            c,
            "POST /login HTTP/1.1\r\nHost: t\r\nContent-Length: 65000\r\n\r\n"
        )
        .unwrap();
        c.write_all(&vec![b' '; body]).unwrap();
        c
    };
    // Four small partial requests (about 16 KiB held each) ...
    let small: Vec<TcpStream> = (0..4).map(|_| partial(10 * 1024)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // ... and eight large ones (about 64 KiB or more each): together over 512 KiB.
    let mut big: Vec<TcpStream> = (0..8).map(|_| partial(60 * 1024)).collect();
    let deadline = Instant::now() + WAIT;
    while sample(s.addr, "klav_buffer_budget_closes_total") < 1.0 {
        assert!(Instant::now() < deadline, "nobody was closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(buffered(s.addr) <= 512.0 * 1024.0, "back under the budget");
    // Some of the large ones were closed ...
    let mut closed = 0;
    for c in &mut big {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        if matches!(c.read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no large holder was closed");
    // ... the small ones were left alone: they finish and are answered.
    for mut c in small {
        c.write_all(&vec![b' '; 65000 - 10 * 1024]).unwrap();
        let r = read_response(&mut c).expect("the small holders were left alone");
        assert!(r.status >= 400 && r.status < 500, "{}", r.status);
    }
}

/// The budget holds where bytes are read, not a second later: partial
/// requests with 64 KiB bodies, three times the budget together, sent at once,
/// grow klav by little more than the budget (the largest holders are closed as
/// the budget runs out); a client asking something meanwhile is answered.
#[test]
fn the_global_buffer_budget_holds_while_partial_bodies_arrive() {
    budget_holds_while(Partial::HttpBody);
}

/// The same with WebSocket messages under way: frames of 64 KiB, 60 KiB of
/// each sent.
#[test]
fn the_global_buffer_budget_holds_while_partial_messages_arrive() {
    budget_holds_while(Partial::WsMessage);
}

#[derive(Clone, Copy, Debug)]
enum Partial {
    HttpBody,
    WsMessage,
}

fn budget_holds_while(partial: Partial) {
    const BUDGET: usize = 16 << 20;
    const SENT: usize = 60 * 1024;
    let url = pg().fresh_db();
    let dir =
        std::env::temp_dir().join(format!("klav-it-budget-{partial:?}-{}", std::process::id()));
    let klav = spawn_klav(
        &dir,
        &[
            ("DATABASE_URL", &url),
            ("KLAV_CLUSTER", "off"),
            ("KLAV_MAX_CLIENT_BUFFER_BYTES", &BUDGET.to_string()),
            ("KLAV_WS_OPENS_PER_USER_PER_MIN", "1000000"),
            ("KLAV_MAX_CONNS_PER_ADDR", "100000"),
            ("KLAV_MAX_CONNS_PER_USER", "100000"),
        ],
    );
    let pid = klav.pid();
    // The normal client, and everything it uses, warmed up.
    let token = user_at(klav.addr, "norma");
    let mut ws = Ws::connect(klav.addr, &token).unwrap();
    let room = ws.create_room("still served");
    ws.join(&room);
    ws.request(json!({"type": "msg", "room_id": room, "text": "warm"}));

    // Three times the budget, on connections opened first.
    let n = 3 * BUDGET / SENT;
    let (head, mut held): (Vec<u8>, Vec<TcpStream>) = match partial {
        Partial::HttpBody => (
            b"POST /login HTTP/1.1\r\nHost: t\r\nContent-Length: 65536\r\n\r\n".to_vec(),
            (0..n).map(|_| connect(klav.addr)).collect(),
        ),
        Partial::WsMessage => {
            // A masked text frame of 65,000 bytes (within the message limit).
            let mut head = vec![0x81, 0x80 | 126];
            head.extend_from_slice(&65_000u16.to_be_bytes());
            head.extend_from_slice(&[0, 0, 0, 0]);
            let conns = (0..n)
                .map(|_| Ws::connect(klav.addr, &token).unwrap().sock.into_inner())
                .collect();
            (head, conns)
        }
    };
    let before = rss_kb(pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kb(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let body = vec![b' '; SENT];
    for c in &mut held {
        // Refused ones may be closed while they still send.
        let _ = c.write_all(&head).and_then(|_| c.write_all(&body));
    }
    // Served meanwhile: a message on the WebSocket, a request on a new
    // connection.
    let echo = ws.request(json!({"type": "msg", "room_id": room, "text": "meanwhile"}));
    assert_eq!(echo["text"], "meanwhile", "{echo}");
    let r = http_to(klav.addr, "GET", "/health", None);
    assert_eq!(r.status, 200, "{}", r.body);
    // Past the once-a-second check, with everything sent read by now.
    std::thread::sleep(Duration::from_millis(1500));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let grown = peak.saturating_sub(before);
    let closes = metric(klav.addr, "klav_buffer_budget_closes_total");
    eprintln!("{n} partial {partial:?}s: grew {grown} KiB at the peak; {closes} closed");
    assert!(closes > 0, "nobody was closed");
    assert!(
        grown < (BUDGET / 1024 + 6 * 1024) as u64,
        "{n} partial {partial:?}s of {SENT} bytes grew klav by {grown} KiB at the peak \
         (budget {} KiB)",
        BUDGET / 1024
    );
    drop(held);
}

#[test]
fn rooms_created_and_joined_are_budgeted() {
    let s = TestServer::with(|c| {
        c.rooms_created_per_hour = 3;
        c.max_rooms_per_user = 2;
    });
    let mut a = s.client("roomer");
    let r1 = a.create_room("one");
    let _r2 = a.create_room("two");
    a.join(&r1);
    // A join by name may create a room: it counts.
    a.send(json!({"type": "join", "room": "three", "req_id": "j3"}));
    let ev = a.expect("system");
    assert_eq!(ev["event"], "joined");
    let refused = a.request(json!({"type": "create_room", "name": "four"}));
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("RATE_LIMITED")),
        "{refused}"
    );
    // Another connection of the same user shares the budget.
    let t = s.token("roomer");
    let mut b = s.ws(&t);
    let refused = b.request(json!({"type": "create_room", "name": "five"}));
    assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
    // Member of two rooms: a third join is refused, leaving one makes room.
    let mut owner = s.client("owner");
    let r3 = owner.create_room("three-by-id");
    let r = a.request(json!({"type": "join", "room_id": r3}));
    assert_eq!(r["code"], "TOO_MANY_ROOMS", "{r}");
    let left = a.request(json!({"type": "leave", "room_id": r1}));
    assert_eq!(left["status"], "LEFT");
    a.send(json!({"type": "join", "room_id": r3}));
    let ev: Value = a.expect("system");
    assert_eq!(
        (ev["event"].as_str(), ev["room"].as_str()),
        (Some("joined"), Some(r3.as_str()))
    );
    let mut db = s.db();
    let rooms: i64 = db
        .query_one("SELECT count(*) FROM rooms", &[])
        .unwrap()
        .get(0);
    assert_eq!(rooms, 4, "three of roomer's, one of owner's");
}

/// `/metrics` (an amplifier: one small request, a page of text) can be served on
/// a listener of its own, e.g. loopback only; the public port then has none.
#[test]
fn metrics_can_live_on_their_own_listener() {
    let s = TestServer::with(|c| {
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        c.metrics_per_addr_per_sec = 1;
    });
    let m = s.metrics_addr().expect("a metrics listener");
    assert_ne!(m, s.addr);
    assert_eq!(s.http("GET", "/metrics", None).status, 404);
    assert_eq!(s.http("GET", "/health", None).status, 200);
    let r = http_to(m, "GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("klav_open_connections"));
    assert_eq!(http_to(m, "GET", "/health", None).status, 404);
    assert_eq!(http_to(m, "POST", "/login", Some("{}")).status, 404);
    // The public port's per-address budget (a burst of 10) does not apply here.
    for _ in 0..30 {
        assert_eq!(http_to(m, "GET", "/metrics", None).status, 200);
    }
}
