//! Invitations (v3): `invite` and its statuses, the `invited` event (who gets
//! it and who does not), `my_invites`, accepting with `join`, `decline_invite`,
//! expiry, and the bound on memberships and invitations together.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::owned_rooms::*;

fn invite(ws: &mut Ws, room: &str, user: &str) -> String {
    let ack = ws.request(json!({"type": "invite", "room_id": room, "user": user}));
    assert_eq!(ack["type"], "invite_ack", "{ack}");
    assert_eq!(
        (ack["room"].as_str(), ack["user"].as_str()),
        (Some(room), Some(user))
    );
    ack["status"].as_str().unwrap().to_string()
}

fn invites(s: &TestServer, room: &str, user: &str) -> i64 {
    s.count(
        "SELECT count(*) FROM klav_room_invites WHERE room_id = $1 AND username = $2",
        &[&room, &user],
    )
}

#[test]
fn invitations_to_a_private_room_and_their_acceptance() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let mut bob2 = s.client("bob");
    let mut carl = s.client("carl");
    let mut dora = s.client("dora");
    let room = private_room(&mut alice, "Secret");
    alice.send(json!({"type": "msg", "room_id": room, "text": "before bob"}));
    alice.expect("message");

    assert_eq!(invite(&mut alice, &room, "ghost"), "NOT_REGISTERED");
    assert_eq!(invite(&mut alice, &room, "bob"), "INVITED");
    let expected = json!({"type": "invited", "room": room, "name": "Secret", "private": true,
                          "by": "alice", "by_nickname": "alice"});
    for ws in [&mut bob, &mut bob2] {
        assert_eq!(bare(ws.expect("invited")), expected);
    }
    none_hear([&mut carl, &mut dora, &mut alice]);
    assert_eq!(invite(&mut alice, &room, "bob"), "ALREADY_INVITED");
    bob.silent();
    let list = bob.request(json!({"type": "my_invites"}));
    assert_eq!(list["type"], "invites");
    let items = list["invites"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let mut first = items[0].clone();
    assert!(first["at"].as_str().unwrap().ends_with("+00:00"), "{first}");
    first.as_object_mut().unwrap().remove("at");
    assert_eq!(
        first,
        json!({"room": room, "name": "Secret", "private": true,
                             "by": "alice", "by_nickname": "alice"})
    );
    // Accepted with a join by id: the invitation is used up.
    bob.join(&room);
    assert_eq!(bob2.expect("system")["event"], "joined");
    assert_eq!(alice.expect("system")["user"], "bob");
    assert_eq!(invites(&s, &room, "bob"), 0);
    assert_eq!(
        bob.request(json!({"type": "my_invites"}))["invites"],
        json!([])
    );
    assert_eq!(invite(&mut alice, &room, "bob"), "ALREADY_MEMBER");
    // The late joiner sees the whole history, from before he joined.
    let h = bob.request(json!({"type": "history", "room_id": room}));
    let texts: Vec<&str> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"before bob"), "{texts:?}");
    assert_eq!(
        h["items"].as_array().unwrap().len(),
        4,
        "created, joined, msg, joined"
    );
    let ack = bob.request(json!({"type": "resume", "rooms": {room.clone(): 0}}));
    // (His own `joined` came live on this connection: not replayed.)
    assert_eq!(ack["rooms"][&room]["count"], 3, "{ack}");
    // In a private room a plain member may not invite.
    let e = bob.request(json!({"type": "invite", "room_id": room, "user": "carl"}));
    assert_eq!(e["code"], "NOT_ALLOWED");
    // Strangers: the room is not found, as one that does not exist.
    let e = dora.request(json!({"type": "invite", "room_id": room, "user": "carl"}));
    assert_eq!(e["code"], "ROOM_NOT_FOUND");
    let e = dora.request(json!({"type": "invite", "room_id": "r_deadbeef", "user": "carl"}));
    assert_eq!(e["code"], "ROOM_NOT_FOUND");
    // Without an invitation, a join is refused as for no room at all.
    let e = carl.request(json!({"type": "join", "room_id": room}));
    assert_eq!(e["code"], "ROOM_NOT_FOUND");
    // Bad requests.
    let e = alice.request(json!({"type": "invite", "room_id": room}));
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = alice.request(json!({"type": "invite", "user": "carl"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    // An admin may invite.
    alice.request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    assert_eq!(invite(&mut bob, &room, "carl"), "INVITED");
    assert_eq!(carl.expect("invited")["by"], "bob");
}

#[test]
fn in_a_public_room_any_member_invites_and_invitations_can_be_declined() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob"]);
    let mut carl = s.client("carl");
    let mut dora = s.client("dora");
    assert_eq!(invite(&mut c[1], &room, "carl"), "INVITED");
    let ev = carl.expect("invited");
    assert_eq!(
        (ev["private"].as_bool(), ev["by"].as_str()),
        (Some(false), Some("bob"))
    );
    // A stranger to a public room is told so.
    let e = dora.request(json!({"type": "invite", "room_id": room, "user": "carl"}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let decline = json!({"type": "decline_invite", "room_id": room});
    let ack = carl.request(decline.clone());
    assert_eq!(
        bare(ack),
        json!({"type": "decline_ack", "room": room, "status": "DECLINED"})
    );
    assert_eq!(invites(&s, &room, "carl"), 0);
    assert_eq!(carl.request(decline)["status"], "NO_INVITE");
    let ack = carl.request(json!({"type": "decline_invite", "room_id": "r_deadbeef"}));
    assert_eq!(ack["status"], "NO_INVITE");
    let e = carl.request(json!({"type": "decline_invite"}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    none_hear(c.iter_mut());
    // Invited again, carl joins by id: used up as well.
    assert_eq!(invite(&mut c[0], &room, "carl"), "INVITED");
    carl.expect("invited");
    carl.join(&room);
    assert_eq!(invites(&s, &room, "carl"), 0);
}

#[test]
fn an_invitee_who_blocks_the_inviter_refuses_and_a_banned_one_cannot_be_invited() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob"]);
    let mut carl = s.client("carl");
    s.user("dora");
    s.db()
        .execute(
            "INSERT INTO klav_blocks (blocker, blocked) VALUES ('carl', 'bob')",
            &[],
        )
        .unwrap();
    assert_eq!(invite(&mut c[1], &room, "carl"), "REFUSED");
    assert_eq!(invites(&s, &room, "carl"), 0);
    carl.silent();
    // The block is one way: alice may invite him.
    assert_eq!(invite(&mut c[0], &room, "carl"), "INVITED");
    carl.expect("invited");
    s.db()
        .execute(
            "INSERT INTO klav_room_bans (room_id, username, banned_by) VALUES ($1, 'dora', 'alice')",
            &[&room],
        )
        .unwrap();
    assert_eq!(invite(&mut c[0], &room, "dora"), "BANNED");
    assert_eq!(invites(&s, &room, "dora"), 0);
}

#[test]
fn invitations_expire_after_seven_days() {
    let s = TestServer::with(|c| c.retention_interval = Duration::from_millis(200));
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    let room = private_room(&mut alice, "Secret");
    assert_eq!(invite(&mut alice, &room, "bob"), "INVITED");
    bob.expect("invited");
    let age = |days: i32| {
        s.db()
            .execute(
                "UPDATE klav_room_invites SET created_at = now() - make_interval(days => $1) \
                 - interval '1 minute'",
                &[&days],
            )
            .unwrap();
    };
    // Six days old: still open.
    age(6);
    assert_eq!(
        bob.request(json!({"type": "my_invites"}))["invites"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Past seven days: invisible, refused, and a new invitation may be sent.
    age(7);
    assert_eq!(
        bob.request(json!({"type": "my_invites"}))["invites"],
        json!([])
    );
    let e = bob.request(json!({"type": "join", "room_id": room}));
    assert_eq!(e["code"], "ROOM_NOT_FOUND");
    assert_eq!(
        bob.request(json!({"type": "decline_invite", "room_id": room}))["status"],
        "NO_INVITE"
    );
    assert_eq!(invite(&mut alice, &room, "bob"), "INVITED");
    bob.expect("invited");
    // Expired ones are removed in the background.
    age(7);
    let deadline = std::time::Instant::now() + WAIT;
    while invites(&s, &room, "bob") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired invitation never removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn memberships_and_invitations_count_together() {
    let s = TestServer::with(|c| c.max_rooms_per_user = 2);
    let mut alice = s.client("alice");
    let mut carl = s.client("carl");
    let r1 = alice.create_room("one");
    let r2 = private_room(&mut alice, "two");
    let r3 = private_room(&mut alice, "three");
    carl.join(&r1);
    assert_eq!(invite(&mut alice, &r2, "carl"), "INVITED");
    carl.expect("invited");
    // One membership and one invitation: a third is refused...
    let e = alice.request(json!({"type": "invite", "room_id": r3, "user": "carl"}));
    assert_eq!(e["code"], "TOO_MANY_ROOMS", "{e}");
    assert_eq!(invites(&s, &r3, "carl"), 0);
    carl.silent();
    // ...and so is a join that uses no invitation.
    let e = carl.request(json!({"type": "join", "room": "elsewhere"}));
    assert_eq!(e["code"], "TOO_MANY_ROOMS", "{e}");
    assert_eq!(
        s.count("SELECT count(*) FROM rooms WHERE name = 'elsewhere'", &[]),
        0
    );
    // Accepting the invitation is allowed: it is already counted.
    carl.join(&r2);
    let my: Value = carl.request(json!({"type": "my_rooms"}));
    assert_eq!(my["rooms"].as_array().map(Vec::len), Some(2));
}
