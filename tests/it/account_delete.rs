//! `POST /account/delete`: every status and error; what a deletion ends (the
//! sockets, logins, tokens, the name for new registrations, follows, offline
//! DMs, read markers, memberships with their `left` events, presence to
//! followers) and what it keeps (the entries, under `(deleted)`, or as
//! tombstones with `erase`); on one node and across two.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::harness::*;
use crate::revocation::{bearer_post, closed_with, upgrade_refused};
use crate::support::nodes::Nodes;

fn delete_account(addr: SocketAddr, token: &str, password: &str, erase: bool) -> Response {
    let body = json!({"password": password, "erase": erase}).to_string();
    bearer_post(addr, "/account/delete", Some(token), &body)
}

/// The items of a room's `history` as (from, from_nickname, text, deleted).
fn history(ws: &mut Ws, room: &str) -> Vec<(String, String, String, bool)> {
    let page = ws.request(json!({"type": "history", "room_id": room, "limit": 50}));
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .filter(|i| i["kind"] != "system")
        .map(|i| {
            let s = |f: &str| i[f].as_str().unwrap_or_default().to_string();
            (
                s("from"),
                s("from_nickname"),
                s("text"),
                i["deleted"] == true,
            )
        })
        .collect()
}

fn item(from: &str, nick: &str, text: &str, deleted: bool) -> (String, String, String, bool) {
    (from.into(), nick.into(), text.into(), deleted)
}

#[test]
fn account_delete_answers_every_status() {
    let s = TestServer::start();
    let token = s.user("alice");
    let addr = s.addr;

    let body = json!({"password": PASSWORD, "erase": false}).to_string();
    let r = bearer_post(addr, "/account/delete", None, &body);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = bearer_post(addr, "/account/delete", Some("x.y.z"), &body);
    assert_eq!(r.status, 401, "{}", r.body);
    for bad in [
        "nope",
        "{}",
        r#"{"password": "it-password"}"#,
        r#"{"password": "it-password", "erase": "yes"}"#,
        r#"{"password": 5, "erase": true}"#,
    ] {
        let r = bearer_post(addr, "/account/delete", Some(&token), bad);
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let r = delete_account(addr, &token, "wrong-password", false);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        s.login("alice", PASSWORD).status,
        200,
        "nothing was deleted"
    );
    assert_eq!(s.http("GET", "/account/delete", None).status, 405);

    let r = delete_account(addr, &token, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"status": "DELETED"}));
    // Gone: no second deletion, no login, no socket, no ticket.
    let r = delete_account(addr, &token, PASSWORD, false);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(s.login("alice", PASSWORD).status, 401);
    upgrade_refused(addr, &token, "user not registered");
    assert_eq!(ws_ticket_at(addr, Some(&token)).status, 401);
    // The name stays reserved, in any case.
    for name in ["alice", "Alice"] {
        let r = s.register(name, PASSWORD);
        assert_eq!(r.status, 409, "{name}: {}", r.body);
    }
    // The row stays, marked.
    let kept = s.count(
        "SELECT count(*) FROM users WHERE username = 'alice' AND klav_deleted_at IS NOT NULL",
        &[],
    );
    assert_eq!(kept, 1);
}

