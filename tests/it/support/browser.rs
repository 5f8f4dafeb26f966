//! Driving the web client in a real browser (through `cdp`): one page per
//! person, filling in the forms, sending, and waiting for what the page shows.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use serde_json::json;

use crate::harness::*;
use crate::support::cdp::{Browser, Page};

/// One browser at a time: each test starts its own, and several at once would
/// only compete for the same cores.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A browser of this test's own, and the guard that lets it run alone.
pub fn browser() -> (MutexGuard<'static, ()>, Browser) {
    let guard = ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    let b = Browser::launch().unwrap_or_else(|e| panic!("{e}"));
    (guard, b)
}

/// `s` as a JavaScript string literal.
pub fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A page of the web client served by `s`.
pub fn open<'b>(b: &'b Browser, s: &TestServer) -> Page<'b> {
    page_at(b, s.addr)
}

/// Waits until the page says it is connected.
pub fn status_online(p: &Page) {
    p.wait_for(
        &format!(
            "{}.textContent.includes('online')",
            Page::q("connection-status")
        ),
        "the connection status to say online",
    );
}

/// Registers from the login form (password [`PASSWORD`]) and waits until the page is connected.
pub fn register(p: &Page, user: &str, nickname: &str) {
    p.fill("login-username", user);
    p.fill("login-password", PASSWORD);
    p.fill("login-nickname", nickname);
    p.click("register-submit");
    status_online(p);
}

/// Submits the login form (the outcome is the caller's to wait for).
pub fn login(p: &Page, user: &str, password: &str) {
    p.fill("login-username", user);
    p.fill("login-password", password);
    p.click("login-submit");
}

/// Joins a room by name from the room list and waits until it is open with its history.
pub fn join(p: &Page, room: &str) {
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
pub fn follow(p: &Page, user: &str) {
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

/// Types `text` into the composer and presses Enter.
pub fn say(p: &Page, text: &str) {
    p.fill("message-input", text);
    p.enter();
}

/// The message list: (id, from, kind, text) of every stored entry, in page
/// order (a message still pending has no id yet and is left out).
pub fn messages(p: &Page) -> Vec<(i64, String, String, String)> {
    let v = p.eval(
        "[...document.querySelectorAll('[data-testid=\"message\"]:not([data-pending=\"true\"])')].map(e => \
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
pub fn wait_message(p: &Page, text: &str) -> (String, String) {
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

/// How many elements with this `data-testid` the page shows.
pub fn count(p: &Page, testid: &str) -> usize {
    p.eval(&format!(
        "document.querySelectorAll('[data-testid=\"{testid}\"]').length"
    ))
    .as_u64()
    .unwrap() as usize
}

/// Ids strictly increasing (so none twice) in page order.
pub fn assert_ordered_once(msgs: &[(i64, String, String, String)], who: &str) {
    for w in msgs.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "{who}: ids out of order or repeated: {msgs:?}"
        );
    }
}

/// Presses Tab until the element with `testid` has the focus; panics after `max`.
pub fn tab_to(p: &Page, testid: &str, max: usize) {
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

/// A page whose every WebSocket URL is recorded (`socket_urls`), set up before
/// the client's script runs.
pub fn open_watching_sockets<'b>(b: &'b Browser, s: &TestServer) -> Page<'b> {
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

/// The URLs of the WebSockets a page from [`open_watching_sockets`] opened.
pub fn socket_urls(p: &Page) -> Vec<String> {
    serde_json::from_value(p.eval("window.__socketUrls")).unwrap()
}

/// A page of the web client served at `addr`.
pub fn page_at(b: &Browser, addr: SocketAddr) -> Page<'_> {
    let p = b
        .new_page(1100, 720)
        .unwrap_or_else(|e| panic!("new page: {e}"));
    p.goto(&format!("http://{addr}/"));
    p
}
