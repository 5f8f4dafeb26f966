//! Blocks across the nodes of a cluster: a block made on one node takes
//! effect on the other within a second — the blocked user there stops
//! hearing the blocker's presence, loses the follow, and is refused.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::nodes::Nodes;

/// Whether `room_members` (asked by `ws`) shows `user` online.
fn member_online(ws: &mut Ws, room: &str, user: &str) -> bool {
    let r = ws.request(json!({"type": "room_members", "room_id": room}));
    r["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .find(|m| m["username"] == user)
        .unwrap_or_else(|| panic!("{user} is a member: {r}"))["online"]
        .as_bool()
        .unwrap()
}

#[test]
fn cluster_a_block_on_one_node_hides_presence_on_the_other() {
    let c = Nodes::start(2);
    let (alice, bob, carol) = (c.user("alice"), c.user("bob"), c.user("carol"));
    let mut a = c.ws(0, &alice);
    let mut b = c.ws(1, &bob);
    let mut cw = c.ws(1, &carol);
    let room = a.create_room("across");
    a.join(&room);
    b.join(&room);
    cw.join(&room);
    for w in [&mut b, &mut cw] {
        let ack = w.request(json!({"type": "friend_follow", "to": "alice"}));
        assert_eq!(ack["status"], "FOLLOWED", "{ack}");
        w.request(json!({"type": "presence_friends_subscribe"}));
    }
    // A follow heard on the bus is granted once the database confirms it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(member_online(&mut b, &room, "alice"));

    let ack = a.request(json!({"type": "block", "user": "bob"}));
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    eventually(WAIT, Duration::from_millis(50), || {
        match member_online(&mut b, &room, "alice") {
            false => Ok(()),
            true => Err("alice still shown online to bob on n1".into()),
        }
    });
    let list = b.request(json!({"type": "following_list"}));
    assert_eq!(list["following"], json!([]), "{list}");
    assert_eq!(
        b.request(json!({"type": "get_online_friends"}))["users"],
        json!([])
    );
    // Refused on n1 by the writer there.
    let ack = b.request(json!({"type": "friend_follow", "to": "alice"}));
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    let ack = b.request(json!({"type": "room_dm", "room_id": room, "to": "alice", "text": "hi"}));
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    a.none_of("dm");

    // Alice's presence changes: carol on n1 hears them, bob never does.
    a.close();
    cw.presence_of("alice", "offline", WAIT);
    let mut a = c.ws(0, &alice);
    cw.presence_of("alice", "online", WAIT);
    b.none_of("presence_change");
    assert!(member_online(&mut cw, &room, "alice"));
    assert!(!member_online(&mut b, &room, "alice"));

    // Unblocked on n0: visible to bob on n1 again.
    let ack = a.request(json!({"type": "unblock", "user": "bob"}));
    assert_eq!(ack["status"], "UNBLOCKED", "{ack}");
    eventually(WAIT, Duration::from_millis(50), || {
        match member_online(&mut b, &room, "alice") {
            true => Ok(()),
            false => Err("alice still hidden from bob on n1".into()),
        }
    });
    let ack = b.request(json!({"type": "friend_follow", "to": "alice"}));
    assert_eq!(ack["status"], "FOLLOWED", "{ack}");
}
