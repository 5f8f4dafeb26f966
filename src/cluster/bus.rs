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
//! only once it has read it back from the database (see `handlers::cluster`).
//!
//! A payload is at most [`MAX_PAYLOAD`] bytes (PostgreSQL refuses 8,000).
//! Events are packed into as few payloads as fit; an entry too large for a
//! payload of its own travels by reference ([`BusEvent::EntryRef`]) and is read
//! back from `chat_logs` by the receiver.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::db::entry::ChatEntry;
pub use crate::db::notify::{BusEvent, EntryRef, MemberOp, CHANNEL};
use crate::db::notify::{Notes, Notifier};

/// Largest payload sent: under PostgreSQL's 8,000-byte limit with room to spare.
pub const MAX_PAYLOAD: usize = 7_800;

/// Longest node name a header carries (`KLAV_NODE_NAME` is at most 64 bytes).
pub const MAX_NODE_NAME: usize = 64;

/// The most a sealed payload's header takes: the version and MAC line, the
/// node name and the numbers line.
pub const MAX_HEADER: usize = VERSION.len() + 1 + 2 * MAC_LEN + 1 + MAX_NODE_NAME + 1 + 3 * 20 + 3;

/// Largest events array in a payload: what [`MAX_PAYLOAD`] leaves after the
/// header.
pub const MAX_BODY: usize = MAX_PAYLOAD - MAX_HEADER;

/// How far a payload's signing time may be from the receiver's clock. Nodes'
/// clocks must agree within it (NTP keeps them within milliseconds); a
/// payload older than this can no longer be replayed.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// How far behind a sender's newest sequence number a payload may arrive and
/// still be taken. The writer and the workers sign independently (a batch
/// signs its payloads together) and their commits reach the listeners in
/// commit order, which may differ from signing order by a few; thousands is
/// far beyond it.
pub const REPLAY_WINDOW: u64 = 4_096;

/// Senders (node incarnations) whose sequence numbers are remembered at most.
/// Only a payload with a valid MAC adds one: a cluster's nodes and their
/// restarts of the last [`FORGET_AFTER`].
pub const MAX_SENDERS: usize = 256;

/// A sender not heard from this long is forgotten: every payload it sent
/// before is stale by then (it is longer than twice [`MAX_SKEW`]).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How long before this node started listening a payload may have been signed
/// and still be taken from a sender heard for the first time: a transaction
/// signs just before it commits, and clocks differ by a little.
const START_SLACK: Duration = Duration::from_secs(2);

/// The first line's tag: this payload format and MAC.
const VERSION: &str = "klav1";

/// Bytes of an HMAC-SHA256.
const MAC_LEN: usize = 32;

/// What the bus key is derived with, from `JWT_SECRET`.
const KEY_LABEL: &[u8] = b"klav bus v1";

type HmacSha256 = Hmac<Sha256>;

/// The bus's key: HMAC-SHA256(`JWT_SECRET`, "klav bus v1"). Every node of a
/// cluster has `JWT_SECRET`; a key of the bus's own means that no bus MAC is
/// ever a token signature, nor the other way round.
#[derive(Clone)]
pub struct BusKey([u8; MAC_LEN]);

impl BusKey {
    pub fn derive(jwt_secret: &[u8]) -> BusKey {
        let mut m = HmacSha256::new_from_slice(jwt_secret).expect("HMAC takes keys of any length");
        m.update(KEY_LABEL);
        BusKey(m.finalize().into_bytes().into())
    }

    fn hmac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for BusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BusKey(..)")
    }
}

/// Seals this process's payloads: its name and incarnation, the next of its
/// sequence numbers and the time, under the bus key. One per process, shared
/// by every thread that notifies (the writer, the workers), so that a
/// receiver sees one sequence per sender.
pub struct Sealer {
    key: BusKey,
    node: String,
    incarnation: i64,
    next: AtomicU64,
}

impl Sealer {
    /// `node` is at most [`MAX_NODE_NAME`] bytes without line breaks (the
    /// configuration makes sure of it).
    pub fn new(key: BusKey, node: &str, incarnation: i64) -> Sealer {
        assert!(
            node.len() <= MAX_NODE_NAME && !node.contains('\n'),
            "a node name is at most {MAX_NODE_NAME} bytes on one line"
        );
        Sealer {
            key,
            node: node.to_string(),
            incarnation,
            next: AtomicU64::new(1),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Seals event arrays (from [`Payloads::finish`]), now.
    pub fn seal(&self, bodies: &[String]) -> Vec<String> {
        self.seal_at(bodies, SystemTime::now())
    }

    /// Seals event arrays as if it were `now` (tests forge old payloads).
    pub fn seal_at(&self, bodies: &[String], now: SystemTime) -> Vec<String> {
        let at = micros(now);
        bodies
            .iter()
            .map(|body| {
                let seq = self.next.fetch_add(1, Ordering::Relaxed);
                let head = format!("{}\n{} {seq} {at}\n", self.node, self.incarnation);
                let mut m = self.key.hmac();
                m.update(head.as_bytes());
                m.update(body.as_bytes());
                let tag = m.finalize().into_bytes();
                let mut out = String::with_capacity(
                    VERSION.len() + 2 + 2 * MAC_LEN + head.len() + body.len(),
                );
                out.push_str(VERSION);
                out.push(' ');
                for b in tag {
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 15)]));
                }
                out.push('\n');
                out.push_str(&head);
                out.push_str(body);
                debug_assert!(out.len() <= MAX_PAYLOAD, "{} bytes", out.len());
                out
            })
            .collect()
    }
}

