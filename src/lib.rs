//! Klav: a real-time chat server — one event-loop thread owning every socket, a
//! fixed pool of blocking PostgreSQL workers, and PostgreSQL for everything durable.
//!
//! The map:
//! - [`config`]: the environment (and `.env`) as a typed `Config`.
//! - [`server`]: the mio event loop: readiness, reads, writes, timers, closes.
//! - [`hub`]: what handlers work on: connections, memory, pools, and the verbs
//!   (send, fan out, submit, close).
//! - [`close`]: why a connection closes and what that means on the wire.
//! - [`conn`]: one connection's state machine (HTTP → upgrading → WebSocket).
//! - [`out_queue`]: a connection's bounded output queue (shared fan-out frames).
//! - [`http`]: request parsing with limits, responses.
//! - [`ws`]: the upgrade response, tungstenite over our own buffers, frame-once.
//! - [`protocol`]: request decoding, error codes, events.
//! - [`handlers`]: one module per request family, plus HTTP accounts and sessions.
//! - [`state`]: online users, room members and presence watchers in memory.
//! - [`history_cache`]: the newest entries of active rooms, for `history`.
//! - [`db`]: typed jobs and outcomes; the pool, its circuit breaker and the
//!   schema; the general workers and their SQL by family (`db::queries`); the
//!   single ordered writer, by concern (`db::writer`); the embedded PostgreSQL
//!   cluster; node liveness and presence in the database, and the notes a
//!   transaction sends the other nodes.
//! - [`cluster`]: the loop's side of a cluster: each room's entries in one order
//!   on every node, other nodes' events, presence writes, heartbeats.
//! - [`in_buf`]: a connection's unparsed input (consumed by moving a cursor).
//! - [`auth`]: JWTs (on the loop) and argon2id (on hashing threads).
//! - [`import`]: `klav import-json`, the legacy JSON files into the schema.
//! - [`names`]: usernames, nicknames, room names, and the system texts built from them.
//! - [`throttle`]: budgets of the account endpoints: failed logins, registrations.
//! - [`client_addr`]: the address a request is counted under (trusted proxies).
//! - [`ticket`]: who waits for background work (connection id, `req_id`).
//! - [`web`]: the browser client's files, embedded and served from memory.
//! - [`metrics`], [`log`], [`time`]: Prometheus counters, log lines, ISO-8601.
//! - [`alloc`]: giving freed memory back to the system.
//! - [`budget`]: per-user budgets (rooms created).

pub mod alloc;
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
pub mod ws;
