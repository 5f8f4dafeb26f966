//! Before a room scenario's threads start: its sizes checked, its users and rooms
//! created, the [`RoomPlan`] every thread reads and the [`Counters`] they all
//! count in.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::json_str;
use crate::nodes::{member_node, Dests};
use crate::run::{Gate, Server, SetupSocket};
use crate::users::{provision, Provisioned, Users};

/// Longest a text may be (the server refuses more than 4000 characters).
pub(crate) const MAX_TEXT: usize = 4000;

/// What every room scenario's run holds: its rooms, users, sending and timing.
pub(crate) struct RoomPlan {
    pub rooms_json: Vec<String>,
    pub room_ids: Vec<String>,
    pub names: Vec<String>,
    pub tokens: Vec<Arc<str>>,
    pub members: usize,
    /// Senders over all rooms (the open loop's rate is shared among them).
    pub total_senders: usize,
    pub window: usize,
    pub rate: Option<f64>,
    pub msg_size: usize,
    /// `--client-ids`: this run's prefix of every `client_id` (sequence numbers
    /// restart each run, users may not: keys must not repeat an earlier run's).
    pub client_id_prefix: Option<String>,
    pub timeout: Duration,
    pub backoff: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub base: Instant,
    pub dests: Arc<Dests>,
}

impl RoomPlan {
    /// The node of member `m` of any room.
    pub fn node_of_member(&self, m: usize) -> usize {
        member_node(m, self.dests.nodes())
    }
}

/// What all threads count together: the start gate and the progress line's numbers.
pub(crate) struct Counters {
    pub gate: Gate,
    /// Replies and deliveries still expected (what each send owes, minus errors
    /// and arrivals).
    pub outstanding: AtomicI64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub ready: AtomicU64,
}

impl Counters {
    pub fn new(connections: usize, setup_until: Instant) -> Counters {
        Counters {
            gate: Gate::new(connections, setup_until),
            outstanding: AtomicI64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        }
    }

    /// The progress line of a run of `connections` member connections.
    pub fn progress(&self, connections: usize) -> String {
        if self.gate.started().is_some() {
            format!(
                "sent {} delivered {} failed {} outstanding {}",
                self.sent.load(Ordering::Relaxed),
                self.delivered.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
                self.outstanding.load(Ordering::Relaxed)
            )
        } else {
            format!(
                "setup: {} of {connections} connections settled, {} ready",
                self.gate.settled(),
                self.ready.load(Ordering::Relaxed)
            )
        }
    }
}

/// How a room scenario sends: what the plan takes from its options.
pub(crate) struct Sending {
    pub members: usize,
    pub total_senders: usize,
    pub window: usize,
    pub rate: Option<f64>,
    pub msg_size: usize,
    pub client_ids: bool,
}

/// Checks the sending flags every room scenario has.
pub(crate) fn check_sending(
    window: usize,
    msg_size: usize,
    rate: Option<f64>,
) -> Result<(), BenchError> {
    if window == 0 {
        return Err(BenchError::Usage("--window must be at least 1".into()));
    }
    if msg_size > MAX_TEXT {
        return Err(BenchError::Usage(format!(
            "--msg-size must be at most {MAX_TEXT}"
        )));
    }
    if rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    Ok(())
}

/// Provisions `users` users and creates `rooms` rooms, `<prefix>-<kind>-<r>`, with
/// the first user's socket; returns the users, what provisioning did and the room
/// ids in order.
pub(crate) fn users_and_rooms(
    server: &Server,
    users: usize,
    rooms: usize,
    kind: &str,
) -> Result<(Users, Provisioned, Vec<String>), BenchError> {
    let (users, prov) = provision(server, users, true)?;
    let mut setup = SetupSocket::open(server, &users.tokens[0])?;
    let names: Vec<String> = (0..rooms)
        .map(|r| format!("{}-{kind}-{r}", server.prefix))
        .collect();
    let room_ids = setup.create_rooms(&names)?;
    setup.close();
    server.log(format!("created {rooms} rooms"));
    Ok((users, prov, room_ids))
}

impl RoomPlan {
    /// The plan of a run over `room_ids` and `users`; WebSockets go to one address
    /// per node unless `--dest-addrs` says more.
    pub fn new(server: &Server, room_ids: Vec<String>, users: Users, sending: Sending) -> RoomPlan {
        let opts = &server.opts;
        RoomPlan {
            rooms_json: room_ids.iter().map(|r| json_str(r)).collect(),
            room_ids,
            names: users.names,
            tokens: users.tokens,
            members: sending.members,
            total_senders: sending.total_senders,
            window: sending.window,
            rate: sending.rate,
            msg_size: sending.msg_size,
            client_id_prefix: sending.client_ids.then(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("{nanos:x}")
            }),
            timeout: opts.timeout,
            backoff: opts.backoff,
            warmup: opts.warmup,
            duration: opts.duration,
            drain: opts.drain,
            base: server.base,
            dests: server.dests(1),
        }
    }
}
