//! The jobs and outcomes of rooms with owners (v3): `room_info`,
//! `room_update`, `set_role`, `transfer_owner`, invitations, kicks and bans,
//! as plain data. Apart from the
//! rest of [`super::Job`] so that the family's shapes are read in one place;
//! the requests ride on one variant each of `Job` and `Outcome`.

use std::time::SystemTime;

use super::ChatEntry;
pub use crate::db::notify::Invite;

/// A member's role in a room that has an owner. Rooms created before owners
/// existed have none, and every member of them is a `Member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// A role as stored or sent; anything else is no role.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// The owner and admins moderate the room.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// Why an administrative request on a room was refused (each is one error
/// code; see `handlers::room_admin::refusal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such room, or a private one the requester does not belong to.
    RoomNotFound,
    /// The requester is not a member of this public room.
    NotAMember,
    /// The requester's role does not permit it.
    NotAllowed,
    /// The user the request names is not registered.
    UserNotFound,
    /// The user the request names is registered but not a member.
    TargetNotMember,
    /// The invitee holds `KLAV_MAX_ROOMS_PER_USER` memberships and open
    /// invitations already.
    TooManyRooms,
}

/// A room as `room_info` and `room_updated` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    pub room: String,
    pub name: String,
    pub topic: Option<String>,
    pub private: bool,
    /// The owner's username (none for a room without one).
    pub owner: Option<String>,
    /// The requester's role.
    pub role: Role,
    /// How many members it has.
    pub members: i64,
}

/// One user's new role in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub user: String,
    pub role: Role,
}

/// Which request changed roles (its ack's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleRequest {
    SetRole,
    TransferOwner,
}

/// How an `invite` went (`invite_ack`'s status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteStatus {
    Invited,
    AlreadyMember,
    AlreadyInvited,
    NotRegistered,
    Banned,
    /// The invitee blocks the inviter: nothing stored or sent.
    Refused,
}

impl InviteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InviteStatus::Invited => "INVITED",
            InviteStatus::AlreadyMember => "ALREADY_MEMBER",
            InviteStatus::AlreadyInvited => "ALREADY_INVITED",
            InviteStatus::NotRegistered => "NOT_REGISTERED",
            InviteStatus::Banned => "BANNED",
            InviteStatus::Refused => "REFUSED",
        }
    }
}

/// How a `kick` or `ban` went (`kick_ack` / `ban_ack`'s status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveStatus {
    Kicked,
    /// A kick of a registered user who is not a member.
    NotAMember,
    Banned,
    /// A ban of a user banned already.
    Already,
}

impl RemoveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveStatus::Kicked => "KICKED",
            RemoveStatus::NotAMember => "NOT_A_MEMBER",
            RemoveStatus::Banned => "BANNED",
            RemoveStatus::Already => "ALREADY",
        }
    }
}

/// A ban as `room_bans` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub username: String,
    pub by: String,
    pub reason: Option<String>,
    pub at: SystemTime,
}

/// A membership a kick or ban ended: who it was, and the entry recording it.
#[derive(Debug)]
pub struct Removed {
    pub nickname: String,
    pub logged: Vec<ChatEntry>,
}

/// How long an invitation stays open, in days.
pub const INVITE_DAYS: i32 = 7;

/// SQL: the invitation aliased `$a` is still open ([`INVITE_DAYS`]).
macro_rules! open_invite {
    ($a:literal) => {
        concat!($a, ".created_at > now() - interval '7 days'")
    };
}
pub(crate) use open_invite;

/// Ordered writes of room administration: checked by the writer in the
/// transaction that applies them.
#[derive(Clone, Debug)]
pub enum AdminJob {
    /// `room_update`: what is `Some` changes.
    Update {
        by: String,
        by_nickname: String,
        room: String,
        name: Option<String>,
        topic: Option<String>,
        private: Option<bool>,
    },
    /// `set_role` (to `Admin` or `Member`) or `transfer_owner` (to `Owner`).
    Role {
        by: String,
        room: String,
        user: String,
        role: Role,
    },
    /// `invite`: `max_rooms` bounds the invitee's memberships and open
    /// invitations together.
    Invite {
        by: String,
        by_nickname: String,
        room: String,
        user: String,
        max_rooms: i64,
    },
    /// `decline_invite`.
    Decline { user: String, room: String },
    /// `kick` (`ban` false) or `ban`.
    Remove {
        by: String,
        by_nickname: String,
        room: String,
        user: String,
        reason: Option<String>,
        ban: bool,
    },
    /// `unban`.
    Unban {
        by: String,
        room: String,
        user: String,
    },
}

impl AdminJob {
    /// The room the job works on (locked with the batch's rooms).
    pub fn room(&self) -> &str {
        match self {
            AdminJob::Update { room, .. }
            | AdminJob::Role { room, .. }
            | AdminJob::Invite { room, .. }
            | AdminJob::Decline { room, .. }
            | AdminJob::Remove { room, .. }
            | AdminJob::Unban { room, .. } => room,
        }
    }
}

/// Reads of room administration, for the general workers.
#[derive(Clone, Debug)]
pub enum AdminQuery {
    /// `room_info`.
    Info { username: String, room: String },
    /// `my_invites`: the user's open invitations, newest first.
    MyInvites { username: String },
    /// Expired invitations removed (the retention tick).
    PruneInvites,
    /// `room_bans`: owner or admin.
    Bans { username: String, room: String },
}

/// What an administrative job found or did.
#[derive(Debug)]
pub enum AdminOutcome {
    Info(Result<RoomView, Refusal>),
    /// `room_update`: the room as it now is (`role` is the requester's), and
    /// the system entry recording it.
    Updated {
        by: String,
        result: Result<RoomView, Refusal>,
        logged: Vec<ChatEntry>,
    },
    /// `set_role` / `transfer_owner`: the roles that changed (none when the
    /// user already had the role asked).
    Roles {
        request: RoleRequest,
        by: String,
        room: String,
        user: String,
        role: Role,
        result: Result<Vec<RoleChange>, Refusal>,
    },
    /// `invite`: with `Invited`, the invitation as the invitee is told of it.
    Invited {
        room: String,
        user: String,
        result: Result<InviteStatus, Refusal>,
        invite: Option<Invite>,
    },
    Invites(Vec<Invite>),
    /// `decline_invite`: whether there was an open invitation.
    Declined {
        room: String,
        declined: bool,
    },
    /// Expired invitations removed.
    Pruned,
    /// `kick` / `ban`: `removed` when a membership ended.
    Removed {
        by: String,
        room: String,
        user: String,
        reason: Option<String>,
        ban: bool,
        result: Result<RemoveStatus, Refusal>,
        removed: Option<Removed>,
    },
    /// `unban`: whether there was a ban.
    Unbanned {
        room: String,
        user: String,
        result: Result<bool, Refusal>,
    },
    /// `room_bans`.
    Bans {
        room: String,
        result: Result<Vec<Ban>, Refusal>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_of_an_open_invitation_says_how_long_it_stays_open() {
        let days = format!("interval '{INVITE_DAYS} days'");
        assert!(open_invite!("i").contains(&days), "{}", open_invite!("i"));
    }
}
