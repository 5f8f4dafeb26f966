//! Webhooks on one node: every event type with its data and a valid
//! signature; a room's messages delivered once each, in the room's order; a
//! receiver that is down gets everything, in order, once it is back;
//! `dm.queued` only for a recipient connected nowhere; nothing written when
//! webhooks are off; the `/metrics` lines.

use std::collections::HashSet;
use std::time::Duration;

use klav::webhooks::WebhookConfig;
use serde_json::{json, Value};

use crate::harness::*;
use crate::revocation::bearer_post;
use crate::support::api::{api, api_key, api_ok};
use crate::support::owned_rooms::*;
use crate::support::receiver::*;

/// How long a test waits for deliveries that need no retry.
const DELIVERY: Duration = Duration::from_secs(30);

/// A server delivering to `r`, with no request rate in the way.
pub fn hooked(r: &Receiver) -> TestServer {
    TestServer::with(|c| {
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
        c.webhook = Some(hook_config(r));
    })
}

pub fn hook_config(r: &Receiver) -> WebhookConfig {
    WebhookConfig {
        url: r.url(),
        secret: HOOK_SECRET.as_bytes().to_vec(),
        threads: 2,
    }
}

/// The `message_id`s of `message.created` events, in the order given.
pub fn message_ids(events: &[Received]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.body["data"]["message_id"].as_i64().unwrap())
        .collect()
}

/// The ids of a room's messages as stored, in order.
pub fn stored_ids(s: &TestServer, room: &str) -> Vec<i64> {
    stored_ids_in(&s.db_url, room)
}

