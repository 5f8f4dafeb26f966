//! `chat` and `fanout`: rooms of member connections, some of which send; every member
//! checks every delivery for order and duplicates, and at the end every message the
//! server acknowledged (echoed to its sender) is checked to have reached every member.
//!
//! Member `m` of room `r` is user `r * members + m`; members `0..senders` of a room
//! send, as sender `r * senders + m`. Connections are spread over threads round-robin,
//! and over the server's nodes by member index (member `m` of every room on node
//! `m mod N`), so every room of at least N members spans every node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::event::Event;
use crate::net::Net;
use crate::options::ChatOptions;
use crate::report::{MessageReport, Report};
use crate::run::Server;
use crate::scenarios::login::{LoginLoad, LoginTiming};
use crate::scenarios::rooms::merge::merge;
use crate::scenarios::rooms::setup::{check_sending, users_and_rooms, Sending};
use crate::scenarios::rooms::{
    run_drivers, Counters, Member, Phase, RoomDriver, RoomPlan, Traffic,
};
use crate::stats::{MsgStamp, SeqTrack, MAX_TRACKED_SEQ};

/// What `chat` adds to a room driver.
struct Chat {
    senders: usize,
    typing_every: Option<Duration>,
    /// Per room: members ready at the start, each of which a message owes a delivery.
    ready_in_room: Arc<Vec<AtomicU64>>,
}

impl Chat {
    /// The stamp's `sender` of sender member `m` of room `room`.
    fn sender_id(&self, room: usize, m: usize) -> u32 {
        (room * self.senders + m) as u32
    }
}

/// `--typing-every-ms`: when a member sends its next `typing`.
type NextTyping = Option<Instant>;

impl Traffic for Chat {
    type Own = NextTyping;

    fn screen(d: &mut RoomDriver<Self>, text: &str) -> Option<bool> {
        if text.contains("\"typing\"") {
            d.tally.typing_received += 1;
            return None;
        }
        Some(text.contains("\"message\""))
    }

