//! The web client served at `/`: its HTTP side over raw sockets, and the client
//! itself driven in a real headless Chromium (see `cdp.rs`) against the real
//! server — two people in two browser contexts, history, DMs, presence, a
//! restart, hostile text and Korean IME input. Screenshots of the main views land
//! in `target/web-screenshots/`.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cdp::{Browser, Page};
use crate::harness::*;

/// One browser at a time: each test starts its own, and several at once would
/// only compete for the same cores.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

fn browser() -> (MutexGuard<'static, ()>, Browser) {
    let guard = ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    let b = Browser::launch().unwrap_or_else(|e| panic!("{e}"));
    (guard, b)
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn open<'b>(b: &'b Browser, s: &TestServer) -> Page<'b> {
    page_at(b, s.addr)
}

fn status_online(p: &Page) {
    p.wait_for(
        &format!(
            "{}.textContent.includes('online')",
            Page::q("connection-status")
        ),
        "the connection status to say online",
    );
}

fn register(p: &Page, user: &str, nickname: &str) {
    p.fill("login-username", user);
    p.fill("login-password", PASSWORD);
    p.fill("login-nickname", nickname);
    p.click("register-submit");
    status_online(p);
}

fn login(p: &Page, user: &str, password: &str) {
    p.fill("login-username", user);
    p.fill("login-password", password);
    p.click("login-submit");
}

fn join(p: &Page, room: &str) {
    p.fill("room-name", room);
    p.click("room-join");
    p.wait_for(
        &format!(
            "{}.textContent === {} && document.querySelectorAll('[data-testid=\"message\"]').length > 0",
            Page::q("room-title"),
            js(room)
        ),
        &format!("room {room} to open with its history"),
    );
}

/// Follows `user` from the friends panel and waits for the acknowledgement.
fn follow(p: &Page, user: &str) {
    p.fill("friend-name", user);
    p.click("friend-follow");
    p.wait_for(
        &format!(
            "{}.textContent.includes('You follow {user}')",
            Page::q("friend-error")
        ),
        "the follow acknowledged",
    );
}

fn say(p: &Page, text: &str) {
    p.fill("message-input", text);
    p.enter();
}

/// The message list: (id, from, kind, text) of every entry, in page order.
fn messages(p: &Page) -> Vec<(i64, String, String, String)> {
    let v = p.eval(
        "[...document.querySelectorAll('[data-testid=\"message\"]')].map(e => \
         [Number(e.dataset.id), e.dataset.from, e.dataset.kind, e.querySelector('.text').textContent])",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_i64().unwrap(),
                m[1].as_str().unwrap().to_string(),
                m[2].as_str().unwrap().to_string(),
                m[3].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until a message with exactly this text is listed; returns (from, kind).
fn wait_message(p: &Page, text: &str) -> (String, String) {
    let v = p.wait_for(
        &format!(
            "(() => {{ const m = [...document.querySelectorAll('[data-testid=\"message\"]')]\
             .find(e => e.querySelector('.text').textContent === {}); \
             return m ? [m.dataset.from, m.dataset.kind] : null; }})()",
            js(text)
        ),
        &format!("message {text:?}"),
    );
    (
        v[0].as_str().unwrap().to_string(),
        v[1].as_str().unwrap().to_string(),
    )
}

fn count(p: &Page, testid: &str) -> usize {
    p.eval(&format!(
        "document.querySelectorAll('[data-testid=\"{testid}\"]').length"
    ))
    .as_u64()
    .unwrap() as usize
}

/// Ids strictly increasing (so none twice) in page order.
fn assert_ordered_once(msgs: &[(i64, String, String, String)], who: &str) {
    for w in msgs.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "{who}: ids out of order or repeated: {msgs:?}"
        );
    }
}

