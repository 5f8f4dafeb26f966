//! The database side: the embedded cluster as the binary runs it, upgrading the
//! old server's schema in place, and PostgreSQL going away under a running server.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use klav::db::embedded::Cluster;
use serde_json::json;

use crate::harness::*;

fn post(addr: SocketAddr, path: &str, body: serde_json::Value) -> Response {
    use std::io::Write;
    let mut s = connect(addr);
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s).unwrap()
}

#[test]
fn embedded_cluster_lifecycle() {
    let dir = std::env::temp_dir().join(format!("klav-it-emb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    watchdog(&dir);
    let mut klav = spawn_klav(&dir, &[]);
    let addr = klav.addr;
    assert!(
        dir.join("pg/PG_VERSION").exists(),
        "cluster created on first start"
    );
    let r = post(
        addr,
        "/register",
        json!({"username": "keeper", "password": PASSWORD}),
    );
    assert_eq!(r.json()["status"], "CREATED");

    // A second klav on the same directory fails clearly and leaves the first alone.
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env_remove("DATABASE_URL")
        .env("KLAV_DATA_DIR", &dir)
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another klav"), "{err}");
    assert_eq!(
        post(
            addr,
            "/login",
            json!({"username": "keeper", "password": PASSWORD})
        )
        .status,
        200
    );

    // SIGTERM: exit 0 and the cluster is stopped.
    let status = klav.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.join("pg/postmaster.pid").exists(),
        "PostgreSQL stopped with klav"
    );

    // Data kept across restarts.
    let mut klav = spawn_klav(&dir, &[]);
    let addr = klav.addr;
    assert_eq!(
        post(
            addr,
            "/login",
            json!({"username": "keeper", "password": PASSWORD})
        )
        .status,
        200
    );
    assert!(klav.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_postgres_binaries_exit_2_with_advice() {
    let dir = std::env::temp_dir().join(format!("klav-it-nobin-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env_remove("DATABASE_URL")
        .env("KLAV_DATA_DIR", &dir)
        .env("KLAV_PG_BIN", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apt-get install postgresql") && err.contains("DATABASE_URL"),
        "{err}"
    );
}

#[test]
fn bad_configuration_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env("PORT", "seventy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env("DATABASE_URL", "mysql://x@y/z")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The old server's tables, as it created them (serial ids, no defaults for
/// timestamps, plain-text passwords).
const OLD_SCHEMA: &str = "
CREATE TABLE users (username varchar(100) PRIMARY KEY, password varchar(255) NOT NULL,
    nickname varchar(100) DEFAULT '', extra text DEFAULT '', created_at timestamptz);
CREATE TABLE rooms (id varchar(20) PRIMARY KEY, name varchar(255) NOT NULL, created_at timestamptz,
    last_message_text text, last_message_from varchar(100), last_message_kind varchar(20),
    last_message_ts timestamptz);
CREATE INDEX ix_rooms_name ON rooms (name);
CREATE TABLE room_members (id serial PRIMARY KEY,
    room_id varchar(20) REFERENCES rooms(id) ON DELETE CASCADE,
    username varchar(100) REFERENCES users(username) ON DELETE CASCADE,
    joined_at timestamptz, UNIQUE (room_id, username));
CREATE INDEX ix_room_members_username ON room_members (username);
CREATE TABLE chat_logs (id serial PRIMARY KEY, room_id varchar(20) REFERENCES rooms(id) ON DELETE CASCADE,
    ts timestamptz, kind varchar(20), from_user varchar(100), from_nickname varchar(100),
    to_user varchar(100), text text);
CREATE INDEX ix_chat_logs_room_ts ON chat_logs (room_id, ts);
CREATE TABLE follows (id serial PRIMARY KEY,
    follower_username varchar(100) REFERENCES users(username) ON DELETE CASCADE,
    followee_username varchar(100) REFERENCES users(username) ON DELETE CASCADE,
    created_at timestamptz, UNIQUE (follower_username, followee_username));
CREATE INDEX ix_follows_followee ON follows (followee_username);

INSERT INTO users VALUES ('mina', 'plain-pw', '미나', '{}', '2025-01-01T00:00:00Z'),
                         ('joon', 'joonpw', '준', '', '2025-01-01T00:00:00Z');
INSERT INTO rooms VALUES ('r_0a0b0c0d', '옛방', '2025-01-01T00:00:00Z', 'hi', 'joon', 'msg', '2025-01-02T00:00:00Z');
INSERT INTO room_members (room_id, username, joined_at) VALUES ('r_0a0b0c0d', 'mina', now()), ('r_0a0b0c0d', 'joon', now());
INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) VALUES
  ('r_0a0b0c0d', '2025-01-01T00:00:01Z', 'system', 'system', 'system', NULL, '미나 님이 입장하셨습니다'),
  ('r_0a0b0c0d', '2025-01-01T00:00:02Z', 'dm', 'joon', '준', 'mina', 'secret'),
  ('r_0a0b0c0d', '2025-01-02T00:00:00Z', 'msg', 'joon', '준', NULL, 'hi');
INSERT INTO follows (follower_username, followee_username, created_at) VALUES ('mina', 'joon', now());
";

#[test]
fn old_schema_is_upgraded_in_place() {
    let url = pg().empty_db();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.batch_execute(OLD_SCHEMA).unwrap();
    let s = TestServer::on_db(&url, |_| {});
    // Nothing lost; ids widened.
    let ty: String = db
        .query_one(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'chat_logs' AND column_name = 'id'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ty, "bigint");
    let n: i64 = db
        .query_one("SELECT count(*) FROM chat_logs", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    // The plain-text user logs in and sees the old data through the protocol.
    let r = s.login("mina", "plain-pw");
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let mut ws = s.ws(&token);
    let my = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!(["r_0a0b0c0d"]));
    assert_eq!(my["rooms_info"][0]["last"]["text"], "hi");
    let h = ws.request(json!({"type": "history", "room_id": "r_0a0b0c0d"}));
    let texts: Vec<&str> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["미나 님이 입장하셨습니다", "secret", "hi"]);
    let f = ws.request(json!({"type": "following_list"}));
    assert_eq!(
        f["following"],
        json!([{"username": "joon", "nickname": "준"}])
    );
    // New writes work on the upgraded tables (the old tables had no defaults).
    ws.send(json!({"type": "msg", "room_id": "r_0a0b0c0d", "text": "new"}));
    let ev = ws.expect("message");
    assert!(ev["id"].as_i64().unwrap() > 3);
    // Applying the schema again changes nothing.
    drop(ws);
    let url = s.stop();
    let s = TestServer::on_db(&url, |_| {});
    let n: i64 = db
        .query_one("SELECT count(*) FROM chat_logs", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    let v: i32 = db
        .query_one("SELECT version FROM klav_schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 4);
    drop(s);
}

/// PostgreSQL stops under a running server: health and login answer 503 quickly,
/// requests get UNAVAILABLE; once it is back, everything works without a restart.
#[test]
fn postgres_outage_and_recovery() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        // This test needs a cluster of its own to stop.
        return;
    }
    let dir = std::env::temp_dir().join(format!("klav-it-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    watchdog(&dir);
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
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s.http("GET", "/health", None);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health did not recover: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
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
