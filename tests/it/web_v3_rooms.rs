//! The web client's rooms with owners, in headless Chromium against the real
//! server: the member list with live online state and roles (moderation buttons
//! on hover and keyboard focus), private rooms and invitations accepted and
//! declined live, kick and ban from the member list, blocks, hostile room
//! topics, invitation names and nicknames shown as text, and the same across
//! two nodes of a cluster.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::browser::*;
use crate::support::cdp::Page;
use crate::support::web_pages::*;

#[test]
fn web_member_list_with_live_online_state_and_roles() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    let lobby = room_id(&mina, "lobby");
    wait_member(&mina, "mina", true, "owner");
    wait_member(&mina, "joon", true, "member");
    wait_member(&joon, "mina", true, "owner");
    assert!(mina
        .eval(&format!("{}.textContent", member_js("joon")))
        .as_str()
        .unwrap()
        .contains("준 (joon)"));

    // Carl comes and goes: online, then offline, live.
    let carl_token = s.user("carl");
    let mut carl = s.ws(&carl_token);
    carl.join(&lobby);
    wait_member(&mina, "carl", true, "member");
    carl.close();
    wait_member(&mina, "carl", false, "member");
    let mut carl = s.ws(&carl_token);
    wait_member(&mina, "carl", true, "member");
    carl.drain(Duration::from_millis(100));

    // The owner may kick and ban members; nobody moderates themselves; a plain
    // member only blocks.
    assert_eq!(
        member_buttons(&mina, "joon"),
        ["member-kick", "member-ban", "member-block"]
    );
    assert!(member_buttons(&mina, "mina").is_empty());
    assert_eq!(member_buttons(&joon, "mina"), ["member-block"]);
    assert_eq!(member_buttons(&joon, "carl"), ["member-block"]);
    // The buttons show on hover and on keyboard focus, not otherwise.
    mina.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseMoved", "x": 2, "y": 2}),
    )
    .unwrap();
    mina.wait_for(
        &format!(
            "getComputedStyle({}.querySelector('.actions')).opacity === '0'",
            member_js("joon")
        ),
        "joon's buttons hidden",
    );
    mina.eval(&format!(
        "{}.querySelector('[data-testid=\"member-kick\"]').focus()",
        member_js("joon")
    ));
    mina.wait_for(
        &format!(
            "getComputedStyle({}.querySelector('.actions')).opacity === '1'",
            member_js("joon")
        ),
        "joon's buttons shown on keyboard focus",
    );
    assert_eq!(actions_opacity(&mina, &member_js("carl")), "0");
    let pos = mina.eval(&format!(
        "(() => {{ const r = {}.getBoundingClientRect(); return [r.x + 5, r.y + r.height / 2]; }})()",
        member_js("carl")
    ));
    mina.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseMoved", "x": pos[0], "y": pos[1]}),
    )
    .unwrap();
    mina.wait_for(
        &format!(
            "getComputedStyle({}.querySelector('.actions')).opacity === '1'",
            member_js("carl")
        ),
        "carl's buttons shown on hover",
    );
    mina.screenshot("members");

    // A role change shows live on every page.
    let mut owner = s.ws(&s.token("mina"));
    let ack = owner
        .request(json!({"type": "set_role", "room_id": lobby, "user": "joon", "role": "admin"}));
    assert_eq!(ack["type"], "set_role_ack", "{ack}");
    wait_member(&mina, "joon", true, "admin");
    wait_member(&joon, "joon", true, "admin");
    // An admin may moderate members, not the owner.
    joon.wait_for(
        &format!(
            "{}.querySelector('[data-testid=\"member-kick\"]')",
            member_js("carl")
        ),
        "kick offered to the new admin",
    );
    assert_eq!(member_buttons(&joon, "mina"), ["member-block"]);
    // At phone width the list is behind a toggle.
    joon.resize(390, 780).unwrap();
    assert_eq!(
        joon.eval("getComputedStyle(document.getElementById('members-panel')).display"),
        json!("none")
    );
    joon.click("members-toggle");
    joon.wait_for(
        "getComputedStyle(document.getElementById('members-panel')).display !== 'none'",
        "the member list shown by its toggle",
    );
    joon.screenshot("phone-members");
    joon.click("members-close");
    joon.wait_for(
        "getComputedStyle(document.getElementById('members-panel')).display === 'none' \
         && document.activeElement?.dataset.testid === 'members-toggle'",
        "back to the room",
    );
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_private_room_and_invitations_accepted_and_declined() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");

    // Ticked before joining: a private room, made and opened.
    mina.click("room-private");
    mina.fill("room-name", "secret");
    mina.click("room-join");
    mina.wait_for(
        &format!(
            "{0}.textContent === 'secret' && {0}.dataset.private === 'true'",
            Page::q("room-title")
        ),
        "the private room open",
    );
    let secret = room_id(&mina, "secret");
    wait_member(&mina, "mina", true, "owner");
    // Nobody finds it by name: joon's join by that name makes a public room of his own.
    join(&joon, "secret");
    assert_ne!(room_id(&joon, "secret"), secret);
    joon.click("room-leave");
    joon.wait_for(
        "document.querySelectorAll('[data-testid=\"room-item\"]').length === 0",
        "joon's own room left",
    );

    mina.fill("invite-user", "nobody");
    mina.click("invite-submit");
    wait_text(&mina, "invite-note", "There is no user nobody.");
    mina.fill("invite-user", "joon");
    mina.click("invite-submit");
    wait_text(&mina, "invite-note", "joon is invited.");
    // The invitation shows live, with who sent it.
    let item = joon.wait_for(
        "(() => { const i = document.querySelector('[data-testid=\"invite-item\"]'); \
         return i ? [i.dataset.roomId, i.textContent] : null; })()",
        "the invitation",
    );
    assert_eq!(item[0], json!(secret));
    assert!(
        item[1]
            .as_str()
            .unwrap()
            .contains("미나 invites you to secret"),
        "{item}"
    );
    joon.screenshot("invitation");
    joon.click("invite-accept");
    joon.wait_for(
        &format!("{}.textContent === 'secret'", Page::q("room-title")),
        "the private room open for joon",
    );
    assert_eq!(count(&joon, "invite-item"), 0);
    wait_member(&mina, "joon", true, "member");
    say(&joon, "thanks for the invite");
    wait_message(&mina, "thanks for the invite");

    // A second one, declined.
    mina.click("room-private");
    mina.fill("room-name", "secret two");
    mina.click("room-join");
    mina.wait_for(
        &format!("{}.textContent === 'secret two'", Page::q("room-title")),
        "the second private room open",
    );
    let second = room_id(&mina, "secret two");
    mina.fill("invite-user", "joon");
    mina.click("invite-submit");
    wait_text(&mina, "invite-note", "joon is invited.");
    joon.wait_for(
        &format!(
            "document.querySelector('[data-testid=\"invite-item\"][data-room-id=\"{second}\"]')"
        ),
        "the second invitation",
    );
    joon.click("invite-decline");
    joon.wait_for(
        "document.querySelectorAll('[data-testid=\"invite-item\"]').length === 0",
        "the invitation gone once declined",
    );
    let mut api = s.ws(&s.token("joon"));
    let invites = api.request(json!({"type": "my_invites"}));
    assert_eq!(invites["invites"], json!([]), "{invites}");
    assert!(unread(&joon, &second).is_none(), "a declined room listed");
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_kick_and_ban_from_the_member_list() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    let lobby = room_id(&mina, "lobby");
    wait_member(&mina, "joon", true, "member");

    member_action(&mina, "joon", "member-kick", 2);
    wait_text(&mina, "members-note", "joon was removed from the room.");
    wait_no_member(&mina, "joon");
    wait_text(&joon, "room-error", "You were removed from lobby by 미나.");
    joon.wait_for(
        "document.querySelectorAll('[data-testid=\"room-item\"]').length === 0",
        "lobby gone from joon's list",
    );
    assert_eq!(text(&joon, "room-title"), "No room open");
    // A kicked user may come back to a public room.
    join(&joon, "lobby");
    wait_member(&mina, "joon", true, "member");

    member_action(&mina, "joon", "member-ban", 2);
    wait_text(&mina, "members-note", "joon is banned from the room.");
    wait_text(&joon, "room-error", "You were banned from lobby by 미나.");
    joon.wait_for(
        "document.querySelectorAll('[data-testid=\"room-item\"]').length === 0",
        "lobby gone again",
    );
    // Nothing more of the room reaches the banned page.
    say(&mina, "after the ban");
    wait_message(&mina, "after the ban");
    std::thread::sleep(Duration::from_millis(400));
    assert!(unread(&joon, &lobby).is_none());
    joon.fill("room-name", "lobby");
    joon.click("room-join");
    wait_text(&joon, "room-error", "You are banned from lobby.");
    mina.screenshot("after-ban");
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_block_and_unblock_from_the_member_list() {
    let s = TestServer::start();
    let (_one, b) = browser();
    let mina = open(&b, &s);
    let joon = open(&b, &s);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    join(&mina, "lobby");
    join(&joon, "lobby");
    wait_member(&mina, "joon", true, "member");

    member_action(&mina, "joon", "member-block", 1);
    wait_text(&mina, "members-note", "You blocked joon");
    mina.wait_for(
        &format!(
            "{}.querySelector('[data-testid=\"member-block\"]').dataset.blocked === 'true'",
            member_js("joon")
        ),
        "the block button turned into unblock",
    );
    mina.click("settings-open");
    mina.wait_for(
        "document.querySelector('[data-testid=\"blocked-item\"][data-username=\"joon\"]')",
        "joon among the blocked users",
    );
    mina.click("settings-close");
    // Joon's DM is refused, and says so; mina gets nothing.
    joon.fill("dm-to", "mina");
    say(&joon, "are you there?");
    wait_text(
        &joon,
        "send-error",
        "mina does not accept direct messages from you.",
    );
    assert_eq!(
        joon.eval(&format!("{}.value", Page::q("message-input"))),
        json!("are you there?")
    );
    // Room messages still flow both ways.
    joon.eval(&format!("{}.value = ''", Page::q("dm-to")));
    say(&joon, "room message");
    wait_message(&mina, "room message");
    assert!(mina.eval(&message_js("are you there?")).is_null());
    // After a reload joon no longer sees mina online.
    reload(&joon);
    wait_member(&joon, "mina", false, "owner");

    member_action(&mina, "joon", "member-block", 1);
    wait_text(&mina, "members-note", "You unblocked joon.");
    joon.fill("dm-to", "mina");
    say(&joon, "hello again");
    assert_eq!(
        wait_message(&mina, "hello again"),
        ("joon".into(), "dm".into())
    );
    mina.assert_clean("mina");
    joon.assert_clean("joon");
}

