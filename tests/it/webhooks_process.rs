//! Webhooks across processes: a node killed with SIGKILL while events are
//! pending (some claimed mid-delivery) delivers them all after its restart;
//! two nodes deliver each event once; a missing or short secret stops klav
//! with exit 2.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::receiver::*;
use crate::webhooks::{message_ids, stored_ids_in};

fn hook_env(db: &str, name: &str, r: &Receiver) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.into()),
        ("KLAV_NODE_NAME".into(), name.into()),
        ("KLAV_NODE_TIMEOUT_SECS".into(), "3".into()),
        ("KLAV_RATE_PER_SEC".into(), "100000".into()),
        ("KLAV_RATE_BURST".into(), "100000".into()),
        ("KLAV_DB_WORKERS".into(), "2".into()),
        ("KLAV_WEBHOOK_URL".into(), r.url()),
        ("KLAV_WEBHOOK_SECRET".into(), HOOK_SECRET.into()),
        ("KLAV_WEBHOOK_THREADS".into(), "2".into()),
    ]
}

fn spawn_node(db: &str, name: &str, r: &Receiver) -> Klav {
    let dir = std::env::temp_dir().join(format!("klav-hooks-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = hook_env(db, name, r);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_klav(&dir, &env)
}

/// A user straight into the database, and a token as the nodes issue them.
fn user(db: &str, name: &str) -> String {
    connect_db(db)
        .execute(
            "INSERT INTO users (username, password, nickname) VALUES ($1, 'x', $1)",
            &[&name],
        )
        .unwrap();
    klav::auth::jwt::Tokens::new(SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256, 60).issue(name)
}

#[test]
fn events_pending_when_klav_is_killed_are_delivered_after_restart() {
    let db = pg().fresh_db();
    let r = Receiver::start();
    let k = spawn_node(&db, "k1", &r);
    let mut alice = Ws::connect(k.addr, &user(&db, "alice")).unwrap();
    let room = alice.create_room("Hall");
    alice.join(&room);
    r.wait_for("room.member_joined", 1, Duration::from_secs(30));
    // The receiver takes requests and never answers: deliveries hang, claimed.
    r.hang(true);
    for i in 0..40 {
        post(&mut alice, &room, &format!("m{i}"));
    }
    let mut pg_client = connect_db(&db);
    eventually(WAIT, Duration::from_millis(50), || {
        let claimed: i64 = pg_client
            .query_one(
                "SELECT count(*) FROM klav_webhook_outbox \
                 WHERE claimed_by = 'k1' AND delivered_at IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        if claimed > 0 {
            Ok(())
        } else {
            Err("nothing claimed yet".to_string())
        }
    });
    k.signal(libc::SIGKILL);
    drop(alice);
    drop(k);
    r.hang(false);
    let before = r.of("message.created").len();
    // Restarted under its name: its old claims are released at once.
    let _k = spawn_node(&db, "k1", &r);
    let got = r.wait_for("message.created", 40, Duration::from_secs(60));
    assert_eq!(
        message_ids(&got),
        stored_ids_in(&db, &room),
        "lost or reordered"
    );
    assert!(got.iter().all(|e| e.signed));
    assert!(before <= 1, "{before} delivered while the receiver hung");
    let undelivered: i64 = pg_client
        .query_one(
            "SELECT count(*) FROM klav_webhook_outbox WHERE delivered_at IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        let n: i64 = pg_client
            .query_one(
                "SELECT count(*) FROM klav_webhook_outbox WHERE delivered_at IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} undelivered (was {undelivered})"))
        }
    });
}

#[test]
fn two_nodes_deliver_each_event_once() {
    let db = pg().fresh_db();
    let r = Receiver::start();
    let n0 = spawn_node(&db, "n0", &r);
    let n1 = spawn_node(&db, "n1", &r);
    let mut a = Ws::connect(n0.addr, &user(&db, "alice")).unwrap();
    let mut b = Ws::connect(n1.addr, &user(&db, "bob")).unwrap();
    let hall = a.create_room("Hall");
    let yard = b.create_room("Yard");
    a.join(&hall);
    b.join(&hall);
    b.join(&yard);
    // Both nodes write to the hall, one to the yard, pipelined.
    let msgs = |room: &str, who: &str| {
        (0..150)
            .map(|i| json!({"type": "msg", "room_id": room, "text": format!("{who}{i}")}))
            .collect::<Vec<_>>()
    };
    a.pipeline(msgs(&hall, "a"));
    b.pipeline(msgs(&hall, "b"));
    b.pipeline(msgs(&yard, "y"));
    let got = r.wait_for("message.created", 450, Duration::from_secs(120));
    for room in [&hall, &yard] {
        let arrived: Vec<Received> = got
            .iter()
            .filter(|e| e.body["data"]["room_id"] == room.as_str())
            .cloned()
            .collect();
        assert_eq!(
            message_ids(&arrived),
            stored_ids_in(&db, room),
            "room {room}"
        );
    }
    // Let any duplicate arrive, then count every event by id.
    r.wait_for("room.member_joined", 3, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in r.got() {
        *counts.entry(e.id().to_string()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let stored: i64 = connect_db(&db)
        .query_one("SELECT count(*) FROM klav_webhook_outbox", &[])
        .unwrap()
        .get(0);
    assert_eq!(counts.len() as i64, stored);
    // What the nodes count as delivered adds up to the events, once each.
    let delivered = |k: &Klav| {
        sample(
            &metrics_text(k.addr),
            "klav_webhook_deliveries_total{status=\"200\"}",
        )
        .unwrap_or(0.0)
    };
    assert_eq!(delivered(&n0) + delivered(&n1), stored as f64);
}

fn start_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let url = pg().fresh_db();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_klav"));
    cmd.env("DATABASE_URL", &url)
        .env("JWT_SECRET", SECRET)
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let exited = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        child.try_wait().unwrap()
    });
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("klav started with {env:?}");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn a_missing_or_short_secret_or_a_bad_url_exits_2() {
    let url = ("KLAV_WEBHOOK_URL", "https://hooks.example.com/klav");
    let (code, err) = start_with(&[url]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("KLAV_WEBHOOK_SECRET") && err.contains("32 bytes"),
        "{err}"
    );
    let (code, err) = start_with(&[url, ("KLAV_WEBHOOK_SECRET", "too-short-a-secret")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("too-short-a-secret"),
        "the secret was printed: {err}"
    );
    let (code, err) = start_with(&[
        ("KLAV_WEBHOOK_URL", "ftp://hooks.example.com"),
        ("KLAV_WEBHOOK_SECRET", HOOK_SECRET),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KLAV_WEBHOOK_URL"), "{err}");
}
