//! What a run does: the server, the users, the timing, and one [`Scenario`] with its
//! own sizes. Everything has a default so a test can write
//! `Options { scenario: Scenario::Chat(ChatOptions { rooms: 2, ..Default::default() }), ..Default::default() }`.

use std::time::Duration;

/// Options shared by every scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server, `host:port` (default `127.0.0.1:5000`), or the nodes of a cluster
    /// as a comma-separated list (`127.0.0.1:5001,127.0.0.1:5002`): WebSockets are
    /// spread over the nodes (see bench/README.md), HTTP setup goes to the first. Only
    /// these addresses (and, with `dest_addrs > 1`, the next loopback addresses after
    /// each) are ever connected to.
    pub addr: String,
    /// How many consecutive loopback destination addresses to spread each node's
    /// WebSocket connections over (`127.0.0.1`, `127.0.0.2`, ...), so more connections
    /// fit than one address pair's ephemeral ports allow. `None`: 1, except `connect`
    /// and `abuse`, which use one address per 10,000 connections (per node).
    /// Ignored for non-loopback addresses.
    pub dest_addrs: Option<usize>,
    /// Client event-loop threads, each owning one poller and many connections
    /// (default: the number of cores).
    pub threads: usize,
    /// Measured time, after warm-up.
    pub duration: Duration,
    /// Traffic runs but is not measured (latency, throughput) during this first part.
    pub warmup: Duration,
    /// After sending stops, how long to wait for outstanding deliveries before
    /// counting the rest as missing. The wait ends early once nothing is outstanding.
    pub drain: Duration,
    /// A handshake, message echo or request reply that takes longer counts as timed out.
    pub timeout: Duration,
    /// Longest time for setup (connecting, joining, following, preloading) before the
    /// run starts with whatever is ready.
    pub setup_timeout: Duration,
    /// WebSocket handshakes in flight at once, across all threads.
    pub connect_concurrency: usize,
    /// Users are named `<prefix>_<n>`. `None`: a prefix unique to this run.
    pub user_prefix: Option<String>,
    /// Password of every bench user.
    pub password: String,
    /// With the server's `JWT_SECRET`, tokens are minted locally instead of logging in
    /// (users must still exist: they are registered unless `skip_register`).
    pub jwt_secret: Option<String>,
    /// Algorithm for minted tokens.
    pub jwt_alg: JwtAlg,
    /// Lifetime of minted tokens.
    pub jwt_ttl: Duration,
    /// Assume the users already exist (a reused `user_prefix`); no `/register` calls.
    pub skip_register: bool,
    /// Registrations and logins in flight during setup (each costs the server an
    /// argon2 hash, so more than the server's hash workers only queues).
    pub register_concurrency: usize,
    /// After a `RATE_LIMITED` reply, a connection pauses this long before its next
    /// request (closed-loop senders and setup steps; open-loop sending keeps its pace).
    pub backoff: Duration,
    /// Sample this process's resident memory (VmRSS) while the run goes on.
    pub server_pid: Option<u32>,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
    /// The scenario and its sizes.
    pub scenario: Scenario,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: "127.0.0.1:5000".to_string(),
            dest_addrs: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(0),
            drain: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(300),
            connect_concurrency: 256,
            user_prefix: None,
            password: "klav-bench-pw".to_string(),
            jwt_secret: None,
            jwt_alg: JwtAlg::HS256,
            jwt_ttl: Duration::from_secs(3600),
            skip_register: false,
            register_concurrency: 32,
            backoff: Duration::from_millis(100),
            server_pid: None,
            progress: false,
            scenario: Scenario::Chat(ChatOptions::default()),
        }
    }
}

/// HMAC algorithm for locally minted tokens (must match the server's `JWT_ALGORITHM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlg {
    HS256,
    HS384,
    HS512,
}

impl JwtAlg {
    pub fn name(self) -> &'static str {
        match self {
            JwtAlg::HS256 => "HS256",
            JwtAlg::HS384 => "HS384",
            JwtAlg::HS512 => "HS512",
        }
    }

    pub fn parse(s: &str) -> Option<JwtAlg> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Some(JwtAlg::HS256),
            "HS384" => Some(JwtAlg::HS384),
            "HS512" => Some(JwtAlg::HS512),
            _ => None,
        }
    }
}

/// One scenario and its own sizes.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// Many rooms, a few senders each, every member checks every delivery.
    Chat(ChatOptions),
    /// One big room: the same checks as `Chat`, with `rooms` forced to 1.
    Fanout(ChatOptions),
    /// Rooms of a few members sending `room_dm`s to each other; every recipient
    /// checks every DM, every sender its `dm_ack`.
    Dm(DmOptions),
    /// Many idle authenticated WebSockets, held open.
    Connect(ConnectOptions),
    /// Closed-loop `history` requests on a preloaded room.
    History(HistoryOptions),
    /// Closed-loop `POST /login` over keep-alive connections.
    Login(LoginOptions),
    /// Followed users going online and offline; followers count `presence_change`.
    Presence(PresenceOptions),
    /// Memory and CPU attacks side by side with one normal client.
    Abuse(AbuseOptions),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Chat(_) => "chat",
            Scenario::Fanout(_) => "fanout",
            Scenario::Dm(_) => "dm",
            Scenario::Connect(_) => "connect",
            Scenario::History(_) => "history",
            Scenario::Login(_) => "login",
            Scenario::Presence(_) => "presence",
            Scenario::Abuse(_) => "abuse",
        }
    }
}