#[test]
fn web_hostile_topics_invitation_names_and_nicknames_stay_text() {
    let s = TestServer::start();
    let hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>";
    let evil_token = s.user_nick("evil", hostile);
    let mut evil = s.ws(&evil_token);
    evil.send(json!({"type": "join", "room": hostile}));
    let room = evil.expect("system")["room"].as_str().unwrap().to_string();
    let ack = evil.request(json!({"type": "room_update", "room_id": room, "topic": hostile}));
    assert_eq!(ack["type"], "room_updated", "{ack}");
    s.user("mina");
    let (_one, b) = browser();
    let mina = open(&b, &s);
    login(&mina, "mina", PASSWORD);
    status_online(&mina);
    let ack = evil.request(json!({"type": "invite", "room_id": room, "user": "mina"}));
    assert_eq!(ack["status"], "INVITED", "{ack}");
    let item = mina.wait_for(
        "document.querySelector('[data-testid=\"invite-item\"]')?.textContent",
        "the invitation",
    );
    assert_eq!(
        item,
        json!(format!("{hostile} invites you to {hostile} JoinDecline"))
    );
    mina.click("invite-accept");
    mina.wait_for(
        &format!("{}.textContent === {}", Page::q("room-title"), js(hostile)),
        "the room open, its name as text",
    );
    wait_text(&mina, "room-topic", hostile);
    mina.wait_for(
        &format!(
            "{}?.textContent.includes({})",
            member_js("evil"),
            js(hostile)
        ),
        "the nickname in the member list, as text",
    );
    let mut lobby_msg = s.ws(&evil_token);
    lobby_msg.send(json!({"type": "msg", "room_id": room, "text": hostile}));
    wait_message(&mina, hostile);
    // A change of name and topic shows live, as text too.
    let renamed = format!("{hostile} (renamed)");
    let ack = evil.request(
        json!({"type": "room_update", "room_id": room, "name": renamed, "topic": "calm now"}),
    );
    assert_eq!(ack["type"], "room_updated", "{ack}");
    mina.wait_for(
        &format!(
            "{}.textContent === {} && {}.textContent === 'calm now'",
            Page::q("room-title"),
            js(&renamed),
            Page::q("room-topic")
        ),
        "the new name and topic",
    );
    wait_message(&mina, &format!("{hostile} 님이 대화방 정보를 바꾸었습니다"));
    // Nothing of it became an element: one image (the logo), one script (app.js).
    assert_eq!(
        mina.eval("[document.images.length, document.scripts.length]"),
        json!([1, 1])
    );
    mina.screenshot("hostile-names");
    mina.assert_clean("mina");
}

