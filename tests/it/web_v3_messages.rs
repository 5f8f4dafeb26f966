//! The web client's messages on klav.js, in headless Chromium against the real
//! server: "X is typing…", edit in place, delete (own and by a moderator) with
//! its tombstone, a message pending while the server is away and stored once
//! it is back, and unread counts from the server that survive a reload and stay
//! in sync across tabs.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::browser::*;
use crate::support::cdp::Page;
use crate::support::web_pages::*;

#[test]
fn web_typing_shows_to_others_and_ends_with_the_message() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    // Someone in another room hears nothing of it.
    let mut carl = s.client("carl");
    let other = carl.create_room("elsewhere");
    carl.join(&other);
    carl.drain(Duration::from_millis(200));

    joon.fill("message-input", "타이핑 중");
    wait_text(&mina, "typing-indicator", "준 is typing…");
    // The typer's own page never says so.
    assert_eq!(text(&joon, "typing-indicator"), "");
    carl.none_of("typing");
    // The message ends it.
    joon.enter();
    wait_message(&mina, "타이핑 중");
    mina.wait_for(
        &format!("{}.textContent === ''", Page::q("typing-indicator")),
        "the typing indicator cleared by the message",
    );
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_edit_in_place_saves_with_enter_and_cancels_with_escape() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    say(&mina, "first draft");
    let id = stored_id(&mina, "first draft");
    wait_message(&joon, "first draft");
    // Only the author may edit: joon's page offers no edit of mina's message.
    assert_eq!(
        joon.eval(&format!(
            "document.querySelectorAll('{} [data-testid=\"message-edit\"]').length",
            message_sel(id)
        )),
        json!(0)
    );

    mina.click_selector(&format!(
        "{} [data-testid=\"message-edit\"]",
        message_sel(id)
    ));
    mina.wait_for(
        "document.activeElement?.dataset.testid === 'message-edit-input'",
        "the message turned into a focused field",
    );
    mina.fill("message-edit-input", "second draft");
    mina.enter();
    for p in [&mina, &joon] {
        p.wait_for(
            &format!(
                "(() => {{ const m = document.querySelector('{}'); return m && m.dataset.edited === 'true' \
                 && m.querySelector('.text').textContent === 'second draft'; }})()",
                message_sel(id)
            ),
            "the edit shown in place",
        );
    }
    // Escape leaves the message as it was.
    mina.click_selector(&format!(
        "{} [data-testid=\"message-edit\"]",
        message_sel(id)
    ));
    mina.fill("message-edit-input", "never saved");
    mina.press("Escape", 27, 0);
    mina.wait_for(
        &format!("!{}", Page::q("message-edit-input")),
        "the edit field gone after Escape",
    );
    std::thread::sleep(Duration::from_millis(400));
    for p in [&mina, &joon] {
        assert_eq!(
            message_state(p, id),
            json!(["second draft", "true", null, null])
        );
    }
    mina.screenshot("edited");
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_delete_own_and_as_moderator_leaves_tombstones() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    // Mina makes the room by joining it by name: she owns it.
    join(&mina, "lobby");
    join(&joon, "lobby");
    say(&mina, "mine to delete");
    say(&joon, "joon's words");
    let mine = stored_id(&mina, "mine to delete");
    let his = stored_id(&joon, "joon's words");
    wait_message(&mina, "joon's words");
    wait_message(&joon, "mine to delete");
    // A plain member cannot delete someone else's message.
    assert_eq!(
        joon.eval(&format!(
            "document.querySelectorAll('{} [data-testid=\"message-delete\"]').length",
            message_sel(mine)
        )),
        json!(0)
    );

    // The first click asks, the second deletes.
    let own = format!("{} [data-testid=\"message-delete\"]", message_sel(mine));
    mina.click_selector(&own);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        message_state(&joon, mine)[2],
        json!(null),
        "deleted on one click"
    );
    mina.click_selector(&own);
    // The owner deletes joon's message too.
    let moderated = format!("{} [data-testid=\"message-delete\"]", message_sel(his));
    mina.click_selector(&moderated);
    mina.click_selector(&moderated);
    for p in [&mina, &joon] {
        for id in [mine, his] {
            p.wait_for(
                &format!(
                    "document.querySelector('{}')?.dataset.deleted === 'true'",
                    message_sel(id)
                ),
                "the tombstone",
            );
            assert_eq!(
                message_state(p, id),
                json!(["message deleted", null, "true", null])
            );
        }
    }
    // The tombstones stay after a reload (from history).
    reload(&joon);
    joon.wait_for(
        &format!(
            "document.querySelector('{}')?.dataset.deleted === 'true'",
            message_sel(his)
        ),
        "the tombstone after a reload",
    );
    joon.screenshot("tombstones");
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_message_pending_while_offline_is_stored_once_when_back() {
    let s = TestServer::start();
    let port = s.addr.port();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    register(&mina, "mina", "미나");
    join(&mina, "lobby");
    say(&mina, "before");
    stored_id(&mina, "before");

    let db = s.stop();
    mina.wait_for(
        &format!(
            "!{}.textContent.includes('online')",
            Page::q("connection-status")
        ),
        "the page to notice the server went away",
    );
    say(&mina, "written while offline");
    // Shown at once, marked pending, without an id.
    let pending = mina.wait_for(
        &format!(
            "(() => {{ const m = {}; return m ? [m.dataset.pending ?? null, m.dataset.id ?? null] : null; }})()",
            message_js("written while offline")
        ),
        "the pending message",
    );
    assert_eq!(pending, json!(["true", null]));
    assert_eq!(
        mina.eval(&format!("{}.value", Page::q("message-input"))),
        json!("")
    );
    mina.screenshot("pending");
    std::thread::sleep(Duration::from_millis(1000));
    let s2 = TestServer::restart_on(&db, port);
    status_online(&mina);
    let id = stored_id(&mina, "written while offline");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        message_state(&mina, id),
        json!(["written while offline", null, null, null])
    );
    let msgs = messages(&mina);
    assert_ordered_once(&msgs, "mina");
    assert_eq!(
        msgs.iter()
            .filter(|m| m.3 == "written while offline")
            .count(),
        1
    );
    assert_eq!(
        s2.count(
            "SELECT count(*) FROM chat_logs WHERE text = $1",
            &[&"written while offline"]
        ),
        1
    );
    mina.assert_clean("mina");
}

