//! Webhooks: the events a node's transactions store in the outbox (see
//! `db::outbox`) POSTed to `KLAV_WEBHOOK_URL`, signed, at least once, in
//! order per room, by whichever node claims them first.
//!
//! - `config`: the settings, and the refusal to start with a short secret;
//! - `sign`: `Klav-Signature` (made per attempt) and its check;
//! - `store`: the delivery side's SQL: claims, attempts, gauges, dead letters;
//! - `deliver`: the delivery threads, with their own connections and HTTP client;
//! - `cli`: `klav webhooks failed|retry`.
//!
//! `docs/webhooks.md` is the receiver's side of it.

pub mod cli;
pub mod config;
mod deliver;
pub mod sign;
pub mod store;

pub use config::WebhookConfig;
pub use deliver::{start, Delivery, PROBE_INTERVAL, TIMEOUT};
