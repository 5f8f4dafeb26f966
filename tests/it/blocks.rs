//! Blocks: `block`, `unblock`, `blocked_list`, and each effect of a block —
//! DMs refused with nothing stored or queued, the follow ended and refused,
//! presence hidden in events and lists — while room messages still flow and
//! the blocked user is never told.

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::friends::{body, follow, follow_ack, follows_rows, get_online, subscribe};

fn block(ws: &mut Ws, user: &str) -> Value {
    body(ws.request(json!({"type": "block", "user": user})))
}

fn unblock(ws: &mut Ws, user: &str) -> Value {
    body(ws.request(json!({"type": "unblock", "user": user})))
}

fn block_ack(user: &str, status: &str) -> Value {
    json!({"type": "block_ack", "user": user, "status": status})
}

fn unblock_ack(user: &str, status: &str) -> Value {
    json!({"type": "unblock_ack", "user": user, "status": status})
}

fn blocks_rows(s: &TestServer, blocker: &str, blocked: &str) -> i64 {
    s.count(
        "SELECT count(*) FROM klav_blocks WHERE blocker = $1 AND blocked = $2",
        &[&blocker, &blocked],
    )
}

fn dm(ws: &mut Ws, room: &str, to: &str, text: &str) -> Value {
    ws.request(json!({"type": "room_dm", "room_id": room, "to": to, "text": text}))
}

/// Whether `room_members` (asked by `ws`) shows `user` online.
fn member_online(ws: &mut Ws, room: &str, user: &str) -> bool {
    let r = ws.request(json!({"type": "room_members", "room_id": room}));
    let m = r["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .find(|m| m["username"] == user)
        .unwrap_or_else(|| panic!("{user} is a member: {r}"))
        .clone();
    m["online"].as_bool().unwrap()
}

#[test]
fn block_unblock_and_blocked_list_statuses() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.ws(&s.user_nick("bob", "Bobby"));
    let _carol = s.client("carol");

    assert_eq!(block(&mut alice, "alice"), block_ack("alice", "SELF"));
    assert_eq!(blocks_rows(&s, "alice", "alice"), 0);
    assert_eq!(
        block(&mut alice, "ghost"),
        block_ack("ghost", "NOT_REGISTERED")
    );
    assert_eq!(block(&mut alice, "bob"), block_ack("bob", "BLOCKED"));
    assert_eq!(blocks_rows(&s, "alice", "bob"), 1);
    assert_eq!(block(&mut alice, "bob"), block_ack("bob", "ALREADY"));
    assert_eq!(block(&mut alice, "carol"), block_ack("carol", "BLOCKED"));
    // The blocked user is never told.
    bob.silent();

    let list = body(alice.request(json!({"type": "blocked_list"})));
    assert_eq!(
        list,
        json!({"type": "blocked_list", "blocked": [
            {"username": "bob", "nickname": "Bobby"},
            {"username": "carol", "nickname": "carol"},
        ]})
    );
    // One-way: bob blocks nobody.
    let list = body(bob.request(json!({"type": "blocked_list"})));
    assert_eq!(list, json!({"type": "blocked_list", "blocked": []}));

    for req in [
        json!({"type": "block"}),
        json!({"type": "unblock", "user": ""}),
    ] {
        let e = alice.request(req.clone());
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("BAD_REQUEST")),
            "{req} -> {e}"
        );
    }

    assert_eq!(unblock(&mut alice, "bob"), unblock_ack("bob", "UNBLOCKED"));
    assert_eq!(blocks_rows(&s, "alice", "bob"), 0);
    assert_eq!(
        unblock(&mut alice, "bob"),
        unblock_ack("bob", "NOT_BLOCKED")
    );
    assert_eq!(
        unblock(&mut alice, "ghost"),
        unblock_ack("ghost", "NOT_BLOCKED")
    );
    bob.silent();
}

