//! Live presence of friends: `get_online_friends`, `presence_friends_subscribe`
//! and `_unsubscribe`, and the `presence_change` events on a user's first
//! connection and last close (also when connections die without a close) —
//! to subscribed followers only.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::friends::*;

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
    all_silent(&mut [&mut me, &mut other]);

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
    all_silent(&mut [&mut me, &mut other]);

    assert_eq!(
        unsubscribe(&mut me),
        json!({"type": "presence_ack", "status": "UNSUBSCRIBED"})
    );
    // No events after unsubscribing: offline, online, offline.
    m1.close();
    x1.close();
    x2.close();
    let m1 = s.ws(&tm);
    all_silent(&mut [&mut me, &mut other]);
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
    all_silent(&mut [&mut me, &mut other]);
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
    all_silent(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1]);

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
    all_silent(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1, &mut x1]);

    // A second connection: nothing. Closing it again: nothing.
    let mut x2 = s.ws(&tx);
    all_silent(&mut [
        &mut f1, &mut f2, &mut g1, &mut g2, &mut n1, &mut x1, &mut x2,
    ]);
    x2.close();
    all_silent(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1, &mut x1]);

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
    all_silent(&mut [&mut f1, &mut f2, &mut g1, &mut g2, &mut n1]);

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
    all_silent(&mut [&mut f1, &mut f2, &mut g1, &mut n1]);
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
    all_silent(&mut [&mut f1, &mut f2]);
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
    eventually(WAIT, Duration::from_millis(20), || {
        let now = get_online(&mut f2);
        if now == online_friends(vec![online("xavier", "Xav", 1)]) {
            Ok(())
        } else {
            Err(format!("the dead connection is still counted: {now}"))
        }
    });
    all_silent(&mut [&mut f1]);

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
    all_silent(&mut [&mut f1, &mut f2]);
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
    all_silent(&mut [&mut f1, &mut f2]);
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
    all_silent(&mut [&mut f1, &mut f2]);

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
    all_silent(&mut [&mut f1, &mut f2]);

    assert_eq!(
        unfollow(&mut f2, "xavier"),
        unfollow_ack("xavier", "UNFOLLOWED")
    );
    x1.close();
    let x1 = s.ws(&tx);
    all_silent(&mut [&mut f1, &mut f2]);
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
    all_silent(&mut [&mut f1, &mut f2, &mut g1]);

    // fred follows him from his other connection; the follow itself is no
    // presence change.
    assert_eq!(follow(&mut f2, "xavier"), follow_ack("xavier", "FOLLOWED"));
    assert_eq!(next(&mut x1, "notify_followed"), notify("fred"));
    all_silent(&mut [&mut f1, &mut f2, &mut g1, &mut x1]);
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
    all_silent(&mut [&mut f1, &mut f2, &mut g1]);

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
    all_silent(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);

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
    all_silent(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);
    let x1 = s.ws(&tx);
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "online")
    );
    all_silent(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);
    assert_eq!(get_online(&mut f1), online_friends(vec![]));
    x1.close();
    assert_eq!(
        next(&mut g1, "presence_change"),
        presence("xavier", "Xav", "offline")
    );
    all_silent(&mut [&mut f1, &mut f2, &mut f3, &mut g1]);
}
