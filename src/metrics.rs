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
        let counters: [(&str, &str, u64); 16] = [
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