/// Sizes of `chat` and `fanout`.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Rooms (`fanout` always uses 1).
    pub rooms: usize,
    /// Member connections per room, one user each.
    pub members: usize,
    /// Members of each room that also send (at most `members`).
    pub senders: usize,
    /// Closed loop: a sender's messages in flight (sent, not yet echoed back).
    pub window: usize,
    /// Open loop: aggregate messages per second over all senders, paced by a timer.
    /// `None`: closed loop.
    pub rate: Option<f64>,
    /// Pad each message text to this many bytes (at most 4000; 0 = no padding).
    pub msg_size: usize,
    /// Background `POST /login` clients running while the chat is measured.
    pub with_login_clients: usize,
    /// Every message carries a unique `client_id` (idempotent send).
    pub client_ids: bool,
    /// Every member connection sends `typing` to its room this often during the
    /// run (e.g. 1 s: one per member per second).
    pub typing_every: Option<Duration>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            rooms: 10,
            members: 10,
            senders: 2,
            window: 1,
            rate: None,
            msg_size: 0,
            with_login_clients: 0,
            client_ids: false,
            typing_every: None,
        }
    }
}

impl ChatOptions {
    /// The `fanout` defaults: one room of 1000 members, 2 senders.
    pub fn fanout() -> ChatOptions {
        ChatOptions {
            rooms: 1,
            members: 1000,
            senders: 2,
            ..ChatOptions::default()
        }
    }
}

/// Sizes of `dm`.
#[derive(Debug, Clone)]
pub struct DmOptions {
    /// Rooms.
    pub rooms: usize,
    /// Members per room, one user each (at least 2).
    pub members: usize,
    /// Of each room's members, the last this many join during setup and are never
    /// connected during the run: DMs to them must be answered `QUEUED`. Every other
    /// member connects and sends.
    pub offline: usize,
    /// Closed loop: a sender's DMs in flight (sent, not yet answered by `dm_ack`).
    pub window: usize,
    /// Open loop: aggregate DMs per second over all senders, paced by a timer.
    /// `None`: closed loop.
    pub rate: Option<f64>,
    /// Pad each DM text to this many bytes (at most 4000; 0 = no padding).
    pub msg_size: usize,
    /// Every DM carries a unique `client_id` (idempotent send).
    pub client_ids: bool,
}

impl Default for DmOptions {
    fn default() -> Self {
        DmOptions {
            rooms: 10,
            members: 4,
            offline: 0,
            window: 1,
            rate: None,
            msg_size: 0,
            client_ids: false,
        }
    }
}

/// Sizes of `connect`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// WebSocket connections to open and hold.
    pub connections: usize,
    /// Users the connections are spread over (several connections per user).
    /// `None`: one user per 100 connections.
    pub users: Option<usize>,
    /// How long to hold them all open once every attempt has settled.
    pub hold: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connections: 1000,
            users: None,
            hold: Duration::from_secs(10),
        }
    }
}

/// Sizes of `history`.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// Client connections, one user each, all members of the one room.
    pub clients: usize,
    /// `limit` of each `history` request.
    pub limit: usize,
    /// Messages sent into the room before the measurement.
    pub preload: usize,
    /// Requests in flight per client.
    pub window: usize,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            clients: 10,
            limit: 50,
            preload: 200,
            window: 1,
        }
    }
}

/// Sizes of `login`.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Concurrent keep-alive HTTP connections, each logging in again and again.
    pub clients: usize,
    /// Distinct users logged in as. `None`: as many as clients.
    pub users: Option<usize>,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            clients: 8,
            users: None,
        }
    }
}

/// Sizes of `presence`.
#[derive(Debug, Clone)]
pub struct PresenceOptions {
    /// Followed users that go online and offline again and again.
    pub targets: usize,
    /// Follower connections, each following every target and subscribed to presence.
    pub followers: usize,
    /// How long a target stays online per cycle.
    pub online: Duration,
    /// How long a target stays offline between cycles.
    pub offline: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        PresenceOptions {
            targets: 10,
            followers: 20,
            online: Duration::from_millis(500),
            offline: Duration::from_millis(500),
        }
    }
}

