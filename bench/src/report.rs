//! The result of a run: plain counters a test can assert on, a human-readable text
//! ([`fmt::Display`]) and a single-line JSON object ([`Report::to_json`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::stats::Latency;

/// Counts by a short label (an error code, an HTTP status, a failure reason).
pub type Counts = BTreeMap<String, u64>;

/// Everything one run measured. Sections that do not apply to the scenario are `None`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// Whole run, setup included.
    pub elapsed_secs: f64,
    /// The measured part (after warm-up, before drain): the divisor of every rate.
    pub measured_secs: f64,
    pub setup: SetupReport,
    pub connections: Option<ConnectionReport>,
    pub messages: Option<MessageReport>,
    pub requests: Option<RequestReport>,
    pub presence: Option<PresenceReport>,
    /// `--with-login-clients`: the login load that ran alongside the chat.
    pub background_login: Option<RequestReport>,
    /// `abuse`: each attack and what the server's memory and CPU did meanwhile.
    pub abuse: Option<AbuseReport>,
    /// Latency percentiles by what was measured: `delivery`, `ack`, `ack_queued`
    /// (`dm`: acks of DMs to offline members), `connect`,
    /// `history`, `login`, `background_login`, `presence_online`, `presence_offline`,
    /// `normal_msg` and `normal_health` (`abuse`).
    pub latency: BTreeMap<String, Latency>,
    /// Peak VmRSS of `--server-pid` while the run went on.
    pub server_peak_rss_kb: Option<u64>,
    /// Peak VmRSS of the bench itself.
    pub bench_peak_rss_kb: Option<u64>,
    /// Per server node (`--addr a,b,c`), in the order given: one entry for a single
    /// server; empty for `abuse`.
    pub nodes: Vec<NodeReport>,
}

/// One server node: what the run put on it and what its clients received, so a run
/// shows whether the traffic really crossed nodes. Fields that do not apply to the
/// scenario stay 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReport {
    /// The node's address as given in `--addr`.
    pub addr: String,
    /// Connections assigned to it: WebSockets (`presence`: followers; the followed
    /// users are `presence_targets`), or `login`'s keep-alive HTTP clients.
    pub connections: u64,
    /// Of them, opened (`101`; `login`: answered at least once).
    pub opened: u64,
    /// `chat`/`fanout`: messages sent by senders connected to it.
    pub messages_sent: u64,
    /// `chat`/`fanout`: acknowledged messages × its member connections that were
    /// ready at the start.
    pub deliveries_expected: u64,
    /// `chat`/`fanout`: distinct deliveries of acknowledged messages to its members.
    pub deliveries_received: u64,
    pub missing: u64,
    /// Of `deliveries_received`, messages whose sender is connected to another node.
    pub deliveries_from_other_nodes: u64,
    pub duplicates: u64,
    /// Out of order by the sender's sequence number.
    pub order_violations: u64,
    /// Out of order by the server's message `id`.
    pub id_order_violations: u64,
    /// `presence`: followed users connecting to it.
    pub presence_targets: u64,
    /// `presence`: `presence_change` events its followers received.
    pub presence_events: u64,
    /// Of `presence_events`, those about a user connected to another node.
    pub presence_events_from_other_nodes: u64,
    /// `history`, `login`: successful requests over its connections.
    pub requests_ok: u64,
}

/// Users and setup time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupReport {
    pub user_prefix: String,
    pub users: u64,
    /// `/register` answered CREATED.
    pub registered: u64,
    /// `/register` answered ALREADY.
    pub already_registered: u64,
    /// Tokens obtained by `/login`.
    pub logins: u64,
    /// Tokens minted with `--jwt-secret`.
    pub tokens_minted: u64,
    /// From the start of the run until the measured traffic began.
    pub setup_secs: f64,
}

/// WebSocket connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionReport {
    pub attempted: u64,
    pub opened: u64,
    /// Attempts that never opened, by reason (`connect_refused`, `http_403`, ...).
    pub failed: Counts,
    /// Opened, then ended without the bench asking, by reason.
    pub lost: Counts,
    /// Opened but not ready (joined, subscribed) when the run started; left out.
    pub not_ready: u64,
    /// From the first attempt until every attempt had settled.
    pub open_secs: f64,
    /// Opened connections per second over `open_secs`.
    pub opened_per_sec: f64,
}

