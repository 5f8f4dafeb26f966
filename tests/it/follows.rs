//! One-way follows: `friend_follow`, `friend_unfollow`, `following_list`,
//! `followers_list` and the `notify_followed` event — who gets it and, as
//! carefully, who does not — and pipelined follows taking effect in order.

use serde_json::json;

use crate::harness::*;
use crate::support::friends::*;

#[test]
fn follow_and_unfollow_statuses_and_errors() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");

    assert_eq!(follow(&mut alice, "alice"), follow_ack("alice", "SELF"));
    assert_eq!(follows_rows(&s, "alice", "alice"), 0);
    assert_eq!(
        follow(&mut alice, "ghost"),
        follow_ack("ghost", "NOT_REGISTERED")
    );
    assert_eq!(follows_rows(&s, "alice", "ghost"), 0);
    // Usernames are exact: "Bob" is not "bob".
    assert_eq!(
        follow(&mut alice, "Bob"),
        follow_ack("Bob", "NOT_REGISTERED")
    );
    bob.silent();

    assert_eq!(follow(&mut alice, "bob"), follow_ack("bob", "FOLLOWED"));
    assert_eq!(next(&mut bob, "notify_followed"), notify("alice"));
    assert_eq!(follows_rows(&s, "alice", "bob"), 1);
    assert_eq!(follow(&mut alice, "bob"), follow_ack("bob", "ALREADY"));
    assert_eq!(follows_rows(&s, "alice", "bob"), 1);
    // One-way: bob does not follow alice.
    assert_eq!(follows_rows(&s, "bob", "alice"), 0);

    // Missing (or empty) `to`.
    for req in [
        json!({"type": "friend_follow"}),
        json!({"type": "friend_follow", "to": ""}),
    ] {
        let e = alice.request(req.clone());
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("FOLLOW_TO_REQUIRED")),
            "{req} -> {e}"
        );
        assert!(e["ts"].is_string(), "{e}");
    }
    for req in [
        json!({"type": "friend_unfollow"}),
        json!({"type": "friend_unfollow", "to": ""}),
    ] {
        let e = alice.request(req.clone());
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("UNFOLLOW_TO_REQUIRED")),
            "{req} -> {e}"
        );
        assert!(e["ts"].is_string(), "{e}");
    }

    assert_eq!(
        unfollow(&mut alice, "bob"),
        unfollow_ack("bob", "UNFOLLOWED")
    );
    assert_eq!(follows_rows(&s, "alice", "bob"), 0);
    assert_eq!(
        unfollow(&mut alice, "bob"),
        unfollow_ack("bob", "NOT_FOLLOWING")
    );
    assert_eq!(
        unfollow(&mut alice, "ghost"),
        unfollow_ack("ghost", "NOT_FOLLOWING")
    );
    assert_eq!(
        unfollow(&mut alice, "alice"),
        unfollow_ack("alice", "NOT_FOLLOWING")
    );
    // bob only ever got the one notify_followed: nothing for SELF, NOT_REGISTERED,
    // ALREADY, errors or the unfollow; alice got nothing but her replies.
    all_silent(&mut [&mut bob, &mut alice]);

    // Following again after an unfollow is a fresh FOLLOWED with a new notification.
    assert_eq!(follow(&mut alice, "bob"), follow_ack("bob", "FOLLOWED"));
    assert_eq!(next(&mut bob, "notify_followed"), notify("alice"));
    assert_eq!(follows_rows(&s, "alice", "bob"), 1);
}