#[test]
fn web_assets_cached_with_policy_and_switchable() {
    let s = TestServer::start();
    let mut sock = connect(s.addr);
    use std::io::Write;
    write!(
        sock,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        s.addr.port()
    )
    .unwrap();
    let page = read_response(&mut sock).unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        &format!(
            "connect-src 'self' ws://127.0.0.1:{0} wss://127.0.0.1:{0}",
            s.addr.port()
        ),
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(page.body.contains("data-testid=\"message-list\""));
    assert!(!page.body.contains("<script>"), "no inline script");
    let etag = page.header("etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    // Revalidation on the same keep-alive connection: 304, no body.
    write!(sock, "GET / HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n").unwrap();
    let nm = read_response(&mut sock).unwrap();
    assert_eq!((nm.status, nm.body.as_str()), (304, ""));
    assert_eq!(nm.header("etag"), Some(etag.as_str()));
    for (path, ctype) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let r = s.http("GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(!r.body.is_empty());
        assert_ne!(
            r.header("etag"),
            Some(etag.as_str()),
            "{path} has its own tag"
        );
    }
    // HEAD: the headers of a GET, no body, and the connection stays usable.
    write!(
        sock,
        "HEAD /app.js HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n"
    )
    .unwrap();
    let head = read_headers_only(&mut sock);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Length: "), "{head}");
    let health = read_response(&mut sock).unwrap();
    assert_eq!(health.status, 200);
    let r = s.http("POST", "/", Some("{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(s.http("GET", "/index.html", None).status, 404);

    let off = TestServer::with(|c| c.web = false);
    for path in ["/", "/app.js", "/favicon.svg"] {
        assert_eq!(
            off.http("GET", path, None).status,
            404,
            "{path} with KLAV_WEB=off"
        );
    }
    assert_eq!(off.http("GET", "/health", None).status, 200);
}

/// A response head (for `HEAD`, whose `Content-Length` announces no body).
fn read_headers_only(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

#[test]
fn web_two_people_chat_both_ways_unread_and_hostile_text() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    // Mina sees Joon arrive as a system entry (with its log id).
    mina.wait_for(
        "[...document.querySelectorAll('[data-kind=\"system\"]')].some(e => e.textContent.includes('준'))",
        "joon's join as a system entry",
    );

    say(&mina, "안녕하세요, 준!");
    assert_eq!(
        wait_message(&joon, "안녕하세요, 준!"),
        ("mina".into(), "msg".into())
    );
    say(&joon, "반가워요 미나 :)");
    assert_eq!(
        wait_message(&mina, "반가워요 미나 :)"),
        ("joon".into(), "msg".into())
    );
    // Own messages are told apart.
    assert_eq!(
        mina.eval(
            "[...document.querySelectorAll('[data-testid=\"message\"].mine')].map(e => e.dataset.from)"
        ),
        json!(["mina"])
    );
    // Shift+Enter is a newline, not a send.
    mina.fill("message-input", "첫 줄");
    mina.press("Enter", 13, 8);
    mina.ime_commit("둘째 줄");
    mina.enter();
    wait_message(&joon, "첫 줄\n둘째 줄");

    // Hostile text shows literally and runs nothing.
    let hostile = "<img src=x onerror=alert(1)>";
    say(&joon, hostile);
    assert_eq!(wait_message(&mina, hostile), ("joon".into(), "msg".into()));
    assert_eq!(
        mina.eval("document.querySelectorAll('[data-testid=\"message-list\"] img').length"),
        json!(0)
    );

    // A room not open counts what arrives in it, and moves to the top.
    join(&mina, "quiet");
    say(&joon, "lobby news");
    mina.wait_for(
        "(() => { const i = document.querySelector('[data-testid=\"room-item\"]'); \
         return i && i.querySelector('.room-name').textContent === 'lobby' \
         && i.querySelector('[data-testid=\"unread\"]')?.textContent === '1'; })()",
        "lobby on top with one unread",
    );
    // Errors show where they happened: a message over 4000 characters.
    mina.eval(&format!(
        "{}.value = 'x'.repeat(4001)",
        Page::q("message-input")
    ));
    mina.click("message-send");
    mina.wait_for(
        &format!("{}.textContent.includes('too long')", Page::q("send-error")),
        "TEXT_TOO_LONG shown under the composer",
    );
    let lobby = mina.eval("document.querySelector('[data-testid=\"room-item\"]').dataset.roomId");
    mina.click_selector(&format!(
        "[data-testid=\"room-item\"][data-room-id={}]",
        lobby
    ));
    wait_message(&mina, "lobby news");
    assert_eq!(count(&mina, "unread"), 0);
    mina.eval(&format!("{}.value = ''", Page::q("message-input")));
    // A DM inside the room, and a followed friend online.
    joon.fill("dm-to", "mina");
    say(&joon, "비밀인데, 내일 점심 같이 할래?");
    assert_eq!(
        wait_message(&mina, "비밀인데, 내일 점심 같이 할래?"),
        ("joon".into(), "dm".into())
    );
    mina.fill("friend-name", "joon");
    mina.click("friend-follow");
    mina.wait_for(
        "document.querySelector('[data-testid=\"online-friend\"][data-username=\"joon\"]')",
        "joon among mina's online friends",
    );
    say(&mina, "좋아! 12시에 봐요");
    wait_message(&joon, "좋아! 12시에 봐요");
    assert_ordered_once(&messages(&mina), "mina");
    assert_ordered_once(&messages(&joon), "joon");
    // Every entry carries its time, shown in the browser's local time.
    assert_eq!(
        mina.eval(
            "[...document.querySelectorAll('[data-testid=\"message\"]')].every(e => { \
             const t = e.querySelector('time'); return t && t.textContent.length > 0 \
             && !Number.isNaN(Date.parse(t.dateTime)); })"
        ),
        json!(true)
    );

    mina.screenshot("chat-room");
    joon.screenshot("chat-room-other-side");
    // Leaving a room takes it off the list.
    let quiet = mina.eval(
        "[...document.querySelectorAll('[data-testid=\"room-item\"]')].find(e => e.textContent.includes('quiet')).dataset.roomId",
    );
    mina.click_selector(&format!(
        "[data-testid=\"room-item\"][data-room-id={quiet}]"
    ));
    mina.wait_for(
        &format!("{}.textContent === 'quiet'", Page::q("room-title")),
        "quiet open",
    );
    mina.click("room-leave");
    mina.wait_for(
        "document.querySelectorAll('[data-testid=\"room-item\"]').length === 1",
        "quiet gone from the list",
    );
    mina.resize(390, 780).unwrap();
    mina.screenshot("phone-room");
    mina.click("logout");
    mina.wait_for(
        "!document.getElementById('login-view').hidden",
        "the login form after logout",
    );
    mina.screenshot("login");

    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_scrolling_up_loads_older_history() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
    });
    let mut api = s.client("hana");
    let room = api.create_room("archive");
    api.join(&room);
    for i in 0..130 {
        api.send(json!({"type": "msg", "room_id": room, "text": format!("m{i}")}));
    }
    for _ in 0..130 {
        api.expect("message");
    }
    let (_one, b) = browser();
    let p = open(&b, &s);
    login(&p, "hana", PASSWORD);
    status_online(&p);
    p.click_selector(&format!(
        "[data-testid=\"room-item\"][data-room-id=\"{room}\"]"
    ));
    p.wait_for(
        "document.querySelectorAll('[data-testid=\"message\"]').length === 50",
        "the newest 50 entries",
    );
    assert_eq!(messages(&p).last().unwrap().3, "m129");
    // Scroll to the top until everything (130 messages, 2 system entries) is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&p, "message") < 132 {
        assert!(Instant::now() < deadline, "older history did not load");
        p.eval(&format!("{}.scrollTop = 0", Page::q("message-list")));
        std::thread::sleep(Duration::from_millis(150));
    }
    let all = messages(&p);
    assert_ordered_once(&all, "hana");
    assert_eq!(all[0].2, "system");
    let texts: Vec<&str> = all[2..].iter().map(|m| m.3.as_str()).collect();
    let want: Vec<String> = (0..130).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want);
    // Scrolling back kept the reader's place: not thrown to the bottom.
    let pos = p.eval(&format!(
        "(() => {{ const l = {}; return l.scrollHeight - l.scrollTop - l.clientHeight; }})()",
        Page::q("message-list")
    ));
    assert!(pos.as_f64().unwrap() > 100.0, "{pos}");
    p.screenshot("history");
    p.assert_clean("hana");
}

