//! The loop's side of a cluster of klav nodes that share one PostgreSQL.
//!
//! Nothing but the database connects the nodes. Each node's writer sends what
//! it committed as notifications ([`bus`]); each node's listener hands the
//! others' events to its loop, which delivers them to its own connections:
//!
//! - **Entries** of a room go through the room's chain ([`chain`]): in the
//!   room's one order, exactly once, whether they come from this node's writer
//!   or another node's notification; a gap is waited for, then read back.
//!   A room this node starts to follow when a session opens reads back what
//!   it passed over since the session was read ([`PassedOver`]).
//! - **Membership** changes ride on the `joined`/`left` entries; **follows**,
//!   **edits** and **presence** have events of their own. A bus event is
//!   never authority: a join or a follow another node announces for a user
//!   connected here is granted in memory only once it has been read back from
//!   the database (the entry with the room's members, or the user's follows);
//!   leaves and unfollows apply at once.
//! - **Presence** is decided in the database: each node writes how many
//!   connections each user has on it (`klav_presence`), and the transaction
//!   that takes a user from none anywhere to some (or back) announces it to
//!   every node, this one included. Nodes beat every few seconds
//!   (`klav_nodes`); a silent node is removed by the others with its presence.
//!
//! With the embedded database, or `KLAV_CLUSTER=off`, a node is alone: no
//! notifications are sent, presence is kept in memory, and the chains only
//! ever see this node's writer (whose batches are always in order).
//!
//! The folder holds all of it but the SQL the database threads run
//! (`db::nodes`, and the notes a transaction adds, `db::notify`): the wire
//! format and its seal ([`bus`]), the thread that listens ([`listener`]), each
//! room's order ([`chain`]), and the node's state and decisions ([`node`],
//! [`entries`], [`presence`], [`clock`]). The decisions never reach into the
//! handlers: they return the [`Work`] that is ready, and the handlers run it
//! (`handlers::remote`).

pub mod bus;
pub mod chain;
pub mod clock;
pub mod entries;
pub mod listener;
pub mod node;
pub mod passed_over;
pub mod presence;

pub use node::{
    default_node_name, Cluster, Failed, Held, PresenceWrite, RemoteEntry, Submit, Work,
};
pub use passed_over::PassedOver;