/// Every reply echoes the request's `req_id` unchanged (numbers stay numbers;
/// `Ws::request` already checks string ids everywhere else).
#[test]
fn friend_replies_echo_req_id() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let _bob = s.client("bob");
    let cases = [
        (
            json!({"type": "friend_follow", "to": "bob"}),
            "friend_follow_ack",
        ),
        (
            json!({"type": "friend_follow", "to": "bob"}),
            "friend_follow_ack",
        ),
        (
            json!({"type": "friend_follow", "to": "alice"}),
            "friend_follow_ack",
        ),
        (
            json!({"type": "friend_follow", "to": "ghost"}),
            "friend_follow_ack",
        ),
        (json!({"type": "friend_follow"}), "error"),
        (json!({"type": "following_list"}), "following_list"),
        (json!({"type": "followers_list"}), "followers_list"),
        (json!({"type": "get_online_friends"}), "online_friends"),
        (
            json!({"type": "presence_friends_subscribe"}),
            "online_friends",
        ),
        (
            json!({"type": "presence_friends_unsubscribe"}),
            "presence_ack",
        ),
        (
            json!({"type": "friend_unfollow", "to": "bob"}),
            "friend_unfollow_ack",
        ),
        (
            json!({"type": "friend_unfollow", "to": "bob"}),
            "friend_unfollow_ack",
        ),
        (json!({"type": "friend_unfollow"}), "error"),
    ];
    for (i, (mut req, kind)) in cases.into_iter().enumerate() {
        let id = 1000 + i as i64;
        req["req_id"] = json!(id);
        alice.send(req.clone());
        let ev = alice.expect(kind);
        assert_eq!(ev["req_id"], json!(id), "{req} -> {ev}");
    }
    alice.silent();
}

