//! What the tests share beyond the in-process server and its WebSocket client
//! (`crate::harness`): HTTP by hand, the binary as a child process, several
//! nodes on one database, hand-made WebSocket frames, `/metrics`, tokens,
//! waiting, the operating system's view of a process, the captured server log,
//! chat set-ups, a webhook receiver, and the helpers of the browser, friends
//! and import tests.
//!
//! `crate::harness` re-exports the general modules; `api`, `nodes`, `cdp`, `browser`,
//! `friends` and `legacy_json` are imported by the tests that need them.

pub mod api;
pub mod browser;
pub mod cdp;
pub mod chat;
pub mod frames;
pub mod friends;
pub mod jwt;
pub mod klav;
pub mod legacy_json;
pub mod logs;
pub mod nodes;
pub mod os;
pub mod owned_rooms;
pub mod pg_pair;
pub mod raw_http;
pub mod receiver;
pub mod scrape;
pub mod switch_proxy;
pub mod wait;
pub mod web_pages;