/// [`stored_ids`] in the database at `db`.
pub fn stored_ids_in(db: &str, room: &str) -> Vec<i64> {
    connect_db(db)
        .query(
            "SELECT id FROM chat_logs WHERE room_id = $1 AND kind = 'msg' ORDER BY id",
            &[&room],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Reads a sample of `/metrics` until `ok` holds (within a minute: gauges
/// are read every few seconds, retries wait out backoffs); a sample not on
/// the page yet (no attempt of that status) counts as 0.
pub fn wait_sample(addr: std::net::SocketAddr, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    eventually(Duration::from_secs(60), Duration::from_millis(100), || {
        let v = sample(&metrics_text(addr), name).unwrap_or(0.0) as u64;
        if ok(v) {
            Ok(v)
        } else {
            Err(format!("{name} stayed at {v}"))
        }
    })
}

fn evt_number(e: &Received) -> i64 {
    e.id().strip_prefix("evt_").unwrap().parse().unwrap()
}

#[test]
fn events_are_signed_and_carry_their_data() {
    let r = Receiver::start();
    let s = hooked(&r);
    let mut alice = s.client("alice");
    let room = alice.create_room("Hall");
    alice.join(&room);
    let id = post(&mut alice, &room, "hello");

    let msg = &r.wait_for("message.created", 1, DELIVERY)[0];
    assert!(
        msg.signed,
        "bad signature {:?} for {}",
        msg.signature, msg.raw
    );
    assert!(msg.signature.starts_with("t="), "{}", msg.signature);
    let body = &msg.body;
    let keys: HashSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, HashSet::from(["id", "type", "ts", "data"]), "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("evt_"), "{body}");
    assert!(
        klav::time::parse_iso(body["ts"].as_str().unwrap()).is_some(),
        "{body}"
    );
    let data = &body["data"];
    assert_eq!(data["room_id"], room.as_str());
    assert_eq!(data["message_id"], id);
    assert_eq!(data["from"], "alice");
    assert_eq!(data["from_nickname"], "alice");
    assert_eq!(data["kind"], "msg");
    assert_eq!(data["text"], "hello");
    assert!(data["client_id"].is_null());

    let reg = &r.wait_for("user.registered", 1, DELIVERY)[0];
    assert!(reg.signed);
    assert_eq!(
        reg.body["data"],
        json!({"user": "alice", "nickname": "alice"})
    );
    let joined = &r.wait_for("room.member_joined", 1, DELIVERY)[0];
    assert!(joined.signed);
    assert_eq!(
        joined.body["data"],
        json!({"room_id": room, "user": "alice", "user_nickname": "alice"})
    );
    // The room's events in the room's order: the join before the message.
    assert!(evt_number(joined) < evt_number(msg));
    // Nothing else was reported: creating a room is not an event.
    let kinds: HashSet<String> = r.got().iter().map(|e| e.kind().to_string()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

#[test]
fn a_thousand_messages_arrive_once_each_in_room_order() {
    let r = Receiver::start();
    let s = hooked(&r);
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let (other, mut o) = room_named(&s, "Other", &["carl"]);
    // Two rooms at once, pipelined: the writer batches them together.
    let reqs = |room: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"type": "msg", "room_id": room, "text": format!("m{i}")}))
            .collect()
    };
    c[0].pipeline(reqs(&room, 750));
    o[0].pipeline(reqs(&other, 250));
    let got = r.wait_for("message.created", 1000, Duration::from_secs(120));
    assert_eq!(
        r.of("message.created").len(),
        1000,
        "an event arrived twice"
    );
    assert!(got.iter().all(|e| e.signed));
    for room in [&room, &other] {
        let arrived: Vec<Received> = got
            .iter()
            .filter(|e| e.body["data"]["room_id"] == room.as_str())
            .cloned()
            .collect();
        assert_eq!(message_ids(&arrived), stored_ids(&s, room), "room {room}");
        let evts: Vec<i64> = arrived.iter().map(evt_number).collect();
        assert!(
            evts.windows(2).all(|w| w[0] < w[1]),
            "event ids out of order"
        );
    }
}

#[test]
fn a_receiver_down_for_ten_seconds_gets_everything_in_order() {
    let mut r = Receiver::start();
    let s = hooked(&r);
    let (room, mut c) = room_with(&s, &["alice"]);
    r.wait_for("room.member_joined", 1, DELIVERY);
    r.go_down();
    for i in 0..30 {
        post(&mut c[0], &room, &format!("while down {i}"));
    }
    // Attempts fail while it is down (counted by status), none lost.
    wait_sample(
        s.addr,
        "klav_webhook_failures_total{status=\"connect\"}",
        |n| n > 0,
    );
    std::thread::sleep(Duration::from_secs(10));
    r.come_back();
    let got = r.wait_for("message.created", 30, Duration::from_secs(60));
    assert_eq!(message_ids(&got), stored_ids(&s, &room));
    assert!(got.iter().all(|e| e.signed));
    // Each retry was signed anew: a fresh `t`, still within the receiver's window.
    wait_sample(s.addr, "klav_webhook_pending", |n| n == 0);
    let attempts: i64 = s.count(
        "SELECT max(attempts)::int8 FROM klav_webhook_outbox WHERE type = 'message.created'",
        &[],
    );
    assert!(attempts >= 1);
}

#[test]
fn dm_queued_only_when_the_recipient_is_connected_nowhere() {
    let r = Receiver::start();
    let s = hooked(&r);
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let bob = c.pop().unwrap();
    bob.close();
    let ack =
        c[0].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "ping"}));
    assert_eq!(ack["status"], "QUEUED", "{ack}");
    let q = &r.wait_for("dm.queued", 1, DELIVERY)[0];
    assert!(q.signed);
    let data = &q.body["data"];
    assert_eq!(data["recipient"], "bob");
    assert_eq!(data["from"], "alice");
    assert_eq!(data["from_nickname"], "alice");
    assert_eq!(data["room_id"], room.as_str());
    assert_eq!(data["text"], "ping");
    assert!(data["message_id"].as_i64().unwrap() > 0);
    // A DM is not a room message.
    assert!(r.of("message.created").is_empty());

    // Online: delivered live, no event.
    let mut bob = s.ws(&s.token("bob"));
    bob.expect("offline_dm");
    let ack =
        c[0].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "live"}));
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    bob.next_of("dm");
    // The events are written with what they report: none was.
    let queued = s.count(
        "SELECT count(*) FROM klav_webhook_outbox WHERE type = 'dm.queued'",
        &[],
    );
    assert_eq!(queued, 1);
    post(&mut c[0], &room, "after");
    r.wait_for("message.created", 1, DELIVERY);
    std::thread::sleep(QUIET);
    assert_eq!(r.of("dm.queued").len(), 1);
}

#[test]
fn members_joining_leaving_kicked_and_banned() {
    let r = Receiver::start();
    let s = hooked(&r);
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl", "dora"]);
    let joined = r.wait_for("room.member_joined", 4, DELIVERY);
    let users: Vec<&str> = joined
        .iter()
        .map(|e| e.body["data"]["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob", "carl", "dora"]);

    let ack = c[1].request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["type"], "leave_ack", "{ack}");
    let kick = c[0].request(json!({"type": "kick", "room_id": room, "user": "carl"}));
    assert_eq!(kick["status"], "KICKED", "{kick}");
    let ban = c[0].request(json!({"type": "ban", "room_id": room, "user": "dora"}));
    assert_eq!(ban["status"], "BANNED", "{ban}");
    let left = r.wait_for("room.member_left", 3, DELIVERY);
    let data: Vec<Value> = left.iter().map(|e| e.body["data"].clone()).collect();
    let left_as = |user: &str, kicked: bool, banned: bool, by: Value| {
        json!({"room_id": room, "user": user, "user_nickname": user,
               "kicked": kicked, "banned": banned, "by": by})
    };
    assert_eq!(
        data,
        [
            left_as("bob", false, false, Value::Null),
            left_as("carl", true, false, json!("alice")),
            left_as("dora", false, true, json!("alice")),
        ]
    );
    assert!(left.iter().all(|e| e.signed));
}

