//! Rooms with owners across two nodes: role changes, room updates, private
//! rooms, invitations and moderation decided on one node take effect on the
//! other.

use serde_json::json;

use crate::support::nodes::Nodes;
use crate::support::owned_rooms::*;

#[test]
fn cluster_roles_and_room_updates_reach_the_other_node() {
    let c = Nodes::start(2);
    let (alice, bob, carl) = (c.user("alice"), c.user("bob"), c.user("carl"));
    let mut a = c.ws(0, &alice);
    let mut b = c.ws(1, &bob);
    let mut x = c.ws(1, &carl);
    a.send(json!({"type": "join", "room": "Hall"}));
    let room = a.expect("system")["room"].as_str().unwrap().to_string();
    b.join(&room);
    a.next_of("system");
    // bob's node knows him as a plain member: refused at once.
    let e = b.request(json!({"type": "room_update", "room_id": room, "topic": "x"}));
    assert_eq!(e["code"], "NOT_ALLOWED");
    // Made admin on n0: n1 hears it, and its memory lets him update the room.
    let ack =
        a.request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    assert_eq!(ack["type"], "set_role_ack");
    assert_eq!(
        bare(b.next_of("role_changed")),
        role_event(&room, "bob", "admin", Some("alice"))
    );
    let reply = b.request(json!({"type": "room_update", "room_id": room, "topic": "news"}));
    assert_eq!(reply["type"], "room_updated", "{reply}");
    let ev = a.next_of("room_updated");
    assert_eq!(ev["id"], reply["id"], "the same entry on both nodes");
    assert_eq!(
        (ev["topic"].as_str(), ev["by"].as_str()),
        (Some("news"), Some("bob"))
    );
    x.none_of("room_updated");
    // The admin on n1 deletes the owner's message: n0 hears who did.
    a.send(json!({"type": "msg", "room_id": room, "text": "oops"}));
    let id = a.next_of("message")["id"].clone();
    b.next_of("message");
    let reply = b.request(json!({"type": "delete", "id": id}));
    assert_eq!(reply["by"], "bob", "{reply}");
    let ev = a.next_of("message_deleted");
    assert_eq!((ev["id"].clone(), ev["by"].as_str()), (id, Some("bob")));
    // The owner leaves on n0: ownership passes to bob, heard on n1.
    a.request(json!({"type": "leave", "room_id": room}));
    assert_eq!(
        bare(b.next_of("role_changed")),
        role_event(&room, "bob", "owner", None)
    );
    // bob's node lets the new owner set roles.
    let dora = c.user("dora");
    let mut d = c.ws(0, &dora);
    d.join(&room);
    b.next_of("system");
    let ack =
        b.request(json!({"type": "set_role", "room_id": room, "user": "dora", "role": "admin"}));
    assert_eq!(ack["type"], "set_role_ack", "{ack}");
    assert_eq!(
        bare(d.next_of("role_changed")),
        role_event(&room, "dora", "admin", Some("bob"))
    );
    x.none_of("role_changed");
}

#[test]
fn cluster_an_invitation_on_one_node_is_heard_and_accepted_on_the_other() {
    let c = Nodes::start(2);
    let (alice, bob) = (c.user("alice"), c.user("bob"));
    let mut a = c.ws(0, &alice);
    let mut b = c.ws(1, &bob);
    let room = private_room(&mut a, "Secret");
    a.send(json!({"type": "msg", "room_id": room, "text": "early"}));
    a.expect("message");
    let ack = a.request(json!({"type": "invite", "room_id": room, "user": "bob"}));
    assert_eq!(ack["status"], "INVITED");
    let ev = b.next_of("invited");
    assert_eq!(
        (ev["room"].as_str(), ev["by"].as_str()),
        (Some(room.as_str()), Some("alice"))
    );
    // Accepted on n1: members on both nodes hear the join, and messages flow.
    b.join(&room);
    assert_eq!(a.next_of("system")["user"], "bob");
    a.send(json!({"type": "msg", "room_id": room, "text": "welcome"}));
    assert_eq!(b.next_of("message")["text"], "welcome");
    let h = b.request(json!({"type": "history", "room_id": room}));
    let texts: Vec<&str> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["text"].as_str())
        .collect();
    assert!(texts.contains(&"early"), "{texts:?}");
    // The owner's role is known on n0 (she may set roles at once).
    let ack =
        a.request(json!({"type": "set_role", "room_id": room, "user": "bob", "role": "admin"}));
    assert_eq!(ack["type"], "set_role_ack", "{ack}");
    assert_eq!(
        bare(b.next_of("role_changed")),
        role_event(&room, "bob", "admin", Some("alice"))
    );
}

#[test]
fn cluster_a_kick_on_one_node_cuts_the_users_connections_on_the_other_off() {
    let c = Nodes::start(2);
    let (alice, bob, carl) = (c.user("alice"), c.user("bob"), c.user("carl"));
    let mut a = c.ws(0, &alice);
    let mut b1 = c.ws(1, &bob);
    let mut b0 = c.ws(0, &bob);
    let mut x = c.ws(1, &carl);
    a.send(json!({"type": "join", "room": "Hall"}));
    let room = a.expect("system")["room"].as_str().unwrap().to_string();
    b1.join(&room);
    b0.next_of("system");
    a.next_of("system");
    x.join(&room);
    for ws in [&mut a, &mut b1, &mut b0] {
        assert_eq!(ws.next_of("system")["user"], "carl");
    }
    let ack = a.request(json!({"type": "kick", "room_id": room, "user": "bob", "reason": "spam"}));
    assert_eq!(ack["status"], "KICKED");
    // Heard on n1 as a kick (by whom, why), by bob's and carl's connections there.
    for ws in [&mut b1, &mut x, &mut b0] {
        let ev = ws.next_of("system");
        assert_eq!(
            (
                ev["event"].as_str(),
                ev["user"].as_str(),
                ev["by"].as_str(),
                ev["reason"].as_str()
            ),
            (Some("kicked"), Some("bob"), Some("alice"), Some("spam")),
            "{ev}"
        );
    }
    // Then nothing of the room reaches bob on either node.
    for i in 0..100 {
        a.send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
    }
    x.send(json!({"type": "typing", "room_id": room}));
    let mut got = 0;
    while got < 100 {
        if x.recv()["type"] == "message" {
            got += 1;
        }
    }
    let e = b1.request(json!({"type": "history", "room_id": room}));
    assert_eq!(e["code"], "NOT_A_MEMBER");
    none_hear([&mut b1, &mut b0]);
    // A ban on n0: bob's join on n1 is refused.
    let ack = a.request(json!({"type": "ban", "room_id": room, "user": "bob"}));
    assert_eq!(ack["status"], "BANNED");
    let e = b1.request(json!({"type": "join", "room_id": room}));
    assert_eq!(e["code"], "BANNED");
    none_hear([&mut b1, &mut b0]);
}
