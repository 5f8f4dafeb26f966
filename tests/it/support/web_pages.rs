//! Reading and driving the parts of the web client that came with klav.js:
//! rooms by name, messages by text, the member list, invitations, notes.

use serde_json::Value;

use crate::support::browser::{js, status_online};
use crate::support::cdp::Page;

/// The id of the room listed as `name` (waits until it is listed).
pub fn room_id(p: &Page, name: &str) -> String {
    let v = p.wait_for(
        &format!(
            "(() => {{ const i = [...document.querySelectorAll('[data-testid=\"room-item\"]')]\
             .find(e => e.querySelector('.room-name').textContent === {}); \
             return i ? i.dataset.roomId : null; }})()",
            js(name)
        ),
        &format!("room {name} listed"),
    );
    v.as_str().unwrap().to_string()
}

/// Opens a listed room from the room list and waits until its title shows.
pub fn open_room(p: &Page, name: &str) {
    let id = room_id(p, name);
    p.click_selector(&format!(
        "[data-testid=\"room-item\"][data-room-id=\"{id}\"]"
    ));
    p.wait_for(
        &format!("{}.textContent === {}", Page::q("room-title"), js(name)),
        &format!("room {name} open"),
    );
}

/// The room's `data-unread` in the room list (`None` when not listed).
pub fn unread(p: &Page, room: &str) -> Option<i64> {
    p.eval(&format!(
        "(() => {{ const i = document.querySelector('[data-testid=\"room-item\"][data-room-id=\"{room}\"]'); \
         return i ? Number(i.dataset.unread) : null; }})()"
    ))
    .as_i64()
}

/// Waits until the room's `data-unread` is `n`.
pub fn wait_unread(p: &Page, room: &str, n: i64) {
    p.wait_for(
        &format!(
            "document.querySelector('[data-testid=\"room-item\"][data-room-id=\"{room}\"]')?.dataset.unread === '{n}'"
        ),
        &format!("{n} unread in {room}"),
    );
}

/// JavaScript for the `message` element whose text is exactly `text` (or null).
pub fn message_js(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('[data-testid=\"message\"]')]\
         .find(e => e.querySelector('.text')?.textContent === {})",
        js(text)
    )
}

/// Waits until the message with this text is stored (has an id, is no longer pending); its id.
pub fn stored_id(p: &Page, text: &str) -> i64 {
    p.wait_for(
        &format!(
            "(() => {{ const m = {}; return m && m.dataset.id && !m.dataset.pending ? Number(m.dataset.id) : null; }})()",
            message_js(text)
        ),
        &format!("message {text:?} stored"),
    )
    .as_i64()
    .unwrap()
}

/// The `message` element with entry id `id`, as a CSS selector.
pub fn message_sel(id: i64) -> String {
    format!("[data-testid=\"message\"][data-id=\"{id}\"]")
}

/// An attribute or the text of the message with entry id `id`: `[text, edited, deleted, pending]`.
pub fn message_state(p: &Page, id: i64) -> Value {
    p.eval(&format!(
        "(() => {{ const m = document.querySelector('{}'); return m ? [m.querySelector('.text')?.textContent ?? null, \
         m.dataset.edited || null, m.dataset.deleted || null, m.dataset.pending || null] : null; }})()",
        message_sel(id).replace('\'', "\\'")
    ))
}

/// Waits until `testid`'s text contains `want`.
pub fn wait_text(p: &Page, testid: &str, want: &str) {
    p.wait_for(
        &format!("{}?.textContent.includes({})", Page::q(testid), js(want)),
        &format!("{testid} to say {want:?}"),
    );
}

/// `testid`'s text.
pub fn text(p: &Page, testid: &str) -> String {
    p.eval(&format!("{}.textContent", Page::q(testid)))
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// JavaScript for the member list item of `user` (or null).
pub fn member_js(user: &str) -> String {
    format!(
        "document.querySelector('[data-testid=\"member\"][data-username=' + CSS.escape({}) + ']')",
        js(user)
    )
}

/// Waits until `user` is listed as a member with this online state and role.
pub fn wait_member(p: &Page, user: &str, online: bool, role: &str) {
    p.wait_for(
        &format!(
            "(() => {{ const m = {}; return m && m.dataset.online === '{online}' && m.dataset.role === {}; }})()",
            member_js(user),
            js(role)
        ),
        &format!("member {user} online={online} role={role}"),
    );
}

/// Waits until `user` is no longer in the member list.
pub fn wait_no_member(p: &Page, user: &str) {
    p.wait_for(
        &format!("!{}", member_js(user)),
        &format!("{user} gone from the members"),
    );
}

/// The `data-testid`s of the buttons in `user`'s member item.
pub fn member_buttons(p: &Page, user: &str) -> Vec<String> {
    serde_json::from_value(p.eval(&format!(
        "[...({}?.querySelectorAll('button') ?? [])].map(b => b.dataset.testid)",
        member_js(user)
    )))
    .unwrap()
}

/// Clicks a button of `user`'s member item; twice for those that ask "sure?".
pub fn member_action(p: &Page, user: &str, testid: &str, clicks: usize) {
    let sel =
        format!("[data-testid=\"member\"][data-username=\"{user}\"] [data-testid=\"{testid}\"]");
    for _ in 0..clicks {
        p.click_selector(&sel);
    }
}

/// Reloads the page and waits until it is connected again (the session is kept).
pub fn reload(p: &Page) {
    let url = p.eval("location.href");
    p.goto(url.as_str().unwrap());
    status_online(p);
}

/// The computed opacity of the `.actions` in the element `js_elem`.
pub fn actions_opacity(p: &Page, js_elem: &str) -> String {
    p.eval(&format!(
        "getComputedStyle({js_elem}.querySelector('.actions')).opacity"
    ))
    .as_str()
    .unwrap_or_default()
    .to_string()
}