#[test]
fn web_dms_offline_dms_and_live_presence() {
    let s = TestServer::start();
    // Alice is a member of "lobby" but offline.
    let t = s.user_nick("alice", "앨리스");
    let mut a = s.ws(&t);
    let room = a.create_room("lobby");
    a.join(&room);
    a.close();

    let (_one, b) = browser();
    let bob = open(&b, &s);
    register(&bob, "bob", "밥");
    join(&bob, "lobby");
    follow(&bob, "alice");
    assert_eq!(count(&bob, "online-friend"), 0);

    // A DM to someone offline is queued…
    bob.fill("dm-to", "alice");
    say(&bob, "psst, 나중에 봐");
    bob.wait_for(
        &format!("{}.textContent.includes('offline')", Page::q("send-error")),
        "the DM reported queued",
    );
    // …and the sender's own copy is shown as a DM.
    assert_eq!(
        wait_message(&bob, "psst, 나중에 봐"),
        ("bob".into(), "dm".into())
    );

    // Alice connects: she gets it, and Bob sees her online.
    let alice = open(&b, &s);
    login(&alice, "alice", PASSWORD);
    status_online(&alice);
    let offline = alice.wait_for(
        "[...document.querySelectorAll('[data-testid=\"offline-dm\"]')].map(e => [e.dataset.from, e.querySelector('.text').textContent])",
        "the offline DM",
    );
    assert_eq!(offline, json!([["bob", "psst, 나중에 봐"]]));
    bob.wait_for(
        "document.querySelector('[data-testid=\"online-friend\"][data-username=\"alice\"]')",
        "alice online in bob's friends",
    );
    assert!(bob
        .eval(&format!("{}.textContent", Page::q("online-friends")))
        .as_str()
        .unwrap()
        .contains("앨리스"));
    alice.screenshot("offline-dm");

    // A live DM the other way, shown distinctly; nobody else sees it.
    alice.click_selector(&format!(
        "[data-testid=\"room-item\"][data-room-id=\"{room}\"]"
    ));
    alice.fill("dm-to", "bob");
    say(&alice, "got it");
    assert_eq!(wait_message(&bob, "got it"), ("alice".into(), "dm".into()));
    assert_eq!(
        wait_message(&alice, "got it"),
        ("alice".into(), "dm".into())
    );
    bob.screenshot("dm");

    // Alice leaves: Bob's list follows.
    alice.click("logout");
    bob.wait_for(
        "!document.querySelector('[data-testid=\"online-friend\"][data-username=\"alice\"]')",
        "alice offline in bob's friends",
    );
    // And back online once more, then the page just closes.
    login(&alice, "alice", PASSWORD);
    status_online(&alice);
    bob.wait_for(
        "document.querySelector('[data-testid=\"online-friend\"][data-username=\"alice\"]')",
        "alice online again",
    );
    alice.assert_clean("alice");
    alice.close();
    bob.wait_for(
        "!document.querySelector('[data-testid=\"online-friend\"][data-username=\"alice\"]')",
        "alice offline after her page closed",
    );
    bob.screenshot("friends");
    // Unfollow from the list of followed users.
    bob.click_selector("#following-box summary");
    bob.click("friend-unfollow");
    bob.wait_for(
        &format!(
            "{}.textContent.includes('no longer follow alice')",
            Page::q("friend-error")
        ),
        "the unfollow acknowledged",
    );
    bob.wait_for(
        "document.querySelectorAll('[data-testid=\"followed\"]').length === 0",
        "the followed list emptied",
    );
    bob.assert_clean("bob");
}

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
fn web_korean_ime_enter_during_composition_does_not_send() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let p = open(&b, &s);
    register(&p, "sora", "소라");
    join(&p, "한국어방");
    let before = count(&p, "message");
    p.eval(&format!(
        "(() => {{ const i = {}; i.focus(); i.addEventListener('keydown', \
         e => {{ if (e.key === 'Enter') window.__composing = e.isComposing; }}, true); }})()",
        Page::q("message-input")
    ));
    p.ime_compose("ㅎ");
    p.ime_compose("하");
    p.ime_compose("한");
    assert_eq!(
        p.eval(&format!("{}.value", Page::q("message-input"))),
        json!("한")
    );
    // Enter while the syllable is still being composed (isComposing): the IME's,
    // not a send.
    p.ime_enter(13);
    assert_eq!(
        p.eval("window.__composing"),
        json!(true),
        "the page saw Enter during a composition"
    );
    p.ime_commit("한");
    // Enter reported as keyCode 229 (how some browsers report the key that ends a
    // composition): not a send either.
    p.ime_enter(229);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&p, "message"),
        before,
        "Enter during composition sent"
    );
    assert_eq!(
        p.eval(&format!("{}.value", Page::q("message-input"))),
        json!("한")
    );
    p.ime_compose("ㄱ");
    p.ime_compose("국");
    p.ime_commit("국어 입력 테스트");
    assert_eq!(
        p.eval(&format!("{}.value", Page::q("message-input"))),
        json!("한국어 입력 테스트")
    );
    p.enter();
    assert_eq!(
        wait_message(&p, "한국어 입력 테스트"),
        ("sora".into(), "msg".into())
    );
    std::thread::sleep(Duration::from_millis(300));
    let msgs = messages(&p);
    assert_eq!(
        msgs.iter().filter(|m| m.3 == "한국어 입력 테스트").count(),
        1,
        "{msgs:?}"
    );
    assert_eq!(
        p.eval(&format!("{}.value", Page::q("message-input"))),
        json!("")
    );
    p.screenshot("korean");
    p.assert_clean("sora");
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
    postgres::Client::connect(&db, postgres::NoTls)
        .unwrap()
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

