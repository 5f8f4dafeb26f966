//! Live member presence across the nodes of a cluster: a watch on one node
//! hears members connecting and leaving on the other, except a blocker, and
//! a block made on the other node takes effect within a second.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::nodes::Nodes;

fn member_presence(room: &str, user: &str, online: bool) -> Value {
    json!({"type": "member_presence", "room": room, "user": user, "online": online})
}

fn next_presence(ws: &mut Ws) -> Value {
    let mut ev = ws.next_of("member_presence");
    ev.as_object_mut().unwrap().remove("ts");
    ev
}

#[test]
fn cluster_member_presence_crosses_nodes_and_hides_blockers() {
    let c = Nodes::start(2);
    let (alice, bob, carol) = (c.user("alice"), c.user("bob"), c.user("carol"));
    let mut a = c.ws(0, &alice);
    let mut b = c.ws(1, &bob);
    let mut cw = c.ws(1, &carol);
    let room = a.create_room("cross watch");
    a.join(&room);
    b.join(&room);
    cw.join(&room);
    // dave joins on n0 while the watches on n1 exist: the bus tells n1.
    for w in [&mut b, &mut cw] {
        let r = w.request(json!({"type": "room_members", "room_id": room, "watch": true}));
        assert_eq!(r["members"].as_array().unwrap().len(), 3, "{r}");
    }
    let dave = c.user("dave");
    let mut d = c.ws(0, &dave);
    d.join(&room);
    d.close();
    for w in [&mut b, &mut cw] {
        assert_eq!(next_presence(w), member_presence(&room, "dave", false));
    }
    let d = c.ws(0, &dave);
    for w in [&mut b, &mut cw] {
        assert_eq!(next_presence(w), member_presence(&room, "dave", true));
    }
    drop(d);

    // Alice on n0 blocks bob: within a second bob on n1 stops hearing her.
    let ack = a.request(json!({"type": "block", "user": "bob"}));
    assert_eq!(ack["status"], "BLOCKED", "{ack}");
    // (The list shows it once n1 has heard the block.)
    eventually(WAIT, Duration::from_millis(50), || {
        let r = b.request(json!({"type": "room_members", "room_id": room}));
        let shown = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["username"] == "alice" && m["online"] == true);
        if shown {
            Err(format!("alice still online for bob: {r}"))
        } else {
            Ok(())
        }
    });
    a.close();
    assert_eq!(
        next_presence(&mut cw),
        member_presence(&room, "dave", false)
    );
    assert_eq!(
        next_presence(&mut cw),
        member_presence(&room, "alice", false)
    );
    let _a = c.ws(0, &alice);
    assert_eq!(
        next_presence(&mut cw),
        member_presence(&room, "alice", true)
    );
    // (Events that came while bob asked for the list were skipped there.)
    let about_alice: Vec<Value> = b
        .drain(QUIET)
        .into_iter()
        .filter(|e| e["type"] == "member_presence" && e["user"] == "alice")
        .collect();
    assert_eq!(about_alice, Vec::<Value>::new(), "never alice");
}
