//! Counters kept by the loop and rendered as Prometheus text on `GET /metrics`.
//! The loop is the only writer, so plain integers suffice.

use std::fmt::Write;

use crate::close::CloseReason;

#[derive(Default)]
pub struct Metrics {
    pub accepted: u64,
    pub ws_opened: u64,
    /// Open WebSocket connections (a gauge kept up to date, never counted).
    pub ws_open: usize,
    /// Users with at least one open WebSocket.
    pub users_online: usize,
    /// Upgrades refused by a per-user or per-address connection budget.
    pub upgrades_refused: u64,
    /// Connections closed because all clients together held too much buffered.
    pub budget_closes: u64,
    /// Reads that took client input past the buffer budget (the largest holders
    /// were closed there and then).
    pub budget_overruns: u64,
    /// Bytes buffered for all clients at the last budget check.
    pub client_buffer_bytes: usize,
    pub messages: u64,
    /// Messages another node stored, delivered here.
    pub messages_remote: u64,
    /// Events received from other nodes (and this node's presence decisions).
    pub bus_events: u64,
    pub dms: u64,
    pub deliveries: u64,
    pub requests: u64,
    pub rate_limited: u64,
    /// Server API requests that presented a live key.
    pub api_requests: u64,
    /// Server API requests refused for their key (missing, bad or revoked).
    pub api_unauthorized: u64,
    /// Pings and pongs received from clients (charged like requests).
    pub control_frames: u64,
    /// Rows the database examined for requests paid from the users' row
    /// budgets (`resume`, `my_rooms`).
    pub budgeted_rows: u64,
    pub db_rejected: u64,
    pub db_errors: u64,
    pub closed: [u64; CloseReason::ALL.len()],
    /// Job latency histogram: counts per upper bound in [`LATENCY_BOUNDS_MS`].
    pub job_latency: [u64; LATENCY_BOUNDS_MS.len() + 1],
    pub job_latency_sum_ms: f64,
    pub job_count: u64,
    /// Reads a turn's time limit put off to a later turn.
    pub reads_put_off: u64,
    /// Times a connection used a whole share of a turn with input left.
    pub reads_busy: u64,
    /// Reads waiting in the loop's queues (sessions, others, busy), as of the
    /// last turn.
    pub reads_waiting: [usize; 3],
}

/// Upper bounds (milliseconds) of the job latency histogram's buckets.
pub const LATENCY_BOUNDS_MS: [f64; 10] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

impl Metrics {
    pub fn closed(&mut self, reason: CloseReason) {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.closed[i] += 1;
    }

    pub fn job_done(&mut self, ms: f64) {
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.job_latency[i] += 1;
        self.job_latency_sum_ms += ms;
        self.job_count += 1;
    }