/// `chat` / `fanout` messages and their deliveries; `dm`'s DMs (a DM is acked when
/// its `dm_ack` says `DELIVERED`, and is then expected at its one recipient).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageReport {
    pub rooms: u64,
    pub members_per_room: u64,
    /// Senders per room (`dm`: every connected member).
    pub senders: u64,
    /// `dm`: members per room that stay offline.
    pub offline_per_room: u64,
    /// `msg` (`room_dm`) requests written.
    pub sent: u64,
    /// Messages the server echoed back to their sender (the basis of
    /// `deliveries_expected`); `dm`: DMs answered `DELIVERED`.
    pub acked: u64,
    /// `dm`: DMs answered `QUEUED` for a recipient that is not connected.
    pub queued: u64,
    /// `error` replies to `msg`, by code (`RATE_LIMITED`, `UNAVAILABLE`, ...); `dm`:
    /// also `dm_ack`s with any other status, by status (`BLOCKED`,
    /// `RECIPIENT_NOT_IN_ROOM`, `QUEUED_WHILE_ONLINE`, `DELIVERED_TO_OFFLINE`, ...).
    pub failed: Counts,
    /// `error` events that matched no request of ours, by code.
    pub unmatched_errors: Counts,
    /// No echo and no error within `--timeout` (an echo may still arrive later).
    pub timed_out: u64,
    /// Open loop: sends skipped because the sender had too many in flight or was gone.
    pub skipped: u64,
    /// `acked` × member connections of the room (`dm`: × 1, its recipient).
    pub deliveries_expected: u64,
    /// Distinct deliveries of acknowledged messages to member connections.
    pub deliveries_received: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// A message from a sender arriving after a higher sequence number from it.
    pub order_violations: u64,
    /// A message whose server `id` is not above every id its receiver got before in
    /// the room: ids must increase at every receiver, whichever node it is on and
    /// whichever node the sender is on.
    pub id_order_violations: u64,
    /// Deliveries of messages whose sender never got the echo.
    pub unacked_deliveries: u64,
    /// `message` events that are not ours (other clients in the room).
    pub foreign: u64,
    /// `dm`: DMs of ours that reached a member they were not addressed to.
    pub misdirected: u64,
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    pub deliveries_per_sec: f64,
    /// `--typing-every-ms`: `typing` requests sent, and `typing` events received
    /// (the server forwards at most one per user and room every 2 s).
    pub typing_sent: u64,
    pub typing_received: u64,
}

/// Request/reply loops: `history`, `login`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestReport {
    pub clients: u64,
    pub sent: u64,
    pub ok: u64,
    /// By error code or HTTP status (`http_401`) or transport failure.
    pub failed: Counts,
    pub timed_out: u64,
    /// Successful replies per second in the measured window.
    pub per_sec: f64,
    /// `history`: mean number of items per reply.
    pub mean_items: Option<f64>,
    /// `history`: messages sent into the room before measuring.
    pub preloaded: Option<u64>,
}

/// `presence` events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenceReport {
    pub targets: u64,
    pub followers: u64,
    /// Target connections opened (each should bring an `online` to every follower).
    pub target_opens: u64,
    /// Target connections closed (each should bring an `offline`).
    pub target_closes: u64,
    /// Target connections that failed to open, by reason.
    pub target_failures: Counts,
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    /// Events beyond the expected count.
    pub unexpected: u64,
    /// The same status twice in a row for one target at one follower.
    pub repeated_status: u64,
    pub events_per_sec: f64,
}

/// `abuse`: the attacks and the server's memory and CPU while they ran. The normal
/// client's `msg` round trips are the report's `requests` (latency `normal_msg`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AbuseReport {
    /// Connections per attack.
    pub abusers_per_attack: u64,
    /// By attack name (`metrics-pipeline`, ...).
    pub attacks: BTreeMap<String, AttackReport>,
    /// The normal client's `GET /health`, once a second (latency `normal_health`).
    pub health: RequestReport,
    /// Server VmRSS before the first abuser connected.
    pub server_rss_start_kb: Option<u64>,
    /// Highest server VmRSS sampled (every 100 ms) while the attacks ran.
    pub server_rss_peak_kb: Option<u64>,
    /// Server VmHWM (its lifetime peak, as the kernel counts it) when the attacks ended.
    pub server_hwm_kb: Option<u64>,
    /// Server VmRSS when the attack time was up, abusers still connected.
    pub server_rss_end_kb: Option<u64>,
    /// Server VmRSS `settle` seconds after every abuser disconnected.
    pub server_rss_after_kb: Option<u64>,
    /// Server CPU time (user + system) while the attacks ran.
    pub server_cpu_secs: Option<f64>,
    /// Wall time the attacks ran (the divisor for the CPU share).
    pub attack_secs: f64,
    /// Server CPU seconds used in each second of the attack.
    pub server_cpu_by_second: Vec<f64>,
    /// The normal client's slowest `msg` round trip (ms) per second of the attack,
    /// by when the message was sent.
    pub normal_worst_by_second: Vec<f64>,
}

