//! After a room scenario's threads are done: their counts combined into the
//! report's connections, messages, nodes and latencies. What each delivery is
//! checked against (who acknowledged what, for whom) is the scenario's; the rest is
//! here.

use std::time::Instant;

use crate::report::{ConnectionReport, MessageReport, NodeReport, Report};
use crate::run::{RssPeaks, Server};
use crate::scenarios::rooms::{Counters, Member, Phase, RoomDriver, Traffic};
use crate::scenarios::{merge_counts, rate, setup_report};
use crate::stats::{LatencyHist, SeqTrack};
use crate::users::Provisioned;

/// The threads' counts combined; [`Merged::into_report`] completes them once the
/// scenario has accounted for every delivery (with [`Merged::account`]).
pub(crate) struct Merged<S: Traffic> {
    pub conns: ConnectionReport,
    pub msgs: MessageReport,
    /// The per-node section.
    pub nodes: Vec<NodeReport>,
    /// When the measured run started (`None` if it never did).
    start: Option<Instant>,
    pub delivery: LatencyHist,
    pub ack: LatencyHist,
    /// Each room's members that were ready when the run started, in member order.
    pub by_room: Vec<Vec<Member<S::Own>>>,
    /// Every thread's own part of the scenario.
    pub traffic: Vec<S>,
    sent_in_window: u64,
    acked_in_window: u64,
    deliveries_in_window: u64,
    settled_at: Option<Instant>,
    connects_from: Option<Instant>,
}

/// Combines the threads' counts into `msgs` (which says what the rooms are) and the
/// per-node section; `each` sees every member, ready or not.
pub(crate) fn merge<S: Traffic>(
    server: &Server,
    shared: &Counters,
    drivers: Vec<RoomDriver<S>>,
    mut msgs: MessageReport,
    mut each: impl FnMut(&mut MessageReport, &Member<S::Own>),
) -> Merged<S> {
    let rooms = msgs.rooms as usize;
    let mut nodes = server.node_reports();
    let mut conns = ConnectionReport::default();
    let mut delivery = LatencyHist::new();
    let mut ack = LatencyHist::new();
    let (mut sent_in_window, mut acked_in_window, mut deliveries_in_window) = (0, 0, 0);
    let mut settled_at = None;
    let mut connects_from = None;
    let mut by_room: Vec<Vec<Member<S::Own>>> = (0..rooms).map(|_| Vec::new()).collect();
    let mut traffic = Vec::with_capacity(drivers.len());
    for d in drivers {
        let t = &d.tally;
        conns.attempted += d.members.len() as u64;
        conns.opened += t.opened;
        conns.not_ready += t.not_ready;
        merge_counts(&mut conns.failed, &t.setup_failed);
        merge_counts(&mut conns.lost, &t.lost);
        msgs.sent += t.sent;
        merge_counts(&mut msgs.failed, &t.failed);
        merge_counts(&mut msgs.unmatched_errors, &t.unmatched_errors);
        msgs.timed_out += t.timed_out;
        msgs.skipped += t.skipped;
        msgs.duplicates += t.duplicates;
        msgs.order_violations += t.order_violations;
        msgs.id_order_violations += t.id_order_violations;
        msgs.foreign += t.foreign;
        msgs.misdirected += t.misdirected;
        msgs.queued += t.queued;
        msgs.typing_sent += t.typing_sent;
        msgs.typing_received += t.typing_received;
        sent_in_window += t.sent_in_window;
        acked_in_window += t.acked_in_window;
        deliveries_in_window += t.deliveries_in_window;
        delivery.merge(&d.delivery);
        ack.merge(&d.ack);
        settled_at = settled_at.max(d.all_settled_at);
        connects_from = match (connects_from, d.connects_started_at) {
            (None, x) => x,
            (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
            (a, None) => a,
        };
        for m in d.members {
            if let Some(n) = nodes.get_mut(m.node) {
                n.connections += 1;
                n.opened += u64::from(m.opened);
                n.messages_sent += m.sender.as_ref().map_or(0, |s| s.next);
                n.duplicates += m.duplicates;
                n.order_violations += m.order_violations;
                n.id_order_violations += m.id_order_violations;
            }
            each(&mut msgs, &m);
            if m.phase == Phase::Ready {
                by_room[m.room].push(m);
            }
        }
        traffic.push(d.traffic);
    }
    for members in &mut by_room {
        members.sort_by_key(|m| m.user);
    }
    Merged {
        conns,
        msgs,
        nodes,
        start: shared.gate.started(),
        delivery,
        ack,
        by_room,
        traffic,
        sent_in_window,
        acked_in_window,
        deliveries_in_window,
        settled_at,
        connects_from,
    }
}

impl<S: Traffic> Merged<S> {
    /// Accounts for one recipient's deliveries of one stream (`got`) against what
    /// its sender was acknowledged for (`acked`): expected, received, and received
    /// without an acknowledgement, in the run's counts and its node's.
    pub fn account(&mut self, acked: &SeqTrack, got: &SeqTrack, node: usize, sender_node: usize) {
        let common = got.count_common(acked);
        let msgs = &mut self.msgs;
        msgs.deliveries_expected += acked.count();
        msgs.deliveries_received += common;
        msgs.unacked_deliveries += got.count() - common;
        if let Some(n) = self.nodes.get_mut(node) {
            n.deliveries_expected += acked.count();
            n.deliveries_received += common;
            if node != sender_node {
                n.deliveries_from_other_nodes += common;
            }
        }
    }

    /// The report, once the scenario has accounted for every delivery: its `users`
    /// as `prov` set them up, missing deliveries (run and nodes), rates over the
    /// measured window, how fast the connections opened (until all settled, or the
    /// start), and the latencies `delivery`, `ack` and then `more` (those with no
    /// samples left out).
    pub fn into_report(
        mut self,
        server: &Server,
        users: usize,
        prov: &Provisioned,
        more: Vec<(&str, LatencyHist)>,
        rss: &RssPeaks,
    ) -> Report {
        let measured = server.opts.duration.as_secs_f64();
        let msgs = &mut self.msgs;
        msgs.missing = msgs
            .deliveries_expected
            .saturating_sub(msgs.deliveries_received);
        for n in self.nodes.iter_mut() {
            n.missing = n.deliveries_expected.saturating_sub(n.deliveries_received);
        }
        msgs.sent_per_sec = rate(self.sent_in_window, measured);
        msgs.acked_per_sec = rate(self.acked_in_window, measured);
        msgs.deliveries_per_sec = rate(self.deliveries_in_window, measured);
        let open_end = self.settled_at.or(self.start);
        if let (Some(from), Some(to)) = (self.connects_from, open_end) {
            let conns = &mut self.conns;
            conns.open_secs = to.saturating_duration_since(from).as_secs_f64();
            conns.opened_per_sec = rate(conns.opened, conns.open_secs);
        }
        let mut report = Report {
            measured_secs: measured,
            setup: setup_report(server, users, prov, self.start),
            connections: Some(self.conns),
            messages: Some(self.msgs),
            nodes: self.nodes,
            ..Default::default()
        };
        let latencies = [("delivery", self.delivery), ("ack", self.ack)];
        for (name, hist) in latencies.into_iter().chain(more) {
            if let Some(l) = hist.summary() {
                report.latency.insert(name.into(), l);
            }
        }
        rss.apply(&mut report);
        report
    }
}
