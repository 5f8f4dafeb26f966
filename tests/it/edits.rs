//! Editing and deleting one's own entries (`edit`, `delete`): the events reach
//! exactly those who could see the entry, history and `my_rooms` show the
//! change, and everyone else's entries are refused.

use serde_json::json;

use crate::harness::*;

#[test]
fn edit_and_delete_room_message() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut outsider = s.client("carl");
    let id = post(&mut c[0], &room, "tpyo");
    c[1].expect("message");
    let ed = c[0].request(json!({"type": "edit", "id": id, "text": "typo"}));
    assert_eq!(ed["type"], "message_edited");
    assert_eq!(ed["id"], id);
    assert_eq!(ed["room"], room.as_str());
    assert_eq!(ed["text"], "typo");
    assert!(ed["edited_at"].as_str().unwrap().ends_with("+00:00"));
    let seen = c[1].expect("message_edited");
    assert_eq!(seen["text"], "typo");
    assert!(seen.get("req_id").is_none());
    c[0].silent();
    outsider.silent();
    // History (cached and not) shows the edit.
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    let item = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(item["text"], "typo");
    assert!(item["edited_at"].is_string());
    let h = c[1].request(json!({"type": "history", "room_id": room, "before_id": id + 1}));
    assert_eq!(
        h["items"].as_array().unwrap().last().unwrap()["text"],
        "typo"
    );
    let info = room_info(&mut c[1], &room);
    assert_eq!(info["last"]["text"], "typo");

    // Errors: someone else's, a system entry, unseen, unknown, text rules.
    let e = c[1].request(json!({"type": "edit", "id": id, "text": "mine now"}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let e = c[1].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let sys: i64 = s
        .db()
        .query_one(
            "SELECT min(id) FROM chat_logs WHERE room_id = $1 AND kind = 'system'",
            &[&room],
        )
        .unwrap()
        .get(0);
    let e = c[0].request(json!({"type": "edit", "id": sys, "text": "x"}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let e = outsider.request(json!({"type": "edit", "id": id, "text": "x"}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "edit", "id": id + 10_000, "text": "x"}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "edit", "id": id, "text": ""}));
    assert_eq!(e["code"], "TEXT_REQUIRED");
    let e = c[0].request(json!({"type": "edit", "id": id, "text": "가".repeat(4001)}));
    assert_eq!(e["code"], "TEXT_TOO_LONG");
    let e = c[0].request(json!({"type": "edit", "text": "x"}));
    assert_eq!(e["code"], "BAD_REQUEST");
    c[1].silent();

    // Delete: tombstone everywhere.
    let d = c[0].request(json!({"type": "delete", "id": id}));
    assert_eq!(d["type"], "message_deleted");
    assert_eq!(d["id"], id);
    assert_eq!(d["room"], room.as_str());
    assert_eq!(c[1].expect("message_deleted")["id"], id);
    outsider.silent();
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    let item = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(item["id"], id);
    assert_eq!(item["deleted"], true);
    assert_eq!(item["text"], "");
    assert_eq!(item["from"], "alice");
    let info = room_info(&mut c[1], &room);
    assert_eq!(info["last"]["deleted"], true);
    assert_eq!(info["last"]["text"], "");
    let e = c[0].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "edit", "id": id, "text": "back"}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    c[1].silent();
}

#[test]
fn dm_edit_and_delete_reach_only_sender_and_recipient() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob", "carl"]);
    let mut bob2 = s.ws(&s.token("bob"));
    let ack =
        c[0].request(json!({"type": "room_dm", "room_id": room, "to": "bob", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED");
    let id = id_of(&c[1].expect("dm"));
    bob2.expect("dm");
    let ed = c[0].request(json!({"type": "edit", "id": id, "text": "PSST"}));
    assert_eq!(ed["type"], "message_edited");
    assert_eq!(c[1].expect("message_edited")["text"], "PSST");
    assert_eq!(bob2.expect("message_edited")["text"], "PSST");
    c[2].silent();
    c[0].silent();
    // Carl cannot see it; bob can but is not its author.
    let e = c[2].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[1].request(json!({"type": "delete", "id": id}));
    assert_eq!(e["code"], "NOT_AUTHOR");
    let d = c[0].request(json!({"type": "delete", "id": id}));
    assert_eq!(d["type"], "message_deleted");
    assert_eq!(c[1].expect("message_deleted")["id"], id);
    assert_eq!(bob2.expect("message_deleted")["id"], id);
    c[2].silent();
    // The DM's tombstone in the parties' history.
    let h = c[1].request(json!({"type": "history", "room_id": room}));
    let item = h["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (item["id"].as_i64(), &item["deleted"]),
        (Some(id), &json!(true))
    );
}