/// Two klav nodes on one database, a page on each: an invitation, the member
/// list's presence and a kick made on one node reach the page on the other.
#[test]
fn web_invitation_presence_and_kick_across_nodes() {
    let db = pg().fresh_db();
    let dir = scratch_dir("webv3cluster");
    let spawn = |i: usize| {
        let name = format!("v{i}");
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
    let (_one, b) = browser();
    let mina = page_at(&b, n0.addr);
    let joon = page_at(&b, n1.addr);
    register(&mina, "mina", "미나");
    register(&joon, "joon", "준");
    mina.click("room-private");
    mina.fill("room-name", "across");
    mina.click("room-join");
    mina.wait_for(
        &format!("{}.textContent === 'across'", Page::q("room-title")),
        "the private room open on node 0",
    );
    mina.fill("invite-user", "joon");
    mina.click("invite-submit");
    wait_text(&mina, "invite-note", "joon is invited.");
    joon.click("invite-accept");
    joon.wait_for(
        &format!("{}.textContent === 'across'", Page::q("room-title")),
        "the room open on node 1",
    );
    wait_member(&mina, "joon", true, "member");
    wait_member(&joon, "mina", true, "owner");
    say(&joon, "from node 1");
    wait_message(&mina, "from node 1");
    member_action(&mina, "joon", "member-kick", 2);
    wait_text(&joon, "room-error", "You were removed from across by 미나.");
    joon.wait_for(
        "document.querySelectorAll('[data-testid=\"room-item\"]').length === 0",
        "the room gone from the page on node 1",
    );
    mina.assert_clean("mina");
    joon.assert_clean("joon");
    drop((n0, n1));
    let _ = std::fs::remove_dir_all(&dir);
}