    /// The Prometheus text exposition, with the live gauges passed in.
    pub fn render(&self, open_conns: usize, queue_depth: usize) -> String {
        let (ws_conns, online_users) = (self.ws_open, self.users_online);
        let mut s = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "klav_open_connections",
            "Open sockets (HTTP and WebSocket).",
            open_conns as f64,
        );
        gauge(
            "klav_websocket_connections",
            "Open WebSocket connections.",
            ws_conns as f64,
        );
        gauge(
            "klav_online_users",
            "Users with at least one open WebSocket.",
            online_users as f64,
        );
        gauge(
            "klav_db_queue_depth",
            "Jobs waiting for a database thread.",
            queue_depth as f64,
        );
        gauge(
            "klav_client_buffer_bytes",
            "Input and output buffered for all clients (at the last budget check).",
            self.client_buffer_bytes as f64,
        );
        let _ = writeln!(
            s,
            "# HELP klav_log_lines_dropped_total Log lines dropped because stderr could not keep up.\n\
             # TYPE klav_log_lines_dropped_total counter\nklav_log_lines_dropped_total {}",
            crate::log::dropped()
        );
        let _ = writeln!(
            s,
            "# HELP klav_reads_waiting Reads put off to later turns, waiting, by queue.\n\
             # TYPE klav_reads_waiting gauge"
        );
        for (queue, n) in ["sessions", "others", "busy"]
            .iter()
            .zip(self.reads_waiting)
        {
            let _ = writeln!(s, "klav_reads_waiting{{queue=\"{queue}\"}} {n}");
        }
        let counters: [(&str, &str, u64); 18] = [
            (
                "klav_reads_put_off_total",
                "Reads a loop turn's time limit put off to a later turn.",
                self.reads_put_off,
            ),
            (
                "klav_reads_busy_total",
                "Times a connection used a whole share of a loop turn with input left.",
                self.reads_busy,
            ),
            (
                "klav_upgrades_refused_total",
                "WebSocket upgrades refused by a per-user or per-address budget.",
                self.upgrades_refused,
            ),
            (
                "klav_buffer_budget_closes_total",
                "Connections closed because all clients together held too much.",
                self.budget_closes,
            ),
            (
                "klav_buffer_budget_overruns_total",
                "Reads that took client input past the buffer budget (closing the largest holders at once).",
                self.budget_overruns,
            ),
            (
                "klav_accepted_total",
                "Accepted TCP connections.",
                self.accepted,
            ),
            (
                "klav_websocket_opened_total",
                "WebSocket upgrades completed.",
                self.ws_opened,
            ),
            (
                "klav_messages_total",
                "Room messages persisted.",
                self.messages,
            ),
            ("klav_dms_total", "Direct messages persisted.", self.dms),
            (
                "klav_deliveries_total",
                "Events fanned out to connections.",
                self.deliveries,
            ),
            (
                "klav_requests_total",
                "WebSocket requests received.",
                self.requests,
            ),
            (
                "klav_rate_limited_total",
                "Requests (and pings) refused by the rate limit.",
                self.rate_limited,
            ),
            (
                "klav_api_requests_total",
                "Server API requests with a live key.",
                self.api_requests,
            ),
            (
                "klav_api_unauthorized_total",
                "Server API requests refused for a missing, bad or revoked key.",
                self.api_unauthorized,
            ),
            (
                "klav_budgeted_rows_total",
                "Rows the database examined for resume and my_rooms (paid from per-user budgets).",
                self.budgeted_rows,
            ),
            (
                "klav_control_frames_total",
                "Pings and pongs received from WebSocket clients.",
                self.control_frames,
            ),
            (
                "klav_db_rejected_total",
                "Jobs refused because a queue was full.",
                self.db_rejected,
            ),
            (
                "klav_db_errors_total",
                "Jobs that failed in the database.",
                self.db_errors,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP klav_disconnects_total Closed connections by reason.\n# TYPE klav_disconnects_total counter"
        );
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            let _ = writeln!(
                s,
                "klav_disconnects_total{{reason=\"{}\"}} {}",
                r.label(),
                self.closed[i]
            );
        }
        let _ = writeln!(
            s,
            "# HELP klav_db_job_seconds Time from submitting a job to its completion.\n# TYPE klav_db_job_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, b) in LATENCY_BOUNDS_MS.iter().enumerate() {
            cumulative += self.job_latency[i];
            let _ = writeln!(
                s,
                "klav_db_job_seconds_bucket{{le=\"{}\"}} {cumulative}",
                b / 1000.0
            );
        }
        cumulative += self.job_latency[LATENCY_BOUNDS_MS.len()];
        let _ = writeln!(s, "klav_db_job_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            s,
            "klav_db_job_seconds_sum {}",
            self.job_latency_sum_ms / 1000.0
        );
        let _ = writeln!(s, "klav_db_job_seconds_count {}", self.job_count);
        s
    }
}

/// What `/metrics` shows besides the loop's own counters, read off the rest
/// of the server by the handler that answers it.
pub struct Snapshot<'a> {
    pub counters: &'a Metrics,
    pub open_conns: usize,
    pub queue_depth: usize,
    /// The history cache: hits, misses, entries, bytes.
    pub history: (u64, u64, usize, usize),
    pub login_throttle_keys: usize,
    pub register_budget_keys: usize,
    pub register_hashes: u64,
    pub node: &'a str,
    pub clustered: bool,
    pub rooms_tracked: usize,
    /// The writer: batches, jobs, the largest batch, notifications sent.
    pub writer: [u64; 4],
    /// Bus notifications dropped, by reason label.
    pub bus_dropped: Vec<(&'static str, u64)>,
    /// Webhook delivery, when webhooks are on.
    pub webhooks: Option<&'a crate::db::outbox::OutboxStats>,
}

