//! What a client can make klav hold in memory: replies it never reads, buffers
//! it once needed, output to a member that stopped reading, all clients'
//! buffers together, and the history cache.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::*;

/// The client-buffer gauge once the next budget check has run.
fn buffered(addr: SocketAddr) -> f64 {
    std::thread::sleep(Duration::from_millis(1200));
    metric(addr, "klav_client_buffer_bytes") as f64
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
        h.pipeline((0..64).map(|_| json!({"type": "history", "room_id": room, "limit": 200})));
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
        let headers = [("Content-Type", "application/json")];
        let r = exchange(&mut c, &http_request("POST", "/register", &headers, &body));
        assert!(r.status >= 400, "{}", r.status);
        socks.push(c);
    }
    let held = buffered(s.addr) - before;
    assert!(
        held < 20.0 * 8192.0,
        "20 idle keep-alive connections hold {held} bytes"
    );
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
    wait_metric(s.addr, "klav_buffer_budget_closes_total", |v| v >= 1);
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

/// A member that never reads is cut off once its pending output passes the cap:
/// when it finally reads it finds the frames that were already on the wire, in
/// order and whole, then a 1008 close; the other members miss nothing.
#[test]
fn slow_consumer_is_disconnected() {
    let s = TestServer::with(|c| {
        c.max_output_bytes = 64 * 1024;
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
    });
    let mut sender = s.client("sender");
    let mut reader = s.client("reader");
    let slow_token = s.user("slow");
    let mut slow = Ws::connect_stream(connect(s.addr), &format!("/ws?token={slow_token}"), &[])
        .unwrap_or_else(|e| panic!("{e:?}"));
    let room = sender.create_room("firehose");
    join_in_turn(&room, &mut [&mut sender, &mut reader, &mut slow]);
    assert_eq!(metric(s.addr, "klav_websocket_connections"), 3);

    // The slow member stops reading; the room keeps talking.
    // Near the 4000-character limit, 3 bytes each: few messages fill the buffers.
    let pad = "한".repeat(3990);
    let mut sent: Vec<String> = Vec::new();
    let mut cut_off = false;
    for i in 0..3000 {
        let text = format!("{i:05} {pad}");
        sender.send(json!({"type": "msg", "room_id": room, "text": text}));
        assert_eq!(sender.expect("message")["text"], text);
        assert_eq!(reader.expect("message")["text"], text);
        sent.push(text);
        // Its socket stops counting as a WebSocket as soon as it is cut off.
        if i % 10 == 9 && metric(s.addr, "klav_websocket_connections") == 2 {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a member that never reads was never disconnected");

    // It reads at last (promptly: the server lingers 2 s for the close frame).
    let (events, close) = slow.events_until_close();
    assert_eq!(close_code(&close), Some(CloseCode::Policy), "{close:?}");
    let got: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(got.len() < sent.len(), "it cannot have received everything");
    assert_eq!(
        got,
        sent[..got.len()],
        "what it got is the start of the stream, whole and in order"
    );
    wait_metric(s.addr, &disconnects("slow_consumer"), |v| v == 1);

    // The others keep receiving every message.
    for i in 0..5 {
        let text = format!("after {i}");
        sender.send(json!({"type": "msg", "room_id": room, "text": text}));
        assert_eq!(sender.expect("message")["text"], text);
        assert_eq!(reader.expect("message")["text"], text);
    }
    assert_eq!(metric(s.addr, &disconnects("slow_consumer")), 1);
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
        fill_room(&mut db, &room, "other", 200, &text);
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
