//! The old server's tables upgraded in place at start: nothing lost, ids
//! widened, plain-text passwords still logging in, and the schema applied again
//! changing nothing.

use serde_json::json;

use crate::harness::*;

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
    let mut db = connect_db(&url);
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
    let mut ws = s.ws(&s.login_token("mina", "plain-pw"));
    let my = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"], json!(["r_0a0b0c0d"]));
    assert_eq!(my["rooms_info"][0]["last"]["text"], "hi");
    let h = ws.request(json!({"type": "history", "room_id": "r_0a0b0c0d"}));
    let texts: Vec<&str> = item_strs(&h, "text");
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
    assert_eq!(v, 5);
    drop(s);
}