/// One attack's connections: how many got in, how the server ended them, what it
/// answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackReport {
    pub attempted: u64,
    /// TCP connected (HTTP attacks) or upgraded with `101` (WebSocket attacks).
    pub opened: u64,
    /// Never opened, by reason: `http_429`, `http_503`, `connect_refused`,
    /// `handshake_timeout`, `still_connecting_at_end`, ...
    pub refused: Counts,
    /// Opened, then ended by the server, by how: `close_1008`, `http_413` (the last
    /// response right before the end), `eof`, `reset`.
    pub closed_by_server: Counts,
    /// Still open when the attack time was up.
    pub open_at_end: u64,
    /// Requests or frames written (pipelined requests count once their bytes are
    /// written).
    pub requests_sent: u64,
    pub bytes_sent: u64,
    /// What the connections read back: HTTP statuses (`http_200`), WebSocket events
    /// (`create_room_ack:CREATED`, `error:RATE_LIMITED`). Connections that never read
    /// during the attack are read once at its end.
    pub responses: Counts,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// No correctness problem: nothing missing, duplicated or out of order, and no
    /// failed connection, request or message. Rate-limit rejections count as
    /// failures too, so benchmarks should raise the server's limits.
    pub fn is_clean(&self) -> bool {
        let conns_ok = self
            .connections
            .as_ref()
            .is_none_or(|c| c.failed.is_empty() && c.lost.is_empty() && c.not_ready == 0);
        let msgs_ok = self.messages.as_ref().is_none_or(|m| {
            m.missing == 0
                && m.duplicates == 0
                && m.order_violations == 0
                && m.id_order_violations == 0
                && m.misdirected == 0
                && m.failed.is_empty()
                && m.timed_out == 0
                && m.skipped == 0
        });
        let req_ok = |r: &Option<RequestReport>| {
            r.as_ref()
                .is_none_or(|r| r.failed.is_empty() && r.timed_out == 0 && r.sent > 0)
        };
        let presence_ok = self.presence.as_ref().is_none_or(|p| {
            p.missing == 0
                && p.unexpected == 0
                && p.repeated_status == 0
                && p.target_failures.is_empty()
        });
        let health_ok = self.abuse.as_ref().is_none_or(|a| {
            a.health.failed.is_empty() && a.health.timed_out == 0 && a.health.sent > 0
        });
        conns_ok
            && health_ok
            && msgs_ok
            && req_ok(&self.requests)
            && req_ok(&self.background_login)
            && presence_ok
    }
}

impl Report {
    /// What makes the report unclean, in words, one entry per problem (empty when
    /// [`Report::is_clean`]).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        };
        if let Some(m) = &self.messages {
            say(m.missing, "deliveries missing");
            say(m.duplicates, "deliveries duplicated");
            say(m.order_violations, "deliveries out of order");
            say(
                m.id_order_violations,
                "deliveries out of order by server id",
            );
            say(m.misdirected, "deliveries to the wrong recipient");
            say(m.timed_out, "sends never answered within --timeout");
            say(m.skipped, "sends skipped");
            if !m.failed.is_empty() {
                out.push(format!("sends failed: {}", counts(&m.failed)));
            }
        }
        if let Some(c) = &self.connections {
            if !c.failed.is_empty() {
                out.push(format!("connections failed: {}", counts(&c.failed)));
            }
            if !c.lost.is_empty() {
                out.push(format!("connections lost: {}", counts(&c.lost)));
            }
            if c.not_ready > 0 {
                out.push(format!("{} connections not ready", c.not_ready));
            }
        }
        for (title, r) in [
            ("requests", &self.requests),
            ("background logins", &self.background_login),
        ] {
            if let Some(r) = r {
                if !r.failed.is_empty() {
                    out.push(format!("{title} failed: {}", counts(&r.failed)));
                }
                if r.timed_out > 0 {
                    out.push(format!("{} {title} timed out", r.timed_out));
                }
                if r.sent == 0 {
                    out.push(format!("no {title} sent"));
                }
            }
        }
        if let Some(p) = &self.presence {
            if p.missing > 0 || p.unexpected > 0 || p.repeated_status > 0 {
                out.push(format!(
                    "presence_change missing {}, unexpected {}, repeated {}",
                    p.missing, p.unexpected, p.repeated_status
                ));
            }
            if !p.target_failures.is_empty() {
                out.push(format!(
                    "presence targets failed: {}",
                    counts(&p.target_failures)
                ));
            }
        }
        if let Some(a) = &self.abuse {
            let h = &a.health;
            if !h.failed.is_empty() || h.timed_out > 0 || h.sent == 0 {
                out.push(format!(
                    "normal client /health: sent {}, failed {}, timed out {}",
                    h.sent,
                    counts(&h.failed),
                    h.timed_out
                ));
            }
        }
        if out.is_empty() && !self.is_clean() {
            out.push("see the report".to_string());
        }
        out
    }
}

