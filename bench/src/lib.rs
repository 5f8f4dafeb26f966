//! klav-bench: a load generator for the Klav chat server that speaks its real HTTP
//! and WebSocket protocol over real sockets, and checks what it measures (every
//! delivery accounted for: missing, duplicated, out of order).
//!
//! Use it from the command line (`klav-bench chat --addr 127.0.0.1:5000`) or in
//! process, for short smoke runs in integration tests:
//!
//! ```no_run
//! use std::time::Duration;
//! use klav_bench::{run, ChatOptions, Options, Scenario};
//!
//! let opts = Options {
//!     addr: "127.0.0.1:5055".into(),
//!     duration: Duration::from_secs(2),
//!     scenario: Scenario::Chat(ChatOptions { rooms: 2, members: 3, ..Default::default() }),
//!     ..Default::default()
//! };
//! let report = run(&opts).expect("run");
//! assert_eq!(report.messages.as_ref().unwrap().missing, 0);
//! println!("{report}");
//! ```
//!
//! The map:
//! - [`options`]: what a run does ([`Options`], [`Scenario`] and each scenario's sizes).
//! - [`report`]: what it found ([`Report`]), as text or one JSON line.
//! - [`error`]: why a run could not be carried out ([`BenchError`]).
//! - [`cli`]: the command line into [`Options`].
//! - `run`: the runner, start gate, progress and memory sampling.
//! - `net`: the mio client loop and the WebSocket connection state machine.
//! - `nodes`: several server nodes (`--addr a,b,c`): which connection goes where.
//! - `scenarios`: chat/fanout, dm, connect, history, login, presence, abuse;
//!   `scenarios::rooms` is what chat, fanout and dm share (the member connection
//!   loop, its checks, room setup and merging the counts).
//! - `raw`: byte-level HTTP and WebSocket connections for the `abuse` attacks.
//! - [`stats`]: message stamps, sequence tracking, in-flight windows, histograms.
//! - `users`, `http`, `jwt`: registering users and getting their tokens.
//! - `event`: the server's events, parsed without copying.

pub mod cli;
pub mod error;
mod event;
mod http;
mod jwt;
mod net;
mod nodes;
pub mod options;
mod raw;
pub mod report;
mod run;
mod scenarios;
pub mod stats;
mod users;

pub use error::BenchError;
pub use options::{
    AbuseOptions, Attack, ChatOptions, ConnectOptions, DmOptions, HistoryOptions, JwtAlg,
    LoginOptions, Options, PresenceOptions, Scenario,
};
pub use report::{
    AbuseReport, AttackReport, ConnectionReport, Counts, MessageReport, NodeReport, PresenceReport,
    Report, RequestReport, SetupReport,
};
pub use run::raise_nofile_limit;
pub use scenarios::run;
pub use stats::Latency;
