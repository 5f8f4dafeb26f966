//! Integration tests: the real server, a real PostgreSQL, real sockets.
//! One test binary so that one throwaway cluster serves the whole run.
//!
//! Each module holds the tests of one feature and is named after it;
//! `harness` (with `support`) is what they share.

mod harness;
mod support;

// Accounts and the HTTP side.
mod account_delete;
mod accounts;
mod api_keys;
mod http;
mod login_limits;
mod names;
mod revocation;

// The WebSocket: its upgrade, tokens and frames.
mod tokens;
mod upgrade;
mod websocket;

// Chat.
mod blocks;
mod edits;
mod follows;
mod idempotent_send;
mod member_presence;
mod messages;
mod offline_queue;
mod pipelined_requests;
mod presence;
mod read_markers;
mod resume;
mod room_invites;
mod room_moderation;
mod room_private;
mod room_roles;
mod rooms;
mod server_api;
mod server_api_posts;
mod typing;

// Budgets: what one client may cost.
mod memory_budgets;
mod request_budgets;
mod turn_budgets;

// Operations: the process, its log and metrics, the database under it, import.
mod api_docs;
mod cli;
mod db_failover;
mod db_setup;
mod docs_links;
mod embedded_cluster;
mod fuzzing;
mod import;
mod import_refusals;
mod logging;
mod metrics;
mod postgres_outages;
mod process;
mod schema_upgrade;

// Several nodes on one database.
mod cluster;
mod cluster_blocks;
mod cluster_bus;
mod cluster_faults;
mod cluster_member_presence;
mod room_cluster;

// The web client in a real browser, and the load generator.
mod bench_smoke;
mod klav_js;
mod web_assets;
mod web_chat;
mod web_docs_example;
mod web_sessions;
mod web_v3_account;
mod web_v3_messages;
mod web_v3_rooms;
mod webhooks;
mod webhooks_docs;
mod webhooks_process;
