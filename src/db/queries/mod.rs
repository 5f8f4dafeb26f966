//! The SQL behind each [`Job`], run on a worker's connection.
//!
//! Statements are prepared once per connection and cached ([`Stmts`]): a job then
//! costs one round trip instead of two.
//!
//! [`run_with`] dispatches each job to the function that runs it, grouped by
//! family: `accounts`, `sessions` (tickets, the session, offline DM claims),
//! `rooms` (history, `my_rooms`, members, pruning), `room_admin`
//! (`room_info`), `follows`, `blocks`, `resume`, `api` (the server API's
//! reads), and
//! `cluster` (presence, heartbeats, notifications). The cluster's reads are in
//! `db::nodes`, the tickets' SQL in `db::tickets`.

mod accounts;
mod api;
pub(crate) mod blocks;
mod cluster;
mod follows;
mod resume;
mod room_admin;
mod rooms;
mod sessions;

use postgres::GenericClient;

use super::error::DbError;
use super::jobs::{Job, Outcome};
use super::nodes;
use super::notify::Notifier;
use super::outbox::Outbox;
use super::tickets;
use resume::ReplayBudget;

pub use super::rows::{display_nickname, entry_from_row, Stmts};
pub use accounts::USERNAME_LOCK;
pub use resume::ROOM_LOOKUP_ROWS;
pub use rooms::UNREAD_WINDOW;

/// Runs a general (unordered) job that notifies nothing.
pub fn run<C: GenericClient>(c: &mut C, st: &mut Stmts, job: Job) -> Result<Outcome, DbError> {
    run_with(c, st, None, None, job)
}

/// Runs a general (unordered) job; `bus` seals what it notifies (in a cluster:
/// jobs that notify are only submitted there); `outbox`, with webhooks on,
/// takes the events it reports.
pub fn run_with<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    bus: Option<&dyn Notifier>,
    outbox: Option<&Outbox>,
    job: Job,
) -> Result<Outcome, DbError> {
    let bus = || bus.ok_or_else(|| DbError::Query("a bus job on a node without the bus".into()));
    Ok(match job {
        Job::Health => c.simple_query("SELECT 1").map(|_| Outcome::Healthy)?,
        Job::Register {
            username,
            password_hash,
            nickname,
        } => Outcome::Registered(accounts::register_account(
            c,
            st,
            outbox,
            &accounts::NewAccount {
                username: &username,
                password_hash: &password_hash,
                nickname: &nickname,
            },
        )?),
        Job::UsernameTaken { username } => {
            let found = accounts::same_name(c, st, &username)?;
            Outcome::UsernameTaken {
                reserved: found.as_ref().is_some_and(|f| f.2),
                existing: found.map(|(name, _, _)| name),
            }
        }
        Job::MintWsTicket { hash, grant, ttl } => {
            sessions::mint_ws_ticket(c, st, &hash, &grant, ttl)?
        }
        Job::TakeWsTicket { hash } => Outcome::WsTicket(tickets::take(c, st, &hash)?),
        Job::PruneWsTickets => Outcome::Pruned(tickets::prune(c, st)?),
        Job::Credentials { username } => accounts::credentials(c, st, username)?,
        Job::UpgradePassword {
            username,
            legacy,
            new_hash,
        } => accounts::upgrade_password(c, st, &username, &legacy, &new_hash)?,
        Job::OpenSession { username, claim } => Outcome::Session {
            session: sessions::open_session(c, st, &username, &claim)?,
            username,
        },
        Job::ReleaseOfflineClaims {
            username,
            ids,
            dropped,
            claim,
        } => sessions::release_offline_claims(c, st, &username, &ids, dropped, &claim)?,
        Job::Presence {
            node,
            user,
            nickname,
            conns,
        } => cluster::presence(c, st, bus()?, &node, user, &nickname, conns)?,
        Job::Heartbeat {
            node,
            incarnation,
            timeout_secs,
        } => cluster::heartbeat(c, st, bus()?, &node, incarnation, timeout_secs)?,
        Job::EntryById { id } => nodes::entry_by_id(c, st, id)?,
        Job::FollowsOf { user, read } => nodes::user_follows(c, st, user, read)?,
        Job::Notify { payloads } => cluster::notify(c, st, bus()?, &payloads)?,
        Job::OnlineFriends { username } => nodes::online_friends(c, st, &username)?,
        Job::PresenceOf { users } => nodes::presence_of(c, st, users)?,
        Job::HistoryFill { room, limit } => rooms::history_fill(c, st, room, limit)?,
        Job::DeleteOfflineDms {
            username,
            ids,
            dropped,
        } => sessions::delete_offline_dms(c, st, &username, &ids, dropped)?,
        Job::History(q) => Outcome::History {
            items: rooms::history(c, st, &q)?,
            room: q.room,
        },
        Job::MyRooms { username } => Outcome::MyRooms {
            rooms: rooms::my_rooms(c, st, &username)?,
            username,
        },
        Job::Following { username } => Outcome::Following(follows::following(c, st, &username)?),
        Job::Followers { username } => Outcome::Followers(follows::followers(c, st, &username)?),
        Job::Follow { from, to } => Outcome::Follow {
            status: follows::follow(c, st, &from, &to)?,
            from,
            to,
        },
        Job::Unfollow { from, to } => Outcome::Unfollow {
            removed: follows::unfollow(c, st, &from, &to)?,
            from,
            to,
        },
        Job::Stranger { room, reply } => Outcome::Stranger {
            hidden: rooms::is_private(c, st, &room)?,
            room,
            reply,
        },
        Job::BlockedList { username } => {
            Outcome::BlockedList(blocks::blocked_list(c, st, &username)?)
        }
        Job::Prune { rooms, keep } => Outcome::Pruned(rooms::prune(c, st, &rooms, keep)?),
        Job::RoomMembers {
            room,
            cluster,
            watch,
        } => {
            let mut outcome = rooms::members_and_presence(c, st, room, cluster)?;
            if let Outcome::RoomMembers { watch: w, .. } = &mut outcome {
                *w = watch;
            }
            outcome
        }
        Job::AdminQuery(read) => room_admin::run(c, st, read)?,
        Job::Api(read) => Outcome::Api(api::run(c, st, read)?),
        Job::Resume {
            username,
            rooms,
            strangers,
            limit,
            rows,
            bytes,
        } => {
            let mut replay =
                resume::resume(c, st, &username, rooms, ReplayBudget { limit, rows, bytes })?;
            replay.hidden = rooms::private_among(c, st, &strangers)?;
            Outcome::Resume(replay)
        }
        other => {
            return Err(DbError::Query(format!(
                "ordered write sent to a general worker: {other:?}"
            )))
        }
    })
}