/// The `/metrics` text. Gauges are kept as counters: rendering is O(1) however
/// many connect; and it is rendered once per loop turn (see `turn::Turn`), so a
/// burst of requests (a pipelining client, many scrapers) costs one rendering.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut text = s.counters.render(s.open_conns, s.queue_depth);
    text.push_str(&format!(
        "# HELP klav_history_cache_hits_total history requests answered from memory.\n\
         # TYPE klav_history_cache_hits_total counter\nklav_history_cache_hits_total {}\n\
         # HELP klav_history_cache_misses_total history requests sent to PostgreSQL.\n\
         # TYPE klav_history_cache_misses_total counter\nklav_history_cache_misses_total {}\n\
         # HELP klav_history_cache_entries Log entries held in memory.\n\
         # TYPE klav_history_cache_entries gauge\nklav_history_cache_entries {}\n\
         # HELP klav_history_cache_bytes Bytes those entries hold (KLAV_HISTORY_CACHE_BYTES bounds it).\n\
         # TYPE klav_history_cache_bytes gauge\nklav_history_cache_bytes {}\n",
        s.history.0,
        s.history.1,
        s.history.2,
        s.history.3
    ));
    text.push_str(&format!(
        "# HELP klav_login_throttle_keys (username, address) pairs and addresses with failed logins remembered.\n\
         # TYPE klav_login_throttle_keys gauge\nklav_login_throttle_keys {}\n\
         # HELP klav_register_budget_keys Client addresses with a partly used registration budget.\n\
         # TYPE klav_register_budget_keys gauge\nklav_register_budget_keys {}\n\
         # HELP klav_register_hashes_total Passwords hashed for /register (taken names are never hashed).\n\
         # TYPE klav_register_hashes_total counter\nklav_register_hashes_total {}\n",
        s.login_throttle_keys,
        s.register_budget_keys,
        s.register_hashes
    ));
    text.push_str(&format!(
        "# HELP klav_node_info This node's name, and whether it shares its database with other nodes.\n\
         # TYPE klav_node_info gauge\nklav_node_info{{node=\"{}\",cluster=\"{}\"}} 1\n\
         # HELP klav_bus_events_total Events received from other nodes (and this node's presence decisions).\n\
         # TYPE klav_bus_events_total counter\nklav_bus_events_total {}\n\
         # HELP klav_messages_remote_total Room messages stored by other nodes and delivered here.\n\
         # TYPE klav_messages_remote_total counter\nklav_messages_remote_total {}\n\
         # HELP klav_cluster_rooms_tracked Rooms whose entries this node follows (members connected here).\n\
         # TYPE klav_cluster_rooms_tracked gauge\nklav_cluster_rooms_tracked {}\n\
         # HELP klav_writer_batches_total Transactions the writer committed (each notifies other nodes once per 7,800 bytes of events).\n\
         # TYPE klav_writer_batches_total counter\nklav_writer_batches_total {}\n\
         # HELP klav_writer_jobs_total Writes in those transactions.\n\
         # TYPE klav_writer_jobs_total counter\nklav_writer_jobs_total {}\n\
         # HELP klav_writer_largest_batch The most writes one transaction held.\n\
         # TYPE klav_writer_largest_batch gauge\nklav_writer_largest_batch {}\n\
         # HELP klav_bus_notifications_total Notification payloads this node's writer sent to the others.\n\
         # TYPE klav_bus_notifications_total counter\nklav_bus_notifications_total {}\n",
        s.node.replace(['\\', '"', '\n'], "_"),
        s.clustered,
        s.counters.bus_events,
        s.counters.messages_remote,
        s.rooms_tracked,
        s.writer[0],
        s.writer[1],
        s.writer[2],
        s.writer[3],
    ));
    text.push_str(
        "# HELP klav_bus_dropped_total Notifications from the bus dropped, by reason.\n\
         # TYPE klav_bus_dropped_total counter\n",
    );
    for (reason, n) in &s.bus_dropped {
        text.push_str(&format!(
            "klav_bus_dropped_total{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    if let Some(w) = s.webhooks {
        render_webhooks(&mut text, w);
    }
    text
}

/// The webhook lines: the outbox's gauges (cluster-wide, read every few
/// seconds) and this node's attempts by status.
fn render_webhooks(text: &mut String, w: &crate::db::outbox::OutboxStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = write!(
        text,
        "# HELP klav_webhook_pending Webhook events not yet delivered (nor dead-lettered), all nodes.\n\
         # TYPE klav_webhook_pending gauge\nklav_webhook_pending {}\n\
         # HELP klav_webhook_oldest_pending_seconds Age of the oldest of them.\n\
         # TYPE klav_webhook_oldest_pending_seconds gauge\nklav_webhook_oldest_pending_seconds {}\n\
         # HELP klav_webhook_dead_letters Webhook events dead-lettered (klav webhooks failed lists them).\n\
         # TYPE klav_webhook_dead_letters gauge\nklav_webhook_dead_letters {}\n",
        w.pending.load(Relaxed),
        w.oldest_pending_secs.load(Relaxed),
        w.dead.load(Relaxed),
    );
    let (delivered, failed) = w.attempts();
    text.push_str(
        "# HELP klav_webhook_deliveries_total Webhook events delivered by this node, by HTTP status.\n\
         # TYPE klav_webhook_deliveries_total counter\n",
    );
    for (status, n) in delivered {
        let _ = writeln!(
            text,
            "klav_webhook_deliveries_total{{status=\"{status}\"}} {n}"
        );
    }
    text.push_str(
        "# HELP klav_webhook_failures_total Failed webhook attempts by this node, by HTTP status (or timeout, connect, error).\n\
         # TYPE klav_webhook_failures_total counter\n",
    );
    for (status, n) in failed {
        let _ = writeln!(
            text,
            "klav_webhook_failures_total{{status=\"{status}\"}} {n}"
        );
    }
}
