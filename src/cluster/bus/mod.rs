//! What nodes tell each other, and how it fits in PostgreSQL notifications.
//!
//! Every transaction that changes what other nodes show (entries, edits,
//! presence, follows) sends its events with `pg_notify('klav', …)` before it
//! commits: PostgreSQL delivers them to every listening node in commit order,
//! and only if the transaction commits. One batch of the writer is one
//! transaction, so notifications go per batch, not per message.
//!
//! **Anyone who can connect can notify.** `pg_notify` and `LISTEN` need no
//! privilege beyond CONNECT, so a read-only role could otherwise put words in
//! any node's mouth, or record payloads and send them again. So every payload
//! is sealed ([`Sealer`]) and opened ([`Inbox`]) under a key of the bus's own,
//! derived from `JWT_SECRET` (which every node of a cluster shares already):
//!
//! ```text
//! klav1 <HMAC-SHA256, 64 hex digits>\n<node>\n<incarnation> <sequence> <time µs>\n<JSON array of events>
//! ```
//!
//! The MAC covers everything after the first line: who sent it (node name and
//! incarnation), the sender's sequence number (one counter per process, shared
//! by the writer and the workers) and its wall-clock time. A receiver drops a
//! payload whose MAC is wrong, whose time is more than [`MAX_SKEW`] from its own
//! clock (nodes' clocks must agree within it), whose (sender, sequence) it has
//! taken already ([`REPLAY_WINDOW`]), or whose events are implausible (ids past
//! 2^53, names longer than their columns, unknown entry kinds …). Even then a
//! bus entry is news, not authority: a node grants a membership or a follow
//! only once it has read it back from the database (see [`crate::cluster`]).
//!
//! A payload is at most [`MAX_PAYLOAD`] bytes (PostgreSQL refuses 8,000).
//! Events are packed into as few payloads as fit; an entry too large for a
//! payload of its own travels by reference ([`BusEvent::EntryRef`]) and is read
//! back from `chat_logs` by the receiver.
//!
//! The folder, from the ground up: the wire format of the events (`wire`),
//! the payload's layout and sizes (`layout`), packing events into payloads
//! (`payloads`), the key (`key`), why a payload is dropped (`refused`), what
//! an event may plausibly claim (`plausible`), each sender's replay window
//! (`replay`), and the two ends: the sealer every notifying thread shares
//! (`seal`) and the listener's inbox that opens (`inbox`).

mod inbox;
mod key;
mod layout;
mod payloads;
mod plausible;
mod refused;
mod replay;
mod seal;
mod wire;

#[cfg(test)]
mod fixtures;

pub use crate::db::notify::{BusEvent, EntryRef, MemberOp, CHANNEL};
pub use inbox::{Inbox, Opened};
pub use key::BusKey;
pub use layout::{MAX_BODY, MAX_HEADER, MAX_NODE_NAME, MAX_PAYLOAD};
pub use payloads::Payloads;
pub use plausible::MAX_ID;
pub use refused::{BusDropped, Refused};
pub use replay::{FORGET_AFTER, MAX_SENDERS, MAX_SKEW, REPLAY_WINDOW};
pub use seal::Sealer;
pub use wire::{
    encode_block, encode_change, encode_change_ref, encode_disconnected, encode_entry,
    encode_entry_ref, encode_follow, encode_presence, encode_read_marker, encode_typing,
};