#[test]
fn web_unread_counts_survive_reload_and_follow_other_tabs() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    register(&mina, "mina", "미나");
    join(&mina, "lobby");
    join(&mina, "quiet");
    let lobby = room_id(&mina, "lobby");
    let mut joon = s.client("joon");
    joon.join(&lobby);
    for t in ["one", "two"] {
        joon.send(json!({"type": "msg", "room_id": lobby, "text": t}));
        joon.expect("message");
    }
    wait_unread(&mina, &lobby, 2);
    assert_eq!(
        mina.eval("document.querySelector('[data-testid=\"unread\"]').textContent"),
        json!("2")
    );
    // From the server after a reload; the open room is remembered too.
    reload(&mina);
    wait_unread(&mina, &lobby, 2);
    mina.wait_for(
        &format!("{}.textContent === 'quiet'", Page::q("room-title")),
        "quiet open again after the reload",
    );

    // A second tab of the same person.
    let tab = open(&b, &s);
    login(&tab, "mina", PASSWORD);
    status_online(&tab);
    wait_unread(&tab, &lobby, 2);
    // Reading in one tab clears the count in the other.
    open_room(&mina, "lobby");
    wait_message(&mina, "two");
    wait_unread(&mina, &lobby, 0);
    wait_unread(&tab, &lobby, 0);
    reload(&tab);
    room_id(&tab, "lobby");
    wait_unread(&tab, &lobby, 0);
    // A new message, read at once in the tab that has the room open.
    joon.send(json!({"type": "msg", "room_id": lobby, "text": "three"}));
    wait_message(&mina, "three");
    tab.wait_for(
        &format!(
            "document.querySelector('[data-room-id=\"{lobby}\"] [data-testid=\"room-preview\"]').textContent.includes('three')"
        ),
        "the new message in the other tab's room list",
    );
    wait_unread(&tab, &lobby, 0);
    tab.screenshot("unread-other-tab");
    mina.assert_clean("mina");
    tab.assert_clean("tab");
}

#[test]
fn web_unread_past_a_hundred_shows_99_plus() {
    let s = TestServer::start();
    let mut hana = s.client("hana");
    let room = hana.create_room("busy");
    hana.join(&room);
    let mut mina = s.client("mina");
    mina.join(&room);
    crate::support::chat::fill_room(&mut s.db(), &room, "hana", 150, "busy line");
    let (_one, b) = browser();
    let p = open(&b, &s);
    login(&p, "mina", PASSWORD);
    status_online(&p);
    p.wait_for(
        &format!(
            "document.querySelector('[data-room-id=\"{room}\"] [data-testid=\"unread\"]')?.textContent === '99+'"
        ),
        "99+ unread",
    );
    // The number is what the server counted (among the first 100 entries).
    assert!(unread(&p, &room).unwrap() > 90, "{:?}", unread(&p, &room));
    p.assert_clean("mina");
}
