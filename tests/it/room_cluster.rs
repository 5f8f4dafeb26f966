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
    assert_eq!(
        (ev["topic"].as_str(), ev["by"].as_str()),
        (Some("news"), Some("bob"))
    );
    x.none_of("room_updated");
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
