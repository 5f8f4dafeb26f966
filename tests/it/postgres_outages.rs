//! PostgreSQL going away under a running server: health and logins answer 503
//! quickly, requests get `UNAVAILABLE`, nothing delivered is lost and nothing
//! refused is stored, and service resumes without restarting klav.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use klav::db::embedded::Cluster;
use serde_json::{json, Value};

use crate::harness::*;

/// PostgreSQL stops under a running server: health and login answer 503 quickly,
/// requests get UNAVAILABLE; once it is back, everything works without a restart.
#[test]
fn postgres_outage_and_recovery() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        // This test needs a cluster of its own to stop.
        return;
    }
    let dir = cluster_dir("outage");
    let mut cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    let url = cluster.url("postgres");
    let s = TestServer::on_db(&url, |_| {});
    let token = s.user("alice");
    let mut ws = s.ws(&token);
    let room = ws.create_room("r");
    ws.join(&room);

    cluster.stop().unwrap();
    let t0 = Instant::now();
    let r = s.http("GET", "/health", None);
    assert_eq!(r.status, 503);
    assert!(r.detail().starts_with("Service unhealthy"), "{}", r.body);
    let r = s.login("alice", PASSWORD);
    assert_eq!(r.status, 503);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let t1 = Instant::now();
    let r = s.login("alice", PASSWORD);
    assert_eq!(r.status, 503);
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    // Nothing goes to the writer during the outage, so its kept connection is a
    // dead one when PostgreSQL returns (see below); reads fail fast meanwhile.
    let e = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(e["code"], "UNAVAILABLE");

    cluster.restart().unwrap();
    eventually(Duration::from_secs(15), Duration::from_millis(100), || {
        let r = s.http("GET", "/health", None);
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("health did not recover: {}", r.body))
        }
    });
    assert_eq!(s.login("alice", PASSWORD).status, 200);
    // The writer's kept connection died with the restart; it must notice on BEGIN
    // and retry on a fresh one rather than fail this message.
    ws.send(json!({"type": "msg", "room_id": room, "text": "after"}));
    let got = ws.recv();
    assert_eq!(
        (got["type"].as_str(), got["text"].as_str()),
        (Some("message"), Some("after")),
        "{got}"
    );
    let mut db = connect_db(&url);
    let n: i64 = db
        .query_one("SELECT count(*) FROM chat_logs WHERE text = 'after'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "stored once");
    drop(ws);
    drop(s);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

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
    let dir = cluster_dir("pgload");
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
        c.drain(QUIET);
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

    let mut db = connect_db(&url);
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