#[test]
fn blocks_per_user_are_capped() {
    let s = TestServer::with(|c| c.max_blocks_per_user = 2);
    let mut alice = s.client("alice");
    for u in ["u1", "u2", "u3"] {
        s.user(u);
    }
    assert_eq!(block(&mut alice, "u1"), block_ack("u1", "BLOCKED"));
    assert_eq!(block(&mut alice, "u2"), block_ack("u2", "BLOCKED"));
    let e = alice.request(json!({"type": "block", "user": "u3"}));
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("NOT_ALLOWED")),
        "{e}"
    );
    assert_eq!(blocks_rows(&s, "alice", "u3"), 0);
    // Someone blocked already is still ALREADY at the cap; unblocking frees a place.
    assert_eq!(block(&mut alice, "u2"), block_ack("u2", "ALREADY"));
    assert_eq!(unblock(&mut alice, "u1"), unblock_ack("u1", "UNBLOCKED"));
    assert_eq!(block(&mut alice, "u3"), block_ack("u3", "BLOCKED"));
}

#[test]
fn a_blocked_users_dms_are_refused_with_nothing_stored_or_queued() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let bob_token = s.user("bob");
    let mut bob = s.ws(&bob_token);
    let room = alice.create_room("blocky");
    alice.join(&room);
    bob.join(&room);
    alice.next_of("system");
    assert_eq!(block(&mut alice, "bob"), block_ack("bob", "BLOCKED"));

    let dms = |s: &TestServer| {
        s.count(
            "SELECT count(*) FROM chat_logs WHERE kind = 'dm' AND from_user = 'bob'",
            &[],
        )
    };
    let ack = dm(&mut bob, &room, "alice", "hello?");
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    assert_eq!(ack["to"], "alice", "{ack}");
    // With a client_id too (the idempotent path).
    let ack = bob.request(json!({"type": "room_dm", "room_id": room, "to": "alice",
                                 "text": "again", "client_id": "c-1"}));
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    alice.none_of("dm");
    assert_eq!(dms(&s), 0);

    // Room messages are not filtered, both ways.
    bob.send(json!({"type": "msg", "room_id": room, "text": "public"}));
    assert_eq!(alice.next_of("message")["text"], "public");
    assert_eq!(bob.next_of("message")["text"], "public");
    alice.send(json!({"type": "msg", "room_id": room, "text": "reply"}));
    assert_eq!(bob.next_of("message")["text"], "reply");
    assert_eq!(alice.next_of("message")["text"], "reply");
    // One-way: alice may still DM bob.
    let ack = dm(&mut alice, &room, "bob", "from the blocker");
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    assert_eq!(bob.next_of("dm")["text"], "from the blocker");

    // With alice offline nothing is queued for her either.
    alice.close();
    let ack = dm(&mut bob, &room, "alice", "while you were out");
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    assert_eq!(dms(&s), 0);
    assert_eq!(
        s.count(
            "SELECT count(*) FROM klav_offline_dms WHERE recipient = 'alice'",
            &[]
        ),
        0
    );

    // Unblocked: DMs flow again (queued while she is away).
    let mut alice = s.ws(&s.token("alice"));
    assert_eq!(unblock(&mut alice, "bob"), unblock_ack("bob", "UNBLOCKED"));
    let ack = dm(&mut bob, &room, "alice", "friends again");
    assert_eq!(ack["status"], "DELIVERED", "{ack}");
    assert_eq!(alice.next_of("dm")["text"], "friends again");
    assert_eq!(dms(&s), 1);
}

#[test]
fn a_block_ends_the_follow_and_refuses_new_ones() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    assert_eq!(follow(&mut bob, "alice"), follow_ack("alice", "FOLLOWED"));
    alice.next_of("notify_followed");
    // The blocker's own follow of the blocked user is not touched.
    assert_eq!(follow(&mut alice, "bob"), follow_ack("bob", "FOLLOWED"));
    bob.next_of("notify_followed");

    assert_eq!(block(&mut alice, "bob"), block_ack("bob", "BLOCKED"));
    assert_eq!(follows_rows(&s, "bob", "alice"), 0);
    assert_eq!(follows_rows(&s, "alice", "bob"), 1);
    bob.silent();
    let list = body(bob.request(json!({"type": "following_list"})));
    assert_eq!(list["following"], json!([]), "{list}");

    assert_eq!(follow(&mut bob, "alice"), follow_ack("alice", "BLOCKED"));
    assert_eq!(follows_rows(&s, "bob", "alice"), 0);
    alice.silent();

    assert_eq!(unblock(&mut alice, "bob"), unblock_ack("bob", "UNBLOCKED"));
    // Unblocking does not bring the follow back; following again works.
    assert_eq!(follows_rows(&s, "bob", "alice"), 0);
    assert_eq!(follow(&mut bob, "alice"), follow_ack("alice", "FOLLOWED"));
    assert_eq!(follows_rows(&s, "bob", "alice"), 1);
}