/// The database threads note through the sealer: each transaction's notes
/// are packed into event arrays as they are added, and sealed at the end.
impl Notifier for Sealer {
    fn node(&self) -> &str {
        &self.node
    }

    fn notes(&self) -> Box<dyn Notes + '_> {
        Box::new(SealedNotes {
            sealer: self,
            payloads: Payloads::new(),
        })
    }

    fn seal(&self, bodies: &[String]) -> Vec<String> {
        Sealer::seal(self, bodies)
    }
}

/// One transaction's notes, sealed by [`Sealer`] when it is done.
struct SealedNotes<'a> {
    sealer: &'a Sealer,
    payloads: Payloads,
}

impl Notes for SealedNotes<'_> {
    fn entry(&mut self, e: &EntryRef<'_>, prev: i64, op: Option<&MemberOp>, queued: bool) {
        self.payloads.push(encode_entry(e, prev, op, queued), || {
            encode_entry_ref(e.room, prev, e.id, op)
        });
    }

    fn change(&mut self, e: &ChatEntry) {
        self.payloads
            .push(encode_change(e), || encode_change_ref(&e.room, e.id));
    }

    fn read_marker(&mut self, user: &str, room: &str, id: i64) {
        self.small(encode_read_marker(user, room, id));
    }

    fn follow(&mut self, from: &str, to: &str, on: bool) {
        self.small(encode_follow(from, to, on));
    }

    fn presence(&mut self, user: &str, nickname: &str, online: bool) {
        self.small(encode_presence(user, nickname, online));
    }

    fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    fn seal(self: Box<Self>) -> Vec<String> {
        let sealer = self.sealer;
        sealer.seal(&self.payloads.finish())
    }
}

