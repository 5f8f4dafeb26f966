//! One-way follows and live presence of friends (issue 4): `friend_follow`,
//! `friend_unfollow`, `following_list`, `followers_list`, `get_online_friends`,
//! `presence_friends_subscribe` / `_unsubscribe`, and the `notify_followed` and
//! `presence_change` events. Who must *not* get an event is checked as carefully
//! as who must.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// An event without the fields that vary (`ts`, `req_id`), after checking that
/// `ts` is there.
fn body(mut ev: Value) -> Value {
    assert!(ev["ts"].is_string(), "every event has ts: {ev}");
    let m = ev.as_object_mut().expect("events are objects");
    m.remove("ts");
    m.remove("req_id");
    ev
}

/// The next event on `ws`, of type `kind`, without `ts`/`req_id`.
fn next(ws: &mut Ws, kind: &str) -> Value {
    body(ws.expect(kind))
}

/// None of `conns` receives anything for [`QUIET`] (one wait for all of them).
fn quiet(conns: &mut [&mut Ws]) {
    std::thread::sleep(QUIET);
    for (i, ws) in conns.iter_mut().enumerate() {
        if let Some(ev) = ws.try_recv(Duration::from_millis(10)) {
            panic!("connection #{i} expected no event, got {ev}");
        }
    }
}

fn follow(ws: &mut Ws, to: &str) -> Value {
    body(ws.request(json!({"type": "friend_follow", "to": to})))
}

fn unfollow(ws: &mut Ws, to: &str) -> Value {
    body(ws.request(json!({"type": "friend_unfollow", "to": to})))
}

fn follow_ack(to: &str, status: &str) -> Value {
    json!({"type": "friend_follow_ack", "to": to, "status": status})
}

fn unfollow_ack(to: &str, status: &str) -> Value {
    json!({"type": "friend_unfollow_ack", "to": to, "status": status})
}

fn notify(from: &str) -> Value {
    json!({"type": "notify_followed", "from": from})
}

fn presence(user: &str, name: &str, status: &str) -> Value {
    json!({"type": "presence_change", "scope": "friends", "user": user, "name": name, "status": status})
}

/// One entry of `online_friends.users`.
fn online(username: &str, nickname: &str, connections: u64) -> Value {
    json!({
        "id": username,
        "username": username,
        "name": nickname,
        "nickname": nickname,
        "connections": connections,
    })
}

fn online_friends(users: Vec<Value>) -> Value {
    json!({"type": "online_friends", "users": users})
}

fn get_online(ws: &mut Ws) -> Value {
    body(ws.request(json!({"type": "get_online_friends"})))
}

fn subscribe(ws: &mut Ws) -> Value {
    body(ws.request(json!({"type": "presence_friends_subscribe"})))
}

fn unsubscribe(ws: &mut Ws) -> Value {
    body(ws.request(json!({"type": "presence_friends_unsubscribe"})))
}

