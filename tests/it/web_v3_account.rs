//! The web client's account settings and what a new user runs into, in
//! headless Chromium against the real server: a password change that keeps
//! this page logged in and ends every other session, logging out everywhere,
//! deleting the account, desktop notifications (asked on a click, shown while
//! the tab is hidden) with @mention highlighting, links and date separators,
//! DMs by nickname, the remembered room, and the composer's small manners.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::browser::*;
use crate::support::cdp::Page;
use crate::support::chat::fill_room;
use crate::support::web_pages::*;

const NEW_PASSWORD: &str = "an0ther-pass-word";

#[test]
fn web_password_change_keeps_this_page_and_ends_the_other_session() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let here = open(&b, &s);
    let there = open(&b, &s);
    register(&here, "mina", "미나");
    login(&there, "mina", PASSWORD);
    status_online(&there);
    join(&there, "lobby");
    let old_token = here.eval("JSON.parse(localStorage.getItem('klav.session')).token");

    here.click("settings-open");
    here.fill("password-current", PASSWORD);
    here.fill("password-new", NEW_PASSWORD);
    here.screenshot("settings");
    here.click("password-submit");
    wait_text(&here, "settings-note", "Password changed.");
    // The other session is over, and says why.
    wait_text(&there, "auth-error", "logged out everywhere");
    assert_eq!(
        there.eval("document.getElementById('login-view').hidden"),
        json!(false)
    );
    // This page carries on with the new token.
    let new_token = here.eval("JSON.parse(localStorage.getItem('klav.session')).token");
    assert_ne!(new_token, old_token);
    here.click("settings-close");
    status_online(&here);
    join(&here, "lobby");
    say(&here, "still logged in");
    stored_id(&here, "still logged in");
    std::thread::sleep(Duration::from_millis(1200));
    status_online(&here);
    assert_eq!(
        here.eval("document.getElementById('chat-view').hidden"),
        json!(false)
    );
    assert_eq!(s.login("mina", PASSWORD).status, 401);
    s.login_token("mina", NEW_PASSWORD);
    here.assert_clean("here");
    there.assert_clean("there");
}

#[test]
fn web_logout_everywhere_and_account_deletion() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let p = open(&b, &s);
    register(&p, "dana", "다나");
    p.click("settings-open");
    p.click("logout-all");
    wait_text(&p, "auth-error", "You logged out everywhere.");
    assert_eq!(ws_ticket_at(s.addr, Some(&s.token("dana"))).status, 200);

    login(&p, "dana", PASSWORD);
    status_online(&p);
    p.click("settings-open");
    p.fill("password-current", "wrong password");
    p.click("account-delete");
    p.click("account-delete");
    wait_text(&p, "settings-note", "Wrong current password.");
    p.fill("password-current", PASSWORD);
    // The first click only asks.
    p.click("account-delete");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.login("dana", PASSWORD).status, 200);
    p.click("account-delete");
    wait_text(&p, "auth-error", "Your account was deleted.");
    assert_eq!(s.login("dana", PASSWORD).status, 401);
    p.assert_clean("dana");
}

/// A page whose `Notification` records what it shows and how often permission
/// was asked, and whose visibility the test sets (`window.__hidden`).
fn open_recording_notifications<'b>(
    b: &'b crate::support::cdp::Browser,
    s: &TestServer,
) -> Page<'b> {
    let p = b.new_page(1100, 720).unwrap();
    p.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "window.__asked = 0; window.__shown = []; window.__hidden = false; \
            window.Notification = class { \
              static permission = 'default'; \
              static requestPermission() { window.__asked += 1; \
                window.Notification.permission = 'granted'; return Promise.resolve('granted'); } \
              constructor(title, o) { window.__shown.push([title, o && o.body]); } \
              close() {} }; \
            Object.defineProperty(document, 'visibilityState', \
              { get: () => window.__hidden ? 'hidden' : 'visible' });"}),
    )
    .unwrap();
    p.goto(&format!("http://{}/", s.addr));
    p
}