/// Presses Tab until the element with `testid` has the focus; panics after `max`.
fn tab_to(p: &Page, testid: &str, max: usize) {
    let focused = || {
        p.eval("document.activeElement && document.activeElement.dataset.testid || ''")
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let mut seen = Vec::new();
    for _ in 0..max {
        if focused() == testid {
            return;
        }
        p.press("Tab", 9, 0);
        seen.push(focused());
    }
    assert_eq!(focused(), testid, "Tab order visited {seen:?}");
}

#[test]
fn web_phone_width_with_the_keyboard_alone() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let p = b
        .new_page(390, 780)
        .unwrap_or_else(|e| panic!("new page: {e}"));
    p.goto(&format!("http://{}/", s.addr));
    // The form: the username has the focus; type, Tab, type, Enter.
    p.wait_for(
        "document.activeElement && document.activeElement.dataset.testid === 'login-username'",
        "the username field focused on load",
    );
    p.ime_commit("yuna");
    tab_to(&p, "login-password", 1);
    p.ime_commit(PASSWORD);
    tab_to(&p, "login-nickname", 1);
    p.ime_commit("유나");
    tab_to(&p, "register-submit", 3);
    p.enter();
    status_online(&p);
    p.screenshot("phone-empty");
    // Rooms are behind the menu button on a narrow screen.
    tab_to(&p, "menu-toggle", 10);
    p.enter();
    tab_to(&p, "room-name", 5);
    p.ime_commit("모바일");
    p.enter();
    p.wait_for(
        &format!("{}.textContent === '모바일'", Page::q("room-title")),
        "the room open after joining with Enter",
    );
    assert_eq!(
        p.eval("document.activeElement.dataset.testid"),
        json!("message-input"),
        "the composer has the focus once a room opens"
    );
    p.ime_commit("키보드만으로 보냈어요");
    p.enter();
    assert_eq!(
        wait_message(&p, "키보드만으로 보냈어요"),
        ("yuna".into(), "msg".into())
    );
    // Nothing wider than the screen.
    assert_eq!(
        p.eval("document.documentElement.scrollWidth <= window.innerWidth"),
        Value::Bool(true)
    );
    // Back to the list with the keyboard; the room is there.
    tab_to(&p, "menu-toggle", 10);
    p.enter();
    p.wait_for(
        "document.querySelector('[data-testid=\"room-item\"] button').getBoundingClientRect().width > 300",
        "the room list filling the screen",
    );
    p.screenshot("phone-rooms");
    p.assert_clean("yuna");
}

