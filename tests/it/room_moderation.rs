//! Kicks and bans (v3): `kick`, `ban`, `unban`, `room_bans` and their
//! statuses and errors; the `kicked` / `banned` events; a removed user's
//! connections receiving nothing more of the room; pipelined and racing
//! requests decided in the writer's order.

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::owned_rooms::*;

fn kick(room: &str, user: &str) -> Value {
    json!({"type": "kick", "room_id": room, "user": user})
}

fn ban(room: &str, user: &str) -> Value {
    json!({"type": "ban", "room_id": room, "user": user})
}

fn status(ws: &mut Ws, req: Value) -> String {
    let ack = ws.request(req.clone());
    assert!(
        ack["type"].as_str().unwrap().ends_with("_ack"),
        "{req} -> {ack}"
    );
    ack["status"].as_str().unwrap().to_string()
}

#[test]
fn kick_statuses_errors_and_events() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl", "dora"]);
    let mut erin = s.client("erin");
    c[0].request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    for ws in c.iter_mut() {
        ws.expect("role_changed");
    }
    // Who may not.
    assert_eq!(error_code(&mut c[2], kick(&room, "dora")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[1], kick(&room, "alice")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[1], kick(&room, "bob")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[0], kick(&room, "alice")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut erin, kick(&room, "dora")), "NOT_A_MEMBER");
    assert_eq!(
        error_code(&mut erin, kick("r_deadbeef", "dora")),
        "ROOM_NOT_FOUND"
    );
    // Whom.
    assert_eq!(
        error_code(&mut c[1], kick(&room, "ghost")),
        "USER_NOT_FOUND"
    );
    assert_eq!(status(&mut c[1], kick(&room, "erin")), "NOT_A_MEMBER");
    let long = json!({"type": "kick", "room_id": room, "user": "carl", "reason": "r".repeat(501)});
    assert_eq!(error_code(&mut c[1], long), "TEXT_TOO_LONG");
    assert_eq!(
        error_code(&mut c[1], json!({"type": "kick", "room_id": room})),
        "BAD_REQUEST"
    );
    assert_eq!(
        error_code(&mut c[1], json!({"type": "kick", "user": "carl"})),
        "ROOM_ID_REQUIRED"
    );
    none_hear(c.iter_mut().chain([&mut erin]));
    // An admin kicks a member: everyone, carl included, hears it once.
    let ack =
        c[1].request(json!({"type": "kick", "room_id": room, "user": "carl", "reason": "spam"}));
    assert_eq!(
        bare(ack),
        json!({"type": "kick_ack", "room": room, "user": "carl", "status": "KICKED"})
    );
    for ws in c.iter_mut() {
        let mut ev = ws.expect("system");
        assert!(ev["id"].is_i64(), "{ev}");
        ev.as_object_mut().unwrap().remove("id");
        assert_eq!(
            bare(ev),
            json!({"type": "system", "room": room, "event": "kicked", "user": "carl",
                   "user_nickname": "carl", "by": "bob", "reason": "spam"})
        );
    }
    erin.silent();
    let text = "carl 님이 bob 님에 의해 내보내졌습니다";
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND text = $2",
            &[&room, &text]
        ),
        1
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM room_members WHERE room_id = $1 AND username = 'carl'",
            &[&room]
        ),
        0
    );
    assert_eq!(status(&mut c[1], kick(&room, "carl")), "NOT_A_MEMBER");
    // carl may read nothing of it now, and may come back to a public room.
    assert_eq!(
        error_code(&mut c[2], json!({"type": "history", "room_id": room})),
        "NOT_A_MEMBER"
    );
    assert_eq!(
        error_code(&mut c[2], json!({"type": "room_members", "room_id": room})),
        "NOT_A_MEMBER"
    );
    let ack = c[2].request(json!({"type": "resume", "rooms": {room.clone(): 0}}));
    assert_eq!(ack["rooms"][&room]["error"], "NOT_A_MEMBER", "{ack}");
    c[2].join(&room);
    // The owner may kick an admin; reason absent is null.
    let ack = c[0].request(kick(&room, "bob"));
    assert_eq!(ack["status"], "KICKED");
    let ev = loop {
        let ev = c[3].next_of("system");
        if ev["event"] == "kicked" {
            break ev;
        }
    };
    assert_eq!(
        (ev["user"].as_str(), ev["reason"].clone()),
        (Some("bob"), json!(null))
    );
}

