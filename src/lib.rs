//! Klav: a real-time chat server — one event-loop thread owning every socket, a
//! fixed pool of blocking PostgreSQL workers, and PostgreSQL for everything durable.
//!
//! The map:
//! - [`config`]: the environment (and `.env`) as a typed `Config`.
//! - [`server`]: the mio event loop and the [`server::hub::Hub`] handlers work on.
//! - [`conn`]: one connection's state machine (HTTP → upgrading → WebSocket) and
//!   its bounded output queue.
//! - [`http`]: request parsing with limits, responses.
//! - [`ws`]: the upgrade response, tungstenite over our own buffers, frame-once.
//! - [`protocol`]: request decoding, error codes, events.
//! - [`handlers`]: one module per request family, plus HTTP accounts and sessions.
//! - [`state`]: online users, room members and presence watchers in memory.
//! - [`history_cache`]: the newest entries of active rooms, for `history`.
//! - [`db`]: typed jobs, the workers and the single ordered writer, SQL, schema,
//!   the embedded PostgreSQL cluster.
//! - [`auth`]: JWTs (on the loop) and argon2id (on hashing threads).
//! - [`import`]: `klav import-json`, the legacy JSON files into the schema.
//! - [`throttle`]: failed-login throttling.
//! - [`web`]: the browser client's files, embedded and served from memory.
//! - [`metrics`], [`log`], [`time`]: Prometheus counters, log lines, ISO-8601.

pub mod auth;
pub mod config;
pub mod conn;
pub mod db;
pub mod handlers;
pub mod history_cache;
pub mod http;
pub mod import;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod state;
pub mod throttle;
pub mod time;
pub mod web;
pub mod ws;