#[test]
fn web_request_errors_shown_at_the_composer() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 1.0;
        c.rate_burst = 10.0;
    });
    let (_one, b) = browser();
    let p = open(&b, &s);
    register(&p, "eun", "은");
    join(&p, "lobby");
    // Left from another connection: this page still shows the room.
    let mut other = s.ws(&s.token("eun"));
    let room = other.request(json!({"type": "my_rooms"}))["rooms"][0]
        .as_str()
        .unwrap()
        .to_string();
    let ack = other.request(json!({"type": "leave", "room_id": room}));
    assert_eq!(ack["status"], "LEFT");
    say(&p, "anyone here?");
    p.wait_for(
        &format!(
            "{}.textContent === 'You are not a member of this room.'",
            Page::q("send-error")
        ),
        "NOT_A_MEMBER under the composer",
    );
    // The text is given back, to send once the problem is fixed.
    assert_eq!(
        p.eval(&format!("{}.value", Page::q("message-input"))),
        json!("anyone here?")
    );
    // Faster than the connection's request rate allows.
    other.send(json!({"type": "join", "room_id": room}));
    p.wait_for(
        "document.querySelectorAll('[data-kind=\"system\"]').length >= 4",
        "the re-join as a system entry",
    );
    for i in 0..12 {
        p.eval(&format!(
            "{}.value = 'burst {i}'; {}.click()",
            Page::q("message-input"),
            Page::q("message-send")
        ));
    }
    p.wait_for(
        &format!(
            "{}.textContent.includes('Too many requests')",
            Page::q("send-error")
        ),
        "RATE_LIMITED under the composer",
    );
    p.screenshot("rate-limited");
    p.assert_clean("eun");
}