#[test]
fn ban_unban_and_room_bans() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl"]);
    let mut erin = s.client("erin");
    let mut outsider = s.client("olga");
    c[0].request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    for ws in c.iter_mut() {
        ws.expect("role_changed");
    }
    // A registered non-member: only the ack; again: ALREADY.
    assert_eq!(status(&mut c[0], ban(&room, "erin")), "BANNED");
    none_hear(c[1..].iter_mut().chain([&mut erin]));
    assert_eq!(status(&mut c[0], ban(&room, "erin")), "ALREADY");
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND text LIKE '%차단%'",
            &[&room]
        ),
        0
    );
    // Banned: join by id and by the name that matches → BANNED; invitations → BANNED.
    assert_eq!(
        error_code(&mut erin, json!({"type": "join", "room_id": room})),
        "BANNED"
    );
    assert_eq!(
        error_code(&mut erin, json!({"type": "join", "room": "Hall"})),
        "BANNED"
    );
    let ack = c[2].request(json!({"type": "invite", "room_id": room, "user": "erin"}));
    assert_eq!(ack["status"], "BANNED");
    // The admin bans a member, with a reason: a banned event to all, carl included.
    let ack =
        c[1].request(json!({"type": "ban", "room_id": room, "user": "carl", "reason": "rude"}));
    assert_eq!(
        bare(ack),
        json!({"type": "ban_ack", "room": room, "user": "carl", "status": "BANNED"})
    );
    for ws in c.iter_mut() {
        let ev = ws.expect("system");
        assert_eq!(
            (
                ev["event"].as_str(),
                ev["user"].as_str(),
                ev["by"].as_str(),
                ev["reason"].as_str()
            ),
            (Some("banned"), Some("carl"), Some("bob"), Some("rude"))
        );
    }
    erin.silent();
    assert_eq!(
        error_code(&mut c[2], json!({"type": "join", "room_id": room})),
        "BANNED"
    );
    // room_bans: owner and admins only.
    let list = c[1].request(json!({"type": "room_bans", "room_id": room}));
    assert_eq!(list["type"], "room_bans", "{list}");
    let bans: Vec<(String, String, Value)> = list["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert!(b["at"].as_str().unwrap().ends_with("+00:00"), "{b}");
            (
                b["username"].as_str().unwrap().into(),
                b["by"].as_str().unwrap().into(),
                b["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        bans,
        vec![
            ("carl".into(), "bob".into(), json!("rude")),
            ("erin".into(), "alice".into(), json!(null))
        ]
    );
    let mut carl2 = s.client("carl");
    assert_eq!(
        error_code(&mut carl2, json!({"type": "room_bans", "room_id": room})),
        "NOT_A_MEMBER"
    );
    assert_eq!(
        error_code(
            &mut outsider,
            json!({"type": "room_bans", "room_id": "r_deadbeef"})
        ),
        "ROOM_NOT_FOUND"
    );
    // An admin may not ban an admin; nobody bans themselves or the owner.
    s.user("dora");
    let mut dora = s.client("dora");
    dora.join(&room);
    for ws in c[..2].iter_mut() {
        ws.expect("system");
    }
    c[0].request(json!({"type": "set_role", "room_id": room, "user": "dora", "role": "admin"}));
    for ws in c[..2].iter_mut().chain([&mut dora]) {
        ws.expect("role_changed");
    }
    assert_eq!(error_code(&mut c[1], ban(&room, "dora")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[1], ban(&room, "alice")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[0], ban(&room, "alice")), "NOT_ALLOWED");
    assert_eq!(error_code(&mut c[1], ban(&room, "ghost")), "USER_NOT_FOUND");
    // unban.
    let unban = |user: &str| json!({"type": "unban", "room_id": room, "user": user});
    assert_eq!(error_code(&mut c[1], unban("ghost")), "USER_NOT_FOUND");
    assert_eq!(error_code(&mut outsider, unban("carl")), "NOT_A_MEMBER");
    let ack = c[1].request(unban("carl"));
    assert_eq!(
        bare(ack),
        json!({"type": "unban_ack", "room": room, "user": "carl", "status": "UNBANNED"})
    );
    assert_eq!(status(&mut c[1], unban("carl")), "NOT_BANNED");
    carl2.join(&room);
}

#[test]
fn a_plain_member_may_not_list_or_lift_bans() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob"]);
    assert_eq!(
        error_code(&mut c[1], json!({"type": "room_bans", "room_id": room})),
        "NOT_ALLOWED"
    );
    assert_eq!(
        error_code(
            &mut c[1],
            json!({"type": "unban", "room_id": room, "user": "alice"})
        ),
        "NOT_ALLOWED"
    );
    let list = c[0].request(json!({"type": "room_bans", "room_id": room}));
    assert_eq!(list["bans"], json!([]));
}