#[test]
fn a_blocker_appears_offline_to_the_blocked_user_only() {
    let s = TestServer::start();
    let alice_token = s.user("alice");
    let mut alice = s.ws(&alice_token);
    let mut bob = s.client("bob");
    let mut carol = s.client("carol");
    let room = alice.create_room("lobby");
    alice.join(&room);
    bob.join(&room);
    carol.join(&room);
    for u in [&mut bob, &mut carol] {
        assert_eq!(follow(u, "alice"), follow_ack("alice", "FOLLOWED"));
        assert_eq!(subscribe(u)["users"].as_array().unwrap().len(), 1);
    }
    alice.drain(QUIET);

    assert_eq!(block(&mut alice, "bob"), block_ack("bob", "BLOCKED"));
    assert!(!member_online(&mut bob, &room, "alice"));
    assert!(member_online(&mut carol, &room, "alice"));
    assert!(
        member_online(&mut bob, &room, "carol"),
        "only the blocker is hidden"
    );
    assert_eq!(get_online(&mut bob)["users"], json!([]));
    assert_eq!(get_online(&mut carol)["users"].as_array().unwrap().len(), 1);

    // Alice goes offline and comes back: carol hears it, bob never does.
    alice.close();
    carol.presence_of("alice", "offline", WAIT);
    let mut alice = s.ws(&alice_token);
    carol.presence_of("alice", "online", WAIT);
    bob.none_of("presence_change");
    assert!(!member_online(&mut bob, &room, "alice"));

    // Unblocked: visible again in the member list; following again restores
    // the friend presence.
    assert_eq!(unblock(&mut alice, "bob"), unblock_ack("bob", "UNBLOCKED"));
    assert!(member_online(&mut bob, &room, "alice"));
    assert_eq!(follow(&mut bob, "alice"), follow_ack("alice", "FOLLOWED"));
    let online = get_online(&mut bob);
    assert_eq!(online["users"][0]["username"], "alice", "{online}");
    alice.close();
    bob.presence_of("alice", "offline", WAIT);
}

#[test]
fn a_block_made_before_the_blocked_user_connects_is_loaded_with_the_session() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let bob_token = s.user("bob");
    assert_eq!(block(&mut alice, "bob"), block_ack("bob", "BLOCKED"));
    let room = alice.create_room("later");
    alice.join(&room);
    let mut bob = s.ws(&bob_token);
    bob.join(&room);
    assert!(!member_online(&mut bob, &room, "alice"));
    let ack = dm(&mut bob, &room, "alice", "hi");
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
}

#[test]
fn the_writer_refuses_what_memory_has_not_heard_of() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let room = alice.create_room("behind");
    alice.join(&room);
    bob.join(&room);
    // A block written behind the server's back (as another node's would be
    // before its note arrives): only the database knows it.
    s.db()
        .execute(
            "INSERT INTO klav_blocks (blocker, blocked) VALUES ('alice', 'bob')",
            &[],
        )
        .unwrap();
    let ack = dm(&mut bob, &room, "alice", "sneaky");
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    assert_eq!(
        s.count("SELECT count(*) FROM chat_logs WHERE kind = 'dm'", &[]),
        0
    );
    assert_eq!(follow(&mut bob, "alice"), follow_ack("alice", "BLOCKED"));
    assert_eq!(follows_rows(&s, "bob", "alice"), 0);
    alice.none_of("dm");
    // Offline: nothing queued either.
    alice.close();
    let ack = dm(&mut bob, &room, "alice", "queued?");
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    assert_eq!(
        s.count("SELECT count(*) FROM klav_offline_dms", &[])
            + s.count("SELECT count(*) FROM chat_logs WHERE kind = 'dm'", &[]),
        0
    );
}