#[test]
fn a_deleted_account_leaves_its_rooms_and_keeps_its_entries_under_deleted() {
    let s = TestServer::start();
    let ta = s.user_nick("alice", "Ally");
    let mut a = s.ws(&ta);
    let mut a2 = s.ws(&ta);
    let mut bob = s.client("bob");
    let carol = s.user("carol");
    let room = a.create_room("lobby");
    a.join(&room);
    bob.join(&room);
    a.next_of("system");
    a.request(json!({"type": "msg", "room_id": room, "text": "hello from alice"}));
    bob.next_of("message");
    // A DM from bob to alice and one from alice to carol (offline: queued).
    let dm = bob.request(json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "hi"}));
    assert_eq!(dm["status"], "DELIVERED", "{dm}");
    a.next_of("dm");
    {
        let mut c = s.ws(&carol);
        c.join(&room);
    }
    bob.next_of("system");
    a.drain(QUIET);
    let q = a.request(json!({"type": "room_dm", "room_id": room, "to": "carol", "text": "later"}));
    assert_eq!(q["status"], "QUEUED", "{q}");
    // Bob follows alice and watches her presence; alice follows bob.
    let f = bob.request(json!({"type": "friend_follow", "to": "alice"}));
    assert_eq!(f["status"], "FOLLOWED", "{f}");
    let f = a.request(json!({"type": "friend_follow", "to": "bob"}));
    assert_eq!(f["status"], "FOLLOWED", "{f}");
    bob.request(json!({"type": "presence_friends_subscribe"}));
    let last = a.request(json!({"type": "msg", "room_id": room, "text": "bye"}));
    a.request(json!({"type": "read", "room_id": room, "id": last["id"]}));
    // Bob's history is cached now.
    let before = history(&mut bob, &room);
    assert_eq!(before[0], item("alice", "Ally", "hello from alice", false));
    bob.drain(QUIET);

    let r = delete_account(s.addr, &ta, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.body);
    closed_with(&mut a, "account deleted");
    closed_with(&mut a2, "account deleted");

    // Bob: alice left the room and went offline.
    let left = bob.next_of("system");
    assert_eq!(
        (
            left["event"].as_str(),
            left["user"].as_str(),
            left["room"].as_str()
        ),
        (Some("left"), Some("alice"), Some(room.as_str())),
        "{left}"
    );
    bob.presence_of("alice", "offline", WAIT);
    // Her entries stay, under (deleted), text kept; the cache did not keep
    // the old nickname.
    let after = history(&mut bob, &room);
    assert_eq!(
        after,
        vec![
            item("alice", "(deleted)", "hello from alice", false),
            item("bob", "bob", "hi", false),
            item("alice", "(deleted)", "bye", false),
        ]
    );
    // Follows both ways, memberships, markers and queued DMs are gone.
    let following = bob.request(json!({"type": "following_list"}));
    assert_eq!(following["following"], json!([]), "{following}");
    let followers = bob.request(json!({"type": "followers_list"}));
    assert_eq!(followers["followers"], json!([]), "{followers}");
    for table in [
        "follows WHERE follower_username = 'alice' OR followee_username = 'alice'",
        "room_members WHERE username = 'alice'",
        "klav_read_markers WHERE username = 'alice'",
        "klav_offline_dms WHERE recipient = 'alice' OR from_user = 'alice'",
    ] {
        assert_eq!(
            s.count(&format!("SELECT count(*) FROM {table}"), &[]),
            0,
            "{table}"
        );
    }
    let mut c = s.ws(&carol);
    c.none_of("offline_dm");
    // Bob's messages reach the room without her.
    let m = bob.request(json!({"type": "msg", "room_id": room, "text": "still here"}));
    assert_eq!(m["type"], "message", "{m}");
    let members = bob.request(json!({"type": "room_members", "room_id": room}));
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bob", "carol"], "{members}");
}

#[test]
fn deleting_with_erase_leaves_tombstones() {
    let s = TestServer::start();
    let ta = s.user("alice");
    let mut a = s.ws(&ta);
    let mut bob = s.client("bob");
    let room = a.create_room("erased");
    a.join(&room);
    bob.join(&room);
    a.request(json!({"type": "msg", "room_id": room, "text": "secret"}));
    a.request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst"}));
    bob.request(json!({"type": "msg", "room_id": room, "text": "bob's own"}));
    assert_eq!(history(&mut bob, &room).len(), 3);

    let r = delete_account(s.addr, &ta, PASSWORD, true);
    assert_eq!(r.status, 200, "{}", r.body);
    closed_with(&mut a, "account deleted");
    let left = bob.next_of("system");
    assert_eq!(left["event"], "left", "{left}");
    assert_eq!(
        history(&mut bob, &room),
        vec![
            item("alice", "(deleted)", "", true),
            item("alice", "(deleted)", "", true),
            item("bob", "bob", "bob's own", false),
        ]
    );
    let kept = s.count(
        "SELECT count(*) FROM chat_logs WHERE from_user = 'alice' AND text <> ''",
        &[],
    );
    assert_eq!(kept, 0, "every msg and dm of alice is a tombstone");
    // The system entries of the room stay as they were.
    let system = s.count(
        "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND kind = 'system'",
        &[&room],
    );
    assert_eq!(system, 4, "created, two joins, the leave");
}