#[test]
fn a_kicked_users_open_connections_receive_nothing_more_of_the_room() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 10_000.0;
        c.rate_burst = 10_000.0;
    });
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl"]);
    let mut bob2 = s.client("bob");
    c[0].send(json!({"type": "msg", "room_id": room, "text": "before"}));
    let before = c[0].expect("message")["id"].as_i64().unwrap();
    for ws in c[1..].iter_mut().chain([&mut bob2]) {
        ws.expect("message");
    }
    let ack = c[0].request(kick(&room, "bob"));
    assert_eq!(ack["status"], "KICKED");
    for ws in c.iter_mut().chain([&mut bob2]) {
        assert_eq!(ws.expect("system")["event"], "kicked");
    }
    // 200 messages, typing, an edit, a delete: carl gets them, bob nothing.
    for i in 0..200 {
        c[0].send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
    }
    c[0].send(json!({"type": "typing", "room_id": room}));
    c[0].request(json!({"type": "edit", "id": before, "text": "edited"}));
    c[0].request(json!({"type": "delete", "id": before}));
    let (mut got, mut typing) = (0, false);
    while got < 200 {
        match c[2].recv()["type"].as_str() {
            Some("message") => got += 1,
            Some("typing") => typing = true,
            _ => {}
        }
    }
    let mut rest = vec![c[2].next_of("message_edited")];
    rest.push(c[2].next_of("message_deleted"));
    assert_eq!(rest[1]["id"], before);
    assert!(typing || c[2].drain(QUIET).iter().any(|e| e["type"] == "typing"));
    none_hear([&mut c[1], &mut bob2]);
    // Requests about it are refused.
    let e = c[1].request(json!({"type": "msg", "room_id": room, "text": "still here?"}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    let e = bob2.request(json!({"type": "typing", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND from_user = 'bob'",
            &[&room]
        ),
        0
    );
}

#[test]
fn kick_then_msg_pipelined_never_reaches_the_kicked() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl"]);
    c[0].pipeline([
        kick(&room, "bob"),
        json!({"type": "msg", "room_id": room, "text": "after"}),
    ]);
    let ev = c[1].expect("system");
    assert_eq!(
        (ev["event"].as_str(), ev["user"].as_str()),
        (Some("kicked"), Some("bob"))
    );
    c[1].silent();
    assert_eq!(c[2].expect("system")["event"], "kicked");
    assert_eq!(c[2].expect("message")["text"], "after");
}

#[test]
fn a_banned_users_pipelined_join_and_msg_are_refused_in_order() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob"]);
    assert_eq!(status(&mut c[0], ban(&room, "bob")), "BANNED");
    assert_eq!(c[1].expect("system")["event"], "banned");
    c[0].expect("system");
    c[1].pipeline([
        json!({"type": "join", "room_id": room, "req_id": "j"}),
        json!({"type": "msg", "room_id": room, "text": "let me in", "req_id": "m"}),
    ]);
    let e = c[1].expect("error");
    assert_eq!(
        (e["req_id"].as_str(), e["code"].as_str()),
        (Some("j"), Some("BANNED"))
    );
    let e = c[1].expect("error");
    assert_eq!(
        (e["req_id"].as_str(), e["code"].as_str()),
        (Some("m"), Some("NOT_A_MEMBER"))
    );
    c[0].silent();
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE room_id = $1 AND from_user = 'bob'",
            &[&room]
        ),
        0
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM room_members WHERE room_id = $1 AND username = 'bob'",
            &[&room]
        ),
        0
    );
}

