//! `abuse`: memory and CPU attacks against the server, side by side, each from what
//! a client with at most one free account can do, while one normal client keeps
//! chatting and asking `/health`. It reports how far each attack got (connections
//! accepted, refused, closed by the server and how), what the server's memory did
//! (peak, at the end, after the abusers left) and its CPU time, and what the normal
//! client saw (round trips of its own messages and of `/health`).
//!
//! The attacks run on [`RawNet`] threads, so tens of thousands of abusive sockets
//! fit; the normal client and `/health` each have a blocking thread of their own,
//! so their round trips are never delayed by the bench's own attack loops.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::http::{HttpClient, HttpError};
use crate::net::Flow;
use crate::options::{AbuseOptions, Attack};
use crate::raw::{client_frame, Chunk, End, Proto, RawDriver, RawId, RawNet};
use crate::report::{AbuseReport, AttackReport, Counts, Report, RequestReport};
use crate::run::{
    cpu_secs, open_blocking_ws_from, panic_text, parse_status_kb, RssPeaks, Server, SetupSocket,
};
use crate::scenarios::{bump, merge_counts, rate, setup_report};
use crate::stats::LatencyHist;
use crate::users::provision;

/// Connections per destination address when `--dest-addrs` is not given.
const CONNS_PER_DEST: usize = 10_000;
/// How often abusers act (trickles, pings, wide frames, room creations).
const TICK: Duration = Duration::from_millis(20);
/// At the end, connections that never read are read this long, to learn whether
/// and how the server had already closed them (a closed socket's last bytes wait
/// behind everything unread).
const FINAL_READ: Duration = Duration::from_secs(1);
/// Entries put into the room `history-pipeline` reads.
const PRELOAD: usize = 200;
const HISTORY_REQUESTS: usize = 64;
const HISTORY_LIMIT: usize = 200;
const METRICS_PIPELINE_BYTES: usize = 72 * 1024;
/// The server's limits, as documented: request head, request body, WebSocket message.
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 64 * 1024;
const MAX_MESSAGE: usize = 64 * 1024;
/// `idle-buffers`: a byte every this long keeps a connection under the server's
/// 10 s HTTP timeout if it only counts silence.
const TRICKLE_EVERY: Duration = Duration::from_secs(8);
/// `fragments`: a ping every this long is a frame, so the connection is not silent.
const PING_EVERY: Duration = Duration::from_secs(5);
/// `room-spam`: `create_room` requests in flight per connection.
const SPAM_WINDOW: usize = 4;
/// `unread-responses`: bytes of pipelined `GET /nope` per refill.
const NOPE_CHUNK: usize = 64 * 1024;
/// `pings`: pings per chunk written (each 125 bytes of payload, the most a
/// control frame may carry), and chunks kept queued per connection.
const PINGS_PER_CHUNK: usize = 64;
const PING_CHUNKS_QUEUED: usize = 2;
/// The filled rooms' entries: 4,000 control characters, six bytes each once
/// escaped: the largest an entry gets in a `history` reply or in the cache.
const FILL_TEXT_CHARS: usize = 4000;
/// Accounts (one socket each) that fill those rooms in parallel.
const FILL_SOCKETS: usize = 25;
/// A filling socket's pace once its burst is spent: an entry costs 6 request
/// tokens (24 KB of frame), and the server's default rate is 50 tokens a second;
/// faster, the socket would be refused and, after seconds of that, closed.
const FILL_BURST: usize = 15;
const FILL_PACE: Duration = Duration::from_millis(130);
/// `req_id` of the one request in flight on a request-loop connection.
const LOOP_REQ: u64 = 7;

/// The bytes the attacks send, built once and shared by every connection.
struct Payloads {
    metrics: Chunk,
    metrics_requests: u64,
    history: Chunk,
    register_big: Chunk,
    register_partial: Chunk,
    nope: Chunk,
    nope_requests: u64,
    fragment: Chunk,
    ping: Chunk,
    wide: Chunk,
    wide_keys: usize,
    /// `resume` naming every filled room from cursor 0.
    resume: Chunk,
    my_rooms: Chunk,
    /// `history` limit 200 of each filled room.
    history_fill: Vec<Chunk>,
    pings: Chunk,
}

