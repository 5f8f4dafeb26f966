//! Klav: a real-time chat server — one event-loop thread owning every socket, a
//! fixed pool of blocking PostgreSQL workers, and PostgreSQL for everything durable.
//!
//! The map, from what runs down to what everything uses (a module imports only
//! modules below it; `docs/architecture.md` follows one message through them):
//! - [`server`]: the mio event loop: start-up, its turns, reading (and
//!   accepting), writing and closing, per-connection timers, housekeeping,
//!   shutdown.
//! - [`handlers`]: what a WebSocket frame, a finished job or another node's
//!   event does. `request` admits and orders a connection's requests,
//!   `command` is the table of request types, one module per request family
//!   parses, applies and completes its requests, `completion` routes finished
//!   jobs back to them, `remote` delivers other nodes' entries and presence,
//!   `strangers` answers a non-member about a room they named (a private
//!   room looks like none), `http` is the HTTP endpoints (accounts in `http::accounts`, a signed-in
//!   user's account changes in `http::account`, the server API in
//!   `http::api`), `revocation` closes what a
//!   revocation of a user's tokens or their account's deletion ends.
//! - [`hub`]: what handlers work on: [`conns`], [`services`], [`state`],
//!   [`history_cache`] and [`cluster`], and the fan-out verbs.
//! - [`conns`]: every connection in a slab; the only send path, with the
//!   output cap checked once; what the loop must write, read again or close.
//! - [`services`]: the worker pools, tokens, configuration, metrics and rate
//!   budgets, handed down as one.
//! - [`cluster`]: a cluster's decisions: each room's entries in one order on
//!   every node, presence across nodes, the node clock and catch-up, and the
//!   authenticated bus (`cluster::bus`) with its listener thread. It returns
//!   `Work` for the handlers to run and never calls them.
//! - [`history_cache`]: the newest entries of active rooms, for `history`.
//! - [`conn`]: one connection: its phase (HTTP → upgrading → WebSocket), its
//!   lifecycle (`Life`: open, paused, closing, lingering) and request order.
//! - [`state`]: online users, room members with their roles, presence
//!   watchers, member watches and who blocks whom, in memory.
//! - [`db`]: typed jobs and outcomes; the pool, its circuit breaker and the
//!   schema; the general workers and their SQL by family (`db::queries`); the
//!   single ordered writer, by concern (`db::writer`); the embedded PostgreSQL;
//!   node liveness and presence rows; notes to other nodes through a
//!   `Notifier` the cluster provides.
//! - [`webhooks`]: the outbox's events POSTed, signed, to `KLAV_WEBHOOK_URL`
//!   by delivery threads of their own; `klav webhooks failed|retry`.
//! - [`import`]: `klav import-json`, the legacy JSON files into the schema.
//! - [`protocol`]: request decoding, error codes, events.
//! - [`close`]: why a connection closes and what that means on the wire.
//! - [`config`]: the environment (and `.env`) as a typed `Config`.
//! - [`auth`]: JWTs (on the loop) and argon2id (on hashing threads).
//! - [`throttle`], [`budget`]: budgets of the account endpoints (failed logins,
//!   registrations) and per-user ones (rooms created, rows read).
//! - [`ws`]: the upgrade response, tungstenite over our own buffers, frame-once.
//! - [`web`]: the browser client's files, embedded and served from memory.
//! - [`client_addr`]: the address a request is counted under (trusted proxies).
//! - [`metrics`], [`mod@log`], [`time`]: Prometheus counters, log lines, ISO-8601.
//! - [`http`]: request parsing with limits, responses.
//! - [`api_call`]: a server API request while it waits for the database.
//! - [`out_queue`]: a connection's bounded output queue (shared fan-out frames).
//! - [`in_buf`]: a connection's unparsed input (consumed by moving a cursor).
//! - [`turn`]: what one turn of the loop may still spend.
//! - [`names`]: usernames, nicknames, room names, and the system texts built from them.
//! - [`ticket`]: who waits for background work (connection id, `req_id`).
//! - [`alloc`]: giving freed memory back to the system.
//!
//! The docs of private items are part of the map: read them with
//! `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod alloc;
pub mod api_call;
pub mod auth;
pub mod budget;
pub mod client_addr;
pub mod close;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod conns;
pub mod db;
pub mod handlers;
pub mod history_cache;
pub mod http;
pub mod hub;
pub mod import;
pub mod in_buf;
pub mod log;
pub mod metrics;
pub mod names;
pub mod out_queue;
pub mod protocol;
pub mod server;
pub mod services;
pub mod state;
pub mod throttle;
pub mod ticket;
pub mod time;
pub mod turn;
pub mod web;
pub mod webhooks;
pub mod ws;