#[test]
fn notify_followed_reaches_every_connection_of_the_followed_only() {
    let s = TestServer::start();
    let ta = s.user("alice");
    let tb = s.user("bob");
    let mut a1 = s.ws(&ta);
    let mut a2 = s.ws(&ta);
    let mut b1 = s.ws(&tb);
    let mut b2 = s.ws(&tb);
    let mut carol = s.client("carol");

    assert_eq!(follow(&mut a1, "bob"), follow_ack("bob", "FOLLOWED"));
    assert_eq!(next(&mut b1, "notify_followed"), notify("alice"));
    assert_eq!(next(&mut b2, "notify_followed"), notify("alice"));
    // Exactly one each; the follower's connections and the bystander get nothing.
    all_silent(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // ALREADY (from the follower's other connection): nobody is notified.
    assert_eq!(follow(&mut a2, "bob"), follow_ack("bob", "ALREADY"));
    all_silent(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // The other direction: both of alice's connections, none of bob's.
    assert_eq!(follow(&mut b2, "alice"), follow_ack("alice", "FOLLOWED"));
    assert_eq!(next(&mut a1, "notify_followed"), notify("bob"));
    assert_eq!(next(&mut a2, "notify_followed"), notify("bob"));
    all_silent(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // Unfollowing notifies nobody.
    assert_eq!(unfollow(&mut a1, "bob"), unfollow_ack("bob", "UNFOLLOWED"));
    all_silent(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // Following someone offline: nothing is queued for them.
    let td = s.user("dave");
    assert_eq!(follow(&mut carol, "dave"), follow_ack("dave", "FOLLOWED"));
    let mut dave = s.ws(&td);
    all_silent(&mut [&mut dave, &mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);
}

#[test]
fn following_and_followers_lists_are_sorted_with_nicknames() {
    let s = TestServer::start();
    // Nicknames sort in the opposite order to usernames, so sorting by the wrong
    // field shows.
    let ta = s.user_nick("alice", "Zoe");
    let tb = s.user_nick("bob", "Yann");
    let tc = s.user_nick("carol", "Xena");
    let td = s.user("dave"); // nickname defaults to the username
    let te = s.user("erin");
    let mut alice = s.ws(&ta);
    let mut bob = s.ws(&tb);
    let mut carol = s.ws(&tc);
    let mut dave = s.ws(&td);
    let mut erin = s.ws(&te);

    // Followed in an order that is neither the username nor the nickname order.
    for to in ["carol", "dave", "alice", "bob"] {
        assert_eq!(follow(&mut erin, to), follow_ack(to, "FOLLOWED"));
    }
    let r = body(erin.request(json!({"type": "following_list"})));
    assert_eq!(
        r,
        json!({"type": "following_list", "following": [
            {"username": "alice", "nickname": "Zoe"},
            {"username": "bob", "nickname": "Yann"},
            {"username": "carol", "nickname": "Xena"},
            {"username": "dave", "nickname": "dave"},
        ]})
    );
    // erin has no followers yet; lists are per user.
    assert_eq!(
        body(erin.request(json!({"type": "followers_list"}))),
        json!({"type": "followers_list", "followers": []})
    );

    for (ws, me) in [
        (&mut carol, "carol"),
        (&mut alice, "alice"),
        (&mut bob, "bob"),
    ] {
        assert_eq!(follow(ws, "dave"), follow_ack("dave", "FOLLOWED"), "{me}");
    }
    // Offline followers are listed too (the list comes from the database).
    alice.close();
    let r = body(dave.request(json!({"type": "followers_list"})));
    assert_eq!(
        r,
        json!({"type": "followers_list", "followers": [
            {"username": "alice", "nickname": "Zoe"},
            {"username": "bob", "nickname": "Yann"},
            {"username": "carol", "nickname": "Xena"},
            {"username": "erin", "nickname": "erin"},
        ]})
    );
    assert_eq!(
        body(dave.request(json!({"type": "following_list"}))),
        json!({"type": "following_list", "following": []})
    );
    assert_eq!(
        body(bob.request(json!({"type": "following_list"}))),
        json!({"type": "following_list", "following": [{"username": "dave", "nickname": "dave"}]})
    );

    // Unfollows are reflected.
    assert_eq!(
        unfollow(&mut erin, "bob"),
        unfollow_ack("bob", "UNFOLLOWED")
    );
    assert_eq!(
        unfollow(&mut bob, "dave"),
        unfollow_ack("dave", "UNFOLLOWED")
    );
    assert_eq!(
        body(erin.request(json!({"type": "following_list"})))["following"],
        json!([
            {"username": "alice", "nickname": "Zoe"},
            {"username": "carol", "nickname": "Xena"},
            {"username": "dave", "nickname": "dave"},
        ])
    );
    assert_eq!(
        body(dave.request(json!({"type": "followers_list"})))["followers"],
        json!([
            {"username": "alice", "nickname": "Zoe"},
            {"username": "carol", "nickname": "Xena"},
            {"username": "erin", "nickname": "erin"},
        ])
    );
}

/// Requests pipelined on one connection (what `req_id` is for) must take effect in
/// the order sent: follow, unfollow, follow, ... ends unfollowed, in the database
/// and in the loop's memory alike. (Follows go through the single ordered writer;
/// on a pool of concurrent workers they would commit and complete out of order.)
#[test]
fn pipelined_follow_unfollow_apply_in_order() {
    let s = TestServer::start();
    let mut alice = s.client("alice");
    let _bob = s.client("bob");
    let n = 40; // well under the rate-limit burst
    for i in 0..n {
        let kind = if i % 2 == 0 {
            "friend_follow"
        } else {
            "friend_unfollow"
        };
        alice.send(json!({"type": kind, "to": "bob", "req_id": i}));
    }
    let mut got = vec![String::new(); n];
    for _ in 0..n {
        let ev = alice.recv();
        let i = ev["req_id"].as_u64().expect("a reply with its req_id") as usize;
        got[i] = ev["status"].as_str().unwrap_or("?").to_string();
    }
    let wrong: Vec<String> = got
        .iter()
        .enumerate()
        .filter(|(i, st)| st.as_str() != if i % 2 == 0 { "FOLLOWED" } else { "UNFOLLOWED" })
        .map(|(i, st)| format!("#{i}:{st}"))
        .collect();
    let rows = follows_rows(&s, "alice", "bob");
    let memory = get_online(&mut alice);
    assert!(
        wrong.is_empty() && rows == 0 && memory == online_friends(vec![]),
        "out-of-order statuses {wrong:?}; follows rows at the end {rows} (want 0); \
         bob (online) in alice's online_friends: {memory}"
    );
}