#[test]
fn a_ban_racing_an_invitation_ends_banned() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let room = private_room(&mut alice, "Secret");
    let mut bob = s.client("bob");
    alice.request(json!({"type": "invite", "room_id": room, "user": "bob"}));
    bob.expect("invited");
    bob.join(&room);
    alice.expect("system");
    alice.request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    for i in 0..12 {
        let user = format!("target{i}");
        s.user(&user);
        // From two connections at once: the owner bans, the admin invites.
        alice.send(json!({"type": "ban", "room_id": room, "user": user, "req_id": "b"}));
        bob.send(json!({"type": "invite", "room_id": room, "user": user, "req_id": "i"}));
        let banned = alice.next_of("ban_ack");
        assert_eq!(banned["status"], "BANNED");
        let invited = bob.next_of("invite_ack");
        assert!(
            matches!(invited["status"].as_str(), Some("INVITED" | "BANNED")),
            "{invited}"
        );
        assert_eq!(
            s.count(
                "SELECT count(*) FROM klav_room_invites WHERE username = $1",
                &[&user]
            ),
            0
        );
        assert_eq!(
            s.count(
                "SELECT count(*) FROM klav_room_bans WHERE username = $1",
                &[&user]
            ),
            1
        );
    }
}

#[test]
fn two_moderators_acting_on_each_other_at_once_are_ordered() {
    let s = TestServer::start();
    for i in 0..8 {
        let (room, mut c) = owned_room(
            &s,
            &format!("Hall{i}"),
            &format!("o{i}"),
            &[&format!("a{i}"), &format!("m{i}")],
        );
        let (o, a, m) = (format!("o{i}"), format!("a{i}"), format!("m{i}"));
        c[0].request(json!({"type": "set_role", "room_id": room, "user": a, "role": "admin"}));
        // The owner kicks the admin while the admin kicks the owner and a member.
        c[0].send(json!({"type": "kick", "room_id": room, "user": a, "req_id": "k"}));
        c[1].pipeline([
            json!({"type": "kick", "room_id": room, "user": o, "req_id": "ko"}),
            json!({"type": "kick", "room_id": room, "user": m, "req_id": "km"}),
        ]);
        let first = c[0].next_of("kick_ack");
        assert_eq!(first["status"], "KICKED");
        let mut replies = Vec::new();
        while replies.len() < 2 {
            let ev = c[1].recv();
            if ev["req_id"] == "ko" || ev["req_id"] == "km" {
                replies.push(ev);
            }
        }
        // Never the owner: refused for the admin's role, or because the
        // owner's kick came first and the admin is no member any more.
        assert!(
            matches!(
                replies[0]["code"].as_str(),
                Some("NOT_ALLOWED" | "NOT_A_MEMBER")
            ),
            "{}",
            replies[0]
        );
        assert_eq!(owner_of(&s, &room).as_deref(), Some(o.as_str()));
        // The member was kicked only if the admin still was one then.
        let text = |who: &str, by: &str| format!("{who} 님이 {by} 님에 의해 내보내졌습니다");
        let id = |t: String| -> Option<i64> {
            s.db()
                .query_opt(
                    "SELECT id FROM chat_logs WHERE room_id = $1 AND text = $2",
                    &[&room, &t],
                )
                .unwrap()
                .map(|r| r.get(0))
        };
        let admin_out = id(text(&a, &o)).expect("the admin was kicked");
        match replies[1]["status"].as_str() {
            Some("KICKED") => assert!(id(text(&m, &a)).unwrap() < admin_out),
            _ => {
                assert!(
                    matches!(replies[1]["code"].as_str(), Some("NOT_A_MEMBER")),
                    "{}",
                    replies[1]
                );
                assert_eq!(id(text(&m, &a)), None);
            }
        }
    }
}

