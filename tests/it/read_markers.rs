//! Read markers (`read`): they only move forward, sync to the same user's other
//! connections and nobody else's, and set the unread counts of `my_rooms`.

use serde_json::json;

use crate::harness::*;

#[test]
fn read_markers_move_forward_and_sync_only_the_same_user() {
    let s = TestServer::start();
    let (room, mut c) = room_with(&s, &["alice", "bob"]);
    let mut alice2 = s.ws(&s.token("alice"));
    let ids: Vec<i64> = (0..3)
        .map(|i| post(&mut c[1], &room, &format!("m{i}")))
        .collect();
    for _ in 0..3 {
        c[0].expect("message");
        alice2.expect("message");
    }
    // Alice's own messages never count as unread.
    let own = post(&mut c[0], &room, "mine");
    c[1].expect("message");
    alice2.expect("message");
    let info = room_info(&mut c[0], &room);
    assert_eq!(info["read_id"], 0);
    assert_eq!(info["unread"], 3);

    let ack = c[0].request(json!({"type": "read", "room_id": room, "id": ids[1]}));
    assert_eq!(ack["type"], "read_ack");
    assert_eq!(ack["room"], room.as_str());
    assert_eq!(ack["id"], ids[1]);
    let sync = alice2.expect("read_marker");
    assert_eq!(sync["room"], room.as_str());
    assert_eq!(sync["id"], ids[1]);
    c[0].silent();
    c[1].silent();
    let info = room_info(&mut c[0], &room);
    assert_eq!(info["read_id"], ids[1]);
    assert_eq!(info["unread"], 1);
    // Backwards: the marker stays, nobody is told.
    let ack = alice2.request(json!({"type": "read", "room_id": room, "id": ids[0]}));
    assert_eq!(ack["id"], ids[1]);
    c[0].silent();
    // Beyond the newest id, an unknown id, garbage.
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": own + 1000}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": 0}));
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": "abc"}));
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = c[0].request(json!({"type": "read", "room_id": room}));
    assert_eq!(e["code"], "BAD_REQUEST");
    let e = c[0].request(json!({"type": "read", "id": ids[0]}));
    assert_eq!(e["code"], "ROOM_ID_REQUIRED");
    let mut outsider = s.client("carl");
    let e = outsider.request(json!({"type": "read", "room_id": room, "id": ids[0]}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    alice2.silent();
    // A deleted message no longer counts.
    let del = c[1].request(json!({"type": "delete", "id": ids[2]}));
    assert_eq!(del["type"], "message_deleted");
    let info = room_info(&mut c[0], &room);
    assert_eq!(info["unread"], 0);
    // Bob's marker is his own.
    let info = room_info(&mut c[1], &room);
    assert_eq!(info["read_id"], 0);
    assert_eq!(info["unread"], 1);
    // A DM between two other members is as unknown as an id the room lacks;
    // a DM of one's own (sent or received) is an entry like any other.
    alice2.expect("message_deleted");
    outsider.join(&room);
    c[0].expect("system");
    c[1].expect("system");
    alice2.expect("system");
    let ack =
        c[1].request(json!({"type": "room_dm", "room_id": room, "to": "carl", "text": "psst"}));
    assert_eq!(ack["status"], "DELIVERED");
    let theirs = id_of(&outsider.expect("dm"));
    let e = c[0].request(json!({"type": "read", "room_id": room, "id": theirs}));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "MESSAGE_NOT_FOUND");
    assert_eq!(
        room_info(&mut c[0], &room)["read_id"],
        ids[1],
        "the marker stayed"
    );
    alice2.silent();
    let ack = outsider.request(json!({"type": "read", "room_id": room, "id": theirs}));
    assert_eq!(ack["type"], "read_ack", "the recipient may: {ack}");
    assert_eq!(ack["id"], theirs);
    let ack = c[1].request(json!({"type": "read", "room_id": room, "id": theirs}));
    assert_eq!(ack["type"], "read_ack", "the sender may: {ack}");
    assert_eq!(ack["id"], theirs);
}
