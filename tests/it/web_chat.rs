//! The web client in a real headless Chromium (see `support/cdp.rs`) against the
//! real server: two people chatting, DMs and live presence, older history on
//! scrolling up, Korean IME input, a phone's width with the keyboard alone, and
//! errors shown at the composer. Screenshots of the main views land in
//! `target/web-screenshots/`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::browser::*;
use crate::support::cdp::Page;

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
    eventually(Duration::from_secs(30), Duration::from_millis(150), || {
        if count(&p, "message") >= 132 {
            return Ok(());
        }
        p.eval(&format!("{}.scrollTop = 0", Page::q("message-list")));
        Err("older history did not load".into())
    });
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
    // Left from another connection while this page still shows the room.
    // The page hears of the leave too and then closes the room; when that
    // comes before its send, nothing is left to refuse: a race, tried again
    // (after a pause that refills the connection's request budget) until
    // the send comes first.
    let mut other = s.ws(&s.token("eun"));
    let room = other.request(json!({"type": "my_rooms"}))["rooms"][0]
        .as_str()
        .unwrap()
        .to_string();
    let refused = format!(
        "{}.textContent === 'You are not a member of this room.'",
        Page::q("send-error")
    );
    let closed = format!("{}.textContent === 'No room open'", Page::q("room-title"));
    let mut shown = false;
    for attempt in 0..6 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_secs(3));
            join(&p, "lobby");
        }
        p.fill("message-input", "anyone here?");
        let ack = other.request(json!({"type": "leave", "room_id": room}));
        assert_eq!(ack["status"], "LEFT");
        p.enter();
        p.wait_for(
            &format!("({refused}) || ({closed})"),
            "NOT_A_MEMBER under the composer, or the room closed",
        );
        if p.eval(&refused) == json!(true) {
            shown = true;
            break;
        }
    }
    assert!(
        shown,
        "the page's send never came before it heard of the leave"
    );
    // The text is given back, to send once the problem is fixed.
    assert_eq!(
        p.eval(&format!("{}.value", Page::q("message-input"))),
        json!("anyone here?")
    );
    // Faster than the connection's request rate allows.
    let entries = p.eval("document.querySelectorAll('[data-kind=\"system\"]').length");
    other.send(json!({"type": "join", "room_id": room}));
    p.wait_for(
        &format!("document.querySelectorAll('[data-kind=\"system\"]').length > {entries}"),
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
