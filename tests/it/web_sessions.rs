//! The web client's sessions in a real headless Chromium: reconnecting after a
//! restart without missing anything (a fresh ticket every time), login errors
//! and throttling, a refused or expired session going back to the login form,
//! and pages on two nodes of a cluster.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::browser::*;
use crate::support::cdp::Page;

#[test]
fn web_pages_reconnect_after_restart_and_miss_nothing() {
    let s = TestServer::start();
    let port = s.addr.port();
    let (_one, b) = browser();
    let mina = open_watching_sockets(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    say(&mina, "before the restart");
    wait_message(&joon, "before the restart");
    let carl_token = s.user("carl");
    {
        let mut carl = s.ws(&carl_token);
        carl.send(json!({"type": "join", "room": "lobby"}));
        carl.expect("system");
        carl.close();
    }

    let db = s.stop();
    for p in [&mina, &joon] {
        p.wait_for(
            &format!(
                "!{}.textContent.includes('online')",
                Page::q("connection-status")
            ),
            "the page to notice the server went away",
        );
    }
    mina.screenshot("reconnecting");
    std::thread::sleep(Duration::from_millis(1500));
    let s2 = TestServer::restart_on(&db, port);
    // Sent as soon as the server is back, before or while the pages reconnect.
    let mut carl = s2.ws(&carl_token);
    let room = carl.request(json!({"type": "my_rooms"}))["rooms"][0]
        .as_str()
        .unwrap()
        .to_string();
    let meanwhile: Vec<String> = (0..5).map(|i| format!("while you were away {i}")).collect();
    for t in &meanwhile {
        carl.send(json!({"type": "msg", "room_id": room, "text": t}));
        carl.expect("message");
    }
    for p in [&mina, &joon] {
        status_online(p);
        for t in &meanwhile {
            wait_message(p, t);
        }
    }
    // And the conversation goes on, live.
    say(&joon, "after the restart");
    wait_message(&mina, "after the restart");
    for (p, who) in [(&mina, "mina"), (&joon, "joon")] {
        let msgs = messages(p);
        assert_ordered_once(&msgs, who);
        for t in meanwhile
            .iter()
            .map(String::as_str)
            .chain(["before the restart", "after the restart"])
        {
            assert_eq!(
                msgs.iter().filter(|m| m.3 == t).count(),
                1,
                "{who}: {t:?} shown once: {msgs:?}"
            );
        }
        // Refused reconnects are network errors, not page errors.
        p.assert_clean(who);
    }
    // Every upgrade, the first and each retry, used a fresh one-time ticket:
    // the token never went into a URL (which proxies log).
    let urls = socket_urls(&mina);
    assert!(urls.len() >= 2, "{urls:?}");
    for u in &urls {
        assert!(u.contains("/ws?ticket=") && !u.contains("token"), "{u}");
    }
    let distinct: HashSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), urls.len(), "a ticket used twice: {urls:?}");
    mina.screenshot("after-restart");
    drop(s2);
}