#[test]
fn a_deletion_on_one_node_reaches_every_node() {
    let c = Nodes::start(2);
    let alice = c.user("alice");
    let bob = c.user("bob");
    let mut a0 = c.ws(0, &alice);
    let mut a1 = c.ws(1, &alice);
    let mut b1 = c.ws(1, &bob);
    let room = a0.create_room("across");
    a0.join(&room);
    b1.join(&room);
    a0.request(json!({"type": "msg", "room_id": room, "text": "from n0"}));
    b1.next_of("message");
    let f = b1.request(json!({"type": "friend_follow", "to": "alice"}));
    assert_eq!(f["status"], "FOLLOWED", "{f}");
    b1.request(json!({"type": "presence_friends_subscribe"}));
    // n1's cache holds the room.
    let h = history(&mut b1, &room);
    assert_eq!(h, vec![item("alice", "alice-nick", "from n0", false)]);
    b1.drain(QUIET);

    // The nodes' users have the legacy password `x`.
    let r = delete_account(c.addr(0), &alice, "x", false);
    assert_eq!(r.status, 200, "{}", r.body);
    closed_with(&mut a0, "account deleted");
    closed_with(&mut a1, "account deleted");
    let left = b1.next_of("system");
    assert_eq!(
        (left["event"].as_str(), left["user"].as_str()),
        (Some("left"), Some("alice")),
        "{left}"
    );
    b1.presence_of("alice", "offline", WAIT);
    assert_eq!(
        history(&mut b1, &room),
        vec![item("alice", "(deleted)", "from n0", false)]
    );
    let following = b1.request(json!({"type": "following_list"}));
    assert_eq!(following["following"], json!([]), "{following}");
    for node in 0..2 {
        upgrade_refused(c.addr(node), &alice, "user not registered");
        let login = http_to(
            c.addr(node),
            "POST",
            "/login",
            Some(&json!({"username": "alice", "password": "x"}).to_string()),
        );
        assert_eq!(login.status, 401, "n{node}: {}", login.body);
    }
    let v: Value = b1.request(json!({"type": "msg", "room_id": room, "text": "bob only"}));
    assert_eq!(v["type"], "message", "{v}");
}

#[test]
fn a_deleted_owner_passes_their_rooms_on_and_their_invitations_go() {
    let s = TestServer::start();
    let token = s.user("alice");
    let mut alice = s.ws(&token);
    let mut bob = s.client("bob");
    let mut carl = s.client("carl");
    // A room alice owns and belongs to (with bob), one she owns without
    // belonging to it (with carl), and an invitation of carl's to her.
    alice.send(json!({"type": "join", "room": "Alices"}));
    let owned = alice.expect("system")["room"].as_str().unwrap().to_string();
    bob.join(&owned);
    alice.expect("system");
    let created = alice.request(json!({"type": "create_room", "name": "Outside"}));
    let outside = created["room_id"].as_str().unwrap().to_string();
    carl.join(&outside);
    let secret = crate::support::owned_rooms::private_room(&mut carl, "Secret");
    let ack = carl.request(json!({"type": "invite", "room_id": secret, "user": "alice"}));
    assert_eq!(ack["status"], "INVITED");
    alice.expect("invited");

    let r = delete_account(s.addr, &token, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.body);
    let left = bob.expect("system");
    assert_eq!(
        (left["event"].as_str(), left["user"].as_str()),
        (Some("left"), Some("alice"))
    );
    let ev = bob.expect("role_changed");
    assert_eq!(ev["user"], "bob");
    assert_eq!(ev["role"], "owner");
    assert_eq!(ev["by"], Value::Null);
    let info = bob.request(json!({"type": "room_info", "room_id": owned}));
    assert_eq!(info["owner"], "bob");
    let ev = carl.expect("role_changed");
    assert_eq!(
        (
            ev["room"].as_str(),
            ev["user"].as_str(),
            ev["role"].as_str()
        ),
        (Some(outside.as_str()), Some("carl"), Some("owner"))
    );
    let info = carl.request(json!({"type": "room_info", "room_id": outside}));
    assert_eq!(
        info["owner"], "carl",
        "the room she owned outside passed on too"
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM klav_room_invites WHERE username = 'alice'",
            &[]
        ),
        0
    );
    // Nothing else reached the others.
    carl.silent();
    bob.silent();
}