#[test]
fn kicks_and_bans_remove_open_invitations_and_a_private_room_needs_a_new_one() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    s.user("carl");
    let room = private_room(&mut alice, "Secret");
    for user in ["bob", "carl"] {
        let ack = alice.request(json!({"type": "invite", "room_id": room, "user": user}));
        assert_eq!(ack["status"], "INVITED");
    }
    bob.expect("invited");
    // A kick of an invitee (not a member): NOT_A_MEMBER, and the invitation is gone.
    assert_eq!(status(&mut alice, kick(&room, "carl")), "NOT_A_MEMBER");
    assert_eq!(
        s.count(
            "SELECT count(*) FROM klav_room_invites WHERE username = 'carl'",
            &[]
        ),
        0
    );
    bob.join(&room);
    alice.expect("system");
    assert_eq!(status(&mut alice, kick(&room, "bob")), "KICKED");
    bob.expect("system");
    // Kicked from a private room: it is not found any more without a new invitation.
    assert_eq!(
        error_code(&mut bob, json!({"type": "join", "room_id": room})),
        "ROOM_NOT_FOUND"
    );
    assert_eq!(
        error_code(&mut bob, json!({"type": "history", "room_id": room})),
        "ROOM_NOT_FOUND"
    );
    alice.request(json!({"type": "invite", "room_id": room, "user": "bob"}));
    bob.expect("invited");
    // A ban removes the invitation too.
    assert_eq!(status(&mut alice, ban(&room, "bob")), "BANNED");
    assert_eq!(
        s.count(
            "SELECT count(*) FROM klav_room_invites WHERE username = 'bob'",
            &[]
        ),
        0
    );
    assert_eq!(
        error_code(&mut bob, json!({"type": "join", "room_id": room})),
        "BANNED"
    );
}

#[test]
fn the_owner_and_admins_delete_any_message_of_their_room() {
    let s = TestServer::start();
    let (room, mut c) = owned_room(&s, "Hall", "alice", &["bob", "carl", "dora"]);
    c[0].request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    for ws in c.iter_mut() {
        ws.expect("role_changed");
    }
    let mut ids = Vec::new();
    for text in ["first", "second"] {
        c[2].send(json!({"type": "msg", "room_id": room, "text": text}));
        ids.push(c[2].expect("message")["id"].as_i64().unwrap());
        for i in [0, 1, 3] {
            c[i].expect("message");
        }
    }
    c[2].send(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst"}));
    let dm = c[1].expect("dm")["id"].as_i64().unwrap();
    c[2].expect("dm_ack");
    // A plain member may not; nobody edits someone else's message; DMs are not moderated.
    let del = |id: i64| json!({"type": "delete", "id": id});
    assert_eq!(error_code(&mut c[3], del(ids[0])), "NOT_AUTHOR");
    assert_eq!(
        error_code(
            &mut c[1],
            json!({"type": "edit", "id": ids[0], "text": "x"})
        ),
        "NOT_AUTHOR"
    );
    assert_eq!(error_code(&mut c[1], del(dm)), "NOT_AUTHOR");
    assert_eq!(error_code(&mut c[0], del(dm)), "MESSAGE_NOT_FOUND");
    let system: i64 = s
        .db()
        .query_one(
            "SELECT min(id) FROM chat_logs WHERE room_id = $1 AND kind = 'system'",
            &[&room],
        )
        .unwrap()
        .get(0);
    assert_eq!(error_code(&mut c[0], del(system)), "NOT_AUTHOR");
    none_hear(c.iter_mut());
    // The admin deletes carl's message: everyone hears who did.
    let reply = c[1].request(del(ids[0]));
    let expected = json!({"type": "message_deleted", "id": ids[0], "room": room, "by": "bob"});
    assert_eq!(bare(reply), expected);
    for i in [0, 2, 3] {
        assert_eq!(bare(c[i].expect("message_deleted")), expected);
    }
    // The tombstone says so, in the history and in the database.
    let h = c[3].request(json!({"type": "history", "room_id": room}));
    let item = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == ids[0])
        .unwrap()
        .clone();
    assert_eq!(
        (
            item["deleted"].clone(),
            item["deleted_by"].as_str(),
            item["text"].as_str()
        ),
        (json!(true), Some("bob"), Some(""))
    );
    let by: Option<String> = s
        .db()
        .query_one(
            "SELECT klav_deleted_by FROM chat_logs WHERE id = $1",
            &[&ids[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(by.as_deref(), Some("bob"));
    // The owner may too; an author's own delete names nobody.
    let reply = c[2].request(del(ids[1]));
    assert!(reply.get("by").is_none(), "{reply}");
    let h = c[0].request(json!({"type": "history", "room_id": room}));
    let item = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == ids[1])
        .unwrap()
        .clone();
    assert!(item.get("deleted_by").is_none(), "{item}");
    // A removed admin moderates no more.
    c[0].request(kick(&room, "bob"));
    c[2].send(json!({"type": "msg", "room_id": room, "text": "third"}));
    let third = c[2].next_of("message")["id"].as_i64().unwrap();
    assert_eq!(error_code(&mut c[1], del(third)), "MESSAGE_NOT_FOUND");
}