#[test]
fn web_notifications_for_dms_and_mentions_while_hidden() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open_recording_notifications(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    // Never asked on load: only on a click.
    assert_eq!(mina.eval("window.__asked"), json!(0));
    mina.click("settings-open");
    mina.click("notify-enable");
    mina.wait_for("window.__asked === 1", "permission asked on the click");
    mina.wait_for(
        &format!("{}.hidden", Page::q("notify-enable")),
        "the button gone once allowed",
    );
    mina.click("settings-close");

    mina.eval("window.__hidden = true");
    say(&joon, "hey @mina, look");
    let id = stored_id(&mina, "hey @mina, look");
    say(&joon, "nothing for anyone");
    wait_message(&mina, "nothing for anyone");
    joon.fill("dm-to", "mina");
    say(&joon, "psst");
    wait_message(&mina, "psst");
    mina.wait_for("window.__shown.length >= 2", "two notifications");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mina.eval("window.__shown"),
        json!([
            ["준 mentioned you in lobby", "hey @mina, look"],
            ["준 (DM in lobby)", "psst"]
        ])
    );
    // The mention is highlighted; other @words are not "me".
    assert_eq!(
        mina.eval(&format!(
            "(() => {{ const m = document.querySelector('{}'); return [m.dataset.mention, \
             m.querySelector('.at.me')?.textContent]; }})()",
            message_sel(id)
        )),
        json!(["true", "@mina"])
    );
    // Visible again: no notification, and what came meanwhile is read.
    mina.eval("window.__hidden = false; document.dispatchEvent(new Event('visibilitychange'))");
    let lobby = room_id(&mina, "lobby");
    wait_unread(&mina, &lobby, 0);
    say(&joon, "@미나 again");
    wait_message(&mina, "@미나 again");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mina.eval("window.__shown.length"), json!(2));
    assert_eq!(
        mina.eval(&format!("{}.dataset.mention", message_js("@미나 again"))),
        json!("true")
    );
    mina.screenshot("mentions");
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_links_and_date_separators() {
    let s = TestServer::start();
    let port = s.addr.port();
    let mut hana = s.client("hana");
    let room = hana.create_room("lobby");
    hana.join(&room);
    fill_room(&mut s.db(), &room, "hana", 2, "from two days ago");
    // Two days back, with the server down so that its cache starts fresh.
    let db = s.stop();
    connect_db(&db)
        .execute(
            "UPDATE chat_logs SET ts = ts - interval '2 days' WHERE room_id = $1",
            &[&room],
        )
        .unwrap();
    let s = TestServer::restart_on(&db, port);
    let (_one, b) = browser();
    let p = open(&b, &s);
    register(&p, "mina", "미나");
    join(&p, "lobby");
    let text = "see https://example.com/a?b=1, javascript:alert(1) and http://x.test/y.";
    let mut hana = s.ws(&s.token("hana"));
    hana.send(json!({"type": "msg", "room_id": room, "text": text}));
    wait_message(&p, text);
    let links = p.eval(&format!(
        "[...{}.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.textContent, a.rel, a.target])",
        message_js(text)
    ));
    assert_eq!(
        links,
        json!([
            [
                "https://example.com/a?b=1",
                "https://example.com/a?b=1",
                "noopener noreferrer",
                "_blank"
            ],
            [
                "http://x.test/y",
                "http://x.test/y",
                "noopener noreferrer",
                "_blank"
            ]
        ])
    );
    // One separator per day, in order: two days ago, then today.
    let seps = p.eval(
        "[...document.querySelectorAll('[data-testid=\"date-separator\"]')].map(e => e.textContent)",
    );
    let seps = seps.as_array().unwrap();
    assert_eq!(seps.len(), 2, "{seps:?}");
    assert_eq!(seps[1], json!("Today"));
    assert_ne!(seps[0], json!("Yesterday"));
    assert_eq!(
        p.eval(
            "document.querySelector('[data-testid=\"message-list\"]').firstElementChild.dataset.testid"
        ),
        json!("date-separator")
    );
    p.screenshot("links-dates");
    p.assert_clean("mina");
}