impl SealedNotes<'_> {
    /// An event that always fits a payload of its own.
    fn small(&mut self, event: String) {
        self.payloads
            .push(event, || unreachable!("a small event always fits"));
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<[u8; MAC_LEN]> {
    let s = s.as_bytes();
    if s.len() != 2 * MAC_LEN {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; MAC_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Bus payloads the listener thread dropped, by reason: counted there, read
/// by the loop for `/metrics`.
#[derive(Default)]
pub struct BusDropped([AtomicU64; Refused::ALL.len()]);

impl BusDropped {
    pub fn count(&self, why: Refused) {
        self.0[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, why: Refused) -> u64 {
        self.0[why.index()].load(Ordering::Relaxed)
    }
}

/// Why a payload was dropped (the label is the `/metrics` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its MAC is not the bus key's: forged, or from a node with another
    /// `JWT_SECRET`.
    BadMac,
    /// Its sender's sequence number was taken already, or is older than the
    /// replay window.
    Replayed,
    /// Signed more than [`MAX_SKEW`] away from this node's clock.
    Stale,
    /// Signed, but naming ids, names or texts no node would send.
    Implausible,
    /// Not a payload of this format (another program, an older node).
    Malformed,
}

impl Refused {
    pub const ALL: [Refused; 5] = [
        Refused::BadMac,
        Refused::Replayed,
        Refused::Stale,
        Refused::Implausible,
        Refused::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::BadMac => "bad_mac",
            Refused::Replayed => "replayed",
            Refused::Stale => "stale",
            Refused::Implausible => "implausible",
            Refused::Malformed => "malformed",
        }
    }

    /// Its place in [`Refused::ALL`] (counters are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A payload that passed every check.
#[derive(Debug, PartialEq)]
pub struct Opened {
    /// The sending node's name.
    pub node: String,
    pub events: Vec<BusEvent>,
}

/// The listener's side: the bus key and which sequence numbers each sender
/// has had taken. Lives as long as the listener thread, across reconnects.
pub struct Inbox {
    key: BusKey,
    senders: Senders,
}

impl Inbox {
    /// `now`: when this node starts listening (see [`Window`]).
    pub fn new(key: BusKey, now: SystemTime) -> Inbox {
        Inbox {
            key,
            senders: Senders::new(micros(now)),
        }
    }

    /// Checks a payload, cheapest first: the MAC before anything else is read.
    pub fn open(&mut self, payload: &str, now: SystemTime) -> Result<Opened, Refused> {
        let (first, signed) = payload.split_once('\n').ok_or(Refused::Malformed)?;
        let tag = first
            .strip_prefix(VERSION)
            .and_then(|t| t.strip_prefix(' '))
            .and_then(unhex)
            .ok_or(Refused::Malformed)?;
        let mut m = self.key.hmac();
        m.update(signed.as_bytes());
        // Constant time: a forger learns nothing from how long a refusal took.
        m.verify_slice(&tag).map_err(|_| Refused::BadMac)?;
        let (node, rest) = signed.split_once('\n').ok_or(Refused::Malformed)?;
        let (numbers, body) = rest.split_once('\n').ok_or(Refused::Malformed)?;
        let mut n = numbers.split(' ');
        let (Some(incarnation), Some(seq), Some(at), None) = (
            n.next().and_then(|x| x.parse::<i64>().ok()),
            n.next().and_then(|x| x.parse::<u64>().ok()),
            n.next().and_then(|x| x.parse::<i64>().ok()),
            n.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let now_us = micros(now);
        if now_us.abs_diff(at) > MAX_SKEW.as_micros() as u64 {
            return Err(Refused::Stale);
        }
        if !self.senders.take(node, incarnation, seq, at, now_us) {
            return Err(Refused::Replayed);
        }
        let events = decode_events(body).ok_or(Refused::Malformed)?;
        if !events.iter().all(|e| plausible(e, at)) {
            return Err(Refused::Implausible);
        }
        Ok(Opened {
            node: node.to_string(),
            events,
        })
    }
}

/// Each sender's replay window, bounded in number ([`MAX_SENDERS`]) and age
/// ([`FORGET_AFTER`]).
struct Senders {
    windows: HashMap<(String, i64), Window>,
    /// When this node started listening, less [`START_SLACK`] (µs since the
    /// epoch).
    since: i64,
    last_sweep: i64,
}

impl Senders {
    fn new(listening: i64) -> Senders {
        Senders {
            windows: HashMap::new(),
            since: listening.saturating_sub(START_SLACK.as_micros() as i64),
            last_sweep: listening,
        }
    }

    /// Whether `seq` of this sender may be taken (and marks it taken).
    fn take(&mut self, node: &str, incarnation: i64, seq: u64, at: i64, now: i64) -> bool {
        let forget = FORGET_AFTER.as_micros() as i64;
        if now.saturating_sub(self.last_sweep) >= forget / 10 {
            self.last_sweep = now;
            self.windows
                .retain(|_, w| now.saturating_sub(w.heard) < forget);
        }
        let key = (node.to_string(), incarnation);
        if let Some(w) = self.windows.get_mut(&key) {
            let ok = w.take(seq, at >= self.since);
            if ok {
                w.heard = now;
            }
            return ok;
        }
        if self.windows.len() >= MAX_SENDERS {
            // Only senders with the key get here: restarts by the hundred
            // within minutes. The one heard from longest ago goes.
            if let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.heard)
                .map(|(k, _)| k.clone())
            {
                self.windows.remove(&oldest);
            }
        }
        if at < self.since {
            // Signed before this node listened: maybe committed before, when
            // nobody here could hear it, and recorded by someone who did.
            return false;
        }
        self.windows.insert(key, Window::new(seq, now));
        true
    }
}

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// One sender's sequence numbers taken lately (as IPsec's anti-replay window,
/// RFC 4303 §3.4.3, kept as a ring: bit `seq % REPLAY_WINDOW`). A number
/// older than the window is refused; so is one below the first this node
/// heard from the sender, unless it was signed after this node started
/// listening: it may have been sent before, when nobody here could see it,
/// and recorded by someone else.
struct Window {
    /// The highest number taken.
    top: u64,
    /// The first number taken from this sender.
    first: u64,
    bits: Box<[u64; WORDS]>,
    /// When a payload of this sender was last taken (µs since the epoch).
    heard: i64,
}

impl Window {
    fn new(seq: u64, now: i64) -> Window {
        let mut w = Window {
            top: seq,
            first: seq,
            bits: Box::new([0; WORDS]),
            heard: now,
        };
        w.set(seq);
        w
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Window::bit(seq);
        self.bits[w] |= b;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, b) = Window::bit(seq);
        self.bits[w] & b != 0
    }

    /// `since_listening`: the payload was signed after this node started
    /// listening.
    fn take(&mut self, seq: u64, since_listening: bool) -> bool {
        if seq > self.top {
            if seq - self.top >= REPLAY_WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.top + 1..seq {
                    let (w, b) = Window::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.top = seq;
            self.set(seq);
            return true;
        }
        if self.top - seq >= REPLAY_WINDOW || self.is_set(seq) {
            return false;
        }
        if seq < self.first && !since_listening {
            return false;
        }
        self.set(seq);
        true
    }
}

/// Packs encoded events into event arrays of at most [`MAX_BODY`] bytes, each
/// to be sealed into one payload ([`Sealer::seal`]) where it is sent.
#[derive(Default)]
pub struct Payloads {
    out: Vec<String>,
    cur: String,
}

impl Payloads {
    pub fn new() -> Payloads {
        Payloads::default()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.cur.is_empty()
    }

    /// Adds one encoded event; `fallback` encodes a smaller stand-in (a
    /// reference) for an event too large for a payload of its own.
    pub fn push(&mut self, event: String, fallback: impl FnOnce() -> String) {
        let event = if event.len() + 2 > MAX_BODY {
            fallback()
        } else {
            event
        };
        if !self.cur.is_empty() && self.cur.len() + event.len() + 2 > MAX_BODY {
            self.flush();
        }
        if self.cur.is_empty() {
            self.cur.push('[');
        } else {
            self.cur.push(',');
        }
        self.cur.push_str(&event);
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.cur.push(']');
            self.out.push(std::mem::take(&mut self.cur));
        }
    }

    /// The event arrays, in order.
    pub fn finish(mut self) -> Vec<String> {
        self.flush();
        self.out
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn op_field(op: Option<&MemberOp>) -> Value {
    match op {
        None => Value::Null,
        Some(o) => serde_json::json!([if o.joined { "j" } else { "l" }, o.user, o.nickname]),
    }
}

pub fn encode_entry(e: &EntryRef<'_>, prev: i64, op: Option<&MemberOp>, queued: bool) -> String {
    serde_json::json!([
        "e",
        e.room,
        prev,
        e.id,
        micros(e.ts),
        e.kind,
        e.from,
        e.from_nickname,
        e.to,
        e.text,
        e.client_id,
        op_field(op),
        queued
    ])
    .to_string()
}

pub fn encode_entry_ref(room: &str, prev: i64, id: i64, op: Option<&MemberOp>) -> String {
    serde_json::json!(["r", room, prev, id, op_field(op)]).to_string()
}

pub fn encode_change(e: &ChatEntry) -> String {
    serde_json::json!([
        "c",
        e.room,
        e.id,
        micros(e.ts),
        e.kind,
        e.from,
        e.from_nickname,
        e.to,
        e.text,
        e.client_id,
        e.edited_at.map(micros),
        e.deleted
    ])
    .to_string()
}

pub fn encode_change_ref(room: &str, id: i64) -> String {
    serde_json::json!(["x", room, id]).to_string()
}

pub fn encode_read_marker(user: &str, room: &str, id: i64) -> String {
    serde_json::json!(["m", user, room, id]).to_string()
}

pub fn encode_typing(room: &str, user: &str, nickname: &str) -> String {
    serde_json::json!(["t", room, user, nickname]).to_string()
}

pub fn encode_presence(user: &str, nickname: &str, online: bool) -> String {
    serde_json::json!(["p", user, nickname, online]).to_string()
}

pub fn encode_follow(from: &str, to: &str, on: bool) -> String {
    serde_json::json!(["f", from, to, on]).to_string()
}

/// A sealed payload's events. Unknown event kinds are skipped (a newer node
/// may send more than this one knows); a known kind that does not decode
/// spoils the payload.
fn decode_events(body: &str) -> Option<Vec<BusEvent>> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(body) else {
        return None;
    };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(f) = item else {
            return None;
        };
        if let Some(ev) = decode_event(&f) {
            events.push(ev);
        } else if matches!(
            f.first().and_then(Value::as_str),
            Some("e" | "r" | "c" | "x" | "p" | "f" | "m" | "t")
        ) {
            return None;
        }
    }
    Some(events)
}

/// The largest entry id a plausible event names: ids come from one sequence
/// that no cluster takes this far, and JSON clients read ids up to it exactly.
pub const MAX_ID: i64 = 1 << 53;
/// `rooms.id` is `varchar(20)`.
const MAX_ROOM_ID: usize = 20;
/// Usernames and nicknames are `varchar(100)`.
const MAX_NAME: usize = 100;
/// What `msg` and `room_dm` accept (`handlers::messages::MAX_TEXT`).
const MAX_TEXT: usize = 4_000;
/// System entries name a nickname and at most a room name (255 characters):
/// bounded generously.
const MAX_SYSTEM_TEXT: usize = 1_000;
/// `chat_logs.client_id` is `varchar(64)`.
const MAX_CLIENT_ID: usize = 64;
/// How far after its payload was signed an entry's time may lie (the
/// database's clock is not the signer's).
const TIME_AHEAD: Duration = Duration::from_secs(24 * 3600);

fn chars_within(s: &str, max: usize) -> bool {
    // Bytes bound characters from above: most strings need no count.
    s.len() <= max || s.chars().count() <= max
}

fn id_ok(id: i64) -> bool {
    (1..=MAX_ID).contains(&id)
}

fn room_ok(room: &str) -> bool {
    !room.is_empty() && chars_within(room, MAX_ROOM_ID)
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && chars_within(name, MAX_NAME)
}

/// An entry whose predecessor in its room is `prev`.
fn chained_ok(prev: i64, id: i64) -> bool {
    id_ok(id) && (0..id).contains(&prev)
}

fn op_ok(op: Option<&MemberOp>) -> bool {
    op.is_none_or(|o| name_ok(&o.user) && name_ok(&o.nickname))
}

fn entry_ok(e: &ChatEntry, signed_at: i64) -> bool {
    let latest = signed_at.saturating_add(TIME_AHEAD.as_micros() as i64);
    let time_ok = |t: SystemTime| micros(t) <= latest;
    let text_max = match e.kind.as_str() {
        "msg" | "dm" => MAX_TEXT,
        "system" => MAX_SYSTEM_TEXT,
        _ => return false,
    };
    id_ok(e.id)
        && room_ok(&e.room)
        && name_ok(&e.from)
        && name_ok(&e.from_nickname)
        && e.to.as_deref().is_none_or(name_ok)
        && chars_within(&e.text, text_max)
        && e.client_id
            .as_deref()
            .is_none_or(|c| chars_within(c, MAX_CLIENT_ID))
        && time_ok(e.ts)
        && e.edited_at.is_none_or(time_ok)
}

/// Whether an event is one a node could have sent: what the columns it comes
/// from can hold, ids a cluster can reach, times near its signing.
fn plausible(ev: &BusEvent, signed_at: i64) -> bool {
    match ev {
        BusEvent::Entry {
            entry, prev, op, ..
        } => chained_ok(*prev, entry.id) && entry_ok(entry, signed_at) && op_ok(op.as_ref()),
        BusEvent::EntryRef { room, prev, id, op } => {
            room_ok(room) && chained_ok(*prev, *id) && op_ok(op.as_ref())
        }
        BusEvent::Change { entry } => entry_ok(entry, signed_at),
        BusEvent::ChangeRef { room, id } => room_ok(room) && id_ok(*id),
        BusEvent::Presence { user, nickname, .. } => name_ok(user) && name_ok(nickname),
        BusEvent::Follow { from, to, .. } => name_ok(from) && name_ok(to),
        BusEvent::ReadMarker { user, room, id } => name_ok(user) && room_ok(room) && id_ok(*id),
        BusEvent::Typing {
            room,
            user,
            nickname,
        } => room_ok(room) && name_ok(user) && name_ok(nickname),
    }
}

fn s(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

fn opt_s(v: Option<&Value>) -> Option<Option<String>> {
    match v {
        Some(Value::Null) => Some(None),
        Some(Value::String(x)) => Some(Some(x.clone())),
        _ => None,
    }
}

fn op(v: Option<&Value>) -> Option<Option<MemberOp>> {
    match v? {
        Value::Null => Some(None),
        Value::Array(f) => Some(Some(MemberOp {
            joined: match f.first()?.as_str()? {
                "j" => true,
                "l" => false,
                _ => return None,
            },
            user: s(f.get(1))?,
            nickname: s(f.get(2))?,
        })),
        _ => None,
    }
}

/// An entry's fields as `encode_entry` and `encode_change` lay them out: the
/// room first, then from `at` on its id, time, kind, sender, nickname,
/// recipient, text and client id.
fn entry_at(f: &[Value], at: usize) -> Option<ChatEntry> {
    let i = |n: usize| f.get(n).and_then(Value::as_i64);
    Some(ChatEntry {
        room: s(f.get(1))?,
        id: i(at)?,
        ts: from_micros(i(at + 1)?),
        kind: s(f.get(at + 2))?,
        from: s(f.get(at + 3))?,
        from_nickname: s(f.get(at + 4))?,
        to: opt_s(f.get(at + 5))?,
        text: s(f.get(at + 6))?,
        client_id: opt_s(f.get(at + 7))?,
        edited_at: None,
        deleted: false,
    })
}

fn decode_event(f: &[Value]) -> Option<BusEvent> {
    let i = |n: usize| f.get(n).and_then(Value::as_i64);
    match f.first()?.as_str()? {
        "e" => Some(BusEvent::Entry {
            prev: i(2)?,
            entry: entry_at(f, 3)?,
            op: op(f.get(11))?,
            queued: f.get(12)?.as_bool()?,
        }),
        "r" => Some(BusEvent::EntryRef {
            room: s(f.get(1))?,
            prev: i(2)?,
            id: i(3)?,
            op: op(f.get(4))?,
        }),
        "c" => Some(BusEvent::Change {
            entry: ChatEntry {
                edited_at: match f.get(10)? {
                    Value::Null => None,
                    v => Some(from_micros(v.as_i64()?)),
                },
                deleted: f.get(11)?.as_bool()?,
                ..entry_at(f, 2)?
            },
        }),
        "x" => Some(BusEvent::ChangeRef {
            room: s(f.get(1))?,
            id: i(2)?,
        }),
        "m" => Some(BusEvent::ReadMarker {
            user: s(f.get(1))?,
            room: s(f.get(2))?,
            id: i(3)?,
        }),
        "t" => Some(BusEvent::Typing {
            room: s(f.get(1))?,
            user: s(f.get(2))?,
            nickname: s(f.get(3))?,
        }),
        "p" => Some(BusEvent::Presence {
            user: s(f.get(1))?,
            nickname: s(f.get(2))?,
            online: f.get(3)?.as_bool()?,
        }),
        "f" => Some(BusEvent::Follow {
            from: s(f.get(1))?,
            to: s(f.get(2))?,
            on: f.get(3)?.as_bool()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret";

    fn entry(id: i64, text: &str) -> ChatEntry {
        ChatEntry {
            id,
            ts: from_micros(1_700_000_000_123_456),
            kind: "msg".into(),
            room: "r_00000001".into(),
            from: "alice".into(),
            from_nickname: "앨리스".into(),
            to: None,
            text: text.into(),
            client_id: Some("c1".into()),
            edited_at: None,
            deleted: false,
        }
    }

    fn bob_joined() -> MemberOp {
        MemberOp {
            joined: true,
            user: "bob".into(),
            nickname: "밥".into(),
        }
    }

    /// A moment after the test entries' time.
    fn t0() -> SystemTime {
        from_micros(1_700_000_100_000_000)
    }

    fn sealer(node: &str) -> Sealer {
        Sealer::new(BusKey::derive(SECRET), node, 42)
    }

    fn inbox() -> Inbox {
        Inbox::new(BusKey::derive(SECRET), t0() - Duration::from_secs(1))
    }

    fn one(events: &[String]) -> String {
        let mut p = Payloads::new();
        for e in events {
            p.push(e.clone(), || unreachable!());
        }
        let mut out = p.finish();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    fn presence() -> String {
        encode_presence("bob", "밥", true)
    }

    #[test]
    fn events_round_trip_sealed() {
        let e = entry(7, "hi \"there\"\n");
        let mut changed = entry(7, "");
        changed.deleted = true;
        changed.edited_at = Some(from_micros(1_700_000_001_000_000));
        let body = one(&[
            encode_entry(&EntryRef::of(&e), 5, Some(&bob_joined()), false),
            encode_presence("bob", "밥", true),
            encode_follow("a", "b", false),
            encode_read_marker("a", "r", 9),
            encode_typing("r", "a", "A"),
            encode_change(&changed),
        ]);
        let sealed = sealer("node-a").seal_at(&[body], t0());
        let opened = inbox().open(&sealed[0], t0()).unwrap();
        assert_eq!(opened.node, "node-a");
        assert_eq!(
            opened.events,
            vec![
                BusEvent::Entry {
                    entry: e,
                    prev: 5,
                    op: Some(bob_joined()),
                    queued: false
                },
                BusEvent::Presence {
                    user: "bob".into(),
                    nickname: "밥".into(),
                    online: true
                },
                BusEvent::Follow {
                    from: "a".into(),
                    to: "b".into(),
                    on: false
                },
                BusEvent::ReadMarker {
                    user: "a".into(),
                    room: "r".into(),
                    id: 9
                },
                BusEvent::Typing {
                    room: "r".into(),
                    user: "a".into(),
                    nickname: "A".into()
                },
                BusEvent::Change { entry: changed },
            ]
        );
    }

    #[test]
    fn sealed_payloads_stay_under_the_limit_and_large_entries_go_by_reference() {
        let mut p = Payloads::new();
        for i in 1..=100 {
            let e = entry(i, &"x".repeat(500));
            p.push(
                encode_entry(&EntryRef::of(&e), i - 1, None, false),
                || unreachable!(),
            );
        }
        let big = entry(1000, &"\u{1}".repeat(4000));
        p.push(encode_entry(&EntryRef::of(&big), 100, None, false), || {
            encode_entry_ref(&big.room, 100, big.id, None)
        });
        let bodies = p.finish();
        assert!(bodies.len() > 1);
        // The longest name a header may carry.
        let s = Sealer::new(BusKey::derive(SECRET), &"n".repeat(MAX_NODE_NAME), i64::MAX);
        s.next.store(u64::MAX - 1_000, Ordering::Relaxed);
        let mut inbox = inbox();
        let mut ids = Vec::new();
        for payload in s.seal_at(&bodies, from_micros(i64::MAX / 2)) {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let opened = inbox.open(&payload, from_micros(i64::MAX / 2));
            for ev in opened.unwrap().events {
                match ev {
                    BusEvent::Entry { entry, .. } => ids.push(entry.id),
                    BusEvent::EntryRef { id, prev, .. } => {
                        assert_eq!(prev, 100);
                        ids.push(id)
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let want: Vec<i64> = (1..=100).chain([1000]).collect();
        assert_eq!(ids, want, "every event once, in order");
    }

    #[test]
    fn the_key_is_derived_and_the_mac_covers_every_byte() {
        assert_ne!(BusKey::derive(SECRET).0, BusKey::derive(b"another").0);
        assert_ne!(
            &BusKey::derive(SECRET).0[..],
            SECRET,
            "never the secret itself"
        );
        let payload = sealer("n").seal_at(&[one(&[presence()])], t0()).remove(0);
        assert!(inbox().open(&payload, t0()).is_ok());
        // Any byte after the MAC line changed, or a MAC digit changed.
        let mac_end = payload.find('\n').unwrap();
        for i in (mac_end + 1..payload.len()).chain([mac_end - 1, VERSION.len() + 1]) {
            let mut b = payload.clone().into_bytes();
            b[i] = if b[i] == b'1' { b'2' } else { b'1' };
            let Ok(forged) = String::from_utf8(b) else {
                continue;
            };
            assert_eq!(
                inbox().open(&forged, t0()),
                Err(Refused::BadMac),
                "byte {i} changed"
            );
        }
        // Another cluster's key.
        let other = Sealer::new(BusKey::derive(b"another"), "n", 42);
        let theirs = other.seal_at(&[one(&[presence()])], t0()).remove(0);
        assert_eq!(inbox().open(&theirs, t0()), Err(Refused::BadMac));
    }

    #[test]
    fn foreign_payloads_are_malformed_and_unknown_kinds_skipped() {
        let mut inbox = inbox();
        for foreign in [
            "no newline",
            "n\n[[\"p\",\"bob\",\"FAKE\",false]]",
            "klav1 xyz\nn\n1 1 1\n[]",
            "klav2 0000000000000000000000000000000000000000000000000000000000000000\nn\n1 1 1\n[]",
            "",
        ] {
            assert_eq!(
                inbox.open(foreign, t0()),
                Err(Refused::Malformed),
                "{foreign:?}"
            );
        }
        // Signed, but not this format inside.
        let s = sealer("n");
        let key = BusKey::derive(SECRET);
        let signed_raw = |signed: &str| {
            let mut m = key.hmac();
            m.update(signed.as_bytes());
            let tag = m.finalize().into_bytes();
            let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            format!("klav1 {hex}\n{signed}")
        };
        let at = micros(t0());
        for signed in [
            format!("n\n42 x {at}\n[]"),
            format!("n\n42 1 {at} 9\n[]"),
            format!("n\n42 1 {at}"),
        ] {
            assert_eq!(
                inbox.open(&signed_raw(&signed), t0()),
                Err(Refused::Malformed)
            );
        }
        for body in ["{}", "[[\"e\",1]]", "[1]"] {
            let p = s.seal_at(&[body.to_string()], t0()).remove(0);
            assert_eq!(inbox.open(&p, t0()), Err(Refused::Malformed), "{body}");
        }
        let p = s.seal_at(&["[[\"zz\",1],[\"p\",\"u\",\"U\",false]]".into()], t0());
        assert_eq!(inbox.open(&p[0], t0()).unwrap().events.len(), 1);
    }

    #[test]
    fn payloads_signed_too_far_from_the_clock_are_stale() {
        let s = sealer("n");
        let body = one(&[presence()]);
        let mut inbox = inbox();
        let late = t0() + MAX_SKEW + Duration::from_secs(1);
        let p = s.seal_at(std::slice::from_ref(&body), t0()).remove(0);
        assert_eq!(inbox.open(&p, late), Err(Refused::Stale));
        let ahead = s.seal_at(std::slice::from_ref(&body), late).remove(0);
        assert_eq!(inbox.open(&ahead, t0()), Err(Refused::Stale));
        let p = s.seal_at(&[body], t0()).remove(0);
        assert!(inbox.open(&p, t0() + MAX_SKEW).is_ok(), "within the bound");
    }

    #[test]
    fn each_sequence_number_is_taken_once_and_commit_order_may_differ() {
        let s = sealer("n");
        let body = one(&[presence()]);
        let ps = s.seal_at(&vec![body; 10], t0());
        let mut inbox = inbox();
        // Committed out of signing order: all taken, each once.
        for i in [0, 3, 1, 2, 9, 5, 4, 8, 6, 7] {
            assert!(inbox.open(&ps[i], t0()).is_ok(), "payload {i}");
        }
        for (i, p) in ps.iter().enumerate() {
            assert_eq!(
                inbox.open(p, t0()),
                Err(Refused::Replayed),
                "payload {i} again"
            );
        }
        // The same sequence number from another incarnation is another sender.
        let again = Sealer::new(BusKey::derive(SECRET), "n", 43);
        let p = again.seal_at(&[one(&[presence()])], t0()).remove(0);
        assert!(inbox.open(&p, t0()).is_ok());
    }

    #[test]
    fn the_window_refuses_what_is_older_than_it() {
        let mut w = Window::new(10, 0);
        assert!(w.take(REPLAY_WINDOW + 9, true));
        assert!(!w.take(9, true), "older than the window");
        assert!(!w.take(10, true), "taken");
        assert!(w.take(11, true), "inside the window, not taken");
        assert!(w.take(2 * REPLAY_WINDOW + 10, true));
        assert!(!w.take(REPLAY_WINDOW + 10, true), "older than the window");
        assert!(w.take(REPLAY_WINDOW + 11, true), "the oldest still inside");
        assert!(!w.take(REPLAY_WINDOW + 11, true));
        // A jump past the whole window forgets everything before it.
        assert!(w.take(10 * REPLAY_WINDOW, true));
        assert!(w.take(10 * REPLAY_WINDOW - 1, true));
        assert!(!w.take(10 * REPLAY_WINDOW - 1, true));
        // Wrapping the ring clears what a slot held before.
        let mut w = Window::new(0, 0);
        for seq in 1..3 * REPLAY_WINDOW {
            assert!(w.take(seq, true), "{seq}");
        }
        for seq in 2 * REPLAY_WINDOW + 1..3 * REPLAY_WINDOW {
            assert!(!w.take(seq, true), "{seq}");
        }
    }

    #[test]
    fn what_was_signed_before_this_node_listened_is_taken_only_after_its_sender_was_heard() {
        let s = sealer("n");
        let body = one(&[presence()]);
        let before = t0() - Duration::from_secs(5);
        let old = s.seal_at(&[body.clone(), body.clone()], before);
        let new = s.seal_at(&[body], t0());
        let mut inbox = inbox();
        // Signed before this inbox existed, from a sender never heard: it may
        // have been committed before and recorded by someone else.
        assert_eq!(inbox.open(&old[1], t0()), Err(Refused::Replayed));
        assert!(inbox.open(&new[0], t0()).is_ok());
        assert_eq!(
            inbox.open(&old[0], t0()),
            Err(Refused::Replayed),
            "below the first"
        );
        // Signed after: commit order, taken.
        let s2 = sealer("m");
        let ps = s2.seal_at(&[one(&[presence()]), one(&[presence()])], t0());
        assert!(inbox.open(&ps[1], t0()).is_ok());
        assert!(inbox.open(&ps[0], t0()).is_ok());
    }

    #[test]
    fn senders_are_bounded_and_forgotten_when_silent() {
        let body = one(&[presence()]);
        let mut inbox = inbox();
        for i in 0..MAX_SENDERS + 10 {
            let p = sealer(&format!("n{i}"))
                .seal_at(std::slice::from_ref(&body), t0())
                .remove(0);
            assert!(inbox.open(&p, t0()).is_ok());
        }
        assert_eq!(inbox.senders.windows.len(), MAX_SENDERS);
        let later = t0() + FORGET_AFTER + Duration::from_secs(60);
        let p = sealer("late").seal_at(&[body], later).remove(0);
        assert!(inbox.open(&p, later).is_ok());
        assert_eq!(inbox.senders.windows.len(), 1, "the silent ones forgotten");
    }

    /// Seals one event array holding `event`, and opens it.
    fn verdict(event: String) -> Result<Opened, Refused> {
        let p = sealer("n").seal_at(&[format!("[{event}]")], t0()).remove(0);
        inbox().open(&p, t0())
    }

    #[test]
    fn implausible_events_spoil_their_payload() {
        let e = |f: &dyn Fn(&mut ChatEntry)| {
            let mut x = entry(7, "hi");
            f(&mut x);
            x
        };
        let entry_event =
            |x: &ChatEntry, prev: i64| encode_entry(&EntryRef::of(x), prev, None, false);
        assert!(verdict(entry_event(&entry(MAX_ID, "hi"), MAX_ID - 1)).is_ok());
        let dm = e(&|x| {
            x.kind = "dm".into();
            x.to = Some("bob".into());
            x.text = "x".repeat(MAX_TEXT);
        });
        assert!(verdict(entry_event(&dm, 6)).is_ok());
        let long_names = e(&|x| x.from_nickname = "닉".repeat(MAX_NAME));
        assert!(
            verdict(entry_event(&long_names, 6)).is_ok(),
            "characters, not bytes"
        );
        let implausible = [
            entry_event(&entry(9_000_000_000_000_000_000, "hi"), 1),
            entry_event(&entry(MAX_ID + 1, "hi"), 1),
            entry_event(&entry(0, "hi"), 0),
            entry_event(&entry(7, "hi"), 7),
            entry_event(&entry(7, "hi"), -1),
            entry_event(&e(&|x| x.room = String::new()), 6),
            entry_event(&e(&|x| x.room = "r".repeat(21)), 6),
            entry_event(&e(&|x| x.from = String::new()), 6),
            entry_event(&e(&|x| x.from_nickname = "닉".repeat(101)), 6),
            entry_event(&e(&|x| x.to = Some(String::new())), 6),
            entry_event(&e(&|x| x.kind = "sms".into()), 6),
            entry_event(&e(&|x| x.text = "x".repeat(MAX_TEXT + 1)), 6),
            entry_event(
                &e(&|x| {
                    x.kind = "system".into();
                    x.text = "x".repeat(MAX_SYSTEM_TEXT + 1);
                }),
                6,
            ),
            entry_event(&e(&|x| x.client_id = Some("c".repeat(65))), 6),
            entry_event(&e(&|x| x.ts = t0() + TIME_AHEAD * 2), 6),
            encode_entry(
                &EntryRef::of(&entry(7, "hi")),
                6,
                Some(&MemberOp {
                    joined: true,
                    user: String::new(),
                    nickname: "x".into(),
                }),
                false,
            ),
            encode_entry_ref("r", 9, 9, None),
            encode_entry_ref("", 1, 9, None),
            encode_change(&e(&|x| x.edited_at = Some(t0() + TIME_AHEAD * 2))),
            encode_change_ref("r", 0),
            encode_presence("bob", "", false),
            encode_presence(&"b".repeat(101), "B", false),
            encode_follow("a", "", true),
            encode_read_marker("a", "r", MAX_ID + 1),
            encode_typing("r", "a", ""),
        ];
        for ev in implausible {
            assert_eq!(verdict(ev.clone()), Err(Refused::Implausible), "{ev}");
        }
        assert_eq!(MAX_TEXT, crate::handlers::messages::MAX_TEXT);
    }

    /// What sealing and opening cost per payload (a full one: ~7.5 KB of
    /// events). `cargo test --release --lib -- --ignored --nocapture bus_cost`
    #[test]
    #[ignore]
    fn bus_cost() {
        let mut p = Payloads::new();
        let mut i = 1;
        loop {
            let e = entry(i, &"메시지 text ".repeat(10));
            p.push(
                encode_entry(&EntryRef::of(&e), i - 1, None, false),
                || unreachable!(),
            );
            if p.out.len() == 1 {
                break;
            }
            i += 1;
        }
        let body = p.out.remove(0);
        let s = sealer("node-a");
        let n = 20_000u32;
        let t = std::time::Instant::now();
        let mut sealed = Vec::with_capacity(n as usize);
        for _ in 0..n {
            sealed.push(s.seal_at(std::slice::from_ref(&body), t0()).remove(0));
        }
        let seal = t.elapsed() / n;
        let mut inbox = inbox();
        let t = std::time::Instant::now();
        for p in &sealed {
            inbox.open(p, t0()).unwrap();
        }
        let open = t.elapsed() / n;
        let key = BusKey::derive(SECRET);
        let t = std::time::Instant::now();
        for p in &sealed {
            let (_, signed) = p.split_once('\n').unwrap();
            let mut m = key.hmac();
            m.update(signed.as_bytes());
            std::hint::black_box(m.finalize());
        }
        let mac = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(decode_events(&body).unwrap());
        }
        let decode = t.elapsed() / n;
        println!(
            "payload of {} bytes, {} events: seal {seal:?}, open {open:?} \
             (of which the MAC {mac:?}; decoding the events alone {decode:?})",
            sealed[0].len(),
            i - 1
        );
    }
}
