//! `/metrics`: every family with its type and help, the counters moving with
//! what they count, a budget per address on the public port, and a listener of
//! its own.

use std::io::Write;

use serde_json::json;

use crate::harness::*;

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
    assert_eq!(sample(&text, "klav_messages_total"), Some(m0 as f64 + 1.0));
    // a, and both of b's connections.
    assert_eq!(
        sample(&text, "klav_deliveries_total"),
        Some(d0 as f64 + 3.0)
    );
    assert_eq!(sample(&text, "klav_requests_total"), Some(r0 as f64 + 1.0));
    let dm0 = sample(&text, "klav_dms_total").unwrap() as u64;
    let ack = a.request(json!({"type": "room_dm", "room_id": room, "to": "mb", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    assert_eq!(metric(s.addr, "klav_dms_total"), dm0 + 1);

    b2.drain(QUIET);
    drop(b2);
    wait_metric(s.addr, "klav_websocket_connections", |v| v == 2);
    assert_eq!(metric(s.addr, "klav_online_users"), 2);
    b.close();
    wait_metric(s.addr, "klav_websocket_connections", |v| v == 1);
    assert_eq!(metric(s.addr, "klav_online_users"), 1);
    // Both ended by their peer (b2 read everything first, so its close was a FIN).
    assert_eq!(metric(s.addr, &disconnects("peer")), 2);
}

/// `/metrics` is kilobytes of text for a few bytes asked: on the public port
/// each client address gets a scraper's share (a burst of ten, then one a
/// second); past it 429 with `Retry-After` and the connection closes, so a
/// pipeline of them costs one refusal. Another address keeps its own share.
#[test]
fn public_metrics_have_a_budget_per_address() {
    let s = TestServer::with(|c| c.metrics_per_addr_per_sec = 1);
    let get = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut p = connect_from([127, 0, 0, 2], s.addr);
    p.write_all(&get.repeat(40)).unwrap();
    let mut statuses = Vec::new();
    while let Some(r) = read_response(&mut p) {
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "{r:?}");
            assert!(r.detail().contains("KLAV_METRICS_ADDR"), "{r:?}");
        } else {
            assert!(r.body.contains("klav_open_connections"), "{r:?}");
        }
        statuses.push(r.status);
    }
    let mut expected = vec![200; 10];
    expected.push(429);
    assert_eq!(statuses, expected);
    assert!(closed_within(&mut p, WAIT), "closed after the refusal");

    for _ in 0..3 {
        let mut c = connect_from([127, 0, 0, 3], s.addr);
        c.write_all(get).unwrap();
        assert_eq!(read_response(&mut c).unwrap().status, 200);
    }
    let mut again = connect_from([127, 0, 0, 2], s.addr);
    again.write_all(get).unwrap();
    let r = read_response(&mut again).unwrap();
    // Its bucket refills at one a second: at most one more got through.
    assert!(r.status == 429 || r.status == 200, "{r:?}");
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