#[test]
fn web_binary_serves_the_client_unless_turned_off() {
    let dir = std::env::temp_dir().join(format!("klav-it-web-{}", std::process::id()));
    let url = pg().fresh_db();
    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let r = http_to(k.addr, "GET", "/", None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<script src=\"/app.js\" defer></script>"));
    let announced = format!("web client: http://{}/", k.addr);
    let deadline = Instant::now() + WAIT;
    while !k.stderr().contains(&announced) {
        assert!(
            Instant::now() < deadline,
            "no {announced:?} in {}",
            k.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(k.terminate().success());

    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url), ("KLAV_WEB", "off")]);
    for path in ["/", "/app.js", "/app.css", "/favicon.svg"] {
        assert_eq!(http_to(k.addr, "GET", path, None).status, 404, "{path}");
    }
    assert_eq!(http_to(k.addr, "GET", "/health", None).status, 200);
    assert!(k.terminate().success());
    assert!(!k.full_stderr().contains("web client"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A page whose every WebSocket URL is recorded (`socket_urls`), set up before
/// the client's script runs.
fn open_watching_sockets<'b>(b: &'b Browser, s: &TestServer) -> Page<'b> {
    let p = b
        .new_page(1100, 720)
        .unwrap_or_else(|e| panic!("new page: {e}"));
    p.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "window.__socketUrls = []; \
            window.WebSocket = class extends window.WebSocket { \
              constructor(url, protocols) { super(url, protocols); \
                window.__socketUrls.push(String(url)); } };"}),
    )
    .unwrap_or_else(|e| panic!("init script: {e}"));
    p.goto(&format!("http://{}/", s.addr));
    p
}

fn socket_urls(p: &Page) -> Vec<String> {
    serde_json::from_value(p.eval("window.__socketUrls")).unwrap()
}

fn page_at(b: &Browser, addr: std::net::SocketAddr) -> Page<'_> {
    let p = b
        .new_page(1100, 720)
        .unwrap_or_else(|e| panic!("new page: {e}"));
    p.goto(&format!("http://{addr}/"));
    p
}

/// Two klav nodes on one database, a page on each: presence, messages and the
/// friends list cross nodes in the browser.
#[test]
fn web_pages_on_two_nodes_see_each_other() {
    let db = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-webcluster-{}", std::process::id()));
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
