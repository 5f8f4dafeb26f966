//! The WebSocket after the upgrade: fragmented messages, the size limits
//! (1009) and UTF-8 (1007), frames that are not requests, pings and the close
//! handshake, and peers that stall half-way through a frame or go silent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::harness::*;

/// A WebSocket upgraded by hand: the test writes every byte itself.
fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    let (s, r) = upgrade_response(addr, token, "");
    assert_eq!(r.status, 101, "{}", r.body);
    s
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

#[test]
fn bad_frames_get_errors_and_keep_the_connection() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    ws.send_raw(Message::text("not json"));
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
    ws.send_raw(Message::text("[1,2]"));
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
    ws.send(json!({"no": "type", "req_id": 5}));
    let e = ws.expect("error");
    assert_eq!(
        (e["code"].as_str(), e["req_id"].as_i64()),
        (Some("BAD_REQUEST"), Some(5))
    );
    ws.send_raw(Message::binary(vec![1u8, 2, 3]));
    assert_eq!(ws.expect("error")["code"], "BAD_REQUEST");
    let e = ws.request(json!({"type": "frobnicate"}));
    assert_eq!(e["code"], "UNKNOWN_TYPE");
    // Still open and serving.
    let r = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(r["type"], "my_rooms");
}

#[test]
fn pings_are_answered_and_close_is_honoured() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    ws.send_raw(Message::Ping(vec![7u8, 7].into()));
    ws.sock.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    match ws.sock.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], &[7, 7]),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.sock.close(None).unwrap();
    loop {
        match ws.sock.read() {
            Ok(Message::Close(_)) => continue,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
}

#[test]
fn oversized_frame_closes_1009() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    ws.send_raw(Message::text("x".repeat(70 * 1024)));
    let frame = ws.expect_close().expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);
    // Others are unaffected.
    let mut other = s.client("bob");
    assert_eq!(
        other.request(json!({"type": "my_rooms"}))["type"],
        "my_rooms"
    );
}

#[test]
fn oversize_frame_close_reaches_a_client_still_sending() {
    let s = unthrottled_server();
    let t = s.user("big-sender");
    for _ in 0..2 {
        let mut ws = s.ws(&t);
        // One 2 MiB binary frame (masked with a zero key), sent in pieces over
        // about a second: the server decides after 64 KiB and closes; the
        // client goes on sending the rest, and only then reads.
        let len = 2 << 20;
        let head = client_frame_head(0x82, len, [0; 4]);
        let sock = ws.sock.get_mut();
        sock.write_all(&head).unwrap();
        let piece = vec![0u8; 64 * 1024];
        for _ in 0..(len / piece.len()) {
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
    assert_eq!(metric(s.addr, &disconnects("timeout")), 1);
    let r = watcher.request(json!({"type": "get_online_friends"}));
    assert_eq!(r["users"], json!([]), "the watcher is still connected: {r}");
}
