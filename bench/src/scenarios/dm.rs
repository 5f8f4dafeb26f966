//! `dm`: rooms of a few members each, where every connected member sends `room_dm`s
//! to the other members of its room in turn. Every recipient checks every `dm` it
//! gets (exactly once, in each sender's order, by its text and by the server's id);
//! every sender times its `dm_ack`s and checks their status. At the end every DM the
//! server answered `DELIVERED` is checked to have reached its recipient.
//!
//! Member `m` of room `r` is user `r * members + m`. The last `offline` members of
//! each room join it during setup and disconnect: they are never connected during
//! the run, so DMs to them must be answered `QUEUED`. Every other member connects,
//! joins, and sends. Its `k`-th DM goes to the others of its room in turn (see
//! [`dm_target`]); the text is a [`MsgStamp`] whose `sender` is the pair (sender
//! user, recipient member) and whose `seq` counts that pair's DMs, so a recipient
//! tracks each sender's sequence on its own and the sender's acknowledged set is
//! exactly what that recipient must hold. Connections are spread over threads
//! round-robin and over the server's nodes by member index, as in `chat` (the
//! member connection loop both run is in [`super::rooms`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::BenchError;
use crate::event::{json_str, Event};
use crate::net::Net;
use crate::options::DmOptions;
use crate::report::{MessageReport, Report};
use crate::run::{Server, SetupSocket};
use crate::scenarios::bump;
use crate::scenarios::rooms::merge::merge;
use crate::scenarios::rooms::setup::{check_sending, users_and_rooms, Sending};
use crate::scenarios::rooms::{
    run_drivers, Counters, Member, RoomDriver, RoomPlan, Traffic, JOIN_REQ,
};
use crate::stats::{LatencyHist, MsgStamp, Seen, SeqTrack, MAX_TRACKED_SEQ};

/// The recipient (member index in the room) of the `k`-th DM of member `from`, and
/// that DM's sequence number among the DMs from `from` to it: the other members in
/// turn, `from` skipped, so each gets every `(members - 1)`-th DM.
pub(crate) fn dm_target(members: usize, from: usize, k: u64) -> (usize, u64) {
    let others = (members.max(2) - 1) as u64;
    let j = (k % others) as usize;
    let to = if j >= from { j + 1 } else { j };
    (to, k / others)
}

/// What `dm` adds to a room driver.
struct Dm {
    /// Members `0..online` of each room connect and send; the rest stay offline.
    online: usize,
    names_json: Arc<Vec<String>>,
    /// Per user: connected, ready and not lost. A `QUEUED` answer for a recipient
    /// that is live is wrong; for one that is not, its connection is the problem.
    live: Arc<Vec<AtomicBool>>,
    ack_queued: LatencyHist,
}

/// What a sender was answered `DELIVERED` for, by recipient member: the pair
/// sequence numbers.
type Acked = Vec<SeqTrack>;

impl Dm {
    /// The stamp's `sender` of DMs from `from_user` to member `to` of its room.
    fn stream(members: usize, from_user: usize, to: usize) -> u32 {
        (from_user * members + to) as u32
    }
}

impl Traffic for Dm {
    type Own = Acked;

    /// Once joined, a member only cares about `dm`, `dm_ack` and `error`
    /// (`offline_dm` does not match: the quote is not before `dm`).
    fn screen(_d: &mut RoomDriver<Self>, text: &str) -> Option<bool> {
        Some(text.contains("\"dm"))
    }

    fn frame(d: &RoomDriver<Self>, mi: usize, k: u64, t: u64) -> Option<String> {
        let plan = &d.plan;
        let m = &d.members[mi];
        let (to, seq) = dm_target(plan.members, m.m, k);
        if seq >= MAX_TRACKED_SEQ {
            return None;
        }
        let text = MsgStamp {
            sender: Dm::stream(plan.members, m.user, to),
            seq,
            sent_nanos: t,
        }
        .encode(plan.msg_size);
        let room = &plan.rooms_json[m.room];
        let to_name = &d.traffic.names_json[m.room * plan.members + to];
        Some(match &plan.client_id_prefix {
            Some(run) => format!(
                r#"{{"type":"room_dm","room_id":{room},"to":{to_name},"text":"{text}","req_id":{k},"client_id":"{run}-{}-{k}"}}"#,
                m.user
            ),
            None => format!(
                r#"{{"type":"room_dm","room_id":{room},"to":{to_name},"text":"{text}","req_id":{k}}}"#
            ),
        })
    }

    /// An ack, and a delivery when the recipient is one of the connected members.
    fn owed(d: &RoomDriver<Self>, mi: usize, k: u64) -> i64 {
        let (to, _) = dm_target(d.plan.members, d.members[mi].m, k);
        if to < d.traffic.online {
            2
        } else {
            1
        }
    }

    fn on_event(d: &mut RoomDriver<Self>, net: &mut Net, mi: usize, ev: &Event, now: Instant) {
        match ev.kind() {
            "dm" => on_dm(d, mi, ev, now),
            "dm_ack" => on_ack(d, net, mi, ev, now),
            _ => {}
        }
    }

