//! The event loop: one thread, one `mio::Poll`, every socket.
//!
//! A turn of the loop: wait for readiness (or a worker's wake-up, or the next
//! timer) → accept → read what is readable, within a budget per connection →
//! apply finished jobs → read again what was left for later → close what asked
//! to close → write each connection's pending output once → fire due timers.
//!
//! Nothing here blocks: database and hashing work is handed to threads through
//! bounded queues, log lines to a writer thread, and socket writes that would
//! block stay queued until the socket is writable.
//!
//! - [`start`](mod@start): listeners, database, worker pools, the loop's thread.
//! - [`event_loop`]: the [`Server`](event_loop::Server) state and its turns.
//! - [`reading`]: readiness → bytes → HTTP requests or WebSocket frames, and
//!   accepting connections; [`put_off`]: the reads a turn leaves for later.
//! - [`writing`]: output queues → sockets, interest, and every close.
//! - [`timers`]: per-connection deadlines (HTTP timeout, ping, linger), filed
//!   in [`deadlines`].
//! - [`housekeeping`]: once a second; [`shutdown`]: a graceful stop.

mod deadlines;
mod event_loop;
mod housekeeping;
mod put_off;
mod reading;
mod shutdown;
mod start;
mod timers;
mod writing;

pub use start::{start, Running, StartError};