#[test]
fn registered_and_deleted_users() {
    let r = Receiver::start();
    let s = hooked(&r);
    let reg = s.post(
        "/register",
        json!({"username": "erin", "password": PASSWORD, "nickname": "Erin E"}),
    );
    assert_eq!(reg.status, 200, "{}", reg.body);
    let got = r.wait_for("user.registered", 1, DELIVERY);
    assert_eq!(
        got[0].body["data"],
        json!({"user": "erin", "nickname": "Erin E"})
    );
    // A name taken is no new account.
    assert_eq!(s.register("erin", PASSWORD).json()["status"], "ALREADY");
    let token = s.token("erin");
    let body = json!({"password": PASSWORD, "erase": true}).to_string();
    let del = bearer_post(s.addr, "/account/delete", Some(&token), &body);
    assert_eq!(del.status, 200, "{}", del.body);
    let got = r.wait_for("user.deleted", 1, DELIVERY);
    assert_eq!(got[0].body["data"], json!({"user": "erin", "erased": true}));
    assert!(evt_number(&got[0]) > evt_number(&r.of("user.registered")[0]));
    std::thread::sleep(QUIET);
    assert_eq!(r.of("user.registered").len(), 1);
}

/// What a backend does through the server API is reported like what users
/// do: an account it creates, a member it adds or bans, a bot's post and an
/// announcement (as `kind` `system`), each once; an idempotent retry of a
/// post is not a second event.
#[test]
fn server_api_users_members_and_posts_are_reported() {
    let r = Receiver::start();
    let s = hooked(&r);
    let key = api_key(&s.db_url, "backend");
    let a = s.addr;
    api_ok(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "bot", "nickname": "Robo"})),
        201,
    );
    api_ok(
        a,
        &key,
        "POST",
        "/api/v1/users",
        Some(json!({"username": "gus"})),
        201,
    );
    let room = api_ok(
        a,
        &key,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "News", "owner": "bot"})),
        201,
    )["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    for user in ["bot", "gus"] {
        let member = format!("/api/v1/rooms/{room}/members/{user}");
        api_ok(a, &key, "PUT", &member, None, 200);
    }
    let url = format!("/api/v1/rooms/{room}/messages");
    let post = json!({"from": "bot", "text": "build green", "client_id": "b-1"});
    let bot = api_ok(a, &key, "POST", &url, Some(post.clone()), 201);
    let again = api_ok(a, &key, "POST", &url, Some(post), 200);
    assert_eq!(again["id"], bot["id"], "{again}");
    let notice = api_ok(
        a,
        &key,
        "POST",
        &url,
        Some(json!({"text": "maintenance at 9"})),
        201,
    );

    let regs = r.wait_for("user.registered", 2, DELIVERY);
    // Two users, two order keys: no order between them.
    let mut users: Vec<&str> = regs
        .iter()
        .map(|e| e.body["data"]["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["bot", "gus"]);
    let msgs = r.wait_for("message.created", 2, DELIVERY);
    let seen: Vec<(Value, Value, Value, Value)> = msgs
        .iter()
        .map(|e| {
            let d = &e.body["data"];
            (
                d["message_id"].clone(),
                d["kind"].clone(),
                d["from"].clone(),
                d["text"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                bot["id"].clone(),
                json!("msg"),
                json!("bot"),
                json!("build green")
            ),
            (
                notice["id"].clone(),
                json!("system"),
                json!("system"),
                json!("maintenance at 9")
            ),
        ]
    );
    let joined = r.wait_for("room.member_joined", 2, DELIVERY);
    let members: Vec<&str> = joined
        .iter()
        .map(|e| e.body["data"]["user"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["bot", "gus"]);

    let ban = format!("/api/v1/rooms/{room}/members/gus?ban=true");
    let out = api(a, Some(&key), "DELETE", &ban, None);
    assert!(out.status == 200 || out.status == 204, "{}", out.body);
    let left = r.wait_for("room.member_left", 1, DELIVERY);
    assert_eq!(left[0].body["data"]["user"], "gus");
    assert_eq!(left[0].body["data"]["banned"], true);
    std::thread::sleep(QUIET);
    assert_eq!(
        r.of("message.created").len(),
        2,
        "the retried post was reported again"
    );
    assert_eq!(r.of("user.registered").len(), 2);
}

#[test]
fn nothing_is_written_when_webhooks_are_off() {
    let s = unthrottled_server();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    post(&mut c[0], &room, "hello");
    c[1].request(json!({"type": "leave", "room_id": room}));
    assert_eq!(s.count("SELECT count(*) FROM klav_webhook_outbox", &[]), 0);
    let text = metrics_text(s.addr);
    assert!(!text.contains("klav_webhook"), "{text}");
}

#[test]
fn metrics_show_pending_deliveries_and_failures() {
    let mut r = Receiver::start();
    let s = hooked(&r);
    let (room, mut c) = room_with(&s, &["alice"]);
    r.wait_for("room.member_joined", 1, DELIVERY);
    let text = metrics_text(s.addr);
    for line in [
        "# TYPE klav_webhook_pending gauge",
        "# TYPE klav_webhook_oldest_pending_seconds gauge",
        "# TYPE klav_webhook_dead_letters gauge",
        "# TYPE klav_webhook_deliveries_total counter",
        "# TYPE klav_webhook_failures_total counter",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    wait_sample(
        s.addr,
        "klav_webhook_deliveries_total{status=\"200\"}",
        |n| n >= 2,
    );
    r.go_down();
    post(&mut c[0], &room, "pending");
    wait_sample(s.addr, "klav_webhook_pending", |n| n == 1);
    wait_sample(s.addr, "klav_webhook_oldest_pending_seconds", |n| n >= 1);
    wait_sample(
        s.addr,
        "klav_webhook_failures_total{status=\"connect\"}",
        |n| n >= 1,
    );
    r.come_back();
    wait_sample(s.addr, "klav_webhook_pending", |n| n == 0);
}

/// `klav webhooks …` on the test's database; (exit code, stdout, stderr).
pub fn webhooks_cli(db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klav"))
        .arg("webhooks")
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dead_letters_are_listed_and_retried() {
    let mut r = Receiver::start();
    let s = hooked(&r);
    let (room, mut c) = room_with(&s, &["alice"]);
    r.wait_for("room.member_joined", 1, DELIVERY);
    r.go_down();
    let id = post(&mut c[0], &room, "doomed");
    // Its first attempt fails; then it is past its 24 hours, as if they had gone by.
    let mut db = s.db();
    eventually(WAIT, Duration::from_millis(50), || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM klav_webhook_outbox WHERE attempts > 0 AND delivered_at IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 1 {
            Ok(())
        } else {
            Err("no failed attempt yet".to_string())
        }
    });
    db.execute(
        "UPDATE klav_webhook_outbox SET give_up_at = now() - interval '1 second' \
         WHERE delivered_at IS NULL",
        &[],
    )
    .unwrap();
    wait_sample(s.addr, "klav_webhook_dead_letters", |n| n == 1);
    assert_eq!(metric(s.addr, "klav_webhook_pending"), 0);
    let evt: i64 = db
        .query_one(
            "SELECT id FROM klav_webhook_outbox WHERE dead_at IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);

    let (code, out, _) = webhooks_cli(&s.db_url, &["failed"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("1 dead-lettered events"), "{out}");
    assert!(
        out.contains(&format!("evt_{evt}\tmessage.created")),
        "{out}"
    );
    assert!(out.contains("attempts"), "{out}");

    let (code, _, err) = webhooks_cli(&s.db_url, &["retry", "evt_999999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("evt_999999999"), "{err}");
    let (code, _, err) = webhooks_cli(&s.db_url, &["retry", "nonsense"]);
    assert_eq!(code, 2, "{err}");

    r.come_back();
    let (code, out, _) = webhooks_cli(&s.db_url, &["retry", &format!("evt_{evt}")]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "1 events due again");
    let got = r.wait_for("message.created", 1, DELIVERY);
    assert_eq!(message_ids(&got), [id]);
    assert!(got[0].signed);
    wait_sample(s.addr, "klav_webhook_dead_letters", |n| n == 0);
    let (code, out, _) = webhooks_cli(&s.db_url, &["retry", "--all"]);
    assert_eq!((code, out.trim()), (0, "0 events due again"));
    let (_, out, _) = webhooks_cli(&s.db_url, &["failed"]);
    assert_eq!(out.trim(), "0 dead-lettered events");
}
