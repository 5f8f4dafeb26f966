//! What the database produced for each job of a batch ([`Written`]), held until
//! the batch commits and then joined with its job into the [`Outcome`] the loop
//! receives. Separate so that every job family of the writer can produce one
//! and the run loop can release them, without either depending on the other.

use std::time::SystemTime;

use crate::db::entry::ChatEntry;
use crate::db::jobs::{ChainLink, DmResult, Duplicate, Job, JoinResult, Outcome};

/// A job's result and, if it added entries, where they sit in their room.
pub(super) type Linked = (Written, Option<ChainLink>);

/// What the database produced for one job; joined with the job itself (moved,
/// never copied) into its [`Outcome`] once the batch has committed.
pub(super) enum Written {
    Msg {
        id: i64,
        ts: SystemTime,
    },
    MsgDuplicate(Box<Duplicate>),
    RoomCreated {
        room: String,
        logged: Vec<ChatEntry>,
    },
    Join {
        result: JoinResult,
        logged: Vec<ChatEntry>,
    },
    Leave {
        was_member: bool,
        heir: Option<Option<String>>,
        logged: Vec<ChatEntry>,
    },
    Dm(DmResult),
    Ready(Outcome),
}

impl Written {
    pub(super) fn into_outcome(self, job: Job) -> Outcome {
        match (self, job) {
            (Written::Msg { id, ts }, Job::Msg(msg)) => Outcome::Msg { msg, id, ts },
            (Written::MsgDuplicate(d), Job::Msg(_)) => Outcome::MsgDuplicate(d),
            (
                Written::RoomCreated { room, logged },
                Job::CreateRoom {
                    name,
                    creator,
                    creator_nickname,
                    private,
                    ..
                },
            ) => Outcome::RoomCreated {
                room,
                name,
                creator,
                creator_nickname,
                private,
                logged,
            },
            (
                Written::Join { result, logged },
                Job::Join {
                    username, nickname, ..
                },
            ) => Outcome::Join {
                username,
                nickname,
                result,
                logged,
            },
            (
                Written::Leave {
                    was_member,
                    heir,
                    logged,
                },
                Job::Leave {
                    username,
                    nickname,
                    room,
                },
            ) => Outcome::Leave {
                username,
                nickname,
                room,
                was_member,
                heir,
                logged,
            },
            (Written::Dm(result), Job::Dm { msg, to, .. }) => Outcome::Dm { msg, to, result },
            (Written::Ready(outcome), _) => outcome,
            _ => Outcome::Done,
        }
    }
}
