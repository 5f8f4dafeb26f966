//! Request handlers, one module per family, and the two entry points the loop
//! calls: [`on_ws_message`] for a WebSocket frame and [`on_completion`] for a
//! finished job.
//!
//! Each WebSocket request type is a struct that parses itself from the request
//! (`parse`) and applies itself to the hub (`apply`); its jobs' outcomes come
//! back to the same module (`*_done`). The tables that name them all are
//! [`command`] (requests) and [`completion`] (outcomes); [`request`] takes a
//! frame to its handler in order; [`remote`] is what other nodes' events do
//! here.

pub mod blocks;
pub mod command;
pub mod completion;
pub mod ctx;
pub mod dm;
pub mod edits;
pub mod friends;
pub mod history;
pub mod http;
pub mod invites;
pub mod members;
pub mod messages;
pub mod moderation;
pub mod presence;
pub mod reads;
pub mod remote;
pub mod request;
pub mod resume;
pub mod revocation;
pub mod room_admin;
pub mod rooms;
pub mod session;
pub mod strangers;
pub mod tokens;
pub mod typing;

pub use command::decode_frame;
pub use completion::on_completion;
pub use request::on_ws_message;