#[test]
fn web_dm_by_nickname_clears_and_explains() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    wait_member(&joon, "mina", true, "owner");
    // A nickname finds its member; the field empties after the send.
    joon.fill("dm-to", "미나");
    say(&joon, "by nickname");
    assert_eq!(
        wait_message(&mina, "by nickname"),
        ("joon".into(), "dm".into())
    );
    assert_eq!(joon.eval(&format!("{}.value", Page::q("dm-to"))), json!(""));
    say(&joon, "to everyone");
    assert_eq!(
        wait_message(&mina, "to everyone"),
        ("joon".into(), "msg".into())
    );
    // Somebody not in the room: said clearly, the text given back.
    joon.fill("dm-to", "nobody");
    say(&joon, "hello?");
    wait_text(
        &joon,
        "send-error",
        "There is no user called nobody in this room",
    );
    assert_eq!(
        joon.eval(&format!(
            "[{}.value, {}.value]",
            Page::q("dm-to"),
            Page::q("message-input")
        )),
        json!(["nobody", "hello?"])
    );
    // The room list shows nicknames, as the bubbles do.
    let lobby = room_id(&mina, "lobby");
    mina.wait_for(
        &format!(
            "document.querySelector('[data-room-id=\"{lobby}\"] [data-testid=\"room-preview\"]').textContent === '준: to everyone'"
        ),
        "the preview with the nickname",
    );
    // A stale "too long" goes once the text fits.
    mina.eval(&format!(
        "{}.value = 'x'.repeat(4001)",
        Page::q("message-input")
    ));
    mina.click("message-send");
    wait_text(&mina, "send-error", "too long");
    mina.fill("message-input", "short again");
    mina.wait_for(
        &format!("{}.textContent === ''", Page::q("send-error")),
        "the stale error cleared",
    );
    // An offline DM says which room it came from.
    joon.click("logout");
    mina.fill("message-input", "");
    mina.fill("dm-to", "joon");
    say(&mina, "while you were out");
    wait_text(&mina, "send-error", "offline");
    login(&joon, "joon", PASSWORD);
    status_online(&joon);
    // The DM may arrive before the room list; the room's name follows it.
    let dm = joon.wait_for(
        "document.querySelector('[data-testid=\"offline-dm\"]')?.textContent.includes('in lobby') \
         && document.querySelector('[data-testid=\"offline-dm\"]').textContent",
        "the offline DM naming its room",
    );
    assert!(dm.as_str().unwrap().contains("미나 in lobby"), "{dm}");
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_open_room_remembered_scrolled_to_the_newest_and_focus_after_login() {
    let s = TestServer::start();
    let mut api = s.client("hana");
    let room = api.create_room("archive");
    api.join(&room);
    fill_room(&mut s.db(), &room, "hana", 80, "old line");
    s.user("mina");
    let (_one, b) = browser();
    let p = open(&b, &s);
    login(&p, "mina", PASSWORD);
    status_online(&p);
    // After a keyboard-less login the focus is in the page, not on the body.
    p.wait_for(
        "['room-name', 'message-input'].includes(document.activeElement?.dataset.testid)",
        "the focus on the room field",
    );
    join(&p, "archive");
    api.send(json!({"type": "msg", "room_id": room, "text": "the newest"}));
    wait_message(&p, "the newest");
    // Reload, log out and in: the room opens again, scrolled to its end.
    for round in 0..2 {
        if round == 0 {
            reload(&p);
        } else {
            p.click("logout");
            p.fill("login-username", "mina");
            p.fill("login-password", PASSWORD);
            p.enter();
            status_online(&p);
        }
        p.wait_for(
            &format!("{}.textContent === 'archive'", Page::q("room-title")),
            "archive open again",
        );
        wait_message(&p, "the newest");
        p.wait_for(
            &format!(
                "(() => {{ const l = {}; const last = l.lastElementChild.getBoundingClientRect(); \
                 return l.scrollHeight - l.scrollTop - l.clientHeight < 2 \
                 && last.bottom <= l.getBoundingClientRect().bottom + 1; }})()",
                Page::q("message-list")
            ),
            "the newest message fully in view",
        );
        p.wait_for(
            "document.activeElement?.dataset.testid === 'message-input'",
            "the focus in the composer",
        );
    }
    p.screenshot("remembered-room");
    p.assert_clean("mina");
}