fn counts(map: &Counts) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or("?".to_string(), |kb| {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    })
}

fn write_abuse(f: &mut fmt::Formatter<'_>, a: &AbuseReport) -> fmt::Result {
    writeln!(f, "attacks ({} connections each):", a.abusers_per_attack)?;
    for (name, r) in &a.attacks {
        writeln!(
            f,
            "  {name}: attempted {}  opened {}  open at end {}  sent {} ({:.1} MiB)",
            r.attempted,
            r.opened,
            r.open_at_end,
            r.requests_sent,
            r.bytes_sent as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(f, "    refused:          {}", counts(&r.refused))?;
        writeln!(f, "    closed by server: {}", counts(&r.closed_by_server))?;
        writeln!(f, "    responses:        {}", counts(&r.responses))?;
    }
    writeln!(
        f,
        "server RSS: start {}  peak {} (VmHWM {})  end {}  after abusers left {}",
        mib(a.server_rss_start_kb),
        mib(a.server_rss_peak_kb),
        mib(a.server_hwm_kb),
        mib(a.server_rss_end_kb),
        mib(a.server_rss_after_kb)
    )?;
    if let Some(cpu) = a.server_cpu_secs {
        writeln!(
            f,
            "server CPU: {cpu:.1} s over {:.1} s of attacks ({:.0}% of one core)",
            a.attack_secs,
            if a.attack_secs > 0.0 {
                100.0 * cpu / a.attack_secs
            } else {
                0.0
            }
        )?;
    }
    if !a.server_cpu_by_second.is_empty() {
        writeln!(
            f,
            "server CPU per second (s): {}",
            series(&a.server_cpu_by_second, 2)
        )?;
    }
    if !a.normal_worst_by_second.is_empty() {
        writeln!(
            f,
            "normal msg slowest round trip per second (ms): {}",
            series(&a.normal_worst_by_second, 0)
        )?;
    }
    write_requests(f, "normal client GET /health:", &a.health)
}

/// Numbers on one line, each with `decimals` places.
fn series(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_requests(f: &mut fmt::Formatter<'_>, title: &str, r: &RequestReport) -> fmt::Result {
    writeln!(f, "{title}")?;
    writeln!(
        f,
        "  clients {}  sent {}  ok {}  timed out {}  ({:.1}/s)",
        r.clients, r.sent, r.ok, r.timed_out, r.per_sec
    )?;
    writeln!(f, "  failed: {}", counts(&r.failed))?;
    if let Some(p) = r.preloaded {
        writeln!(f, "  preloaded messages: {p}")?;
    }
    if let Some(items) = r.mean_items {
        writeln!(f, "  mean items per reply: {items:.1}")?;
    }
    Ok(())
}

impl Report {
    /// The per-node section: one line per node with what applies to the scenario.
    fn write_nodes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nodes: {}", self.nodes.len())?;
        for n in &self.nodes {
            write!(
                f,
                "  {}: connections {}  opened {}",
                n.addr, n.connections, n.opened
            )?;
            if self.messages.is_some() {
                write!(
                    f,
                    "  sent {}  deliveries expected {}  received {} ({} from other nodes)  missing {}  dup {}  order {}/{}",
                    n.messages_sent,
                    n.deliveries_expected,
                    n.deliveries_received,
                    n.deliveries_from_other_nodes,
                    n.missing,
                    n.duplicates,
                    n.order_violations,
                    n.id_order_violations
                )?;
            }
            if self.presence.is_some() {
                write!(
                    f,
                    "  targets {}  presence_change received {} ({} from other nodes)",
                    n.presence_targets, n.presence_events, n.presence_events_from_other_nodes
                )?;
            }
            if self.requests.is_some() {
                write!(f, "  requests ok {}", n.requests_ok)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== klav-bench {} ==  elapsed {:.1}s, measured {:.1}s, setup {:.1}s",
            self.scenario, self.elapsed_secs, self.measured_secs, self.setup.setup_secs
        )?;
        let s = &self.setup;
        writeln!(
            f,
            "users: {} (prefix {}; registered {}, already {}, logins {}, minted tokens {})",
            s.users, s.user_prefix, s.registered, s.already_registered, s.logins, s.tokens_minted
        )?;
        if let Some(c) = &self.connections {
            write!(
                f,
                "connections: attempted {}  opened {}  not ready {}",
                c.attempted, c.opened, c.not_ready
            )?;
            if c.open_secs > 0.0 {
                write!(
                    f,
                    "  (all settled in {:.2}s, {:.0} opened/s)",
                    c.open_secs, c.opened_per_sec
                )?;
            }
            writeln!(f)?;
            writeln!(f, "  failed: {}", counts(&c.failed))?;
            writeln!(f, "  lost:   {}", counts(&c.lost))?;
        }
        if let Some(m) = &self.messages {
            write!(
                f,
                "messages: {} rooms x {} members, {} senders/room",
                m.rooms, m.members_per_room, m.senders
            )?;
            if m.offline_per_room > 0 {
                write!(f, ", {} offline/room", m.offline_per_room)?;
            }
            writeln!(f)?;
            write!(
                f,
                "  sent {}  acked {}  timed out {}  skipped {}",
                m.sent, m.acked, m.timed_out, m.skipped
            )?;
            if m.offline_per_room > 0 || m.queued > 0 {
                write!(f, "  queued {}", m.queued)?;
            }
            writeln!(f)?;
            writeln!(f, "  failed by code: {}", counts(&m.failed))?;
            if !m.unmatched_errors.is_empty() {
                writeln!(f, "  other errors: {}", counts(&m.unmatched_errors))?;
            }
            writeln!(
                f,
                "  deliveries expected {}  received {}  MISSING {}  DUPLICATES {}  ORDER VIOLATIONS {} (by server id {})",
                m.deliveries_expected, m.deliveries_received, m.missing, m.duplicates, m.order_violations, m.id_order_violations
            )?;
            if m.unacked_deliveries > 0 || m.foreign > 0 {
                writeln!(
                    f,
                    "  deliveries of unacked messages {}  foreign messages {}",
                    m.unacked_deliveries, m.foreign
                )?;
            }
            if m.misdirected > 0 {
                writeln!(f, "  MISDIRECTED {}", m.misdirected)?;
            }
            writeln!(
                f,
                "  throughput: {:.1} msgs/s sent, {:.1} msgs/s acked, {:.1} deliveries/s",
                m.sent_per_sec, m.acked_per_sec, m.deliveries_per_sec
            )?;
            if m.typing_sent > 0 {
                writeln!(
                    f,
                    "  typing: {} sent, {} received",
                    m.typing_sent, m.typing_received
                )?;
            }
        }
        if let Some(r) = &self.requests {
            write_requests(f, &format!("{} requests:", self.scenario), r)?;
        }
        if let Some(r) = &self.background_login {
            write_requests(f, "background logins:", r)?;
        }
        if let Some(a) = &self.abuse {
            write_abuse(f, a)?;
        }
        if let Some(p) = &self.presence {
            writeln!(
                f,
                "presence: {} targets, {} followers",
                p.targets, p.followers
            )?;
            writeln!(
                f,
                "  target opens {}  closes {}  failures: {}",
                p.target_opens,
                p.target_closes,
                counts(&p.target_failures)
            )?;
            writeln!(
                f,
                "  presence_change expected {}  received {}  MISSING {}  unexpected {}  repeated status {}  ({:.1} events/s)",
                p.expected, p.received, p.missing, p.unexpected, p.repeated_status, p.events_per_sec
            )?;
        }
        if self.nodes.len() > 1 {
            self.write_nodes(f)?;
        }
        if !self.latency.is_empty() {
            writeln!(
                f,
                "latency (ms)        {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "count", "mean", "p50", "p90", "p99", "p99.9", "max"
            )?;
            for (name, l) in &self.latency {
                writeln!(
                    f,
                    "  {:<17} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    name, l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                )?;
            }
        }
        if let Some(kb) = self.server_peak_rss_kb {
            writeln!(f, "server peak RSS: {:.1} MiB", kb as f64 / 1024.0)?;
        }
        if let Some(kb) = self.bench_peak_rss_kb {
            writeln!(f, "bench peak RSS: {:.1} MiB", kb as f64 / 1024.0)?;
        }
        write!(
            f,
            "result: {}",
            if self.is_clean() {
                "CLEAN"
            } else {
                "PROBLEMS (see above)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line_with_every_section() {
        let mut r = Report {
            scenario: "chat".into(),
            messages: Some(MessageReport {
                sent: 10,
                acked: 10,
                deliveries_expected: 30,
                deliveries_received: 30,
                ..Default::default()
            }),
            ..Default::default()
        };
        r.latency.insert(
            "delivery".into(),
            Latency {
                count: 30,
                mean_ms: 1.0,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 3.0,
                p999_ms: 3.0,
                max_ms: 3.5,
            },
        );
        let json = r.to_json();
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["scenario"], "chat");
        assert_eq!(v["messages"]["deliveries_expected"], 30);
        assert_eq!(v["latency"]["delivery"]["p99_ms"], 3.0);
        assert!(v["presence"].is_null());
        assert!(r.is_clean());
        let text = r.to_string();
        assert!(text.contains("MISSING 0"), "{text}");
        assert!(text.contains("delivery"), "{text}");
        assert!(text.ends_with("result: CLEAN"));
    }

    #[test]
    fn nodes_are_listed_in_json_and_text() {
        let mut r = Report {
            scenario: "chat".into(),
            messages: Some(MessageReport::default()),
            nodes: vec![
                NodeReport {
                    addr: "127.0.0.1:5001".into(),
                    connections: 4,
                    opened: 4,
                    deliveries_received: 40,
                    deliveries_from_other_nodes: 30,
                    ..Default::default()
                },
                NodeReport {
                    addr: "127.0.0.1:5002".into(),
                    connections: 3,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["nodes"][0]["addr"], "127.0.0.1:5001");
        assert_eq!(v["nodes"][0]["deliveries_from_other_nodes"], 30);
        assert_eq!(v["nodes"][1]["connections"], 3);
        let text = r.to_string();
        assert!(text.contains("nodes: 2"), "{text}");
        assert!(text.contains("127.0.0.1:5002: connections 3"), "{text}");
        assert!(text.contains("received 40 (30 from other nodes)"), "{text}");
        // One node: no per-node section in the text (the JSON still has it).
        r.nodes.truncate(1);
        assert!(!r.to_string().contains("nodes:"));
        // Out of order by server id is a problem.
        assert!(r.is_clean());
        r.messages.as_mut().unwrap().id_order_violations = 1;
        assert!(!r.is_clean());
    }

    #[test]
    fn problems_make_a_report_unclean() {
        let mut r = Report {
            messages: Some(MessageReport::default()),
            ..Default::default()
        };
        assert!(r.is_clean());
        r.messages
            .as_mut()
            .unwrap()
            .failed
            .insert("RATE_LIMITED".into(), 1);
        assert!(!r.is_clean());
        assert_eq!(r.problems(), vec!["sends failed: RATE_LIMITED=1"]);
        r.messages.as_mut().unwrap().failed.clear();
        r.messages.as_mut().unwrap().missing = 1;
        assert!(!r.is_clean());
        assert_eq!(r.problems(), vec!["1 deliveries missing"]);
        r.messages.as_mut().unwrap().missing = 0;
        r.messages.as_mut().unwrap().misdirected = 2;
        assert!(!r.is_clean());
        assert!(r.to_string().contains("MISDIRECTED 2"));
        assert_eq!(r.problems(), vec!["2 deliveries to the wrong recipient"]);
        r.messages.as_mut().unwrap().misdirected = 0;
        assert!(r.problems().is_empty());
        r.messages = None;
        r.connections = Some(ConnectionReport::default());
        r.connections
            .as_mut()
            .unwrap()
            .lost
            .insert("reset".into(), 2);
        assert!(!r.is_clean());
        assert!(r.to_string().contains("reset=2"));
    }
}