impl Payloads {
    fn build(host: &str, room_id: &str, filled: &[String]) -> Payloads {
        let metrics_req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let metrics_requests = METRICS_PIPELINE_BYTES.div_ceil(metrics_req.len());
        let nope_req = format!("GET /nope HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let nope_requests = NOPE_CHUNK / nope_req.len();
        let mut history = Vec::new();
        for i in 0..HISTORY_REQUESTS {
            let text = format!(
                r#"{{"type":"history","room_id":{},"limit":{HISTORY_LIMIT},"req_id":{i}}}"#,
                json_str(room_id)
            );
            history.extend(client_frame(0x1, true, text.as_bytes()));
        }
        // A maximal request: a head just under the limit, a 60 KiB body whose
        // username is far too long to be accepted.
        let body = {
            let open = r#"{"username":""#;
            let close = r#"","password":"x"}"#;
            let fill = 60 * 1024 - open.len() - close.len();
            format!("{open}{}{close}", "u".repeat(fill))
        };
        let head_start = format!(
            "POST /register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Pad: ",
            body.len()
        );
        let pad = (MAX_HEAD - 256).saturating_sub(head_start.len());
        let register_big = format!("{head_start}{}\r\n\r\n{body}", "p".repeat(pad));
        // A full-size body announced, one byte short of it sent.
        let register_partial = format!(
            "POST /register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {MAX_BODY}\r\n\r\n{{\"username\":\"{}",
            "u".repeat(MAX_BODY - 14)
        );
        let (wide_text, wide_keys) = wide_object(MAX_MESSAGE - 64);
        let cursors: Vec<String> = filled
            .iter()
            .map(|r| format!("{}:0", json_str(r)))
            .collect();
        let resume = format!(
            r#"{{"type":"resume","rooms":{{{}}},"req_id":{LOOP_REQ}}}"#,
            cursors.join(",")
        );
        let my_rooms = format!(r#"{{"type":"my_rooms","req_id":{LOOP_REQ}}}"#);
        let history_fill = filled
            .iter()
            .map(|r| {
                let text = format!(
                    r#"{{"type":"history","room_id":{},"limit":200,"req_id":{LOOP_REQ}}}"#,
                    json_str(r)
                );
                Arc::from(client_frame(0x1, true, text.as_bytes()))
            })
            .collect();
        let ping = client_frame(0x9, true, &[b'p'; 125]);
        Payloads {
            resume: Arc::from(client_frame(0x1, true, resume.as_bytes())),
            my_rooms: Arc::from(client_frame(0x1, true, my_rooms.as_bytes())),
            history_fill,
            pings: Arc::from(ping.repeat(PINGS_PER_CHUNK)),
            metrics: Arc::from(metrics_req.repeat(metrics_requests).into_bytes()),
            metrics_requests: metrics_requests as u64,
            history: Arc::from(history),
            register_big: Arc::from(register_big.into_bytes()),
            register_partial: Arc::from(register_partial.into_bytes()),
            nope: Arc::from(nope_req.repeat(nope_requests).into_bytes()),
            nope_requests: nope_requests as u64,
            fragment: Arc::from(client_frame(0x1, false, &vec![b'a'; 60 * 1024])),
            ping: Arc::from(client_frame(0x9, true, b"abuse")),
            wide: Arc::from(client_frame(0x1, true, wide_text.as_bytes())),
            wide_keys,
        }
    }
}

/// One JSON object with as many keys as fit in `max` bytes: `{"type":"wide","k0":0,...}`.
fn wide_object(max: usize) -> (String, usize) {
    let mut s = String::from(r#"{"type":"wide""#);
    let mut keys = 0;
    loop {
        let next = format!(r#","k{keys}":0"#);
        if s.len() + next.len() + 1 > max {
            break;
        }
        s.push_str(&next);
        keys += 1;
    }
    s.push('}');
    (s, keys)
}

struct Plan {
    payloads: Payloads,
    /// The one account each WebSocket attack uses.
    tokens: BTreeMap<Attack, Arc<str>>,
    prefix: String,
    dests: usize,
    attack_end: Instant,
    read_end: Instant,
    wide_rate: f64,
    backoff: Duration,
}

struct Shared {
    open: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
}

struct Abuser {
    attack: Attack,
    /// Index among its attack's connections.
    index: usize,
    /// Index among all abusive connections (spreads them over destinations).
    global: usize,
    id: Option<RawId>,
    open: bool,
    opened_at: Option<Instant>,
    /// The next trickled byte (`idle-buffers`) or ping (`fragments`).
    next_at: Option<Instant>,
    /// What this connection sent after its opening: trickled bytes, pings, wide
    /// frames or `create_room` requests.
    sent: u64,
    /// `room-spam`: requests without a reply yet.
    in_flight: usize,
    /// `room-spam`: after `RATE_LIMITED`, nothing before this.
    paused_until: Option<Instant>,
}

struct AbuseDriver {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    abusers: Vec<Abuser>,
    tallies: BTreeMap<Attack, AttackReport>,
    started: bool,
    reading_all: bool,
}

impl AbuseDriver {
    fn tally(&mut self, a: Attack) -> &mut AttackReport {
        self.tallies.entry(a).or_default()
    }

    /// The periodic part of each attack.
    fn act(&mut self, net: &mut RawNet, tag: usize, now: Instant) {
        let plan = self.plan.clone();
        let p = &plan.payloads;
        let ab = &mut self.abusers[tag];
        let Some(id) = ab.id.filter(|_| ab.open) else {
            return;
        };
        let mut queued = 0;
        match ab.attack {
            Attack::IdleBuffers | Attack::Fragments => {
                let Some(at) = ab.next_at.filter(|at| now >= *at) else {
                    return;
                };
                let (bytes, every) = if ab.attack == Attack::Fragments {
                    (p.ping.clone(), PING_EVERY)
                } else {
                    // A request head that never ends: "GET /aaaa...".
                    let b = *b"GET /".get(ab.sent as usize).unwrap_or(&b'a');
                    (Arc::from(&[b][..]), TRICKLE_EVERY)
                };
                if net.send(id, bytes) {
                    ab.sent += 1;
                }
                ab.next_at = Some(at + every);
            }
            Attack::UnreadResponses
                if net.pending(id) < p.nope.len() && net.send(id, p.nope.clone()) =>
            {
                queued += p.nope_requests;
            }
            Attack::WideJson => {
                let since = now.saturating_duration_since(ab.opened_at.unwrap_or(now));
                let due = (since.as_secs_f64() * plan.wide_rate) as u64 + 1;
                while ab.sent < due && net.pending(id) < 2 * p.wide.len() {
                    if !net.send(id, p.wide.clone()) {
                        break;
                    }
                    ab.sent += 1;
                    queued += 1;
                }
            }
            Attack::ResumeReplay | Attack::MyRooms | Attack::HistoryFill => {
                if ab.in_flight > 0 || ab.paused_until.is_some_and(|t| now < t) {
                    return;
                }
                ab.paused_until = None;
                let frame = match ab.attack {
                    Attack::ResumeReplay => p.resume.clone(),
                    Attack::MyRooms => p.my_rooms.clone(),
                    _ => p.history_fill[ab.sent as usize % p.history_fill.len()].clone(),
                };
                if net.send(id, frame) {
                    ab.sent += 1;
                    ab.in_flight = 1;
                    queued = 1;
                }
            }
            Attack::Pings => {
                while net.pending(id) < PING_CHUNKS_QUEUED * p.pings.len() {
                    if !net.send(id, p.pings.clone()) {
                        break;
                    }
                    queued += PINGS_PER_CHUNK as u64;
                }
            }
            Attack::RoomSpam => {
                if ab.paused_until.is_some_and(|t| now < t) {
                    return;
                }
                ab.paused_until = None;
                while ab.in_flight < SPAM_WINDOW {
                    let frame = format!(
                        r#"{{"type":"create_room","name":"{}-spam-{}-{}","req_id":{}}}"#,
                        plan.prefix, ab.index, ab.sent, ab.sent
                    );
                    if !net.send(id, Arc::from(client_frame(0x1, true, frame.as_bytes()))) {
                        break;
                    }
                    ab.sent += 1;
                    ab.in_flight += 1;
                    queued += 1;
                }
            }
            _ => {}
        }
        let attack = ab.attack;
        self.tally(attack).requests_sent += queued;
    }
}

impl RawDriver for AbuseDriver {
    fn on_open(&mut self, net: &mut RawNet, id: RawId, tag: usize, now: Instant) {
        let plan = self.plan.clone();
        let p = &plan.payloads;
        let ab = &mut self.abusers[tag];
        ab.open = true;
        ab.opened_at = Some(now);
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        let attack = ab.attack;
        let queued = match attack {
            Attack::MetricsPipeline => net.send(id, p.metrics.clone()) as u64 * p.metrics_requests,
            Attack::HistoryPipeline => {
                net.send(id, p.history.clone()) as u64 * HISTORY_REQUESTS as u64
            }
            Attack::IdleBuffers => {
                let (bytes, next) = if ab.index.is_multiple_of(2) {
                    (p.register_big.clone(), Some(now + TRICKLE_EVERY))
                } else {
                    (p.register_partial.clone(), None)
                };
                ab.next_at = next;
                net.send(id, bytes) as u64
            }
            Attack::Fragments => {
                ab.next_at = Some(now + PING_EVERY);
                net.send(id, p.fragment.clone()) as u64
            }
            Attack::Churn => {
                // In and out at once: every cycle is a session opened and closed.
                net.close(id);
                1
            }
            _ => 0,
        };
        let t = self.tally(attack);
        t.opened += 1;
        t.requests_sent += queued;
        if now < self.plan.attack_end {
            self.act(net, tag, now);
        }
    }

    fn on_text(&mut self, net: &mut RawNet, _id: RawId, tag: usize, text: &str, now: Instant) {
        let Some(ev) = Event::parse(text) else {
            return;
        };
        let label = match ev.kind() {
            "create_room_ack" => format!(
                "create_room_ack:{}",
                Event::field(&ev.status).unwrap_or("?")
            ),
            "error" => format!("error:{}", ev.error_code()),
            other => other.to_string(),
        };
        let attack = self.abusers[tag].attack;
        bump(&mut self.tally(attack).responses, label);
        if attack.uses_filled_rooms() && ev.req_num() == Some(LOOP_REQ) {
            let ab = &mut self.abusers[tag];
            ab.in_flight = 0;
            if ev.kind() == "error" {
                // Refused (`RATE_LIMITED`, or not understood): as a client
                // would, wait a little before asking again.
                ab.paused_until = Some(now + self.plan.backoff);
            }
            if now < self.plan.attack_end {
                self.act(net, tag, now);
            }
            return;
        }
        if attack == Attack::RoomSpam
            && matches!(ev.kind(), "create_room_ack" | "error")
            && ev.req_num().is_some()
        {
            let ab = &mut self.abusers[tag];
            ab.in_flight = ab.in_flight.saturating_sub(1);
            if ev.kind() == "error" && ev.error_code() == "RATE_LIMITED" {
                ab.paused_until = Some(now + self.plan.backoff);
            }
            if now < self.plan.attack_end {
                self.act(net, tag, now);
            }
        }
    }

    fn on_status(&mut self, tag: usize, label: String) {
        let attack = self.abusers[tag].attack;
        bump(&mut self.tally(attack).responses, label);
    }

    fn on_end(&mut self, net: &mut RawNet, tag: usize, end: End, sent: u64, now: Instant) {
        let ab = &mut self.abusers[tag];
        let was_open = std::mem::replace(&mut ab.open, false);
        ab.id = None;
        let attack = ab.attack;
        if attack == Attack::Churn && now < self.plan.attack_end {
            // Straight back in when it was let in; after a refusal, as fast as
            // allowed: once `--backoff-ms` has passed (see `on_tick`).
            if was_open {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                let proto = Proto::Ws(self.plan.tokens[&attack].clone());
                ab.id = Some(net.connect(ab.global % self.plan.dests, proto, true, tag));
            } else {
                ab.paused_until = Some(now + self.plan.backoff);
            }
            let t = self.tally(attack);
            t.bytes_sent += sent;
            if let End::NotOpened(label) = end {
                bump(&mut t.refused, label);
            }
            return;
        }
        let t = self.tally(attack);
        t.bytes_sent += sent;
        match end {
            End::NotOpened(label) => {
                bump(&mut t.refused, label);
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
            }
            End::ByServer(label) => {
                bump(&mut t.closed_by_server, label);
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                self.shared.closed.fetch_add(1, Ordering::Relaxed);
            }
            End::ByUs if was_open => t.open_at_end += 1,
            End::ByUs => bump(&mut t.refused, "still_connecting_at_end"),
        }
    }

    fn on_tick(&mut self, net: &mut RawNet, now: Instant) -> Flow {
        if !self.started {
            self.started = true;
            for (tag, ab) in self.abusers.iter_mut().enumerate() {
                let proto = match self.plan.tokens.get(&ab.attack) {
                    Some(token) => Proto::Ws(token.clone()),
                    None => Proto::Http,
                };
                let reading = !matches!(
                    ab.attack,
                    Attack::MetricsPipeline | Attack::HistoryPipeline | Attack::UnreadResponses
                );
                ab.id = Some(net.connect(ab.global % self.plan.dests, proto, reading, tag));
            }
        }
        if now < self.plan.attack_end {
            for tag in 0..self.abusers.len() {
                self.act(net, tag, now);
                let ab = &mut self.abusers[tag];
                if ab.attack == Attack::Churn
                    && ab.id.is_none()
                    && ab.paused_until.is_some_and(|t| now >= t)
                {
                    ab.paused_until = None;
                    let proto = Proto::Ws(self.plan.tokens[&ab.attack].clone());
                    ab.id = Some(net.connect(ab.global % self.plan.dests, proto, true, tag));
                }
            }
            return Flow::Wake((now + TICK).min(self.plan.attack_end));
        }
        if !self.reading_all {
            self.reading_all = true;
            for ab in &self.abusers {
                if let Some(id) = ab.id {
                    net.set_reading(id, true);
                }
            }
        }
        if now >= self.plan.read_end {
            Flow::Done
        } else {
            Flow::Wake(self.plan.read_end)
        }
    }
}

/// Who the normal client is and what it does.
#[derive(Clone, Copy)]
struct Normal<'a> {
    /// The local address it connects from.
    source: Option<IpAddr>,
    token: &'a str,
    user: &'a str,
    room_id: &'a str,
    rate_per_sec: f64,
    /// Only messages sent in `[from, until)` are counted.
    from: Instant,
    until: Instant,
}

/// What the normal client saw.
#[derive(Default)]
struct NormalTally {
    sent: u64,
    ok: u64,
    failed: Counts,
    timed_out: u64,
    hist: LatencyHist,
    /// The slowest round trip (ms) of the messages sent in each second of the
    /// attack: where in the storm the slow ones fall.
    worst_by_second: Vec<f64>,
}

/// A normal user in the room: sends `msg` at `rate` per second (open loop) and times
/// each until its own `message` event comes back. An echo later than `--timeout`
/// counts as timed out but its latency is still recorded: under attack the worst
/// case is the finding. Reconnects when it is cut off. Only messages sent in
/// `[from, until)` are counted.
fn normal_client(server: &Server, n: &Normal<'_>, stop: &AtomicBool) -> NormalTally {
    let Normal {
        source,
        token,
        user,
        room_id,
        rate_per_sec,
        from,
        until,
    } = *n;
    let mut t = NormalTally::default();
    let interval = Duration::from_secs_f64(1.0 / rate_per_sec);
    let timeout = server.opts.timeout;
    let room_json = json_str(room_id);
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut seq = 0u64;
    let mut ws = None;
    let mut next_send = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let counted = |at: Instant| at >= from && at < until;
        let Some(sock) = ws.as_mut() else {
            match open_blocking_ws_from(server, token, source) {
                Ok(s) => {
                    let _ = s.get_ref().set_read_timeout(Some(Duration::from_millis(5)));
                    ws = Some(s);
                }
                Err(e) => {
                    if counted(now) {
                        bump(&mut t.failed, format!("connect: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            continue;
        };
        let mut lost = None;
        if now >= next_send {
            seq += 1;
            let frame = format!(
                r#"{{"type":"msg","room_id":{room_json},"text":"normal:{seq}","req_id":{seq}}}"#
            );
            match sock.send(tungstenite::Message::text(frame)) {
                Ok(()) => {
                    in_flight.insert(seq, now);
                    if counted(now) {
                        t.sent += 1;
                    }
                }
                Err(e) => lost = Some(e.to_string()),
            }
            next_send += interval;
            if next_send + Duration::from_secs(1) < now {
                next_send = now + interval;
            }
        }
        if lost.is_none() {
            match sock.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let got = Instant::now();
                    if let Some(ev) = Event::parse(text.as_str()) {
                        match ev.kind() {
                            "message" if Event::field(&ev.from) == Some(user) => {
                                let n = Event::field(&ev.text)
                                    .and_then(|x| x.strip_prefix("normal:"))
                                    .and_then(|x| x.parse::<u64>().ok());
                                if let Some(sent) = n.and_then(|n| in_flight.remove(&n)) {
                                    if counted(sent) {
                                        let took = got - sent;
                                        if took <= timeout {
                                            t.ok += 1;
                                        } else {
                                            t.timed_out += 1;
                                        }
                                        t.hist.record_nanos(took.as_nanos() as u64);
                                        let second = (sent - from).as_secs() as usize;
                                        if t.worst_by_second.len() <= second {
                                            t.worst_by_second.resize(second + 1, 0.0);
                                        }
                                        let ms = took.as_secs_f64() * 1e3;
                                        let w = &mut t.worst_by_second[second];
                                        *w = w.max(ms);
                                    }
                                }
                            }
                            "error" => {
                                if let Some(sent) = ev.req_num().and_then(|n| in_flight.remove(&n))
                                {
                                    if counted(sent) {
                                        bump(&mut t.failed, ev.error_code().to_string());
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => lost = Some(e.to_string()),
            }
        }
        if let Some(why) = lost {
            if counted(now) {
                bump(&mut t.failed, format!("lost: {why}"));
            }
            // Echoes of what was sent on a lost connection will not come.
            for sent in std::mem::take(&mut in_flight).into_values() {
                if counted(sent) {
                    bump(&mut t.failed, "unanswered_on_lost_connection");
                }
            }
            ws = None;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Still unanswered when the run stopped: as good as timed out.
    t.timed_out += in_flight
        .values()
        .filter(|sent| **sent >= from && **sent < until)
        .count() as u64;
    t
}

/// `GET /health` once a second over a keep-alive connection, timed.
fn health_client(
    server: &Server,
    source: Option<IpAddr>,
    from: Instant,
    until: Instant,
    stop: &AtomicBool,
) -> (RequestReport, LatencyHist) {
    let mut r = RequestReport {
        clients: 1,
        ..Default::default()
    };
    let mut hist = LatencyHist::new();
    let mut client =
        HttpClient::new(server.http_addr, &server.host, server.opts.timeout).with_source(source);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += Duration::from_secs(1);
        let counted = now >= from && now < until;
        let result = client.get("/health");
        if !counted {
            continue;
        }
        r.sent += 1;
        match result {
            Ok(resp) if resp.status == 200 => {
                r.ok += 1;
                hist.record_nanos(now.elapsed().as_nanos() as u64);
            }
            Ok(resp) => bump(&mut r.failed, format!("http_{}", resp.status)),
            Err(HttpError::Timeout) => r.timed_out += 1,
            Err(e) => bump(&mut r.failed, e.label()),
        }
    }
    r.per_sec = rate(r.ok, until.saturating_duration_since(from).as_secs_f64());
    (r, hist)
}

/// Makes `--filled-rooms` rooms with `--filled-entries` entries of
/// [`FILL_TEXT_CHARS`] control characters each, filler `k` making and filling
/// every `fillers.len()`-th room over its own socket (in parallel); then every
/// joiner joins every room. Returns the rooms' ids.
fn fill_rooms(
    server: &Server,
    ao: &AbuseOptions,
    tokens: &[Arc<str>],
    names: &[String],
    joiners: &[(&str, &str)],
) -> Result<Vec<String>, BenchError> {
    server.log(format!(
        "filling {} rooms with {} entries of {FILL_TEXT_CHARS} control characters",
        ao.filled_rooms, ao.filled_entries
    ));
    let text = json_str(&"\u{1}".repeat(FILL_TEXT_CHARS));
    let rooms_of = |k: usize| (k..ao.filled_rooms).step_by(tokens.len()).count();
    let results: Vec<Result<Vec<String>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .zip(names)
            .enumerate()
            .map(|(k, (token, name))| {
                let text = &text;
                s.spawn(move || -> Result<Vec<String>, BenchError> {
                    let mut sock = SetupSocket::open(server, token)?;
                    let names: Vec<String> = (0..rooms_of(k))
                        .map(|i| format!("{}-filled-{k}-{i}", server.prefix))
                        .collect();
                    let rooms = sock.create_rooms(&names)?;
                    let mut req = 1_000_000u64;
                    let mut sent = 0;
                    for room in &rooms {
                        req += 1;
                        sock.join(room, name, req)?;
                        for _ in 0..ao.filled_entries {
                            req += 1;
                            sent += 1;
                            if sent > FILL_BURST {
                                std::thread::sleep(FILL_PACE);
                            }
                            sock.request(
                                &format!(
                                    r#"{{"type":"msg","room_id":{},"text":{text}}}"#,
                                    json_str(room)
                                ),
                                "message",
                                req,
                            )?;
                        }
                    }
                    sock.close();
                    Ok(rooms)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|p| BenchError::Worker(panic_text(&p)))?)
            .collect()
    });
    let mut rooms = Vec::new();
    for r in results {
        rooms.extend(r?);
    }
    for (token, name) in joiners {
        let mut sock = SetupSocket::open(server, token)?;
        for (i, room) in rooms.iter().enumerate() {
            sock.join(room, name, 3_000_000 + i as u64)?;
        }
        sock.close();
    }
    Ok(rooms)
}

fn rss_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    parse_status_kb(&text, field)
}

pub(crate) fn run(server: &Server, ao: &AbuseOptions) -> Result<Report, BenchError> {
    let opts = &server.opts;
    if ao.attacks.is_empty() || ao.abusers == 0 {
        return Err(BenchError::Usage(
            "abuse needs at least one attack and --abusers of at least 1".into(),
        ));
    }
    if server.nodes.len() > 1 {
        return Err(BenchError::Usage(
            "abuse attacks one node: give --addr a single address".into(),
        ));
    }
    let total = ao.attacks.len() * ao.abusers;
    let limit = crate::run::raise_nofile_limit();
    if limit > 0 && (total as u64) + 64 > limit {
        server.log(format!(
            "warning: {total} abusive connections but the descriptor limit is {limit}"
        ));
    }
    // User 0 is the normal client; each WebSocket attack has its one account.
    let ws_attacks: Vec<Attack> = ao
        .attacks
        .iter()
        .copied()
        .filter(|a| a.is_websocket())
        .collect();
    server.log(format!(
        "abuse: {} x {} connections ({})",
        ao.attacks.len(),
        ao.abusers,
        ao.attacks
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // After them, the accounts that make and fill the rooms of the attacks that
    // work in filled rooms (each fills its own rooms over its own socket, so no
    // entry fans out to the other filling sockets).
    let fillers = if ao.attacks.iter().any(|a| a.uses_filled_rooms()) {
        FILL_SOCKETS.min(ao.filled_rooms).max(1)
    } else {
        0
    };
    let (users, prov) = provision(server, 1 + ws_attacks.len() + fillers, true)?;
    let tokens: BTreeMap<Attack, Arc<str>> = ws_attacks
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, users.tokens[i + 1].clone()))
        .collect();

    // The normal client's room, and apart from it the room `history-pipeline`'s
    // account made and filled itself (so the attack's sockets are not also members
    // that the normal client's messages fan out to).
    let mut setup = SetupSocket::open(server, &users.tokens[0])?;
    let room_id = setup
        .create_rooms(&[format!("{}-abuse", server.prefix)])?
        .remove(0);
    setup.join(&room_id, &users.names[0], 1_000_000)?;
    setup.close();
    let mut history_room = String::new();
    if let Some(k) = ws_attacks
        .iter()
        .position(|a| *a == Attack::HistoryPipeline)
    {
        let (token, name) = (&users.tokens[k + 1], &users.names[k + 1]);
        let mut s = SetupSocket::open(server, token)?;
        history_room = s
            .create_rooms(&[format!("{}-history", server.prefix)])?
            .remove(0);
        s.join(&history_room, name, 1_000_000)?;
        for i in 0..PRELOAD {
            s.request(
                &format!(
                    r#"{{"type":"msg","room_id":{},"text":"entry {i}"}}"#,
                    json_str(&history_room)
                ),
                "message",
                2_000_000 + i as u64,
            )?;
        }
        s.close();
    }

    let filled = if fillers > 0 {
        let first = 1 + ws_attacks.len();
        let joiners: Vec<(&str, &str)> = ws_attacks
            .iter()
            .enumerate()
            .filter(|(_, a)| a.uses_filled_rooms())
            .map(|(k, _)| (&*users.tokens[k + 1], users.names[k + 1].as_str()))
            .collect();
        fill_rooms(
            server,
            ao,
            &users.tokens[first..first + fillers],
            &users.names[first..first + fillers],
            &joiners,
        )?
    } else {
        Vec::new()
    };

    let normal_from = ao.normal_from.or(match server.http_addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254))),
        _ => None,
    });
    let payloads = Payloads::build(&server.host, &history_room, &filled);
    server.log(format!(
        "wide-json frames: {} keys, {} bytes",
        payloads.wide_keys,
        payloads.wide.len()
    ));
    let dests = Arc::new(
        server
            .dests(total.div_ceil(CONNS_PER_DEST))
            .addrs()
            .to_vec(),
    );
    let threads = server.threads_for(total);
    let pid = opts.server_pid;
    let rss_start = rss_kb(pid, "VmRSS:");
    let cpu_start = pid.and_then(cpu_secs);
    let t0 = Instant::now();
    let attack_end = t0 + opts.duration;
    let plan = Arc::new(Plan {
        payloads,
        tokens,
        prefix: server.prefix.clone(),
        dests: dests.len(),
        attack_end,
        read_end: attack_end + FINAL_READ,
        wide_rate: ao.wide_rate,
        backoff: opts.backoff,
    });
    let shared = Arc::new(Shared {
        open: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    });
    // Attacks interleaved, so every attack starts connecting at once; and each
    // attack's connections spread over every thread.
    let mut all = Vec::with_capacity(total);
    for i in 0..ao.abusers {
        for (k, a) in ao.attacks.iter().enumerate() {
            all.push((*a, i, (i + k) % threads));
        }
    }
    let mut drivers: Vec<AbuseDriver> = (0..threads)
        .map(|_| AbuseDriver {
            plan: plan.clone(),
            shared: shared.clone(),
            abusers: Vec::new(),
            tallies: BTreeMap::new(),
            started: false,
            reading_all: false,
        })
        .collect();
    for (global, (attack, index, thread)) in all.into_iter().enumerate() {
        drivers[thread].abusers.push(Abuser {
            attack,
            index,
            global,
            id: None,
            open: false,
            opened_at: None,
            next_at: None,
            sent: 0,
            in_flight: 0,
            paused_until: None,
        });
    }
    let stop = AtomicBool::new(false);
    let mut peaks = RssPeaks::new(pid);
    let mut rss_end = None;
    let mut hwm = None;
    let mut cpu_end = None;
    let mut cpu_by_second = Vec::new();
    let max_handshakes = opts.connect_concurrency.div_ceil(threads).max(1);
    let deadline = plan.read_end + Duration::from_secs(30);

    let (drivers, normal, health, rss_after) = std::thread::scope(|s| {
        let normal = s.spawn(|| {
            let plan = Normal {
                source: normal_from,
                token: &users.tokens[0],
                user: &users.names[0],
                room_id: &room_id,
                rate_per_sec: ao.normal_rate,
                from: t0,
                until: attack_end,
            };
            normal_client(server, &plan, &stop)
        });
        let health = s.spawn(|| health_client(server, normal_from, t0, attack_end, &stop));
        let mut handles = Vec::new();
        for mut d in drivers {
            let dests = dests.clone();
            let host = server.host.clone();
            let timeout = opts.timeout;
            let nice = ao.attack_nice;
            handles.push(s.spawn(move || -> Result<AbuseDriver, std::io::Error> {
                if nice > 0 {
                    // This thread only (a thread id is a process id to setpriority).
                    // SAFETY: plain system calls on the calling thread.
                    unsafe {
                        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
                    }
                }
                let mut net = RawNet::new(dests, host, max_handshakes, timeout, deadline)?;
                net.run(&mut d)?;
                Ok(d)
            }));
        }
        let mut last = Instant::now();
        let mut cpu_last = cpu_start;
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            if now < attack_end {
                peaks.sample();
            } else if rss_end.is_none() {
                rss_end = rss_kb(pid, "VmRSS:");
                hwm = rss_kb(pid, "VmHWM:");
                cpu_end = pid.and_then(cpu_secs);
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = now;
                if now <= attack_end {
                    let cpu = pid.and_then(cpu_secs);
                    if let (Some(a), Some(b)) = (cpu_last, cpu) {
                        cpu_by_second.push(b - a);
                    }
                    cpu_last = cpu;
                }
                server.log(format!(
                    "abusers open {} refused {} closed by server {}",
                    shared.open.load(Ordering::Relaxed),
                    shared.refused.load(Ordering::Relaxed),
                    shared.closed.load(Ordering::Relaxed)
                ));
            }
        }
        if rss_end.is_none() {
            rss_end = rss_kb(pid, "VmRSS:");
            hwm = rss_kb(pid, "VmHWM:");
            cpu_end = pid.and_then(cpu_secs);
        }
        let mut drivers = Vec::new();
        let mut failure = None;
        for h in handles {
            match h.join() {
                Ok(Ok(d)) => drivers.push(d),
                Ok(Err(e)) => failure = Some(BenchError::io("abuse event loop", e)),
                Err(panic) => failure = Some(BenchError::Worker(panic_text(&panic))),
            }
        }
        server.log(format!(
            "abusers gone; normal client goes on for {:.1}s",
            ao.settle.as_secs_f64()
        ));
        std::thread::sleep(ao.settle);
        let rss_after = rss_kb(pid, "VmRSS:");
        stop.store(true, Ordering::Relaxed);
        let normal = normal.join();
        let health = health.join();
        match failure {
            Some(e) => Err(e),
            None => Ok((drivers, normal, health, rss_after)),
        }
    })?;
    let normal = normal.map_err(|p| BenchError::Worker(panic_text(&p)))?;
    let (health, health_hist) = health.map_err(|p| BenchError::Worker(panic_text(&p)))?;

    let mut attacks: BTreeMap<String, AttackReport> = BTreeMap::new();
    for a in &ao.attacks {
        attacks.insert(
            a.name().to_string(),
            AttackReport {
                attempted: ao.abusers as u64,
                ..Default::default()
            },
        );
    }
    for d in &drivers {
        for (a, t) in &d.tallies {
            let r = attacks
                .get_mut(a.name())
                .expect("every attack has a report");
            r.opened += t.opened;
            r.open_at_end += t.open_at_end;
            r.requests_sent += t.requests_sent;
            r.bytes_sent += t.bytes_sent;
            merge_counts(&mut r.refused, &t.refused);
            merge_counts(&mut r.closed_by_server, &t.closed_by_server);
            merge_counts(&mut r.responses, &t.responses);
        }
    }
    let measured = opts.duration.as_secs_f64();
    let requests = RequestReport {
        clients: 1,
        sent: normal.sent,
        ok: normal.ok,
        failed: normal.failed,
        timed_out: normal.timed_out,
        per_sec: rate(normal.ok, measured),
        ..Default::default()
    };
    let mut report = Report {
        measured_secs: measured,
        setup: setup_report(server, users.names.len(), &prov, Some(t0)),
        requests: Some(requests),
        abuse: Some(AbuseReport {
            abusers_per_attack: ao.abusers as u64,
            attacks,
            health,
            server_rss_start_kb: rss_start,
            server_rss_peak_kb: peaks.server_kb.max(rss_end),
            server_hwm_kb: hwm,
            server_rss_end_kb: rss_end,
            server_rss_after_kb: rss_after,
            server_cpu_secs: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
            server_cpu_by_second: cpu_by_second,
            normal_worst_by_second: normal.worst_by_second,
            attack_secs: measured,
        }),
        ..Default::default()
    };
    if let Some(l) = normal.hist.summary() {
        report.latency.insert("normal_msg".into(), l);
    }
    if let Some(l) = health_hist.summary() {
        report.latency.insert("normal_health".into(), l);
    }
    peaks.apply(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_within_the_server_limits() {
        let p = Payloads::build("127.0.0.1:5000", "r_0123abcd", &["r_00000001".into()]);
        assert!(p.wide_keys > 6_000, "{} keys", p.wide_keys);
        // Frame header: 2 + 8 (length) + 4 (mask).
        assert!(p.wide.len() - 14 <= MAX_MESSAGE);
        assert!(p.metrics.len() >= METRICS_PIPELINE_BYTES);
        let big = std::str::from_utf8(&p.register_big).unwrap();
        let (head, body) = big.split_once("\r\n\r\n").unwrap();
        assert!(head.len() + 4 <= MAX_HEAD, "head {}", head.len());
        assert_eq!(body.len(), 60 * 1024);
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
        let partial = std::str::from_utf8(&p.register_partial).unwrap();
        let (_, body) = partial.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), MAX_BODY - 1);
        assert_eq!(p.fragment[0], 0x01, "first fragment: FIN clear");
        assert!(p.history.len() > HISTORY_REQUESTS * 60);
    }

    #[test]
    fn the_wide_object_is_json() {
        let (text, keys) = wide_object(1000);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), keys + 1);
        assert!(text.len() <= 1000);
    }
}
