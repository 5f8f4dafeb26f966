//! Hardening: the attacks and faults a public chat server meets, reproduced against
//! the real server (in process, or the `klav` binary where the process itself is
//! under test), each with its expected outcome.
//!
//! Timeouts and intervals are configured small so the tests are quick; assertions
//! are about behaviour (closed or not, codes, counts), with generous deadlines,
//! never about speed.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use klav::db::embedded::{Cluster, ClusterOptions};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

use crate::harness::*;

// ---------------------------------------------------------------------------------
// Helpers

/// `GET /metrics` (a fresh connection each time).
fn metrics_text(addr: SocketAddr) -> String {
    let r = http_to(addr, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The value of one sample (`name` or `name{labels}`, spelled exactly).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = metrics_text(addr);
    sample(&text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// Polls a metric until `ok` holds (within [`WAIT`]); returns its value.
fn wait_metric(addr: SocketAddr, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(addr, name);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn disconnects(reason: &str) -> String {
    format!("klav_disconnects_total{{reason=\"{reason}\"}}")
}

/// Raises this process's soft descriptor limit to at least `n` (if allowed).
fn ensure_fd_limit(n: libc::rlim_t) {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn login_from(src: [u8; 4], addr: SocketAddr, user: &str, password: &str) -> Response {
    let mut s = connect_from(src, addr);
    let body = json!({"username": user, "password": password}).to_string();
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s).expect("a response")
}

/// A WebSocket upgraded by hand: the test writes every byte itself.
fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = connect(addr);
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut s).expect("an upgrade response");
    assert_eq!(r.status, 101, "{}", r.body);
    s
}

/// A client frame: masked, with the given first byte (FIN + opcode).
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
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
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What a raw socket yielded.
#[derive(Debug)]
enum Raw {
    /// A complete server frame: opcode and payload.
    Frame(u8, Vec<u8>),
    Eof,
    Nothing,
}

/// The next server frame on a raw socket (`buf` keeps partial input between calls).
fn raw_next(s: &mut TcpStream, buf: &mut Vec<u8>, wait: Duration) -> Raw {
    let deadline = Instant::now() + wait;
    loop {
        if buf.len() >= 2 {
            let (len7, mut at) = ((buf[1] & 0x7f) as usize, 2);
            let masked = buf[1] & 0x80 != 0;
            let len = match len7 {
                126 if buf.len() >= 4 => {
                    at = 4;
                    Some(u16::from_be_bytes([buf[2], buf[3]]) as usize)
                }
                127 if buf.len() >= 10 => {
                    at = 10;
                    Some(u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize)
                }
                126 | 127 => None,
                n => Some(n),
            };
            assert!(!masked, "server frames are not masked");
            if let Some(len) = len {
                if buf.len() >= at + len {
                    let op = buf[0] & 0x0f;
                    let payload = buf[at..at + len].to_vec();
                    buf.drain(..at + len);
                    return Raw::Frame(op, payload);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Raw::Nothing;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk) {
            Ok(0) => return Raw::Eof,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Raw::Eof,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("raw read: {e}"),
        }
    }
}

/// Reads a raw socket to its end (within `wait`): the opcodes seen, the close
/// code if a close frame came, and whether the server closed the socket.
fn raw_drain(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, Option<u16>, bool) {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let (mut ops, mut code) = (Vec::new(), None);
    loop {
        match raw_next(
            s,
            &mut buf,
            deadline.saturating_duration_since(Instant::now()),
        ) {
            Raw::Frame(op, p) => {
                if op == 8 && p.len() >= 2 {
                    code = Some(u16::from_be_bytes([p[0], p[1]]));
                }
                ops.push(op);
            }
            Raw::Eof => return (ops, code, true),
            Raw::Nothing => return (ops, code, false),
        }
    }
}

/// Reads WebSocket messages until the server's close frame; returns the text
/// events that came first and the close frame. Any other end is a failure.
fn events_until_close(ws: &mut Ws) -> (Vec<Value>, Option<tungstenite::protocol::CloseFrame>) {
    ws.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    let mut events = Vec::new();
    loop {
        match ws.sock.read() {
            Ok(Message::Text(t)) => events.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(c)) => return (events, c),
            Ok(_) => {}
            Err(e) => panic!(
                "expected a close frame after {} events, got: {e}",
                events.len()
            ),
        }
    }
}

fn close_code(c: &Option<tungstenite::protocol::CloseFrame>) -> Option<CloseCode> {
    c.as_ref().map(|f| f.code)
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------
// 1. Slowloris

/// Partial requests, trickled headers, silent and idle keep-alive connections
/// are all closed once the (configured) HTTP timeout passes.
#[test]
fn slowloris_partial_http_requests_time_out() {
    let s = TestServer::with(|c| c.http_timeout = Duration::from_secs(1));
    let before = metric(s.addr, &disconnects("timeout"));

    let mut partial_head = connect(s.addr);
    partial_head
        .write_all(b"POST /login HTTP/1.1\r\nHost: test\r\nContent-Le")
        .unwrap();
    let mut partial_body = connect(s.addr);
    partial_body
        .write_all(b"POST /login HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"user")
        .unwrap();
    let mut silent = connect(s.addr);
    let mut idle = connect(s.addr);
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).expect("served").status, 200);
    let mut trickle = connect(s.addr);
    trickle.write_all(b"GET /health HTTP/1.1\r\n").unwrap();

    // Not cut off before its time.
    assert!(!closed_within(&mut silent, Duration::from_millis(300)));

    // One header byte every 200 ms does not keep a request alive.
    let deadline = Instant::now() + WAIT;
    let mut trickle_closed = false;
    while Instant::now() < deadline {
        if trickle.write_all(b"X").is_err()
            || closed_within(&mut trickle, Duration::from_millis(200))
        {
            trickle_closed = true;
            break;
        }
    }
    assert!(
        trickle_closed,
        "a trickled request head was never timed out"
    );
    for (what, sock) in [
        ("partial head", &mut partial_head),
        ("partial body", &mut partial_body),
        ("silent connection", &mut silent),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(closed_within(sock, WAIT), "{what} was not closed");
    }
    let after = metric(s.addr, &disconnects("timeout"));
    assert_eq!(
        after - before,
        5.0,
        "each of the five was closed by the timeout"
    );
}

/// An upgraded client that sends half a frame and stalls gets a ping, then (no
/// complete frame arriving) a 1001 close, while a client that answers pings stays.
#[test]
fn slowloris_half_websocket_frame_is_dropped() {
    let s = TestServer::with(|c| c.ws_ping_interval = Duration::from_secs(1));
    let t = s.user("staller");
    let mut raw = raw_upgrade(s.addr, &t);
    let frame = masked_frame(0x81, &[b'x'; 100]);
    raw.write_all(&frame[..2 + 4 + 10]).unwrap();
    let mut live = s.client("live");

    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut buf, mut ops, mut code, mut eof) = (Vec::new(), Vec::new(), None, false);
    while !eof {
        assert!(
            Instant::now() < deadline,
            "the stalled connection was not dropped: {ops:?}"
        );
        // The live client reads (and so answers pings) throughout.
        if let Some(ev) = live.try_recv(Duration::from_millis(50)) {
            panic!("unexpected event {ev}");
        }
        match raw_next(&mut raw, &mut buf, Duration::from_millis(50)) {
            Raw::Frame(op, p) => {
                if op == 8 {
                    code = Some(u16::from_be_bytes([p[0], p[1]]));
                }
                ops.push(op);
            }
            Raw::Eof => eof = true,
            Raw::Nothing => {}
        }
    }
    assert_eq!(
        ops.first(),
        Some(&0x9),
        "pinged before being dropped: {ops:?}"
    );
    assert_eq!(ops.last(), Some(&0x8), "a close frame last: {ops:?}");
    assert_eq!(code, Some(1001));
    let r = live.request(json!({"type": "get_online_friends"}));
    assert_eq!(
        r["type"], "online_friends",
        "the live client is still served: {r}"
    );
}

/// A thousand connections holding partial request heads do not keep a normal
/// client from registering, logging in and chatting.
#[test]
fn slowloris_thousand_stalled_connections() {
    ensure_fd_limit(10_000);
    let s = TestServer::with(|c| c.http_timeout = Duration::from_secs(120));
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
                .unwrap();
            c
        })
        .collect();
    // They are all open at the server (plus the metrics request itself).
    wait_metric(s.addr, "klav_open_connections", |v| v >= 1001.0);

    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let room = alice.create_room("through the crowd");
    alice.join(&room);
    bob.join(&room);
    assert_eq!(alice.expect("system")["user"], "bob");
    alice.send(json!({"type": "msg", "room_id": room, "text": "still here"}));
    assert_eq!(alice.expect("message")["text"], "still here");
    assert_eq!(bob.expect("message")["text"], "still here");

    // And the stalled ones really were there all along: none was dropped.
    for c in &mut stalled {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 16];
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a stalled connection was answered or closed: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// 2. Slow consumer

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
    sender.join(&room);
    reader.join(&room);
    sender.expect("system");
    slow.join(&room);
    sender.expect("system");
    reader.expect("system");
    assert_eq!(metric(s.addr, "klav_websocket_connections"), 3.0);

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
        if i % 10 == 9 && metric(s.addr, "klav_websocket_connections") == 2.0 {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a member that never reads was never disconnected");

    // It reads at last (promptly: the server lingers 2 s for the close frame).
    let (events, close) = events_until_close(&mut slow);
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
    wait_metric(s.addr, &disconnects("slow_consumer"), |v| v == 1.0);

    // The others keep receiving every message.
    for i in 0..5 {
        let text = format!("after {i}");
        sender.send(json!({"type": "msg", "room_id": room, "text": text}));
        assert_eq!(sender.expect("message")["text"], text);
        assert_eq!(reader.expect("message")["text"], text);
    }
    assert_eq!(metric(s.addr, &disconnects("slow_consumer")), 1.0);
}

// ---------------------------------------------------------------------------------
// 3. Dead peer

/// A peer that goes silent after the upgrade (no reads, no writes, no pongs) is
/// dropped after about two ping intervals, and its followers see it go offline.
#[test]
fn dead_peer_is_dropped_and_goes_offline() {
    let s = TestServer::with(|c| c.ws_ping_interval = Duration::from_secs(1));
    let ghost = s.user("ghost");
    let mut watcher = s.client("watcher");
    let ack = watcher.request(json!({"type": "friend_follow", "to": "ghost"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
    let snap = watcher.request(json!({"type": "presence_friends_subscribe"}));
    assert_eq!(snap["users"], json!([]));

    let mut raw = raw_upgrade(s.addr, &ghost);
    let on = watcher.expect("presence_change");
    assert_eq!(
        (on["user"].as_str(), on["status"].as_str()),
        (Some("ghost"), Some("online"))
    );

    // The ghost never reads nor writes again; the watcher reads (answering pings).
    let deadline = Instant::now() + Duration::from_secs(15);
    let off = loop {
        match watcher.try_recv(Duration::from_millis(200)) {
            Some(ev) => break ev,
            None => assert!(Instant::now() < deadline, "the dead peer was never dropped"),
        }
    };
    assert_eq!(off["type"], "presence_change", "{off}");
    assert_eq!(
        (off["user"].as_str(), off["status"].as_str()),
        (Some("ghost"), Some("offline"))
    );

    // What the server sent it: a ping, then a 1001 close; then the socket closed.
    let (ops, code, eof) = raw_drain(&mut raw, WAIT);
    assert_eq!(ops, [0x9, 0x8], "a ping, then a close");
    assert_eq!(code, Some(1001));
    assert!(eof, "the socket was closed");
    assert_eq!(metric(s.addr, &disconnects("timeout")), 1.0);
    let r = watcher.request(json!({"type": "get_online_friends"}));
    assert_eq!(r["users"], json!([]), "the watcher is still connected: {r}");
}

// ---------------------------------------------------------------------------------
// 4. Floods

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
    wait_metric(s.addr, &disconnects("flood"), |v| v == 1.0);
    assert!(metric(s.addr, "klav_rate_limited_total") >= 9.0);
}

/// Failed logins are throttled per (username, client address) — past the free
/// failures each one doubles a wait — and per client address for any username,
/// with 429 + `Retry-After`; the owner elsewhere is not locked out, and a success
/// clears the pair's failures.
#[test]
fn failed_logins_are_throttled() {
    let s = TestServer::with(|c| {
        c.login_max_failures = 2;
        c.login_max_failures_per_addr = 5;
    });
    for u in ["victim", "bystander", "clearme", "guessed"] {
        assert_eq!(s.register(u, PASSWORD).status, 200);
    }
    let throttled = |r: &Response, what: &str| {
        assert_eq!(r.status, 429, "{what}: {}", r.body);
        let secs: u64 = r
            .header("Retry-After")
            .unwrap_or_else(|| panic!("{what}: no Retry-After"))
            .parse()
            .unwrap();
        assert!((1..=300).contains(&secs), "{what}: Retry-After {secs}");
    };

    // Per (username, address): two free failures, a third, then even the right
    // password waits there...
    for _ in 0..3 {
        assert_eq!(
            login_from([127, 0, 0, 2], s.addr, "victim", "wrong").status,
            401
        );
    }
    throttled(
        &login_from([127, 0, 0, 2], s.addr, "victim", PASSWORD),
        "same address",
    );
    // ...but not from the owner's own address.
    assert_eq!(
        login_from([127, 0, 0, 3], s.addr, "victim", PASSWORD).status,
        200
    );
    // That address is not throttled for other users.
    assert_eq!(
        login_from([127, 0, 0, 2], s.addr, "bystander", PASSWORD).status,
        200
    );

    // Per address: five failures over five usernames, then any username waits there.
    for i in 0..5 {
        assert_eq!(
            login_from([127, 0, 0, 4], s.addr, &format!("nobody{i}"), "x").status,
            401
        );
    }
    throttled(
        &login_from([127, 0, 0, 4], s.addr, "bystander", PASSWORD),
        "guessing address",
    );
    assert_eq!(
        login_from([127, 0, 0, 5], s.addr, "bystander", PASSWORD).status,
        200
    );

    // A success clears the pair's count: 2 failures, success, 2 failures, success.
    for _ in 0..2 {
        for _ in 0..2 {
            assert_eq!(
                login_from([127, 0, 0, 6], s.addr, "clearme", "wrong").status,
                401
            );
        }
        assert_eq!(
            login_from([127, 0, 0, 6], s.addr, "clearme", PASSWORD).status,
            200
        );
    }
    // Without a success in between, the same count throttles.
    for _ in 0..3 {
        assert_eq!(
            login_from([127, 0, 0, 7], s.addr, "guessed", "wrong").status,
            401
        );
    }
    throttled(
        &login_from([127, 0, 0, 7], s.addr, "guessed", PASSWORD),
        "no success between",
    );
}

// ---------------------------------------------------------------------------------
// 5. Limits

fn fragment(data: &[u8], first: bool, last: bool) -> Message {
    let op = if first {
        OpData::Text
    } else {
        OpData::Continue
    };
    Message::Frame(Frame::message(data.to_vec(), OpCode::Data(op), last))
}

/// A message sent in fragments (with a ping between them, and a fragment boundary
/// inside a UTF-8 character) is reassembled and answered.
#[test]
fn fragmented_messages_are_reassembled() {
    let s = TestServer::start();
    let mut ws = s.client("frag");
    let req = json!({"type": "create_room", "name": "fragmented", "req_id": "f1"}).to_string();
    let b = req.as_bytes();
    ws.send_raw(fragment(&b[..10], true, false));
    ws.send_raw(Message::Ping(b"between".to_vec().into()));
    ws.send_raw(fragment(&b[10..25], false, false));
    ws.send_raw(fragment(&b[25..], false, true));
    let ack = ws.expect("create_room_ack");
    assert_eq!(
        (ack["req_id"].as_str(), ack["status"].as_str()),
        (Some("f1"), Some("CREATED"))
    );
    let room = ack["room_id"].as_str().unwrap().to_string();
    ws.join(&room);

    let text = "안녕하세요, 조각난 메시지";
    let req = json!({"type": "msg", "room_id": room, "text": text}).to_string();
    let b = req.as_bytes();
    let cut = req.find('안').unwrap() + 1; // inside the first character
    ws.send_raw(fragment(&b[..cut], true, false));
    ws.send_raw(fragment(&b[cut..cut + 7], false, false));
    ws.send_raw(fragment(&b[cut + 7..], false, true));
    assert_eq!(ws.expect("message")["text"], text);
}

/// Fragments that add up to more than 64 KiB close the connection with 1009,
/// as does one oversized frame.
#[test]
fn oversized_messages_close_1009() {
    let s = TestServer::start();
    let t = s.user("big");
    let mut ws = s.ws(&t);
    let chunk = vec![b'a'; 30_000];
    ws.send_raw(fragment(b"{\"type\":\"msg\",\"text\":\"", true, false));
    ws.send_raw(fragment(&chunk, false, false));
    ws.send_raw(fragment(&chunk, false, false));
    let _ = ws.sock.write(fragment(&chunk, false, true));
    let _ = ws.sock.flush();
    assert_eq!(close_code(&ws.expect_close()), Some(CloseCode::Size));

    let mut ws = s.ws(&t);
    let big = format!("{{\"type\":\"msg\",\"text\":\"{}\"}}", "b".repeat(70_000));
    let _ = ws.sock.send(Message::text(big));
    assert_eq!(close_code(&ws.expect_close()), Some(CloseCode::Size));
    // Just under the limit is fine (an ordinary error: not a member).
    let mut ws = s.ws(&t);
    let fits = format!(
        "{{\"type\":\"msg\",\"room_id\":\"r\",\"text\":\"{}\"}}",
        "c".repeat(60_000)
    );
    ws.send_raw(Message::text(fits));
    assert_eq!(ws.expect("error")["code"], "NOT_A_MEMBER");
}

/// A text frame that is not UTF-8 closes the connection with 1007.
#[test]
fn invalid_utf8_text_closes_1007() {
    let s = TestServer::start();
    let mut ws = s.client("bytes");
    let payload = b"{\"type\":\"msg\",\"text\":\"\xff\xfe\xc3\x28\"}";
    ws.sock
        .get_mut()
        .write_all(&masked_frame(0x81, payload))
        .unwrap();
    assert_eq!(close_code(&ws.expect_close()), Some(CloseCode::Invalid));
    // In a binary frame the same bytes are just a bad request.
    let mut ws = s.client("bytes2");
    ws.sock
        .get_mut()
        .write_all(&masked_frame(0x82, payload))
        .unwrap();
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
}

/// The connection beyond `KLAV_MAX_CONNECTIONS` gets 503; once one goes, service
/// resumes.
#[test]
fn connection_cap_answers_503() {
    let s = TestServer::with(|c| c.max_connections = 3);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(s.addr)).collect();
    let mut extra = connect(s.addr);
    let r = read_response(&mut extra).expect("a response to the extra connection");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.detail(), "too many connections");
    assert!(closed_within(&mut extra, WAIT));
    // The held ones are served normally.
    write!(held[0], "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut held[0]).unwrap().status, 200);

    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let r = s.http("GET", "/health", None);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            Instant::now() < deadline,
            "service did not resume below the cap"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// One HTTP exchange that may fail (refused, reset, closed without an answer).
fn try_http(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Out of file descriptors: the binary under `ulimit -n 64` with more connections
/// than it can accept does not spin on the listener, and serves again once they go.
#[test]
fn fd_exhaustion_does_not_spin() {
    let url = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-fd-{}", std::process::id()));
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("KLAV_DB_WORKERS", "1"),
        ("KLAV_HASH_WORKERS", "1"),
        ("KLAV_HTTP_TIMEOUT_SECS", "120"),
    ];
    let mut k = spawn_klav_with(&dir, &env, Some(64));
    // A pooled database connection exists before descriptors run out.
    let token = user_at(k.addr, "fd");

    let conns: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(k.addr).unwrap())
        .collect();
    let deadline = Instant::now() + WAIT;
    while !k.stderr().contains("accept failed") {
        assert!(
            Instant::now() < deadline,
            "never ran out of descriptors:\n{}",
            k.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let clk = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let t0 = cpu_ticks(k.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(k.pid()) - t0;
    assert!(
        used * 4 < clk * 2,
        "spent {used} ticks ({clk}/s) in 2 s while out of descriptors"
    );
    assert!(k.child.try_wait().unwrap().is_none(), "still running");

    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_http(k.addr, "GET", "/health") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "never served again:\n{}",
            k.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ws = Ws::connect(k.addr, &token).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    ws.close();
    assert!(k.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// 6. Cross-site WebSocket hijacking; secrets in logs

/// With allowed origins configured, a browser page from another origin cannot
/// open a WebSocket with the user's token; the allowed origin and non-browser
/// clients (no Origin) can.
#[test]
fn cross_site_websocket_hijacking_is_refused() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://chat.example".into()]);
    let t = s.user("victim");
    let path = format!("/ws?token={t}");
    for origin in [
        "https://evil.example",
        "https://chat.example.evil.example",
        "http://chat.example",
        "null",
    ] {
        let (status, body) = Ws::connect_with(s.addr, &path, &[("Origin", origin)])
            .err()
            .unwrap_or_else(|| panic!("{origin}: upgraded"));
        assert_eq!(status, 403, "{origin}");
        assert!(body.contains("origin"), "{origin}: {body}");
    }
    for origin in ["https://chat.example", "https://Chat.Example/"] {
        let mut ws = Ws::connect_with(s.addr, &path, &[("Origin", origin)])
            .unwrap_or_else(|e| panic!("{origin}: {e:?}"));
        assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    }
    let mut ws = Ws::connect(s.addr, &t).expect("no Origin: not a browser");
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
}

/// At debug level, neither a good nor a bad token, nor a password, reaches the log.
#[test]
fn tokens_never_appear_in_logs() {
    let url = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-logs-{}", std::process::id()));
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
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let bad = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "logged", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();

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

// ---------------------------------------------------------------------------------
// 7. Fuzzing a live server

const TYPES: [&str; 17] = [
    "create_room",
    "join",
    "leave",
    "msg",
    "room_dm",
    "my_rooms",
    "history",
    "friend_follow",
    "friend_unfollow",
    "following_list",
    "followers_list",
    "get_online_friends",
    "presence_friends_subscribe",
    "presence_friends_unsubscribe",
    "__panic",
    "",
    "MSG",
];
const FIELDS: [&str; 12] = [
    "room_id",
    "room",
    "name",
    "text",
    "to",
    "limit",
    "before",
    "after",
    "before_id",
    "after_id",
    "req_id",
    "type",
];
const ODD_NUMBERS: [&str; 14] = [
    "1e400",
    "-1e400",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "123456789012345678901234567890",
    "0.0000000000000000000000000001",
    "-0",
    "1E+2",
    "NaN",
    "Infinity",
    "0x10",
    "01",
    "-",
];

fn rand_string(r: &mut Rng) -> String {
    const PIECES: [&str; 14] = [
        "a", "Z", "_", " ", "\"", "\\", "\n", "\u{0}", "\u{1f}", "한", "💬", "\u{202e}", "r_",
        "%00",
    ];
    let n = match r.below(10) {
        0 => r.below(5000),
        _ => r.below(12),
    };
    (0..n).map(|_| *r.pick(&PIECES)).collect()
}

fn rand_value(r: &mut Rng, depth: u32) -> Value {
    match r.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(r.below(2) == 0),
        2 => json!(r.next() as i64),
        3 => json!(*r.pick(&[0.5, -1e300, 1e-300, 3.0e18, -7.25])),
        4 | 5 => Value::String(rand_string(r)),
        6 => Value::Array((0..r.below(4)).map(|_| rand_value(r, depth - 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..r.below(4) {
                let k = if r.below(2) == 0 {
                    r.pick(&FIELDS).to_string()
                } else {
                    rand_string(r)
                };
                m.insert(k, rand_value(r, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// One hostile frame: garbage, odd JSON, real request types with wrong field types.
fn fuzz_frame(r: &mut Rng, users: &[String], rooms: &[String]) -> Message {
    match r.below(10) {
        0 => {
            let n = r.below(300) as usize;
            Message::text(String::from_utf8_lossy(&r.bytes(n)).into_owned())
        }
        1 => Message::text(rand_value(r, 4).to_string()),
        2..=5 => {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), json!(*r.pick(&TYPES)));
            for _ in 0..r.below(5) {
                let field = r.pick(&FIELDS).to_string();
                let v = match r.below(4) {
                    0 => json!(r.pick(rooms)),
                    1 => json!(r.pick(users)),
                    _ => rand_value(r, 2),
                };
                m.insert(field, v);
            }
            Message::text(Value::Object(m).to_string())
        }
        6 => Message::text(format!(
            "{{\"type\":\"{}\",\"{}\":{},\"req_id\":{}}}",
            r.pick(&TYPES),
            r.pick(&FIELDS),
            r.pick(&ODD_NUMBERS),
            r.pick(&ODD_NUMBERS)
        )),
        7 => {
            let d = *r.pick(&[10usize, 127, 128, 129, 1000, 20_000]);
            let nested = format!("{}{}", "[".repeat(d), "]".repeat(d));
            if r.below(2) == 0 {
                Message::text(nested)
            } else {
                Message::text(format!(
                    "{{\"type\":\"msg\",\"room_id\":\"{}\",\"text\":{nested}}}",
                    r.pick(rooms)
                ))
            }
        }
        8 => {
            let n = r.below(500) as usize;
            Message::binary(r.bytes(n))
        }
        _ => {
            // A valid request, mangled.
            let mut b = json!({"type": r.pick(&TYPES), "room_id": r.pick(rooms), "text": "hi"})
                .to_string()
                .into_bytes();
            for _ in 0..1 + r.below(4) {
                let i = r.below(b.len() as u64) as usize;
                match r.below(3) {
                    0 => b[i] = r.next() as u8,
                    1 => b.truncate(i),
                    _ => b.insert(i, b"{}[]\",:\\"[r.below(8) as usize]),
                }
                if b.is_empty() {
                    break;
                }
            }
            Message::text(String::from_utf8_lossy(&b).into_owned())
        }
    }
}

/// Every event a fuzzing connection has waiting (until `quiet` passes without one): each must be a JSON object with a
/// string `type` and a `ts` (and the connection must not have been closed).
fn drain_events(ws: &mut Ws, codes: &mut HashMap<String, usize>, quiet: Duration) {
    while let Some(ev) = ws.try_recv(quiet) {
        assert!(
            ev["type"].is_string() && ev["ts"].is_string(),
            "malformed event {ev}"
        );
        if ev["type"] == "error" {
            *codes
                .entry(ev["code"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
}

/// Thousands of random and malformed frames from several connections, and random
/// bytes at the HTTP port: the server stays up and answers correctly afterwards.
#[test]
fn fuzzing_a_live_server() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
        c.http_timeout = Duration::from_secs(2);
    });
    let users: Vec<String> = (0..4).map(|i| format!("fuzz{i}")).collect();
    let mut conns: Vec<Ws> = users.iter().map(|u| s.client(u)).collect();
    let mut rooms = vec!["r_00000000".to_string(), "nonexistent".to_string()];
    for name in ["fuzz a", "fuzz b"] {
        let room = conns[0].create_room(name);
        for c in conns.iter_mut() {
            c.send(json!({"type": "join", "room_id": room}));
        }
        rooms.push(room);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut codes = HashMap::new();
    for i in 0..3000 {
        // Below the 64 KiB frame limit: over it is a (tested) close, not fuzzing.
        let frame = loop {
            let f = fuzz_frame(&mut rng, &users, &rooms);
            if f.len() < 60_000 {
                break f;
            }
        };
        conns[i % 4].send_raw(frame);
        if i % 20 == 19 {
            for c in conns.iter_mut() {
                drain_events(c, &mut codes, Duration::from_millis(1));
            }
        }
    }
    // Every fuzzing connection is still open and answers (after its backlog).
    for c in conns.iter_mut() {
        drain_events(c, &mut codes, QUIET);
        let r = c.request(json!({"type": "my_rooms"}));
        assert_eq!(r["type"], "my_rooms", "{r}");
    }
    assert!(
        codes.get("BAD_REQUEST").is_some_and(|n| *n > 100),
        "{codes:?}"
    );
    assert!(
        codes.get("UNKNOWN_TYPE").is_some_and(|n| *n > 10),
        "{codes:?}"
    );
    assert_eq!(
        codes.get("UNAVAILABLE"),
        None,
        "input caused database failures: {codes:?}"
    );

    // Random bytes at the HTTP port: an answer (never 5xx, never a 101) and a close.
    for i in 0..200 {
        let mut bytes = match i % 4 {
            0 => Vec::new(),
            1 => b"GET / HTTP/1.1\r\n".to_vec(),
            2 => format!(
                "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                rng.pick(&ODD_NUMBERS)
            )
            .into_bytes(),
            _ => b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n".to_vec(),
        };
        let n = rng.below(2000) as usize;
        bytes.extend(rng.bytes(n));
        let mut c = connect(s.addr);
        let _ = c.write_all(&bytes);
        let _ = c.shutdown(Shutdown::Write);
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut out = Vec::new();
        match c.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "garbage #{i}: no close ({e}); got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
        let text = String::from_utf8_lossy(&out);
        for (at, _) in text.match_indices("HTTP/1.1 ") {
            let status = text.get(at + 9..at + 12).unwrap_or("");
            assert!(
                status.starts_with('4') || status.starts_with('2'),
                "garbage #{i} got {status}: {text}"
            );
        }
    }

    // A normal client is served correctly.
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let room = alice.create_room("after the storm");
    alice.join(&room);
    bob.join(&room);
    alice.expect("system");
    alice.send(json!({"type": "msg", "room_id": room, "text": "calm"}));
    let m = alice.expect("message");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("calm"))
    );
    assert_eq!(bob.expect("message")["id"], m["id"]);
    let h = bob.request(json!({"type": "history", "room_id": room}));
    assert_eq!(
        h["items"].as_array().unwrap().last().unwrap()["text"],
        "calm"
    );
    assert_eq!(s.http("GET", "/health", None).status, 200);
}

// ---------------------------------------------------------------------------------
// 8. PostgreSQL restarts under load

#[derive(Default)]
struct LoadLog {
    /// Every `message` event received: (id, text).
    delivered: Vec<(i64, String)>,
    /// This client's messages confirmed by their `message` event, and when.
    confirmed: Vec<(String, Instant)>,
    /// Errors: (req_id = text, code, when).
    errors: Vec<(String, String, Instant)>,
    /// Requests never answered.
    unanswered: Vec<String>,
}

fn load_client(mut ws: Ws, me: &str, room: &str, stop: &AtomicBool) -> LoadLog {
    let mut log = LoadLog::default();
    let mut pending: HashSet<String> = HashSet::new();
    let mut n = 0;
    let handle =
        |ev: Value, log: &mut LoadLog, pending: &mut HashSet<String>| match ev["type"].as_str() {
            Some("message") => {
                let text = ev["text"].as_str().unwrap().to_string();
                log.delivered
                    .push((ev["id"].as_i64().expect("an id"), text.clone()));
                if pending.remove(&text) {
                    log.confirmed.push((text, Instant::now()));
                }
            }
            Some("error") => {
                let id = ev["req_id"]
                    .as_str()
                    .expect("errors echo req_id")
                    .to_string();
                assert!(pending.remove(&id), "error for an unknown request: {ev}");
                log.errors
                    .push((id, ev["code"].as_str().unwrap().to_string(), Instant::now()));
            }
            _ => panic!("unexpected event {ev}"),
        };
    while !stop.load(Ordering::Relaxed) {
        let text = format!("{me}-{n}");
        n += 1;
        ws.send(json!({"type": "msg", "room_id": room, "text": text, "req_id": text}));
        pending.insert(text);
        let until = Instant::now() + Duration::from_millis(40);
        while let Some(ev) = ws.try_recv(
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ) {
            handle(ev, &mut log, &mut pending);
            if Instant::now() >= until {
                break;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pending.is_empty() && Instant::now() < deadline {
        if let Some(ev) = ws.try_recv(Duration::from_millis(200)) {
            handle(ev, &mut log, &mut pending);
        }
    }
    // Others' messages still in flight.
    while let Some(ev) = ws.try_recv(Duration::from_millis(300)) {
        handle(ev, &mut log, &mut pending);
    }
    log.unanswered = pending.into_iter().collect();
    log
}

/// Clients chatting while PostgreSQL stops for ~5 s and comes back: requests
/// during the outage get `UNAVAILABLE`, nothing delivered is lost, nothing refused
/// is stored, and service resumes without restarting klav.
#[test]
fn postgres_restart_under_load() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return; // needs a cluster of its own to stop
    }
    let dir = std::env::temp_dir().join(format!("klav-it-pgload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    watchdog(&dir);
    let mut cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    let url = cluster.url("postgres");
    let s = TestServer::on_db(&url, |c| {
        c.rate_per_sec = 10_000.0;
        c.rate_burst = 10_000.0;
    });
    let names = ["load0", "load1", "load2"];
    let mut clients: Vec<Ws> = names.iter().map(|u| s.client(u)).collect();
    let room = clients[0].create_room("under load");
    for c in clients.iter_mut() {
        c.join(&room);
    }
    for c in clients.iter_mut() {
        while c.try_recv(QUIET).is_some() {}
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = clients
        .into_iter()
        .zip(names)
        .map(|(ws, me)| {
            let (stop, room) = (stop.clone(), room.clone());
            std::thread::spawn(move || load_client(ws, me, &room, &stop))
        })
        .collect();

    std::thread::sleep(Duration::from_secs(1));
    cluster.stop().unwrap();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    cluster.restart().unwrap();
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<LoadLog> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows = db
        .query(
            "SELECT id, text FROM chat_logs WHERE room_id = $1 AND kind = 'msg'",
            &[&room],
        )
        .unwrap();
    let stored: HashMap<i64, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stored_texts: HashSet<&String> = stored.values().collect();
    let mut unavailable_during = 0;
    for (log, me) in logs.iter().zip(names) {
        assert!(
            log.unanswered.is_empty(),
            "{me}: unanswered {:?}",
            log.unanswered
        );
        for (id, text) in &log.delivered {
            assert_eq!(
                stored.get(id),
                Some(text),
                "{me} received message {id} ({text}) that is not stored"
            );
        }
        for (text, code, at) in &log.errors {
            assert_eq!(code, "UNAVAILABLE", "{me}: {text}");
            assert!(
                !stored_texts.contains(text),
                "{me}: {text} was refused but stored"
            );
            if *at > down && *at < back {
                unavailable_during += 1;
            }
        }
        assert!(
            log.confirmed.iter().any(|(_, at)| *at < down),
            "{me}: nothing worked before the outage"
        );
        // Service resumed within a few seconds of PostgreSQL's return.
        let first_after = log
            .confirmed
            .iter()
            .map(|(_, at)| *at)
            .find(|at| *at > back);
        let first_after =
            first_after.unwrap_or_else(|| panic!("{me}: nothing worked after the outage"));
        assert!(
            first_after.duration_since(back) < Duration::from_secs(5),
            "{me}: service took {:?} to resume",
            first_after.duration_since(back)
        );
    }
    assert!(
        unavailable_during > 0,
        "no request during the outage got UNAVAILABLE"
    );
    // Every stored message reached every client, once.
    for (log, me) in logs.iter().zip(names) {
        let ids: HashSet<i64> = log.delivered.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), log.delivered.len(), "{me} got a message twice");
        assert_eq!(ids.len(), stored.len(), "{me} missed stored messages");
    }
    // Still serving.
    assert_eq!(s.http("GET", "/health", None).status, 200);
    let mut late = s.client("late");
    assert!(!late.create_room("after").is_empty());
    drop(late);
    drop(s);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// 9. Graceful shutdown

/// SIGTERM: every client gets a 1001 close, a message accepted just before is
/// delivered first (and stored), the process exits 0 within the bound and the
/// embedded PostgreSQL is stopped.
#[test]
fn graceful_shutdown() {
    let dir = std::env::temp_dir().join(format!("klav-it-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    watchdog(&dir);
    let bound = 5;
    let env = [
        ("KLAV_SHUTDOWN_SECS", "5"),
        ("KLAV_RATE_PER_SEC", "10000"),
        ("KLAV_RATE_BURST", "10000"),
    ];
    let mut k = spawn_klav(&dir, &env);
    let ta = user_at(k.addr, "sa");
    let tb = user_at(k.addr, "sb");
    let tc = user_at(k.addr, "sc");
    let mut a = Ws::connect(k.addr, &ta).unwrap_or_else(|e| panic!("{e:?}"));
    let mut b = Ws::connect(k.addr, &tb).unwrap_or_else(|e| panic!("{e:?}"));
    let mut c = Ws::connect(k.addr, &tc).unwrap_or_else(|e| panic!("{e:?}"));
    let room = a.create_room("last words");
    a.join(&room);
    b.join(&room);
    a.expect("system");
    c.join(&room);
    a.expect("system");
    b.expect("system");

    // A third member keeps sending through the shutdown, collecting what it gets.
    let busy = {
        let room = room.clone();
        std::thread::spawn(move || {
            let mut got: Vec<String> = Vec::new();
            let sock = &mut c.sock;
            sock.get_mut()
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            for n in 0.. {
                if sock.can_write() {
                    let req = json!({"type": "msg", "room_id": room, "text": format!("busy {n}")});
                    let _ = sock.send(Message::text(req.to_string()));
                }
                loop {
                    match sock.read() {
                        Ok(Message::Text(t)) => {
                            let ev: Value = serde_json::from_str(t.as_str()).unwrap();
                            if ev["type"] == "message" && ev["from"] == "sc" {
                                got.push(ev["text"].as_str().unwrap().to_string());
                            }
                        }
                        Ok(Message::Close(f)) => return (got, f),
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            break
                        }
                        Err(e) => panic!("busy client: {e} after {n} messages"),
                    }
                }
            }
            unreachable!()
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let text = "sent just before SIGTERM";
    a.send(json!({"type": "msg", "room_id": room, "text": text, "req_id": "last"}));
    let t0 = Instant::now();
    k.signal(libc::SIGTERM);
    let (a_events, a_close) = events_until_close(&mut a);
    let (b_events, b_close) = events_until_close(&mut b);
    let (c_got, c_close) = busy.join().unwrap();
    assert_eq!(close_code(&a_close), Some(CloseCode::Away), "{a_close:?}");
    assert_eq!(close_code(&b_close), Some(CloseCode::Away), "{b_close:?}");
    assert_eq!(close_code(&c_close), Some(CloseCode::Away), "{c_close:?}");
    let status = k
        .wait_exit(Duration::from_secs(bound + 10))
        .expect("klav exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(bound + 10));
    assert!(
        !dir.join("pg/postmaster.pid").exists(),
        "embedded PostgreSQL stopped"
    );

    let delivered = a_events
        .iter()
        .find(|e| e["type"] == "message" && e["text"] == text);
    let error = a_events
        .iter()
        .find(|e| e["type"] == "error" && e["req_id"] == "last");
    assert!(
        delivered.is_some() || error.is_some(),
        "the sender got neither its message nor an error before the close: {a_events:?}"
    );
    let mut cluster = Cluster::start(&dir, &ClusterOptions::default()).unwrap();
    let mut db = postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls).unwrap();
    let ids: Vec<i64> = db
        .query("SELECT id FROM chat_logs WHERE text = $1", &[&text])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    match delivered {
        Some(ev) => {
            assert_eq!(ids, [ev["id"].as_i64().unwrap()], "delivered means stored");
            let to_b = b_events
                .iter()
                .find(|e| e["type"] == "message" && e["text"] == text);
            assert!(
                to_b.is_some(),
                "the other member got it before the close too: {b_events:?}"
            );
        }
        None => assert!(ids.is_empty(), "refused ({error:?}) yet stored"),
    }
    // The busy member: everything of its that was stored reached it before the
    // close (and, trivially, everything it got was stored).
    let stored: Vec<String> = db
        .query(
            "SELECT text FROM chat_logs WHERE from_user = 'sc' AND kind = 'msg' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !stored.is_empty(),
        "the busy member was served before SIGTERM"
    );
    assert_eq!(
        stored, c_got,
        "stored messages of the busy member vs the message events it received"
    );
    cluster.stop().unwrap();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// 10. Panic policy

/// A panic anywhere aborts the process (SIGABRT) after logging it; without fault
/// injection `__panic` is just an unknown type.
#[test]
fn panic_aborts_the_process() {
    let url = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-panic-{}", std::process::id()));

    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let t = user_at(k.addr, "boom");
    let mut ws = Ws::connect(k.addr, &t).unwrap_or_else(|e| panic!("{e:?}"));
    let r = ws.request(json!({"type": "__panic"}));
    assert_eq!(r["code"], "UNKNOWN_TYPE", "{r}");
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    drop(ws);
    assert!(k.terminate().success());

    let mut k = spawn_klav(
        &dir,
        &[("DATABASE_URL", &url), ("KLAV_FAULT_INJECTION", "1")],
    );
    let mut ws = Ws::connect(k.addr, &t).unwrap_or_else(|e| panic!("{e:?}"));
    ws.send(json!({"type": "__panic"}));
    let status = k.wait_exit(WAIT).expect("klav dies after a panic");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let log = k.full_stderr();
    assert!(log.contains("internal error (panic)"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// 11. Metrics

#[test]
fn metrics_are_exposed_and_move() {
    let s = TestServer::start();
    let text = metrics_text(s.addr);
    for (name, kind) in [
        ("klav_open_connections", "gauge"),
        ("klav_websocket_connections", "gauge"),
        ("klav_online_users", "gauge"),
        ("klav_db_queue_depth", "gauge"),
        ("klav_accepted_total", "counter"),
        ("klav_websocket_opened_total", "counter"),
        ("klav_messages_total", "counter"),
        ("klav_dms_total", "counter"),
        ("klav_deliveries_total", "counter"),
        ("klav_requests_total", "counter"),
        ("klav_rate_limited_total", "counter"),
        ("klav_db_rejected_total", "counter"),
        ("klav_db_errors_total", "counter"),
        ("klav_disconnects_total", "counter"),
        ("klav_db_job_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}:\n{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name} help");
    }
    for reason in [
        "peer",
        "http_done",
        "timeout",
        "slow_consumer",
        "too_big",
        "bad_utf8",
        "protocol",
        "flood",
        "shutdown",
        "error",
    ] {
        assert!(sample(&text, &disconnects(reason)).is_some(), "{reason}");
    }
    for name in [
        "klav_db_job_seconds_bucket{le=\"+Inf\"}",
        "klav_db_job_seconds_sum",
        "klav_db_job_seconds_count",
    ] {
        assert!(sample(&text, name).is_some(), "{name}");
    }
    assert_eq!(sample(&text, "klav_websocket_connections"), Some(0.0));
    assert_eq!(sample(&text, "klav_online_users"), Some(0.0));
    assert!(
        sample(&text, "klav_open_connections").unwrap() >= 1.0,
        "counts itself"
    );
    let accepted0 = sample(&text, "klav_accepted_total").unwrap();

    let mut a = s.client("ma");
    let mut b = s.client("mb");
    let b2_token = s.token("mb");
    let mut b2 = s.ws(&b2_token);
    let text = metrics_text(s.addr);
    assert_eq!(sample(&text, "klav_websocket_connections"), Some(3.0));
    assert_eq!(sample(&text, "klav_online_users"), Some(2.0));
    assert_eq!(sample(&text, "klav_websocket_opened_total"), Some(3.0));
    assert!(sample(&text, "klav_accepted_total").unwrap() > accepted0);
    assert!(sample(&text, "klav_db_job_seconds_count").unwrap() > 0.0);

    let room = a.create_room("counted");
    a.join(&room);
    b.join(&room);
    a.expect("system");
    let (m0, d0, r0) = (
        metric(s.addr, "klav_messages_total"),
        metric(s.addr, "klav_deliveries_total"),
        metric(s.addr, "klav_requests_total"),
    );
    a.send(json!({"type": "msg", "room_id": room, "text": "count me"}));
    a.expect("message");
    b.expect("message");
    let text = metrics_text(s.addr);
    assert_eq!(sample(&text, "klav_messages_total"), Some(m0 + 1.0));
    // a, and both of b's connections.
    assert_eq!(sample(&text, "klav_deliveries_total"), Some(d0 + 3.0));
    assert_eq!(sample(&text, "klav_requests_total"), Some(r0 + 1.0));
    let dm0 = sample(&text, "klav_dms_total").unwrap();
    let ack = a.request(json!({"type": "room_dm", "room_id": room, "to": "mb", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    assert_eq!(metric(s.addr, "klav_dms_total"), dm0 + 1.0);

    while b2.try_recv(QUIET).is_some() {}
    drop(b2);
    wait_metric(s.addr, "klav_websocket_connections", |v| v == 2.0);
    assert_eq!(metric(s.addr, "klav_online_users"), 2.0);
    b.close();
    wait_metric(s.addr, "klav_websocket_connections", |v| v == 1.0);
    assert_eq!(metric(s.addr, "klav_online_users"), 1.0);
    // Both ended by their peer (b2 read everything first, so its close was a FIN).
    assert_eq!(metric(s.addr, &disconnects("peer")), 2.0);
}

// ---------------------------------------------------------------------------------
// 12. HTTP framing: line ends and expectations

/// A head whose lines end in a bare LF is refused (400, closed): a proxy in
/// front that splits lines only at CRLF would read another request in it.
#[test]
fn http_bare_lf_line_ends_are_refused() {
    let s = TestServer::start();
    for raw in [
        &b"GET /health HTTP/1.1\nHost: x\n\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /health HTTP/1.1\r\nX-A: 1\r\n\n",
    ] {
        let mut c = connect(s.addr);
        c.write_all(raw).unwrap();
        let r = read_response(&mut c).expect("an answer");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert!(r.detail().contains("bare LF"), "{}", r.detail());
        assert_eq!(r.header("connection"), Some("close"));
        assert!(closed_within(&mut c, Duration::from_secs(3)));
    }
    // CRLF throughout is served as ever.
    assert_eq!(s.http("GET", "/health", None).status, 200);
}

/// `Expect: 100-continue`: `100 Continue` as soon as the head is in (a client
/// waits for it before sending its body), then the response, on a connection
/// that keeps pipelining. A body over the limit is refused from the head; any
/// other expectation cannot be met.
#[test]
fn http_expect_100_continue_is_answered() {
    let s = TestServer::start();
    s.register("erin", PASSWORD);
    let login = &json!({"username": "erin", "password": PASSWORD}).to_string();
    let mut c = connect(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        login.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim)
        .expect("100 Continue before the body is sent");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    // The body, with a second request pipelined behind it.
    c.write_all(format!("{login}GET /health HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["access_token"].is_string());
    assert_eq!(read_response(&mut c).unwrap().json()["status"], "healthy");
    // Once more on the same connection: each request gets its own.
    c.write_all(head.as_bytes()).unwrap();
    c.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(login.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);

    // Over the limit: 413 at once, no 100 first, closed (no body ever sent).
    let mut c = connect(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"POST /register HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 413);
    assert!(closed_within(&mut c, Duration::from_secs(3)));

    // Anything else: 417 at once, closed.
    let mut c = connect(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /login HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 417);
    assert!(r.detail().contains("100-continue"), "{}", r.detail());
    assert!(closed_within(&mut c, Duration::from_secs(3)));
}