fn follows_rows(s: &TestServer, from: &str, to: &str) -> i64 {
    s.db()
        .query_one(
            "SELECT count(*) FROM follows WHERE follower_username = $1 AND followee_username = $2",
            &[&from, &to],
        )
        .unwrap()
        .get(0)
}

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
    quiet(&mut [&mut bob, &mut alice]);

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
    quiet(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // ALREADY (from the follower's other connection): nobody is notified.
    assert_eq!(follow(&mut a2, "bob"), follow_ack("bob", "ALREADY"));
    quiet(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // The other direction: both of alice's connections, none of bob's.
    assert_eq!(follow(&mut b2, "alice"), follow_ack("alice", "FOLLOWED"));
    assert_eq!(next(&mut a1, "notify_followed"), notify("bob"));
    assert_eq!(next(&mut a2, "notify_followed"), notify("bob"));
    quiet(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // Unfollowing notifies nobody.
    assert_eq!(unfollow(&mut a1, "bob"), unfollow_ack("bob", "UNFOLLOWED"));
    quiet(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);

    // Following someone offline: nothing is queued for them.
    let td = s.user("dave");
    assert_eq!(follow(&mut carol, "dave"), follow_ack("dave", "FOLLOWED"));
    let mut dave = s.ws(&td);
    quiet(&mut [&mut dave, &mut a1, &mut a2, &mut b1, &mut b2, &mut carol]);
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

#[test]
fn online_friends_lists_followed_online_users_sorted_by_name() {
    let s = TestServer::start();
    let tme = s.user("me");
    // Usernames, nicknames, and nicknames compared case-sensitively all sort
    // differently: by username anna, mike, pete, xavier; case-sensitively Alice,
    // Carol, bob, pete; case-insensitively Alice, bob, Carol, pete.
    let tx = s.user_nick("xavier", "Alice");
    let ta = s.user_nick("anna", "bob");
    let tm = s.user_nick("mike", "Carol");
    let tp = s.user("pete");
    s.user_nick("olga", "Aaron"); // followed, never online
    let tz = s.user_nick("zed", "Abe"); // online, not followed
    let tf = s.user("fan"); // online, follows me, not followed by me

    let mut me = s.ws(&tme);
    for to in ["mike", "olga", "xavier", "anna"] {
        assert_eq!(follow(&mut me, to), follow_ack(to, "FOLLOWED"));
    }
    assert_eq!(get_online(&mut me), online_friends(vec![]));

    let _x1 = s.ws(&tx);
    let a1 = s.ws(&ta);
    let a2 = s.ws(&ta);
    let m1 = s.ws(&tm);
    let _p1 = s.ws(&tp);
    let _z1 = s.ws(&tz);
    let mut f1 = s.ws(&tf);
    assert_eq!(follow(&mut f1, "me"), follow_ack("me", "FOLLOWED"));
    assert_eq!(next(&mut me, "notify_followed"), notify("fan"));

    assert_eq!(
        get_online(&mut me),
        online_friends(vec![
            online("xavier", "Alice", 1),
            online("anna", "bob", 2),
            online("mike", "Carol", 1),
        ])
    );

    // Following someone who is already online shows them at once (pete has no
    // nickname: name = username).
    assert_eq!(follow(&mut me, "pete"), follow_ack("pete", "FOLLOWED"));
    assert_eq!(
        get_online(&mut me),
        online_friends(vec![
            online("xavier", "Alice", 1),
            online("anna", "bob", 2),
            online("mike", "Carol", 1),
            online("pete", "pete", 1),
        ])
    );

    // One of anna's two connections closes: she is still online, with one.
    a2.close();
    // mike's only connection closes: he is gone.
    m1.close();
    assert_eq!(
        get_online(&mut me),
        online_friends(vec![
            online("xavier", "Alice", 1),
            online("anna", "bob", 1),
            online("pete", "pete", 1),
        ])
    );

    // Unfollowing removes an online user at once.
    assert_eq!(
        unfollow(&mut me, "anna"),
        unfollow_ack("anna", "UNFOLLOWED")
    );
    let expected = online_friends(vec![
        online("xavier", "Alice", 1),
        online("pete", "pete", 1),
    ]);
    assert_eq!(get_online(&mut me), expected);

    // A fresh session (follows loaded from the database) sees the same.
    me.close();
    let mut me = s.ws(&tme);
    assert_eq!(get_online(&mut me), expected);
    // get_online_friends does not subscribe: no presence_change afterwards.
    let m1 = s.ws(&tm);
    m1.close();
    a1.close();
    me.silent();
}

#[test]
fn subscribe_replies_snapshot_and_unsubscribe_stops_events() {
    let s = TestServer::start();
    let tme = s.user("me");
    let tx = s.user_nick("xavier", "Alice");
    let tm = s.user_nick("mike", "Carol");
    let mut me = s.ws(&tme);
    assert_eq!(follow(&mut me, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(follow(&mut me, "mike"), follow_ack("mike", "FOLLOWED"));
    // A fresh session, so the follows come from the database.
    me.close();
    let mut me = s.ws(&tme);
    let mut other = s.ws(&tme); // same user, never subscribed

    let x1 = s.ws(&tx);
    let x2 = s.ws(&tx);
    quiet(&mut [&mut me, &mut other]);

    assert_eq!(
        subscribe(&mut me),
        online_friends(vec![online("xavier", "Alice", 2)])
    );
    // Subscribing twice is harmless: still one event per change below.
    assert_eq!(
        subscribe(&mut me),
        online_friends(vec![online("xavier", "Alice", 2)])
    );

    let m1 = s.ws(&tm);
    assert_eq!(
        next(&mut me, "presence_change"),
        presence("mike", "Carol", "online")
    );
    quiet(&mut [&mut me, &mut other]);

    assert_eq!(
        unsubscribe(&mut me),
        json!({"type": "presence_ack", "status": "UNSUBSCRIBED"})
    );
    // No events after unsubscribing: offline, online, offline.
    m1.close();
    x1.close();
    x2.close();
    let m1 = s.ws(&tm);
    quiet(&mut [&mut me, &mut other]);
    // Unsubscribing again (or a connection that never subscribed) is still acked.
    assert_eq!(
        unsubscribe(&mut me),
        json!({"type": "presence_ack", "status": "UNSUBSCRIBED"})
    );
    assert_eq!(
        unsubscribe(&mut other),
        json!({"type": "presence_ack", "status": "UNSUBSCRIBED"})
    );

    // Subscribing again gives the current snapshot and events again.
    assert_eq!(
        subscribe(&mut me),
        online_friends(vec![online("mike", "Carol", 1)])
    );
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut me, "presence_change"),
        presence("xavier", "Alice", "online")
    );
    m1.close();
    assert_eq!(
        next(&mut me, "presence_change"),
        presence("mike", "Carol", "offline")
    );
    quiet(&mut [&mut me, &mut other]);
    drop(x1);
}

#[test]
fn presence_change_goes_to_subscribed_followers_on_first_open_and_last_close() {
    let s = TestServer::start();
    let tx = s.user_nick("xavier", "Xav");
    let tf = s.user("fred");
    let tg = s.user_nick("gina", "Gee");
    let tn = s.user("nora");
    let mut f1 = s.ws(&tf); // subscribed
    let mut f2 = s.ws(&tf); // same follower, not subscribed
    let mut g1 = s.ws(&tg); // subscribed
    let mut g2 = s.ws(&tg); // subscribed
    let mut n1 = s.ws(&tn); // subscribed, followed BY xavier but not following him
    assert_eq!(follow(&mut f2, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(follow(&mut g1, "xavier"), follow_ack("xavier", "FOLLOWED"));
    for ws in [&mut f1, &mut g1, &mut g2, &mut n1] {
        assert_eq!(subscribe(ws), online_friends(vec![]));
    }
    {
        // xavier follows nora, on a short first visit.
        let mut x = s.ws(&tx);
        assert_eq!(follow(&mut x, "nora"), follow_ack("nora", "FOLLOWED"));
        x.close();
        // That visit produced online + offline for the subscribed followers.
        for ws in [&mut f1, &mut g1, &mut g2] {
            assert_eq!(
                next(ws, "presence_change"),
                presence("xavier", "Xav", "online")
            );
            assert_eq!(
                next(ws, "presence_change"),
                presence("xavier", "Xav", "offline")
            );
        }
        assert_eq!(next(&mut n1, "notify_followed"), notify("xavier"));
    }
    quiet(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1]);

    // First connection: online to every subscribed connection of every follower.
    let mut x1 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    assert_eq!(
        next(&mut g2, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    // Not to the follower's unsubscribed connection, nor to nora (whom xavier
    // follows, not the other way round), nor to xavier himself.
    quiet(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1, &mut x1]);

    // A second connection: nothing. Closing it again: nothing.
    let mut x2 = s.ws(&tx);
    quiet(&mut [
        &mut f1, &mut f2, &mut g1, &mut g2, &mut n1, &mut x1, &mut x2,
    ]);
    x2.close();
    quiet(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1, &mut x1]);

    // The last connection closes: offline.
    x1.close();
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    assert_eq!(
        next(&mut g2, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1]);

    // A subscribed connection that closes stops receiving (and breaks nothing):
    // g2 goes, g1 still hears.
    g2.close();
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    quiet(&mut [&mut f1, &mut f2, &mut g1, &mut n1]);
    drop(x1);
}

#[test]
fn presence_offline_when_connections_die_without_a_close_frame() {
    let s = TestServer::start();
    let tx = s.user_nick("xavier", "Xav");
    let tf = s.user("fred");
    let mut f1 = s.ws(&tf); // subscribed
    let mut f2 = s.ws(&tf); // not subscribed, used to poll
    assert_eq!(follow(&mut f2, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(subscribe(&mut f1), online_friends(vec![]));

    // The only connection is dropped: no close frame, just the TCP FIN.
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    drop(x1);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2]);
    assert_eq!(get_online(&mut f2), online_friends(vec![]));

    // Two connections; one dies: no event, the count drops to one.
    let x1 = s.ws(&tx);
    let x2 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    assert_eq!(
        get_online(&mut f2),
        online_friends(vec![online("xavier", "Xav", 2)])
    );
    drop(x2);
    let deadline = Instant::now() + WAIT;
    loop {
        let now = get_online(&mut f2);
        if now == online_friends(vec![online("xavier", "Xav", 1)]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead connection is still counted: {now}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    quiet(&mut [&mut f1]);

    // The last one is shut down at the socket level (both directions).
    let mut x1 = x1;
    x1.sock
        .get_mut()
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2]);
    assert_eq!(get_online(&mut f2), online_friends(vec![]));

    // Closed by the server (an oversized frame, close 1009): offline too.
    let mut x1 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    x1.send_raw(tungstenite::Message::text("x".repeat(70 * 1024)));
    let frame = x1.expect_close().expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2]);
}

#[test]
fn follows_made_or_removed_while_online_take_effect_on_the_next_change() {
    follows_while_online(TestServer::start());
}

/// The same on a node of a cluster (of one), where presence is decided in the
/// database and heard back on the bus.
#[test]
fn follows_made_or_removed_while_online_take_effect_on_a_cluster_node() {
    let url = pg().fresh_db();
    let s = TestServer::on_db(&url, |c| c.database_url = Some(url.clone()));
    assert!(s.config.clustered());
    follows_while_online(s);
}

/// A follow made after subscribing, of someone online whom nobody else
/// watches, then an unfollow: the subscribed connection hears exactly the
/// changes between them.
#[test]
fn follow_after_subscribing_to_someone_nobody_watches() {
    follow_after_subscribing(TestServer::start());
}

#[test]
fn follow_after_subscribing_to_someone_nobody_watches_on_a_cluster_node() {
    let url = pg().fresh_db();
    let s = TestServer::on_db(&url, |c| c.database_url = Some(url.clone()));
    follow_after_subscribing(s);
}

fn follow_after_subscribing(s: TestServer) {
    let tx = s.user_nick("xavier", "Xav");
    let tf = s.user("fred");
    let mut x1 = s.ws(&tx);
    let mut f1 = s.ws(&tf); // subscribed
    let mut f2 = s.ws(&tf); // makes the follows
    assert_eq!(subscribe(&mut f1), online_friends(vec![]));
    assert_eq!(follow(&mut f2, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(next(&mut x1, "notify_followed"), notify("fred"));
    quiet(&mut [&mut f1, &mut f2]);

    x1.close();
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    quiet(&mut [&mut f1, &mut f2]);

    assert_eq!(
        unfollow(&mut f2, "xavier"),
        unfollow_ack("xavier", "UNFOLLOWED")
    );
    x1.close();
    let x1 = s.ws(&tx);
    quiet(&mut [&mut f1, &mut f2]);
    assert_eq!(get_online(&mut f1), online_friends(vec![]));
    drop(x1);
}

fn follows_while_online(s: TestServer) {
    let tx = s.user_nick("xavier", "Xav");
    let tf = s.user("fred");
    let tg = s.user("gina");
    let mut f1 = s.ws(&tf); // subscribed
    let mut f2 = s.ws(&tf); // not subscribed; makes the follows
    let mut g1 = s.ws(&tg); // another follower, subscribed throughout
    assert_eq!(subscribe(&mut f1), online_friends(vec![]));
    assert_eq!(follow(&mut g1, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(subscribe(&mut g1), online_friends(vec![]));

    // xavier comes online before fred follows him: only gina hears it.
    let mut x1 = s.ws(&tx);
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    quiet(&mut [&mut f1, &mut f2, &mut g1]);

    // fred follows him from his other connection; the follow itself is no
    // presence change.
    assert_eq!(follow(&mut f2, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(next(&mut x1, "notify_followed"), notify("fred"));
    quiet(&mut [&mut f1, &mut f2, &mut g1, &mut x1]);
    // The subscribed connection's view includes him now.
    assert_eq!(
        get_online(&mut f1),
        online_friends(vec![online("xavier", "Xav", 1)])
    );

    // xavier leaves: fred's subscribed connection hears it (and gina's).
    x1.close();
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2, &mut g1]);

    // A connection fred opens and subscribes now knows the follow made earlier
    // in this session.
    let mut f3 = s.ws(&tf);
    assert_eq!(subscribe(&mut f3), online_friends(vec![]));
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut f1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    assert_eq!(
        next(&mut f3, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    quiet(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);

    // fred unfollows (from the unsubscribed connection): no further events to any
    // of his connections; gina, who still follows, still hears them.
    assert_eq!(
        unfollow(&mut f2, "xavier"),
        unfollow_ack("xavier", "UNFOLLOWED")
    );
    x1.close();
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    quiet(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);
    assert_eq!(get_online(&mut f1), online_friends(vec![]));
    x1.close();
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    quiet(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);
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
