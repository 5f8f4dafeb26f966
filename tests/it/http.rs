//! The HTTP side: routes and methods, keep-alive and pipelining, the parser's
//! limits (head and body sizes, line ends, `Content-Length`, `Expect`), slow and
//! stalled clients, the connection cap, and final responses that must reach a
//! client still sending.
//!
//! Timeouts are configured small so the tests are quick; assertions are about
//! behaviour (answered or closed, statuses, counts), never about speed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[test]
fn health_routes_and_methods() {
    let s = TestServer::start();
    let r = s.http("GET", "/health", None);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"status": "healthy", "database": "connected"}))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = s.http("GET", "/nope", None);
    assert_eq!(r.status, 404);
    assert!(!r.detail().is_empty());
    let r = s.http("GET", "/login", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(s.http("POST", "/health", Some("{}")).status, 405);
    let r = s.http("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("klav_open_connections"), "{}", r.body);
}

#[test]
fn keep_alive_and_pipelining() {
    let s = TestServer::start();
    s.register("erin", PASSWORD);
    let mut c = connect(s.addr);
    // Two requests in one write, then a third after the answers.
    let login = json!({"username": "erin", "password": PASSWORD}).to_string();
    let req = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\nPOST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{login}",
        login.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let r1 = read_response(&mut c).unwrap();
    assert_eq!(r1.json()["status"], "healthy");
    let r2 = read_response(&mut c).unwrap();
    assert_eq!(r2.status, 200);
    assert!(r2.json()["access_token"].is_string());
    c.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 404);
    // Connection: close is honoured.
    c.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
}

#[test]
fn oversized_and_malformed_requests() {
    let s = TestServer::start();
    // Headers over 8 KiB: 431 and close.
    let mut c = connect(s.addr);
    let req = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    c.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 431);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
    // Body over 64 KiB: 413 and close (refused from the header alone).
    let mut c = connect(s.addr);
    c.write_all(b"POST /register HTTP/1.1\r\nContent-Length: 70000\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 413);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
    // Garbage: 400 and close.
    let mut c = connect(s.addr);
    c.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 400);
    assert!(closed_within(&mut c, Duration::from_secs(3)));
    // The server still serves others.
    assert_eq!(s.http("GET", "/health", None).status, 200);
}

#[test]
fn stalled_partial_request_is_closed() {
    let s = TestServer::with(|c| c.http_timeout = Duration::from_secs(1));
    let mut c = connect(s.addr);
    c.write_all(b"POST /login HTTP/1.1\r\nContent-Le").unwrap();
    assert!(
        !closed_within(&mut c, Duration::from_millis(300)),
        "closed too early"
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(4)),
        "a stalled request must be closed"
    );
    // A normal client meanwhile is unaffected.
    assert_eq!(s.http("GET", "/health", None).status, 200);
}

/// `Content-Length` is digits only: `+2` is a 400, not a two-byte body.
#[test]
fn signed_content_length_is_400() {
    let s = TestServer::start();
    let mut c = connect(s.addr);
    c.write_all(b"POST /login HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\r\n{}")
        .unwrap();
    let r = read_response(&mut c).expect("a response");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(closed_within(&mut c, Duration::from_secs(2)));
}

/// A request trickled in byte by byte is still answered (its head is parsed
/// when lines end, its body once complete).
#[test]
fn trickled_request_is_answered() {
    let s = TestServer::start();
    s.user("tr");
    let body = json!({"username": "tr", "password": PASSWORD}).to_string();
    let raw = format!(
        "POST /login HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "p".repeat(2000),
        body.len()
    );
    let mut c = connect(s.addr);
    for chunk in raw.as_bytes().chunks(7) {
        c.write_all(chunk).unwrap();
    }
    let r = read_response(&mut c).expect("a response");
    assert_eq!(r.status, 200, "{}", r.body);
}

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
        5,
        "each of the five was closed by the timeout"
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
    wait_metric(s.addr, "klav_open_connections", |v| v >= 1001);

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
    eventually(WAIT, Duration::from_millis(50), || {
        let r = s.http("GET", "/health", None);
        if r.status == 200 {
            return Ok(());
        }
        assert_eq!(r.status, 503);
        Err("service did not resume below the cap".into())
    });
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
    let s = unthrottled_server();
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
fn a_long_pipelined_http_burst_is_answered_in_full() {
    let s = unthrottled_server();
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