    fn frame(d: &RoomDriver<Self>, mi: usize, seq: u64, t: u64) -> Option<String> {
        if seq >= MAX_TRACKED_SEQ {
            return None;
        }
        let m = &d.members[mi];
        let id = d.traffic.sender_id(m.room, m.m);
        let text = MsgStamp {
            sender: id,
            seq,
            sent_nanos: t,
        }
        .encode(d.plan.msg_size);
        let room = &d.plan.rooms_json[m.room];
        Some(match &d.plan.client_id_prefix {
            Some(run) => format!(
                r#"{{"type":"msg","room_id":{room},"text":"{text}","req_id":{seq},"client_id":"{run}-{id}-{seq}"}}"#
            ),
            None => format!(r#"{{"type":"msg","room_id":{room},"text":"{text}","req_id":{seq}}}"#),
        })
    }

    fn owed(d: &RoomDriver<Self>, mi: usize, _seq: u64) -> i64 {
        d.traffic.ready_in_room[d.members[mi].room].load(Ordering::Acquire) as i64
    }

    fn on_event(d: &mut RoomDriver<Self>, net: &mut Net, mi: usize, ev: &Event, now: Instant) {
        if ev.kind() != "message" {
            return;
        }
        let Some(stamp) = Event::field(&ev.text).and_then(MsgStamp::decode) else {
            d.tally.foreign += 1;
            return;
        };
        let senders = d.traffic.senders;
        if stamp.sender as usize / senders != d.members[mi].room || stamp.seq >= MAX_TRACKED_SEQ {
            d.tally.foreign += 1;
            return;
        }
        let track = stamp.sender as usize % senders;
        let Some((latency, in_window)) = d.check_delivery(mi, track, 0, &stamp, ev, now) else {
            return;
        };
        let m = &mut d.members[mi];
        let own = d.traffic.sender_id(m.room, m.m) == stamp.sender;
        if let Some(s) = m.sender.as_mut().filter(|_| own) {
            if s.in_flight.complete(stamp.seq).is_some() && in_window {
                d.ack.record_nanos(latency);
                d.tally.acked_in_window += 1;
            }
            d.refill(net, mi, now);
        }
    }

    fn on_ready(d: &mut RoomDriver<Self>, mi: usize) {
        d.traffic.ready_in_room[d.members[mi].room].fetch_add(1, Ordering::AcqRel);
    }

    /// `--typing-every-ms`: each ready member sends `typing` on its own schedule
    /// (spread over the interval so they do not all fire at once).
    fn on_run(d: &mut RoomDriver<Self>, net: &mut Net, now: Instant) -> Option<Instant> {
        let every = d.traffic.typing_every?;
        let mut next = None::<Instant>;
        for m in &mut d.members {
            let (Some(conn), Phase::Ready, false) = (m.conn, m.phase, m.lost) else {
                continue;
            };
            let due = *m
                .own
                .get_or_insert_with(|| now + every.mul_f64((m.user % 97) as f64 / 97.0));
            if now >= due {
                let frame = format!(
                    r#"{{"type":"typing","room_id":{}}}"#,
                    d.plan.rooms_json[m.room]
                );
                if net.send(conn, frame) {
                    d.tally.typing_sent += 1;
                }
                m.own = Some(due + every);
            }
            let at = m.own.expect("set above");
            next = Some(next.map_or(at, |n: Instant| n.min(at)));
        }
        next
    }
}

/// Runs `chat` (or `fanout`, which is `chat` with one room).
pub(crate) fn run(server: &Server, co: &ChatOptions, fanout: bool) -> Result<Report, BenchError> {
    let opts = &server.opts;
    let rooms = if fanout { 1 } else { co.rooms };
    if rooms == 0 || co.members == 0 {
        return Err(BenchError::Usage(
            "--rooms and --members must be at least 1".into(),
        ));
    }
    if co.senders == 0 || co.senders > co.members {
        return Err(BenchError::Usage(format!(
            "--senders must be between 1 and --members ({})",
            co.members
        )));
    }
    check_sending(co.window, co.msg_size, co.rate)?;
    let total = rooms * co.members;
    server.log(format!(
        "chat: {rooms} rooms x {} members, {} senders/room, {}",
        co.members,
        co.senders,
        match co.rate {
            Some(r) => format!("open loop at {r} msgs/s"),
            None => format!("closed loop, window {}", co.window),
        }
    ));
    let (users, prov, room_ids) = users_and_rooms(server, total, rooms, "room")?;

    let sending = Sending {
        members: co.members,
        total_senders: rooms * co.senders,
        window: co.window,
        rate: co.rate,
        msg_size: co.msg_size,
        client_ids: co.client_ids,
    };
    let plan = Arc::new(RoomPlan::new(server, room_ids, users, sending));
    let now = Instant::now();
    let shared = Arc::new(Counters::new(total, now + opts.setup_timeout));
    let ready_in_room = Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let threads = server.threads_for(total);
    let drivers: Vec<RoomDriver<Chat>> = (0..threads)
        .map(|t| {
            let members = (t..total)
                .step_by(threads)
                .map(|k| {
                    let sends = k % co.members < co.senders;
                    Member::new(&plan, k, co.senders, 1, sends, None)
                })
                .collect();
            let chat = Chat {
                senders: co.senders,
                typing_every: co.typing_every,
                ready_in_room: ready_in_room.clone(),
            };
            RoomDriver::new(plan.clone(), shared.clone(), members, chat)
        })
        .collect();
    let login = if co.with_login_clients > 0 {
        let gate_shared = shared.clone();
        let (warmup, duration) = (opts.warmup, opts.duration);
        let timing = Arc::new(LoginTiming {
            window: Box::new(move || {
                gate_shared
                    .gate
                    .started()
                    .map(|s| (s + warmup, s + warmup + duration))
            }),
            give_up: now + opts.setup_timeout,
        });
        Some(LoginLoad::start(
            server,
            Arc::new(plan.names.clone()),
            co.with_login_clients,
            timing,
        )?)
    } else {
        None
    };
    let login_progress = login.as_ref().map(|l| l.progress.clone());

    let progress = {
        let shared = shared.clone();
        move || {
            let base = shared.progress(total);
            match &login_progress {
                Some(l) => format!(
                    "{base}; logins ok {} failed {}",
                    l.ok.load(Ordering::Relaxed),
                    l.failed.load(Ordering::Relaxed)
                ),
                None => base,
            }
        }
    };
    let (drivers, rss) = run_drivers(server, &plan, drivers, now, progress)?;

    let msgs = MessageReport {
        rooms: rooms as u64,
        members_per_room: co.members as u64,
        senders: co.senders as u64,
        ..Default::default()
    };
    let mut merged = merge(server, &shared, drivers, msgs, |_, _| {});
    // For each sender, its acknowledged set is what its own connection received of
    // its messages; every member that was ready at the start should hold exactly
    // that set.
    for members in &std::mem::take(&mut merged.by_room) {
        for j in 0..co.senders {
            let sender_user = members.first().map(|m| m.room * co.members + j);
            let acked = members
                .iter()
                .find(|m| Some(m.user) == sender_user && m.sender.is_some())
                .map(|m| &m.tracks[j]);
            let empty = SeqTrack::new();
            let acked = acked.unwrap_or(&empty);
            merged.msgs.acked += acked.count();
            let sender_node = plan.node_of_member(j);
            for m in members {
                merged.account(acked, &m.tracks[j], m.node, sender_node);
            }
        }
    }
    let mut report = merged.into_report(server, total, &prov, Vec::new(), &rss);
    if let Some(load) = login {
        let (r, hist) = load.finish(opts.duration.as_secs_f64(), None)?;
        report.background_login = Some(r);
        if let Some(l) = hist.summary() {
            report.latency.insert("background_login".into(), l);
        }
    }
    Ok(report)
}
