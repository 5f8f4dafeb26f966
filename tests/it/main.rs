//! Integration tests: the real server, a real PostgreSQL, real sockets.
//! One test binary so that one throwaway cluster serves the whole run.

mod cdp;
mod harness;

mod accounts;
mod bench_smoke;
mod budgets;
mod bus;
mod cli;
mod cluster;
mod costs;
mod database;
mod docs_links;
mod friends;
mod fuzz_corpus;
mod hardening;
mod import;
mod memory;
mod messages;
mod names;
mod ordering;
mod queue;
mod rooms;
mod upgrade;
mod v2;
mod web;
