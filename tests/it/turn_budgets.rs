//! The event loop's turns: with no time to read in a turn, or with the usual
//! per-turn budgets, many clients at once (WebSocket members and pipelining
//! HTTP clients) get everything, in order — reads put off to later turns are
//! never lost.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// With no time to read in a turn, every read goes through the queues of reads
/// put off to later turns (open sessions, everything else, connections that
/// used their share): nothing is lost, doubled or reordered. Readiness is
/// edge-triggered and comes once, so an entry dropped from a queue would stall
/// its connection for good.
#[test]
fn reads_put_off_to_later_turns_lose_nothing() {
    many_clients_at_once_lose_nothing(Duration::ZERO);
}

/// The same with the usual turn: 600 pipelined answers of a 32 KB web asset
/// pass a turn's 256 KiB of HTTP responses many times over, and each
/// connection's 150 messages its share of a turn.
#[test]
fn per_turn_budgets_lose_nothing() {
    many_clients_at_once_lose_nothing(klav::config::Config::defaults().turn_work);
}

/// Three members each send 150 messages at once while 40 HTTP clients pipeline
/// 30 requests each; everyone gets everything, in order.
fn many_clients_at_once_lose_nothing(turn_work: Duration) {
    let s = TestServer::with(|c| {
        c.turn_work = turn_work;
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
    });
    const SENDERS: usize = 3;
    const EACH: usize = 150;
    let mut members: Vec<Ws> = (0..SENDERS).map(|i| s.client(&format!("q{i}"))).collect();
    let room = members[0].create_room("queues");
    for m in &mut members {
        m.join(&room);
    }
    // HTTP clients pipelining at the same time (each answered in order), half
    // of them asking for a web asset: more than a turn's 256 KiB of responses.
    let script_len = s.http("GET", "/app.js", None).body.len();
    assert!(script_len > 8 * 1024, "{script_len}");
    let pipeline = |i: usize| -> Vec<u8> {
        let path = if i.is_multiple_of(2) {
            "/nope"
        } else {
            "/app.js"
        };
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
            .repeat(30)
            .into_bytes()
    };
    let mut pipelines: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut c = connect(s.addr);
            c.write_all(&pipeline(i)).unwrap();
            c
        })
        .collect();
    // Each member sends more at once than a connection reads in one turn (64).
    for (i, m) in members.iter_mut().enumerate() {
        for k in 0..EACH {
            let text = format!("{i}:{k}");
            m.sock
                .write(tungstenite::Message::text(
                    json!({"type": "msg", "room_id": room, "text": text}).to_string(),
                ))
                .unwrap();
        }
        m.sock.flush().unwrap();
    }
    for (who, m) in members.iter_mut().enumerate() {
        let mut next = [0usize; SENDERS];
        let mut last_id = 0i64;
        let mut got = 0;
        while got < SENDERS * EACH {
            let ev = m.recv();
            if ev["type"] != "message" {
                continue;
            }
            got += 1;
            let id = ev["id"].as_i64().expect("an id");
            assert!(
                id > last_id,
                "member {who}: ids in order: {id} after {last_id}"
            );
            last_id = id;
            let text = ev["text"].as_str().unwrap();
            let (i, k) = text.split_once(':').unwrap();
            let (i, k): (usize, usize) = (i.parse().unwrap(), k.parse().unwrap());
            assert_eq!(k, next[i], "member {who}: sender {i}'s messages in order");
            next[i] += 1;
        }
        assert_eq!(next, [EACH; SENDERS]);
        m.silent();
    }
    for (i, p) in pipelines.iter_mut().enumerate() {
        for _ in 0..30 {
            let r = read_response(p).expect("every answer");
            if i.is_multiple_of(2) {
                assert_eq!(r.status, 404);
            } else {
                assert_eq!((r.status, r.body.len()), (200, script_len));
            }
        }
    }
    assert!(
        metric(s.addr, "klav_reads_busy_total") > 0,
        "150 messages at once"
    );
    if turn_work.is_zero() {
        // Every read went through the queues, and they are empty now (but for
        // the read of this `/metrics` request itself).
        assert!(metric(s.addr, "klav_reads_put_off_total") > 0);
        for (queue, most) in [("sessions", 0), ("others", 1), ("busy", 0)] {
            let name = format!("klav_reads_waiting{{queue=\"{queue}\"}}");
            assert!(metric(s.addr, &name) <= most, "{name}");
        }
    }
}
