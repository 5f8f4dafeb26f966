//! The loop itself: the [`Server`] that every part of `server` works on, and
//! its turns ([`Server::run`]). A turn: wait for readiness (or a worker's
//! wake-up, or the next timer) → accept → read what is readable, within a
//! budget per connection → apply finished jobs → read again what was left for
//! later → close what asked to close → write each connection's pending output
//! once → fire due timers.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Poll, Token};

use super::deadlines::Timers;
use super::put_off::PutOff;
use crate::cluster::bus::Sealer;
use crate::conn::ConnId;
use crate::db::{Completion, Wakeup};
use crate::handlers;
use crate::hub::Hub;
use crate::turn::Turn;

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX - 2);
pub(super) const METRICS_LISTENER: Token = Token(usize::MAX - 3);

/// Completions applied per turn before sockets get their turn again.
const COMPLETION_BUDGET: usize = 8192;
const TICK: Duration = Duration::from_secs(1);
/// The cluster's clock: gaps in a room's entries are read back after
/// `cluster::chain::GAP_WAIT`, so it looks more often than the main tick. (A
/// node alone can see a gap too: a room tracked again from a session read
/// before the room's last entries.)
const CLUSTER_TICK: Duration = Duration::from_millis(50);

pub(super) struct Server {
    pub(super) poll: Poll,
    pub(super) listener: Option<TcpListener>,
    /// `KLAV_METRICS_ADDR`: a listener whose connections may only ask `/metrics`.
    pub(super) metrics_listener: Option<TcpListener>,
    pub(super) hub: Hub,
    pub(super) completions: Receiver<Completion>,
    pub(super) wakeup: Arc<Wakeup>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) next_gen: u64,
    pub(super) accept_paused_until: Option<Instant>,
    pub(super) timers: Timers,
    /// Shutting down: no new requests are read.
    pub(super) draining: bool,
    /// Connections and buffered bytes at their highest since memory was last
    /// given back (see `trim_if_freed`).
    pub(super) trim_mark: (usize, usize),
    /// When freed memory was last given back.
    pub(super) trimmed_at: Instant,
    /// The listener had more to accept when a turn's share ran out.
    pub(super) accept_more: bool,
    /// Reads put off to later turns (see `reading`), oldest first.
    pub(super) put_off: PutOff,
    /// Client input held in memory, all connections together: kept up to date
    /// where it grows, so that the buffer budget acts before memory is taken
    /// rather than a second after (see `reading::count_input`).
    pub(super) input_held: usize,
    /// What this turn of the loop may still spend.
    pub(super) turn: Turn,
    /// This turn's readable connections that are not open sessions (kept to
    /// reuse its allocation).
    pub(super) others_ready: Vec<ConnId>,
    /// The bus listener thread, in a cluster.
    pub(super) bus: Option<std::thread::JoinHandle<()>>,
    /// What seals this node's notifications, in a cluster (its last ones say
    /// goodbye).
    pub(super) sealer: Option<Arc<Sealer>>,
    pub(super) database_url: String,
    /// The webhook delivery threads, when webhooks are on (they hold their
    /// own database connections): stopped first when the node stops, each
    /// after the attempt it is making.
    pub(super) webhooks: Option<crate::webhooks::Delivery>,
}

impl Server {
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_cluster_tick = Instant::now();
        let mut next_prune = Instant::now() + self.hub.svc.config.retention_interval;
        let mut drain_deadline: Option<Instant> = None;
        crate::log!(Info, "serving");
        loop {
            let now = Instant::now();
            let busy = !self.hub.conns.again.is_empty()
                || !self.hub.conns.dirty.is_empty()
                || !self.put_off.is_empty()
                || self.accept_more;
            let timeout = if busy {
                Duration::ZERO
            } else {
                let wake = self
                    .timers
                    .next()
                    .map_or(next_tick, |t| t.min(next_tick))
                    .min(next_cluster_tick);
                wake.saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::log!(Error, "poll failed: {e}");
                    break;
                }
            }
            self.turn = Turn::new(Instant::now() + self.hub.svc.config.turn_work);
            self.read_events(&events);
            self.drain_completions();
            self.read_again();
            self.read_busy();
            self.process_closes();
            crate::handlers::remote::look_up_new_watches(&mut self.hub);
            self.flush_dirty();

            let now = Instant::now();
            self.fire_timers(now);
            if now >= next_cluster_tick {
                next_cluster_tick = now + CLUSTER_TICK;
                crate::handlers::remote::tick(&mut self.hub, now);
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
                if now >= next_prune {
                    next_prune = now + self.hub.svc.config.retention_interval;
                    self.retention();
                }
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept(false);
                self.accept(true);
            }
            if drain_deadline.is_none() && self.stop.load(Ordering::Acquire) {
                drain_deadline = Some(now + self.hub.svc.config.shutdown_timeout);
                self.begin_shutdown();
            }
            if let Some(deadline) = drain_deadline {
                if self.shutdown_step(now >= deadline) {
                    break;
                }
                next_tick = next_tick.min(now + Duration::from_millis(20));
            }
        }
        crate::log!(Info, "event loop stopped");
        self.stopped();
    }

    fn drain_completions(&mut self) {
        self.wakeup.reset();
        for _ in 0..COMPLETION_BUDGET {
            match self.completions.try_recv() {
                Ok(c) => {
                    self.hub.svc.outstanding = self.hub.svc.outstanding.saturating_sub(1);
                    handlers::on_completion(&mut self.hub, c);
                }
                Err(_) => return,
            }
        }
        // More are waiting: make sure the next poll returns at once.
        self.wakeup.wake();
    }
}