    fn on_ready(d: &mut RoomDriver<Self>, mi: usize) {
        d.traffic.live[d.members[mi].user].store(true, Ordering::Release);
    }

    fn on_lost(d: &mut RoomDriver<Self>, mi: usize) {
        d.traffic.live[d.members[mi].user].store(false, Ordering::Release);
    }
}

/// A `dm` arrived at member `mi`.
fn on_dm(d: &mut RoomDriver<Dm>, mi: usize, ev: &Event, now: Instant) {
    let Some(stamp) = Event::field(&ev.text).and_then(MsgStamp::decode) else {
        d.tally.foreign += 1;
        return;
    };
    let (members, online) = (d.plan.members, d.traffic.online);
    let m = &d.members[mi];
    let from_user = stamp.sender as usize / members;
    let to = stamp.sender as usize % members;
    let from = from_user % members;
    if from_user / members != m.room
        || from >= online
        || from == m.m
        || stamp.seq >= MAX_TRACKED_SEQ
    {
        d.tally.foreign += 1;
        return;
    }
    if to != m.m {
        // One of ours, sent to another member of this room.
        d.tally.misdirected += 1;
        return;
    }
    d.check_delivery(mi, from, from, &stamp, ev, now);
}

/// A `dm_ack` arrived at sender `mi`.
fn on_ack(d: &mut RoomDriver<Dm>, net: &mut Net, mi: usize, ev: &Event, now: Instant) {
    let Some(k) = ev.req_num().filter(|&k| k != JOIN_REQ) else {
        bump(&mut d.tally.unmatched_errors, "dm_ack_without_req_id");
        return;
    };
    let now_nanos = d.nanos(now);
    let (members, online) = (d.plan.members, d.traffic.online);
    let m = &mut d.members[mi];
    let Some(s) = m.sender.as_mut().filter(|s| k < s.next) else {
        bump(&mut d.tally.unmatched_errors, "dm_ack_unknown_req_id");
        return;
    };
    let (to, seq) = dm_target(members, m.m, k);
    let online_to = to < online;
    // A late ack (after `--timeout`) still says what happened to the DM; only
    // its latency is no longer counted.
    let sent = s.in_flight.complete(k);
    let in_window = match (sent, &d.times) {
        (Some(s), Some(t)) => t.in_window(s),
        _ => false,
    };
    let latency = sent.map(|s| now_nanos.saturating_sub(s));
    let mut settled: i64 = 1;
    match Event::field(&ev.status).unwrap_or("NONE") {
        "DELIVERED" if online_to => {
            if m.own[to].record(seq) == Seen::Duplicate {
                bump(&mut d.tally.failed, "ACKED_TWICE");
            }
            if in_window {
                d.ack.record_nanos(latency.unwrap_or(0));
                d.tally.acked_in_window += 1;
            }
        }
        "QUEUED"
            if !online_to || !d.traffic.live[m.room * members + to].load(Ordering::Acquire) =>
        {
            // Offline by design, or a recipient whose connection failed (reported
            // with the connections): queued is right, and no delivery will come.
            d.tally.queued += 1;
            settled += i64::from(online_to);
            if in_window {
                d.traffic.ack_queued.record_nanos(latency.unwrap_or(0));
                d.tally.acked_in_window += 1;
            }
        }
        status => {
            let label = match status {
                "DELIVERED" => "DELIVERED_TO_OFFLINE",
                "QUEUED" => "QUEUED_WHILE_ONLINE",
                other => other,
            };
            bump(&mut d.tally.failed, label);
            settled += i64::from(online_to);
            d.shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    d.shared.outstanding.fetch_sub(settled, Ordering::AcqRel);
    if sent.is_some() {
        d.refill(net, mi, now);
    }
}

/// Checks the sizes before anything is set up.
fn check(d: &DmOptions) -> Result<(), BenchError> {
    if d.rooms == 0 {
        return Err(BenchError::Usage("--rooms must be at least 1".into()));
    }
    if d.members < 2 {
        return Err(BenchError::Usage(
            "--members must be at least 2 (a sender and a recipient)".into(),
        ));
    }
    if d.offline >= d.members {
        return Err(BenchError::Usage(format!(
            "--offline must be below --members ({}): at least one member sends",
            d.members
        )));
    }
    if d.rooms.saturating_mul(d.members).saturating_mul(d.members) > u32::MAX as usize {
        return Err(BenchError::Usage(
            "--rooms x --members x --members must fit in 32 bits".into(),
        ));
    }
    check_sending(d.window, d.msg_size, d.rate)
}

/// Runs `dm`.
pub(crate) fn run(server: &Server, d: &DmOptions) -> Result<Report, BenchError> {
    check(d)?;
    let opts = &server.opts;
    let (rooms, members) = (d.rooms, d.members);
    let online = members - d.offline;
    let total = rooms * members;
    let connected = rooms * online;
    server.log(format!(
        "dm: {rooms} rooms x {members} members ({} offline), {}",
        d.offline,
        match d.rate {
            Some(r) => format!("open loop at {r} DMs/s"),
            None => format!("closed loop, window {}", d.window),
        }
    ));
    let (users, prov, room_ids) = users_and_rooms(server, total, rooms, "dm")?;
    // The offline members join once and leave: members the DMs can be queued for.
    for (r, room_id) in room_ids.iter().enumerate() {
        for m in online..members {
            let user = r * members + m;
            let mut s = SetupSocket::open(server, &users.tokens[user])?;
            s.join(room_id, &users.names[user], 1)?;
            s.close_and_wait();
        }
    }
    if d.offline > 0 {
        server.log(format!(
            "{} offline members joined and left",
            rooms * d.offline
        ));
    }

    let sending = Sending {
        members,
        total_senders: connected,
        window: d.window,
        rate: d.rate,
        msg_size: d.msg_size,
        client_ids: d.client_ids,
    };
    let plan = Arc::new(RoomPlan::new(server, room_ids, users, sending));
    let names_json = Arc::new(plan.names.iter().map(|n| json_str(n)).collect::<Vec<_>>());
    let live = Arc::new(
        (0..total)
            .map(|_| AtomicBool::new(false))
            .collect::<Vec<_>>(),
    );
    let now = Instant::now();
    let shared = Arc::new(Counters::new(connected, now + opts.setup_timeout));
    let threads = server.threads_for(connected);
    let drivers: Vec<RoomDriver<Dm>> = (0..threads)
        .map(|t| {
            // The connected members, dealt out to the threads in turn.
            let mine = (0..rooms)
                .flat_map(|r| (0..online).map(move |m| r * members + m))
                .skip(t)
                .step_by(threads)
                .map(|user| {
                    let acked = (0..members).map(|_| SeqTrack::new()).collect();
                    Member::new(&plan, user, members, members, true, acked)
                })
                .collect();
            let dm = Dm {
                online,
                names_json: names_json.clone(),
                live: live.clone(),
                ack_queued: LatencyHist::new(),
            };
            RoomDriver::new(plan.clone(), shared.clone(), mine, dm)
        })
        .collect();
    let progress = {
        let shared = shared.clone();
        move || shared.progress(connected)
    };
    let (drivers, rss) = run_drivers(server, &plan, drivers, now, progress)?;

    let msgs = MessageReport {
        rooms: rooms as u64,
        members_per_room: members as u64,
        senders: online as u64,
        offline_per_room: d.offline as u64,
        ..Default::default()
    };
    let mut merged = merge(server, &shared, drivers, msgs, |msgs, m| {
        msgs.acked += m.own.iter().map(SeqTrack::count).sum::<u64>();
    });
    // What every sender was answered `DELIVERED` for, per recipient, is what that
    // recipient must hold, when both were ready at the start.
    for room in &std::mem::take(&mut merged.by_room) {
        for sender in room {
            let sender_node = plan.node_of_member(sender.m);
            for recipient in room.iter().filter(|r| r.m != sender.m) {
                let (acked, got) = (&sender.own[recipient.m], &recipient.tracks[sender.m]);
                merged.account(acked, got, recipient.node, sender_node);
            }
        }
    }
    let mut ack_queued = LatencyHist::new();
    for dm in &merged.traffic {
        ack_queued.merge(&dm.ack_queued);
    }
    let more = vec![("ack_queued", ack_queued)];
    Ok(merged.into_report(server, total, &prov, more, &rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_targets_take_the_others_in_turn() {
        // Member 1 of 4 sends to 0, 2, 3, 0, 2, 3, ...; each pair counts from 0.
        let got: Vec<(usize, u64)> = (0..7).map(|k| dm_target(4, 1, k)).collect();
        assert_eq!(
            got,
            vec![(0, 0), (2, 0), (3, 0), (0, 1), (2, 1), (3, 1), (0, 2)]
        );
        // Every member, every recipient: never itself, each pair's numbers 0, 1, 2, ...
        for members in 2..6 {
            for from in 0..members {
                let mut next = vec![0u64; members];
                for k in 0..40 {
                    let (to, seq) = dm_target(members, from, k);
                    assert_ne!(to, from);
                    assert!(to < members);
                    assert_eq!(seq, next[to], "members {members} from {from} k {k}");
                    next[to] += 1;
                }
            }
        }
    }

    #[test]
    fn sizes_are_checked() {
        let ok = DmOptions::default();
        assert!(check(&ok).is_ok());
        for bad in [
            DmOptions {
                members: 1,
                ..Default::default()
            },
            DmOptions {
                members: 3,
                offline: 3,
                ..Default::default()
            },
            DmOptions {
                rooms: 0,
                ..Default::default()
            },
            DmOptions {
                window: 0,
                ..Default::default()
            },
            DmOptions {
                msg_size: 4001,
                ..Default::default()
            },
            DmOptions {
                rate: Some(0.0),
                ..Default::default()
            },
            DmOptions {
                rooms: 1 << 20,
                members: 1 << 8,
                ..Default::default()
            },
        ] {
            assert!(matches!(check(&bad), Err(BenchError::Usage(_))), "{bad:?}");
        }
    }
}