#[test]
fn web_login_errors_throttling_and_expired_session() {
    let s = TestServer::with(|c| c.login_max_failures = 2);
    let (_one, b) = browser();
    let p = open(&b, &s);
    let auth_error = |p: &Page, want: &str| {
        p.wait_for(
            &format!(
                "{}.textContent.includes({})",
                Page::q("auth-error"),
                js(want)
            ),
            &format!("auth error {want:?}"),
        );
    };
    login(&p, "nobody", PASSWORD);
    auth_error(&p, "register first");
    register(&p, "dana", "다나");
    p.click("logout");
    login(&p, "dana", "wrong");
    auth_error(&p, "Wrong username or password");
    // Past KLAV_LOGIN_MAX_FAILURES, each failure makes this (user, address)
    // wait longer (1 s, 2 s, 4 s, ...): soon an attempt falls inside the wait
    // and the page shows the 429 with its Retry-After.
    let error = Page::q("auth-error");
    let mut throttled = false;
    for _ in 0..8 {
        p.eval(&format!("{error}.textContent = ''"));
        login(&p, "dana", "wrong again");
        p.wait_for(
            &format!("{error}.textContent.length > 0"),
            "an answer to the login",
        );
        let text = p.eval(&format!("{error}.textContent"));
        let text = text.as_str().unwrap_or_default();
        if text.contains("Too many failed logins. Try again in ") {
            throttled = true;
            break;
        }
        assert!(text.contains("Wrong username or password"), "{text}");
    }
    assert!(throttled, "repeated failures were never throttled");
    p.screenshot("login-throttled");

    // A stored session whose token has expired goes back to the form, saying so.
    let expired = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkYW5hIiwiZXhwIjoxMDAwMDAwMDAwfQ.x";
    p.eval(&format!(
        "localStorage.setItem('klav.session', JSON.stringify({{token: {}, user: 'dana'}}))",
        js(expired)
    ));
    p.goto(&format!("http://{}/", s.addr));
    auth_error(&p, "expired");
    assert_eq!(
        p.eval("document.getElementById('chat-view').hidden"),
        Value::Bool(true)
    );
    p.assert_clean("dana");
}

#[test]
fn web_refused_session_goes_back_to_login() {
    let s = TestServer::start();
    let port = s.addr.port();
    let (_one, b) = browser();
    let p = open(&b, &s);
    register(&p, "ghost", "유령");
    // The account disappears while the server is down: the token is refused after.
    let db = s.stop();
    connect_db(&db)
        .execute("DELETE FROM users WHERE username = 'ghost'", &[])
        .unwrap();
    let _s2 = TestServer::restart_on(&db, port);
    p.wait_for(
        &format!(
            "{}.textContent.includes('no longer accepts this session')",
            Page::q("auth-error")
        ),
        "the login form, saying the session was refused",
    );
    assert_eq!(
        p.eval("document.getElementById('login-view').hidden"),
        Value::Bool(false)
    );
    p.assert_clean("ghost");
}

/// Two klav nodes on one database, a page on each: presence, messages and the
/// friends list cross nodes in the browser.
#[test]
fn web_pages_on_two_nodes_see_each_other() {
    let db = pg().fresh_db();
    let dir = scratch_dir("webcluster");
    let spawn = |i: usize| {
        let name = format!("w{i}");
        spawn_klav(
            &dir.join(&name),
            &[
                ("DATABASE_URL", db.as_str()),
                ("KLAV_NODE_NAME", name.as_str()),
                ("KLAV_NODE_TIMEOUT_SECS", "3"),
            ],
        )
    };
    let (n0, n1) = (spawn(0), spawn(1));
    let _ = user_at(n1.addr, "alice");

    let (_one, b) = browser();
    let bob = page_at(&b, n0.addr);
    register(&bob, "bob", "밥");
    status_online(&bob);
    join(&bob, "lobby");
    follow(&bob, "alice");
    assert_eq!(count(&bob, "online-friend"), 0);

    // Alice logs in on the other node: bob's page (node 0) shows her online.
    let alice = page_at(&b, n1.addr);
    login(&alice, "alice", PASSWORD);
    status_online(&alice);
    bob.wait_for(
        "document.querySelector('[data-testid=\"online-friend\"][data-username=\"alice\"]')",
        "alice (on node 1) online in bob's friends (node 0)",
    );
    // A message from node 1 reaches the page on node 0, and back.
    join(&alice, "lobby");
    say(&alice, "안녕, from node 1");
    assert_eq!(wait_message(&bob, "안녕, from node 1").0, "alice");
    say(&bob, "hello from node 0");
    assert_eq!(wait_message(&alice, "hello from node 0").0, "bob");
    bob.screenshot("two-nodes-bob");
    // Alice leaves (her page closes): bob sees her go, within the presence write.
    alice.close();
    bob.wait_for(
        "!document.querySelector('[data-testid=\"online-friend\"][data-username=\"alice\"]')",
        "alice offline in bob's friends",
    );
    bob.assert_clean("two-nodes-bob");
    drop((n0, n1));
    let _ = std::fs::remove_dir_all(&dir);
}