/// One attack of `abuse`: each is something a client with at most one free account
/// can do, aimed at the server's memory or its event loop's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// Unauthenticated HTTP: ~72 KiB of pipelined `GET /metrics`, never reading.
    MetricsPipeline,
    /// A WebSocket in a room with entries: 64 `history` requests of limit 200,
    /// never reading.
    HistoryPipeline,
    /// HTTP connections holding grown buffers: one maximal rejected `/register`
    /// then a byte every 8 s, or a partial 64 KiB body that stalls.
    IdleBuffers,
    /// HTTP: pipelined `GET /nope` for as long as the server reads, never reading.
    UnreadResponses,
    /// WebSockets with an unfinished fragmented message (~60 KiB first fragment),
    /// then only pings.
    Fragments,
    /// One account opening as many WebSockets as it is allowed.
    ManySockets,
    /// Frames of one JSON object with ~6,500 keys at the connection's rate limit.
    WideJson,
    /// One account creating rooms as fast as it is allowed, over many connections.
    RoomSpam,
    /// One account in the filled rooms, `resume` naming all of them from cursor 0,
    /// again as soon as each is answered.
    ResumeReplay,
    /// One account in the filled rooms, `my_rooms` again as soon as it is answered.
    MyRooms,
    /// One account in the filled rooms, `history` limit 200 of each in turn, again
    /// as soon as it is answered: the history cache fills with their entries.
    HistoryFill,
    /// WebSockets writing pings as fast as the server reads them, reading the pongs.
    Pings,
    /// One account opening a WebSocket and dropping it at once, in a loop (after
    /// a refusal, again once `--backoff-ms` has passed).
    Churn,
}

impl Attack {
    pub const ALL: [Attack; 13] = [
        Attack::MetricsPipeline,
        Attack::HistoryPipeline,
        Attack::IdleBuffers,
        Attack::UnreadResponses,
        Attack::Fragments,
        Attack::ManySockets,
        Attack::WideJson,
        Attack::RoomSpam,
        Attack::ResumeReplay,
        Attack::MyRooms,
        Attack::HistoryFill,
        Attack::Pings,
        Attack::Churn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::MetricsPipeline => "metrics-pipeline",
            Attack::HistoryPipeline => "history-pipeline",
            Attack::IdleBuffers => "idle-buffers",
            Attack::UnreadResponses => "unread-responses",
            Attack::Fragments => "fragments",
            Attack::ManySockets => "many-sockets",
            Attack::WideJson => "wide-json",
            Attack::RoomSpam => "room-spam",
            Attack::ResumeReplay => "resume-replay",
            Attack::MyRooms => "my-rooms",
            Attack::HistoryFill => "history-fill",
            Attack::Pings => "pings",
            Attack::Churn => "churn",
        }
    }

    pub fn parse(s: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Whether it works in the filled rooms (see [`AbuseOptions::filled_rooms`]).
    pub fn uses_filled_rooms(self) -> bool {
        matches!(
            self,
            Attack::ResumeReplay | Attack::MyRooms | Attack::HistoryFill
        )
    }

    /// Whether its connections are WebSockets (else plain HTTP).
    pub fn is_websocket(self) -> bool {
        !matches!(
            self,
            Attack::MetricsPipeline | Attack::IdleBuffers | Attack::UnreadResponses
        )
    }
}

/// Sizes of `abuse`.
#[derive(Debug, Clone)]
pub struct AbuseOptions {
    /// The attacks run side by side (default: all).
    pub attacks: Vec<Attack>,
    /// Connections per attack.
    pub abusers: usize,
    /// The normal client's `msg` rate (messages per second, open loop).
    pub normal_rate: f64,
    /// Rooms made and filled for `resume-replay`, `my-rooms` and `history-fill`
    /// (their accounts join every one), and entries of 4,000 control characters
    /// (24 KB each once escaped) in each.
    pub filled_rooms: usize,
    pub filled_entries: usize,
    /// `wide-json` frames per second per connection: the server's default
    /// `KLAV_RATE_PER_SEC`, so the attack stays within what a connection is allowed.
    pub wide_rate: f64,
    /// After the abusers disconnect, how long the normal client goes on before the
    /// server's memory is read again (what it gives back).
    pub settle: Duration,
    /// The local address the normal client connects from, so that the server's
    /// per-address budgets count it apart from the abusers. `None`: `127.0.0.254`
    /// when the server is on IPv4 loopback (the abusers come from `127.0.0.1`),
    /// else whatever the kernel picks.
    pub normal_from: Option<std::net::IpAddr>,
    /// The nice value of the attack threads (0: as the rest of the bench). On
    /// one machine the attacks' own CPU (mostly kernel sends) is taken from the
    /// server's cores; a raised value gives the server and the normal client
    /// the CPU first, as when the attacker is another machine.
    pub attack_nice: i32,
}

impl Default for AbuseOptions {
    fn default() -> Self {
        AbuseOptions {
            attacks: Attack::ALL.to_vec(),
            abusers: 1000,
            normal_rate: 20.0,
            wide_rate: 50.0,
            filled_rooms: 50,
            filled_entries: 40,
            settle: Duration::from_secs(3),
            normal_from: None,
            attack_nice: 0,
        }
    }
}
